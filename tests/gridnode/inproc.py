"""Several real Nodes in one trio run: real websockets on 127.0.0.1, real SQLite and
packet directories under tmp_path, no subprocesses (tahoe's NoNetworkGrid spirit, but
with the network).  Fast enough for many data-path tests; the process-level behaviour
(signals, crashes) is covered by tests/integration."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from gridnode.config import build_config
from gridnode.identity import NodeIdentity
from gridnode.node import Node

from ..cities import CITIES


class Grid:
    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes

    async def call(self, index: int, method: str, **params: Any) -> Any:
        events: list[dict[str, Any]] = []

        async def emit(event: dict[str, Any]) -> None:
            events.append(event)

        return await self.nodes[index]._control_job(method, params, emit)

    async def wait_converged(self, timeout: float = 20) -> None:
        with trio.fail_after(timeout):
            while any(
                len(n.gossiper.alive()) < len(self.nodes) - 1  # type: ignore[union-attr]
                for n in self.nodes
            ):
                await trio.sleep(0.05)


@asynccontextmanager
async def open_grid(
    tmp_path: Path,
    count: int,
    *,
    allocations: Sequence[str] | None = None,
    settings: dict[str, Any] | None = None,
    locations: Sequence[str] | None = None,
    wrap_handler: Callable[[Node], Any] | None = None,
) -> AsyncIterator[Grid]:
    """``wrap_handler(node)`` may return a handler that sees every message the node receives
    from peers (installed before the node starts, so every session uses it)."""
    grid_id = os.urandom(16).hex()
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        seeds: list[str] = []
        for i in range(count):
            values: dict[str, Any] = {
                "grid_id": grid_id,
                "listen": "127.0.0.1:0",
                "seeds": seeds,
                "location": (locations or CITIES)[i % len(locations or CITIES)],
                "allocate": allocations[i] if allocations else "1GB",
                "location_check": "off",
                "gossip_probe_interval_s": 0.5,
                "gossip_sync_interval_s": 2,
                "grace_period_s": 0.5,
                **(settings or {}),
            }
            config = build_config(tmp_path / f"n{i}", values)
            config.home.mkdir(parents=True, exist_ok=True)
            node = Node(config, NodeIdentity.generate())
            if wrap_handler is not None:
                node.transport.handler = wrap_handler(node)
            await nursery.start(node.run)
            nodes.append(node)
            if not seeds:
                seeds = [node.transport.address]
        grid = Grid(nodes)
        try:
            await grid.wait_converged()
            yield grid
        finally:
            for node in nodes:
                node.shutdown()
