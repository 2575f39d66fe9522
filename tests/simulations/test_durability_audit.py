"""Silent loss, storage audits and leases in the durability model (issue 10).

Every run is seeded, so each check either always passes or always fails; the checks
compare the model with hand-computable answers (a Poisson process of audits, the
exponential absences, a real proof's size) and with itself (more audits, less loss).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gridnode.logic import audit_proof
from simulations import durability_audit as da
from simulations import durability_cli as dcli
from simulations import durability_report as dreport
from simulations import durability_stats as dstats
from simulations import user_durability as ud
from simulations import user_durability_stats as ustats

HOUR = 3600.0
DAY = 86_400.0
YEAR = 365.25 * DAY

#: A small grid and always-up machines: the audits of one holder are then a Poisson
#: process of rate batch / (interval * holders), and nothing else moves.
SMALL = da.DetectionSettings(pairs=300, max_days=60.0, warmup_days=1.0, holders=20, min_days=1.0)
#: Home machines: fewer pairs, and a grid large enough for hour-long steps.
SMALL_HOME = da.DetectionSettings(
    pairs=100, max_days=30.0, warmup_days=2.0, holders=200, min_days=5.0
)
ALWAYS = ud.availability("always")
HOME = ud.availability("home")
POLICY = ud.Policy(
    k=10, n=30, repair_threshold=28, repair_after_s=7 * DAY, detection="last_seen", rebuild="gone"
)


def _w(seed: int = 3, size: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Repair times of about a week and a half, as the home Monte Carlo measures them."""
    rng = np.random.default_rng(seed)
    w = (7 * DAY + rng.exponential(5 * DAY, size)) / YEAR
    return w, np.ones(size)


# --- detection ---------------------------------------------------------------------------


def test_whole_loss_is_distrusted_after_four_failed_audits_of_a_poisson_process() -> None:
    # Always up: every audit after the loss fails; from a score of 1 the score falls
    # 1 -> 0.8 -> 0.64 -> 0.512 -> 0.41, so the fourth failure distrusts (threshold 0.5):
    # the wait is Gamma(4, rate), mean 4 / rate; the first catch is Exp(rate), mean 1/rate.
    setting = da.AuditSetting(60.0, 4)
    rate = setting.per_second / SMALL.holders
    found = da.detection_times(setting, ALWAYS, 1.0, SMALL, seed=5)
    distrusted, caught = found["distrusted_s"], found["caught_s"]
    assert np.isfinite(distrusted).all() and np.isfinite(caught).all()
    assert (distrusted >= caught).all()
    step = found["step_s"]
    # Times are read at step resolution (half a step on average off either way).
    se4 = math.sqrt(4) / rate / math.sqrt(SMALL.pairs)
    assert distrusted.mean() == pytest.approx(4 / rate, abs=4 * se4 + step)
    se1 = 1 / rate / math.sqrt(SMALL.pairs)
    assert caught.mean() == pytest.approx(1 / rate, abs=4 * se1 + step)


def test_detection_time_falls_as_the_audit_rate_rises() -> None:
    settings = (da.AuditSetting(600.0, 4), da.AuditSetting(60.0, 4), da.AuditSetting(60.0, 32))
    means = []
    for setting in settings:
        found = da.detection_times(setting, ALWAYS, 1.0, SMALL, seed=9)
        assert np.isfinite(found["distrusted_s"]).all()
        means.append(float(found["distrusted_s"].mean()))
    assert means[0] > 5 * means[1] > 0
    assert means[1] > 3 * means[2] > 0
    off = da.detection_times(da.AuditSetting(0.0, 0), HOME, 1.0, SMALL, seed=9)
    assert np.isinf(off["distrusted_s"]).all() and np.isinf(off["caught_s"]).all()


def test_on_home_machines_detection_falls_with_the_rate_but_waits_for_both_up() -> None:
    slow = da.detection_times(da.AuditSetting(600.0, 8), HOME, 1.0, SMALL_HOME, seed=9)
    fast = da.detection_times(da.AuditSetting(60.0, 8), HOME, 1.0, SMALL_HOME, seed=9)
    assert np.median(slow["distrusted_s"]) > 2 * np.median(fast["distrusted_s"])
    # Ten audits a holder a day, but the source and holder are up together a few hours
    # a day at most: the median wait is hours to days, never minutes.
    assert np.median(fast["distrusted_s"]) > 4 * HOUR
    assert 0.0 <= fast["never_up_together"] < 0.2


def test_a_partial_loss_is_caught_later_and_distrusted_later_than_a_whole_one() -> None:
    setting = da.AuditSetting(60.0, 8)
    whole = da.detection_times(setting, ALWAYS, 1.0, SMALL, seed=2)
    part = da.detection_times(setting, ALWAYS, 0.25, SMALL, seed=2)
    assert np.median(part["caught_s"]) > np.median(whole["caught_s"])
    assert np.median(part["distrusted_s"]) > np.median(whole["distrusted_s"])


def test_a_run_is_reproducible_by_seed() -> None:
    setting = da.AuditSetting(60.0, 8)
    one = da.detection_times(setting, HOME, 0.25, SMALL_HOME, seed=11)
    two = da.detection_times(setting, HOME, 0.25, SMALL_HOME, seed=11)
    other = da.detection_times(setting, HOME, 0.25, SMALL_HOME, seed=12)
    np.testing.assert_array_equal(one["distrusted_s"], two["distrusted_s"])
    np.testing.assert_array_equal(one["caught_s"], two["caught_s"])
    assert not np.array_equal(one["caught_s"], other["caught_s"])


def test_the_tiny_suite_is_reproducible_by_seed() -> None:
    def strip(result: dict[str, object]) -> str:
        return json.dumps(dreport.jsonable({k: v for k, v in result.items() if k != "runtime_s"}))

    first = strip(da.run_audits("tiny", seed=4))
    assert first == strip(da.run_audits("tiny", seed=4))
    assert first != strip(da.run_audits("tiny", seed=5))


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="fraction"):
        da.detection_times(da.AuditSetting(60.0, 8), HOME, 0.0, SMALL)
    with pytest.raises(ValueError, match="mode"):
        da.AuditSuite.for_mode("huge")
    with pytest.raises(ValueError, match="lease"):
        da.lease_lapse(0.0, DAY, da.ExponentialAbsence(2.0, 4.0), 0)


# --- loss -------------------------------------------------------------------------------


def test_without_silent_loss_the_estimate_is_the_headline_method() -> None:
    w, weights = _w()
    lam = ud.departure_rate(0.5)
    mine = da.silent_loss_rate(POLICY, lam, 0.0, 1.0, np.zeros(1), w, weights)
    theirs = ustats.conditional_loss_rate(POLICY, w * YEAR, np.zeros(0), lam, 0.0)
    assert mine["rate"] == pytest.approx(theirs["rate"], rel=1e-12)
    assert mine["share_undetected"] == 0.0


def test_audits_off_lose_more_than_audits_on_and_faster_audits_lose_less() -> None:
    w = _w()
    lam = ud.departure_rate(0.283)
    chunks = ud.backup_chunks()
    losses = []
    for setting in (
        da.AuditSetting(0.0, 0),
        da.AuditSetting(600.0, 4),
        da.AuditSetting(60.0, 32),
    ):
        found = da.detection_times(setting, ALWAYS, 1.0, SMALL, seed=9)
        out = da.silent_loss_rate(POLICY, lam, 1.0, 1.0, found["distrusted_s"], *w)
        losses.append((out["rate"], out["share_undetected"]))
    (off, q_off), (slow, q_slow), (fast, q_fast) = losses
    assert off > slow > fast > 0
    assert q_off > q_slow > q_fast
    # Off: a silently lost packet waits for its holder to leave (3 years on average).
    assert q_off == pytest.approx(1.0 / (1.0 + lam), rel=1e-9)
    assert dstats.any_loss(off, chunks) > 0.5 > dstats.any_loss(fast, chunks)
    # Silent loss only adds loss: with none, audits change nothing.
    none = da.silent_loss_rate(POLICY, lam, 0.0, 1.0, np.full(3, np.inf), *w)
    assert none["rate"] < fast


# --- leases and traffic ------------------------------------------------------------------


def test_lease_lapse_by_hand_and_delegates_and_longer_leases_help() -> None:
    home = da.ExponentialAbsence(2.0, 4.0)
    out = da.lease_lapse(60 * DAY, 7 * DAY, home, 0, grace_s=DAY)
    assert out["safe_absence_days"] == pytest.approx(54.0)
    assert out["loss_per_year"] == pytest.approx(-math.expm1(-2.0 * math.exp(-54.0 / 4.0)))
    # The node renews at least every half lease, whatever the interval asked.
    assert da.lease_lapse(10 * DAY, 9 * DAY, home, 0)["safe_absence_days"] == pytest.approx(5.0)
    long = da.LogNormalAbsence(2.0, 7.0, 1.0)
    by_lease = [da.lease_lapse(d * DAY, 7 * DAY, long, 0)["loss_per_year"] for d in (30, 60, 90)]
    assert by_lease[0] > by_lease[1] > by_lease[2] > 0
    helped = da.lease_lapse(60 * DAY, 7 * DAY, long, 2)["loss_per_year"]
    assert helped < by_lease[1] / 1000


def test_lognormal_excess_is_the_integral_of_its_survival() -> None:
    long = da.LogNormalAbsence(2.0, 7.0, 1.0)
    grid = np.linspace(30.0, 3000.0, 300_001)
    survival = np.array([long.survival(x) for x in grid[::100]])
    integral = float(np.trapezoid(survival, grid[::100]))
    assert long.excess(30.0) == pytest.approx(integral, rel=1e-3)
    assert long.survival(7.0) == pytest.approx(0.5)


def test_proof_size_is_what_a_real_proof_weighs() -> None:
    packet = bytes(range(256)) * 469  # 120,064 bytes: a packet of a 1.2 MB chunk, k = 10
    for index in (0, audit_proof.chunk_count(len(packet)) - 1):
        proof = audit_proof.prove(packet, index)
        assert len(proof.chunk) + 32 * len(proof.path) <= da.proof_bytes(len(packet))
    assert da.proof_bytes(len(packet)) == 1024 + 32 * 7
    traffic = da.audit_traffic(da.AuditSetting(60.0, 8), 10, up_fraction=1.0)
    per_audit = traffic["proof_bytes"] + traffic["challenge_bytes"]
    assert traffic["bytes_per_node_per_day_always_up"] == pytest.approx(
        2 * 8 / 60 * DAY * per_audit
    )
    assert da.audit_traffic(da.AuditSetting(0.0, 0), 10, 1.0)["bytes_per_node_per_day"] == 0


# --- the suite's files -------------------------------------------------------------------


def test_cli_audits_only_writes_json_plots_and_defaults(tmp_path: Path) -> None:
    out = tmp_path / "audits"
    code = dcli.main(["--audits-only", "--audit-mode", "tiny", "--out", str(out)])
    assert code == 0
    stored = json.loads((out / "durability_audits.json").read_text())
    labels = [row["label"] for row in stored["rows"]]
    assert labels[0] == "off" and "8/60s" in labels
    off = stored["rows"][0]
    assert off["traffic"]["bytes_per_node_per_day"] == 0
    rec = stored["recommendation"]
    assert rec["met"] is True
    assert rec["loss_any_file_100gb_per_year_total"] <= stored["target_loss_any_file_per_year"]
    assert rec["audit_bytes_per_node_per_day"] > 0
    assert rec["lease_s"] > rec["lease_renew_interval_s"] > 0
    for name in ("audit_detection", "audit_loss", "lease_lapse"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
