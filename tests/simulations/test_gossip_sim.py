"""Small runs of the gossip scale simulation: convergence, death detection, idle cost
and a soak with loss, updates and churn, all in bounds derived from the configuration."""

from __future__ import annotations

import json
import math

import attrs
import pytest

from gridnode.logic.swim import GossipConfig
from simulations.gossip_sim import SimConfig, main, simulate, soak


def _suspicion_max_s(config: GossipConfig, members: int) -> float:
    minimum = config.suspicion_mult * max(1.0, math.log10(members)) * config.probe_interval_s
    return config.suspicion_max_timeout_mult * minimum


@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_small_grid_converges_and_detects_a_death(loss: float) -> None:
    members = 60
    config = SimConfig(members=members, loss=loss, warmup_s=2.0, steady_window_s=3.0)
    gossip = config.gossip
    assert gossip.location_check == "enforce"  # latency follows the coordinates
    result = simulate(config)

    join = result["join"]
    assert join["members_knowing"] == join["of"] == members
    assert join["joiner_view_alive"] == members
    # Epidemic spread: a handful of gossip rounds, far below the anti-entropy interval.
    assert join["all_s"] <= 15 * gossip.gossip_interval_s

    death = result["death"]
    assert death["members_knowing"] == death["of"] == members
    # Some member probes the victim within one round-robin cycle, fails it within one
    # interval, and the suspicion lasts at most its maximum timeout.
    cycle = members * gossip.probe_interval_s
    bound = cycle + gossip.probe_interval_s + _suspicion_max_s(gossip, members + 1)
    assert death["crash_to_first_dead_s"] <= bound
    assert death["crash_to_first_suspect_s"] <= cycle + gossip.probe_interval_s
    assert death["first_dead_to_all_s"] <= 15 * gossip.gossip_interval_s
    assert death["first_suspect_to_all_suspect_s"] <= 15 * gossip.gossip_interval_s

    steady = result["steady"]
    by_kind = steady["messages_per_member_per_s_by_kind"]
    # One probe and one ack per member per probe interval; lost messages add the
    # relays' probes of indirect probing.
    if loss == 0:
        assert by_kind["gossip_probe"] == pytest.approx(1 / gossip.probe_interval_s, rel=0.05)
    else:
        assert 1 / gossip.probe_interval_s < by_kind["gossip_probe"] < 2 / gossip.probe_interval_s
        assert by_kind["gossip_probe_request"] > 0
    assert by_kind.get("gossip_probe_ack", 0) <= by_kind["gossip_probe"]
    assert steady["bytes_per_member_per_s"] > 0
    assert result["forged_records_dropped"] == 0
    assert result["false_deaths"] == 0
    # Latency follows the distance, so no honest member's location is implausible.
    assert result["implausible_locations"] == 0
    assert result["memory"]["measured"] and result["memory"]["peak_mb"] > 0


def test_idle_anti_entropy_is_by_digest_not_full_state() -> None:
    config = SimConfig(members=80, warmup_s=5.0, steady_window_s=2 * 30.0)
    result = simulate(attrs.evolve(config, measure_memory=False))
    by_kind = result["steady"]["bytes_per_member_per_s_by_kind"]
    assert "gossip_sync" not in by_kind and "gossip_sync_reply" not in by_kind
    # Every member sends one digest per sync interval: 8 bytes per bucket, 4 buckets
    # (80 members / 32 per bucket, rounded up to a power of two), plus the envelope.
    digests = result["steady"]["messages_per_member_per_s_by_kind"]["gossip_digest"]
    assert digests == pytest.approx(1 / config.gossip.sync_interval_s, rel=0.3)
    assert by_kind["gossip_digest"] < digests * (4 * 8 + 64)
    assert result["idle_bytes_per_s_per_member"] == result["steady"]["bytes_per_member_per_s"]


def test_soak_with_loss_updates_and_churn_counts_what_went_wrong() -> None:
    config = SimConfig(
        members=16,
        loss=0.02,
        update_interval_s=30.0,
        churn_per_hour=8.0,
        seed=4,
        measure_memory=False,
    )
    hours = 0.05
    result = soak(config, hours)
    assert result["member_hours"] == pytest.approx(16 * hours)
    assert result["departures"] == result["joins"] > 0
    assert result["record_updates"] > 0
    # Crashed members are found dead: those are true deaths, not false ones.
    assert result["true_deaths_declared"] > 0
    assert result["false_deaths"] == 0 and result["members_falsely_declared_dead"] == 0
    assert result["live_members_at_end"] == 16
    assert result["implausible_locations"] == 0


def test_command_line_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--members", "20", "--seed", "3", "--no-memory"]) == 0
    printed = json.loads(capsys.readouterr().out)
    (run,) = printed["runs"]
    assert run["members"] == 20
    assert run["loss"] == 0.02
    assert run["death"]["members_knowing"] == 20
    assert run["location_check"] == "enforce"
    assert run["memory"]["measured"] is False and run["memory"]["process_peak_rss_mb"] > 0
