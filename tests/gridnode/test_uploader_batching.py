"""Issue 11: packets of several chunks bound for one target leave as one frame.

Measured before the linger: a fast target answered each packet before the next chunk was
encoded, so 673 frames carried 714 packets and every packet paid a frame's, a request's
and a write hop's cost on both sides.  The uploader now waits up to ``linger_s`` for
more packets when a target's queue is short of a full batch.  These tests drive the real
``Uploader`` actor against links that record the frames (the transport is tested
elsewhere); receipts are real signatures, checked by the uploader as in a grid.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
import blake3
import pytest
import trio
import trio.testing

from gridnode.actors.calls import Call, Request, call
from gridnode.actors.uploader import (
    BATCH_BYTES,
    LINGER_REF_BYTES,
    ChunkUploaded,
    UploadChunk,
    Uploader,
    linger_for,
)
from gridnode.identity import NodeIdentity
from gridnode.logic.placement import PlacementRules
from protocol import (
    Message,
    PacketsStored,
    PacketStored,
    PartStored,
    StorePacket,
    StorePackets,
    receipt_payload,
    sign,
)


@attrs.define
class _Target:
    """A target's link: answers every store with signed receipts and keeps each frame's
    packet count."""

    identity: NodeIdentity
    frames: list[int] = attrs.field(factory=list)

    async def request(
        self, build: Callable[[int], Message], *, timeout_s: float, **kwargs: Any
    ) -> Message:
        msg = build(1)
        await trio.sleep(0.001)  # the round trip
        key = self.identity.signing_key
        if isinstance(msg, StorePacket):
            self.frames.append(1)
            # The packet travels in the message or as the frame's payload pieces.
            size = len(msg.data) + sum(len(p) for p in kwargs.get("payload") or ())
            receipt = sign(key, receipt_payload(msg.packet_id, size))
            return PacketStored(
                request_id=1,
                packet_id=msg.packet_id,
                size_bytes=size,
                receipt=receipt,
                free_bytes=1 << 30,
            )
        assert isinstance(msg, StorePackets)
        self.frames.append(len(msg.parts))
        return PacketsStored(
            request_id=1,
            results=tuple(
                PartStored(
                    packet_id=p.packet_id,
                    receipt=sign(key, receipt_payload(p.packet_id, p.size_bytes)),
                )
                for p in msg.parts
            ),
            free_bytes=1 << 30,
        )


def _chunk(targets: list[_Target], packet_bytes: int) -> UploadChunk:
    packets = tuple(os.urandom(packet_bytes) for _ in targets)
    return UploadChunk(
        chunk_id=os.urandom(32),
        packets=packets,
        packet_ids=tuple(blake3.blake3(p).digest() for p in packets),
        targets=tuple(t.identity.node_id for t in targets),
        rules=PlacementRules(),
        packet_bytes=packet_bytes,
    )


async def _upload_all(
    targets: list[_Target], chunks: list[UploadChunk], linger_s: float
) -> list[ChunkUploaded]:
    by_id = {t.identity.node_id: t for t in targets}

    async def link_for(node_id: bytes) -> _Target:
        return by_id[node_id]

    inbox_send, inbox_recv = trio.open_memory_channel[Call[Request[Any]]](16)
    uploader = Uploader(
        identity=NodeIdentity.generate(),
        inbound=inbox_recv,
        sequencer=trio.open_memory_channel[Call[Request[Any]]](1)[0],
        link_for=link_for,
        linger_s=linger_s,
    )
    results: list[ChunkUploaded] = []

    async def one(chunk: UploadChunk) -> None:
        results.append(await call(inbox_send, chunk))

    async with trio.open_nursery() as nursery:
        await nursery.start(uploader.run)
        async with trio.open_nursery() as callers:
            for chunk in chunks:
                callers.start_soon(one, chunk)
        nursery.cancel_scope.cancel()
    return results


def test_packets_of_chunks_uploading_together_share_one_frame_per_target() -> None:
    targets = [_Target(NodeIdentity.generate()) for _ in range(3)]
    chunks = [_chunk(targets, 64 * 1024) for _ in range(4)]

    async def main() -> None:
        results = await _upload_all(targets, chunks, linger_s=0.02)
        assert sorted(len(r.placed) for r in results) == [3, 3, 3, 3]
        for result in results:
            for placed in result.placed:  # every receipt checked and kept
                assert placed.receipt

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # Without the linger each target got the first packet alone (frames [1, 3]).
    assert [t.frames for t in targets] == [[4], [4], [4]]


def test_a_full_batch_leaves_at_once_and_a_lone_packet_after_the_linger() -> None:
    targets = [_Target(NodeIdentity.generate())]
    per_batch = 4
    big = [_chunk(targets, BATCH_BYTES // per_batch) for _ in range(per_batch)]
    lone = [_chunk(targets, LINGER_REF_BYTES)]

    async def timed(chunks: list[UploadChunk]) -> float:
        start = trio.current_time()
        await _upload_all(targets, chunks, linger_s=5.0)
        return trio.current_time() - start

    async def main() -> None:
        assert await timed(big) < 1.0  # full: no waiting for the linger
        assert targets[0].frames == [per_batch]
        took = await timed(lone)
        assert 5.0 <= took < 6.0  # alone: sent when the linger ends, not stuck
        assert targets[0].frames == [per_batch, 1]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_small_packets_wait_longer_for_company_up_to_a_cap() -> None:
    # A frame's cost is per frame: a tree's 88 KB packets travelled 1.9 to a frame with a
    # flat 5 ms; they wait in proportion to how small they are, up to three times.
    targets = [_Target(NodeIdentity.generate())]

    async def lone(packet_bytes: int) -> float:
        start = trio.current_time()
        await _upload_all(targets, [_chunk(targets, packet_bytes)], linger_s=1.0)
        return trio.current_time() - start

    async def main() -> None:
        assert 2.0 <= await lone(LINGER_REF_BYTES // 2) < 2.5
        assert 3.0 <= await lone(1024) < 3.5  # capped
        assert 1.0 <= await lone(2 * LINGER_REF_BYTES) < 1.5  # large: the base wait

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert linger_for(0.005, 88_000) == pytest.approx(0.005 * LINGER_REF_BYTES / 88_000)
