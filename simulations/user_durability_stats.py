"""Statistics of the user-level model: its loss figures and the baselines that check them.

``user_durability`` runs the Monte Carlo; a loss of 1e-7 per chunk-year cannot be
counted there, so the figures come from here (see that module's doc for the method):
the conditional estimate from the observed repair times, the analytic Markov chain
beside it, the chance of losing any file once the source is destroyed, and
:func:`validate`, which checks counted losses against the chain where they are
countable.  The binomial tails and the any-file bound are the grid model's too, in
``durability_stats``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .durability_stats import binomial_tail, binomial_tail_vec
from .user_durability import (
    DAY,
    ERLANG_PHASES,
    HOUR,
    YEAR,
    Availability,
    FloatArray,
    Policy,
    SimResult,
    SimSettings,
    availability,
    simulate,
)


def _cycle_years(policy: Policy, lam: float, episode_years: float) -> float:
    """Mean time between episodes: departures down to the threshold, then the episode."""
    healthy = sum(1.0 / (j * lam) for j in range(policy.repair_threshold + 1, policy.n + 1))
    return healthy + episode_years


def conditional_loss_rate(
    policy: Policy,
    episodes_w_s: FloatArray,
    open_elapsed_s: FloatArray,
    lam: float,
    residual_s: float,
) -> dict[str, float]:
    """Loss rate per chunk-year from observed repair times, at departure rate ``lam``.

    Per episode, the chunk has r holders left and is lost if r - k + 1 of them leave
    before its repair W: ``P = tail(r - k + 1; r, 1 - exp(-lam W))``.  An episode still
    open at the end of the run lasts its elapsed time plus a memoryless residual of
    mean ``max(residual_s, elapsed)`` (a wait that already lasted long is taken to last
    as long again), averaged by Gauss-Laguerre quadrature.  Some open episodes are not
    slow but stuck (a repairer that must stay up longer than it ever does, or k holders
    never up at once); ``rate_open_unrepaired`` is the bound that takes every open
    episode as not repaired within the year.
    """
    r, k = policy.repair_threshold, policy.k
    w_years = episodes_w_s / YEAR
    total = w_years.size + open_elapsed_s.size
    if total == 0:
        return {
            "rate": math.nan,
            "se": math.nan,
            "rate_open_unrepaired": math.nan,
            "episodes": 0,
            "open_fraction": 0.0,
        }
    probs = binomial_tail_vec(r - k + 1, r, -np.expm1(-lam * w_years))
    nodes, weights = np.polynomial.laguerre.laggauss(24)
    mean_rest = np.maximum(open_elapsed_s, residual_s)
    open_w = (open_elapsed_s[:, None] + mean_rest[:, None] * nodes[None, :]) / YEAR
    open_probs = binomial_tail_vec(r - k + 1, r, -np.expm1(-lam * open_w)) @ weights
    per_episode = np.concatenate([probs, open_probs])
    stuck = binomial_tail_vec(r - k + 1, r, np.array([-math.expm1(-lam)]))[0]
    per_episode_stuck = np.concatenate([probs, np.full(open_elapsed_s.size, stuck)])
    mean = float(per_episode.mean())
    se = float(per_episode.std(ddof=1) / math.sqrt(total)) if total > 1 else mean
    mean_w = float(w_years.mean()) if w_years.size else 0.0
    cycle = _cycle_years(policy, lam, mean_w)
    return {
        "rate": mean / cycle,
        "se": se / cycle,
        "rate_open_unrepaired": float(per_episode_stuck.mean()) / cycle,
        "episodes": total,
        "open_fraction": open_elapsed_s.size / total,
    }


def residual_s(result: SimResult, avail: Availability) -> float:
    """Mean remaining repair time assumed for an episode still open at the end."""
    w = result.episodes_w_s
    return max(avail.absence_mean_days * DAY, float(w.mean()) if w.size else 0.0)


def markov_loss_rate(
    policy: Policy, lam: float, wait_years: float, phases: int = ERLANG_PHASES
) -> float:
    """The analytic baseline: loss rate per chunk-year of the continuous-time chain.

    States (j, phase): j surviving packets; above the threshold no repair is pending;
    at or below it the detection delay runs through ``phases`` Erlang phases, then an
    exponential wait of mean ``wait_years`` for an opportunity.  Returns
    P(loss per cycle) / E[cycle]; the chain is acyclic between repairs, so P is a
    dynamic programme over positive terms (no cancellation).
    """
    k, _n, r = policy.k, policy.n, policy.repair_threshold
    delay_years = policy.repair_after_s / YEAR
    rates: list[float] = []
    if delay_years > 0:
        rates += [phases / delay_years] * phases
    if wait_years > 0:
        rates.append(1.0 / wait_years)
    # h[j][p]: P(loss before repair) from j survivors in repair stage p; stage len(rates)
    # is "repaired".
    stages = len(rates)
    h = {k - 1: [1.0] * (stages + 1)}
    for j in range(k, r + 1):
        row = [0.0] * (stages + 1)
        for p in range(stages - 1, -1, -1):
            out = j * lam + rates[p]
            row[p] = (j * lam * h[j - 1][p] + rates[p] * row[p + 1]) / out
        h[j] = row
    start = h[r][0] if stages else 0.0
    # Above the threshold departures only move down, ending in state r at stage 0.
    episode = delay_years + wait_years
    return start / _cycle_years(policy, lam, episode)


def markov_wait_years(policy: Policy, avail: Availability, repairers: int = 1) -> float:
    """Baseline's opportunity wait: independent, memoryless availability.

    After the delay the repair runs at once with probability q = P(a repairer is up)
    * P(at least k of the r survivors are up); otherwise it waits a geometric number
    of down periods.
    """
    a = avail.mean_up()
    a_repair = 1.0 - (1.0 - a) ** repairers
    q = a_repair * binomial_tail(policy.k, policy.repair_threshold, a)
    if q <= 0:
        return math.inf
    return (1.0 - q) / q * avail.mean_down_s() / YEAR


# ---------------------------------------------------------------------------
# The source destroyed


def after_source_lost(
    policy: Policy,
    lam: float,
    chunks: int,
    *,
    delegates: int,
    lease_years: float,
    rate_many: float,
    rate_one: float,
    horizon_years: float = 50.0,
    samples: int = 4_000,
    seed: int = 1,
    renewed: bool = False,
) -> dict[str, Any]:
    """Chance of having lost any file t years after the source is destroyed.

    While delegates hold an unexpired lease and at least one is still a member, chunks
    are lost at ``rate_many`` (two or more left) or ``rate_one`` (one left) per
    chunk-year; afterwards nothing is repaired and a chunk is lost once
    m = n - k + 1 of its holders left since then (binomial).  The delegates' departures
    and the lease left (uniform over its second half) are sampled; ``renewed`` delegates
    hand the capability on when one leaves, with no lease limit: repair never stops.
    A chunk's chance of loss by t is also at most the unrepaired one from the start.
    """
    k, n = policy.k, policy.n
    grid = np.concatenate([[0.0], np.geomspace(1e-4, horizon_years, 1_000)])
    rng = np.random.default_rng(seed)
    if delegates == 0 or renewed:
        samples = 1  # nothing random left
    if renewed and delegates > 0:
        end_all = end_many = np.full(samples, np.inf)
    elif delegates > 0:
        leave = np.sort(rng.exponential(1.0 / lam, (samples, delegates)), axis=1)
        lease = rng.uniform(lease_years / 2.0, lease_years, samples) if lease_years else None
        end_all = leave[:, -1]
        end_many = leave[:, -2] if delegates > 1 else np.zeros(samples)
        if lease is not None:
            end_all = np.minimum(end_all, lease)
            end_many = np.minimum(end_many, lease)
    else:
        end_all = end_many = np.zeros(samples)
    t = grid[None, :]
    repaired_many = np.minimum(t, end_many[:, None])
    repaired_one = np.minimum(t, end_all[:, None]) - repaired_many
    since = np.maximum(0.0, t - end_all[:, None])
    # The binomial tail once on the grid, interpolated for every sample (monotone).
    never_1d = binomial_tail_vec(n - k + 1, n, -np.expm1(-lam * grid))
    tail = np.interp(since, grid, never_1d)
    # Repair never makes a chunk worse than no repair at all (a rebuilt packet's new
    # holder leaves at the same memoryless rate), so a chunk's loss is bounded by the
    # unrepaired binomial from the start too; the repaired rate is a steady state and
    # overstates the first days after the source is lost, when chunks are whole.
    never = never_1d[None, :]
    repaired = -np.expm1(-(rate_many * repaired_many + rate_one * repaired_one))
    chunk_lost = np.minimum(never, 1.0 - (1.0 - repaired) * (1.0 - tail))
    with np.errstate(divide="ignore"):
        log_keep = chunks * np.log1p(-chunk_lost)
    p_any = 1.0 - np.exp(log_keep).mean(axis=0)

    def first(level: float) -> float | None:
        hit = np.flatnonzero(p_any >= level)
        return float(grid[hit[0]]) if hit.size else None

    five = float(np.interp(5.0, grid, p_any)) if horizon_years >= 5 else None
    return {
        "delegates": delegates,
        "lease_days": lease_years * 365.25 if lease_years else None,
        "years_to_1pct": first(0.01),
        "years_to_median": first(0.5),
        "loss_any_within_5_years": five,
        "horizon_years": horizon_years,
        "curve": {
            "years": grid[::10].tolist(),
            "p_any": p_any[::10].tolist(),
        },
    }


# ---------------------------------------------------------------------------
# Validation


def validate(settings: SimSettings | None = None, seed: int = 1) -> dict[str, Any]:
    """Counted losses against the Markov chain where losses are countable.

    Always-up nodes, so the repair time is the detection delay and the chain's
    assumptions hold; departures fast enough (6 per node-year) for a few hundred
    losses.  The counted rate must fall within sampling error of the chain's.
    """
    s = settings or SimSettings(
        nodes=1_000, chunks=2_000, days=60.0, step_s=3 * HOUR, departures_per_year=6.0
    )
    policy = Policy(k=2, n=4, repair_threshold=3, repair_after_s=5 * DAY, detection="observed")
    avail = availability("always")
    result = simulate(policy, avail, s, seed)
    lam = s.departures_per_year
    markov = markov_loss_rate(policy, lam, 0.0)
    counted = result.losses / result.chunk_years
    expected = markov * result.chunk_years
    z = (result.losses - expected) / math.sqrt(expected) if expected > 0 else math.inf
    cond = conditional_loss_rate(
        policy, result.episodes_w_s, result.open_elapsed_s, lam, residual_s(result, avail)
    )
    return {
        "policy": policy.label,
        "availability": avail.name,
        "departures_per_year": lam,
        "chunk_years": result.chunk_years,
        "losses_counted": result.losses,
        "counted_rate": counted,
        "markov_rate": markov,
        "conditional_rate": cond["rate"],
        "z": z,
        "passed": abs(z) < 4.0,
        "method": "z = (counted - Markov expectation) / sqrt(expectation), Poisson",
    }
