"""Restores ask each holder for several packets at once (``FetchPackets``, protocol 5).

The retriever's batching against links that answer as a holder would (and as a lying or
old one would), under trio's ``MockClock``: what is checked is who was asked for what and
what came back, never how long it took.  ``test_mixed_versions`` and the node tests run
the same path over real websockets.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest
import trio
import trio.testing

from gridnode.actors.retriever import ChunkUnavailable, FetchChunk, FetchedChunk, Retriever
from gridnode.errors import RequestTimeout
from gridnode.storage.records import ChunkRecord, PacketRecord
from protocol import (
    FetchedPart,
    FetchPacket,
    FetchPackets,
    Message,
    PacketData,
    PacketsData,
    WantedPacket,
)

from .test_target_storage import open_store


class _Holder:
    """A link to one holder of protocol 5 (or, ``old``, of a version before batches).

    ``room``: how many packets one answer holds (the rest are answered "later");
    ``lie``: a function that may rewrite an answer before it is returned."""

    def __init__(
        self,
        *,
        old: bool = False,
        room: int = 16,
        lie: Callable[[PacketsData], PacketsData] | None = None,
    ) -> None:
        self.packets: dict[bytes, bytes] = {}
        self.old = old
        self.room = room
        self.lie = lie
        self.requests: list[list[bytes]] = []  # the packet ids of each request, in order

    def speaks(self, msg: type[Message]) -> bool:
        return not (self.old and msg is FetchPackets)

    async def request(self, build: Callable[[int], Message], *, timeout_s: float) -> Message:
        request = build(1)
        assert isinstance(request, FetchPackets) and not self.old
        await trio.sleep(0.01)  # the answer comes back after the caller moved on
        ids = [w.packet_id for w in request.wanted]
        self.requests.append(ids)
        parts, found = [], []
        for position, packet_id in enumerate(ids):
            data = self.packets.get(packet_id)
            if data is None:
                parts.append(FetchedPart(packet_id=packet_id, code="not_found"))
            elif position >= self.room:
                parts.append(FetchedPart(packet_id=packet_id, code="later"))
            else:
                parts.append(FetchedPart(packet_id=packet_id, size_bytes=len(data)))
                found.append(data)
        answer = PacketsData(request_id=1, parts=tuple(parts), data=b"".join(found))
        return self.lie(answer) if self.lie else answer

    async def request_with_digest(
        self, build: Callable[[int], Message], *, timeout_s: float
    ) -> tuple[Message, bytes | None]:
        request = build(1)
        assert isinstance(request, FetchPacket) and self.old
        await trio.sleep(0.01)
        self.requests.append([request.packet_id])
        data = self.packets[request.packet_id]
        return PacketData(request_id=1, packet_id=request.packet_id, data=data), None


def _chunks_on(holders: list[_Holder], count: int, *, k: int) -> list[ChunkRecord]:
    """``count`` chunks of ``len(holders)`` packets of 1 KiB, share i on holder i."""
    chunks = []
    for number in range(count):
        packets = []
        for share, holder in enumerate(holders):
            data = os.urandom(1024)
            packet_id = blake3.blake3(data).digest()
            holder.packets[packet_id] = data
            packets.append(PacketRecord(share, packet_id, bytes([share]) * 32, b""))
        chunk_id = blake3.blake3(bytes([number])).digest()
        size = 1024 * k
        chunks.append(ChunkRecord(chunk_id, size, size, False, k, len(holders), tuple(packets)))
    return chunks


def _fetch_all_at_once(
    holders: list[_Holder], chunks: list[ChunkRecord], **settings: Any
) -> tuple[Retriever, dict[int, FetchedChunk | BaseException]]:
    """Fetch every chunk at once through a running retriever."""

    async def link_for(target: bytes) -> Any:
        return holders[target[0]]

    _send, receive = trio.open_memory_channel[Any](1)
    retriever = Retriever(
        inbound=receive, link_for=link_for, is_connected=lambda _: True, **settings
    )
    fetched: dict[int, FetchedChunk | BaseException] = {}

    async def one(index: int, chunk: ChunkRecord) -> None:
        try:
            fetched[index] = await retriever.fetch_chunk(chunk)
        except ChunkUnavailable as exc:
            fetched[index] = exc

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(retriever.run)
            async with trio.open_nursery() as fetches:
                for index, chunk in enumerate(chunks):
                    fetches.start_soon(one, index, chunk)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return retriever, fetched


def _check(chunks: list[ChunkRecord], fetched: dict[int, Any], *, k: int) -> None:
    assert sorted(fetched) == list(range(len(chunks)))
    for index, chunk in enumerate(chunks):
        result = fetched[index]
        assert isinstance(result, FetchedChunk), result
        assert len(result.shares) == k
        for share, data in result.shares.items():
            assert blake3.blake3(data).digest() == chunk.packets[share].packet_id


def test_chunks_in_flight_share_each_holders_requests() -> None:
    holders = [_Holder() for _ in range(6)]
    chunks = _chunks_on(holders, 12, k=4)
    retriever, fetched = _fetch_all_at_once(holders, chunks)
    _check(chunks, fetched, k=4)
    asked = [packet for h in holders for request in h.requests for packet in request]
    requests = sum(len(h.requests) for h in holders)
    assert len(asked) == 4 * 12  # the fastest k of each chunk, nothing twice
    # Asked one at a time, 48 packets would take 48 requests; the first of each holder
    # leaves alone, the rest queue behind it.
    assert requests <= 12, [len(h.requests) for h in holders]
    assert max(len(r) for h in holders for r in h.requests) > 1
    assert retriever.stats["fetch_batches"] == requests


def test_packets_put_off_as_later_are_asked_again() -> None:
    holders = [_Holder(room=2) for _ in range(4)]
    chunks = _chunks_on(holders, 10, k=4)
    _retriever, fetched = _fetch_all_at_once(holders, chunks)
    _check(chunks, fetched, k=4)
    for holder in holders:
        assert all(len(set(r)) == len(r) for r in holder.requests)
        asked = [p for r in holder.requests for p in r]
        answered = [p for r in holder.requests for p in r[:2]]
        assert sorted(set(asked)) == sorted(answered)  # each "later" one came in the end
        assert len(asked) > len(set(asked))  # ...by being asked again


def test_a_holder_that_puts_off_what_it_had_room_for_is_passed_over() -> None:
    holders = [_Holder(room=0)] + [_Holder() for _ in range(5)]
    chunks = _chunks_on(holders, 4, k=4)
    retriever, fetched = _fetch_all_at_once(holders, chunks)
    _check(chunks, fetched, k=4)
    assert all(0 not in f.shares for f in fetched.values() if isinstance(f, FetchedChunk))
    # Asked once per batch, never again for the same packet: no loop.
    asked = [p for r in holders[0].requests for p in r]
    assert len(asked) == len(set(asked))
    assert retriever.stats["fallbacks"] >= 1


def _swap_bytes(answer: PacketsData) -> PacketsData:
    """Bytes that are not what the parts say (a corrupt or lying holder)."""
    return PacketsData(request_id=1, parts=answer.parts, data=bytes(len(answer.data)))


def _cut(answer: PacketsData) -> PacketsData:
    """A payload shorter than its parts name."""
    return PacketsData(request_id=1, parts=answer.parts, data=answer.data[:-1])


def _renamed(answer: PacketsData) -> PacketsData:
    """Parts that name other packets than those asked."""
    parts = tuple(
        FetchedPart(packet_id=bytes(32), size_bytes=p.size_bytes, code=p.code) for p in answer.parts
    )
    return PacketsData(request_id=1, parts=parts, data=answer.data)


@pytest.mark.parametrize("lie", [_swap_bytes, _cut, _renamed])
def test_a_lying_holder_costs_its_packets_not_the_restore(
    lie: Callable[[PacketsData], PacketsData],
) -> None:
    holders = [_Holder(lie=lie)] + [_Holder() for _ in range(5)]
    chunks = _chunks_on(holders, 6, k=4)
    retriever, fetched = _fetch_all_at_once(holders, chunks)
    _check(chunks, fetched, k=4)
    assert all(0 not in f.shares for f in fetched.values() if isinstance(f, FetchedChunk))
    if lie is _swap_bytes:
        assert retriever.stats["corrupt_packets"] >= 1


def test_an_older_holder_is_asked_one_packet_at_a_time() -> None:
    holders = [_Holder(old=share % 2 == 1) for share in range(6)]
    chunks = _chunks_on(holders, 8, k=6)
    _retriever, fetched = _fetch_all_at_once(holders, chunks)
    _check(chunks, fetched, k=6)
    for holder in holders:
        if holder.old:
            assert len(holder.requests) == 8 and all(len(r) == 1 for r in holder.requests)
        else:
            assert len(holder.requests) < 8


def test_a_missing_packet_is_fetched_from_another_holder() -> None:
    holders = [_Holder() for _ in range(6)]
    chunks = _chunks_on(holders, 5, k=4)
    holders[1].packets.clear()  # lost its disk
    _retriever, fetched = _fetch_all_at_once(holders, chunks)
    _check(chunks, fetched, k=4)
    for result in fetched.values():
        assert isinstance(result, FetchedChunk) and 1 not in result.shares


def test_a_batch_waits_for_company_only_while_it_is_not_full() -> None:
    """Under the mock clock: a lone packet leaves when the linger ends; a holder asked
    for a whole batch's worth is asked at once."""
    holders = [_Holder() for _ in range(2)]
    asked_at: list[float] = []
    real_request = holders[0].request

    async def timed(build: Callable[[int], Message], *, timeout_s: float) -> Message:
        asked_at.append(trio.current_time())
        return await real_request(build, timeout_s=timeout_s)

    holders[0].request = timed  # type: ignore[method-assign]
    lone = _chunks_on(holders, 1, k=1)
    _retriever, fetched = _fetch_all_at_once(holders, lone, linger_s=0.25)
    _check(lone, fetched, k=1)
    assert asked_at == [pytest.approx(0.25)]

    asked_at.clear()
    many = _chunks_on(holders, 16, k=1)  # 16 packets for holder 0: a full batch
    _retriever, fetched = _fetch_all_at_once(holders, many, linger_s=0.25)
    _check(many, fetched, k=1)
    assert asked_at[0] == pytest.approx(0.0)
    assert [len(r) for r in holders[0].requests] == [1, 16]  # the lone one, then all


class _SilentHolder(_Holder):
    """Accepts every request and never answers (a hung process, a black-holed route)."""

    async def request(self, build: Callable[[int], Message], *, timeout_s: float) -> Message:
        request = build(1)
        assert isinstance(request, FetchPackets)
        self.requests.append([w.packet_id for w in request.wanted])
        await trio.sleep(timeout_s)
        raise RequestTimeout("did not answer", peer="silent")


def test_a_silent_holder_costs_a_verify_one_timeout_not_one_per_chunk() -> None:
    holders: list[_Holder] = [_SilentHolder()] + [_Holder() for _ in range(5)]
    chunks = _chunks_on(holders, 5, k=4)

    async def link_for(target: bytes) -> Any:
        return holders[target[0]]

    _send, receive = trio.open_memory_channel[Any](1)
    retriever = Retriever(inbound=receive, link_for=link_for, is_connected=lambda _: True)
    results: list[FetchedChunk] = []
    took: list[float] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(retriever.run)
            for chunk in chunks:  # one after another, as a verify of a long snapshot
                started = trio.current_time()
                results.append(await retriever._handle(FetchChunk(chunk, all_packets=True)))
                took.append(trio.current_time() - started)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    for result in results:
        assert sorted(result.shares) == [1, 2, 3, 4, 5]
        assert [share for share, _, _ in result.missing] == [0]
        assert 0 not in result.answered  # silent is not "answered without it"
    assert len(holders[0].requests) == 1  # asked once, then passed over
    assert took[0] >= retriever.request_timeout_s
    assert sum(took[1:]) < 1.0


# --- the holder's side: a real packet store answering FetchPackets ------------------------


async def test_a_holder_answers_a_batch_within_its_frame_and_says_which_it_lacks(
    tmp_path: Path,
) -> None:
    """Packets held are answered in order with their lengths; one not held is
    "not_found"; what would overflow the answer is "later" (asked again, it comes)."""
    held = [os.urandom(1024 * 1024) for _ in range(15)]
    ids = [blake3.blake3(p).digest() for p in held]
    absent = blake3.blake3(b"never stored").digest()
    async with open_store(tmp_path, allocation=64 * 1024 * 1024) as (store, ask):
        for packet_id, data in zip(ids, held, strict=True):
            assert store.packets.put(packet_id, data)
        wanted = (*(WantedPacket(packet_id=i) for i in ids), WantedPacket(packet_id=absent))
        answer = await ask(FetchPackets(request_id=1, wanted=wanted), peer=b"p" * 32)
        assert isinstance(answer, PacketsData)
        codes = [part.code for part in answer.parts]
        assert [part.packet_id for part in answer.parts] == [*ids, absent]
        # 15 MiB of answer, less room for its header: 14 packets of 1 MiB fit, not 15.
        assert codes == [""] * 14 + ["later", "not_found"]
        offset = 0
        for part, data in zip(answer.parts[:14], held[:14], strict=True):
            assert answer.data[offset : offset + part.size_bytes] == data
            offset += part.size_bytes
        assert offset == len(answer.data)
        again = await ask(
            FetchPackets(request_id=2, wanted=(WantedPacket(packet_id=ids[14]),)), peer=b"p" * 32
        )
        assert isinstance(again, PacketsData) and again.data == held[14]
        assert store.stats["packets_served"] == 15 and store.stats["fetch_misses"] == 1
