"""The target's group commit (``PacketStore._write_batches``) after its hops were cut.

Handlers queue their packets for the writer without a checkpoint, share one ``_Pending``
per request, and the writer hops to a worker thread through its own ``_in_thread``
instead of ``trio.to_thread.run_sync`` (issue 11).  What must hold: the shared disk
limiter still bounds the writes, packets that arrive together are written in one batch,
every stored packet is answered with a receipt signed by the target, and a batch with
nothing in it is answered at once.  A real packet directory and holdings database.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing
from blake3 import blake3

from gridnode.actors.calls import Call, Outbox, Request, call
from gridnode.actors.packet_store import PacketStore, TargetRequest
from gridnode.dedup_group import adopt_held
from gridnode.identity import NodeIdentity
from gridnode.storage.holdings import Holdings
from gridnode.storage.packets import PacketDirectory
from protocol import (
    Message,
    PacketPart,
    PacketsStored,
    PacketStored,
    StorePacket,
    StorePackets,
    receipt_payload,
    verify,
)

PEER = os.urandom(32)


@asynccontextmanager
async def open_store(
    tmp_path: Path, limiter: trio.CapacityLimiter
) -> AsyncIterator[tuple[PacketStore, Outbox]]:
    storage = tmp_path / "storage"
    send, receive = trio.open_memory_channel[Call[Request[Any]]](64)
    store = PacketStore(
        identity=NodeIdentity.generate(),
        packets=PacketDirectory(storage, 10_000_000),
        holdings=Holdings(storage / "holdings.sqlite"),
        inbound=receive,
        disk_limiter=limiter,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        yield store, send
        nursery.cancel_scope.cancel()


def packet(seed: int, size: int = 3000) -> tuple[bytes, bytes]:
    data = seed.to_bytes(4, "big") * (size // 4)
    return blake3(data).digest(), data


def signed_by(store: PacketStore, packet_id: bytes, size: int, receipt: bytes) -> bool:
    return verify(store.identity.node_id, receipt_payload(packet_id, size), receipt)


async def test_writes_wait_for_the_shared_disk_limiter_and_form_one_batch(
    tmp_path: Path,
) -> None:
    limiter = trio.CapacityLimiter(1)
    async with open_store(tmp_path, limiter) as (store, outbox):
        holder = object()
        await limiter.acquire_on_behalf_of(holder)  # another actor's disk work
        answers: dict[bytes, Message] = {}

        async def store_one(seed: int) -> None:
            packet_id, data = packet(seed)
            msg = StorePacket(request_id=seed, packet_id=packet_id, owner_tag=b"t" * 32, data=data)
            answers[packet_id] = await call(outbox, TargetRequest(msg, packet_id, PEER))

        async with trio.open_nursery() as nursery:
            for seed in range(5):
                nursery.start_soon(store_one, seed)
            await trio.testing.wait_all_tasks_blocked()
            # Nothing is written while the disk limiter has no room: the writer waits
            # for it with the packets queued...
            assert limiter.statistics().tasks_waiting == 1
            assert answers == {} and store.stats.get("write_batches", 0) == 0
            assert not any(store.packets.path_for(packet(s)[0]).exists() for s in range(5))
            limiter.release_on_behalf_of(holder)
        # ... then the five queued packets go to disk together, in one batch.
        assert store.stats["write_batches"] == 1
        assert store.stats["packets_stored"] == 5
        assert limiter.borrowed_tokens == 0
        for seed in range(5):
            packet_id, data = packet(seed)
            answer = answers[packet_id]
            assert isinstance(answer, PacketStored)
            assert signed_by(store, packet_id, len(data), answer.receipt)
            assert store.packets.path_for(packet_id).read_bytes() == data


async def test_a_batch_frame_is_answered_part_by_part_with_receipts(tmp_path: Path) -> None:
    async with open_store(tmp_path, trio.CapacityLimiter(2)) as (store, outbox):
        pieces = [packet(seed, size=1000 + seed) for seed in range(4)]
        parts = tuple(
            PacketPart(packet_id=pid, owner_tag=b"o" * 32, size_bytes=len(data))
            for pid, data in pieces
        )
        # The third part lies about its bytes: refused alone, the others kept.
        data = b"".join(d if i != 2 else b"x" * len(d) for i, (_, d) in enumerate(pieces))
        msg = StorePackets(request_id=1, parts=parts, data=data)
        answer = await call(outbox, TargetRequest(msg, None, PEER))
        assert isinstance(answer, PacketsStored)
        assert [r.code for r in answer.results] == ["", "", "id_mismatch", ""]
        for (pid, piece), result in zip(pieces, answer.results, strict=True):
            if not result.code:
                assert signed_by(store, pid, len(piece), result.receipt)

        # A frame with no parts at all is answered at once (nothing to wait for).
        with trio.fail_after(30):  # a guard against a hang, not a timing
            empty = await call(
                outbox, TargetRequest(StorePackets(request_id=2, parts=(), data=b""), None, PEER)
            )
        assert isinstance(empty, PacketsStored) and empty.results == ()


async def test_an_adoption_racing_a_store_cannot_take_a_source_past_its_quota(
    tmp_path: Path,
) -> None:
    """A dedup group's adoption counts against the source's quota as a store does.  The
    store's check used to read the usage before taking ``keep_lock``: an adoption that
    ran in between was not seen, and the source ended over its quota.  The adoption is
    started inside that window here, from the store's own usage read."""
    async with open_store(tmp_path, trio.CapacityLimiter(2)) as (store, outbox):
        other = os.urandom(32)
        held_id, held = packet(1)  # another source's packet, which PEER then adopts
        first = StorePacket(request_id=1, packet_id=held_id, owner_tag=b"a" * 32, data=held)
        assert isinstance(await call(outbox, TargetRequest(first, held_id, other)), PacketStored)

        source = store.identity.root_owner_tag(PEER)
        quota = len(held) + 1000  # room for one of the two packets, not both
        adopted: list[list[str]] = []
        real = store.holdings.source_bytes

        def adopt() -> None:
            part = PacketPart(packet_id=held_id, owner_tag=b"b" * 32, size_bytes=len(held))
            adopted.append(
                adopt_held(
                    store.packets, store.holdings, store.keep_lock, [part],
                    source=source, quota=quota, expires=None,
                )
            )  # fmt: skip

        racer = threading.Thread(target=adopt)

        def read_then_race(who: bytes) -> int:
            used = real(who)
            if who == source and not racer.is_alive() and not adopted:
                racer.start()  # blocks on keep_lock where the check holds it
                racer.join(timeout=1.0)
            return used

        store.holdings.source_bytes = read_then_race  # type: ignore[method-assign]
        new_id, new = packet(2)
        msg = StorePacket(request_id=2, packet_id=new_id, owner_tag=b"c" * 32, data=new)
        answer = await call(outbox, TargetRequest(msg, new_id, PEER, quota=quota))
        await trio.to_thread.run_sync(racer.join, 30.0)
        store.holdings.source_bytes = real  # type: ignore[method-assign]

        assert isinstance(answer, PacketStored)
        assert adopted == [["over_quota"]]
        assert real(source) <= quota
