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
3. **The analytic Markov baseline** (``user_durability_stats.markov_loss_rate``),
   computed in the same run: a continuous-time chain over surviving packets,
   departures at rate j*lambda, the detection delay as an Erlang stage (64 phases,
   near deterministic), then an exponential wait for a repair opportunity whose mean
   comes from independent, memoryless availability (the textbook assumption).  Its
   absorption probability is computed by dynamic programming over the (acyclic)
   degraded states, a sum of positive terms, so it keeps full relative precision at
   1e-30.
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

``user_durability_stats.validate`` checks the Monte Carlo's counted losses against the
Markov chain at a departure rate where losses are countable, and the conditional
estimate against both.

Not modelled: network partitions, correlated departures (disasters: see
``simulations.durability``), capacity and bandwidth limits on repair, repair of the
data-assembly records (small, stored like chunks), a chunk whose packets a spurious
repair placed on the same node twice (rare: placement draws from hundreds of nodes).

This file holds the model (the policy, availability and the Monte Carlo) only; beside
it: ``user_durability_stats`` (the conditional estimate, the Markov baseline, the
source destroyed and the validation), ``user_durability_suite`` (the sweeps and the
recommendation, run by ``durability_suite``), ``durability_plots`` and
``durability_report``; the binomial tails and the any-file bound are shared with the
grid model in ``durability_stats``.
"""

from __future__ import annotations

import math
import time
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
            f"after {format_duration(self.repair_after_s)} ({self.detection}"
            + (", gone only" if self.rebuild == "gone" else "")
            + ")"
        )


def format_duration(seconds: float) -> str:
    """A delay as people write it (3d, 6h, 90s), for labels and reports."""
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
