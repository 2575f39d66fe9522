"""A grid upgraded node by node (issue 12): nodes of the previous protocol version (this
software with its newest version held at ``MIN_PROTOCOL_VERSION``, so it writes exactly
what the previous release wrote) and nodes of this version mesh, back up and restore
across each other; what an older peer cannot read is never sent to it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import blake3
import pytest

from gridnode.errors import RemoteError
from gridnode.node import Node
from gridnode.transport.link import UNSUPPORTED
from protocol import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    AuditPacket,
    PacketPart,
    PacketsStored,
    StorePackets,
)

from .inproc import open_grid
from .test_node_inproc import SUB, write_tree

OLD = MIN_PROTOCOL_VERSION


def _every_other_node_old() -> Any:
    """A ``wrap_handler`` for ``open_grid``: nodes 1, 3, 5... speak the previous version."""
    started: list[Node] = []

    def wrap(node: Node) -> Any:
        if len(started) % 2 == 1:
            node.transport.settings.max_protocol_version = OLD
        started.append(node)
        return node.transport.handler

    return wrap


def _is_old(node: Node) -> bool:
    return bool(node.transport.settings.max_protocol_version == OLD)


async def test_old_and_new_nodes_mesh_back_up_and_restore(tmp_path: Path) -> None:
    tree = write_tree(tmp_path)
    async with open_grid(tmp_path / "grid", 7, wrap_handler=_every_other_node_old()) as grid:
        old = [n for n in grid.nodes if _is_old(n)]
        new = [n for n in grid.nodes if not _is_old(n)]
        assert len(old) == 3 and len(new) == 4
        # Each pair speaks the highest version both hold.
        for a in grid.nodes:
            for b in grid.nodes:
                if a is not b:
                    link = await a.link_for(b.identity.node_id)
                    expected = OLD if _is_old(a) or _is_old(b) else PROTOCOL_VERSION
                    assert link.peer_version == expected
        # A new source backs up onto old and new holders alike, and restores; so does an
        # old one.
        for source in (grid.nodes.index(new[0]), grid.nodes.index(old[0])):
            result = await grid.call(source, "backup", paths=[str(tree)])
            out = tmp_path / f"out{source}"
            restored = await grid.call(
                source, "restore", snapshot=result["snapshot_id"], to=str(out)
            )
            assert restored["bytes"] == result["bytes"]
            for rel in (f"{SUB}/quarterly-report-zebra.txt", "random.bin"):
                assert (out / "tree" / rel).read_bytes() == (tree / rel).read_bytes()
        held = {n.identity.node_id: n.packets.packet_count for n in grid.nodes}
        assert all(held[n.identity.node_id] > 0 for n in old), held
        # The new source asked new holders in batches (FetchPackets, protocol 5); an old
        # source never batches (test_fetch_batches: old holders are asked one by one).
        assert new[0].retriever.stats.get("fetch_batches", 0) > 0
        assert old[0].retriever.stats.get("fetch_batches", 0) == 0


async def test_a_batch_to_an_old_node_goes_the_old_way_and_audits_are_not_sent(
    tmp_path: Path,
) -> None:
    async with open_grid(tmp_path / "grid", 2, wrap_handler=_every_other_node_old()) as grid:
        source, target = grid.nodes
        assert _is_old(target) and not _is_old(source)
        link = await source.link_for(target.identity.node_id)
        assert link.peer_version == OLD
        packets = [os.urandom(5_000 + 1_000 * i) for i in range(3)]
        ids = [blake3.blake3(p).digest() for p in packets]
        parts = tuple(
            PacketPart(packet_id=i, owner_tag=b"t" * 32, size_bytes=len(p))
            for i, p in zip(ids, packets, strict=True)
        )
        frames: list[bytes] = []
        real_send = link.session.send

        def recording(*args: Any, **kwargs: Any) -> bytes:
            frame = real_send(*args, **kwargs)
            frames.append(frame[:1])
            return frame

        link.session.send = recording  # type: ignore[method-assign]
        answer = await link.request(
            lambda rid: StorePackets(request_id=rid, parts=parts, data=b""), payload=packets
        )
        assert isinstance(answer, PacketsStored) and [r.code for r in answer.results] == [""] * 3
        assert all(target.packets.has(i) for i in ids)
        assert b"C" not in frames  # the old node has no "C" frame
        # An audit is a message the old node has no word for: refused before it is sent,
        # as "unsupported", which the auditor counts as a miss, not a failure.
        sent_before = len(frames)
        with pytest.raises(RemoteError) as info:
            await link.request(lambda rid: AuditPacket(request_id=rid, packet_id=ids[0], index=0))
        assert info.value.code == UNSUPPORTED
        assert len(frames) == sent_before
        assert link.session.is_ready  # the link lives on
