"""Backup schedules as ``gridnode.toml`` declares them, and when each one runs next.

A schedule is one ``[[schedule]]`` table::

    [[schedule]]
    name = "home"                 # unique; shown by `gridnode snapshots` on its snapshots
    paths = ["/home/me"]
    exclude = ["*.tmp"]
    every = "6h"                  # an interval, or
    # at = "02:30"                # a daily local time (one of the two)
    keep = { last = 7, daily = 7, weekly = 4 }

The node runs them itself (``gridnode.scheduler``).  This module is the pure part: the
parser behind the ``schedule`` config key (errors name the schedule and the key, like
every other config error) and the next-run rule.  ``gridnode.config_keys`` imports it,
and the CLI's parser imports that, so it stays on the standard library and
``gridnode.units``; the few checks that need the grid's logic (redundancy, distance
bands) are passed in by the caller.

The next-run rule is anacron's, so a node that was off does not lose a backup: a
schedule that never ran is due now (interval) or at its next time (daily); a schedule
whose slot passed while the node was off is due as soon as it comes back, once however
many slots it missed.  A run, failed or not, counts as the slot's run: a failure is tried
again at the next slot, never in a loop.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

from .errors import UserError
from .units import parse_duration

__all__ = [
    "KEEP_RULES",
    "SCHEDULE_FIELDS",
    "Schedule",
    "ScheduleError",
    "exclude_lines",
    "next_run",
    "parse_schedules",
    "previous_slot",
]

#: The retention rules a schedule's ``keep`` table may give (restic's, as ``gridnode
#: forget`` takes them); ``within`` is a duration, the others counts.
KEEP_RULES: Final = ("last", "hourly", "daily", "weekly", "monthly", "yearly", "within")

#: Every key of a ``[[schedule]]`` table, its type and help: the reference page
#: (``docs/CONFIG.md``) lists them from here.
SCHEDULE_FIELDS: Final = (
    ("name", "string", "unique name; required; shown on the schedule's snapshots"),
    ("paths", "list of paths", "what to back up (absolute, or starting with ~); required"),
    ("every", "duration", "an interval: 90s, 15m, 6h, 1d (this or `at`)"),
    ("at", "HH:MM", "a daily local time, 24-hour clock (this or `every`)"),
    ("exclude", "list of globs", "names or paths to skip, as `backup --exclude`"),
    ("exclude_file", "list of paths", "files of globs to skip, read at each run"),
    ("one_file_system", "boolean", "do not enter other file systems"),
    ("redundancy", "K/N", "erasure coding (default: the node's `redundancy`)"),
    ("backup_proximity", "MIN:MAX", "distance band source->targets (default: the node's)"),
    ("packet_proximity", "MIN:MAX", "distance band between targets (default: the node's)"),
    ("distinct", "list of labels", "labels whose values must all differ among targets"),
    (
        "keep",
        "table",
        f"retention after each successful run, of this schedule's snapshots only: "
        f"{', '.join(KEEP_RULES)} (e.g. {{ last = 7, daily = 7 }})",
    ),
)
_KNOWN: Final = frozenset(name for name, _, _ in SCHEDULE_FIELDS)
_AT_RE: Final = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: The shortest interval: a schedule is a backup, not a busy loop (tests use seconds).
MIN_EVERY_S: Final = 1.0
MAX_EVERY_S: Final = 366 * 86400.0


class ScheduleError(UserError, ValueError):
    """A schedule that cannot be used; the message names the schedule and the key."""


class Schedule(NamedTuple):
    """One validated ``[[schedule]]`` table.  Texts are kept as the file spells them
    (``every = "6h"``), so the writer gives back what the reader took."""

    name: str
    paths: tuple[str, ...]
    every: str = ""
    at: str = ""
    exclude: tuple[str, ...] = ()
    exclude_file: tuple[str, ...] = ()
    one_file_system: bool = False
    redundancy: str = ""
    backup_proximity: str = ""
    packet_proximity: str = ""
    distinct: tuple[str, ...] = ()
    #: (rule, value) pairs in ``KEEP_RULES`` order; ``within`` as its duration text.
    keep: tuple[tuple[str, int | str], ...] = ()

    @property
    def every_s(self) -> float | None:
        return parse_duration(self.every) if self.every else None

    @property
    def at_time(self) -> tuple[int, int] | None:
        if not self.at:
            return None
        match = _AT_RE.match(self.at)
        assert match is not None  # checked when parsed
        return int(match.group(1)), int(match.group(2))

    def keep_policy(self) -> dict[str, int]:
        """``keep`` as ``gridnode.logic.retention.KeepPolicy``'s keyword arguments."""
        policy: dict[str, int] = {}
        for rule, value in self.keep:
            if rule == "within":
                policy["keep_within_s"] = int(parse_duration(str(value)))
            else:
                policy[f"keep_{rule}"] = int(value)
        return policy

    def to_toml(self) -> dict[str, Any]:
        """The table as the config file holds it: the keys given, no defaults."""
        out: dict[str, Any] = {"name": self.name, "paths": list(self.paths)}
        for field in Schedule._fields[2:]:
            value = getattr(self, field)
            if not value:
                continue
            if field == "keep":
                out[field] = dict(value)
            else:
                out[field] = list(value) if isinstance(value, tuple) else value
        return out


def _strings(where: str, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ScheduleError(f"{where} key {key!r}: expected a list of strings")
    return tuple(value)


def _local_path(where: str, key: str, text: str) -> str:
    if not os.path.isabs(os.path.expanduser(text)):
        raise ScheduleError(
            f"{where} key {key!r}: {text!r} must be absolute (or start with ~): the node "
            "has no working directory of yours"
        )
    return text


def _keep(where: str, value: Any) -> tuple[tuple[str, int | str], ...]:
    if not isinstance(value, Mapping):
        raise ScheduleError(f"{where} key 'keep': expected a table such as {{ last = 7 }}")
    unknown = sorted(set(value) - set(KEEP_RULES))
    if unknown:
        raise ScheduleError(
            f"{where} key 'keep': unknown rule(s) {', '.join(unknown)} "
            f"(known: {', '.join(KEEP_RULES)})"
        )
    out: list[tuple[str, int | str]] = []
    for rule in KEEP_RULES:
        if rule not in value:
            continue
        raw = value[rule]
        if rule == "within":
            try:
                seconds = parse_duration(str(raw))
            except ValueError as exc:
                raise ScheduleError(f"{where} key 'keep.within': {exc}") from None
            if seconds < 1:
                raise ScheduleError(f"{where} key 'keep.within': must be at least 1s")
            out.append((rule, str(raw)))
        else:
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
                raise ScheduleError(f"{where} key 'keep.{rule}': expected a whole number >= 0")
            if raw:
                out.append((rule, raw))
    if not out:
        raise ScheduleError(
            f"{where} key 'keep': keeps nothing, so it would forget every snapshot of the "
            "schedule; give at least one rule above 0 (or leave `keep` out)"
        )
    return tuple(out)


def _one(index: int, table: Any, check: Callable[[str, str, str], str] | None) -> Schedule:
    where = f"schedule #{index + 1}"
    if not isinstance(table, Mapping):
        raise ScheduleError(f"{where}: expected a table ([[schedule]])")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ScheduleError(
            f"{where} key 'name': required, 1-64 letters, digits, '.', '_' or '-', got {name!r}"
        )
    where = f"schedule {name!r}"
    unknown = sorted(set(table) - _KNOWN)
    if unknown:
        raise ScheduleError(
            f"{where}: unknown key(s) {', '.join(unknown)} (docs/CONFIG.md lists them)"
        )
    if "paths" not in table:
        raise ScheduleError(f"{where} key 'paths': required (what to back up)")
    paths = _strings(where, "paths", table["paths"])
    if not paths:
        raise ScheduleError(f"{where} key 'paths': give at least one path")
    for path in paths:
        _local_path(where, "paths", path)
    every, at = table.get("every", ""), table.get("at", "")
    if bool(every) == bool(at):
        raise ScheduleError(
            f"{where}: give one of 'every' (an interval such as 6h) or 'at' (a daily time "
            "such as 02:30)"
        )
    if every:
        try:
            seconds = parse_duration(str(every))
        except ValueError as exc:
            raise ScheduleError(f"{where} key 'every': {exc}") from None
        if not MIN_EVERY_S <= seconds <= MAX_EVERY_S:
            raise ScheduleError(f"{where} key 'every': must be between 1s and 366d")
    if at and (not isinstance(at, str) or not _AT_RE.match(at)):
        raise ScheduleError(f"{where} key 'at': expected HH:MM (24-hour), got {at!r}")
    one_fs = table.get("one_file_system", False)
    if not isinstance(one_fs, bool):
        raise ScheduleError(f"{where} key 'one_file_system': expected true or false")
    rules: dict[str, str] = {}
    for key in ("redundancy", "backup_proximity", "packet_proximity"):
        raw = table.get(key, "")
        if not isinstance(raw, str):
            raise ScheduleError(f"{where} key {key!r}: expected a string")
        rules[key] = check(where, key, raw) if check is not None and raw else raw
    excludes = _strings(where, "exclude", table.get("exclude", []))
    exclude_files = _strings(where, "exclude_file", table.get("exclude_file", []))
    for path in exclude_files:
        _local_path(where, "exclude_file", path)
    return Schedule(
        name=name,
        paths=paths,
        every=str(every),
        at=str(at),
        exclude=excludes,
        exclude_file=exclude_files,
        one_file_system=one_fs,
        redundancy=rules["redundancy"],
        backup_proximity=rules["backup_proximity"],
        packet_proximity=rules["packet_proximity"],
        distinct=_strings(where, "distinct", table.get("distinct", [])),
        keep=_keep(where, table["keep"]) if "keep" in table else (),
    )


def parse_schedules(
    value: Any, *, check: Callable[[str, str, str], str] | None = None
) -> tuple[Schedule, ...]:
    """The ``schedule`` key's value (a list of tables) as Schedules, or ScheduleError
    naming the schedule and its key.  ``check(where, key, text)`` validates (and may
    normalise) ``redundancy`` and the proximity bands, which need the grid's logic."""
    if isinstance(value, Mapping):  # one [schedule] table instead of [[schedule]]
        value = [value]
    if not isinstance(value, list | tuple):
        raise ScheduleError("config key 'schedule': expected [[schedule]] tables")
    schedules = tuple(_one(i, table, check) for i, table in enumerate(value))
    seen: set[str] = set()
    for schedule in schedules:
        if schedule.name in seen:
            raise ScheduleError(f"schedule {schedule.name!r}: the name is used twice")
        seen.add(schedule.name)
    return schedules


def exclude_lines(text: str) -> list[str]:
    """An exclude file's globs: one per line; blank lines and ``#`` comments skipped
    (as ``backup --exclude-file`` reads them, and restic and borg)."""
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


# --- when -----------------------------------------------------------------------------------


def _at(day: datetime.date, hour: int, minute: int, tz: datetime.tzinfo | None) -> float:
    """Unix time of ``hour:minute`` on ``day`` in ``tz`` (None: the local zone).  A time
    that a DST change skips is read as the clock would be after it."""
    return datetime.datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz).timestamp()


def previous_slot(at: tuple[int, int], now: float, tz: datetime.tzinfo | None = None) -> float:
    """The latest daily ``at`` time at or before ``now``."""
    today = datetime.datetime.fromtimestamp(now, tz).date()
    slot = _at(today, *at, tz)
    if slot > now:
        slot = _at(today - datetime.timedelta(days=1), *at, tz)
    return slot


def _next_slot(at: tuple[int, int], now: float, tz: datetime.tzinfo | None) -> float:
    """The first daily ``at`` time after ``now``."""
    day = datetime.datetime.fromtimestamp(previous_slot(at, now, tz), tz).date()
    return _at(day + datetime.timedelta(days=1), *at, tz)


def next_run(
    schedule: Schedule,
    *,
    now: float,
    last_run: float | None,
    tz: datetime.tzinfo | None = None,
) -> float:
    """When ``schedule`` runs next (unix seconds; ``<= now`` means due now).

    ``last_run`` is when its last run started (None: never).  Interval: due at once if it
    never ran, else ``every`` after the last run; a run overdue because the node was off
    is due now, once.  Daily: the next ``at`` time if it never ran; due now if a slot
    passed since the last run (missed while off), else the next ``at`` time."""
    every = schedule.every_s
    if every is not None:
        if last_run is None:
            return now
        return max(now, last_run + every)
    at = schedule.at_time
    assert at is not None  # one of the two, checked when parsed
    if last_run is not None and last_run < previous_slot(at, now, tz) <= now:
        return now
    return _next_slot(at, now, tz)
