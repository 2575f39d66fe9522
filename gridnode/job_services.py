"""What jobs may use of a running node: its records, its secrets and its actors' inboxes.

Jobs (backup, restore, verify, recovery) never reach into actors' state; they send calls
to the actors' channels (``gridnode.actors.calls.call``) and read/write the catalog in
worker threads.  Keeping that surface in one small class makes the dependencies of every
job visible in one place, and lets tests build a node's services without its network.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import trio

from .actors.calls import Outbox, Request, call
from .config import NodeConfig
from .identity import NodeIdentity
from .storage.catalog import Catalog
from .transport.link import PeerLink

__all__ = ["Services"]

R = TypeVar("R")


def fresh_after_errors(catalog: Catalog, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; after an SQLite error the catalog's connections are opened afresh
    (one that met a full disk may fail on after space is freed: ``reset_connections``)."""
    try:
        return fn(*args)
    except sqlite3.OperationalError:
        catalog.reset_connections()
        raise


@attrs.define
class Services:
    identity: NodeIdentity
    config: NodeConfig
    catalog: Catalog
    sequencer: Outbox
    #: The uploader (``actors.uploader``): a chunk's packets to their targets.
    uploader: Outbox
    retriever: Outbox
    assembler: Outbox
    cpu_limiter: trio.CapacityLimiter
    disk_limiter: trio.CapacityLimiter
    #: Live members as (node id, address) for recovery-root placement and lookup.
    alive_members: Callable[[], list[tuple[bytes, str]]]
    link_for: Callable[[bytes], Awaitable[PeerLink]]
    #: The subscription's allocations (None: an open grid, no quota); raises
    #: ``NotSubscribed`` when the grid has an authority and this node no valid certificate.
    allocations: Callable[[], Any] = lambda: None
    #: Serialises backups: two at once would race on dedup and on the recovery root.
    backup_lock: trio.Lock = attrs.field(factory=trio.Lock)

    def alive_ids(self) -> set[bytes]:
        """The node ids of the live members (``alive_members`` without addresses)."""
        return {node_id for node_id, _ in self.alive_members()}

    async def ask(self, channel: Outbox, payload: Request[R]) -> R:
        return await call(channel, payload)

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking catalog call in a worker thread under the disk limiter."""
        return await trio.to_thread.run_sync(
            fresh_after_errors, self.catalog, fn, *args, limiter=self.disk_limiter
        )
