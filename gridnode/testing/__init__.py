"""What the product ships to run itself locally: a grid of real node processes on 127.0.0.1.

:mod:`gridnode.testing.localgrid` starts and drives such a grid through the CLI.  It is in
the product, not in ``simulations/``, because ``gridnode demo`` needs it and the product
never imports ``simulations/`` or ``benchmarks/``; those (and the tests) use it through
``simulations.harness``.
"""
