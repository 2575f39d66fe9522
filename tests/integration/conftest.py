"""Real node processes on 127.0.0.1 (see simulations/harness.py), in grids created with
an authority: every node holds a subscription certificate, so the tests run the secure
path (``authority=False`` for an open grid)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulations.harness import LocalGrid, NodeSpec

from ..cities import CITIES


def specs(count: int, **kwargs: object) -> list[NodeSpec]:
    return [
        NodeSpec(name=f"n{i}", location=CITIES[i % len(CITIES)], **kwargs)  # type: ignore[arg-type]
        for i in range(count)
    ]


@pytest.fixture
def make_grid(tmp_path: Path) -> Iterator[object]:
    grids: list[LocalGrid] = []

    def make(
        count: int, *, start: bool = True, authority: bool = True, **kwargs: object
    ) -> LocalGrid:
        grid = LocalGrid(tmp_path / f"grid{len(grids)}", authority=authority)
        grids.append(grid)
        grid.add_many(specs(count, **kwargs))
        if start:
            grid.start_all()
            grid.wait_converged(timeout=60)
        return grid

    yield make
    for grid in grids:
        grid.close()
