"""A restore's packets are views of the holder's answer, not copies of it.

A ``FetchPackets`` answer carries the packets of several chunks back to back; a chunk
fetched to be decoded takes read-only views of it (the decoder copies each packet once,
into its scratch buffer), while a fetch of every packet (verify, repair, leave) gets
``bytes`` of its own, since those packets may be stored elsewhere again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import blake3
import trio
import trio.testing

from gridnode.actors.retriever import FetchChunk, FetchedChunk, Retriever
from protocol import Message, PacketsData

from .test_fetch_batches import _chunks_on, _Holder


class _Recording(_Holder):
    """A holder that keeps every answer's payload, to tell views of it from copies."""

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[bytes] = []

    async def request(self, build: Callable[[int], Message], *, timeout_s: float) -> Message:
        answer = await super().request(build, timeout_s=timeout_s)
        assert isinstance(answer, PacketsData)
        self.payloads.append(answer.data)
        return answer


def _fetch(holders: list[_Recording], all_packets: bool) -> list[FetchedChunk]:
    chunks = _chunks_on(list(holders), 6, k=3)

    async def link_for(target: bytes) -> Any:
        return holders[target[0]]

    _send, receive = trio.open_memory_channel[Any](1)
    retriever = Retriever(inbound=receive, link_for=link_for, is_connected=lambda _: True)
    fetched: list[FetchedChunk] = []

    async def one(chunk: Any) -> None:
        fetched.append(await retriever._handle(FetchChunk(chunk, all_packets=all_packets)))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(retriever.run)
            async with trio.open_nursery() as fetches:
                for chunk in chunks:
                    fetches.start_soon(one, chunk)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(fetched) == len(chunks)
    for result in fetched:
        assert len(result.shares) >= 3
        assert any(_matches(chunk, result) for chunk in chunks)  # each packet checks out
    return fetched


def _matches(chunk: Any, result: FetchedChunk) -> bool:
    return all(
        blake3.blake3(data).digest() == chunk.packets[share].packet_id
        for share, data in result.shares.items()
    )


def test_a_chunk_to_decode_takes_views_of_the_answer() -> None:
    holders = [_Recording() for _ in range(4)]
    fetched = _fetch(holders, all_packets=False)
    payloads = {id(p) for h in holders for p in h.payloads}
    for result in fetched:
        for data in result.shares.values():
            assert isinstance(data, memoryview)
            assert data.readonly
            assert id(data.obj) in payloads  # the answer itself: no byte was copied


def test_a_fetch_of_every_packet_gets_bytes_of_its_own() -> None:
    holders = [_Recording() for _ in range(4)]
    fetched = _fetch(holders, all_packets=True)
    for result in fetched:
        assert len(result.shares) == 4
        assert all(type(data) is bytes for data in result.shares.values())
