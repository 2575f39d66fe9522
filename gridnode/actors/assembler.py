"""The assembler actor (claims 8, 41): from packets back to files, in a usable form.

For a restore it walks the snapshot's entries in order and, for each file, the chunks its
extents point to: a prefetcher asks the retriever for upcoming chunks (a bounded window
ahead of the writer), each chunk is erasure-decoded, decrypted, decompressed and checked
against its unique data identifier in a worker thread, and the writer assembles files
through a temporary file and a rename, then restores modes, mtimes and symlinks.

Safety: every path is checked before anything is written: absolute paths, ``..``,
empty components, and parents that resolve outside the destination (say, through a
symlink already there) are refused.  A file appears under its final name only once it is
complete; the restore ends with a sync so "restore finished" means "on disk".

Small files (the usual case by count) are written in batches, one worker-thread hop per
batch, because a thread hop costs about as much as writing a 4 KiB file.

Backpressure: ``prefetch_chunks`` decoded chunks at most are held ahead of the writer.
Cancellation: a cancelled restore leaves at most temporary files (``.gridnode-*.tmp``),
never a truncated file under a real name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import trio

from ..errors import GridError
from ..logic.packing import ChunkIntegrityError, ErasureParams, decode_chunk
from ..scanner import ScanError, safe_join
from ..storage.catalog import ChunkRecord, EntryRecord
from ..trioutil import collapse_groups
from .base import Call, serve_calls

__all__ = ["AssembleTree", "Assembler", "DecodeChunk", "RestoreFailed", "TreeWriter"]

#: Files at most this big are written whole, several per worker-thread hop.
SMALL_FILE_BYTES = 4 * 1024 * 1024
BATCH_FILES = 64
BATCH_BYTES = 8 * 1024 * 1024


class RestoreFailed(GridError):
    pass


@attrs.frozen
class DecodeChunk:
    chunk: ChunkRecord
    shares: dict[int, bytes]


@attrs.frozen
class AssembleTree:
    entries: Sequence[EntryRecord]
    chunks: dict[bytes, ChunkRecord]
    dest: Path
    progress: Callable[[int, int], None] | None = None  # (files done, bytes written)


FetchChunk = Callable[[ChunkRecord], Awaitable[dict[int, bytes]]]


# --- blocking file writing ---------------------------------------------------------------


class TreeWriter:
    """Blocking helpers; every method runs in a worker thread."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        dest.mkdir(parents=True, exist_ok=True)
        self._real_dest = os.path.realpath(dest)
        self._checked: set[str] = set()

    def target(self, rel: str) -> Path:
        path = safe_join(self.dest, rel)
        parent = str(path.parent)
        if parent not in self._checked:
            real = os.path.realpath(parent)
            if real != self._real_dest and not real.startswith(self._real_dest + os.sep):
                raise ScanError(f"refusing {rel!r}: its directory resolves outside {self.dest}")
            self._checked.add(parent)
        return path

    def make_dirs(self, entries: Sequence[EntryRecord]) -> None:
        for entry in entries:
            path = self.target(entry.path)
            if path.is_symlink():
                raise ScanError(f"refusing {entry.path!r}: a symlink is in the way")
            path.mkdir(mode=0o700, exist_ok=True)

    def ensure_parent(self, rel: str) -> Path:
        path = self.target(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        return self.target(rel)  # re-check now that the parent exists

    def open_temp(self, rel: str) -> tuple[Path, Path, BinaryIO]:
        final = self.ensure_parent(rel)
        temp = final.with_name(f".gridnode-{secrets.token_hex(6)}.tmp")
        fh = open(temp, "xb")  # noqa: SIM115 - closed in finish()
        return final, temp, fh

    @staticmethod
    def append(fh: BinaryIO, pieces: Sequence[memoryview | bytes]) -> None:
        for piece in pieces:
            fh.write(piece)

    @staticmethod
    def finish(entry: EntryRecord, final: Path, temp: Path, fh: BinaryIO) -> None:
        try:
            fh.close()
            written = temp.stat().st_size
            if written != entry.size:
                raise RestoreFailed(
                    f"{entry.path}: assembled {written} bytes, expected {entry.size}"
                )
            os.chmod(temp, entry.mode & 0o7777)
            os.utime(temp, ns=(entry.mtime_ns, entry.mtime_ns))
            os.replace(temp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                fh.close()
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise

    def write_small(self, batch: Sequence[tuple[EntryRecord, list[memoryview | bytes]]]) -> int:
        written = 0
        for entry, pieces in batch:
            final, temp, fh = self.open_temp(entry.path)
            try:
                self.append(fh, pieces)
            except BaseException:
                fh.close()
                temp.unlink(missing_ok=True)
                raise
            self.finish(entry, final, temp, fh)
            written += entry.size
        return written

    def make_symlinks(self, entries: Sequence[EntryRecord]) -> None:
        for entry in entries:
            path = self.ensure_parent(entry.path)
            if path.is_symlink() or path.exists():
                if path.is_dir() and not path.is_symlink():
                    raise ScanError(f"refusing to replace directory {entry.path!r} with a symlink")
                path.unlink()
            os.symlink(entry.link_target or "", path)
            with contextlib.suppress(OSError, NotImplementedError):
                os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)

    def finish_dirs(self, entries: Sequence[EntryRecord]) -> None:
        """Modes and mtimes of directories last, deepest first: writing into a directory
        changes its mtime, and a read-only mode would stop the restore."""
        for entry in sorted(entries, key=lambda e: e.path.count("/"), reverse=True):
            path = self.target(entry.path)
            os.chmod(path, entry.mode & 0o7777)
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))

    @staticmethod
    def sync() -> None:
        os.sync()


# --- the actor -------------------------------------------------------------------------------


@attrs.define
class Assembler:
    inbound: trio.MemoryReceiveChannel[Call[Any]]
    dedup_secret: bytes
    record_key: bytes
    cpu_limiter: trio.CapacityLimiter
    disk_limiter: trio.CapacityLimiter
    fetch: FetchChunk
    prefetch_chunks: int = 8
    chunks_decoded: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_calls(self.inbound, self._handle, concurrency=8, task_status=task_status)

    async def _handle(self, cmd: Any) -> Any:
        if isinstance(cmd, DecodeChunk):
            return await self.decode(cmd.chunk, cmd.shares)
        if isinstance(cmd, AssembleTree):
            return await self.assemble(cmd)
        raise TypeError(f"assembler cannot handle {type(cmd).__name__}")

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

    async def assemble(self, job: AssembleTree) -> dict[str, int]:
        writer = await trio.to_thread.run_sync(TreeWriter, job.dest)
        dirs = [e for e in job.entries if e.kind == "dir"]
        links = [e for e in job.entries if e.kind == "symlink"]
        files = [e for e in job.entries if e.kind == "file"]
        await trio.to_thread.run_sync(writer.make_dirs, dirs, limiter=self.disk_limiter)

        # The order in which the writer will need chunks; consecutive repeats (small files
        # packed in one chunk) are one fetch.
        sequence: list[bytes] = []
        for entry in files:
            for chunk_id, _, _ in entry.extents:
                if not sequence or sequence[-1] != chunk_id:
                    sequence.append(chunk_id)
        for chunk_id in set(sequence):
            if chunk_id not in job.chunks:
                raise RestoreFailed(f"the catalog has no record of chunk {chunk_id.hex()[:12]}")

        results: list[trio.Event] = [trio.Event() for _ in sequence]
        data: dict[int, bytes | BaseException] = {}
        window = trio.Semaphore(self.prefetch_chunks)
        files_done = 0
        bytes_done = 0

        async def prefetch(nursery: trio.Nursery) -> None:
            for index, chunk_id in enumerate(sequence):
                await window.acquire()
                nursery.start_soon(fetch_one, index, chunk_id)

        async def fetch_one(index: int, chunk_id: bytes) -> None:
            try:
                data[index] = await self.fetch_plaintext(job.chunks[chunk_id])
            except Exception as exc:  # handed to the writer, which stops the restore
                data[index] = exc
            results[index].set()

        async def take(index: int) -> bytes:
            await results[index].wait()
            value = data[index]
            if isinstance(value, BaseException):
                raise value
            return value

        with collapse_groups():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(prefetch, nursery)
                position = -1
                current: bytes = b""
                current_id: bytes | None = None
                batch: list[tuple[EntryRecord, list[memoryview | bytes]]] = []
                batch_bytes = 0

                async def advance(chunk_id: bytes) -> memoryview:
                    nonlocal position, current, current_id
                    if current_id != chunk_id:
                        if position >= 0:
                            data.pop(position, None)
                            window.release()
                        position += 1
                        current = await take(position)
                        current_id = chunk_id
                    return memoryview(current)

                async def flush() -> None:
                    nonlocal batch, batch_bytes, files_done, bytes_done
                    if batch:
                        bytes_done += await trio.to_thread.run_sync(
                            writer.write_small, batch, limiter=self.disk_limiter
                        )
                        files_done += len(batch)
                        batch, batch_bytes = [], 0
                        if job.progress:
                            job.progress(files_done, bytes_done)

                for entry in files:
                    if entry.size <= SMALL_FILE_BYTES:
                        pieces: list[memoryview | bytes] = []
                        for chunk_id, offset, length in entry.extents:
                            view = await advance(chunk_id)
                            # bytes(): the chunk buffer is dropped once the writer moves on.
                            pieces.append(bytes(view[offset : offset + length]))
                        batch.append((entry, pieces))
                        batch_bytes += entry.size
                        if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                            await flush()
                        continue
                    await flush()
                    final, temp, fh = await trio.to_thread.run_sync(writer.open_temp, entry.path)
                    try:
                        for chunk_id, offset, length in entry.extents:
                            view = await advance(chunk_id)
                            piece = view[offset : offset + length]
                            await trio.to_thread.run_sync(
                                writer.append, fh, [piece], limiter=self.disk_limiter
                            )
                            bytes_done += length
                            if job.progress:
                                job.progress(files_done, bytes_done)
                    except BaseException:
                        with trio.CancelScope(shield=True):
                            await trio.to_thread.run_sync(_discard, fh, temp)
                        raise
                    await trio.to_thread.run_sync(writer.finish, entry, final, temp, fh)
                    files_done += 1
                await flush()
                nursery.cancel_scope.cancel()

        await trio.to_thread.run_sync(writer.make_symlinks, links, limiter=self.disk_limiter)
        await trio.to_thread.run_sync(writer.finish_dirs, dirs, limiter=self.disk_limiter)
        await trio.to_thread.run_sync(writer.sync)
        if job.progress:
            job.progress(files_done, bytes_done)
        return {
            "files": files_done,
            "bytes": bytes_done,
            "dirs": len(dirs),
            "symlinks": len(links),
            "chunks": len(sequence),
        }


def _discard(fh: BinaryIO, temp: Path) -> None:
    with contextlib.suppress(OSError):
        fh.close()
    temp.unlink(missing_ok=True)
