"""Durability of one user's backup under the repair policy the node ships (issue 15).

The grid model of ``simulations.durability`` answers "how often is a chunk lost" for a
datacenter-like grid.  A user asks something else: *what is the chance that I lose any
file of my 100 GB backup this year, and for how long does my backup last if my machine
burns down?*  This module answers that, for the policy the node really runs:

* **The shipped policy**, read from ``gridnode.config`` defaults (so the figures follow
  when the defaults change): ``redundancy`` k-of-n, ``repair_after_s`` (a holder out of
  the member view this long is taken for gone), ``repair_delegates`` and
  ``repair_lease_s``, ``repair_threshold``.  ``gridnode/repair.py`` repairs a chunk
  once ``repair_threshold`` of its holders are gone (r = n - that), counts a holder gone
  from its last sighting kept in the catalog (detection "last_seen") and rebuilds only
  the gone holders' packets (rebuild "gone").  The node before issue 15 repaired at the
  first gone holder (r = n - 1), rebuilt *every* packet it could not fetch, also those
  of holders that were only away, and kept its timer in memory (a holder gone only once
  the running repairer had watched it missing for ``repair_after_s``: detection
  "observed"); ``shipped_policy`` reads which one the node is.
* **Availability.**  "home": machines on 20-50 % of the time in one session a day
  (most around a shared evening, the rest at any hour), a day skipped now and then,
  and a couple of multi-day absences a year.  "datacenter": always on except outages
  (12 a year, a day each on average: down about 3 % of the time).
* **Chunks** are 1.2 MB on average (FastCDC with ``CHUNK_AVG`` 1 MiB cuts about
  1.25 MiB chunks from large files; files' last chunks are smaller), so 100 GB is about
  83,000 chunks, each stored as n packets of chunk/k bytes.

How the figures are computed, and why this way.  A loss of 1e-7 per chunk-year cannot
be counted by Monte Carlo.  The loss mechanism is simple once the repair time is known:
a chunk is lost when more packets' holders *leave for good* than it can spare before
the repair that follows the first departure completes.  Departures are a Poisson
process (rate lambda per node, 1 %/year to 50 %/year), independent of availability.
What is hard is the repair time W: it depends on the daily cycles, on the repairer
being up, on k holders being reachable at once, and on spurious repairs moving packets
around.  So:

1. **The Monte Carlo** (:func:`simulate`, vectorised over chunks, steps of minutes)
   runs the shipped policy over weeks with real availability schedules and departures
   at an elevated *measurement* rate, and records every repair episode's duration W
   (from the departure that starts it to the repair that replaces the departed packets),
   the repairs (spurious ones apart), their traffic, losses, and whether a restore at a
   random instant could read each chunk.
2. **The model's loss figure** is a conditional Monte Carlo estimate: for each observed
   episode, the exact probability that at least ``r - k + 1`` of the ``r`` remaining
   holders leave within its W, averaged over episodes.  An episode still open at the
   end of the run is taken to last as long again (a memoryless rest of mean its
   elapsed time); the bound with every open episode never repaired within the year is
   reported beside it.  This is unbiased for the renewal process the Monte Carlo
   runs, exact for any departure rate small enough that departures do not change W,
   and it has a standard error from the episodes' spread.
3. **The analytic Markov baseline** (:func:`markov_loss_rate`), computed in the same
   run: a continuous-time chain over surviving packets, departures at rate j*lambda,
   the detection delay as an Erlang stage (64 phases, near deterministic), then an
   exponential wait for a repair opportunity whose mean comes from independent,
   memoryless availability (the textbook assumption).  Its absorption probability is
   computed by dynamic programming over the (acyclic) degraded states, a sum of
   positive terms, so it keeps full relative precision at 1e-30.
4. **Any file of a backup**: chunk losses are increasing events in the independent
   departures, so P(no loss among N chunks) >= the product of the chunks' (Harris-FKG);
   the figure ``1 - (1 - p)^N`` is therefore an upper bound on the chance of losing any
   of them, and the time it gives to a first loss a lower bound.
5. **The source destroyed**: without delegates nothing is repaired, and a chunk is lost
   once m = n - k + 1 of its holders left (binomial, exact).  With d delegates, the
   repair goes on at the delegates' rate (measured in a Monte Carlo run with d
   repairers per chunk) until the last delegate leaves (departures at the same rate,
   never replaced: the owner that would choose new ones is gone) or their lease runs
   out (the owner renewed it at half-time, so between half and a whole lease is left).

:func:`validate` checks the Monte Carlo's counted losses against the Markov chain at a
departure rate where losses are countable, and the conditional estimate against both.

Not modelled: network partitions, correlated departures (disasters: see
``simulations.durability``), capacity and bandwidth limits on repair, repair of the
data-assembly records (small, stored like chunks), a chunk whose packets a spurious
repair placed on the same node twice (rare: placement draws from hundreds of nodes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Final, Literal

import attrs
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]

HOUR: Final = 3600.0
DAY: Final = 86_400.0
YEAR: Final = 365.25 * DAY
#: Average chunk size of a real backup (see the module doc).
MEAN_CHUNK_BYTES: Final = 1.2e6
BACKUP_BYTES: Final = 100e9
#: Erlang phases standing for the deterministic detection delay in the Markov chain.
ERLANG_PHASES: Final = 64
#: Departure rates (per node per year, as probabilities) of the user-level tables.
DEPARTURE_RATES: Final = (0.01, 0.05, 0.10, 0.20, 1.0 - math.exp(-1.0 / 3.0), 0.50)
MAX_STEPS: Final = 200_000

Detection = Literal["observed", "last_seen"]
Rebuild = Literal["unreachable", "gone"]


def _hand_on_years() -> float | None:
    try:
        from gridnode.delegation import HANDON_S
    except ImportError:
        return None
    return float(HANDON_S) / YEAR


def shipped_policy() -> dict[str, Any]:
    """The node's defaults, read from ``gridnode.config`` so the model follows them."""
    from gridnode.config import NodeConfig

    fields = attrs.fields_dict(NodeConfig)

    def default(name: str, fallback: Any) -> Any:
        field = fields.get(name)
        return fallback if field is None else field.default

    k_text, n_text = str(default("redundancy", "4/6")).split("/")
    k, n = int(k_text), int(n_text)
    # gridnode/repair.py: a chunk is repaired once ``repair_threshold`` of its holders are
    # gone (r = n - that), counted from the last sighting kept in the catalog, and only
    # the gone holders' packets are rebuilt.  A node without the key repaired at the
    # first gone holder, on an in-memory timer, rebuilding every unreachable packet.
    current = "repair_threshold" in fields
    gone_count = min(int(default("repair_threshold", 1)), n - k)
    return {
        "k": k,
        "n": n,
        "repair_threshold": n - gone_count,
        "repair_after_s": float(default("repair_after_s", 3600.0)),
        "detection": "last_seen" if current else "observed",
        "rebuild": "gone" if current else "unreachable",
        "repair_delegates": int(default("repair_delegates", 0)),
        # Delegates hand the capability on (a signed chain, gridnode.delegation), within
        # the owner's hand-on limit; versions without it let repair end with the lease.
        "hand_on_years": _hand_on_years() if current else None,
        "repair_lease_s": float(default("repair_lease_s", 30 * DAY)),
    }


def backup_chunks(backup_bytes: float = BACKUP_BYTES) -> int:
    return math.ceil(backup_bytes / MEAN_CHUNK_BYTES)


def departure_rate(probability_per_year: float) -> float:
    """Poisson rate (per year) for a yearly departure probability."""
    return -math.log1p(-probability_per_year)


# ---------------------------------------------------------------------------
# Availability


@attrs.frozen(kw_only=True)
class Availability:
    """Who is up when.  Defaults are the "home" model; see :func:`availability`."""

    name: str
    daily: bool = True
    on_fraction: tuple[float, float] = (0.2, 0.5)
    #: Share of machines whose session centres on the same evening (one region's
    #: timezone); the others are spread over the day.
    evening_share: float = 0.7
    evening_centre_h: float = 20.0
    session_jitter_h: float = 1.0
    skip_day_probability: float = 0.1
    absence_rate_per_year: float = 2.0
    absence_mean_days: float = 4.0

    def mean_up(self) -> float:
        """Expected fraction of time a node is up (analytic, for the Markov baseline)."""
        absent = self.absence_rate_per_year * self.absence_mean_days / 365.25
        if not self.daily:
            return 1.0 / (1.0 + absent)
        lo, hi = self.on_fraction
        return (lo + hi) / 2.0 * (1.0 - self.skip_day_probability) * max(0.0, 1.0 - absent)

    def mean_down_s(self) -> float:
        """Mean length of a down period (analytic, for the Markov baseline)."""
        if not self.daily:
            return self.absence_mean_days * DAY
        return (1.0 - self.mean_up()) * DAY

    def schedule(
        self, rng: np.random.Generator, nodes: int, steps: int, step_s: float
    ) -> BoolArray:
        """Boolean matrix up[step, node]."""
        t_h = (np.arange(steps) * step_s / HOUR).astype(np.float32)
        up = np.ones((steps, nodes), dtype=np.bool_)
        if self.daily:
            days = math.ceil(steps * step_s / DAY) + 2
            lo, hi = self.on_fraction
            frac = rng.uniform(lo, hi, nodes)
            length_mean = 24.0 * frac
            evening = rng.random(nodes) < self.evening_share
            centre = np.where(
                evening,
                self.evening_centre_h + rng.normal(0.0, 1.5, nodes),
                rng.uniform(0.0, 24.0, nodes),
            )
            length = np.clip(
                length_mean[None, :] * np.exp(rng.normal(0.0, 0.25, (days, nodes))), 0.5, 23.5
            )
            start = (
                (np.arange(days) - 1)[:, None] * 24.0
                + centre[None, :]
                - length / 2.0
                + rng.normal(0.0, self.session_jitter_h, (days, nodes))
            )
            on_day = rng.random((days, nodes)) >= self.skip_day_probability
            up[:] = False
            day_of = (t_h // 24.0).astype(np.intp) + 1  # session index d starts on day d-1
            for shift in (-1, 0, 1):
                d = np.clip(day_of + shift, 0, days - 1)
                s = start[d]
                inside = (t_h[:, None] >= s) & (t_h[:, None] < s + length[d]) & on_day[d]
                up |= inside
        horizon_h = steps * step_s / HOUR
        count = int(rng.poisson(self.absence_rate_per_year * horizon_h / (365.25 * 24) * nodes))
        who = rng.integers(nodes, size=count)
        begin = rng.uniform(-self.absence_mean_days * 24.0, horizon_h, count)
        end = begin + rng.exponential(self.absence_mean_days * 24.0, count)
        step_h = step_s / HOUR
        for node, b, e in zip(who.tolist(), begin.tolist(), end.tolist(), strict=True):
            up[max(0, int(b / step_h)) : max(0, int(e / step_h)), node] = False
        return up


def availability(name: str) -> Availability:
    if name == "home":
        return Availability(name="home")
    if name == "datacenter":
        return Availability(
            name="datacenter", daily=False, absence_rate_per_year=12.0, absence_mean_days=1.0
        )
    if name == "always":
        return Availability(name="always", daily=False, absence_rate_per_year=0.0)
    raise ValueError(f"unknown availability model {name!r}")


def _runs(up: BoolArray) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Steps each node has been down (off-run) and up (up-run) without a break."""
    off = np.zeros(up.shape, dtype=np.int32)
    on = np.zeros(up.shape, dtype=np.int32)
    prev_off = np.zeros(up.shape[1], dtype=np.int32)
    prev_on = np.zeros(up.shape[1], dtype=np.int32)
    for t in range(up.shape[0]):
        prev_off = np.where(up[t], 0, prev_off + 1).astype(np.int32)
        prev_on = np.where(up[t], prev_on + 1, 0).astype(np.int32)
        off[t] = prev_off
        on[t] = prev_on
    return off, on


# ---------------------------------------------------------------------------
# The Monte Carlo


@attrs.frozen(kw_only=True)
class Policy:
    """A code and a repair policy; ``shipped()`` is what the node runs."""

    k: int
    n: int
    repair_threshold: int
    repair_after_s: float
    detection: Detection = "observed"
    #: Which packets a repair rebuilds: every one it could not fetch (shipped), or only
    #: those of holders taken for gone.
    rebuild: Rebuild = "unreachable"

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.k < self.n:
            raise ValueError(f"need 1 <= k < n, got {self.k}-of-{self.n}")
        if not self.k <= self.repair_threshold < self.n:
            raise ValueError(
                f"repair threshold {self.repair_threshold} must satisfy k <= r < n "
                f"for {self.k}-of-{self.n}"
            )
        if self.repair_after_s < 0:
            raise ValueError("repair_after_s must be >= 0")

    @classmethod
    def shipped(cls) -> Policy:
        s = shipped_policy()
        return cls(
            k=s["k"],
            n=s["n"],
            repair_threshold=s["repair_threshold"],
            repair_after_s=s["repair_after_s"],
            detection=s["detection"],
            rebuild=s["rebuild"],
        )

    @property
    def label(self) -> str:
        return (
            f"{self.k}-of-{self.n} r={self.repair_threshold} "
            f"after {_duration(self.repair_after_s)} ({self.detection}"
            + (", gone only" if self.rebuild == "gone" else "")
            + ")"
        )


def _duration(seconds: float) -> str:
    if seconds >= DAY and seconds % DAY == 0:
        return f"{seconds / DAY:g}d"
    if seconds >= HOUR:
        return f"{seconds / HOUR:g}h"
    return f"{seconds:g}s"


@attrs.frozen(kw_only=True)
class SimSettings:
    nodes: int = 1_000
    chunks: int = 2_000
    days: float = 40.0
    step_s: float = 900.0
    warmup_days: float = 3.0
    repairers: int = 1
    #: Departure rate (per node per year) of the run; the loss figures for other rates
    #: come from the episodes (module doc).
    departures_per_year: float = 3.0
    #: Start every chunk at the repair threshold (for thresholds below n - 1, where
    #: reaching it by departures takes longer than a run).
    start_degraded: bool = False

    def __attrs_post_init__(self) -> None:
        if self.nodes < 2 or self.chunks < 1 or self.days <= 0 or self.step_s <= 0:
            raise ValueError("nodes >= 2, chunks >= 1, days > 0 and step_s > 0 are required")
        if self.repairers < 1:
            raise ValueError("at least one repairer")


@attrs.frozen(kw_only=True)
class SimResult:
    policy: Policy
    availability: str
    settings: SimSettings
    chunk_years: float
    losses: int
    repairs: int
    spurious_repairs: int
    #: Packets moved by repairs that replaced a departed holder's packet, and by the
    #: others (spurious: only holders that were away).
    packets_departure: int
    packets_spurious: int
    episodes_w_s: FloatArray
    #: Elapsed time of the episodes still open at the end of the run.
    open_elapsed_s: FloatArray
    unreadable_fraction: float
    node_up_fraction: float
    runtime_s: float


def simulate(
    policy: Policy, avail: Availability, settings: SimSettings, seed: int = 1
) -> SimResult:
    """Run the policy over ``settings.days`` on a fresh grid; every loop is bounded."""
    started = time.perf_counter()
    rng_sched, rng_dep, rng_place = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    s = settings
    k, n, r = policy.k, policy.n, policy.repair_threshold
    warm = round(s.warmup_days * DAY / s.step_s)
    steps = round(s.days * DAY / s.step_s)
    if warm + steps > MAX_STEPS:
        raise ValueError(f"{warm + steps} steps exceed the bound of {MAX_STEPS}")
    m = s.nodes
    up_all = np.zeros((warm + steps, m + 1), dtype=np.bool_)
    up_all[:, :m] = avail.schedule(rng_sched, m, warm + steps, s.step_s)
    off_all, on_all = _runs(up_all)
    dead = m  # a phantom node, never up: holders that left for good point here
    delay = max(1, math.ceil(policy.repair_after_s / s.step_s))

    def draw_up(t: int, size: int) -> IntArray:
        candidates = np.flatnonzero(up_all[t, :m])
        if candidates.size == 0:
            candidates = np.arange(m)
        return candidates[rng_place.integers(candidates.size, size=size)].astype(np.intp)

    holders = draw_up(warm, s.chunks * n).reshape(s.chunks, n)
    repairers = rng_place.integers(m, size=(s.chunks, s.repairers)).astype(np.intp)
    p_dep = -math.expm1(-s.departures_per_year * s.step_s / YEAR)
    episode_start = np.full(s.chunks, -1, dtype=np.int64)
    # The departed packet whose departure brought the chunk down to the threshold: the
    # episode ends when it is replaced.
    episode_slot = np.zeros(s.chunks, dtype=np.intp)
    dead_since = np.zeros((s.chunks, n), dtype=np.int64)
    if s.start_degraded:
        # Every chunk starts at the threshold, its n - r departures spread over the
        # last day (so that episodes start at every time of day).
        day = round(DAY / s.step_s)
        for row in range(s.chunks):
            slots = rng_place.choice(n, size=n - r, replace=False)
            holders[row, slots] = m
            dead_since[row, slots] = warm - rng_place.integers(0, max(1, day), n - r)
            episode_slot[row] = slots[int(np.argmax(dead_since[row, slots]))]
            episode_start[row] = dead_since[row, episode_slot[row]]
    episodes: list[FloatArray] = []
    half = warm + steps // 2
    losses = repairs = spurious = moved_departure = moved_spurious = 0
    unreadable = 0.0
    dead_need = n - r  # departed packets that open an episode (r = n-1: the first)
    for t in range(warm, warm + steps):
        leaving = rng_dep.random(m + 1) < p_dep
        leaving[dead] = False
        if leaving.any():
            hit = leaving[holders]
            holders[hit] = dead
            dead_since[hit] = t
        is_dead = holders == dead
        n_dead = is_dead.sum(axis=1)
        lost = n - n_dead < k
        if lost.any():
            losses += int(lost.sum())
            rows = np.flatnonzero(lost)
            holders[rows] = draw_up(t, rows.size * n).reshape(rows.size, n)
            episode_start[rows] = -1
            is_dead[rows] = False
            n_dead[rows] = 0
        opening = (episode_start < 0) & (n_dead >= dead_need) & (t < half)
        if opening.any():
            rows = np.flatnonzero(opening)
            episode_start[rows] = t
            # The latest departure (this step's) crossed the threshold.
            latest = np.where(is_dead[rows], dead_since[rows], -1)
            episode_slot[rows] = np.argmax(latest, axis=1)
        up_t = up_all[t]
        reach = up_t[holders]
        n_reach = reach.sum(axis=1)
        unreadable += float((n_reach < k).mean())
        rep_on = on_all[t][repairers].max(axis=1)
        watched = rep_on >= delay if policy.detection == "observed" else rep_on > 0
        away = np.where(is_dead, t - dead_since, off_all[t][holders])
        gone = (away >= delay) & watched[:, None]
        trigger = (n - gone.sum(axis=1) <= r) & (n_reach >= k)
        if trigger.any():
            rows = np.flatnonzero(trigger)
            replace = ~reach[rows] if policy.rebuild == "unreachable" else gone[rows]
            count = int(replace.sum())
            repairs += rows.size
            had_dead = is_dead[rows].any(axis=1)
            spurious += int((~had_dead).sum())
            moved = k + replace.sum(axis=1)
            moved_departure += int(moved[had_dead].sum())
            moved_spurious += int(moved[~had_dead].sum())
            sub = holders[rows]
            sub[replace] = draw_up(t, count)
            holders[rows] = sub
            done = rows[(episode_start[rows] >= 0) & (holders[rows, episode_slot[rows]] != dead)]
            if done.size:
                episodes.append((t - episode_start[done]).astype(np.float64) * s.step_s)
                episode_start[done] = -1
    open_rows = episode_start >= 0
    open_elapsed = (warm + steps - episode_start[open_rows]).astype(np.float64) * s.step_s
    chunk_years = s.chunks * steps * s.step_s / YEAR
    return SimResult(
        policy=policy,
        availability=avail.name,
        settings=s,
        chunk_years=chunk_years,
        losses=losses,
        repairs=repairs,
        spurious_repairs=spurious,
        packets_departure=moved_departure,
        packets_spurious=moved_spurious,
        episodes_w_s=np.concatenate(episodes) if episodes else np.zeros(0),
        open_elapsed_s=open_elapsed,
        unreadable_fraction=unreadable / steps,
        node_up_fraction=float(up_all[warm:, :m].mean()),
        runtime_s=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------
# Loss figures: conditional Monte Carlo and the Markov baseline


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


def _binomial_tail_vec(at_least: int, trials: int, p: FloatArray) -> FloatArray:
    out = np.zeros_like(p)
    if at_least <= 0:
        return np.ones_like(p)
    for j in range(at_least, trials + 1):
        out += math.comb(trials, j) * p**j * (1.0 - p) ** (trials - j)
    return out


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
    probs = _binomial_tail_vec(r - k + 1, r, -np.expm1(-lam * w_years))
    nodes, weights = np.polynomial.laguerre.laggauss(24)
    mean_rest = np.maximum(open_elapsed_s, residual_s)
    open_w = (open_elapsed_s[:, None] + mean_rest[:, None] * nodes[None, :]) / YEAR
    open_probs = _binomial_tail_vec(r - k + 1, r, -np.expm1(-lam * open_w)) @ weights
    per_episode = np.concatenate([probs, open_probs])
    stuck = _binomial_tail_vec(r - k + 1, r, np.array([-math.expm1(-lam)]))[0]
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


def any_loss(rate_per_chunk_year: float, chunks: int, years: float = 1.0) -> float:
    """Upper bound on P(lose any of ``chunks``) in ``years`` (Harris-FKG, module doc)."""
    if not math.isfinite(rate_per_chunk_year):
        return 1.0
    p = -math.expm1(-rate_per_chunk_year * years)
    return float(-math.expm1(chunks * math.log1p(-p))) if p < 1 else 1.0


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
    never_1d = _binomial_tail_vec(n - k + 1, n, -np.expm1(-lam * grid))
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
# Putting a policy together


def traffic(result: SimResult, lam: float, backup_bytes: float = BACKUP_BYTES) -> dict[str, float]:
    """Repair traffic of a node repairing a ``backup_bytes`` backup, at departure rate lam.

    Per repair the repairer downloads k packets and uploads the rebuilt ones.  Spurious
    repairs do not depend on departures (their rate is the Monte Carlo's); the others
    happen once per n - r departures.  On a grid where every member backs up as
    much, each member moves as much again as a holder for the others' repairs.
    """
    p = result.policy
    chunks = backup_bytes / MEAN_CHUNK_BYTES
    packet = MEAN_CHUNK_BYTES / p.k
    # A chunk's holders leave at n*lam; every n - r departures need one repair (renewal),
    # which moves what the Monte Carlo's departure repairs moved on average.
    departure_repairs = p.n * lam / (p.n - p.repair_threshold)
    done = result.repairs - result.spurious_repairs
    per_repair = result.packets_departure / done if done else p.k + p.n - p.repair_threshold
    packets = result.packets_spurious / result.chunk_years + departure_repairs * per_repair
    per_node = packets * packet * chunks
    return {
        "spurious_repairs_per_chunk_year": result.spurious_repairs / result.chunk_years,
        "departure_repairs_per_chunk_year": departure_repairs,
        "packets_per_departure_repair": per_repair,
        "repairer_bytes_per_year": per_node,
        "repairer_kbit_s": per_node * 8.0 / YEAR / 1000.0,
        "backup_moved_per_year": per_node / backup_bytes,
    }


def evaluate(
    policy: Policy,
    avail: Availability,
    settings: SimSettings,
    *,
    seed: int = 1,
    rates: Sequence[float] = DEPARTURE_RATES,
    chunks: int | None = None,
) -> dict[str, Any]:
    """One policy on one availability model: the Monte Carlo, the model's loss figures
    for each departure rate, and the Markov baseline beside them."""
    result = simulate(policy, avail, settings, seed)
    n_chunks = backup_chunks() if chunks is None else chunks
    wait = markov_wait_years(policy, avail, settings.repairers)
    residual = residual_s(result, avail)
    rows = []
    for p_year in rates:
        lam = departure_rate(p_year)
        model = conditional_loss_rate(
            policy, result.episodes_w_s, result.open_elapsed_s, lam, residual
        )
        markov = markov_loss_rate(policy, lam, wait)
        rows.append(
            {
                "departures_per_year": p_year,
                "chunk_loss_per_year": model["rate"],
                "chunk_loss_se": model["se"],
                "loss_any_file_100gb_per_year": any_loss(model["rate"], n_chunks),
                "loss_any_file_100gb_per_year_hi": any_loss(
                    model["rate"] + 2 * model["se"], n_chunks
                ),
                "loss_any_file_100gb_per_year_if_open_stuck": any_loss(
                    model["rate_open_unrepaired"], n_chunks
                ),
                "markov_chunk_loss_per_year": markov,
                "markov_loss_any_file_100gb_per_year": any_loss(markov, n_chunks),
                "traffic": traffic(result, lam),
            }
        )
    w = result.episodes_w_s
    return {
        "policy": attrs.asdict(policy),
        "label": policy.label,
        "availability": avail.name,
        "repairers": settings.repairers,
        "overhead": policy.n / policy.k,
        "by_departure_rate": rows,
        "repair_time": {
            "episodes": int(w.size),
            "open_at_end": int(result.open_elapsed_s.size),
            "open_fraction": result.open_elapsed_s.size
            / max(1, result.open_elapsed_s.size + w.size),
            "residual_mean_h_assumed_for_open": residual / HOUR,
            "mean_h": float(w.mean() / HOUR) if w.size else None,
            "p99_h": float(np.quantile(w, 0.99) / HOUR) if w.size else None,
            "max_h": float(w.max() / HOUR) if w.size else None,
            "markov_mean_h": (policy.repair_after_s + wait * YEAR) / HOUR,
        },
        "restore_unreadable_fraction": result.unreadable_fraction,
        "node_up_fraction": result.node_up_fraction,
        "monte_carlo": {
            "chunk_years": result.chunk_years,
            "losses_counted": result.losses,
            "measurement_departures_per_year": settings.departures_per_year,
            "repairs": result.repairs,
            "spurious_repairs": result.spurious_repairs,
            "runtime_s": result.runtime_s,
        },
    }


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


# ---------------------------------------------------------------------------
# The suite: validation, the k-of-n sweep, the policy sweeps, the source destroyed

#: Yearly departure probability of the headline figures, and the one the recommended
#: defaults must meet the target at: a mean membership of 3 years, the grid model's
#: baseline.
HEADLINE_DEPARTURES: Final = 1.0 - math.exp(-1.0 / 3.0)
#: The worst departure rate of the issue's range, reported beside the headline.
DESIGN_DEPARTURES: Final = 0.50
TARGET_ANY_LOSS: Final = 0.01
CODES_FULL: Final = (
    (4, 6),
    (8, 12),
    (16, 24),
    (10, 16),
    (8, 16),
    (16, 32),
    (4, 12),
    (8, 24),
    (10, 30),
)
CODES_QUICK: Final = ((4, 6), (16, 32), (8, 24))
RECOMMENDED_DELAY_S: Final = 3 * DAY
#: Above this share of repair episodes still open at the end of a run, a policy is not
#: recommended (its repairs are often stuck, not slow).
MAX_OPEN_FRACTION: Final = 0.05


@attrs.frozen(kw_only=True)
class UserSuite:
    sim: SimSettings
    codes: tuple[tuple[int, int], ...]
    delays_s: tuple[float, ...]
    validation: SimSettings
    delegate_samples: int

    @classmethod
    def for_mode(cls, mode: str) -> UserSuite:
        """ "tiny" (tests: structure, not figures), "quick" or "full"."""
        if mode == "tiny":
            return cls(
                sim=SimSettings(nodes=200, chunks=100, days=8.0, step_s=3600.0),
                codes=((4, 6), (8, 24)),
                delays_s=(HOUR, 3 * DAY),
                validation=SimSettings(
                    nodes=300, chunks=500, days=60.0, step_s=6 * HOUR, departures_per_year=6.0
                ),
                delegate_samples=200,
            )
        if mode not in ("quick", "full"):
            raise ValueError(f"unknown mode {mode!r}; use tiny, quick or full")
        if mode == "quick":
            return cls(
                sim=SimSettings(nodes=400, chunks=300, days=16.0, step_s=3600.0),
                codes=CODES_QUICK,
                delays_s=(HOUR, DAY, 3 * DAY),
                validation=SimSettings(
                    nodes=500, chunks=1_000, days=60.0, step_s=6 * HOUR, departures_per_year=6.0
                ),
                delegate_samples=1_000,
            )
        return cls(
            sim=SimSettings(nodes=1_500, chunks=2_000, days=50.0, step_s=900.0),
            codes=CODES_FULL,
            delays_s=(HOUR, 6 * HOUR, DAY, 3 * DAY, 7 * DAY),
            validation=SimSettings(
                nodes=1_000, chunks=4_000, days=60.0, step_s=3 * HOUR, departures_per_year=6.0
            ),
            delegate_samples=4_000,
        )


def candidate(
    k: int, n: int, *, delay_s: float = RECOMMENDED_DELAY_S, r: int | None = None
) -> Policy:
    """The policy the sweep proposes: the timer from the grid's last-seen time and only
    the packets of gone holders rebuilt (see the module doc for why)."""
    return Policy(
        k=k,
        n=n,
        repair_threshold=n - 1 if r is None else r,
        repair_after_s=delay_s,
        detection="last_seen",
        rebuild="gone",
    )


def _row_at(evaluation: dict[str, Any], p_year: float) -> dict[str, Any]:
    rows: list[dict[str, Any]] = evaluation["by_departure_rate"]
    return min(rows, key=lambda row: abs(row["departures_per_year"] - p_year))


def _source_lost(
    policy: Policy,
    single: dict[str, Any],
    many: dict[str, Any] | None,
    p_year: float,
    *,
    delegates: int,
    lease_s: float | None,
    renewed: bool,
    samples: int,
) -> dict[str, Any]:
    lam = departure_rate(p_year)
    rate_one = _row_at(single, p_year)["chunk_loss_per_year"]
    rate_many = _row_at(many, p_year)["chunk_loss_per_year"] if many is not None else rate_one
    out = after_source_lost(
        policy,
        lam,
        backup_chunks(),
        delegates=delegates,
        lease_years=(lease_s or 0.0) / YEAR,
        rate_many=rate_many,
        rate_one=rate_one,
        samples=samples,
        renewed=renewed,
    )
    out.update(renewed=renewed, departures_per_year=p_year)
    return out


def _delegates_needed(
    policy: Policy, single: dict[str, Any], many: dict[str, Any], suite: UserSuite
) -> dict[str, Any]:
    """How many delegates, never replaced and with no lease limit, keep a 100 GB backup
    at or under the target for 5 years after the source is lost (the rate with two or
    more is the one measured with two: conservative for more)."""
    rows = []
    for p_year in (HEADLINE_DEPARTURES, DESIGN_DEPARTURES):
        needed = None
        for d in (2, 3, 4, 6, 8, 12, 16, 24, 32):
            out = _source_lost(
                policy,
                single,
                many,
                p_year,
                delegates=d,
                lease_s=None,
                renewed=False,
                samples=suite.delegate_samples,
            )
            five = out["loss_any_within_5_years"]
            if five is not None and five <= TARGET_ANY_LOSS:
                needed = d
                break
        rows.append({"departures_per_year": p_year, "delegates": needed})
    return {"policy": policy.label, "within_5_years_at_target": rows}


def run_user(mode: str = "full", seed: int = 1) -> dict[str, Any]:
    """Everything issue 15 asks of the model, for the benchmark and the CLI."""
    started = time.perf_counter()
    suite = UserSuite.for_mode(mode)
    shipped = shipped_policy()
    ship = Policy.shipped()
    home, dc = availability("home"), availability("datacenter")
    results: dict[str, Any] = {
        "mode": mode,
        "shipped_policy": shipped,
        "backup": {
            "bytes": BACKUP_BYTES,
            "mean_chunk_bytes": MEAN_CHUNK_BYTES,
            "chunks": backup_chunks(),
        },
        "availability_models": {
            "home": {**attrs.asdict(home), "mean_up": home.mean_up()},
            "datacenter": {**attrs.asdict(dc), "mean_up": dc.mean_up()},
        },
        "headline_departures_per_year": HEADLINE_DEPARTURES,
        "design_departures_per_year": DESIGN_DEPARTURES,
        "target_loss_any_file_per_year": TARGET_ANY_LOSS,
    }
    results["validation"] = validate(suite.validation, seed)

    # The k-of-n sweep: the shipped policy with each code, and the candidate policy.
    sweep: list[dict[str, Any]] = []
    evaluations: dict[tuple[str, str, int, int], dict[str, Any]] = {}
    for k, n in suite.codes:
        for kind, policy in (
            ("shipped", attrs.evolve(ship, k=k, n=n, repair_threshold=n - 1)),
            ("candidate", candidate(k, n)),
        ):
            for avail in (home, dc):
                ev = evaluate(policy, avail, suite.sim, seed=seed)
                evaluations[(kind, avail.name, k, n)] = ev
                sweep.append({"policy_kind": kind, **ev})
    results["sweep"] = sweep

    def meets(ev: dict[str, Any]) -> bool:
        # A policy under which many repairs never complete in the run is out, whatever
        # its estimate (the open episodes would dominate it).
        row = _row_at(ev, HEADLINE_DEPARTURES)
        return bool(
            row["loss_any_file_100gb_per_year_hi"] <= TARGET_ANY_LOSS
            and ev["repair_time"]["open_fraction"] <= MAX_OPEN_FRACTION
        )

    # Recommendation: the cheapest candidate (overhead, then repair traffic) that keeps
    # a 100 GB backup on home machines under the target at the design departure rate.
    ok = [
        (k, n)
        for k, n in suite.codes
        if meets(evaluations[("candidate", "home", k, n)])
        and meets(evaluations[("candidate", "datacenter", k, n)])
    ]

    def risk(code: tuple[int, int]) -> tuple[float, float]:
        """The bound with every open episode stuck, then the estimate."""
        row = _row_at(evaluations[("candidate", "home", *code)], HEADLINE_DEPARTURES)
        return (
            row["loss_any_file_100gb_per_year_if_open_stuck"],
            row["loss_any_file_100gb_per_year"],
        )

    # The least overhead that meets the target; among equals the most robust (repair
    # traffic is then cut by the delay and threshold sweeps below).
    best = min(ok, key=lambda c: (c[1] / c[0], *risk(c))) if ok else min(suite.codes, key=risk)
    bk, bn = best

    # Delay and threshold sweeps for the chosen code, on home machines: the delay with
    # the least traffic that meets the target, then the threshold likewise.
    results["delay_sweep"] = [
        evaluate(candidate(bk, bn, delay_s=d), home, suite.sim, seed=seed) for d in suite.delays_s
    ]
    chosen_delay = RECOMMENDED_DELAY_S
    best_traffic = math.inf
    for ev in results["delay_sweep"]:
        row = _row_at(ev, HEADLINE_DEPARTURES)
        if meets(ev) and row["traffic"]["repairer_bytes_per_year"] < best_traffic:
            best_traffic = row["traffic"]["repairer_bytes_per_year"]
            chosen_delay = ev["policy"]["repair_after_s"]
    half_spare = bn - max(1, (bn - bk) // 2)
    thresholds = sorted({bn - 1, bn - 2, half_spare, max(bk, half_spare - 1)}, reverse=True)
    results["threshold_sweep"] = [
        evaluate(
            candidate(bk, bn, delay_s=chosen_delay, r=r),
            home,
            attrs.evolve(suite.sim, start_degraded=r < bn - 1),
            seed=seed,
        )
        for r in thresholds
        if bk <= r < bn
    ]

    # Pick the threshold: the lowest traffic that still meets the target.
    chosen_r = bn - 1
    best_traffic = math.inf
    for ev in results["threshold_sweep"]:
        row = _row_at(ev, HEADLINE_DEPARTURES)
        if meets(ev) and row["traffic"]["repairer_bytes_per_year"] < best_traffic:
            best_traffic = row["traffic"]["repairer_bytes_per_year"]
            chosen_r = ev["policy"]["repair_threshold"]
    recommended = candidate(bk, bn, delay_s=chosen_delay, r=chosen_r)

    # The source destroyed: the delegates repair with the same policy.
    delegates = int(shipped["repair_delegates"])
    lease_s = float(shipped["repair_lease_s"])
    d_eff = max(2, delegates)

    measured: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    def source_lost_for(policy: Policy) -> dict[str, Any]:
        single = evaluate(policy, home, suite.sim, seed=seed + 1)
        many = evaluate(policy, home, attrs.evolve(suite.sim, repairers=d_eff), seed=seed + 1)
        measured[policy.label] = (single, many)
        out: dict[str, Any] = {
            "policy": policy.label,
            "delegates": d_eff,
            "repair_time_one_repairer_h": single["repair_time"]["mean_h"],
            "repair_time_delegates_h": many["repair_time"]["mean_h"],
        }
        for p_year in (HEADLINE_DEPARTURES, DESIGN_DEPARTURES):
            key = f"departures_{p_year:.3f}"
            out[key] = {
                "without_delegates": _source_lost(
                    policy,
                    single,
                    None,
                    p_year,
                    delegates=0,
                    lease_s=None,
                    renewed=False,
                    samples=suite.delegate_samples,
                ),
                "delegates_shipped_lease": _source_lost(
                    policy,
                    single,
                    many,
                    p_year,
                    delegates=d_eff,
                    lease_s=lease_s,
                    renewed=False,
                    samples=suite.delegate_samples,
                ),
                "delegates_no_lease_limit": _source_lost(
                    policy,
                    single,
                    many,
                    p_year,
                    delegates=d_eff,
                    lease_s=None,
                    renewed=False,
                    samples=suite.delegate_samples,
                ),
                "delegates_renewed": _source_lost(
                    policy,
                    single,
                    many,
                    p_year,
                    delegates=d_eff,
                    lease_s=None,
                    renewed=True,
                    samples=suite.delegate_samples,
                ),
            }
        return out

    results["source_lost"] = {
        "shipped": source_lost_for(ship),
        "recommended": source_lost_for(recommended),
    }
    results["source_lost"]["fixed_delegates_needed"] = _delegates_needed(
        recommended, *measured[recommended.label], suite
    )

    shipped_home = evaluate(ship, home, suite.sim, seed=seed)
    rec_home = evaluate(recommended, home, suite.sim, seed=seed)
    rec_dc = evaluate(recommended, dc, suite.sim, seed=seed)
    results["shipped_home"] = shipped_home
    results["recommended_home"] = rec_home
    results["recommended_datacenter"] = rec_dc
    # Each of the recommended policy's changes undone on its own, on home machines: what
    # the delay alone would do without the others.
    results["ablation"] = [
        evaluate(attrs.evolve(recommended, detection="observed"), home, suite.sim, seed=seed),
        evaluate(attrs.evolve(recommended, rebuild="unreachable"), home, suite.sim, seed=seed),
        evaluate(
            attrs.evolve(recommended, repair_threshold=recommended.n - 1),
            home,
            suite.sim,
            seed=seed,
        ),
    ]
    head = _row_at(shipped_home, HEADLINE_DEPARTURES)
    key = f"departures_{HEADLINE_DEPARTURES:.3f}"
    lost = results["source_lost"]["shipped"][key]
    with_delegates = lost["delegates_shipped_lease"] if delegates > 0 else lost["without_delegates"]
    hand_on_years = shipped.get("hand_on_years")
    if delegates > 0 and hand_on_years:
        # The node ships hand-on (gridnode.delegation): delegates that leave are replaced,
        # so repair goes on, bounded by the owner's signed hand-on limit.  After the limit
        # repair stops with the chunks freshly repaired, so the time to 1 % from then on is
        # about that of no delegates at all: a conservative sum.
        renewed = lost["delegates_renewed"]
        alone = lost["without_delegates"]["years_to_1pct"]
        bounded = None if alone is None else hand_on_years + alone
        years = renewed["years_to_1pct"]
        if years is None or (bounded is not None and years > bounded):
            years = bounded
        with_delegates = {**renewed, "years_to_1pct": years}
    results["recommendation"] = {
        "redundancy": f"{bk}/{bn}",
        "repair_threshold": chosen_r,
        "repair_after_s": recommended.repair_after_s,
        "detection": recommended.detection,
        "rebuild": recommended.rebuild,
        "met_target": bool(ok),
        "codes_meeting_target": [f"{k}/{n}" for k, n in ok],
        "home_at_headline": _row_at(rec_home, HEADLINE_DEPARTURES),
        "home_at_design": _row_at(rec_home, DESIGN_DEPARTURES),
        "datacenter_at_headline": _row_at(rec_dc, HEADLINE_DEPARTURES),
    }
    results["loss_any_file_100gb_per_year"] = head["loss_any_file_100gb_per_year"]
    results["loss_any_file_100gb_per_year_markov"] = head["markov_loss_any_file_100gb_per_year"]
    results["years_to_first_loss_after_source_lost"] = with_delegates["years_to_1pct"]
    results["years_to_first_loss_after_source_lost_median"] = with_delegates["years_to_median"]
    results["years_to_first_loss_after_source_lost_without_delegates"] = lost["without_delegates"][
        "years_to_1pct"
    ]
    results["headline_meaning"] = (
        "shipped defaults, home-machine model, departures "
        f"{HEADLINE_DEPARTURES:.1%}/year (mean membership 3 years), 100 GB = "
        f"{backup_chunks()} chunks. loss_any_file_100gb_per_year: upper bound (Harris-FKG) "
        "on the chance of losing any chunk in a year. years_to_first_loss_after_source_lost: "
        "years after the source is destroyed until the chance of having lost any file "
        f"reaches 1 % (lower bound), with the shipped {delegates} delegates and lease "
        f"({lease_s / DAY:g} days); null when it stays below 1 % for the horizon."
    )
    results["runtime_s"] = time.perf_counter() - started
    return results


# ---------------------------------------------------------------------------
# Output

FLOOR: Final = 1e-30  # log plots show smaller probabilities at this floor


def _clip(value: float | None) -> float:
    if value is None or not math.isfinite(value):
        return 1.0
    return max(FLOOR, value)


def write_plots(results: dict[str, Any], out_dir: Any) -> list[Any]:
    """PNG figures beside the JSON; matplotlib is imported here, only when plotting."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    head = results["headline_departures_per_year"]

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        written.append(out / name)
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {
        ("shipped", "home"): ("o", "tab:red"),
        ("shipped", "datacenter"): ("s", "tab:orange"),
        ("candidate", "home"): ("o", "tab:blue"),
        ("candidate", "datacenter"): ("s", "tab:green"),
    }
    seen: set[tuple[str, str]] = set()
    for row in results["sweep"]:
        key = (row["policy_kind"], row["availability"])
        marker, colour = styles[key]
        y = _clip(_row_at(row, head)["loss_any_file_100gb_per_year"])
        ax.plot(
            [row["overhead"]],
            [y],
            marker=marker,
            color=colour,
            linestyle="none",
            label=None if key in seen else f"{key[0]} policy, {key[1]}",
        )
        seen.add(key)
        ax.annotate(
            f"{row['policy']['k']}/{row['policy']['n']}",
            (row["overhead"], y),
            textcoords="offset points",
            xytext=(4, 2),
            fontsize=7,
        )
    ax.axhline(results["target_loss_any_file_per_year"], color="grey", linestyle="--")
    ax.set_yscale("log")
    ax.set_xlabel("storage overhead n/k")
    ax.set_ylabel("P(lose any file of 100 GB) per year (upper bound)")
    ax.set_title(
        f"k-of-n sweep, departures {head:.0%}/year; shipped policy vs candidate (floor {FLOOR:g})",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    save(fig, "user_kn_sweep.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, colour in (
        ("shipped_home", "tab:red"),
        ("recommended_home", "tab:blue"),
        ("recommended_datacenter", "tab:green"),
    ):
        ev = results[name]
        xs = [row["departures_per_year"] for row in ev["by_departure_rate"]]
        ax.plot(
            xs,
            [_clip(row["loss_any_file_100gb_per_year"]) for row in ev["by_departure_rate"]],
            marker="o",
            color=colour,
            label=f"{name.replace('_', ', ')}: {ev['label']}",
        )
        ax.plot(
            xs,
            [_clip(row["markov_loss_any_file_100gb_per_year"]) for row in ev["by_departure_rate"]],
            linestyle="--",
            color=colour,
            label="  Markov baseline (independent availability)",
        )
    ax.axhline(results["target_loss_any_file_per_year"], color="grey", linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("members leaving per year")
    ax.set_ylabel("P(lose any file of 100 GB) per year")
    ax.set_title("Model (solid) and analytic Markov baseline (dashed)", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, "user_loss_vs_departures.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    head_key = f"departures_{head:.3f}"
    for ax, which in zip(axes, ("shipped", "recommended"), strict=True):
        block = results["source_lost"][which]
        for variant, colour in (
            ("without_delegates", "tab:red"),
            ("delegates_shipped_lease", "tab:orange"),
            ("delegates_no_lease_limit", "tab:purple"),
            ("delegates_renewed", "tab:blue"),
        ):
            curve = block[head_key][variant]["curve"]
            ax.plot(
                [max(1e-4, y) for y in curve["years"]],
                [_clip(p) for p in curve["p_any"]],
                color=colour,
                label=variant.replace("_", " "),
            )
        ax.axhline(0.01, color="grey", linestyle=":")
        ax.axvline(5.0, color="grey", linestyle=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("years after the source is destroyed")
        ax.set_title(f"{which}: {block['policy']}", fontsize=8)
    axes[0].set_ylabel("P(any file of 100 GB lost by then)")
    axes[0].legend(fontsize=7)
    save(fig, "user_source_lost.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [ev["policy"]["repair_after_s"] / HOUR for ev in results["delay_sweep"]]
    traffic_kbit = [
        _row_at(ev, head)["traffic"]["repairer_kbit_s"] for ev in results["delay_sweep"]
    ]
    loss = [
        _clip(_row_at(ev, head)["loss_any_file_100gb_per_year"]) for ev in results["delay_sweep"]
    ]
    ax.plot(xs, traffic_kbit, marker="o", color="tab:green", label="repair traffic (kbit/s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("repair delay (hours)")
    ax.set_ylabel("repairer traffic for a 100 GB backup (kbit/s)")
    ax2 = ax.twinx()
    ax2.plot(xs, loss, marker="s", color="tab:red", label="P(any loss)/year")
    ax2.set_yscale("log")
    ax2.set_ylabel("P(lose any file of 100 GB) per year")
    ax.set_title(
        f"Delay sweep, home machines, {results['recommendation']['redundancy']}", fontsize=9
    )
    fig.legend(fontsize=8, loc="upper center")
    save(fig, "user_delay_sweep.png")

    v = results["validation"]
    fig, ax = plt.subplots(figsize=(6, 4))
    se = math.sqrt(max(1, v["losses_counted"])) / v["chunk_years"]
    ax.errorbar(
        [0], [v["counted_rate"]], yerr=[2 * se], fmt="o", capsize=5, label="counted (±2 SE)"
    )
    ax.plot([1], [v["markov_rate"]], "s", label="Markov chain")
    ax.plot([2], [v["conditional_rate"]], "^", label="conditional estimate")
    ax.set_xticks([0, 1, 2], ["Monte Carlo", "Markov", "conditional"])
    ax.set_ylabel("chunk losses per chunk-year")
    ax.set_title(
        f"Validation: {v['policy']}, {v['departures_per_year']:g} departures/yr", fontsize=9
    )
    save(fig, "user_validation.png")
    return written


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 0.995:
        return "~1"
    if value < 1e-12:
        return "<1e-12"
    return f"{value:.2g}"


def _years(value: float | None, horizon: float = 50.0) -> str:
    if value is None:
        return f">{horizon:g}"
    if value < 1 / 12:
        return f"{value * 365.25:.1f} d"
    return f"{value:.2g} y"


def sweep_table(results: dict[str, Any]) -> list[str]:
    head = results["headline_departures_per_year"]
    lines = [
        f"{'policy':<9} {'k/n':>6} {'ovh':>5} {'P(any)/yr home':>14} {'P(any)/yr dc':>12} "
        f"{'markov home':>11} {'W mean h':>8} {'home kbit/s':>11} {'spur/chunk-yr':>13} "
        f"{'unreadable':>10} {'open':>5} {'stuck bound':>11}"
    ]
    by_key = {
        (row["policy_kind"], row["availability"], row["policy"]["k"], row["policy"]["n"]): row
        for row in results["sweep"]
    }
    for kind, avail, k, n in by_key:
        if avail != "home":
            continue
        h = by_key[(kind, "home", k, n)]
        d = by_key[(kind, "datacenter", k, n)]
        rh, rd = _row_at(h, head), _row_at(d, head)
        mean_h = h["repair_time"]["mean_h"]
        lines.append(
            f"{kind:<9} {f'{k}/{n}':>6} {n / k:>5.2f} {_p(rh['loss_any_file_100gb_per_year']):>14} "
            f"{_p(rd['loss_any_file_100gb_per_year']):>12} "
            f"{_p(rh['markov_loss_any_file_100gb_per_year']):>11} "
            f"{(mean_h if mean_h is not None else math.nan):>8.1f} "
            f"{rh['traffic']['repairer_kbit_s']:>11.1f} "
            f"{rh['traffic']['spurious_repairs_per_chunk_year']:>13.1f} "
            f"{h['restore_unreadable_fraction']:>10.2f} "
            f"{h['repair_time']['open_fraction']:>5.3f} "
            f"{_p(rh['loss_any_file_100gb_per_year_if_open_stuck']):>11}"
        )
    return lines


def format_report(results: dict[str, Any]) -> str:
    """Readable tables for stdout."""
    head = results["headline_departures_per_year"]
    ship = results["shipped_policy"]
    v = results["validation"]
    lines = [
        "USER-LEVEL DURABILITY (issue 15): a 100 GB backup "
        f"({results['backup']['chunks']} chunks of {MEAN_CHUNK_BYTES / 1e6:g} MB)",
        f"shipped: {ship['k']}/{ship['n']}, repair when one holder is gone "
        f"{_duration(ship['repair_after_s'])} ({ship['detection']}), "
        f"{ship['repair_delegates']} delegates, lease {_duration(ship['repair_lease_s'])}",
        f"validation: {v['policy']} at {v['departures_per_year']:g} departures/yr: "
        f"{v['losses_counted']} losses counted in {v['chunk_years']:.0f} chunk-years = "
        f"{v['counted_rate']:.3g}/chunk-yr, Markov {v['markov_rate']:.3g}, conditional "
        f"{v['conditional_rate']:.3g}, z={v['z']:.2f} {'ok' if v['passed'] else 'FAILED'}",
        "",
        f"K-OF-N SWEEP at {head:.1%} departures/yr (candidate = timer from last seen, "
        f"{_duration(RECOMMENDED_DELAY_S)}, rebuild only gone holders' packets; "
        "kbit/s = the repairer's traffic for its 100 GB)",
        *sweep_table(results),
        "",
        "DELAY SWEEP (home, recommended code):",
    ]
    for ev in results["delay_sweep"]:
        row = _row_at(ev, head)
        lines.append(
            f"  {ev['label']:<48} P(any)/yr {_p(row['loss_any_file_100gb_per_year']):>8}  "
            f"{row['traffic']['repairer_kbit_s']:>8.1f} kbit/s  W mean "
            f"{ev['repair_time']['mean_h'] or math.nan:.1f} h"
        )
    lines.append("THRESHOLD SWEEP (home, recommended code):")
    for ev in results["threshold_sweep"]:
        row = _row_at(ev, head)
        lines.append(
            f"  {ev['label']:<48} P(any)/yr {_p(row['loss_any_file_100gb_per_year']):>8}  "
            f"{row['traffic']['repairer_kbit_s']:>8.1f} kbit/s"
        )
    lines.append("ABLATION (home, the recommended policy with one change undone):")
    for ev in results["ablation"]:
        row = _row_at(ev, head)
        lines.append(
            f"  {ev['label']:<48} P(any)/yr {_p(row['loss_any_file_100gb_per_year']):>8}  "
            f"{row['traffic']['repairer_kbit_s']:>8.1f} kbit/s  open "
            f"{ev['repair_time']['open_fraction']:.3f} (bound if stuck "
            f"{_p(row['loss_any_file_100gb_per_year_if_open_stuck'])})"
        )
    rec = results["recommendation"]
    lines += [
        "",
        f"RECOMMENDED: redundancy {rec['redundancy']}, "
        f"repair threshold r={rec['repair_threshold']}, "
        f"repair after {_duration(rec['repair_after_s'])} ({rec['detection']}, rebuild "
        f"{rec['rebuild']}); target met: {rec['met_target']} "
        f"(codes meeting it: {', '.join(rec['codes_meeting_target']) or 'none'})",
        f"  home, {head:.1%}/yr: P(any)/yr "
        f"{_p(rec['home_at_headline']['loss_any_file_100gb_per_year'])}"
        f", at {results['design_departures_per_year']:.0%}/yr: "
        f"{_p(rec['home_at_design']['loss_any_file_100gb_per_year'])} "
        f"(+2 SE {_p(rec['home_at_design']['loss_any_file_100gb_per_year_hi'])}, "
        "open episodes stuck "
        f"{_p(rec['home_at_design']['loss_any_file_100gb_per_year_if_open_stuck'])}); "
        f"traffic {rec['home_at_headline']['traffic']['repairer_kbit_s']:.1f} kbit/s",
        "",
        "SOURCE DESTROYED: years until P(any file lost) reaches 1 % [median]",
    ]
    for which in ("shipped", "recommended"):
        block = results["source_lost"][which]
        lines.append(f"  {which}: {block['policy']}, {block['delegates']} delegates")
        for p_year in (head, results["design_departures_per_year"]):
            cells = block[f"departures_{p_year:.3f}"]
            lines.append(
                f"    {p_year:.0%}/yr: "
                + ", ".join(
                    f"{name.replace('_', ' ')} {_years(c['years_to_1pct'])} "
                    f"[{_years(c['years_to_median'])}]"
                    for name, c in cells.items()
                )
            )
    need = results["source_lost"]["fixed_delegates_needed"]
    lines.append(
        "  fixed delegates (never replaced, no lease limit) needed for 5 years at "
        f"{TARGET_ANY_LOSS:.0%}: "
        + ", ".join(
            f"{row['departures_per_year']:.0%}/yr: {row['delegates'] or '>32'}"
            for row in need["within_5_years_at_target"]
        )
    )
    lines += [
        "",
        f"HEADLINE (shipped, home, {head:.1%}/yr): loss_any_file_100gb_per_year = "
        f"{_p(results['loss_any_file_100gb_per_year'])}; "
        f"years_to_first_loss_after_source_lost = "
        f"{_years(results['years_to_first_loss_after_source_lost'])}",
        f"Runtime {results['runtime_s']:.1f} s.",
    ]
    return "\n".join(lines)
