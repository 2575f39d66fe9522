"""Schedules (issue 12, unattended backups): the ``[[schedule]]`` parser's errors name the
schedule and the key, the next-run rule (interval, daily time, a slot missed while the
node was off runs once), and the scheduler's runs, record and retention against a fake
node (the real one: tests/integration/test_schedules.py)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from gridnode.config import ConfigError, build_config
from gridnode.config_keys import check_settable
from gridnode.control import ControlError, Emit
from gridnode.scheduler import STATE_NAME, Scheduler
from gridnode.schedules import Schedule, exclude_lines, next_run, parse_schedules, previous_slot

GRID = {"grid_id": "00" * 16}
UTC = datetime.UTC
#: 2026-03-10 12:00:00 UTC, a Tuesday.
NOON = datetime.datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()


def _config(tmp_path: Path, *tables: dict[str, Any]) -> tuple[Schedule, ...]:
    return build_config(tmp_path, {**GRID, "schedule": list(tables)}).schedules


# --- parsing ------------------------------------------------------------------------------------


def test_a_schedule_is_read_with_its_options_and_written_back(tmp_path: Path) -> None:
    table = {
        "name": "home",
        "paths": ["~/Documents", "/etc"],
        "exclude": ["*.tmp"],
        "exclude_file": "~/.excludes",
        "one_file_system": True,
        "every": "6h",
        "redundancy": "2/3",
        "backup_proximity": "10km:3000km",
        "keep": {"daily": 7, "last": 3, "within": "2d"},
    }
    schedule, second = _config(tmp_path, table, {"name": "etc", "paths": ["/etc"], "at": "02:30"})
    assert second.name == "etc"
    assert schedule.paths == ("~/Documents", "/etc") and schedule.every_s == 6 * 3600
    assert schedule.exclude_file == ("~/.excludes",)
    assert schedule.keep_policy() == {"keep_last": 3, "keep_daily": 7, "keep_within_s": 172800}
    config = build_config(tmp_path, {**GRID, "schedule": [table]})
    written = config.to_values()["schedule"][0]
    assert written["keep"] == {"last": 3, "daily": 7, "within": "2d"}
    config.save()
    assert build_config(tmp_path, {**GRID, "schedule": [written]}) == config
    (daily,) = _config(tmp_path, {"name": "etc", "paths": ["/etc"], "at": "02:30"})
    assert daily.at_time == (2, 30) and daily.every_s is None and daily.keep == ()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"paths": ["/a"], "every": "1h"}, "schedule #1 key 'name': required"),
        ({"name": "a b", "paths": ["/a"], "every": "1h"}, "schedule #1 key 'name'"),
        ({"name": "h", "every": "1h"}, "schedule 'h' key 'paths': required"),
        ({"name": "h", "paths": [], "every": "1h"}, "schedule 'h' key 'paths': give at least"),
        ({"name": "h", "paths": ["rel"], "every": "1h"}, "schedule 'h' key 'paths': 'rel' must"),
        ({"name": "h", "paths": ["/a"]}, "schedule 'h': give one of 'every'"),
        ({"name": "h", "paths": ["/a"], "every": "1h", "at": "02:00"}, "give one of 'every'"),
        ({"name": "h", "paths": ["/a"], "every": "soon"}, "schedule 'h' key 'every': 'soon'"),
        ({"name": "h", "paths": ["/a"], "every": "0s"}, "schedule 'h' key 'every': must be"),
        ({"name": "h", "paths": ["/a"], "at": "25:00"}, "schedule 'h' key 'at': expected HH:MM"),
        ({"name": "h", "paths": ["/a"], "every": "1h", "tag": "x"}, "unknown key(s) tag"),
        ({"name": "h", "paths": ["/a"], "every": "1h", "keep": {"lst": 1}}, "'keep': unknown"),
        ({"name": "h", "paths": ["/a"], "every": "1h", "keep": {"last": -1}}, "'keep.last'"),
        ({"name": "h", "paths": ["/a"], "every": "1h", "keep": {"last": 0}}, "keeps nothing"),
        ({"name": "h", "paths": ["/a"], "every": "1h", "keep": {"within": "x"}}, "keep.within"),
        ({"name": "h", "paths": ["/a"], "every": "1h", "redundancy": "9/3"}, "'redundancy'"),
        ({"name": "h", "paths": ["/a"], "every": "1h", "packet_proximity": "x"}, "'packet_prox"),
        ({"name": "h", "paths": ["/a"], "every": "1h", "one_file_system": "y"}, "one_file_sys"),
        ({"name": "h", "paths": ["/a"], "every": "1h", "exclude_file": ["x"]}, "'exclude_file'"),
    ],
)
def test_a_bad_schedule_is_refused_naming_it_and_the_key(
    tmp_path: Path, table: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match="config key 'schedule': ") as caught:
        _config(tmp_path, table)
    assert message in str(caught.value)


def test_names_are_unique_and_schedules_are_not_settable(tmp_path: Path) -> None:
    twice = {"name": "h", "paths": ["/a"], "every": "1h"}
    with pytest.raises(ConfigError, match="schedule 'h': the name is used twice"):
        _config(tmp_path, twice, twice)
    with pytest.raises(ConfigError, match=r"--set schedule: schedules are tables"):
        check_settable("schedule")
    assert parse_schedules({"name": "one", "paths": ["/a"], "at": "1:05"})[0].at_time == (1, 5)
    assert build_config(tmp_path, GRID).schedules == ()
    assert exclude_lines("# c\n*.tmp\n\n  cache/ \n") == ["*.tmp", "cache/"]


# --- when ---------------------------------------------------------------------------------------


def test_an_interval_runs_at_once_then_every_interval_and_once_after_a_long_stop() -> None:
    (schedule,) = parse_schedules([{"name": "h", "paths": ["/a"], "every": "6h"}])
    assert next_run(schedule, now=NOON, last_run=None) == NOON  # never ran: due now
    assert next_run(schedule, now=NOON, last_run=NOON - 3600) == NOON + 5 * 3600
    # The node was off for three days: due now, once; after that run, 6 h later.
    assert next_run(schedule, now=NOON, last_run=NOON - 3 * 86400) == NOON
    assert next_run(schedule, now=NOON + 60, last_run=NOON) == NOON + 6 * 3600


def test_a_daily_time_runs_at_it_and_once_after_missing_it() -> None:
    (schedule,) = parse_schedules([{"name": "h", "paths": ["/a"], "at": "02:30"}])
    tomorrow_0230 = datetime.datetime(2026, 3, 11, 2, 30, tzinfo=UTC).timestamp()
    today_0230 = tomorrow_0230 - 86400
    assert previous_slot((2, 30), NOON, UTC) == today_0230
    # Never ran: at the next 02:30, not now.
    assert next_run(schedule, now=NOON, last_run=None, tz=UTC) == tomorrow_0230
    # Ran at today's 02:30: tomorrow's.
    assert next_run(schedule, now=NOON, last_run=today_0230 + 1, tz=UTC) == tomorrow_0230
    # Last ran yesterday at 02:30 and the node was off at 02:30 today: due now, once.
    assert next_run(schedule, now=NOON, last_run=today_0230 - 86400, tz=UTC) == NOON
    # Off for a week: still one run now, then the next 02:30.
    assert next_run(schedule, now=NOON, last_run=today_0230 - 7 * 86400, tz=UTC) == NOON
    assert next_run(schedule, now=NOON + 5, last_run=NOON, tz=UTC) == tomorrow_0230
    # Just before 02:30, the slot of today is still ahead.
    early = today_0230 - 60
    assert next_run(schedule, now=early, last_run=today_0230 - 86400, tz=UTC) == today_0230


# --- the scheduler against a fake node ----------------------------------------------------------


@pytest.fixture
def jump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps as soon as every task waits: the schedulers built here do
    their file work inline (``_inline``), so no worker thread runs while time jumps (a
    thread's fsync once let time leap past a run on a loaded machine)."""
    return trio.testing.MockClock(autojump_threshold=0)


class FakeNode:
    """The control methods the scheduler submits: backup, snapshots, forget."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.snapshots: list[dict[str, Any]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail_backups = False
        self.made = 0

    async def submit(self, method: str, params: dict[str, Any], emit: Emit) -> Any:
        self.calls.append((method, params))
        await trio.sleep(0.1)
        if method == "backup":
            if self.fail_backups:
                raise ControlError("failed", "not enough members")
            self.made += 1
            sid = f"{self.made:016x}"
            now = self.clock()
            row = {"snapshot_id": sid, "created": now, "finished": now, "complete": True}
            self.snapshots.append({**row, "roots": params["paths"], "tags": params["tags"]})
            return {"event": "result", "snapshot_id": sid, "skipped": 0, "files": 1}
        if method == "snapshots":
            return list(self.snapshots)
        if method == "forget":
            self.snapshots = [s for s in self.snapshots if s["snapshot_id"] != params["snapshot"]]
            return {"event": "result"}
        raise AssertionError(method)


def _scheduler(tmp_path: Path, node: FakeNode, *tables: dict[str, Any]) -> Scheduler:
    return Scheduler(
        schedules=parse_schedules(list(tables)),
        home=tmp_path,
        submit=node.submit,
        default_redundancy="2/3",
        alive_members=lambda: 5,
        stopping=lambda: False,
        settle_s=10.0,
        clock=node.clock,
        offload=_inline,
    )


async def _inline(fn: Callable[[], Any]) -> Any:
    return fn()


async def test_runs_every_interval_applies_retention_and_remembers_across_restarts(
    tmp_path: Path, jump_clock: trio.testing.MockClock
) -> None:
    base = NOON

    def clock() -> float:
        return base + trio.current_time()

    node = FakeNode(clock)
    table = {"name": "docs", "paths": ["/data"], "every": "10s", "keep": {"last": 2}}
    other = {"name": "etc", "paths": ["/etc"], "every": "1d"}
    scheduler = _scheduler(tmp_path, node, table, other)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        await trio.sleep(45)  # runs at 0, 10, 20, 30, 40 (plus its own 0.1 s each)
        nursery.cancel_scope.cancel()
    backups = [p for m, p in node.calls if m == "backup"]
    assert [p["paths"] for p in backups].count(["/data"]) == 5
    assert [p["paths"] for p in backups].count(["/etc"]) == 1  # not retention's business
    assert {p["paths"][0]: p["tags"] for p in backups} == {
        "/data": ["schedule:docs"],
        "/etc": ["schedule:etc"],
    }
    docs = [s["snapshot_id"] for s in node.snapshots if s["roots"] == ["/data"]]
    assert len(docs) == 2 and len(node.snapshots) == 3  # keep last 2 of its own only
    rows = {r["name"]: r for r in scheduler.describe()}
    assert rows["docs"]["last_result"] == "ok" and rows["docs"]["last_snapshot"] == docs[-1]
    assert rows["docs"]["every"] == "10s" and rows["docs"]["at"] is None
    assert rows["docs"]["forgotten"] == 3
    assert set(scheduler.snapshot_schedules().values()) == {"docs", "etc"}
    on_disk = json.loads((tmp_path / STATE_NAME).read_text())
    assert on_disk["schedules"]["docs"]["snapshots"] == docs

    # The node stops for an hour: back, the overdue schedule runs once at once.
    last = rows["docs"]["last_run"]
    base += 3600
    again = _scheduler(tmp_path, node, table, other)
    assert again.state("docs").last_run == last
    assert again.next_run(again.schedules[0]) == clock()
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    backups = [p for m, p in node.calls if m == "backup"]
    assert [p["paths"] for p in backups].count(["/data"]) == 6  # once, not 360 times


async def test_a_failed_run_waits_for_the_next_slot(
    tmp_path: Path, jump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode(lambda: NOON + trio.current_time())
    node.fail_backups = True
    excludes = tmp_path / "excludes"
    excludes.write_text("# none\n*.iso\n")
    table = {"name": "h", "paths": ["/a"], "every": "1h", "exclude_file": str(excludes)}
    scheduler = _scheduler(tmp_path, node, table)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        await trio.sleep(600)
        nursery.cancel_scope.cancel()
    assert len(node.calls) == 1  # not retried in a loop
    assert node.calls[0][1]["excludes"] == ["*.iso"]
    (row,) = scheduler.describe()
    assert row["last_result"] == "failed" and row["last_error"] == "not enough members"
    assert row["next_run"] == pytest.approx(row["last_run"] + 3600)


async def test_a_run_due_at_start_waits_for_members(
    tmp_path: Path, jump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode(lambda: NOON + trio.current_time())
    alive = [0]
    scheduler = Scheduler(
        schedules=parse_schedules([{"name": "h", "paths": ["/a"], "every": "1h"}]),
        home=tmp_path,
        submit=node.submit,
        default_redundancy="2/3",
        alive_members=lambda: alive[0],
        stopping=lambda: False,
        settle_s=30.0,
        clock=node.clock,
        offload=_inline,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        await trio.sleep(5)
        assert node.calls == []  # no members yet
        alive[0] = 3
        await trio.sleep(2)
        assert [m for m, _ in node.calls] == ["backup"]
        nursery.cancel_scope.cancel()


async def test_retention_takes_tagged_snapshots_and_the_untagged_ones_of_an_old_state_file(
    tmp_path: Path, jump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode(lambda: NOON + trio.current_time())
    old = {"snapshot_id": "old", "created": NOON - 7200, "finished": NOON - 7200}
    lost = {"snapshot_id": "lost", "created": NOON - 3600, "finished": NOON - 3600}
    typed = {"snapshot_id": "typed", "created": NOON - 60, "finished": NOON - 60}
    node.snapshots = [
        # Made by this schedule before tags existed: only the state file says so.
        {**old, "complete": True, "roots": ["/a"], "tags": []},
        # Tagged, but the state file that listed it was lost.
        {**lost, "complete": True, "roots": ["/a"], "tags": ["schedule:h"]},
        # A backup someone typed, of the same paths: not this schedule's.
        {**typed, "complete": True, "roots": ["/a"], "tags": ["h"]},
    ]
    state = {"h": {"last_run": NOON - 7200, "snapshots": ["old"]}}
    (tmp_path / STATE_NAME).write_text(json.dumps({"version": 1, "schedules": state}))
    table = {"name": "h", "paths": ["/a"], "every": "1h", "keep": {"last": 1}}
    scheduler = _scheduler(tmp_path, node, table)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    forgotten = sorted(p["snapshot"] for m, p in node.calls if m == "forget")
    assert forgotten == ["lost", "old"]
    assert {s["snapshot_id"] for s in node.snapshots} == {"typed", f"{1:016x}"}
    assert scheduler.state("h").snapshots == [f"{1:016x}"]
