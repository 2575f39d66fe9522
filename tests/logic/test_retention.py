"""Retention policies (restic's rules): hand-checked cases and properties."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridnode.logic.retention import KeepPolicy, RetentionError, apply_policy

UTC = datetime.UTC
DAY = 86400
T0 = int(datetime.datetime(2026, 1, 5, 12, tzinfo=UTC).timestamp())  # a Monday, noon


def snaps(times: list[float], group: str = "g") -> list[tuple[str, float, str]]:
    return [(f"s{i}", t, group) for i, t in enumerate(times)]


def test_keep_daily_keeps_the_newest_of_each_of_the_last_days() -> None:
    # Two snapshots a day for 10 days (06:00 and 18:00).
    times = [T0 + d * DAY + h * 3600 for d in range(10) for h in (-6, 6)]
    kept, forgotten, why = apply_policy(snaps(times), KeepPolicy(keep_daily=3), tz=UTC)
    assert kept == ["s19", "s17", "s15"]  # the 18:00 of the last three days
    assert len(forgotten) == 17 and all(why[s] == ["daily"] for s in kept)


def test_rules_add_up_and_each_kept_snapshot_says_why() -> None:
    times = [T0 + d * DAY for d in range(60)]  # one a day for 60 days
    policy = KeepPolicy(keep_last=2, keep_daily=7, keep_weekly=4, keep_monthly=3)
    kept, _, why = apply_policy(snaps(times), policy, tz=UTC)
    assert kept[:2] == ["s59", "s58"] and why["s59"] == ["last", "daily", "weekly", "monthly"]
    assert len([s for s in kept if "daily" in why[s]]) == 7
    weekly = [s for s in kept if "weekly" in why[s]]
    assert len(weekly) == 4  # the newest of each of the last 4 ISO weeks with a snapshot
    assert sum("monthly" in why[s] for s in kept) == 3


def test_groups_are_kept_apart_and_keep_within_counts_from_the_newest() -> None:
    home = snaps([T0, T0 + 100, T0 + 200], "home")
    etc = [(f"e{i}", T0 - 10 * DAY + i, "etc") for i in range(3)]
    kept, _, _ = apply_policy(home + etc, KeepPolicy(keep_last=1), tz=UTC)
    assert set(kept) == {"s2", "e2"}  # the newest of each group, however old
    kept, _, _ = apply_policy(home + etc, KeepPolicy(keep_within_s=150), tz=UTC)
    assert set(kept) == {"s1", "s2", "e0", "e1", "e2"}


def test_a_policy_that_keeps_nothing_is_refused() -> None:
    with pytest.raises(RetentionError, match="must keep something"):
        apply_policy(snaps([T0]), KeepPolicy())
    with pytest.raises(RetentionError, match="keep-daily"):
        KeepPolicy(keep_daily=-1)


policies = st.builds(
    KeepPolicy,
    keep_last=st.integers(0, 5),
    keep_hourly=st.integers(0, 5),
    keep_daily=st.integers(0, 8),
    keep_weekly=st.integers(0, 5),
    keep_monthly=st.integers(0, 4),
    keep_yearly=st.integers(0, 2),
    keep_within_s=st.sampled_from([0, 3600, DAY, 30 * DAY]),
).filter(lambda p: not p.empty)
histories = st.lists(st.integers(0, 400 * DAY), min_size=1, max_size=40, unique=True)


@settings(max_examples=200, deadline=None)
@given(histories, policies)
def test_the_newest_is_always_kept_and_a_second_pass_forgets_nothing(
    offsets: list[int], policy: KeepPolicy
) -> None:
    history = snaps([T0 + o for o in offsets])
    kept, forgotten, _ = apply_policy(history, policy, tz=UTC)
    newest = max(history, key=lambda s: s[1])[0]
    assert newest in kept
    assert set(kept) | set(forgotten) == {s for s, _, _ in history}
    assert not set(kept) & set(forgotten)
    again = [s for s in history if s[0] in kept]
    assert apply_policy(again, policy, tz=UTC)[1] == []  # idempotent
    if policy.keep_last:
        by_time = sorted(history, key=lambda s: s[1], reverse=True)
        assert {s for s, _, _ in by_time[: policy.keep_last]} <= set(kept)


@settings(max_examples=100, deadline=None)
@given(histories, policies, st.integers(1, 3))
def test_a_bigger_policy_never_keeps_less(
    offsets: list[int], policy: KeepPolicy, more: int
) -> None:
    history = snaps([T0 + o for o in offsets])
    bigger = KeepPolicy(
        keep_last=policy.keep_last + more,
        keep_hourly=policy.keep_hourly,
        keep_daily=policy.keep_daily + more,
        keep_weekly=policy.keep_weekly,
        keep_monthly=policy.keep_monthly + more,
        keep_yearly=policy.keep_yearly,
        keep_within_s=policy.keep_within_s,
    )
    assert set(apply_policy(history, policy, tz=UTC)[0]) <= set(
        apply_policy(history, bigger, tz=UTC)[0]
    )
