"""Repair: put back the redundancy that lost, corrupt or departed holders took away.

Erasure coding only buys time.  A chunk stored k-of-n survives n-k losses, and nodes
leave a grid for good (a disk dies, a machine is retired): without repair every chunk
drifts towards k and then past it.  ``gridnode repair`` checks every packet of every
chunk (data and data-assembly-record pieces) the way ``verify`` does, and for a chunk
with at least k good packets and some missing:

1. rebuilds the missing packets from any k survivors at the erasure level
   (``packing.rebuild_shares``): no key, no plaintext; the rebuilt bytes must hash to the
   packet ids recorded at backup, which proves them right;
2. asks the sequencer for new targets under the chunk's own rules (the snapshot's
   proximity bands and distinct labels), keeping the surviving holders fixed so the
   pairwise rules hold for the chunk's whole set of targets, never relaxing a rule;
3. uploads them through the uploader (receipts as at backup) and records the new
   holders in the catalog, one transaction per chunk;
4. asks an old holder that still answers but lost or damaged its copy to delete it.

Every complete snapshot that uses a repaired chunk then gets its data assembly record
rewritten (the record names every packet's holder, and a recovered catalog must point at
the new ones), old record pieces no snapshot uses are deleted, and the recovery root is
published again.  The run is logged in the backup log.

Repair takes the backup lock: a backup deduplicating against a chunk while its holders
change would record the old holders.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import attrs
import msgpack
import trio

from .actors.retriever import FetchChunk
from .actors.sequencer import PlaceChunk
from .actors.uploader import UploadChunk, UploadFailed
from .control import Emit
from .errors import GridError, PeerError
from .exception_groups import collapse_groups
from .job_services import Services
from .leases import release_queued
from .log import get_logger
from .logic.packing import ChunkIntegrityError, ErasureParams, rebuild_shares
from .logic.placement.rules import PlacementError, PlacementRules
from .record_store import store_blob, write_record
from .recovery_root import publish_root
from .restore import delete_packet, resolve
from .storage.records import ChunkRecord, PacketRecord, SnapshotRecord

__all__ = [
    "AutoRepair",
    "StoredShares",
    "repair",
    "repair_chunk",
    "repair_holders",
    "rewrite_stale_records",
    "store_shares",
]

_log = get_logger(actor="request")

#: Chunks checked at once: each holds up to n packets in memory while it is checked.
CONCURRENCY = 8
#: After this node was off longer than the repair delay, its first run watches this
#: long (at most the delay) before it counts a holder gone: a day sees a home machine's
#: daily session.
LONG_ABSENCE_SETTLE_S = 86400.0


@attrs.define
class _Tally:
    chunks_checked: int = 0
    chunks_healthy: int = 0
    chunks_repaired: int = 0
    chunks_lost: int = 0
    chunks_unrepaired: int = 0
    packets_rebuilt: int = 0
    stale_copies_deleted: int = 0
    problems: list[dict[str, Any]] = attrs.field(factory=list)

    def problem(self, chunk: ChunkRecord, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append({"chunk_id": chunk.chunk_id.hex(), "problem": text})


def _rules_of(chunk: ChunkRecord) -> PlacementRules:
    return PlacementRules.from_wire(chunk.rules) if chunk.rules else PlacementRules()


def gone_packets(chunk: ChunkRecord, gone: frozenset[bytes]) -> int:
    return sum(1 for p in chunk.packets if p.target in gone)


def effective_threshold(chunk: ChunkRecord, threshold: int) -> int:
    """``repair_threshold`` for this chunk's own code: a thinner one (another policy's
    redundancy) is repaired at its last spare packet at the latest."""
    return max(1, min(threshold, chunk.n - chunk.k))


async def _repair_chunk(
    services: Services,
    chunk: ChunkRecord,
    tally: _Tally,
    gone: frozenset[bytes],
    threshold: int = 1,
) -> bool:
    """Check one chunk and restore its n packets; True when the catalog changed.

    Holders in ``gone`` (not seen for ``repair_after_s``) are not asked: a dead address
    costs a connect timeout per chunk.  The automatic repair (``gone`` given) touches a
    chunk only once ``threshold`` of its holders are gone, and rebuilds only their
    packets and those a holder answered for without them (lost or rotten): a holder that
    merely does not answer now is a home machine asleep, not a loss.  A manual repair
    (``gone`` empty) rebuilds every packet it could not fetch."""
    if gone and gone_packets(chunk, gone) < effective_threshold(chunk, threshold):
        tally.chunks_healthy += 1
        return False
    fetched = await services.ask(services.retriever, FetchChunk(chunk, all_packets=True, skip=gone))
    if gone:
        lost_shares = sorted(
            {s for s, t, _ in fetched.missing if t in gone or s in fetched.answered}
        )
    else:
        lost_shares = sorted({share for share, _, _ in fetched.missing})
    if not lost_shares:
        tally.chunks_healthy += 1
        return False
    if len(fetched.shares) < chunk.k:
        tally.chunks_lost += 1
        tally.problem(chunk, f"only {len(fetched.shares)} of the {chunk.k} packets needed survive")
        return False
    by_share = {p.share: p for p in chunk.packets}
    params = ErasureParams(chunk.k, chunk.n)
    packet_ids = [by_share[i].packet_id for i in range(chunk.n)]
    try:
        rebuilt = await trio.to_thread.run_sync(
            functools.partial(
                rebuild_shares,
                fetched.shares,
                params=params,
                cipher_size=chunk.cipher_size,
                packet_ids=packet_ids,
                wanted=lost_shares,
            ),
            limiter=services.cpu_limiter,
        )
    except ChunkIntegrityError as exc:
        tally.chunks_unrepaired += 1
        tally.problem(chunk, f"cannot rebuild: {exc}")
        return False
    # A holder that answered (its copy is gone or rotten) gets the packet back: it met the
    # rules already, and bit rot must not push packets off a grid that has no other room.
    # Packets of unreachable holders move to new ones, placed under the chunk's rules with
    # every other holder fixed.
    same = frozenset(i for i in lost_shares if i in fetched.answered)
    del fetched
    try:
        moved = await store_shares(services, chunk, rebuilt, same=same)
    except (PlacementError, UploadFailed, ValueError) as exc:
        tally.chunks_unrepaired += 1
        tally.problem(chunk, f"no new holders: {exc}")
        return False
    tally.chunks_repaired += 1
    tally.packets_rebuilt += len(moved.packets)
    tally.stale_copies_deleted += moved.old_copies_deleted
    return True


async def repair_chunk(
    services: Services, chunk: ChunkRecord, gone: frozenset[bytes]
) -> dict[str, Any]:
    """One chunk's automatic repair: the packets on ``gone`` (and those a holder lost)
    rebuilt from the others and placed anew.  The hand-over's way when a leaving holder
    no longer has a packet it should (``gridnode.leave``).  Returns the chunk's tally."""
    tally = _Tally()
    await _repair_chunk(services, chunk, tally, gone, threshold=1)
    return attrs.asdict(tally)


@attrs.frozen
class StoredShares:
    """What ``store_shares`` did: each share's new record, and old copies dropped."""

    packets: dict[int, PacketRecord]
    old_copies_deleted: int


async def store_shares(
    services: Services,
    chunk: ChunkRecord,
    packets: dict[int, bytes],
    *,
    same: frozenset[int] = frozenset(),
    delete_old: bool = True,
) -> StoredShares:
    """Store ``packets`` (share -> the packet's bytes, rebuilt or copied) on holders
    chosen as repair chooses them, and record the new holders in the catalog in one
    transaction (``Catalog.repair_chunk``, which marks the records that name the old
    ones stale).  Shares in ``same`` go back to their own holder; the others are placed
    by the sequencer under the chunk's own rules, every other holder fixed, their old
    holders excluded (and any holder that is out of the view).  The graceful leave's
    hand-over (``gridnode.leave``) moves packets off a leaving holder through here too.

    With ``delete_old`` an old holder still present is asked, best effort, to drop its
    copy of a moved packet.

    Raises:
        PlacementError, UploadFailed, ValueError: no new holders; nothing recorded.
    """
    lost_shares = sorted(packets)
    by_share = {p.share: p for p in chunk.packets}
    moving = [i for i in lost_shares if i not in same]
    kept = tuple(by_share[i].target for i in range(chunk.n) if i not in packets)
    held = kept + tuple(by_share[i].target for i in lost_shares if i in same)
    rules = _rules_of(chunk)
    packet_bytes = len(next(iter(packets.values())))
    new_target = {i: by_share[i].target for i in lost_shares if i in same}
    if moving:
        # A holder kept while it sleeps (off now, not gone) is out of the placement
        # view: it stays where it is but cannot be checked against the pairwise rules.
        alive = services.alive_ids()
        asleep = {t for t in held if t not in alive}
        fixed = tuple(t for t in held if t not in asleep)
        targets = await services.ask(
            services.sequencer,
            PlaceChunk(
                chunk_id=chunk.chunk_id,
                n=len(fixed) + len(moving),
                packet_bytes=packet_bytes,
                rules=rules,
                exclude=frozenset(by_share[i].target for i in moving) | asleep,
                fixed=fixed,
            ),
        )
        fresh = [t for t in targets if t not in fixed]
        new_target.update(zip(moving, fresh, strict=True))
    uploaded = await services.ask(
        services.uploader,
        UploadChunk(
            chunk_id=chunk.chunk_id,
            packets=tuple(packets[i] for i in lost_shares),
            packet_ids=tuple(by_share[i].packet_id for i in lost_shares),
            targets=tuple(new_target[i] for i in lost_shares),
            rules=rules,
            packet_bytes=packet_bytes,
            policy=chunk.policy,
            held=kept,
        ),
    )
    new_packets = {
        lost_shares[p.share]: PacketRecord(lost_shares[p.share], p.packet_id, p.target, p.receipt)
        for p in uploaded.placed
    }
    repaired = attrs.evolve(
        chunk,
        packets=tuple(new_packets.get(i, by_share[i]) for i in range(chunk.n)),
    )
    await services.db(services.catalog.repair_chunk, repaired)
    deleted = 0
    if not delete_old:
        return StoredShares(new_packets, 0)
    # A packet that moved may still sit on its old holder (it was only unreachable for a
    # while): ask it to drop the copy, or queue the delete for when it is back
    # (``gridnode.leases``; without renewals its lease runs out there anyway).
    present = services.alive_ids()
    later: list[tuple[bytes, bytes, str, int]] = []
    for share in moving:
        old = by_share[share]
        if new_packets[share].target == old.target:
            continue
        if old.target in present:
            try:
                if await delete_packet(services, old, chunk.policy, timeout_s=5):
                    deleted += 1
                continue
            except PeerError:
                pass
        later.append((old.packet_id, old.target, chunk.policy, packet_bytes))
    if later:
        await services.db(services.catalog.queue_deletes, later)
    return StoredShares(new_packets, deleted)


async def _rewrite_record(services: Services, snap: SnapshotRecord) -> int:
    """Store a fresh data assembly record for ``snap``; returns the old pieces freed."""
    catalog = services.catalog
    path = services.config.home / "tmp" / f"record-repair-{snap.snapshot_id}.msgpack"
    path.parent.mkdir(exist_ok=True)
    try:
        await services.db(
            lambda: write_record(
                path,
                catalog.entries(snap.snapshot_id),
                catalog.iter_chunks_of(snap.snapshot_id),
            )
        )
        pieces, _ = await store_blob(
            services,
            path,
            params=ErasureParams.parse(snap.params),
            rules=PlacementRules.from_wire(snap.rules) if snap.rules else PlacementRules(),
        )
    finally:
        path.unlink(missing_ok=True)
    ref = bytes(msgpack.packb([p.to_wire() for p in pieces], use_bin_type=True))
    orphans = await services.db(catalog.replace_record, snap.snapshot_id, pieces, ref)
    # The caller holds the backup lock, as releasing needs (``gridnode.leases``).
    freed = int(await services.db(catalog.release_chunks, orphans))
    await release_queued(services, services.alive_ids)
    return freed


async def rewrite_stale_records(
    services: Services, emit: Emit, problems: list[dict[str, Any]]
) -> tuple[list[str], int, int, dict[str, Any] | None]:
    """Rewrite the data assembly record of every snapshot marked stale (its record names
    holders that were replaced), then republish the recovery root if any was rewritten.

    Returns (snapshots rewritten, old record pieces freed, records that failed, the
    published root or None); a failure is added to ``problems`` and left marked, so the
    next repair or hand-over retries it."""
    catalog = services.catalog
    rewritten: list[str] = []
    pieces_freed = 0
    records_failed = 0
    stale: list[str] = await services.db(catalog.stale_records)
    if stale:
        await emit({"event": "progress", "phase": "records", "records": len(stale)})
    for snapshot_id in stale:
        snap = await services.db(catalog.snapshot, snapshot_id)
        if snap is not None and snap.complete and snap.record:
            try:
                pieces_freed += await _rewrite_record(services, snap)
            except (GridError, PlacementError) as exc:
                records_failed += 1
                if len(problems) < 200:
                    problems.append(
                        {"snapshot_id": snapshot_id, "problem": f"record not rewritten: {exc}"}
                    )
                continue
            rewritten.append(snapshot_id)
        await services.db(catalog.record_rewritten, snapshot_id)
    root = await publish_root(services) if rewritten else None
    return rewritten, pieces_freed, records_failed, root


async def repair(services: Services, snapshot: str | None, emit: Emit) -> dict[str, Any]:
    """Repair one snapshot (``snapshot``) or every complete one (``None``)."""
    async with services.backup_lock:
        catalog = services.catalog
        if snapshot is not None:
            scope = [(await resolve(services, snapshot)).snapshot_id]
        else:
            scope = [s.snapshot_id for s in await services.db(catalog.snapshots) if s.complete]

        async def pages() -> AsyncIterator[list[ChunkRecord]]:
            for snapshot_id in scope:
                after = b""
                while page := await services.db(
                    lambda s=snapshot_id, a=after: catalog.chunk_page(s, after=a)
                ):
                    after = page[-1].chunk_id
                    yield page

        await emit({"event": "started", "snapshots": scope})
        log_as = scope[0] if snapshot is not None else None  # the full id, not a prefix
        result = await _repair(services, pages(), emit, log_as=log_as)
        return {**result, "snapshots": scope}


async def repair_holders(
    services: Services, gone: Sequence[bytes], *, threshold: int = 1, automatic: bool = True
) -> dict[str, Any]:
    """Repair only the chunks with ``threshold`` or more packets on ``gone``: the
    automatic repair, or ``gridnode check --repair`` (``automatic=False``, so the backup
    log says someone asked for it)."""

    async def pages() -> AsyncIterator[list[ChunkRecord]]:
        after = (b"", "")
        while page := await services.db(
            lambda a=after: services.catalog.chunks_on_page(gone, after=a)
        ):
            after = (page[-1].chunk_id, page[-1].policy)
            yield page

    async def quiet(event: dict[str, Any]) -> None:
        pass

    async with services.backup_lock:
        return await _repair(
            services,
            pages(),
            quiet,
            log_as=None,
            gone=gone,
            threshold=threshold,
            automatic=automatic,
        )


async def _repair(
    services: Services,
    pages: AsyncIterator[list[ChunkRecord]],
    emit: Emit,
    *,
    log_as: str | None,
    gone: Sequence[bytes] = (),
    threshold: int = 1,
    automatic: bool = True,
) -> dict[str, Any]:
    started = time.monotonic()
    catalog = services.catalog
    tally = _Tally()
    seen: set[tuple[bytes, str]] = set()
    limiter = trio.Semaphore(CONCURRENCY)
    last_progress = [0.0]
    gone_set = frozenset(gone)

    async def one(chunk: ChunkRecord) -> None:
        try:
            await _repair_chunk(services, chunk, tally, gone_set, threshold)
        finally:
            tally.chunks_checked += 1
            limiter.release()
        now = time.monotonic()
        if now - last_progress[0] >= 0.5:
            last_progress[0] = now
            await emit(
                {
                    "event": "progress",
                    "phase": "check",
                    "chunks_checked": tally.chunks_checked,
                    "chunks_repaired": tally.chunks_repaired,
                    "packets_rebuilt": tally.packets_rebuilt,
                }
            )

    with collapse_groups():
        async with trio.open_nursery() as nursery:
            async for page in pages:
                for chunk in page:
                    key = (chunk.chunk_id, chunk.policy)
                    if key in seen:
                        continue
                    seen.add(key)
                    await limiter.acquire()
                    nursery.start_soon(one, chunk)

    # Records marked stale by this run's repairs, or left stale by an earlier run that
    # crashed or could not store them.
    rewritten, pieces_freed, records_failed, root = await rewrite_stale_records(
        services, emit, tally.problems
    )
    seconds = round(time.monotonic() - started, 3)
    ok = tally.chunks_lost == 0 and tally.chunks_unrepaired == 0 and records_failed == 0
    await services.db(
        lambda: catalog.log(
            "repair",
            log_as,
            ok=ok,
            automatic=bool(gone) and automatic,
            gone_holders=[g.hex()[:12] for g in gone],
            threshold=threshold if gone else None,
            checked=tally.chunks_checked,
            repaired=tally.chunks_repaired,
            packets_rebuilt=tally.packets_rebuilt,
            lost=tally.chunks_lost,
            unrepaired=tally.chunks_unrepaired,
            records_rewritten=len(rewritten),
        )
    )
    _log.info("repair_done", repaired=tally.chunks_repaired, lost=tally.chunks_lost)
    return {
        "event": "result",
        "ok": ok,
        "chunks_checked": tally.chunks_checked,
        "chunks_healthy": tally.chunks_healthy,
        "chunks_repaired": tally.chunks_repaired,
        "chunks_lost": tally.chunks_lost,
        "chunks_unrepaired": tally.chunks_unrepaired,
        "packets_rebuilt": tally.packets_rebuilt,
        "stale_copies_deleted": tally.stale_copies_deleted,
        "records_rewritten": rewritten,
        "records_failed": records_failed,
        "record_pieces_freed": pieces_freed,
        "recovery_root": root,
        "problems": tally.problems,
        "seconds": seconds,
    }


@attrs.define
class AutoRepair:
    """The node's own repair: packets of holders the grid has not seen for long move.

    Every ``tick_s`` it compares the holders of this node's packets with the members
    gossip reports alive or suspect, and records in the catalog when each holder was
    last seen (wall clock).  A holder not seen for ``after_s`` is taken for gone; the
    clock counts from the last sighting, so a restart of this node (or a week switched
    off) does not restart it.  Only the chunks with ``threshold`` or more packets on
    gone holders are repaired (a targeted fetch, not a full verify: a nightly full check
    of every packet would cost a full download), and only the gone holders' packets
    move.

    A node just started sees nobody yet: a holder counts as gone only once this process
    too has missed it for ``settle_s`` (time for gossip to learn the view), else a node
    back from a long absence would rebuild everything at once.  The sightings are this
    node's own, not the grid's: after this node was itself off for longer than
    ``after_s`` (its own last tick is kept beside them), a holder it has not seen since
    may simply be off right now, so its first run watches for ``LONG_ABSENCE_SETTLE_S``
    (a day, at most ``after_s``: a daily cycle) before counting anyone gone.  A run is
    retried after
    another ``after_s`` while the gone holders stay the same; a newly gone one triggers
    a run at once (it may bring more chunks to the threshold).

    A holder this node's storage audits distrust (``distrusted``, ``gridnode.audit``)
    counts as gone at once, present or not: it lost or spoiled packets it was given, so
    waiting ``after_s`` only leaves chunks thinner than they look.  Its packets move
    like a gone holder's (same threshold, the chunk's own rules).
    """

    services: Services
    present: Callable[[], set[bytes]]
    after_s: float
    tick_s: float
    threshold: int = 1
    settle_s: float = 0.0
    clock: Callable[[], float] = time.time
    #: Set on the first tick: how long this process watches before counting anyone gone.
    watch_s: float | None = None
    #: When this process first missed each absent holder (trio clock).
    missing_here: dict[bytes, float] = attrs.field(factory=dict)
    #: When each gone holder was last part of a run (trio clock).
    tried: dict[bytes, float] = attrs.field(factory=dict)
    runs: list[dict[str, Any]] = attrs.field(factory=list)
    #: Runs before a repair: takes in the moves this node's delegates made while it was
    #: away (``Delegator.take_moves``), so that it does not rebuild the same packets.
    before: Callable[[], Awaitable[Any]] | None = None
    #: Told each run's result (the node's repair totals: summary line and metrics).
    on_result: Callable[[dict[str, Any]], None] | None = None
    #: Holders the storage audits distrust: gone now, whatever gossip says.
    distrusted: Callable[[], frozenset[bytes]] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.tick_s)
            try:
                await self.tick()
            except (GridError, OSError, sqlite3.Error) as exc:
                _log.warning("auto_repair_failed", error=str(exc))

    async def gone(self) -> list[bytes]:
        """Holders not seen for ``after_s``, and distrusted ones; records the sightings of
        this tick."""
        catalog = self.services.catalog
        holders: set[bytes] = await self.services.db(catalog.holders)
        now, mono = self.clock(), trio.current_time()
        present = self.present()
        seen: dict[bytes, float] = await self.services.db(catalog.holders_seen)
        own = self.services.identity.node_id  # never a holder: its row is this node's tick
        if self.watch_s is None:
            last_tick = seen.get(own)
            self.watch_s = self.settle_s
            if last_tick is not None and now - last_tick > self.after_s:
                self.watch_s = max(self.settle_s, min(self.after_s, LONG_ABSENCE_SETTLE_S))
        update = {n: now for n in holders & present}
        # A holder never seen by this catalog (placed before the table existed, or by a
        # repair) starts its clock at its first absence.
        update.update({n: now for n in holders - present if n not in seen})
        update[own] = now
        await self.services.db(lambda: catalog.note_holders_seen(update, keep=holders | {own}))
        seen.update(update)
        for node_id in list(self.missing_here):
            if node_id not in holders or node_id in present:
                del self.missing_here[node_id]
        distrusted = holders & self.distrusted() if self.distrusted is not None else set()
        for node_id in list(self.tried):
            # A distrusted holder stays tried while present: retried after ``after_s``.
            if node_id not in holders or (node_id in present and node_id not in distrusted):
                del self.tried[node_id]
        for node_id in holders - present:
            self.missing_here.setdefault(node_id, mono)
        unseen = {
            n
            for n in holders - present
            if now - seen[n] >= self.after_s and mono - self.missing_here[n] >= self.watch_s
        }
        return sorted(unseen | distrusted)

    async def tick(self) -> dict[str, Any] | None:
        gone = await self.gone()
        mono = trio.current_time()
        due = [g for g in gone if mono - self.tried.get(g, -float("inf")) >= self.after_s]
        if not due or self.services.backup_lock.locked():
            return None  # nothing new, or a backup or a manual repair is running
        if self.before is not None and await self.before():
            holders = await self.services.db(self.services.catalog.holders)
            gone = [g for g in gone if g in holders]
            if not gone:
                return None
        _log.info("auto_repair", gone=[g.hex()[:12] for g in gone], threshold=self.threshold)
        result = await repair_holders(self.services, gone, threshold=self.threshold)
        for node_id in gone:  # retried after another full wait if anything was left
            self.tried[node_id] = trio.current_time()
        self.runs.append(result)
        del self.runs[:-10]
        if self.on_result is not None:
            self.on_result(result)
        return result
