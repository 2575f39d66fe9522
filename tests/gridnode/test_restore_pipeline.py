"""The restore pipeline's behaviour (issue 11): fastest k, bounded bytes, batched writes.

Timing is never asserted: trio's ``MockClock`` jumps over every wait, and what is checked
is who was asked, how far ahead the fetches ran, and what landed on disk.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest
import trio
import trio.testing

from gridnode.actors.assembler import Assembler, AssembleTree
from gridnode.actors.retriever import Retriever
from gridnode.scanner import ScanError
from gridnode.storage.records import ChunkRecord, EntryRecord, PacketRecord
from gridnode.tree_writer import TreeWriter
from protocol import FetchPacket, PacketData

MiB = 1024 * 1024


# --- the retriever: the fastest k, a stalled holder paid for once -------------------------------


class _Holder:
    """A fake link to one holder: answers at once, or never."""

    def __init__(self, packets: dict[bytes, bytes], *, stalls: bool = False) -> None:
        self.packets = packets
        self.stalls = stalls
        self.asked = 0

    async def request_with_digest(
        self, factory: Callable[[int], FetchPacket], *, timeout_s: float
    ) -> tuple[PacketData, bytes | None]:
        request = factory(1)
        self.asked += 1
        if self.stalls:
            await trio.sleep(timeout_s * 10)  # far beyond any hedge: the test never waits
        data = self.packets[request.packet_id]
        return PacketData(request_id=1, packet_id=request.packet_id, data=data), None


def _chunks_on(holders: list[_Holder], count: int, *, k: int) -> list[ChunkRecord]:
    """``count`` chunks of ``len(holders)`` packets, share i on holder i."""
    chunks = []
    for number in range(count):
        packets = []
        for share, holder in enumerate(holders):
            data = os.urandom(64) + bytes([number, share])
            packet_id = blake3.blake3(data).digest()
            holder.packets[packet_id] = data
            packets.append(PacketRecord(share, packet_id, bytes([share]) * 32, b""))
        chunk_id = blake3.blake3(bytes([number])).digest()
        chunks.append(ChunkRecord(chunk_id, 100, 100, False, k, len(holders), tuple(packets)))
    return chunks


def _retriever(holders: list[_Holder]) -> Retriever:
    async def link_for(target: bytes) -> Any:
        return holders[target[0]]

    _send, receive = trio.open_memory_channel[Any](1)
    return Retriever(inbound=receive, link_for=link_for, is_connected=lambda _: True)


def test_a_holder_that_never_answers_is_hedged_once_then_asked_last() -> None:
    holders = [_Holder({}, stalls=share == 0) for share in range(6)]
    chunks = _chunks_on(holders, 12, k=4)
    retriever = _retriever(holders)
    fetched = []

    async def main() -> None:
        for chunk in chunks:
            fetched.append(await retriever.fetch_chunk(chunk))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert all(len(f.shares) == 4 and 0 not in f.shares for f in fetched)
    # Asked for the first chunk only: it stalled, was hedged, and went to the back.
    assert holders[0].asked == 1
    assert retriever.stats["hedges"] == 1
    # The others answered k at a time: one extra packet for the hedge, no more.
    assert sum(h.asked for h in holders[1:]) == 4 * len(chunks)


def test_several_chunks_in_flight_each_complete_from_the_fastest_k() -> None:
    holders = [_Holder({}, stalls=share in (1, 3)) for share in range(6)]
    chunks = _chunks_on(holders, 10, k=4)
    retriever = _retriever(holders)
    fetched: dict[int, Any] = {}

    async def one(index: int, chunk: ChunkRecord) -> None:
        fetched[index] = await retriever.fetch_chunk(chunk)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for index, chunk in enumerate(chunks):
                nursery.start_soon(one, index, chunk)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sorted(fetched) == list(range(10))
    for chunk, result in zip(chunks, (fetched[i] for i in range(10)), strict=True):
        assert sorted(result.shares) == [0, 2, 4, 5]
        for share, data in result.shares.items():
            assert blake3.blake3(data).digest() == chunk.packets[share].packet_id


def test_a_fetched_chunks_packets_are_freed_when_it_is_dropped() -> None:
    """Nothing but the answer holds a chunk's packets: once it is dropped they go at once,
    not when the cyclic garbage collector next runs (it is off here), so a restore holds
    what its window allows (issue 11)."""
    holders = [_Holder({}) for _ in range(6)]
    chunks = _chunks_on(holders, 3, k=4)
    retriever = _retriever(holders)
    packets = [holders[p.share].packets[p.packet_id] for p in chunks[1].packets]
    baseline = [sys.getrefcount(p) for p in packets]

    async def main() -> None:
        for chunk in chunks:
            fetched = await retriever.fetch_chunk(chunk)
            assert len(fetched.shares) == 4
            del fetched

    gc.collect()
    gc.disable()
    try:
        trio.run(main)
        assert [sys.getrefcount(p) for p in packets] == baseline
    finally:
        gc.enable()


# --- the assembler: a byte budget for chunks in flight -------------------------------------------


class _PlainAssembler(Assembler):
    """Chunks come back as their plaintext (share 0): the budget, not the codec, is tested."""

    async def decode(self, chunk: ChunkRecord, shares: dict[int, bytes]) -> bytes:
        return shares[0]


def _assembler(fetch: Callable[[ChunkRecord], Any], **kwargs: Any) -> Assembler:
    _send, receive = trio.open_memory_channel[Any](1)
    return _PlainAssembler(
        inbound=receive,
        dedup_secret=bytes(32),
        record_key=bytes(32),
        cpu_limiter=trio.CapacityLimiter(2),
        disk_limiter=trio.CapacityLimiter(2),
        fetch=fetch,
        **kwargs,
    )


@pytest.mark.parametrize(("budget_mib", "most_ahead"), [(6, 3), (1, 1)])
def test_chunks_held_ahead_of_the_writer_stay_within_the_byte_budget(
    tmp_path: Path, budget_mib: int, most_ahead: int
) -> None:
    """Each 1 MiB chunk counts 2 MiB (ciphertext and plaintext): a 6 MiB budget lets 3 be
    held at once, the one being written included; a budget smaller than one chunk still
    restores, one chunk at a time."""
    count = 10
    blobs = [os.urandom(MiB) for _ in range(count)]
    chunks = {
        blake3.blake3(b).digest(): ChunkRecord(blake3.blake3(b).digest(), MiB, MiB, False, 1, 1, ())
        for b in blobs
    }
    by_id = dict(zip(chunks, blobs, strict=True))
    order = list(chunks)
    written = [0]
    ahead: list[int] = []

    async def fetch(chunk: ChunkRecord) -> dict[int, bytes]:
        index = order.index(chunk.chunk_id)
        ahead.append(index + 1 - written[0] // MiB)  # fetched but not yet written
        await trio.sleep(0.01)
        return {0: by_id[chunk.chunk_id]}

    def progress(files: int, nbytes: int) -> None:
        written[0] = nbytes

    entry = EntryRecord(
        b"big", "file", 0o644, 0, count * MiB, extents=tuple((c, 0, MiB) for c in order)
    )
    assembler = _assembler(fetch, prefetch_bytes=budget_mib * MiB)
    job = AssembleTree(entries=[entry], chunks=chunks, dest=tmp_path, progress=progress)
    stats = trio.run(assembler.assemble, job)
    assert stats["bytes"] == count * MiB
    assert (tmp_path / "big").read_bytes() == b"".join(blobs)
    assert max(ahead) == most_ahead


@pytest.mark.parametrize(("writer_waits", "most_ahead"), [(True, 10), (False, 4)])
def test_the_window_widens_only_while_the_writer_waits_for_chunks(
    tmp_path: Path, writer_waits: bool, most_ahead: int
) -> None:
    """The window starts at 8 MiB (4 chunks of 1 MiB, each counted twice) and widens each
    time the writer finds its next chunk not fetched yet, up to the whole 20 MiB (10
    chunks); a writer that never waits keeps it at 4, as in a tree of small files, whose
    restore then holds less memory (issue 11)."""
    count = 24
    blobs = [os.urandom(MiB) for _ in range(count)]
    ids = [blake3.blake3(b).digest() for b in blobs]
    chunks = {c: ChunkRecord(c, MiB, MiB, False, 1, 1, ()) for c in ids}
    by_id = dict(zip(ids, blobs, strict=True))
    written = [0]
    ahead: list[int] = []
    # reached[n]: the writer has written n chunks, so it now waits for chunk n.
    reached = [trio.Event() for _ in range(count + 1)]
    reached[0].set()

    async def fetch(chunk: ChunkRecord) -> dict[int, bytes]:
        index = ids.index(chunk.chunk_id)
        ahead.append(index + 1 - written[0] // MiB)
        if writer_waits:  # a slow holder: the chunk comes only once the writer wants it
            await reached[index].wait()
        return {0: by_id[chunk.chunk_id]}

    def progress(files: int, nbytes: int) -> None:
        written[0] = nbytes
        reached[nbytes // MiB].set()

    entry = EntryRecord(
        b"big", "file", 0o644, 0, count * MiB, extents=tuple((c, 0, MiB) for c in ids)
    )
    assembler = _assembler(fetch, prefetch_bytes=20 * MiB, prefetch_start_bytes=8 * MiB)
    job = AssembleTree(entries=[entry], chunks=chunks, dest=tmp_path, progress=progress)
    trio.run(assembler.assemble, job)
    assert (tmp_path / "big").read_bytes() == b"".join(blobs)
    assert max(ahead) == most_ahead


def test_small_files_are_written_in_concurrent_batches_and_all_land(tmp_path: Path) -> None:
    blob = os.urandom(300 * 1000)
    chunk_id = blake3.blake3(blob).digest()
    chunk = ChunkRecord(chunk_id, len(blob), len(blob), False, 1, 1, ())
    entries = [EntryRecord(b"d", "dir", 0o755, 0, 0)] + [
        EntryRecord(
            b"d/f%03d" % i, "file", 0o640, 10**18 + i, 1000, extents=((chunk_id, i * 1000, 1000),)
        )
        for i in range(300)
    ]

    async def fetch(chunk: ChunkRecord) -> dict[int, bytes]:
        return {0: blob}

    assembler = _assembler(fetch, write_batches=3)
    stats = trio.run(assembler.assemble, AssembleTree(entries, {chunk_id: chunk}, tmp_path))
    assert stats["files"] == 300 and stats["bytes"] == 300 * 1000
    for i in range(300):
        path = tmp_path / "d" / f"f{i:03d}"
        assert path.read_bytes() == blob[i * 1000 : (i + 1) * 1000]
        assert path.stat().st_mode & 0o777 == 0o640
        assert path.stat().st_mtime_ns == 10**18 + i
    assert not [p for p in (tmp_path / "d").iterdir() if p.name.startswith(".gridnode-")]


def test_a_small_file_never_replaces_a_directory_and_leaves_no_temporary(tmp_path: Path) -> None:
    blob = b"x" * 10
    chunk_id = blake3.blake3(blob).digest()
    chunk = ChunkRecord(chunk_id, len(blob), len(blob), False, 1, 1, ())
    (tmp_path / "f" / "inside").mkdir(parents=True)
    entry = EntryRecord(b"f", "file", 0o644, 0, 10, extents=((chunk_id, 0, 10),))

    async def fetch(chunk: ChunkRecord) -> dict[int, bytes]:
        return {0: blob}

    with pytest.raises(ScanError, match="refusing to replace directory"):
        trio.run(_assembler(fetch).assemble, AssembleTree([entry], {chunk_id: chunk}, tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    assert (tmp_path / "f" / "inside").is_dir()


def test_a_checked_parent_does_not_let_a_bad_name_through(tmp_path: Path) -> None:
    """``final_path`` checks a directory once and then only each name: every escape that
    ``safe_join`` refuses is still refused once the parent is known."""
    writer = TreeWriter(tmp_path)
    assert writer.final_path(b"a/x") == str(tmp_path / "a" / "x")
    assert writer.final_path(b"y") == str(tmp_path / "y")
    for rel in (b"a/..", b"a/.", b"a/", b"a/b\x00", b"/y", b"a//x", b"..", b"/a/x"):
        with pytest.raises(ScanError):
            writer.final_path(rel)
