"""``gridnode demo``, runnable from here too: ``python -m simulations.demo [--dir D]``.

The demo is a product command, so it lives in :mod:`gridnode.demo` (on top of
:mod:`gridnode.testing.localgrid`); this module re-exports it for whoever reached it
through ``simulations``.
"""

from __future__ import annotations

from gridnode.demo import CITIES, main, make_sample_tree, run_demo

__all__ = ["CITIES", "main", "make_sample_tree", "run_demo"]

if __name__ == "__main__":
    main()
