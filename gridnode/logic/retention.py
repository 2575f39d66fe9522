"""Which snapshots a retention policy keeps: ``forget --keep-daily 7 --keep-weekly 4``.

The rules are restic's, so its users can carry their policies over unchanged:

- snapshots are considered per group (here: the same backed-up roots), newest first;
- ``keep_last N`` keeps the N newest;
- ``keep_hourly/daily/weekly/monthly/yearly N`` keeps, for each of the N most recent
  hours (days, ISO weeks, months, years) that have a snapshot, the newest snapshot of
  that period;
- ``keep_within S`` keeps every snapshot taken less than S seconds before the group's
  newest one;
- a snapshot kept by any rule is kept; the rest are forgotten.

Periods are read in the local time zone given (``tz``; the node's by default), as a
person thinks of "the backup of Tuesday".  Pure and deterministic: no clock is read, so a
policy applied twice forgets nothing the second time, which a test checks.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Final, TypeVar

import attrs

__all__ = ["KeepPolicy", "RetentionError", "apply_policy"]

K = TypeVar("K", bound=Hashable)

_BUCKETS: Final[tuple[tuple[str, Callable[[datetime.datetime], Hashable]], ...]] = (
    ("keep_hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("keep_daily", lambda t: (t.year, t.month, t.day)),
    ("keep_weekly", lambda t: t.isocalendar()[:2]),
    ("keep_monthly", lambda t: (t.year, t.month)),
    ("keep_yearly", lambda t: t.year),
)


class RetentionError(ValueError):
    pass


def _count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RetentionError(f"{attribute.name.replace('_', '-')} must be a whole number >= 0")


@attrs.frozen
class KeepPolicy:
    keep_last: int = attrs.field(default=0, validator=_count)
    keep_hourly: int = attrs.field(default=0, validator=_count)
    keep_daily: int = attrs.field(default=0, validator=_count)
    keep_weekly: int = attrs.field(default=0, validator=_count)
    keep_monthly: int = attrs.field(default=0, validator=_count)
    keep_yearly: int = attrs.field(default=0, validator=_count)
    keep_within_s: int = attrs.field(default=0, validator=_count)

    @property
    def empty(self) -> bool:
        """A policy that keeps nothing would forget everything: refused by callers."""
        return not any(attrs.astuple(self))

    def to_json(self) -> dict[str, int]:
        return {k: v for k, v in attrs.asdict(self).items() if v}


def apply_policy(
    snapshots: Iterable[tuple[K, float, Hashable]],
    policy: KeepPolicy,
    *,
    tz: datetime.tzinfo | None = None,
) -> tuple[list[K], list[K], dict[K, list[str]]]:
    """``snapshots``: (id, time in unix seconds, group).  Returns the ids kept, the ids
    to forget (each newest first) and, for each kept id, the rules that keep it."""
    if policy.empty:
        raise RetentionError("a policy must keep something (give at least one --keep-*)")
    groups: dict[Hashable, list[tuple[K, float]]] = {}
    for snapshot_id, when, group in snapshots:
        groups.setdefault(group, []).append((snapshot_id, when))
    reasons: dict[K, list[str]] = {}
    order: list[tuple[float, K]] = []
    for members in groups.values():
        members.sort(key=lambda item: item[1], reverse=True)
        order += [(when, sid) for sid, when in members]
        _keep_group(members, policy, tz, reasons)
    order.sort(key=lambda item: item[0], reverse=True)
    kept = [sid for _, sid in order if sid in reasons]
    forgotten = [sid for _, sid in order if sid not in reasons]
    return kept, forgotten, reasons


def _keep_group(
    members: Sequence[tuple[K, float]],
    policy: KeepPolicy,
    tz: datetime.tzinfo | None,
    reasons: dict[K, list[str]],
) -> None:
    """``members`` newest first."""
    for sid, _ in members[: policy.keep_last]:
        reasons.setdefault(sid, []).append("last")
    if policy.keep_within_s and members:
        newest = members[0][1]
        for sid, when in members:
            if newest - when < policy.keep_within_s:
                reasons.setdefault(sid, []).append("within")
    for rule, bucket_of in _BUCKETS:
        wanted: int = getattr(policy, rule)
        seen: set[Hashable] = set()
        for sid, when in members:
            if len(seen) >= wanted:
                break
            bucket = bucket_of(datetime.datetime.fromtimestamp(when, tz=tz))
            if bucket not in seen:
                seen.add(bucket)
                reasons.setdefault(sid, []).append(rule.removeprefix("keep_"))
