"""LocalGrid: real ``gridnode run`` processes on 127.0.0.1, driven through the CLI.

The grid itself lives in the product, :mod:`gridnode.testing.localgrid`, because
``gridnode demo`` runs on it and the product never imports ``simulations/``.  This
module keeps the names the integration tests, ``gridsim``, ``simulations/netns.py`` and
the benchmarks import from here; see the product module for how a grid is built (an
authority unless asked otherwise, one generous plan, every process stopped on close).
"""

from __future__ import annotations

from gridnode.testing.localgrid import (
    AUTHORITY_NAME,
    HARNESS_PRICE_BOOK,
    SAMPLE_WORDS,
    GridCommandError,
    LocalGrid,
    NodeProc,
    NodeSpec,
    free_port,
)

__all__ = [
    "AUTHORITY_NAME",
    "HARNESS_PRICE_BOOK",
    "SAMPLE_WORDS",
    "GridCommandError",
    "LocalGrid",
    "NodeProc",
    "NodeSpec",
    "free_port",
]
