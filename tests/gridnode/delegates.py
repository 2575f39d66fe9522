"""A delegate's ``Repairer`` for in-process tests: no network, no grid; only what it keeps
on disk and what it answers an owner.  Shared by the delegation tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from gridnode.delegation import Repairer
from gridnode.identity import NodeIdentity
from gridnode.storage.records import ChunkRecord, PacketRecord
from protocol import receipt_payload, sign


def idle_repairer(
    identity: NodeIdentity, home: Path, clock: Callable[[], float], *, after_s: float = 3600.0
) -> Repairer:
    """A repairer that must never fetch, dial or store (a test that expects no repair)."""

    async def never(*_: Any) -> Any:
        raise AssertionError("no repair expected")

    return Repairer(
        identity=identity,
        home=home,
        present=set,
        members=list,
        fetch=never,
        link_for=never,
        store_local=never,
        cpu_limiter=trio.CapacityLimiter(1),
        after_s=after_s,
        tick_s=1.0,
        clock=clock,
    )


#: A grid where holders count as gone after half a second and delegates repair at the
#: first loss: what the in-process delegated-repair tests run on.
FAST_REPAIR: dict[str, object] = {
    "repair_after_s": 0.5,
    "repair_threshold": 1,
    "repair_delegates": 2,
    "gossip_probe_interval_s": 0.2,
}


def small_tree(root: Path) -> Path:
    """Three files of ~150 KB of random data under ``root/src``."""
    tree = root / "src"
    tree.mkdir()
    for i in range(3):
        (tree / f"file{i}").write_bytes(os.urandom(150_000 + i))
    return tree


def signed_chunk(
    holders: list[NodeIdentity], *, k: int = 2, cipher_size: int = 1000
) -> ChunkRecord:
    """A chunk record whose packets sit one on each of ``holders``, with their receipts."""
    packets = []
    for share, holder in enumerate(holders):
        packet_id = os.urandom(32)
        receipt = sign(holder.signing_key, receipt_payload(packet_id, -(-cipher_size // k)))
        packets.append(PacketRecord(share, packet_id, holder.node_id, receipt))
    return ChunkRecord(
        os.urandom(32), 900, cipher_size, False, k, len(holders), tuple(packets), {"distinct": []}
    )
