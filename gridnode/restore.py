"""Restore, verify and forget jobs: reading a snapshot back by its sequence.

Restore (claims 6-8, 40-41): the snapshot's entries and chunk records come from the
catalog a page at a time (``CatalogSource``: memory stays bounded whatever the number of
files); the assembler fetches each chunk's packets through the retriever (by the
non-transparent sequence, fastest k of n), decodes them and writes the files.

Verify fetches *every* packet of every chunk and decodes each chunk, writing nothing:
it answers "could I restore this today, and how much redundancy is left?".

Forget drops a snapshot from the catalog and deletes, on their targets, the packets of
chunks no other snapshot uses (with the per-packet delete secret; see holdings.py).
"""

from __future__ import annotations

import errno
import functools
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import trio

from .actors.assembler import AssembleTree, DecodeChunk, EntryKind, RestoreFailed, TreeSource
from .actors.retriever import ChunkUnavailable, FetchChunk
from .control import Emit
from .errors import GridError
from .exception_groups import collapse_groups
from .job_services import Services
from .leases import delete_on_holder, release_queued
from .log import get_logger
from .logic.retention import KeepPolicy, apply_policy
from .logic.tags import matches_filter
from .names import escape, from_arg
from .recovery_root import publish_root
from .storage.records import ChunkRecord, EntryRecord, PacketRecord, SnapshotRecord

__all__ = ["forget_snapshot", "restore_snapshot", "verify_snapshot"]


_log = get_logger(actor="request")


class SnapshotNotFound(GridError):
    pass


async def resolve(services: Services, snapshot: str, *, complete: bool = True) -> SnapshotRecord:
    try:
        record: SnapshotRecord = await services.db(services.catalog.resolve_snapshot, snapshot)
    except LookupError as exc:
        raise SnapshotNotFound(str(exc)) from None
    if complete and not record.complete:
        raise SnapshotNotFound(
            f"snapshot {record.snapshot_id} is {record.state}, not complete; nothing to restore"
        )
    return record


class CatalogSource(TreeSource):
    """A snapshot's entries (a whole snapshot, or one path and what lies below it plus
    the directories above it) and chunk records, read from the catalog a page at a time
    in a worker thread: a restore holds a bounded part of a tree of any size."""

    def __init__(
        self,
        services: Services,
        snap: SnapshotRecord,
        under: bytes | None = None,
        parents: Sequence[bytes] = (),
    ) -> None:
        self.services = services
        self.snapshot_id = snap.snapshot_id
        self.policy = snap.policy
        self.under = under
        self.parents = tuple(parents)

    async def page(
        self, kind: EntryKind, after: bytes | None, *, descending: bool = False
    ) -> list[EntryRecord]:
        kinds, exclude = (
            (("dir", "file", "symlink"), True) if kind == "special" else ((kind,), False)
        )
        page: list[EntryRecord] = await self.services.db(
            functools.partial(
                self.services.catalog.entry_page,
                self.snapshot_id,
                kinds=kinds,
                exclude=exclude,
                after=after,
                descending=descending,
                limit=self.page_size,
                under=self.under,
                parents=self.parents,
            )
        )
        return page

    async def chunks(self, chunk_ids: Sequence[bytes]) -> dict[bytes, ChunkRecord]:
        catalog, policy = self.services.catalog, self.policy
        found: dict[bytes, ChunkRecord] = await self.services.db(
            lambda: {c: r for c in chunk_ids if (r := catalog.chunk(c, policy)) is not None}
        )
        return found

    async def restored_files(self, paths: Iterable[bytes]) -> set[bytes]:
        wanted = list(paths)
        found: set[bytes] = await self.services.db(
            functools.partial(
                self.services.catalog.entry_paths,
                self.snapshot_id,
                wanted,
                kind="file",
                under=self.under,
            )
        )
        return found


async def select(services: Services, snap: SnapshotRecord, path: str | None) -> CatalogSource:
    """A whole snapshot, or one file or sub-tree plus the directories above it.

    ``path`` is as a user typed it: the literal bytes, or the escaped form ``ls`` shows
    (see :mod:`gridnode.names`)."""
    if not path:
        return CatalogSource(services, snap)
    catalog = services.catalog
    literal = os.fsencode(path.strip("/"))
    known: set[bytes] = await services.db(lambda: catalog.entry_paths(snap.snapshot_id, [literal]))
    wanted = from_arg(path.strip("/"), known)
    parts = wanted.split(b"/")
    parents = [b"/".join(parts[:i]) for i in range(1, len(parts))]
    any_below: list[EntryRecord] = await services.db(
        functools.partial(
            catalog.entry_page, snap.snapshot_id, kinds=(), exclude=True, limit=1, under=wanted
        )
    )
    if not any_below:
        raise SnapshotNotFound(f"no path {escape(wanted)!r} in this snapshot")
    source = CatalogSource(services, snap, wanted, parents)
    return source


async def restore_snapshot(
    services: Services,
    snapshot: str,
    dest: str,
    path: str | None,
    emit: Emit,
    *,
    numeric_owner: bool = False,
) -> dict[str, Any]:
    started = time.monotonic()
    snap = await resolve(services, snapshot)
    catalog = services.catalog
    source = await select(services, snap, path)
    total_files, total_bytes = await services.db(
        lambda: catalog.entry_totals(snap.snapshot_id, kind="file", under=source.under)
    )
    await emit(
        {
            "event": "started",
            "snapshot_id": snap.snapshot_id,
            "files_total": total_files,
            "bytes_total": total_bytes,
        }
    )
    last = [0.0]
    pending: list[dict[str, Any]] = []

    def progress(files: int, written: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5:
            last[0] = now
            elapsed = max(now - started, 1e-6)
            rate = written / elapsed
            pending.append(
                {
                    "event": "progress",
                    "files": files,
                    "files_total": total_files,
                    "bytes": written,
                    "bytes_total": total_bytes,
                    "rate_bps": round(rate),
                    "eta_s": round((total_bytes - written) / rate, 1) if rate else None,
                }
            )

    async def pump() -> None:
        while True:
            await trio.sleep(0.25)
            while pending:
                await emit(pending.pop(0))

    dest_path = Path(dest)  # absolute: checked by the control method
    try:
        with collapse_groups():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                stats = await services.ask(
                    services.assembler,
                    AssembleTree(
                        entries=source,
                        chunks={},
                        dest=dest_path,
                        progress=progress,
                        numeric_owner=numeric_owner,
                    ),
                )
                nursery.cancel_scope.cancel()
    except (RestoreFailed, ChunkUnavailable, OSError, GridError) as exc:
        reason = str(exc)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # What the user can act on: which disk, and that nothing half-made is left.
            reason = (
                f"{dest_path} is full ({exc.strerror}): free some space or restore "
                "elsewhere; no partly written file was left under its name"
            )
        await services.db(
            lambda: catalog.log(
                "restore_failed", snap.snapshot_id, reason=reason[:500], dest=str(dest_path)
            )
        )
        raise RestoreFailed(f"restore of {snap.snapshot_id} failed: {reason}") from None
    seconds = time.monotonic() - started
    await services.db(
        lambda: catalog.log(
            "restore",
            snap.snapshot_id,
            dest=str(dest_path),
            path=path,
            files=stats["files"],
            bytes=stats["bytes"],
            seconds=round(seconds, 3),
        )
    )
    return {
        "event": "result",
        "snapshot_id": snap.snapshot_id,
        "to": escape(os.fsencode(dest_path)),
        "path": path,
        "files": stats["files"],
        "bytes": stats["bytes"],
        "dirs": stats["dirs"],
        "symlinks": stats["symlinks"],
        "hardlinks": stats["hardlinks"],
        "specials": stats["specials"],
        "chunks": stats["chunks"],
        "notes": stats["notes"][:100],
        "seconds": round(seconds, 3),
    }


async def verify_snapshot(services: Services, snapshot: str, emit: Emit) -> dict[str, Any]:
    """Fetch every packet, decode every chunk; report redundancy left per chunk."""
    started = time.monotonic()
    snap = await resolve(services, snapshot)
    catalog = services.catalog
    chunks: list[ChunkRecord] = await services.db(catalog.chunks_of, snap.snapshot_id)
    if snap.record:
        chunks += [ChunkRecord.from_wire(r) for r in msgpack.unpackb(snap.record, raw=False)]
    healthy = degraded = lost = 0
    problems: list[dict[str, Any]] = []
    min_spare: int | None = None
    checked_bytes = 0
    limiter = trio.Semaphore(8)

    async def check(chunk: ChunkRecord) -> None:
        nonlocal healthy, degraded, lost, min_spare, checked_bytes
        async with limiter:
            fetched = await services.ask(services.retriever, FetchChunk(chunk, all_packets=True))
            await emit(
                {
                    "event": "progress",
                    "chunks_checked": healthy + degraded + lost + 1,
                    "chunks_total": len(chunks),
                }
            )
            good = len(fetched.shares)
            for share, target, why in fetched.missing:
                problems.append(
                    {
                        "chunk_id": chunk.chunk_id.hex(),
                        "share": share,
                        "target": target.hex(),
                        "problem": why,
                    }
                )
            if good < chunk.k:
                lost += 1
                return
            try:
                await services.ask(services.assembler, DecodeChunk(chunk, fetched.shares))
            except RestoreFailed as exc:
                lost += 1
                problems.append({"chunk_id": chunk.chunk_id.hex(), "problem": str(exc)})
                return
            spare = good - chunk.k
            min_spare = spare if min_spare is None else min(min_spare, spare)
            checked_bytes += chunk.plain_size
            if good == chunk.n:
                healthy += 1
            else:
                degraded += 1

    with collapse_groups():
        async with trio.open_nursery() as nursery:
            for chunk in chunks:
                nursery.start_soon(check, chunk)
    ok = lost == 0
    seconds = time.monotonic() - started
    await services.db(
        lambda: catalog.log(
            "verify", snap.snapshot_id, ok=ok, healthy=healthy, degraded=degraded, lost=lost
        )
    )
    return {
        "event": "result",
        "snapshot_id": snap.snapshot_id,
        "ok": ok,
        "chunks": len(chunks),
        "chunks_healthy": healthy,
        "chunks_degraded": degraded,
        "chunks_lost": lost,
        "min_spare_packets": min_spare,
        "bytes_checked": checked_bytes,
        "problems": problems[:200],
        "seconds": round(seconds, 3),
    }


async def delete_packet(
    services: Services, packet: PacketRecord, policy: str, *, timeout_s: float = 10
) -> bool:
    """Ask a packet's holder to drop it (with the per-packet delete secret); True if it
    held it.  Raises PeerError when the holder cannot be reached."""
    return await delete_on_holder(
        services, packet.packet_id, packet.target, policy, timeout_s=timeout_s
    )


async def forget_by_policy(
    services: Services,
    policy: KeepPolicy,
    *,
    dry_run: bool,
    emit: Emit,
    tags: Sequence[frozenset[str]] = (),
) -> dict[str, Any]:
    """Apply a retention policy to the complete snapshots, grouped by their roots
    (``gridnode.logic.retention``); forget the others one by one, unless ``dry_run``.
    Snapshots still running or interrupted are left alone: only whole ones are kept or
    forgotten by a policy.  ``tags`` (restic's ``--tag`` filter, ``gridnode.logic.tags``)
    limits the policy to the snapshots it matches; the others are neither kept nor
    forgotten by it."""
    snapshots = [
        s
        for s in await services.db(services.catalog.snapshots)
        if s.complete and matches_filter(s.tags, tags)
    ]
    kept, doomed, reasons = apply_policy(
        ((s.snapshot_id, s.finished or s.created, tuple(s.roots)) for s in snapshots), policy
    )
    forgotten: list[dict[str, Any]] = []
    if not dry_run:
        for number, snapshot_id in enumerate(doomed, 1):
            forgotten.append(await forget_snapshot(services, snapshot_id))
            await emit({"event": "progress", "forgotten": number, "to_forget": len(doomed)})
    return {
        "event": "result",
        "dry_run": dry_run,
        "policy": policy.to_json(),
        "tags": [",".join(sorted(group)) for group in tags],
        "keep": [{"snapshot_id": sid, "reasons": reasons[sid]} for sid in kept],
        "forget": doomed,
        # The names scripts use (issue 10): the ids forgotten (with --dry-run: those
        # that would be) and kept.
        "forgotten": doomed,
        "kept": list(kept),
        "chunks_freed": sum(f["chunks_freed"] for f in forgotten),
        "packets_deleted": sum(f["packets_deleted"] for f in forgotten),
        "bytes_freed": sum(f["bytes_freed"] for f in forgotten),
        # Deletes still queued for holders that are away, after the last forget.
        "packets_unreachable": forgotten[-1]["packets_unreachable"] if forgotten else 0,
    }


async def forget_snapshot(services: Services, snapshot: str) -> dict[str, Any]:
    """Drop a snapshot and release the chunks no other snapshot uses: their deletes are
    queued in the same transaction and sent now to the holders in the view; a holder
    away gets them when it is back (``gridnode.leases``).  Under the backup lock, so no
    backup decides to reuse a chunk while it is being released."""
    snap = await resolve(services, snapshot, complete=False)
    catalog = services.catalog
    async with services.backup_lock:
        freed = await services.db(catalog.release_snapshot, snap.snapshot_id)
        released = await release_queued(services, services.alive_ids)
    await services.db(
        lambda: catalog.log(
            "forget",
            snap.snapshot_id,
            chunks=freed,
            packets_deleted=released["packets_released"],
            packets_unreachable=released["packets_pending"],
        )
    )
    root = await publish_root(services)
    return {
        "event": "result",
        "snapshot_id": snap.snapshot_id,
        "forgotten": [snap.snapshot_id],
        "kept": [],
        "chunks_freed": freed,
        "packets_deleted": released["packets_released"],
        # Deletes still queued (of this and earlier forgets): sent when their holders are back.
        "packets_unreachable": released["packets_pending"],
        "bytes_freed": released["bytes_freed"],
        "recovery_root": root,
    }
