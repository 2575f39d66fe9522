"""A small run of the gossip scale simulation: convergence and death detection in bounds."""

from __future__ import annotations

import json
import math

import pytest

from gridnode.logic.swim import GossipConfig
from simulations.gossip_sim import SimConfig, main, simulate


def _suspicion_max_s(config: GossipConfig, members: int) -> float:
    minimum = config.suspicion_mult * max(1.0, math.log10(members)) * config.probe_interval_s
    return config.suspicion_max_timeout_mult * minimum


@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_small_grid_converges_and_detects_a_death(loss: float) -> None:
    members = 60
    config = SimConfig(members=members, loss=loss, warmup_s=2.0, steady_window_s=3.0)
    gossip = config.gossip
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


def test_command_line_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--members", "20", "--seed", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    (run,) = printed["runs"]
    assert run["members"] == 20
    assert run["death"]["members_knowing"] == 20
    assert run["location_check"].startswith("off")
