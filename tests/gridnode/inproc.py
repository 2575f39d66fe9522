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
                # The shipped 10/30 needs 31 members; test grids are a handful.
                "redundancy": "4/6",
                # Off unless a test asks for it: a web server per node costs every test.
                "dashboard_listen": "",
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


@asynccontextmanager
async def open_authority_grid(
    tmp_path: Path,
    count: int,
    settings: dict[str, Any] | None = None,
    *,
    before_start: Callable[[Path, NodeIdentity], None] | None = None,
) -> AsyncIterator[tuple[list[Node], trio.Nursery, dict[str, Any]]]:
    """An authority node (its home made as ``authority init`` makes it, in
    ``tmp_path/auth``) and ``count`` nodes of its grid (``tmp_path/nI``), started in one
    nursery.  ``before_start(home, identity)`` runs for each node, the authority's too,
    before it starts (to enrol it, say).  Yields the nodes (the authority first), the
    nursery (to start more) and the config values they share."""
    from nacl.signing import SigningKey

    from gridnode.authority.pricebook import DEFAULT_PRICE_BOOK_TOML
    from gridnode.authority.subscriptions import create_authority_home
    from simulations.harness import free_port

    grid_id = os.urandom(16)
    key = SigningKey.generate()
    address = f"127.0.0.1:{free_port()}"
    common: dict[str, Any] = {
        "grid_id": grid_id.hex(),
        "authority_key": bytes(key.verify_key).hex(),
        "authority_address": address,
        "location_check": "off",
        "gossip_probe_interval_s": 0.5,
        "grace_period_s": 0.5,
        "redundancy": "4/6",
        **(settings or {}),
    }
    create_authority_home(
        tmp_path / "auth",
        grid_id=grid_id,
        key=key,
        price_book_text=DEFAULT_PRICE_BOOK_TOML,
        now=0.0,
    )
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        for i in range(count + 1):
            values = {**common, "listen": address if i == 0 else "127.0.0.1:0"}
            if i:
                values["seeds"] = [address]
            config = build_config(tmp_path / ("auth" if i == 0 else f"n{i}"), values)
            config.home.mkdir(parents=True, exist_ok=True)
            identity = NodeIdentity.generate()
            if before_start is not None:
                before_start(config.home, identity)
            node = Node(config, identity)
            await nursery.start(node.run)
            nodes.append(node)
        try:
            yield nodes, nursery, common
        finally:
            for node in nodes:
                node.shutdown()
