"""The durability model: its hand-computable case first, then the pieces it rests on.

Every simulation here is seeded, so a statistical check either always passes
or always fails; tolerances come from the standard error, so a model that is
wrong by more than sampling noise fails them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations import durability as dur
from simulations import durability_cli as dcli
from simulations import durability_report as dreport
from simulations import durability_stats as dstats
from simulations import durability_suite as dsuite
from simulations import user_durability as ud
from simulations import user_durability_stats as ustats
from simulations import user_durability_suite as usuite

EARTH_KM = 6371.0088


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """An independent distance formula, so the tests do not trust the model's chords."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dlat = p2 - p1
    dlon = math.radians(lon2 - lon1)
    h = math.sin(dlat / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


def destination(lat: float, lon: float, bearing_deg: float, km: float) -> tuple[float, float]:
    """The point ``km`` from (lat, lon) along an initial bearing (spherical direct problem)."""
    p1, l1, b = math.radians(lat), math.radians(lon), math.radians(bearing_deg)
    d = km / EARTH_KM
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(
        math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    return math.degrees(p2), math.degrees(l2)


def quiet(**changes: Any) -> dur.SimConfig:
    """A small grid where nothing happens unless a test turns it on."""
    base = dur.SimConfig(
        nodes=2_000,
        chunks=2_000,
        years=1.0,
        mean_lifetime_years=math.inf,
        outage_rate_per_year=0.0,
        disaster_rate_per_year=0.0,
    )
    return attrs.evolve(base, **changes)


# --- the sanity case of issue 5 ---------------------------------------------


def test_binomial_formula_by_hand() -> None:
    # 4-of-6 loses a chunk when 3 or more of its 6 packets fail.
    by_hand = 20 * 0.2**3 * 0.8**3 + 15 * 0.2**4 * 0.8**2 + 6 * 0.2**5 * 0.8 + 0.2**6
    assert dstats.binomial_loss_probability(4, 6, 0.2) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(0.09888, abs=1e-12)


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(4, 6, 0.2), (2, 3, 0.3), (3, 5, 0.1), (1, 2, 0.5)],
)
def test_sanity_matches_binomial(k: int, n: int, p: float) -> None:
    result = dstats.sanity_check(k=k, n=n, p=p, nodes=3_000, chunks=6_000, steps=6, seed=7)
    assert result["expected"] == pytest.approx(dstats.binomial_loss_probability(k, n, p))
    assert abs(result["z"]) < 4.5, result
    assert result["passed"]
    # Shared nodes correlate chunks: the honest error is never below the binomial one.
    assert result["se"] >= result["binomial_se"] > 0


def test_sanity_z_would_catch_a_wrong_failure_rate() -> None:
    # The same observation judged against p=0.25 instead of the simulated 0.2:
    # a model off by that much must fail the sanity check.
    result = dstats.sanity_check(k=4, n=6, p=0.2, nodes=3_000, chunks=6_000, steps=6, seed=7)
    wrong = dstats.binomial_loss_probability(4, 6, 0.25)
    assert abs((result["observed"] - wrong) / result["se"]) > 4.5


def test_one_of_one_with_certain_failure_loses_everything() -> None:
    result = dstats.sanity_check(k=1, n=1, p=1.0, nodes=100, chunks=500, steps=3)
    assert result["lost"] == result["chunks"] == 500
    assert result["observed"] == result["expected"] == 1.0
    assert result["passed"]


def test_no_failures_no_loss_no_repair() -> None:
    outcome = dur.simulate(quiet(), seed=3)
    summary = dstats.summarise(outcome)
    assert summary["loss"]["lost_chunks"] == 0
    assert summary["loss"]["ci95"] == [0.0, pytest.approx(3.0 / 2_000, rel=1e-3)]
    assert summary["repair"]["repairs"] == 0
    assert summary["unavailability"]["mean_fraction"] == 0.0


def test_outages_make_chunks_unavailable_but_never_lose_them() -> None:
    outcome = dur.simulate(
        quiet(outage_rate_per_year=200.0, outage_mean_days=2.0, k=3, n=4), seed=5
    )
    summary = dstats.summarise(outcome)
    assert summary["loss"]["lost_chunks"] == 0
    assert summary["repair"]["repairs"] == 0
    assert summary["unavailability"]["mean_fraction"] > 0
    assert 0.3 < summary["unavailability"]["node_down_fraction"] < 0.7


# --- geometry and placement --------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    min_km=st.sampled_from([0.0, 50.0, 300.0, 800.0, 1500.0]),
    n=st.integers(2, 6),
)
def test_placement_respects_the_minimum_distance(seed: int, min_km: float, n: int) -> None:
    rng = np.random.default_rng(seed)
    lat, lon = dur.sample_locations(rng, 1_500)
    xyz = dur.to_unit_vectors(lat, lon)
    empty = np.full((150, n), -1, dtype=np.intp)
    eligible = np.arange(1_500, dtype=np.intp)
    holders, ok = dur.place_packets(rng, xyz, eligible, empty, min_km, tries=64)
    assert ok.mean() > 0.9
    for row in holders[ok]:
        assert len(set(row.tolist())) == n
        for i in range(n):
            for j in range(i + 1, n):
                a, b = row[i], row[j]
                assert haversine_km(lat[a], lon[a], lat[b], lon[b]) >= min_km - 1e-6


def test_placement_keeps_survivors_and_fails_rather_than_relax() -> None:
    rng = np.random.default_rng(11)
    lat, lon = dur.sample_locations(rng, 500)
    xyz = dur.to_unit_vectors(lat, lon)
    eligible = np.arange(500, dtype=np.intp)
    partial = np.array([[7, -1, 42, -1]] * 20, dtype=np.intp)
    filled, ok = dur.place_packets(rng, xyz, eligible, partial, 0.0, tries=16)
    assert ok.all()
    assert (filled[:, 0] == 7).all() and (filled[:, 2] == 42).all()
    # Farther apart than half the Earth's circumference: no pair can qualify.
    _, impossible = dur.place_packets(rng, xyz, eligible, np.full((5, 2), -1), 21_000.0, 8)
    assert not impossible.any()
    # Fewer eligible nodes than packets: must fail, not reuse a node.
    few = np.arange(3, dtype=np.intp)
    reused, too_few = dur.place_packets(rng, xyz, few, np.full((5, 4), -1), 0.0, 32)
    assert not too_few.any()
    for row in reused:
        placed = row[row >= 0].tolist()
        assert len(placed) == len(set(placed))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    radius_km=st.floats(10.0, 3_000.0),
)
def test_disaster_removes_exactly_the_nodes_within_radius(seed: int, radius_km: float) -> None:
    rng = np.random.default_rng(seed)
    lat, lon = dur.sample_locations(rng, 2_000)
    xyz = dur.to_unit_vectors(lat, lon)
    centre = int(rng.integers(2_000))
    hit = dur.nodes_within(xyz, xyz[centre], radius_km)
    assert hit[centre]
    for i in range(2_000):
        distance = haversine_km(lat[centre], lon[centre], lat[i], lon[i])
        if abs(distance - radius_km) > 1e-6:
            assert bool(hit[i]) == (distance < radius_km), (i, distance)


@pytest.mark.parametrize("packets", [2, 3, 4, 5])
def test_safe_distance_is_tight(packets: int) -> None:
    # A regular polygon on the rim of the disaster fits inside it, and its
    # side is the safe distance: at exactly that D one disaster still takes
    # ``packets`` packets, which is why the rule must be strictly greater.
    radius_km = 250.0
    safe = dur.disaster_safe_distance_km(radius_km, packets)
    assert safe is not None
    centre = (48.0, 11.0)
    rim = [destination(*centre, 360.0 * i / packets, radius_km) for i in range(packets)]
    lat = np.array([p[0] for p in rim])
    lon = np.array([p[1] for p in rim])
    xyz = dur.to_unit_vectors(lat, lon)
    centre_xyz = dur.to_unit_vectors(np.array([centre[0]]), np.array([centre[1]]))[0]
    assert dur.nodes_within(xyz, centre_xyz, radius_km + 1e-6).all()
    sides = [haversine_km(*rim[i], *rim[(i + 1) % packets]) for i in range(packets)]
    assert min(sides) == pytest.approx(safe, rel=1e-9)
    if packets == 2:
        assert safe == pytest.approx(2 * radius_km)


def test_beyond_safe_distance_one_disaster_never_takes_enough_packets() -> None:
    radius_km = 250.0
    safe = dur.disaster_safe_distance_km(radius_km, 3)
    assert safe is not None
    rng = np.random.default_rng(2)
    lat, lon = dur.sample_locations(rng, 4_000)
    xyz = dur.to_unit_vectors(lat, lon)
    eligible = np.arange(4_000, dtype=np.intp)
    holders, ok = dur.place_packets(rng, xyz, eligible, np.full((2_000, 6), -1), safe + 1, 64)
    holders = holders[ok]
    worst = 0
    for centre in rng.integers(4_000, size=300):
        hit = dur.nodes_within(xyz, xyz[centre], radius_km)
        worst = max(worst, int(hit[holders].sum(axis=1).max()))
    assert 1 <= worst <= 2


# --- repair and regional disasters in the simulation ------------------------


def test_repair_reduces_losses_and_its_traffic_adds_up() -> None:
    churn = quiet(mean_lifetime_years=0.5, repair_delay_days=2.0)
    repaired = dstats.summarise(dur.simulate(churn, seed=4))
    unrepaired = dstats.summarise(dur.simulate(attrs.evolve(churn, repair=False), seed=4))
    assert unrepaired["loss"]["lost_chunks"] > 500
    assert repaired["loss"]["lost_chunks"] * 20 < unrepaired["loss"]["lost_chunks"]
    r = repaired["repair"]
    assert r["repairs"] > 1_000
    assert r["packets_read"] == churn.k * r["repairs"]
    assert r["repairs"] <= r["packets_written"] <= (churn.n - churn.k) * r["repairs"]
    assert r["bytes_per_node_by_year"] == [pytest.approx(r["bytes_per_node_year"])]
    assert unrepaired["repair"]["repairs"] == 0
    # Same seed, same history (common random numbers): storing twice as much
    # per node costs exactly twice the repair bandwidth.
    doubled = dstats.summarise(
        dur.simulate(attrs.evolve(churn, stored_bytes_per_node=2 * churn.stored_bytes_per_node), 4)
    )
    assert doubled["repair"]["repairs"] == r["repairs"]
    assert doubled["repair"]["bytes_per_node_year"] == pytest.approx(2 * r["bytes_per_node_year"])


def test_min_distance_bounds_what_one_disaster_takes_and_cuts_losses() -> None:
    heavy = quiet(
        nodes=3_000,
        chunks=3_000,
        disaster_rate_per_year=30.0,
        disaster_radius_km=250.0,
        repair_delay_days=2.0,
    )
    close = dstats.summarise(dur.simulate(heavy, seed=9))
    apart = dstats.summarise(dur.simulate(attrs.evolve(heavy, min_distance_km=501.0), seed=9))
    # D > 2R: a disaster's disk cannot hold two packets of one chunk, also
    # after repairs have moved packets to new nodes.
    assert apart["disasters"]["max_packets_of_one_chunk_in_one_disaster"] == 1
    assert close["disasters"]["max_packets_of_one_chunk_in_one_disaster"] >= 3
    assert close["loss"]["lost_chunks"] > 10
    assert apart["loss"]["lost_chunks"] * 5 < close["loss"]["lost_chunks"]


def test_config_rejects_impossible_codes() -> None:
    with pytest.raises(ValueError, match="repair threshold"):
        dur.SimConfig(k=4, n=6, repair_threshold=6)
    with pytest.raises(ValueError, match="must not exceed"):
        dur.SimConfig(k=5, n=4)
    with pytest.raises(ValueError, match="chunks"):
        dur.SimConfig(chunks=0)


def test_loss_interval_brackets_the_estimate_and_handles_high_rates() -> None:
    low, high = dstats.poisson_rate_interval(5, 1_000.0)
    assert low < 0.005 < high
    # More losses than chunk-years: a rate above 1/year is still a probability below 1.
    many = dstats.loss_estimate(900, 500.0)
    assert many["per_year"] == pytest.approx(1 - math.exp(-1.8))
    assert many["ci95"][0] < many["per_year"] < many["ci95"][1] < 1
    none = dstats.loss_estimate(0, 3_000.0)
    assert none["per_year"] == 0.0
    assert none["ci95"] == [0.0, pytest.approx(1e-3, rel=1e-3)]
    assert "rule of three" in none["method"]


# --- the suite's files -------------------------------------------------------


def test_cli_writes_json_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = dcli.main(
        [
            "--quick",
            "--out",
            str(out),
            "--nodes",
            "600",
            "--chunks",
            "400",
            "--sweep-chunks",
            "300",
            "--sanity-chunks",
            "600",
            "--years",
            "0.25",
            "--k",
            "2",
            "--n",
            "4",
            "--sweep-distances",
            "0,600",
            "--no-user",
            "--no-audits",
        ]
    )
    assert code == 0
    results = json.loads((out / "durability.json").read_text())
    assert results["trusted"]
    assert results["baseline"]["config"]["k"] == 2
    assert results["baseline"]["config"]["n"] == 4
    assert [row["min_distance_km"] for row in results["proximity_sweep"]["rows"]] == [0, 600]
    assert "DISASTER-HEAVY" in results["proximity_sweep"]["scenario"]
    for name in ("loss_vs_min_distance", "repair_traffic", "sanity_binomial", "repair_policy"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_redundancy_repair_has_nothing_to_do() -> None:
    outcome = dur.simulate(quiet(k=2, n=2, mean_lifetime_years=2.0), seed=8)
    summary = dstats.summarise(outcome)
    assert summary["repair"]["repairs"] == 0
    assert summary["loss"]["lost_chunks"] > 0


# --- the user-level model of issue 15 ---------------------------------------


def test_counted_losses_match_the_markov_chain_with_repair() -> None:
    # Repair after a 5-day delay, departures fast enough to count a few hundred losses:
    # the Monte Carlo's count must sit within Poisson error of the chain's expectation.
    settings = ud.SimSettings(
        nodes=400, chunks=1_500, days=60.0, step_s=6 * 3600.0, departures_per_year=6.0
    )
    check = ustats.validate(settings, seed=3)
    assert check["losses_counted"] > 50
    assert check["passed"], check
    # The conditional estimate (the one used for rare losses) agrees with both.
    assert check["conditional_rate"] == pytest.approx(check["markov_rate"], rel=0.15)
    # A chain with twice the delay predicts about four times the losses
    # (two further departures in the window): the same count would fail against it.
    policy = ud.Policy(k=2, n=4, repair_threshold=3, repair_after_s=10 * ud.DAY)
    wrong = ustats.markov_loss_rate(policy, 6.0, 0.0) * check["chunk_years"]
    assert abs(check["losses_counted"] - wrong) / math.sqrt(wrong) > 4


def test_markov_chain_by_hand() -> None:
    # 1-of-2, repair at once after an exponential wait of mean w: from one survivor the
    # chunk is lost if that one leaves first, lam / (lam + 1/w); a cycle lasts
    # 1/(2 lam) + w on average.
    policy = ud.Policy(k=1, n=2, repair_threshold=1, repair_after_s=0.0)
    lam, w = 0.5, 0.01
    expected = (lam / (lam + 1 / w)) / (1 / (2 * lam) + w)
    assert ustats.markov_loss_rate(policy, lam, w) == pytest.approx(expected, rel=1e-12)
    # Deterministic delay: the conditional estimate with every W equal to the delay is
    # the Erlang chain's limit.
    det = ud.Policy(k=4, n=6, repair_threshold=5, repair_after_s=3 * ud.DAY)
    w_s = np.full(1_000, 3 * ud.DAY)
    cond = ustats.conditional_loss_rate(det, w_s, np.zeros(0), 0.3, ud.DAY)
    assert cond["rate"] == pytest.approx(ustats.markov_loss_rate(det, 0.3, 0.0), rel=0.05)
    # Rare events keep their precision: no cancellation at 1e-40.
    tiny = ustats.markov_loss_rate(
        ud.Policy(k=16, n=32, repair_threshold=31, repair_after_s=3600), 0.01, 0
    )
    assert 0 < tiny < 1e-40


def test_shipped_policy_follows_the_node_config() -> None:
    from gridnode.config import NodeConfig

    fields = attrs.fields_dict(NodeConfig)
    k, n = (int(x) for x in str(fields["redundancy"].default).split("/"))
    shipped = ud.Policy.shipped()
    assert (shipped.k, shipped.n) == (k, n)
    # repair.py: a chunk is repaired once ``repair_threshold`` of its holders are gone.
    gone: Any = fields["repair_threshold"].default
    assert shipped.repair_threshold == n - int(gone)
    assert (shipped.detection, shipped.rebuild) == ("last_seen", "gone")
    assert shipped.repair_after_s == fields["repair_after_s"].default
    delegates = fields["repair_delegates"].default if "repair_delegates" in fields else 0
    assert ud.shipped_policy()["repair_delegates"] == delegates


def test_home_machines_are_up_a_fraction_of_the_day_on_a_daily_cycle() -> None:
    step = 1800.0
    up = ud.availability("home").schedule(np.random.default_rng(4), 300, 48 * 20, step)
    frac = up.mean(axis=0)
    assert 0.15 < frac.mean() < 0.45
    assert (frac < 0.7).all()
    # Same hour on the next day is far more alike than twelve hours later.
    x = up.astype(float) - up.mean(axis=0)
    day, half = 48, 24
    same = (x[:-day] * x[day:]).mean()
    opposite = (x[:-half] * x[half:]).mean()
    assert same > 0 > opposite
    dc = ud.availability("datacenter").schedule(np.random.default_rng(4), 300, 48 * 20, step)
    assert 0.9 < dc.mean() < 0.995


def test_short_repair_delays_move_packets_of_machines_that_were_only_off() -> None:
    settings = ud.SimSettings(nodes=300, chunks=200, days=8.0, step_s=3600.0)
    home = ud.availability("home")
    shipped_like = ud.Policy(k=4, n=6, repair_threshold=5, repair_after_s=3600.0)
    patient = ud.Policy(
        k=4, n=6, repair_threshold=5, repair_after_s=7 * ud.DAY, detection="last_seen"
    )
    hasty = ud.simulate(shipped_like, home, settings, seed=2)
    calm = ud.simulate(patient, home, settings, seed=2)
    # Nightly absences outlast an hour: nearly every repair is spurious, daily.
    assert hasty.spurious_repairs > 0.9 * hasty.repairs
    assert hasty.spurious_repairs / hasty.chunk_years > 100
    assert calm.spurious_repairs / calm.chunk_years < 20
    lam = ud.departure_rate(0.2)
    assert (
        usuite.traffic(hasty, lam)["repairer_bytes_per_year"]
        > 10 * usuite.traffic(calm, lam)["repairer_bytes_per_year"]
    )


def test_any_file_bound_and_the_source_destroyed_without_delegates() -> None:
    assert dstats.any_loss(0.0, 1_000) == 0.0
    p = -math.expm1(-1e-6)
    assert dstats.any_loss(1e-6, 83_334) == pytest.approx(1 - (1 - p) ** 83_334, rel=1e-9)
    policy = ud.Policy(k=4, n=6, repair_threshold=5, repair_after_s=3600.0)
    lam = ud.departure_rate(0.2)
    out = ustats.after_source_lost(
        policy, lam, 1_000, delegates=0, lease_years=0.0, rate_many=0.0, rate_one=0.0
    )
    # Without repair a chunk is lost once 3 of its 6 holders left: binomial, exact.
    t = out["years_to_1pct"]
    assert t is not None
    q = dstats.binomial_tail(3, 6, -math.expm1(-lam * t))
    assert 1 - (1 - q) ** 1_000 == pytest.approx(0.01, rel=0.05)
    # Delegates that repair for ever keep the backup longer; a lease cuts that short.
    forever = ustats.after_source_lost(
        policy,
        lam,
        1_000,
        delegates=3,
        lease_years=0.0,
        rate_many=1e-9,
        rate_one=1e-9,
        seed=2,
        samples=500,
    )
    leased = ustats.after_source_lost(
        policy,
        lam,
        1_000,
        delegates=3,
        lease_years=30 / 365.25,
        rate_many=1e-9,
        rate_one=1e-9,
        seed=2,
        samples=500,
    )
    assert leased["years_to_1pct"] is not None and forever["years_to_1pct"] is not None
    assert t < leased["years_to_1pct"] < forever["years_to_1pct"]


def test_user_suite_reports_the_headline_figures_and_plots(tmp_path: Path) -> None:
    settings = attrs.evolve(
        dsuite.SuiteSettings.for_mode(True),
        baseline=dur.SimConfig(nodes=600, chunks=400, years=0.25, k=2, n=4),
        sweep_chunks=300,
        sweep_distances_km=(0.0,),
        sanity_chunks=600,
        sanity_curve_chunks=600,
        sanity_curve_p=(0.2,),
        policy_delays_days=(1.0,),
        user_mode="tiny",
        audit_mode="tiny",
    )
    results = dsuite.run_suite(settings, out_dir=tmp_path, seed=1)
    stored = json.loads((tmp_path / "durability.json").read_text())
    for key in dsuite.USER_HEADLINE_KEYS:
        assert key in stored
    assert 0.0 <= stored["loss_any_file_100gb_per_year"] <= 1.0
    years = stored["years_to_first_loss_after_source_lost"]
    assert years is None or years > 0
    user = results["user"]
    assert user["validation"]["passed"]
    assert {row["policy"]["n"] for row in user["sweep"]} == {6, 24}
    for row in user["sweep"]:
        first = row["by_departure_rate"][0]
        assert "markov_loss_any_file_100gb_per_year" in first
        assert first["traffic"]["repairer_bytes_per_year"] >= 0
    for name in ("kn_sweep", "loss_vs_departures", "source_lost", "delay_sweep", "validation"):
        assert (tmp_path / f"user_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "RECOMMENDED" in dreport.format_report(results)
    # Storage audits and leases (issue 10) ride along, with their defaults at the top.
    assert stored["audit_recommendation"]["audit_batch"] >= 1
    assert stored["audits"]["rows"][0]["label"] == "off"
    for name in ("audit_detection", "audit_loss", "lease_lapse"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "STORAGE AUDITS AND LEASES" in dreport.format_report(results)
