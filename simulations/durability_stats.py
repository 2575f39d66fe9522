"""Statistics of the durability models: the binomial check, loss intervals, summaries.

Both models (``durability``, the grid at scale, and ``user_durability``, one user's
backup) rest on the same few formulas: binomial tails for "more packets gone than the
code can spare", a Poisson score interval for a loss rate counted over chunk-years, and
the Harris-FKG bound that turns a chunk's loss rate into a backup's.  They live here,
once, with no model imported, so each model file holds only its simulation and the
formulas can be checked by hand on their own.  The grid model's known-answer check
(:func:`sanity_check`, issue 5) and its per-run summary (:func:`summarise`) follow them:
they turn the grid model's raw counts into the figures the suite reports.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np

from .durability import (
    DAYS_PER_YEAR,
    SECONDS_PER_YEAR,
    FloatArray,
    SimConfig,
    SimOutcome,
    simulate,
)

Z_95 = 1.959963984540054


def binomial_tail(at_least: int, trials: int, p: float) -> float:
    """P(Binomial(trials, p) >= at_least), summed from the tail (full relative precision)."""
    if at_least <= 0:
        return 1.0
    if at_least > trials:
        return 0.0
    q = 1.0 - p
    return float(
        sum(math.comb(trials, j) * p**j * q ** (trials - j) for j in range(at_least, trials + 1))
    )


def binomial_tail_vec(at_least: int, trials: int, p: FloatArray) -> FloatArray:
    """The same tail for an array of probabilities (the user model's episodes)."""
    out = np.zeros_like(p)
    if at_least <= 0:
        return np.ones_like(p)
    for j in range(at_least, trials + 1):
        out += math.comb(trials, j) * p**j * (1.0 - p) ** (trials - j)
    return out


def binomial_loss_probability(k: int, n: int, p: float) -> float:
    """P(more than n - k of n independent packets fail), each with probability p."""
    return binomial_tail(n - k + 1, n, p)


def poisson_rate_interval(events: int, exposure: float, z: float = Z_95) -> tuple[float, float]:
    """Score interval for a Poisson rate: the rate analogue of Wilson's interval.

    Losses are counted against exposure (chunk-years), not a fixed number of
    trials, and can outnumber the chunk-years when the rate is high, so a
    binomial interval does not fit. The score interval solves
    ``|events - rate * exposure| = z * sqrt(rate * exposure)``; it needs no
    quantile tables and stays sensible near zero.
    """
    if exposure <= 0:
        raise ValueError(f"exposure must be > 0, got {exposure}")
    if events == 0:
        return (0.0, z * z / exposure)
    centre = events + z * z / 2.0
    half = z * math.sqrt(events + z * z / 4.0)
    return ((centre - half) / exposure, (centre + half) / exposure)


def loss_estimate(losses: int, exposure_chunk_years: float) -> dict[str, Any]:
    """Probability that a chunk is lost within a year, with a 95 % interval.

    Losses are a Poisson process over chunk-years with rate
    ``losses / exposure``; the yearly probability is ``1 - exp(-rate)``,
    and the interval maps the score interval of the rate the same way. With
    no loss observed the upper bound is the rule of three (rate below
    3 / exposure, one-sided 95 %). Chunk-years are not independent (chunks
    share nodes, and a disaster strikes many at once), so the interval is
    optimistic; ``loss_events`` in the summary shows how clustered the
    losses were.
    """
    if exposure_chunk_years <= 0:
        return {"per_year": None, "ci95": [None, None], "method": "no exposure"}
    if losses == 0:
        return {
            "per_year": 0.0,
            "ci95": [0.0, -math.expm1(-3.0 / exposure_chunk_years)],
            "method": "rule of three (no loss observed)",
        }
    low, high = poisson_rate_interval(losses, exposure_chunk_years)
    return {
        "per_year": -math.expm1(-losses / exposure_chunk_years),
        "ci95": [-math.expm1(-low), -math.expm1(-high)],
        "method": "poisson score interval",
    }


def any_loss(rate_per_chunk_year: float, chunks: int, years: float = 1.0) -> float:
    """Upper bound on P(lose any of ``chunks``) in ``years`` (Harris-FKG, ``user_durability``)."""
    if not math.isfinite(rate_per_chunk_year):
        return 1.0
    p = -math.expm1(-rate_per_chunk_year * years)
    return float(-math.expm1(chunks * math.log1p(-p))) if p < 1 else 1.0


def _lifetime_for_period_probability(p: float) -> float:
    if p <= 0:
        return math.inf
    if p >= 1:
        return 0.0
    return -1.0 / math.log1p(-p)


def sanity_check(
    *,
    k: int = 4,
    n: int = 6,
    p: float = 0.2,
    nodes: int = 10_000,
    chunks: int = 20_000,
    steps: int = 12,
    seed: int = 1,
) -> dict[str, Any]:
    """Issue 5's hand-computable case, run through the same :func:`simulate`.

    Each node fails within one year with probability p; no repair, outages
    or disasters, no proximity rule. The fraction of chunks lost must match
    the binomial tail. Chunks share nodes (each node holds about
    ``chunks * n / nodes`` packets), which correlates their fates; the
    standard error used for z therefore adds the covariance of every pair of
    chunks that shares a node, ``p(1-p)(a-b)^2`` with a and b the loss
    probability of the other n-1 packets given the shared node dead or
    alive. A pair sharing s > 1 nodes is counted s times with the one-node
    covariance; such pairs are rare (about (n^2/nodes)^2 / 2 of all pairs).
    The plain binomial error is reported beside it.
    """
    config = SimConfig(
        nodes=nodes,
        chunks=chunks,
        years=1.0,
        step_days=DAYS_PER_YEAR / steps,
        k=k,
        n=n,
        repair=False,
        mean_lifetime_years=_lifetime_for_period_probability(p),
        outage_rate_per_year=0.0,
        disaster_rate_per_year=0.0,
        min_distance_km=0.0,
    )
    outcome = simulate(config, seed)
    placed = outcome.chunks_placed
    lost = int((outcome.lost_step >= 0).sum())
    observed = lost / placed
    expected = binomial_loss_probability(k, n, p)
    naive_var = placed * expected * (1.0 - expected)
    # Loss needs n-k+1 failures: n-k more among the other n-1 packets if the
    # shared node failed, n-k+1 of them if it did not.
    given_dead = binomial_tail(n - k, n - 1, p)
    given_alive = binomial_tail(n - k + 1, n - 1, p)
    degree = outcome.initial_node_degree.astype(np.float64)
    sharing_pairs = float((degree * (degree - 1.0) / 2.0).sum())
    covariance = p * (1.0 - p) * (given_dead - given_alive) ** 2
    var = naive_var + 2.0 * sharing_pairs * covariance
    se = math.sqrt(var) / placed
    naive_se = math.sqrt(naive_var) / placed
    exact = 0.0 if observed == expected else math.inf
    z = (observed - expected) / se if se > 0 else exact
    return {
        "k": k,
        "n": n,
        "p": p,
        "nodes": nodes,
        "chunks": placed,
        "steps": steps,
        "seed": seed,
        "lost": lost,
        "observed": observed,
        "expected": expected,
        "se": se,
        "binomial_se": naive_se,
        "design_effect": var / naive_var if naive_var > 0 else 1.0,
        "z": z,
        "passed": abs(z) < 4.5,
    }


def summarise(outcome: SimOutcome) -> dict[str, Any]:
    """Turn raw counts into the figures issue 5 asks for (JSON-ready)."""
    cfg = outcome.config
    steps = cfg.steps
    horizon_years = steps * cfg.step_years
    lost_mask = outcome.lost_step >= 0
    lost = int(lost_mask.sum())
    lost_years = (outcome.lost_step[lost_mask] + 1) * cfg.step_years
    exposure = (outcome.chunks_placed - lost) * horizon_years + float(lost_years.sum())
    events = int(np.unique(outcome.lost_step[lost_mask]).size)
    loss = loss_estimate(lost, exposure)
    loss.update(
        lost_chunks=lost,
        lost_after_disaster=int(outcome.lost_by_disaster.sum()),
        lost_to_churn_only=lost - int(outcome.lost_by_disaster.sum()),
        loss_events=events,
        exposure_chunk_years=exposure,
    )
    real_chunks = cfg.nodes * cfg.stored_bytes_per_node / (cfg.n * cfg.packet_bytes)
    scale = real_chunks / max(1, outcome.chunks_placed)
    moved = outcome.packets_read_per_step + outcome.packets_written_per_step
    packets_moved = int(moved.sum())
    sample_bytes = packets_moved * cfg.packet_bytes
    per_node_year = sample_bytes * scale / (cfg.nodes * horizon_years)
    # Whole simulated years; a leftover fraction of a step folds into the last
    # one, and each bin is a rate (bytes per node per year) over its own length.
    full_years = max(1, round(horizon_years))
    year_of_step = np.minimum(
        ((np.arange(steps) + 0.5) * cfg.step_years).astype(np.intp), full_years - 1
    )
    moved_by_year = np.bincount(year_of_step, weights=moved, minlength=full_years)
    steps_by_year = np.bincount(year_of_step, minlength=full_years)
    by_year = [
        float(total * cfg.packet_bytes * scale / (cfg.nodes * count * cfg.step_years))
        for total, count in zip(moved_by_year, steps_by_year, strict=True)
        if count
    ]
    samples = outcome.unavailable_fraction_samples
    return {
        "config": {**attrs.asdict(cfg), "repair_threshold": cfg.threshold, "steps": steps},
        "seed": outcome.seed,
        "chunks_placed": outcome.chunks_placed,
        "placement_failures": outcome.placement_failures,
        "loss": loss,
        "repair": {
            "repairs": int(outcome.repairs_per_step.sum()),
            "packets_read": int(outcome.packets_read_per_step.sum()),
            "packets_written": int(outcome.packets_written_per_step.sum()),
            "retries_too_few_reachable": outcome.repair_blocked_unreachable,
            "retries_no_placement": outcome.repair_placement_failures,
            "sample_bytes": sample_bytes,
            "scale_factor": scale,
            "bytes_per_node_year": per_node_year,
            "kbit_s_per_node": per_node_year * 8.0 / SECONDS_PER_YEAR / 1000.0,
            "bytes_per_node_by_year": by_year,
            "meaning": (
                "mean bytes each node sends (and, equally, receives) for repair, "
                f"scaled to {cfg.stored_bytes_per_node / 1e9:g} GB of packets stored per node"
            ),
        },
        "unavailability": {
            "mean_fraction": float(samples.mean()) if samples.size else 0.0,
            "max_fraction": float(samples.max()) if samples.size else 0.0,
            "samples": int(samples.size),
            "node_down_fraction": outcome.node_down_fraction,
        },
        "churn": {"departures": outcome.departures},
        "disasters": {
            "count": outcome.disasters,
            "nodes_killed": outcome.disaster_nodes_killed,
            "max_packets_of_one_chunk_in_one_disaster": outcome.disaster_max_packets_one_chunk,
        },
        "runtime_s": outcome.runtime_s,
    }
