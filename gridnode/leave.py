"""The graceful leave (issue 10): a planned departure hands its packets over first.

A node that is retired on purpose should not leave its owners to find out by absence
(``repair_after_s``, a week by default) and then rebuild every packet it held from k
others.  While it is still up, each packet can simply be copied off it.  But only a
packet's owner knows which packets are its own and where they may go (the sequence
and the chunk's rules are the owner's secret), so the leaver cannot push them anywhere
itself: it announces that it drains, and the owners move their packets.

**The leaver** (``Departure``, ``gridnode leave``):

1. stops taking packets: the packet store refuses ``StorePacket(s)`` with the error
   code ``leaving`` (an uploader places that packet elsewhere), and its gossiped record
   carries ``DRAINING_LABEL`` and publishes no free space (``Gossiper.set_draining``),
   so placement leaves it out everywhere (a member of an older version, which does not
   know the label, sees a full member).  ``HOME/leaving`` keeps the state across a
   restart of the node;
2. waits, bounded by ``--timeout``, until its packet directory is empty, reporting the
   packets it still holds;
3. then leaves the way a stopping node always does: it announces its departure by
   gossip (``leaving`` set in its signed record) and stops.  With packets still held
   at the deadline it does not leave (unless ``force``): it keeps draining and running,
   and the operator may wait longer (``leave`` again) or take it back
   (``leave --cancel``).

**Each owner** (``Handover``, a task of every node): every ``tick_s`` it looks at the
members gossip reports alive and draining; for those that hold packets of its
snapshots it takes the backup lock (as repair does) and, per chunk, fetches the
leaver's packets from the leaver itself (a copy: no reconstruction), stores them on
holders chosen exactly as repair chooses them (``repair.store_shares``: the chunk's own
rules, the other holders fixed, the leaver excluded), records the new holders in one
transaction, and then deletes each copy on the leaver with the packet's delete secret.
A packet the leaver no longer has (or cannot serve) is rebuilt from the others
(``repair.repair_chunk``).  The data assembly records that named the leaver are
rewritten and the recovery root republished (``repair.rewrite_stale_records``); the run
is logged in the backup log as ``handover``, not as a repair, and counts in no repair
figure.  Afterwards the leaver is named in no catalog, so no repair ever runs for it.

**An owner that is away** while the leaver drains cannot move its packets: the leaver
reaches its deadline still holding them and reports how many.  Leaving anyway
(``force``) turns them into the ordinary case of a holder that went: the owner's
automatic repair rebuilds them ``repair_after_s`` after it last saw the leaver, or, if
the owner stays away, its repair delegates do (``gridnode.delegation``).  The same goes
for packets no owner will ever claim (left by an interrupted upload): only ``force``
gets past them.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .actors.retriever import FetchChunk
from .actors.uploader import UploadFailed
from .control import ControlError, Emit
from .errors import GridError, PeerError
from .exception_groups import collapse_groups
from .fsutil import atomic_write
from .job_services import Services
from .log import get_logger
from .logic.placement.rules import PlacementError
from .repair import repair_chunk, rewrite_stale_records, store_shares
from .restore import delete_packet
from .storage.records import ChunkRecord, PacketRecord

if TYPE_CHECKING:
    from .actors.gossip import Gossiper
    from .actors.packet_store import PacketStore
    from .storage.packets import PacketDirectory

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "LEAVING_FILE",
    "Departure",
    "Handover",
    "hand_over",
    "leave_params",
]

_log = get_logger(actor="leave")

#: ``HOME/leaving``: this node drains (kept across a restart until it leaves or cancels).
LEAVING_FILE: Final = "leaving"
#: How long ``gridnode leave`` waits for the owners by default.
DEFAULT_TIMEOUT_S: Final = 3600.0
#: The longest wait ``gridnode leave`` accepts (30 days).
MAX_TIMEOUT_S: Final = 30 * 86400.0
#: How often the leaver reports the packets it still holds.
PROGRESS_INTERVAL_S: Final = 1.0
#: Chunks moved at once by one owner (each holds its moving packets in memory).
CONCURRENCY: Final = 8
#: How often each owner looks for draining holders of its packets.
HANDOVER_TICK_S: Final = 2.0
#: A hand-over run that left packets on a leaver is retried after this long.
HANDOVER_RETRY_S: Final = 30.0
#: Copies on a leaver whose delete failed, kept to retry (beyond this, forgotten: the
#: leaver then reaches its deadline and the operator decides).
MAX_PENDING_DELETES: Final = 100_000


# --- the leaver ---------------------------------------------------------------------------


@attrs.define
class Departure:
    """The leaving node's side: drain, wait for the owners, then leave."""

    home: Path
    services: Services
    packets: PacketDirectory
    packet_store: PacketStore
    gossiper: Gossiper
    #: The node's shutdown: announces the leave by gossip and stops the node.
    shutdown: Callable[[], None]
    poll_s: float = 0.25

    @property
    def draining(self) -> bool:
        return self.packet_store.leaving

    def start(self) -> None:
        """Refuse new packets and publish the draining record; idempotent.

        Raises:
            ControlError: the record has no room for the draining label.
        """
        if self.draining and self.gossiper.draining:
            return
        self.packet_store.leaving = True
        try:
            self.gossiper.set_draining(True, 0)
        except ValueError as exc:
            self.packet_store.leaving = False
            raise ControlError(
                "cannot_drain", f"cannot publish the draining state: {exc}"
            ) from None
        path = self.home / LEAVING_FILE
        if not path.exists():
            atomic_write(path, json.dumps({"since": time.time()}).encode() + b"\n", mode=0o600)
        _log.info("draining", packets=self.packets.packet_count)

    def cancel(self) -> None:
        """Take packets again: the node stays in the grid."""
        self.packet_store.leaving = False
        if self.gossiper.draining:
            self.gossiper.set_draining(False, self.packets.free_bytes)
        (self.home / LEAVING_FILE).unlink(missing_ok=True)
        _log.info("draining_cancelled")

    def resume(self) -> None:
        """At start: drain again if this node was draining when it stopped."""
        if (self.home / LEAVING_FILE).exists():
            self.start()

    async def leave(self, *, timeout_s: float, force: bool, emit: Emit) -> dict[str, Any]:
        """Drain, wait until no packet is held here (at most ``timeout_s``), then leave.

        Returns the result ``gridnode leave`` prints; ``left`` says whether the node is
        now stopping (announcing its departure by gossip)."""
        self.start()
        started = trio.current_time()
        deadline = started + timeout_s
        at_start = self.packets.packet_count
        held = at_start
        last_emit = -float("inf")
        while True:  # bounded by the deadline
            held = self.packets.packet_count
            now = trio.current_time()
            if held == 0 or now >= deadline:
                break
            if now - last_emit >= PROGRESS_INTERVAL_S:
                last_emit = now
                await emit(
                    {
                        "event": "progress",
                        "phase": "handover",
                        "packets_held": held,
                        "packets_at_start": at_start,
                        "seconds": round(now - started, 1),
                        "timeout_s": timeout_s,
                    }
                )
            await trio.sleep(min(self.poll_s, max(0.0, deadline - now)))
        complete = held == 0
        left = complete or force
        result: dict[str, Any] = {
            "event": "result",
            "ok": complete,
            "left": left,
            "packets_at_start": at_start,
            "packets_held": held,
            "seconds": round(trio.current_time() - started, 3),
            "timeout_s": timeout_s,
            "forced": force and not complete,
        }
        fields = {k: result[k] for k in ("ok", "left", "packets_at_start", "packets_held")}
        await self.services.db(lambda: self.services.catalog.log("leave", None, **fields))
        if left:
            _log.info("leaving", **fields)
            self.shutdown()  # the gossip leave announcement, then the node stops
        else:
            _log.warning("leave_timed_out", **fields)
        return result


def leave_params(params: dict[str, Any]) -> tuple[float, bool, bool]:
    """``leave``'s (timeout_s, force, cancel), checked: a control client need not be ours."""
    timeout = params.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ControlError("bad_params", "parameter 'timeout_s' must be a number of seconds")
    if not 0 < timeout <= MAX_TIMEOUT_S:
        raise ControlError(
            "bad_params", f"the timeout must be above 0 and at most {MAX_TIMEOUT_S:.0f} s"
        )
    flags = []
    for name in ("force", "cancel"):
        value = params.get(name, False)
        if not isinstance(value, bool):
            raise ControlError("bad_params", f"parameter {name!r} must be a boolean")
        flags.append(value)
    if flags[0] and flags[1]:
        raise ControlError("bad_params", "give force or cancel, not both")
    return float(timeout), flags[0], flags[1]


# --- each owner ---------------------------------------------------------------------------


@attrs.define
class _Tally:
    chunks_moved: int = 0
    packets_moved: int = 0
    packets_rebuilt: int = 0
    copies_deleted: int = 0
    chunks_failed: int = 0
    problems: list[dict[str, Any]] = attrs.field(factory=list)
    #: Copies moved off a leaver whose delete failed: (packet, policy).
    undeleted: list[tuple[PacketRecord, str]] = attrs.field(factory=list)

    def problem(self, chunk: ChunkRecord, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append({"chunk_id": chunk.chunk_id.hex(), "problem": text})


async def _delete_copies(
    services: Services, copies: list[tuple[PacketRecord, str]], tally: _Tally
) -> None:
    for old, policy in copies:
        try:
            await delete_packet(services, old, policy, timeout_s=10)
            tally.copies_deleted += 1
        except PeerError:
            tally.undeleted.append((old, policy))


async def _hand_over_chunk(
    services: Services, chunk: ChunkRecord, leavers: frozenset[bytes], tally: _Tally
) -> None:
    """Move one chunk's packets off ``leavers``: copied from them, stored as repair
    stores, recorded, then deleted there."""
    leaving = {p.share: p for p in chunk.packets if p.target in leavers}
    if not leaving:
        return
    others = frozenset(p.target for p in chunk.packets if p.target not in leavers)
    fetched = await services.ask(
        services.retriever, FetchChunk(chunk, all_packets=True, skip=others)
    )
    # bytes() is the same object: packets fetched with all_packets come as bytes.
    copies = {share: bytes(data) for share, data in fetched.shares.items() if share in leaving}
    del fetched
    if len(copies) < len(leaving):
        # The leaver lost a packet or cannot serve it: rebuild the leaver's packets from
        # the others, as the automatic repair would once it had gone.
        done = await repair_chunk(services, chunk, frozenset(p.target for p in leaving.values()))
        tally.packets_rebuilt += done["packets_rebuilt"]
        tally.copies_deleted += done["stale_copies_deleted"]
        if done["chunks_repaired"]:
            tally.chunks_moved += 1
        else:
            tally.chunks_failed += 1
            for problem in done["problems"]:
                tally.problem(chunk, problem["problem"])
        return
    try:
        await store_shares(services, chunk, copies, delete_old=False)
    except (PlacementError, UploadFailed, ValueError) as exc:
        tally.chunks_failed += 1
        tally.problem(chunk, f"no new holders: {exc}")
        return
    tally.chunks_moved += 1
    tally.packets_moved += len(copies)
    # Recorded first, deleted after: a crash in between leaves a copy on the leaver
    # (it then waits for its deadline), never a packet recorded nowhere.
    await _delete_copies(services, [(p, chunk.policy) for p in leaving.values()], tally)


async def hand_over(
    services: Services, leavers: frozenset[bytes], emit: Emit | None = None
) -> dict[str, Any]:
    """Move every packet of this node's snapshots off ``leavers`` (draining members).

    The caller holds the backup lock: a backup must not deduplicate against a chunk
    whose holders change."""
    started = time.monotonic()
    catalog = services.catalog
    tally = _Tally()
    limiter = trio.Semaphore(CONCURRENCY)
    seen: set[tuple[bytes, str]] = set()

    async def quiet(event: dict[str, Any]) -> None:
        pass

    async def pages() -> AsyncIterator[list[ChunkRecord]]:
        after = (b"", "")
        targets = sorted(leavers)
        while page := await services.db(lambda a=after: catalog.chunks_on_page(targets, after=a)):
            after = (page[-1].chunk_id, page[-1].policy)
            yield page

    async def one(chunk: ChunkRecord) -> None:
        try:
            await _hand_over_chunk(services, chunk, leavers, tally)
        except GridError as exc:  # a fetch or a delete that failed outright
            tally.chunks_failed += 1
            tally.problem(chunk, str(exc))
        finally:
            limiter.release()

    with collapse_groups():
        async with trio.open_nursery() as nursery:
            async for page in pages():
                for chunk in page:
                    key = (chunk.chunk_id, chunk.policy)
                    if key in seen:
                        continue
                    seen.add(key)
                    await limiter.acquire()
                    nursery.start_soon(one, chunk)
    rewritten, _, records_failed, root = await rewrite_stale_records(
        services, emit or quiet, tally.problems
    )
    ok = tally.chunks_failed == 0 and records_failed == 0 and not tally.undeleted
    summary = {
        "ok": ok,
        "holders": [h.hex()[:12] for h in sorted(leavers)],
        "chunks_moved": tally.chunks_moved,
        "packets_moved": tally.packets_moved,
        "packets_rebuilt": tally.packets_rebuilt,
        "copies_deleted": tally.copies_deleted,
        "chunks_failed": tally.chunks_failed,
        "records_rewritten": len(rewritten),
    }
    await services.db(lambda: catalog.log("handover", None, **summary))
    _log.info("handover_done", **summary)
    return {
        **summary,
        "event": "result",
        "records_rewritten": rewritten,
        "records_failed": records_failed,
        "recovery_root": root,
        "problems": tally.problems,
        "undeleted": tally.undeleted,
        "seconds": round(time.monotonic() - started, 3),
    }


@attrs.define
class Handover:
    """Each owner's side of a graceful leave: a task in the node's nursery.

    Every ``tick_s`` it reads which members drain (recomputed only when the gossip
    view's version moved, so an idle grid costs nothing) and, when any of them holds
    packets of this node's snapshots, moves them (``hand_over``).  A run that left some
    behind (no room under the rules, a leaver that did not answer) is retried after
    ``retry_s``; copies whose delete failed are retried at each tick while their holder
    still drains."""

    services: Services
    #: Members alive or suspect whose record says they drain.
    draining: Callable[[], frozenset[bytes]]
    #: The gossip view's version: ``draining`` is asked again only when it moved.
    version: Callable[[], int]
    tick_s: float = HANDOVER_TICK_S
    retry_s: float = HANDOVER_RETRY_S
    stats: dict[str, int] = attrs.field(factory=dict)
    runs: list[dict[str, Any]] = attrs.field(factory=list)
    _seen_version: int = -1
    _leavers: frozenset[bytes] = frozenset()
    #: Leaver -> when (trio clock) a run last left packets on it.
    _tried: dict[bytes, float] = attrs.field(factory=dict)
    #: packet id -> (the copy on a leaver, its policy): deletes to retry.
    _undeleted: dict[bytes, tuple[PacketRecord, str]] = attrs.field(factory=dict)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.tick_s)
            try:
                await self.tick()
            except (GridError, OSError) as exc:
                _log.warning("handover_failed", error=str(exc))

    def leavers(self) -> frozenset[bytes]:
        version = self.version()
        if version != self._seen_version:
            self._seen_version = version
            self._leavers = self.draining()
        return self._leavers

    async def tick(self) -> dict[str, Any] | None:
        leavers = self.leavers()
        if not leavers:
            self._undeleted.clear()  # their holders left: the copies went with them
            return None
        await self._retry_deletes(leavers)
        holders: set[bytes] = await self.services.db(self.services.catalog.holders)
        now = trio.current_time()
        due = frozenset(
            h for h in leavers & holders if now - self._tried.get(h, -float("inf")) >= self.retry_s
        )
        if not due:
            return None
        async with self.services.backup_lock:
            result = await hand_over(self.services, due)
        for old, policy in result.pop("undeleted"):
            if len(self._undeleted) < MAX_PENDING_DELETES:
                self._undeleted[old.packet_id] = (old, policy)
        if result["ok"]:
            for holder in due:
                self._tried.pop(holder, None)
        else:
            for holder in due:
                self._tried[holder] = trio.current_time()
        self._count("handover_runs")
        for name in ("chunks_moved", "packets_moved", "packets_rebuilt", "copies_deleted"):
            self._count(f"handover_{name}", result[name])
        self.runs.append(result)
        del self.runs[:-10]
        return result

    async def _retry_deletes(self, leavers: frozenset[bytes]) -> None:
        pending = [v for v in self._undeleted.values() if v[0].target in leavers]
        self._undeleted.clear()
        if not pending:
            return
        tally = _Tally()
        await _delete_copies(self.services, pending, tally)
        self._count("handover_copies_deleted", tally.copies_deleted)
        for old, policy in tally.undeleted:
            self._undeleted[old.packet_id] = (old, policy)

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n
