"""The assembler actor (claims 8, 41): from packets back to files, in a usable form.

For a restore it walks the snapshot's entries in order and, for each file, the chunks its
extents point to: a prefetcher asks the retriever for upcoming chunks (a bounded window
ahead of the writer), each chunk is erasure-decoded, decrypted, decompressed and checked
against its unique data identifier in a worker thread, and the tree writer
(``gridnode/tree_writer.py``: the blocking file-system half, which also checks every path)
assembles files through a temporary file and a rename, then makes hard links, symlinks
and special files, and finishes directories.  A file appears under its final name only
once it is complete; the restore ends with a sync so "restore finished" means "on disk".

Small files (the usual case by count) are written in batches, one worker-thread hop per
batch, because a thread hop costs about as much as writing a 4 KiB file; up to
``write_batches`` batches are written at once (creating a file is kernel work, and a
second core can do it while the first does another).

Backpressure: the chunks fetched, decoding or decoded ahead of the writer hold at most
``prefetch_bytes`` (each counts its ciphertext and its plaintext, which coexist while it
decodes) and are at most ``prefetch_chunks``; a chunk larger than the whole budget is
fetched alone.  The writer releases a chunk's share when it moves past it.
Cancellation: a cancelled restore leaves at most temporary files (``.gridnode-*.tmp``),
never a truncated file under a real name.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import trio

from ..byte_budget import ByteBudget
from ..exception_groups import collapse_groups
from ..logic.packing import ChunkIntegrityError, ErasureParams, decode_chunk
from ..storage.records import HOLE, ChunkRecord, EntryRecord
from ..tree_writer import Piece, RestoreFailed, TreeWriter
from .calls import Handlers, Inbox, Request, serve_calls

__all__ = ["AssembleTree", "Assembler", "DecodeChunk", "RestoreFailed", "TreeWriter"]

#: Files at most this big are written whole, several per worker-thread hop.
SMALL_FILE_BYTES = 4 * 1024 * 1024
BATCH_FILES = 64
BATCH_BYTES = 2 * 1024 * 1024


@attrs.frozen
class DecodeChunk(Request[bytes]):
    """A chunk's plaintext from k of its packets."""

    chunk: ChunkRecord
    shares: dict[int, bytes]


@attrs.frozen
class AssembleTree(Request[dict[str, Any]]):
    """Write a snapshot's entries under ``dest``; answered with the restore's totals."""

    entries: Sequence[EntryRecord]
    chunks: dict[bytes, ChunkRecord]
    dest: Path
    progress: Callable[[int, int], None] | None = None  # (files done, bytes written)
    numeric_owner: bool = False


FetchChunk = Callable[[ChunkRecord], Awaitable[dict[int, bytes]]]


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
    #: Batches of small files written at once (a file's creation is kernel work: one
    #: batch per core, at least two, so one waits on the disk while another runs).
    write_batches: int = attrs.field(factory=lambda: max(2, min(4, os.cpu_count() or 2)))
    chunks_decoded: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        handlers = (
            Handlers("assembler").on(DecodeChunk, self._decode).on(AssembleTree, self.assemble)
        )
        await serve_calls(self.inbound, handlers, concurrency=8, task_status=task_status)

    async def _decode(self, cmd: DecodeChunk) -> bytes:
        return await self.decode(cmd.chunk, cmd.shares)

    async def decode(self, chunk: ChunkRecord, shares: dict[int, bytes]) -> bytes:
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
        writer = await trio.to_thread.run_sync(
            functools.partial(TreeWriter, job.dest, numeric_owner=job.numeric_owner)
        )
        dirs = [e for e in job.entries if e.kind == "dir"]
        links = [e for e in job.entries if e.kind == "symlink"]
        specials = [e for e in job.entries if e.kind not in ("dir", "symlink", "file")]
        all_files = [e for e in job.entries if e.kind == "file"]
        # A later name of a hard-link group whose first name is restored too becomes a link
        # to it; otherwise it is written from its own extents (the same bytes).
        names = {e.path for e in all_files}
        linked = [e for e in all_files if e.hardlink is not None and e.hardlink in names]
        writer.link_firsts = {e.hardlink for e in linked if e.hardlink is not None}
        files = [e for e in all_files if e.hardlink is None or e.hardlink not in names]
        await trio.to_thread.run_sync(writer.make_dirs, dirs, limiter=self.disk_limiter)

        # The order in which the writer will need chunks; consecutive repeats (small files
        # packed in one chunk) are one fetch.  Holes need no chunk.
        sequence: list[bytes] = []
        for entry in files:
            for chunk_id, _, _ in entry.extents:
                if chunk_id != HOLE and (not sequence or sequence[-1] != chunk_id):
                    sequence.append(chunk_id)
        for chunk_id in set(sequence):
            if chunk_id not in job.chunks:
                raise RestoreFailed(f"the catalog has no record of chunk {chunk_id.hex()[:12]}")

        results: list[trio.Event] = [trio.Event() for _ in sequence]
        data: dict[int, bytes | BaseException] = {}
        window = trio.Semaphore(self.prefetch_chunks)
        budget = ByteBudget(self.prefetch_bytes)
        charged: dict[int, int] = {}
        batch_slots = trio.Semaphore(max(1, self.write_batches))
        files_done = 0
        bytes_done = 0

        async def prefetch(nursery: trio.Nursery) -> None:
            for index, chunk_id in enumerate(sequence):
                chunk = job.chunks[chunk_id]
                await window.acquire()
                charged[index] = await budget.acquire(chunk.cipher_size + chunk.plain_size)
                nursery.start_soon(fetch_one, index, chunk)

        async def fetch_one(index: int, chunk: ChunkRecord) -> None:
            try:
                data[index] = await self.fetch_plaintext(chunk)
            except Exception as exc:  # handed to the writer, which stops the restore
                data[index] = exc
            results[index].set()

        def drop(index: int) -> None:
            """The writer is past chunk ``index``: its bytes and its place are free."""
            data.pop(index, None)
            budget.release(charged.pop(index))
            window.release()

        async def take(index: int) -> bytes:
            await results[index].wait()
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

                async def flush() -> None:
                    """Hand the batch to a writer thread; at most ``write_batches`` run."""
                    nonlocal batch, batch_bytes
                    if batch:
                        await writers.start(write_batch, batch)
                        batch, batch_bytes = [], 0

                for entry in files:
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
                nursery.start_soon(prefetch, nursery)
                await write_files()
                nursery.cancel_scope.cancel()

        bytes_done += await trio.to_thread.run_sync(
            writer.make_links, linked, limiter=self.disk_limiter
        )
        files_done += len(linked)
        await trio.to_thread.run_sync(writer.make_symlinks, links, limiter=self.disk_limiter)
        made = await trio.to_thread.run_sync(
            writer.make_specials, specials, limiter=self.disk_limiter
        )
        await trio.to_thread.run_sync(writer.finish_dirs, dirs, limiter=self.disk_limiter)
        await trio.to_thread.run_sync(writer.sync)
        if job.progress:
            job.progress(files_done, bytes_done)
        return {
            "files": files_done,
            "bytes": bytes_done,
            "dirs": len(dirs),
            "symlinks": len(links),
            "hardlinks": len(linked),
            "specials": made,
            "chunks": len(sequence),
            "notes": writer.notes,
        }


def _discard(fh: BinaryIO, temp: Path) -> None:
    with contextlib.suppress(OSError):
        fh.close()
    temp.unlink(missing_ok=True)
