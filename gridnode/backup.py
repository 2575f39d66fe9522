"""A backup job: from paths on disk to packets on the grid and a complete snapshot.

The pipeline (claims 1, 9-13, 30, 32, 36):

    reader thread ──chunks──> W chunk workers ──> sequencer ──> packet store ──> targets
         │                        (encode in a thread: hash, compress, encrypt, erasure-code)
         └──entries──> catalog (batched)

- The reader thread walks the tree, reuses the extents of files whose size, mtime and
  inode match the parent snapshot (incremental: not read at all), cuts changed large
  files with FastCDC and packs small files together into ~1 MiB chunks (so a 4 KiB file
  does not cost a packet round trip per target).  It computes each chunk's unique data
  identifier and drops chunks this node already stored (dedup).  It hands work to trio
  through bounded channels, so a slow grid stops the reading: memory stays flat.
- Chunk workers encode in worker threads (the C libraries release the GIL, so both
  cores work), ask the sequencer for the chunk's n targets, and have the packet store
  upload the packets.  Stored chunks are recorded in the catalog in batches.
- Last, the snapshot's data assembly record (tree, chunk list, the sequence) is sealed
  with the node's record key and stored on the grid like data; the snapshot becomes
  complete in one catalog transaction; the recovery root is republished.

A failure anywhere fails the job: the snapshot is not recorded, the failure is logged,
and chunks already stored stay recorded for the next attempt to reuse.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, Final

import attrs
import msgpack
import trio

from .byte_budget import ByteBudget
from .control import Emit
from .errors import GridError
from .exception_groups import collapse_groups
from .job_services import Services
from .log import get_logger
from .logic.chunking import CHUNK_AVG, CHUNK_MAX, iter_file_pieces, read_small_regular
from .logic.packing import EncodedChunk, ErasureParams, chunk_id_for
from .logic.placement.rules import PlacementRules
from .memory import release_free_memory
from .names import escape
from .record_store import (
    BackupFailed,
    encode_in_thread,
    store_blob,
    upload_encoded,
    write_record,
)
from .recovery_root import publish_root
from .scanner import (
    ScanEntry,
    ScanError,
    group_name,
    iter_tree,
    read_xattrs,
    root_names,
    user_name,
)
from .storage.records import (
    HOLE,
    ChunkRecord,
    EntryRow,
    SnapshotRecord,
    pack_extents,
    pack_meta,
    policy_key,
)
from .units import format_bytes

__all__ = ["BackupFailed", "BackupJob", "BackupRequest"]

_log = get_logger(actor="request", job="backup")

#: Files up to this size are packed together instead of chunked alone.
SMALL_FILE_BYTES: Final = 256 * 1024
#: A pack is sealed into a chunk once it holds this much.
PACK_TARGET_BYTES: Final = CHUNK_AVG
#: Entry rows go to the catalog in batches this long, one transaction each.
ENTRY_BATCH: Final = 1024
#: The parent snapshot's files are read this many at a time (``_ParentFiles``).
PARENT_PAGE: Final = 1024
#: Stored chunks are recorded in the catalog in batches (a crash loses at most one batch
#: of records: those packets are orphans on their targets, never a wrong catalog).
CHUNK_RECORD_BATCH: Final = 64
CHUNK_RECORD_INTERVAL_S: Final = 2.0
#: Chunk workers.  Enough that several chunks' packets wait for each target at once, so
#: the uploader sends them in batches (one frame, one receipt round) instead of alone:
#: with two, every packet travelled alone.  What the workers hold is bounded by bytes
#: (``_pipeline_bytes``), not by their number, so memory does not grow with it.
WORKERS: Final = 8
PROGRESS_INTERVAL_S: Final = 0.5


def _chunk_cost(size: int, params: ErasureParams) -> int:
    """Bytes a worker holds for a chunk of ``size``: the plaintext while it is encoded,
    beside its n packets of size/k each (once encoded, only the packets: see
    ``_chunk_worker``)."""
    return size + -(-size * params.n // params.k)


def _pipeline_bytes(params: ErasureParams) -> int:
    """What the chunk workers may hold together: one and three quarters of the largest
    chunks.  Typical chunks are half the largest or less, and a chunk whose packets
    travel holds only those, so five to seven chunks are in flight at once: enough for
    each target's packets to leave in batches.  Measured on a 2 GiB file (bench_memory,
    source peak) against the backup rate (bench_grid, 256 MiB): twice the largest, 101.2
    MiB at 89 MB/s; 1.75 times, 99.0 MiB at 77-80 MB/s; 1.5 times, 92.8 MiB at 65-68
    MB/s.  Issue 11's aim is 100 MiB."""
    return 7 * _chunk_cost(CHUNK_MAX, params) // 4


@attrs.frozen
class BackupRequest:
    paths: tuple[str, ...]
    excludes: tuple[str, ...]
    params: ErasureParams
    rules: PlacementRules
    #: Do not enter directories on another file system than their root's.
    one_file_system: bool = False
    #: ``backup --tag`` labels, checked (``gridnode.logic.tags.check_tags``).
    tags: tuple[str, ...] = ()


@attrs.frozen
class _Chunk:
    chunk_id: bytes
    data: bytes


@attrs.define
class _Counters:
    files_total: int = 0
    bytes_total: int = 0
    bytes_changed: int = 0
    files_changed: int = 0
    dirs_total: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0
    skipped: int = 0
    files_unchanged: int = 0
    bytes_read: int = 0
    logical_bytes: int = 0
    chunks_new: int = 0
    chunks_reused: int = 0
    chunks_stored: int = 0
    bytes_uploaded: int = 0
    packets_uploaded: int = 0
    packets_replaced: int = 0
    #: Packets of shared chunks a holder had already (another member of the dedup group
    #: stored them): kept under this node's tag, not uploaded.
    packets_adopted: int = 0


# --- the job ------------------------------------------------------------------------------------


class BackupJob:
    def __init__(self, services: Services, request: BackupRequest, emit: Emit) -> None:
        self.services = services
        self.request = request
        self.emit = emit
        self.snapshot_id = secrets.token_hex(8)
        self.counters = _Counters()
        self.notes: list[str] = []
        self.started = time.monotonic()
        self._chunk_records: list[ChunkRecord] = []
        self._last_flush = time.monotonic()
        self.log = _log.bind(node=services.identity.short_id, snapshot=self.snapshot_id)
        self.policy = policy_key(request.params.k, request.params.n, request.rules.to_wire())
        self._in_flight = ByteBudget(_pipeline_bytes(request.params))
        #: Source quota left for this backup's uploads (None: no quota).
        self._quota_left: int | None = None

    async def run(self) -> dict[str, Any]:
        async with self.services.backup_lock:
            return await self._run()

    async def dry_run(self) -> dict[str, Any]:
        """What this backup would do, uploading nothing and recording nothing: the walk
        with the same excludes, the files new or changed since the parent snapshot, and
        whether their bytes (times n/k, before dedup and compression) fit the quota."""
        svc = self.services
        try:
            roots = [absolute for absolute, _ in root_names(self.request.paths)]
        except ScanError as exc:
            raise BackupFailed(str(exc)) from None
        parent: SnapshotRecord | None = await svc.db(
            svc.catalog.latest_complete, roots, self.policy
        )
        await trio.to_thread.run_sync(self._count_totals, parent, self.notes)
        c = self.counters
        k, n = self.request.params.k, self.request.params.n
        estimate = -(-c.bytes_changed * n // k)
        quota: dict[str, Any] | None = None
        try:
            allocations = svc.allocations()
        except GridError as exc:
            quota = {"error": str(exc), "fits": False}
        else:
            if allocations is not None:
                used: int = await svc.db(svc.catalog.source_bytes)
                limit = int(allocations.source_bytes)
                quota = {"source_bytes": limit, "used": used, "fits": used + estimate <= limit}
        return {
            "event": "result",
            "dry_run": True,
            "parent": parent.snapshot_id if parent else None,
            "files": c.files_total,
            "dirs": c.dirs_total,
            "bytes": c.bytes_total,
            "files_changed": c.files_changed,
            "bytes_changed": c.bytes_changed,
            "files_unchanged": c.files_total - c.files_changed,
            # An upper bound: dedup and compression only lower it.
            "would_store_at_most": estimate,
            "quota": quota,
            "skipped": sum(1 for note in self.notes if note.startswith("skipped")),
            "notes": self.notes[:100],
            "bytes_uploaded": 0,
            "packets_uploaded": 0,
        }

    async def _run(self) -> dict[str, Any]:
        svc = self.services
        try:
            roots = [absolute for absolute, _ in root_names(self.request.paths)]
        except ScanError as exc:
            raise BackupFailed(str(exc)) from None
        # Under the backup lock no other backup runs: a snapshot still "running" is one
        # whose failure could not even be recorded (its home's disk was full).  Now that
        # the catalog can write again, it is marked interrupted, as at a restart.
        if stale := await svc.db(svc.catalog.mark_interrupted):
            self.log.warning("interrupted_snapshots", snapshots=stale)
        parent: SnapshotRecord | None = await svc.db(
            svc.catalog.latest_complete, roots, self.policy
        )
        await svc.db(
            lambda: svc.catalog.begin_snapshot(
                self.snapshot_id,
                roots=roots,
                parent=parent.snapshot_id if parent else None,
                params=str(self.request.params),
                rules=self.request.rules.to_wire(),
                tags=self.request.tags,
            )
        )
        self.log.info("backup_started", roots=roots, parent=parent.snapshot_id if parent else None)
        try:
            await self._pipeline(roots, parent)
            record_refs = await self._store_record()
            await svc.db(
                lambda: svc.catalog.complete_snapshot(
                    self.snapshot_id,
                    files=self.counters.files,
                    size_bytes=self.counters.logical_bytes,
                    record=record_refs,
                )
            )
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                reason = str(exc) if isinstance(exc, Exception) else "cancelled"
                # Each step on its own: on a full disk the first write fails too, and the
                # user must hear the backup's own error, not the cleanup's.  What cannot
                # be recorded now is marked interrupted by the next backup or start.
                for step in (
                    self._flush_records_blocking,
                    svc.catalog.checkpoint,
                    partial(svc.catalog.fail_snapshot, self.snapshot_id),
                    partial(
                        svc.catalog.log, "backup_failed", self.snapshot_id, reason=reason[:500]
                    ),
                ):
                    try:
                        await svc.db(step)
                    except (OSError, sqlite3.Error) as cleanup:
                        self.log.warning("backup_cleanup_failed", reason=str(cleanup))
            self.log.warning("backup_failed", reason=str(exc))
            raise
        seconds = time.monotonic() - self.started
        c = self.counters
        result: dict[str, Any] = {
            "event": "result",
            "snapshot_id": self.snapshot_id,
            "parent": parent.snapshot_id if parent else None,
            "files": c.files,
            "dirs": c.dirs,
            "symlinks": c.symlinks,
            "specials": c.specials,
            "skipped": c.skipped,
            "bytes": c.logical_bytes,
            "files_unchanged": c.files_unchanged,
            "bytes_read": c.bytes_read,
            "bytes_uploaded": c.bytes_uploaded,
            "packets_uploaded": c.packets_uploaded,
            "packets_adopted": c.packets_adopted,
            "packets_replaced": c.packets_replaced,
            "chunks_new": c.chunks_new,
            "chunks_reused": c.chunks_reused,
            "redundancy": str(self.request.params),
            "rules": self.request.rules.to_wire(),
            "seconds": round(seconds, 3),
            "notes": self.notes[:100],
        }
        await svc.db(
            lambda: svc.catalog.log(
                "backup",
                self.snapshot_id,
                files=c.files,
                bytes=c.logical_bytes,
                bytes_uploaded=c.bytes_uploaded,
                packets=c.packets_uploaded,
                seconds=round(seconds, 3),
            )
        )
        result["recovery_root"] = await publish_root(svc)
        self.log.info(
            "backup_finished",
            files=c.files,
            bytes=c.logical_bytes,
            uploaded=c.bytes_uploaded,
            seconds=round(seconds, 2),
        )
        return result

    # --- pipeline ---------------------------------------------------------------------------

    async def _pipeline(self, roots: list[str], parent: SnapshotRecord | None) -> None:
        await trio.to_thread.run_sync(self._count_totals, parent)
        await self._check_quota()
        await self.emit(
            {
                "event": "started",
                "snapshot_id": self.snapshot_id,
                "files_total": self.counters.files_total,
                "bytes_total": self.counters.bytes_total,
            }
        )
        chunk_send, chunk_recv = trio.open_memory_channel[_Chunk](0)
        with collapse_groups():
            await self._run_stages(chunk_send, chunk_recv, parent)
        await self._emit_progress("uploaded")

    async def _run_stages(
        self,
        chunk_send: trio.MemorySendChannel[_Chunk],
        chunk_recv: trio.MemoryReceiveChannel[_Chunk],
        parent: SnapshotRecord | None,
    ) -> None:
        svc = self.services
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._progress_ticker)
            async with trio.open_nursery() as work:
                for _ in range(WORKERS):
                    work.start_soon(self._chunk_worker, chunk_recv.clone())
                chunk_recv.close()
                async with chunk_send:
                    await trio.to_thread.run_sync(self._read_tree, chunk_send, parent)
            await svc.db(self._flush_records_blocking)
            nursery.cancel_scope.cancel()

    def _walk(self, notes: list[str]) -> Iterator[ScanEntry]:
        request = self.request
        return iter_tree(
            request.paths, request.excludes, notes, one_file_system=request.one_file_system
        )

    def _parent_files(self, parent: SnapshotRecord | None) -> _ParentFiles:
        if parent is None:
            return _ParentFiles(None)
        catalog, snapshot_id = self.services.catalog, parent.snapshot_id
        return _ParentFiles(
            lambda after: catalog.file_page(snapshot_id, after=after, limit=PARENT_PAGE)
        )

    def _count_totals(self, parent: SnapshotRecord | None, notes: list[str] | None = None) -> None:
        """Files and bytes to read, and of those the bytes of files new or changed since
        the parent snapshot: the upper bound of what this backup adds (before dedup and
        compression), which the quota check weighs."""
        c = self.counters
        parent_files = self._parent_files(parent)
        for entry in self._walk(notes if notes is not None else []):
            if entry.kind == "file":
                c.files_total += 1
                c.bytes_total += entry.size
                before = parent_files.get(entry.path)
                if (
                    before is None
                    or before[1] != entry.size
                    or before[2] != entry.mtime_ns
                    or before[3] != entry.inode
                ):
                    c.bytes_changed += entry.size
                    c.files_changed += 1
            elif entry.kind == "dir":
                c.dirs_total += 1

    async def _check_quota(self) -> None:
        """Before anything is uploaded (claims 26, 27, 36): the subscription must be
        active and the backup must fit the source quota, erasure expansion counted.

        The estimate takes every new or changed byte times n/k, so it can refuse a
        backup that compression or dedup would have squeezed in; the upload itself is
        held to the quota exactly, chunk by chunk (``_take_quota``)."""
        svc = self.services
        try:
            allocations = svc.allocations()
        except GridError as exc:
            raise BackupFailed(f"backup refused: {exc}") from None
        if allocations is None:
            return  # an open grid: no quota
        quota = int(allocations.source_bytes)
        used: int = await svc.db(svc.catalog.source_bytes)
        k, n = self.request.params.k, self.request.params.n
        changed = self.counters.bytes_changed
        estimate = -(-changed * n // k)
        if used + estimate > quota:
            raise BackupFailed(
                f"backup refused: it may store up to {format_bytes(estimate)} on the grid "
                f"({format_bytes(changed)} new or changed, times {n}/{k} for redundancy), and "
                f"{format_bytes(used)} of the subscription's source quota of "
                f"{format_bytes(quota)} is in use"
            )
        self._quota_left = quota - used

    def _take_quota(self, stored_bytes: int) -> None:
        if self._quota_left is None:
            return
        if stored_bytes > self._quota_left:
            raise BackupFailed(
                "backup stopped: the subscription's source quota is used up "
                f"({format_bytes(self._quota_left)} left, the next chunk needs "
                f"{format_bytes(stored_bytes)})"
            )
        self._quota_left -= stored_bytes

    def _read_tree(
        self,
        chunk_send: trio.MemorySendChannel[_Chunk],
        parent: SnapshotRecord | None,
    ) -> None:
        """Runs in one worker thread for the whole job; blocks when the grid is slower.

        It runs once per entry of the tree, so it builds each entry's catalog row
        directly (``EntryRow``) rather than an ``EntryRecord`` to be encoded later, packs
        an owner's metadata once per (uid, gid, rdev), gives an unchanged file the
        parent's packed extents as they are, and writes each batch of rows to the
        catalog itself: handing batches to a writer task cost two thread hops each,
        which on a busy machine (each hop waits for a core) took longer than the write,
        and the writer's thread fought this one for the GIL."""
        catalog = self.services.catalog
        secret = self.services.identity.dedup_secret
        snapshot_id = self.snapshot_id
        c = self.counters
        parent_files = self._parent_files(parent)
        seen: set[bytes] = set()
        rows: list[EntryRow] = []
        batch_chunks: set[bytes] = set()
        pack = bytearray()
        # entry, its extended attributes, offset and length in the pack
        pack_members: list[tuple[ScanEntry, _Xattrs, int, int]] = []
        # (device, inode) of a file with more than one link -> the first path seen, and its
        # extents once they are known (None while its bytes wait in the pack).
        link_groups: dict[tuple[int, int], tuple[bytes, list[tuple[bytes, int, int]] | None]] = {}
        # Packed metadata of entries without xattrs or a hard link, by (uid, gid, rdev).
        plain_meta: dict[tuple[int, int, int], bytes] = {}

        def submit(chunk_id: bytes, data: bytes) -> None:
            batch_chunks.add(chunk_id)
            if chunk_id in seen or catalog.has_chunk(chunk_id, self.policy):
                c.chunks_reused += 1
                return
            seen.add(chunk_id)
            c.chunks_new += 1
            trio.from_thread.run(chunk_send.send, _Chunk(chunk_id, data))

        def flush_entries() -> None:
            if rows or batch_chunks:
                catalog.add_entry_rows(snapshot_id, rows, batch_chunks, policy=self.policy)
                rows.clear()
                batch_chunks.clear()

        def meta_of(entry: ScanEntry, xattrs: _Xattrs, hardlink: bytes | None) -> bytes:
            """``EntryRecord.meta()`` packed, as ``Catalog.add_entries`` would store it."""
            if not xattrs and hardlink is None:
                key = (entry.uid, entry.gid, entry.rdev)
                packed = plain_meta.get(key)
                if packed is None:
                    if len(plain_meta) >= 4096:  # a tree of many device nodes: stay bounded
                        plain_meta.clear()
                    packed = plain_meta[key] = pack_meta(
                        [entry.uid, entry.gid, user_name(entry.uid), group_name(entry.gid),
                         entry.rdev, [], None]
                    )  # fmt: skip
                return packed
            return pack_meta(
                [entry.uid, entry.gid, user_name(entry.uid), group_name(entry.gid), entry.rdev,
                 [list(x) for x in xattrs], hardlink]
            )  # fmt: skip

        def add(
            entry: ScanEntry,
            xattrs: _Xattrs,
            size: int = 0,
            extents: bytes | None = None,
            hardlink: bytes | None = None,
        ) -> None:
            rows.append(
                (snapshot_id, entry.path, entry.kind, entry.mode, entry.mtime_ns, size,
                 entry.inode, entry.device, entry.link_target, extents,
                 meta_of(entry, xattrs, hardlink))
            )  # fmt: skip
            if len(rows) >= ENTRY_BATCH:
                flush_entries()

        def add_file(
            entry: ScanEntry,
            xattrs: _Xattrs,
            size: int,
            extents: Sequence[tuple[bytes, int, int]] | None,
            packed: bytes | None = None,
        ) -> None:
            """``extents``, or else ``packed``: the same, as stored (an unchanged file's)."""
            hardlink = None
            if entry.nlink > 1:
                key = (entry.device, entry.inode)
                first = link_groups.get(key)
                if first is not None and first[0] != entry.path:
                    hardlink = first[0]
                else:
                    if extents is None:
                        extents = [(bytes(i), int(o), int(n)) for i, o, n in _unpack(packed)]
                    link_groups[key] = (entry.path, list(extents))
            c.files += 1
            c.logical_bytes += size
            if packed is None:
                packed = pack_extents(extents or ())
            add(entry, xattrs, size, packed, hardlink)

        def seal_pack() -> None:
            if not pack_members:
                return
            data = bytes(pack)
            chunk_id = chunk_id_for(data, secret)
            submit(chunk_id, data)
            for entry, xattrs, offset, length in pack_members:
                add_file(entry, xattrs, length, [(chunk_id, offset, length)] if length else [])
            pack.clear()
            pack_members.clear()

        def skip(entry: ScanEntry, why: str) -> None:
            c.skipped += 1
            self.notes.append(f"skipped {escape(entry.path)}: {why}")

        for entry in self._walk(self.notes):
            xattrs = self._xattrs(entry)
            if entry.kind != "file":
                if entry.kind == "dir":
                    c.dirs += 1
                elif entry.kind == "symlink":
                    c.symlinks += 1
                else:
                    c.specials += 1
                add(entry, xattrs)
                continue
            if entry.nlink > 1:
                # A second name of a file already read: the same bytes, not read again.
                first = link_groups.get((entry.device, entry.inode))
                if first is not None:
                    first_path, first_extents = first
                    if first_extents is None:  # still in the pack: shares its slot
                        slot = next(m for m in pack_members if m[0].path == first_path)
                        pack_members.append((entry, xattrs, slot[2], slot[3]))
                        continue
                    c.files += 1
                    size = sum(length for _, _, length in first_extents)
                    c.logical_bytes += size
                    add(entry, xattrs, size, pack_extents(first_extents), first_path)
                    continue
            before = parent_files.get(entry.path)
            if (
                before is not None
                and before[1] == entry.size
                and before[2] == entry.mtime_ns
                and before[3] == entry.inode
            ):
                c.files_unchanged += 1
                packed = before[4]
                for chunk_id, _, _ in _unpack(packed):
                    if chunk_id != HOLE:
                        batch_chunks.add(chunk_id)
                add_file(entry, xattrs, before[1], None, packed)
                continue
            try:
                if entry.size <= SMALL_FILE_BYTES:
                    data = read_small_regular(entry.source, entry.size, SMALL_FILE_BYTES)
                    if len(data) > SMALL_FILE_BYTES:  # grew since the walk: chunk it instead
                        raise _Grew
                    c.bytes_read += len(data)
                    if entry.nlink > 1:
                        link_groups[(entry.device, entry.inode)] = (entry.path, None)
                    pack_members.append((entry, xattrs, len(pack), len(data)))
                    pack += data
                    if len(pack) >= PACK_TARGET_BYTES:
                        seal_pack()
                    continue
            except _Grew:
                pass
            except OSError as exc:
                skip(entry, exc.strerror or str(exc))
                continue
            extents: list[tuple[bytes, int, int]] = []
            size = 0
            try:
                pieces = iter_file_pieces(entry.source)
                with contextlib.closing(pieces):  # type: ignore[type-var]
                    for piece in pieces:
                        if isinstance(piece, int):  # a hole: nothing to read or store
                            extents.append((HOLE, 0, piece))
                            size += piece
                            continue
                        chunk_id = chunk_id_for(piece, secret)
                        extents.append((chunk_id, 0, len(piece)))
                        size += len(piece)
                        c.bytes_read += len(piece)
                        submit(chunk_id, piece)
            except OSError as exc:
                skip(entry, exc.strerror or str(exc))
                continue
            if size != entry.size:
                self.notes.append(f"{escape(entry.path)} changed while it was read")
            add_file(entry, xattrs, size, extents)
        seal_pack()
        flush_entries()

    def _xattrs(self, entry: ScanEntry) -> _Xattrs:
        """An entry's extended attributes; a part that cannot be read is noted."""
        xattrs, problem = read_xattrs(entry.source)
        if problem is not None:
            self.notes.append(f"{escape(entry.path)}: {problem}")
        return xattrs

    async def _chunk_worker(self, inbound: trio.MemoryReceiveChannel[_Chunk]) -> None:
        params = self.request.params
        async with inbound:
            while True:
                # A share of the pipeline's bytes is taken before a chunk is taken in, so
                # no worker holds a chunk it may not work on; the excess goes back at once.
                held = await self._in_flight.acquire(_chunk_cost(CHUNK_MAX, params))
                try:
                    try:
                        item = await inbound.receive()
                    except trio.EndOfChannel:
                        return
                    cost = min(held, _chunk_cost(len(item.data), params))
                    self._in_flight.release(held - cost)
                    held = cost
                    encoded = await encode_in_thread(
                        self.services, item.data, chunk_id=item.chunk_id, params=params
                    )
                    del item  # the plaintext is not needed while the packets travel
                    # Nor its share of the budget: what travels is the n packets, so more
                    # chunks can wait for their targets at once (and go out together,
                    # in one frame per target) in the same memory.
                    travelling = min(held, encoded.packet_size * params.n)
                    self._in_flight.release(held - travelling)
                    held = travelling
                    await self._store_chunk(encoded)
                    del encoded
                finally:
                    self._in_flight.release(held)

    async def _store_chunk(self, encoded: EncodedChunk) -> None:
        """Upload one encoded chunk's packets and queue its record for the catalog."""
        self._take_quota(encoded.packet_size * self.request.params.n)
        record, uploaded = await upload_encoded(
            self.services, encoded, params=self.request.params, rules=self.request.rules
        )
        c = self.counters
        c.chunks_stored += 1
        c.bytes_uploaded += uploaded.bytes_sent
        c.packets_uploaded += len(uploaded.placed) - uploaded.adopted
        c.packets_adopted += uploaded.adopted
        c.packets_replaced += uploaded.replaced
        self._chunk_records.append(record)
        now = time.monotonic()
        if (
            len(self._chunk_records) >= CHUNK_RECORD_BATCH
            or now - self._last_flush >= CHUNK_RECORD_INTERVAL_S
        ):
            self._last_flush = now
            await self.services.db(self._flush_records_blocking)
            # Hand freed buffers back now and then, so fragmentation cannot make
            # the resident size grow with the length of the backup.
            release_free_memory()

    def _flush_records_blocking(self) -> None:
        records, self._chunk_records = self._chunk_records, []
        if records:
            self.services.catalog.add_chunks(records)

    async def _store_record(self) -> bytes:
        """Store the data assembly record on the grid; returns its chunk refs (for the root)."""
        svc = self.services

        path = svc.config.home / "tmp" / f"record-{self.snapshot_id}.msgpack"
        path.parent.mkdir(exist_ok=True)

        def build() -> None:
            # Closed here, not when collected: if the write fails (a full disk), the
            # traceback keeps the generators, and an open read would block checkpoints.
            with (
                contextlib.closing(svc.catalog.entries_packed(self.snapshot_id)) as entries,
                contextlib.closing(svc.catalog.iter_chunks_of(self.snapshot_id)) as chunks,
            ):
                write_record(path, entries, chunks)

        try:
            await svc.db(build)
            await self._emit_progress("record")
            records, uploaded = await store_blob(
                svc, path, params=self.request.params, rules=self.request.rules
            )
        finally:
            path.unlink(missing_ok=True)
        # Referenced by the snapshot like its data, so forget frees them only when no other
        # snapshot shares them (an unchanged tree's record is shared).
        await svc.db(lambda: svc.catalog.add_chunks(records, snapshot_id=self.snapshot_id))
        self.counters.packets_uploaded += uploaded
        return bytes(msgpack.packb([r.to_wire() for r in records], use_bin_type=True))

    # --- progress -----------------------------------------------------------------------------

    async def _progress_ticker(self) -> None:
        while True:
            await trio.sleep(PROGRESS_INTERVAL_S)
            await self._emit_progress("backup")

    async def _emit_progress(self, phase: str) -> None:
        c = self.counters
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = c.bytes_read / elapsed
        remaining = max(c.bytes_total - c.bytes_read - c.files_unchanged * 0, 0)
        eta = remaining / rate if rate > 0 and phase == "backup" else None
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.emit(
                {
                    "event": "progress",
                    "phase": phase,
                    "files": c.files,
                    "files_total": c.files_total,
                    "bytes_read": c.bytes_read,
                    "bytes_total": c.bytes_total,
                    "bytes_uploaded": c.bytes_uploaded,
                    "packets_uploaded": c.packets_uploaded,
                    "chunks_new": c.chunks_new,
                    "chunks_reused": c.chunks_reused,
                    "rate_bps": round(rate),
                    "eta_s": round(eta, 1) if eta is not None and math.isfinite(eta) else None,
                }
            )


class _Grew(Exception):
    pass


class _ParentFiles:
    """The parent snapshot's regular files, read beside the walk a page at a time.

    The walk and the catalog go in the same order (the paths' byte order), so this is a
    merge: memory stays one page whatever the size of the tree, where a dict of every
    file of the parent took tens of MiB for 50,000 files.  ``get`` is asked paths in
    increasing order; one asked out of order (a name that changed kind during the walk)
    is answered None, and that file is read again: slower, never wrong.
    """

    def __init__(self, fetch: Callable[[bytes], list[tuple[bytes, int, int, int, bytes]]] | None):
        self._fetch = fetch
        self._page: list[tuple[bytes, int, int, int, bytes]] = []
        self._at = 0

    def get(self, path: bytes) -> tuple[bytes, int, int, int, bytes] | None:
        """(path, size, mtime_ns, inode, packed extents) of the parent's file ``path``."""
        while True:
            if self._at == len(self._page):
                if self._fetch is None:
                    return None
                after = self._page[-1][0] if self._page else b""
                self._page, self._at = self._fetch(after), 0
                if len(self._page) < PARENT_PAGE:
                    self._fetch = None  # the last page
                if not self._page:
                    return None
            found = self._page[self._at]
            if found[0] > path:
                return None
            self._at += 1
            if found[0] == path:
                return found


#: An entry's extended attributes, sorted by name.
_Xattrs = tuple[tuple[bytes, bytes], ...]


def _unpack(packed: bytes | None) -> list[list[Any]]:
    """Packed extents back to [chunk id, offset, length] lists."""
    return msgpack.unpackb(packed) if packed else []
