"""``python -m simulations.gridsim``: the gridsim command line (see :mod:`.cli`)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
