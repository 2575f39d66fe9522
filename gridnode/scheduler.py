"""Unattended backups: the node runs the ``[[schedule]]`` tables of its config itself.

One task in the node's nursery.  It sleeps until the earliest schedule is due
(``gridnode.schedules.next_run``), runs it, and sleeps again; so schedules run one at a
time, and a backup typed at the CLI meanwhile waits on the node's backup lock as two
typed backups would.  A run is a control ``backup`` submitted to the request actor, the
path ``gridnode backup`` takes: the same checks, progress, logging and backup log, the
job counted in ``status``, and a stopping node waits for it as for any job.  After a
successful run the schedule's ``keep`` policy is applied to the snapshots this schedule
made (and to no other), each forgotten by a control ``forget``.  Each snapshot a schedule
makes is tagged ``schedule:NAME`` (``gridnode.logic.tags.schedule_tag``): retention picks
its snapshots by that tag, ``gridnode snapshots`` shows the schedule from it, and
``gridnode forget --keep-... --tag schedule:NAME`` does by hand what retention does.

Each schedule's last run (start time, result, snapshot) is kept in ``HOME/schedules.json``,
written atomically after every run (a failed write is logged; the node goes on): a
schedule whose time passed while the node was off is due when the node comes back, once,
and a run that was cut by a stop or a crash (no result written) runs again.  A failed run
counts as the slot's run: it is tried again at the next slot, never in a loop.  The file
also lists the snapshots each schedule made (``schedule list`` counts them).  Snapshots
made before tags existed carry no tag; for them this list is still what says which
schedule made them, so retention and ``gridnode snapshots`` read it as well as the tags.

Every start, finish and failure is logged at info or warning with the schedule's name.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from .control import Emit
from .fsutil import atomic_write
from .log import get_logger
from .logic.packing import ErasureParams
from .logic.retention import KeepPolicy, apply_policy
from .logic.tags import schedule_tag
from .schedules import Schedule, exclude_lines, next_run

__all__ = ["STATE_NAME", "ScheduleState", "Scheduler", "Submit"]

_log = get_logger(actor="scheduler")

#: A control method run as the CLI would: (method, params, emit) -> its JSON result.
Submit = Callable[[str, dict[str, Any], Emit], Awaitable[Any]]

#: The per-schedule record of runs, in the node's home.
STATE_NAME: Final = "schedules.json"
STATE_VERSION: Final = 1
#: The longest sleep between looks at the wall clock: a laptop that slept through a
#: schedule's time, or a clock set forward, is noticed within a minute.
MAX_NAP_S: Final = 60.0
#: How often the start-up wait looks at the membership.
MEMBER_POLL_S: Final = 0.5


@attrs.define
class ScheduleState:
    """What the node remembers of one schedule between runs (and restarts)."""

    #: When the last run started (unix seconds); the next-run rule counts from it.
    last_run: float | None = None
    #: ``ok``, ``incomplete`` (done, but some entries could not be read) or ``failed``.
    last_result: str | None = None
    last_error: str | None = None
    last_snapshot: str | None = None
    last_finished: float | None = None
    #: The snapshots this schedule made that still exist, oldest first.  Its ``keep``
    #: policy applies to these and to the snapshots tagged ``schedule:NAME``: the list is
    #: what marks the untagged snapshots made before tags existed.
    snapshots: list[str] = attrs.field(factory=list)
    forgotten: int = 0

    @classmethod
    def from_json(cls, raw: Any) -> ScheduleState:
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        known = {field.name for field in attrs.fields(cls)}
        state = cls(**{k: v for k, v in raw.items() if k in known})
        if not isinstance(state.snapshots, list):
            raise ValueError("snapshots is not a list")
        return state


def _noop_emit() -> Emit:
    async def emit(event: dict[str, Any]) -> None:
        """Progress of a scheduled job has no client to draw it; the log has the result."""

    return emit


#: Runs a blocking call off the event loop and returns its result.
Offload = Callable[[Callable[[], Any]], Awaitable[Any]]


async def _in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


class Scheduler:
    """Runs a node's schedules; built and started by ``gridnode.node``."""

    def __init__(
        self,
        *,
        schedules: Sequence[Schedule],
        home: Path,
        submit: Submit,
        default_redundancy: str,
        alive_members: Callable[[], int],
        stopping: Callable[[], bool],
        settle_s: float,
        clock: Callable[[], float] = time.time,
        offload: Offload | None = None,
    ) -> None:
        """``offload`` runs blocking file work (default: a worker thread; a test on
        virtual time runs it inline, so time cannot jump while a thread works).
        ``alive_members``: how many members the node sees alive; a run due at start-up
        waits (at most ``settle_s``) until there are enough for its redundancy, since a
        node that just started has not met the grid yet.  ``stopping``: the node is
        shutting down; no run starts then."""
        self.schedules = tuple(schedules)
        self.path = home / STATE_NAME
        self.submit = submit
        self.default_redundancy = default_redundancy
        self.alive_members = alive_members
        self.stopping = stopping
        self.settle_s = settle_s
        self.clock = clock
        self.offload: Offload = offload or _in_thread
        self.states: dict[str, ScheduleState] = self._load()
        #: The schedule running now (None: none).
        self.running: str | None = None
        self._emit = _noop_emit()
        self._started_at: float | None = None

    # --- the record of runs ----------------------------------------------------------------

    def _load(self) -> dict[str, ScheduleState]:
        """The file as the last run left it; a damaged file is set aside, not fatal: the
        schedules then run as if new (soon), which is the safe side for a backup."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict) or not isinstance(raw.get("schedules"), dict):
                raise ValueError("no 'schedules' object")
            return {
                str(name): ScheduleState.from_json(entry)
                for name, entry in raw["schedules"].items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as exc:
            _log.warning("schedule_state_unreadable", path=str(self.path), error=str(exc))
            return {}

    async def _save(self) -> None:
        """Serialised here, in the node's thread (the states change only there), and
        written atomically in a worker thread (an fsync must not stall the node)."""
        data = {
            "version": STATE_VERSION,
            "schedules": {name: attrs.asdict(state) for name, state in self.states.items()},
        }
        text = json.dumps(data, indent=1, sort_keys=True).encode()
        try:
            await self.offload(lambda: atomic_write(self.path, text, mode=0o600))
        except OSError as exc:  # a full disk must not stop the node; the runs go on
            _log.warning("schedule_state_not_saved", path=str(self.path), error=_reason(exc))

    def state(self, name: str) -> ScheduleState:
        return self.states.setdefault(name, ScheduleState())

    def next_run(self, schedule: Schedule, now: float | None = None) -> float:
        return next_run(
            schedule,
            now=self.clock() if now is None else now,
            last_run=self.state(schedule.name).last_run,
        )

    # --- what the control methods show -----------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """``gridnode schedule list --json``: one object per configured schedule."""
        now = self.clock()
        out = []
        for schedule in self.schedules:
            state = self.state(schedule.name)
            out.append(
                {
                    "name": schedule.name,
                    "paths": list(schedule.paths),
                    "every": schedule.every or None,
                    "at": schedule.at or None,
                    "keep": dict(schedule.keep),
                    "next_run": self.next_run(schedule, now),
                    "running": self.running == schedule.name,
                    "last_run": state.last_run,
                    "last_finished": state.last_finished,
                    "last_result": state.last_result,
                    "last_error": state.last_error,
                    "last_snapshot": state.last_snapshot,
                    "snapshots": len(state.snapshots),
                    "forgotten": state.forgotten,
                }
            )
        return out

    def snapshot_schedules(self) -> dict[str, str]:
        """Snapshot id -> the name of the schedule that made it."""
        return {sid: name for name, state in self.states.items() for sid in state.snapshots}

    # --- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._started_at = trio.current_time()
        task_status.started()
        if not self.schedules:
            return
        for schedule in self.schedules:
            _log.info(
                "schedule_loaded",
                schedule=schedule.name,
                every=schedule.every or None,
                at=schedule.at or None,
                next_run=round(self.next_run(schedule), 3),
            )
        while True:  # until the node's nursery is cancelled
            now = self.clock()
            schedule = min(self.schedules, key=lambda s: self.next_run(s, now))
            wait = self.next_run(schedule, now) - now
            if wait > 0:
                await trio.sleep(min(wait, MAX_NAP_S))
                continue
            if self.stopping():
                await trio.sleep_forever()  # the node cancels us
            await self._wait_for_members(schedule)
            await self.run_schedule(schedule)

    def _needed(self, schedule: Schedule) -> int:
        try:
            return ErasureParams.parse(schedule.redundancy or self.default_redundancy).n
        except ValueError:
            return 1  # checked when the config was read; the backup reports it if not

    async def _wait_for_members(self, schedule: Schedule) -> None:
        """Just after start-up, give gossip ``settle_s`` to find enough members."""
        assert self._started_at is not None
        needed = self._needed(schedule)
        with trio.move_on_at(self._started_at + self.settle_s):
            while True:  # polled: the membership has no event for "this many alive"
                if self.alive_members() >= needed:
                    return
                await trio.sleep(MEMBER_POLL_S)

    def backup_params(self, schedule: Schedule) -> dict[str, Any]:
        """The control ``backup`` parameters ``gridnode backup`` would send for it; the
        exclude files are read now, at each run, as the CLI reads them at each backup."""
        excludes = list(schedule.exclude)
        for path in schedule.exclude_file:
            excludes += exclude_lines(Path(path).expanduser().read_text(encoding="utf-8"))
        params: dict[str, Any] = {
            "paths": [os.path.abspath(os.path.expanduser(p)) for p in schedule.paths],
            "excludes": excludes,
            "one_file_system": schedule.one_file_system,
            "tags": [schedule_tag(schedule.name)],
        }
        for key in ("redundancy", "backup_proximity", "packet_proximity"):
            if value := getattr(schedule, key):
                params[key] = value
        if schedule.distinct:
            params["distinct"] = list(schedule.distinct)
        return params

    async def run_schedule(self, schedule: Schedule) -> None:
        """One run: the backup, its record, then retention.  A failure is recorded and
        logged, never raised: the other schedules go on."""
        state = self.state(schedule.name)
        started = self.clock()
        self.running = schedule.name
        _log.info("schedule_started", schedule=schedule.name, paths=list(schedule.paths))
        try:
            params = await self.offload(functools.partial(self.backup_params, schedule))
            result = await self.submit("backup", params, self._emit)
        except Exception as exc:  # recorded and logged, never raised
            self.running = None
            reason = _reason(exc)
            state.last_run, state.last_finished = started, self.clock()
            state.last_result, state.last_error = "failed", reason
            await self._save()
            _log.warning(
                "schedule_failed",
                schedule=schedule.name,
                error=reason,
                next_run=round(self.next_run(schedule), 3),
            )
            return
        snapshot_id = str(result["snapshot_id"])
        skipped = int(result.get("skipped") or 0)
        state.last_run, state.last_finished = started, self.clock()
        state.last_result = "incomplete" if skipped else "ok"
        state.last_error = f"{skipped} entries could not be read" if skipped else None
        state.last_snapshot = snapshot_id
        state.snapshots.append(snapshot_id)
        await self._save()
        forgotten: list[str] = []
        try:
            if schedule.keep:
                forgotten = await self.apply_retention(schedule)
        except Exception as exc:  # recorded and logged, never raised
            state.last_error = f"retention: {_reason(exc)}"
            _log.warning("schedule_retention_failed", schedule=schedule.name, error=_reason(exc))
        finally:
            self.running = None
            await self._save()
        _log.info(
            "schedule_finished",
            schedule=schedule.name,
            snapshot=snapshot_id,
            result=state.last_result,
            files=result.get("files"),
            skipped=skipped,
            forgotten=len(forgotten),
            seconds=round(state.last_finished - started, 3),
            next_run=round(self.next_run(schedule), 3),
        )

    async def apply_retention(self, schedule: Schedule) -> list[str]:
        """Forget what the schedule's ``keep`` policy does not keep, among the complete
        snapshots this schedule made: those tagged ``schedule:NAME``, and those the state
        file lists (made before tags existed); grouped by their paths, as ``gridnode
        forget`` groups.  Returns the ids forgotten."""
        state = self.state(schedule.name)
        tag = schedule_tag(schedule.name)
        rows: list[dict[str, Any]] = await self.submit("snapshots", {}, self._emit)
        present = {row["snapshot_id"] for row in rows}
        state.snapshots = [sid for sid in state.snapshots if sid in present]
        listed = set(state.snapshots)
        candidates = [
            row
            for row in rows
            if row["complete"] and (tag in row.get("tags", ()) or row["snapshot_id"] in listed)
        ]
        _, doomed, _ = apply_policy(
            (
                (row["snapshot_id"], row["finished"] or row["created"], tuple(row["roots"]))
                for row in candidates
            ),
            KeepPolicy(**schedule.keep_policy()),
        )
        for snapshot_id in doomed:
            await self.submit("forget", {"snapshot": snapshot_id}, self._emit)
            if snapshot_id in state.snapshots:
                state.snapshots.remove(snapshot_id)
            state.forgotten += 1
            _log.info("schedule_forgot", schedule=schedule.name, snapshot=snapshot_id)
        return doomed


def _reason(exc: BaseException) -> str:
    """One line for the log and ``schedule list``."""
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _reason(exc.exceptions[0])
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename:
        text = f"{exc.strerror or exc}: {exc.filename}"
    return text[:500]
