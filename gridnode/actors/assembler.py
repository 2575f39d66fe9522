"""The assembler actor (claims 8, 41): from packets back to files, in a usable form.

For a restore it walks the snapshot's entries in path order, a page at a time from a
``TreeSource`` (the catalog, for a real restore: see ``_write_files`` for how far it reads
ahead), and, for each file, the chunks its extents point to: a prefetcher asks the
retriever for upcoming chunks (a bounded window ahead of the writer), each chunk is
erasure-decoded, decrypted, decompressed and checked against its unique data identifier
in a worker thread, and the tree writer
(``gridnode/tree_writer.py``: the blocking file-system half, which also checks every path)
assembles files through a temporary file and a rename, then makes hard links, symlinks
and special files, and finishes directories.  A file appears under its final name only
once it is complete; the restore ends with a sync so "restore finished" means "on disk".

Small files (the usual case by count) are written in batches, one worker-thread hop per
batch, because a thread hop costs about as much as writing a 4 KiB file.  One batch is
written at a time (``write_batches``) while the next is assembled: files of a batch
share directories, and creating or renaming a file holds its directory's lock, so a
second writer thread spun in the kernel waiting for the first (48,000 files of
/usr/share onto tmpfs: 8.5 s and 8.8 source CPU-s with two, 7.5-7.7 s and 7.4-7.6 with
one; on ext4 the second thread cost 2.5 s of system time more).

Backpressure: the chunks fetched, decoding or decoded ahead of the writer hold at most
``prefetch_bytes`` (each counts its ciphertext and its plaintext, which coexist while it
decodes) and are at most ``prefetch_chunks``; a chunk larger than the whole budget is
fetched alone.  The writer releases a chunk's share when it moves past it.  The window
starts at ``prefetch_start_bytes`` and widens by ``PREFETCH_STEP_BYTES`` each time the
writer finds the chunk it needs not decoded yet, up to ``prefetch_bytes``: a large
file's writer outruns a small window and needs the whole 20 MiB (10 MiB held its
restore to 111-124 MB/s instead of 142-162), while a tree of small files is bound by
creating files, its writer seldom waits, and the window stays near 10 MiB (50,000 files
of 4 KiB: source peak 108-117 MiB instead of 115-127; issue 11).
Cancellation: a cancelled restore leaves at most temporary files (``.gridnode-*.tmp``),
never a truncated file under a real name.
"""

from __future__ import annotations

import abc
import bisect
import collections
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import attrs
import trio

from ..byte_budget import ByteBudget
from ..exception_groups import collapse_groups
from ..logic.packing import ChunkIntegrityError, ErasureParams, decode_chunk, release_scratch
from ..memory import release_free_memory
from ..storage.records import HOLE, ChunkRecord, EntryRecord
from ..tree_writer import Piece, RestoreFailed, TreeWriter
from .calls import Handlers, Inbox, Request, serve_calls
from .retriever import Packet

__all__ = [
    "AssembleTree",
    "Assembler",
    "DecodeChunk",
    "EntryKind",
    "ListSource",
    "RestoreFailed",
    "TreeSource",
    "TreeWriter",
]

#: Files at most this big are written whole, several per worker-thread hop.
SMALL_FILE_BYTES = 4 * 1024 * 1024
BATCH_FILES = 64
BATCH_BYTES = 2 * 1024 * 1024
#: File entries queued ahead of the writer: the reader reads on below ``READ_AHEAD``, and
#: up to ``READ_AHEAD_MAX`` while the prefetcher has no chunk left to fetch (many small
#: files share a chunk: the window of chunks may span thousands of files).
READ_AHEAD = 1024
READ_AHEAD_MAX = 16 * 1024
#: How much the prefetch window widens each time the writer has to wait for a chunk.
PREFETCH_STEP_BYTES = 2 * 1024 * 1024
#: Chunk records looked up per worker-thread hop by the prefetcher.
RECORD_BATCH = 32
#: Batches of small files written between two returns of freed memory to the system
#: (``malloc_trim``, in a worker thread).  Packets, decoded chunks and the small files'
#: copies come and go in one heap, and their holes stay resident: a restore of 50,000
#: small files peaked at 120-123 MiB without a trim, 110-113 MiB with one every 2 chunks.
#: Trimming by chunks made a large file's restore cost the source 8.1 CPU-s/GB instead
#: of 5.8 (the pages handed back are faulted in again at once), so only small files'
#: batches count: a large file's chunks leave no small holes.  Every 16 batches, not 4:
#: half the page faults of a 48,000-file restore (133,000 instead of 262,000) and about
#: 0.2 source CPU-s less (5.3 s instead of 5.5), at the same peak (50,000 files: 111-122
#: MiB in four runs against 113-122 with a trim every 4; issue 11).
TRIM_EVERY_BATCHES = 16

#: The passes of a restore: a kind of entry, ``special`` standing for every other kind
#: (FIFOs, devices, sockets).
EntryKind = Literal["dir", "file", "symlink", "special"]
_KINDS: dict[str, EntryKind] = {"dir": "dir", "file": "file", "symlink": "symlink"}


class TreeSource(abc.ABC):
    """Where a restore's entries come from, a page at a time, so that the assembler
    holds a bounded part of a snapshot of any size (``gridnode.restore`` reads them
    from the catalog; ``ListSource`` serves a list)."""

    #: Entries per page at most; a shorter page is the last.
    page_size: int = 512

    @abc.abstractmethod
    async def page(
        self, kind: EntryKind, after: bytes | None, *, descending: bool = False
    ) -> list[EntryRecord]:
        """The next entries of ``kind`` after the path ``after`` (None: from the first), in
        path order (reversed with ``descending``), at most ``page_size`` of them."""

    @abc.abstractmethod
    async def chunks(self, chunk_ids: Sequence[bytes]) -> dict[bytes, ChunkRecord]:
        """The records of those chunks the catalog knows (a missing one fails the restore)."""

    @abc.abstractmethod
    async def restored_files(self, paths: Iterable[bytes]) -> set[bytes]:
        """Which of ``paths`` are files being restored: first names of hard-link groups
        whose later names become links."""


class ListSource(TreeSource):
    """Entries and chunk records already in memory (tests; small restores)."""

    def __init__(self, entries: Iterable[EntryRecord], chunks: Mapping[bytes, ChunkRecord]) -> None:
        self._by_kind: dict[EntryKind, list[EntryRecord]] = {}
        for entry in sorted(entries, key=lambda e: e.path):
            self._by_kind.setdefault(_KINDS.get(entry.kind, "special"), []).append(entry)
        self._paths = {kind: [e.path for e in entries] for kind, entries in self._by_kind.items()}
        self._chunks = chunks

    async def page(
        self, kind: EntryKind, after: bytes | None, *, descending: bool = False
    ) -> list[EntryRecord]:
        entries, paths = self._by_kind.get(kind, []), self._paths.get(kind, [])
        if descending:
            end = len(paths) if after is None else bisect.bisect_left(paths, after)
            return entries[max(0, end - self.page_size) : end][::-1]
        start = 0 if after is None else bisect.bisect_right(paths, after)
        return entries[start : start + self.page_size]

    async def chunks(self, chunk_ids: Sequence[bytes]) -> dict[bytes, ChunkRecord]:
        return {c: self._chunks[c] for c in chunk_ids if c in self._chunks}

    async def restored_files(self, paths: Iterable[bytes]) -> set[bytes]:
        files = set(self._paths.get("file", []))
        return {p for p in paths if p in files}


@attrs.frozen
class DecodeChunk(Request[bytes]):
    """A chunk's plaintext from k of its packets."""

    chunk: ChunkRecord
    shares: Mapping[int, Packet]


@attrs.frozen
class AssembleTree(Request[dict[str, Any]]):
    """Write a snapshot's entries under ``dest``; answered with the restore's totals.

    ``entries``: a ``TreeSource``, or a list of entries whose chunks are in ``chunks``."""

    entries: Sequence[EntryRecord] | TreeSource
    chunks: Mapping[bytes, ChunkRecord]
    dest: Path
    progress: Callable[[int, int], None] | None = None  # (files done, bytes written)
    numeric_owner: bool = False


FetchChunk = Callable[[ChunkRecord], Awaitable[Mapping[int, Packet]]]


# --- the actor -------------------------------------------------------------------------------


@attrs.define
class Assembler:
    inbound: Inbox
    dedup_secret: bytes
    record_key: bytes
    cpu_limiter: trio.CapacityLimiter
    disk_limiter: trio.CapacityLimiter
    fetch: FetchChunk
    #: Chunks in flight ahead of the writer: at most this many, holding at most this many
    #: bytes (ciphertext and plaintext of each; see the module docstring).  20 MiB is what
    #: the former window of 8 chunks held at the mean chunk size: memory as before.
    prefetch_chunks: int = 16
    prefetch_bytes: int = 20 * 1024 * 1024
    #: Where the window starts (see the module docstring: it widens while the writer waits).
    prefetch_start_bytes: int = 8 * 1024 * 1024
    #: Batches of small files written at once (see the module docstring: one, because
    #: writers in one directory take turns on its lock and spin while they wait).
    write_batches: int = 1
    chunks_decoded: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        handlers = (
            Handlers("assembler").on(DecodeChunk, self._decode).on(AssembleTree, self.assemble)
        )
        await serve_calls(self.inbound, handlers, concurrency=8, task_status=task_status)

    async def _decode(self, cmd: DecodeChunk) -> bytes:
        return await self.decode(cmd.chunk, cmd.shares)

    async def decode(self, chunk: ChunkRecord, shares: Mapping[int, Packet]) -> bytes:
        def work() -> bytes:
            return decode_chunk(
                shares,
                chunk_id=chunk.chunk_id,
                dedup_secret=self.record_key if chunk.domain == "record" else self.dedup_secret,
                params=ErasureParams(chunk.k, chunk.n),
                cipher_size=chunk.cipher_size,
                compressed=chunk.compressed,
                plain_size=chunk.plain_size,
            )  # packet ids were checked by the retriever as each packet arrived

        try:
            data = await trio.to_thread.run_sync(work, limiter=self.cpu_limiter)
        except ChunkIntegrityError as exc:
            raise RestoreFailed(
                f"chunk {chunk.chunk_id.hex()[:12]} failed its checks: {exc}"
            ) from None
        self.chunks_decoded += 1
        return data

    async def fetch_plaintext(self, chunk: ChunkRecord) -> bytes:
        shares = await self.fetch(chunk)
        return await self.decode(chunk, shares)

    async def assemble(self, job: AssembleTree) -> dict[str, Any]:
        """Directories, then files (streamed: see ``_write_files``), then hard links,
        symlinks and special files, then the directories' metadata; each a pass over the
        snapshot's entries of that kind, read page by page."""
        source = (
            job.entries
            if isinstance(job.entries, TreeSource)
            else ListSource(job.entries, job.chunks)
        )
        writer = await trio.to_thread.run_sync(
            functools.partial(TreeWriter, job.dest, numeric_owner=job.numeric_owner)
        )

        async def each_page(
            kind: EntryKind, work: Callable[[list[EntryRecord]], Any], *, descending: bool = False
        ) -> tuple[int, int]:
            """Run ``work`` on every page of ``kind`` (in a worker thread); returns how
            many entries there were and the sum of what ``work`` returned (when ints)."""
            count = total = 0
            after: bytes | None = None
            while True:  # ends at the first short page; each page moves ``after`` on
                page = await source.page(kind, after, descending=descending)
                if not page:
                    break
                done = await trio.to_thread.run_sync(work, page, limiter=self.disk_limiter)
                count += len(page)
                total += done if isinstance(done, int) else 0
                if len(page) < source.page_size:
                    break
                after = page[-1].path
            return count, total

        dirs, _ = await each_page("dir", writer.make_dirs)
        try:
            stats = await self._write_files(job, source, writer)
        finally:
            release_scratch()  # every chunk is decoded: decoding's pooled buffers go back
        linked = stats.pop("linked")
        assert isinstance(linked, list)
        copied = await trio.to_thread.run_sync(writer.make_links, linked, limiter=self.disk_limiter)
        symlinks, _ = await each_page("symlink", writer.make_symlinks)
        _, made = await each_page("special", writer.make_specials)
        # Reverse path order puts every directory after everything below it, as the
        # writer needs (deepest first), without holding the directories.
        await each_page("dir", writer.finish_dirs, descending=True)
        await trio.to_thread.run_sync(writer.sync)
        files_done = int(stats["files"]) + len(linked)
        bytes_done = int(stats["bytes"]) + copied
        if job.progress:
            job.progress(files_done, bytes_done)
        return {
            "files": files_done,
            "bytes": bytes_done,
            "dirs": dirs,
            "symlinks": symlinks,
            "hardlinks": len(linked),
            "specials": made,
            "chunks": stats["chunks"],
            "notes": writer.notes,
        }

    async def _write_files(
        self, job: AssembleTree, source: TreeSource, writer: TreeWriter
    ) -> dict[str, Any]:
        """The files, in path order, as three tasks that share bounded queues:

        - the reader takes pages of file entries from ``source`` and queues the files to
          write (``pending``) and the chunks they need, in order (``upcoming``; a chunk
          repeated by consecutive files, small files packed together, is one fetch); it
          reads ahead only while the writer has fewer than ``READ_AHEAD`` files queued or
          the prefetcher waits for chunks to fetch, never past ``READ_AHEAD_MAX`` files;
        - the prefetcher looks up the chunks' records and fetches them within the
          window (``prefetch_chunks``, ``prefetch_bytes``);
        - the writer (this task) writes the files, taking each chunk as it comes.

        A later name of a hard-link group whose first name is restored too is not
        written: it is returned in ``linked`` (without its extents) to be linked."""
        pending: collections.deque[EntryRecord] = collections.deque()
        upcoming: collections.deque[bytes] = collections.deque()
        linked: list[EntryRecord] = []
        changed = _Signal()
        read_all = False
        prefetcher_waits = False
        queued_chunks = 0

        results: dict[int, trio.Event] = {}
        data: dict[int, bytes | BaseException] = {}
        window = trio.Semaphore(self.prefetch_chunks)
        budget = ByteBudget(min(self.prefetch_start_bytes, self.prefetch_bytes))
        charged: dict[int, int] = {}
        batch_slots = trio.Semaphore(max(1, self.write_batches))
        files_done = 0
        bytes_done = 0

        async def read() -> None:
            nonlocal read_all, queued_chunks, prefetcher_waits
            last: bytes | None = None
            after: bytes | None = None
            while True:  # ends at the first short page; each page moves ``after`` on
                while len(pending) >= READ_AHEAD_MAX or (
                    len(pending) >= READ_AHEAD and not prefetcher_waits
                ):
                    await changed.wait()
                page = await source.page("file", after, descending=False)
                firsts = {e.hardlink for e in page if e.hardlink is not None}
                restored = await source.restored_files(firsts) if firsts else set()
                for entry in page:
                    if entry.hardlink is not None and entry.hardlink in restored:
                        linked.append(attrs.evolve(entry, extents=()))
                        continue
                    pending.append(entry)
                    for chunk_id, _, _ in entry.extents:
                        if chunk_id != HOLE and chunk_id != last:
                            upcoming.append(chunk_id)
                            queued_chunks += 1
                            last = chunk_id
                if upcoming:
                    prefetcher_waits = False  # it has chunks to fetch now
                changed.notify()
                if len(page) < source.page_size:
                    break
                after = page[-1].path
            read_all = True
            changed.notify()

        async def prefetch(nursery: trio.Nursery) -> None:
            nonlocal prefetcher_waits
            index = 0
            while True:  # ends once the reader is done and every chunk is under way
                while not upcoming:
                    if read_all:
                        return
                    prefetcher_waits = True
                    changed.notify()  # the reader reads on for it
                    await changed.wait()
                prefetcher_waits = False
                wanted = [upcoming.popleft() for _ in range(min(len(upcoming), RECORD_BATCH))]
                changed.notify()  # the reader may read on
                records = await source.chunks(wanted)
                for chunk_id in wanted:
                    chunk = records.get(chunk_id)
                    if chunk is None:
                        raise RestoreFailed(
                            f"the catalog has no record of chunk {chunk_id.hex()[:12]}"
                        )
                    await window.acquire()
                    charged[index] = await budget.acquire(chunk.cipher_size + chunk.plain_size)
                    nursery.start_soon(fetch_one, index, chunk)
                    index += 1

        def event(index: int) -> trio.Event:
            found = results.get(index)
            if found is None:
                found = results[index] = trio.Event()
            return found

        async def fetch_one(index: int, chunk: ChunkRecord) -> None:
            try:
                data[index] = await self.fetch_plaintext(chunk)
            except Exception as exc:  # handed to the writer, which stops the restore
                data[index] = exc
            event(index).set()

        def drop(index: int) -> None:
            """The writer is past chunk ``index``: its bytes and its place are free."""
            data.pop(index, None)
            results.pop(index, None)
            budget.release(charged.pop(index))
            window.release()

        async def take(index: int) -> bytes:
            ready = event(index)
            if index > 0 and not ready.is_set():  # the writer waits: the window is short
                budget.grow(min(self.prefetch_bytes, budget.total_bytes + PREFETCH_STEP_BYTES))
            await ready.wait()
            value = data[index]
            if isinstance(value, BaseException):
                raise value
            return value

        async def write_batch(
            batch: list[tuple[EntryRecord, list[Piece]]],
            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
        ) -> None:
            nonlocal files_done, bytes_done
            async with batch_slots:
                task_status.started()  # holds its slot: the next batch waits for one
                # Not ``bytes_done += await ...``: that reads the total before the wait,
                # and another batch may add to it meanwhile.
                written = await trio.to_thread.run_sync(
                    writer.write_small, batch, limiter=self.disk_limiter
                )
            bytes_done += written
            files_done += len(batch)
            if job.progress:
                job.progress(files_done, bytes_done)

        async def next_file() -> EntryRecord | None:
            """The next file to write, or None once every file has been."""
            while not pending:
                if read_all:
                    return None
                await changed.wait()
            if len(pending) == READ_AHEAD:
                changed.notify()  # falls below: the reader may read on
            return pending.popleft()

        async def write_files() -> None:
            """The files in order, small ones in batches; returns once all are on disk
            (the writers' nursery waits for the batches still being written)."""
            nonlocal files_done, bytes_done
            async with trio.open_nursery() as writers:
                position = -1
                current: bytes = b""
                current_id: bytes | None = None
                batch: list[tuple[EntryRecord, list[Piece]]] = []
                batch_bytes = 0
                trimming = False
                batches = 0

                async def piece(chunk_id: bytes, offset: int, length: int) -> Piece:
                    nonlocal position, current, current_id
                    if chunk_id == HOLE:
                        return length
                    if current_id != chunk_id:
                        if position >= 0:
                            drop(position)
                        position += 1
                        current = await take(position)
                        current_id = chunk_id
                    return memoryview(current)[offset : offset + length]

                async def trim() -> None:
                    """Freed memory back to the system (see ``TRIM_EVERY_BATCHES``), in a
                    worker thread, one at a time: the writer does not wait for it."""
                    nonlocal trimming
                    if not trimming:
                        trimming = True
                        await trio.to_thread.run_sync(release_free_memory)
                        trimming = False

                async def flush() -> None:
                    """Hand the batch to a writer thread; at most ``write_batches`` run."""
                    nonlocal batch, batch_bytes, batches
                    if batch:
                        await writers.start(write_batch, batch)
                        batch, batch_bytes = [], 0
                        batches += 1
                        if batches % TRIM_EVERY_BATCHES == 0:
                            writers.start_soon(trim)

                while (entry := await next_file()) is not None:
                    if entry.size <= SMALL_FILE_BYTES:
                        pieces: list[Piece] = []
                        for extent in entry.extents:
                            view = await piece(*extent)
                            # bytes(): the chunk buffer is dropped once the writer moves on.
                            pieces.append(view if isinstance(view, int) else bytes(view))
                        batch.append((entry, pieces))
                        batch_bytes += entry.size
                        if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                            await flush()
                        continue
                    await flush()
                    final, temp, fh = await trio.to_thread.run_sync(writer.open_temp, entry.path)
                    try:
                        for extent in entry.extents:
                            view = await piece(*extent)
                            await trio.to_thread.run_sync(
                                writer.append, fh, [view], limiter=self.disk_limiter
                            )
                            bytes_done += extent[2]
                            if job.progress:
                                job.progress(files_done, bytes_done)
                    except BaseException:
                        with trio.CancelScope(shield=True):
                            await trio.to_thread.run_sync(_discard, fh, temp)
                        raise
                    await trio.to_thread.run_sync(writer.finish, entry, final, temp, fh)
                    files_done += 1
                await flush()

        with collapse_groups():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                nursery.start_soon(prefetch, nursery)
                await write_files()
                nursery.cancel_scope.cancel()
        return {"files": files_done, "bytes": bytes_done, "chunks": queued_chunks, "linked": linked}


class _Signal:
    """Wakes every task waiting for a change of the shared queues (trio is cooperative:
    a task checks its condition and waits with no checkpoint in between)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


def _discard(fh: BinaryIO, temp: Path) -> None:
    with contextlib.suppress(OSError):
        fh.close()
    temp.unlink(missing_ok=True)
