"""Durability of a grid at internet scale, by in-process simulation (issue 5).

Real node processes stop scaling at a few dozen per machine, yet the questions
that pick the grid's defaults (how often is a chunk lost, what does repair
cost each node, does a packet-proximity minimum distance protect against
regional disasters) only show at thousands of nodes over years. This module
answers them with a vectorised numpy model: no sockets, no trio, one seeded
``numpy.random.Generator``, so a run is reproducible from its seed.

The model, and why each choice:

* **Node locations.** Every node picks one of ~30 metropolitan areas (22 in
  Europe, where the demo grid lives, and 12 elsewhere, so that large
  minimum distances can still be met), weighted by metro population. Three
  in four nodes sit within a metro (Gaussian offset, sigma 30 km); the rest
  spread over the surrounding region (sigma 250 km). Clustering matters:
  a disaster that hits a metro takes many nodes at once, and a uniform
  spread would understate exactly the correlation the proximity rule is for.
  Offsets ignore coastlines (a few nodes land at sea); only distances matter.
* **Node lifetimes (churn).** Each node leaves permanently after an
  exponential lifetime (memoryless, so a per-step Bernoulli draw is exact)
  and is replaced at once by a new, empty node at a freshly sampled
  location, so the grid keeps ``nodes`` members.
* **Transient outages.** A node that is up starts an outage with a Poisson
  rate; the outage lasts an exponential time and its packets come back. At
  most one outage starts per node per step (a small bias at high rates;
  the observed down fraction is reported so it can be checked).
* **Regional disasters.** Poisson events. The centre is the location of a
  uniformly chosen node, which is a draw from the node density; every node
  within ``disaster_radius_km`` (great circle) leaves permanently.
* **Chunks.** A sample of ``chunks`` chunks, each k-of-n erasure coded, with
  its n packets on n distinct nodes such that every pair is at least
  ``min_distance_km`` apart. Placement is greedy rejection sampling per
  packet slot (vectorised over chunks) with a bounded number of tries; when
  it fails the chunk is counted as a placement failure. The rule is never
  relaxed (design brief, "Distance").
* **Repair.** When a chunk's permanently surviving packets fall to the
  repair threshold r or below, a repair is due ``repair_delay_days`` later
  (the time to declare a silent node gone). It needs k reachable packets to
  read; the missing packets are regenerated onto reachable nodes obeying
  the same proximity rule. Traffic per repair is k packets read plus
  ``n - surviving`` written. A repair that cannot run (too few reachable
  packets, or no placement) is retried the next step.
* **Loss and unavailability.** A chunk is lost when fewer than k packets
  survive permanently. It is unavailable at an instant when fewer than k
  packets are reachable (alive and their node not in an outage); this is
  sampled at random instants and reported separately.
* **Scale.** The chunks are a sample. Repair bandwidth per node is scaled to
  a grid where each node stores ``stored_bytes_per_node`` of packets; the
  chunk size cancels out of that figure.

Not modelled: capacity limits, repair bandwidth limits, spurious repairs
when an outage outlasts the detection delay, correlated outages (power or
network failures over a region), and the loss of a chunk's source node.

The sanity case of issue 5 (independent failures, no repair: loss matches
the binomial formula) is :func:`sanity_check`; :func:`run` executes it before
anything else and reports it first. Then come the baseline scenario (loss per
year, repair bandwidth per node, unavailability), the packet-proximity sweep
under a deliberately disaster-heavy scenario, and a sweep of repair threshold
and delay (the knobs that, in this model, decide loss under plain churn).

The user-level model of issue 15 (the chance of losing any file of a 100 GB backup,
the source destroyed, the k-of-n sweep and the recommended defaults) is
``simulations.user_durability``; :func:`run` includes it under ``user`` and copies
its headline figures to the top level of the result (``USER_HEADLINE_KEYS``).

Run ``python -m simulations.durability [--quick] [--out DIR]``: tables on
stdout, ``durability.json`` and PNG plots in DIR. Every run of one seed
draws node locations, departures, outages and disasters from their own
streams, so the rows of a sweep differ only by the policy under test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]

EARTH_RADIUS_KM = 6371.0088
DAYS_PER_YEAR = 365.25
SECONDS_PER_YEAR = DAYS_PER_YEAR * 86_400.0
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180.0
METRO_SIGMA_KM = 30.0
REGIONAL_SIGMA_KM = 250.0
REGIONAL_FRACTION = 0.25
# Poisson draws are finite but unbounded; a step never handles more than this.
MAX_DISASTERS_PER_STEP = 1_000
MAX_STEPS = 1_000_000
Z_95 = 1.959963984540054
DEFAULT_OUT_DIR = Path("simulations/results/durability")
DEFAULT_SWEEP_DISTANCES_KM: tuple[float, ...] = (0.0, 100.0, 500.0, 1000.0)
USER_HEADLINE_KEYS: tuple[str, ...] = (
    "loss_any_file_100gb_per_year",
    "loss_any_file_100gb_per_year_markov",
    "years_to_first_loss_after_source_lost",
    "years_to_first_loss_after_source_lost_median",
    "years_to_first_loss_after_source_lost_without_delegates",
    "recommendation",
)


@attrs.frozen
class City:
    """A metropolitan area that nodes cluster around."""

    name: str
    lat_deg: float
    lon_deg: float
    population_millions: float


# Metro populations, rounded; they only set relative node density.
CITIES: tuple[City, ...] = (
    City("London", 51.507, -0.128, 14.0),
    City("Paris", 48.857, 2.352, 12.5),
    City("Madrid", 40.417, -3.704, 6.7),
    City("Barcelona", 41.385, 2.173, 5.6),
    City("Berlin", 52.520, 13.405, 6.1),
    City("Hamburg", 53.551, 9.994, 5.1),
    City("Munich", 48.137, 11.576, 6.0),
    City("Essen", 51.456, 7.012, 10.0),
    City("Milan", 45.464, 9.190, 7.4),
    City("Rome", 41.903, 12.496, 4.3),
    City("Amsterdam", 52.370, 4.895, 2.5),
    City("Brussels", 50.850, 4.352, 3.2),
    City("Vienna", 48.208, 16.373, 2.9),
    City("Warsaw", 52.230, 21.012, 3.1),
    City("Stockholm", 59.329, 18.069, 2.4),
    City("Lisbon", 38.722, -9.139, 2.9),
    City("Athens", 37.984, 23.728, 3.6),
    City("Istanbul", 41.008, 28.978, 15.5),
    City("Moscow", 55.756, 37.617, 17.0),
    City("Zurich", 47.377, 8.541, 1.4),
    City("Dublin", 53.350, -6.260, 1.9),
    City("Prague", 50.076, 14.438, 2.7),
    City("New York", 40.713, -74.006, 20.0),
    City("Los Angeles", 34.052, -118.244, 13.0),
    City("Chicago", 41.878, -87.630, 9.5),
    City("Toronto", 43.653, -79.383, 6.7),
    City("Sao Paulo", -23.551, -46.633, 22.0),
    City("Mexico City", 19.433, -99.133, 22.0),
    City("Tokyo", 35.690, 139.692, 37.0),
    City("Seoul", 37.566, 126.978, 25.0),
    City("Mumbai", 19.076, 72.878, 21.0),
    City("Singapore", 1.352, 103.820, 6.0),
    City("Sydney", -33.869, 151.209, 5.3),
    City("Lagos", 6.524, 3.379, 15.0),
)


# ---------------------------------------------------------------------------
# Geometry


def to_unit_vectors(lat_deg: FloatArray, lon_deg: FloatArray) -> FloatArray:
    """Map coordinates to 3-D unit vectors, so pairwise checks are dot products.

    Comparing squared chord lengths avoids trigonometry inside the placement
    and disaster loops; :func:`chord2_for_km` converts a km threshold once.
    """
    lat = np.radians(lat_deg)
    lon = np.radians(lon_deg)
    cos_lat = np.cos(lat)
    return np.stack((cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)), axis=-1)


def chord2_for_km(distance_km: float) -> float:
    """Squared unit-sphere chord for a great-circle distance (inf if unreachable)."""
    angle = distance_km / EARTH_RADIUS_KM
    if angle > math.pi:
        return math.inf
    return (2.0 * math.sin(angle / 2.0)) ** 2


def nodes_within(xyz: FloatArray, centre_xyz: FloatArray, radius_km: float) -> BoolArray:
    """Nodes a disaster of ``radius_km`` around ``centre_xyz`` takes out (inclusive)."""
    diff = xyz - centre_xyz
    d2 = np.einsum("ij,ij->i", diff, diff)
    result: BoolArray = d2 <= chord2_for_km(radius_km)
    return result


def sample_locations(rng: np.random.Generator, count: int) -> tuple[FloatArray, FloatArray]:
    """Draw node coordinates from the metro mixture described in the module doc."""
    weights = np.array([c.population_millions for c in CITIES])
    city = rng.choice(len(CITIES), size=count, p=weights / weights.sum())
    city_lat = np.array([c.lat_deg for c in CITIES])[city]
    city_lon = np.array([c.lon_deg for c in CITIES])[city]
    sigma = np.where(rng.random(count) < REGIONAL_FRACTION, REGIONAL_SIGMA_KM, METRO_SIGMA_KM)
    north_km = rng.normal(size=count) * sigma
    east_km = rng.normal(size=count) * sigma
    lat = np.clip(city_lat + north_km / KM_PER_DEGREE, -89.9, 89.9)
    lon = city_lon + east_km / (KM_PER_DEGREE * np.cos(np.radians(city_lat)))
    lon = (lon + 180.0) % 360.0 - 180.0
    return lat, lon


def disaster_safe_distance_km(radius_km: float, packets: int) -> float | None:
    """Pairwise minimum above which one disaster cannot take ``packets`` packets.

    In a flat disk of radius R, the ``m`` <= 5 points whose smallest pairwise
    distance is largest form a regular polygon on the rim, with side
    2 R sin(pi / m) (m = 2 is the diameter). On the sphere that side is
    ``2 asin(sin(rho) sin(pi / m))`` for the angular radius rho;
    for the small caps of regional disasters the polygon stays optimal. So
    with every pair of a chunk's packets farther apart than this, no single
    disaster destroys ``packets`` of them. From six points on, the optimum is
    no longer a rim polygon, and for caps wider than 2,000 km the flat
    argument is not safe; both return None, as does m < 2 (a single packet
    is always at risk).
    """
    if not 2 <= packets <= 5 or radius_km > 2_000.0:
        return None
    rho = radius_km / EARTH_RADIUS_KM
    # The rim is a circle of Euclidean radius sin(rho) on the unit sphere.
    half_chord = math.sin(rho) * math.sin(math.pi / packets)
    return 2.0 * EARTH_RADIUS_KM * math.asin(half_chord)


# ---------------------------------------------------------------------------
# Placement


def place_packets(
    rng: np.random.Generator,
    xyz: FloatArray,
    eligible: IntArray,
    holders: IntArray,
    min_distance_km: float,
    tries: int,
) -> tuple[IntArray, BoolArray]:
    """Fill the empty (-1) slots of each row with distinct, far-enough nodes.

    Greedy rejection sampling, slot by slot, vectorised over rows: a
    candidate is drawn uniformly from ``eligible`` and kept if it is distinct
    from, and at least ``min_distance_km`` from, every node already in the
    row. Rows still unfilled after ``tries`` draws for a slot fail; the rule
    is never relaxed. Pre-filled slots (repair survivors) constrain new ones.

    Returns:
        The filled holder matrix (failed rows keep partial fills) and a mask
        of the rows that were completely filled.
    """
    out = holders.copy()
    rows, width = out.shape
    ok = np.ones(rows, dtype=np.bool_)
    if eligible.size == 0:
        ok &= ~np.any(out < 0, axis=1)
        return out, ok
    threshold = chord2_for_km(min_distance_km) if min_distance_km > 0 else 0.0
    for slot in range(width):
        pending = np.flatnonzero(ok & (out[:, slot] < 0))
        for _ in range(tries):
            if pending.size == 0:
                break
            cand = eligible[rng.integers(eligible.size, size=pending.size)]
            others = out[pending]
            filled = others >= 0
            diff = xyz[cand][:, None, :] - xyz[np.maximum(others, 0)]
            d2 = np.einsum("pjc,pjc->pj", diff, diff)
            fine = (others != cand[:, None]) & (d2 >= threshold)
            good = np.all(~filled | fine, axis=1)
            out[pending[good], slot] = cand[good]
            pending = pending[~good]
        ok[pending] = False
    return out, ok


# ---------------------------------------------------------------------------
# Configuration and the simulation proper


def _check_positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


def _check_non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen(kw_only=True)
class SimConfig:
    """One scenario. Defaults are a plausible baseline, not measured facts.

    ``repair_threshold`` None means k + 1 (repair at the first lost packet
    when n = k + 2), capped at n - 1; it must satisfy k <= r < n.
    ``mean_lifetime_years`` may be ``math.inf`` (no churn) or 0 (every node
    leaves in the first step, used by the known-answer checks).
    """

    nodes: int = attrs.field(default=10_000, validator=_check_positive)
    chunks: int = attrs.field(default=50_000, validator=_check_positive)
    years: float = attrs.field(default=5.0, validator=_check_positive)
    step_days: float = attrs.field(default=1.0, validator=_check_positive)
    k: int = attrs.field(default=4, validator=_check_positive)
    n: int = attrs.field(default=6, validator=_check_positive)
    repair: bool = True
    repair_threshold: int | None = None
    repair_delay_days: float = attrs.field(default=3.0, validator=_check_non_negative)
    mean_lifetime_years: float = attrs.field(default=3.0, validator=_check_non_negative)
    outage_rate_per_year: float = attrs.field(default=12.0, validator=_check_non_negative)
    outage_mean_days: float = attrs.field(default=1.0, validator=_check_non_negative)
    disaster_rate_per_year: float = attrs.field(default=0.5, validator=_check_non_negative)
    disaster_radius_km: float = attrs.field(default=50.0, validator=_check_non_negative)
    min_distance_km: float = attrs.field(default=0.0, validator=_check_non_negative)
    chunk_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_check_positive)
    stored_bytes_per_node: float = attrs.field(default=100e9, validator=_check_positive)
    placement_tries: int = attrs.field(default=64, validator=_check_positive)
    availability_sample_every_steps: int = attrs.field(default=7, validator=_check_positive)

    def __attrs_post_init__(self) -> None:
        if self.k > self.n:
            raise ValueError(f"k={self.k} must not exceed n={self.n}")
        if self.n > self.nodes:
            raise ValueError(f"n={self.n} packets need at least n distinct nodes")
        if self.repair and self.repair_threshold is not None:
            r = self.repair_threshold
            if not self.k <= r < self.n:
                raise ValueError(f"repair threshold {r} must satisfy k={self.k} <= r < n={self.n}")

    @property
    def threshold(self) -> int:
        """The effective repair threshold r."""
        if self.repair_threshold is not None:
            return self.repair_threshold
        return max(self.k, min(self.k + 1, self.n - 1))

    @property
    def steps(self) -> int:
        return max(1, min(MAX_STEPS, round(self.years * DAYS_PER_YEAR / self.step_days)))

    @property
    def step_years(self) -> float:
        return self.step_days / DAYS_PER_YEAR

    @property
    def packet_bytes(self) -> float:
        return self.chunk_bytes / self.k

    def departure_probability_per_step(self) -> float:
        if self.mean_lifetime_years == 0:
            return 1.0
        if math.isinf(self.mean_lifetime_years):
            return 0.0
        return -math.expm1(-self.step_years / self.mean_lifetime_years)


@attrs.frozen(kw_only=True)
class SimOutcome:
    """Raw counts of one simulation; :func:`summarise` turns them into figures."""

    config: SimConfig
    seed: int
    chunks_placed: int
    placement_failures: int
    initial_node_degree: IntArray
    lost_step: IntArray
    lost_by_disaster: BoolArray
    departures: int
    disasters: int
    disaster_nodes_killed: int
    disaster_max_packets_one_chunk: int
    repairs_per_step: IntArray
    packets_read_per_step: IntArray
    packets_written_per_step: IntArray
    repair_blocked_unreachable: int
    repair_placement_failures: int
    unavailable_fraction_samples: FloatArray
    node_down_fraction: float
    runtime_s: float


def simulate(config: SimConfig, seed: int = 1) -> SimOutcome:
    """Run one scenario step by step; every loop is bounded by the step count."""
    started = time.perf_counter()
    # One stream per source of randomness (common random numbers): two runs
    # with the same seed that differ only in placement or repair policy see
    # the same node locations, departures, outages and disasters, so their
    # difference is the policy's effect and not sampling noise.
    streams = np.random.SeedSequence(seed).spawn(5)
    rng_where, rng_churn, rng_outage, rng_disaster, rng_place = (
        np.random.default_rng(s) for s in streams
    )
    cfg = config
    lat, lon = sample_locations(rng_where, cfg.nodes)
    xyz = to_unit_vectors(lat, lon)
    all_nodes = np.arange(cfg.nodes, dtype=np.intp)
    empty = np.full((cfg.chunks, cfg.n), -1, dtype=np.intp)
    rows_first, placed = place_packets(
        rng_place, xyz, all_nodes, empty, cfg.min_distance_km, cfg.placement_tries
    )
    rows_first[~placed] = 0
    # Packet-major layout (n, chunks): per-chunk counts become n contiguous
    # vector adds instead of a slow reduction over a short axis (~40x faster).
    holders = np.ascontiguousarray(rows_first.T)
    alive = np.repeat(placed[None, :], cfg.n, axis=0)
    active = placed.copy()
    initial_degree = np.bincount(holders[:, placed].ravel(), minlength=cfg.nodes).astype(np.intp)
    lost_step = np.full(cfg.chunks, -1, dtype=np.intp)
    lost_by_disaster = np.zeros(cfg.chunks, dtype=np.bool_)
    touched = np.zeros(cfg.chunks, dtype=np.bool_)
    repair_due = np.full(cfg.chunks, -1, dtype=np.intp)
    steps = cfg.steps
    repairs = np.zeros(steps, dtype=np.intp)
    reads = np.zeros(steps, dtype=np.intp)
    writes = np.zeros(steps, dtype=np.intp)
    out_start = np.zeros(cfg.nodes)
    out_end = np.zeros(cfg.nodes)
    p_depart = cfg.departure_probability_per_step()
    p_outage = -math.expm1(-cfg.outage_rate_per_year * cfg.step_years)
    disaster_mean = cfg.disaster_rate_per_year * cfg.step_years
    delay_steps = round(cfg.repair_delay_days / cfg.step_days)
    threshold = cfg.threshold
    # With n == k every lost packet loses the chunk: there is nothing to repair.
    repairing = cfg.repair and cfg.k < cfg.n
    departures = disasters = killed_total = max_hit = 0
    blocked = placement_failed = 0
    unavailable: list[float] = []
    down_sum = 0.0

    for step in range(steps):
        t0 = step * cfg.step_days
        leaving = rng_churn.random(cfg.nodes) < p_depart
        departures += int(leaving.sum())
        dead = leaving
        count = min(int(rng_disaster.poisson(disaster_mean)), MAX_DISASTERS_PER_STEP)
        if count:
            struck = np.zeros(cfg.nodes, dtype=np.bool_)
            for _ in range(count):
                centre = xyz[rng_disaster.integers(cfg.nodes)]
                hit = nodes_within(xyz, centre, cfg.disaster_radius_km)
                struck |= hit
                killed_total += int(hit.sum())
                per_chunk = (np.take(hit, holders) & alive).sum(axis=0, dtype=np.int16)
                max_hit = max(max_hit, int(per_chunk.max(initial=0)))
            disasters += count
            touched |= (np.take(struck, holders) & alive).any(axis=0)
            dead = dead | struck
        if dead.any():
            alive &= ~np.take(dead, holders)
            fresh = np.flatnonzero(dead)
            new_lat, new_lon = sample_locations(rng_where, fresh.size)
            xyz[fresh] = to_unit_vectors(new_lat, new_lon)
            out_start[fresh] = 0.0
            out_end[fresh] = 0.0
        if p_outage > 0:
            starting = (out_end <= t0) & (rng_outage.random(cfg.nodes) < p_outage)
            begin = t0 + rng_outage.random(int(starting.sum())) * cfg.step_days
            out_start[starting] = begin
            out_end[starting] = begin + rng_outage.exponential(cfg.outage_mean_days, begin.size)
        instant = t0 + rng_outage.random() * cfg.step_days
        down = (out_start <= instant) & (instant < out_end)
        down_sum += float(down.mean())

        surviving = alive.sum(axis=0, dtype=np.int16)
        newly_lost = active & (surviving < cfg.k)
        if newly_lost.any():
            lost_step[newly_lost] = step
            lost_by_disaster[newly_lost] = touched[newly_lost]
            active &= ~newly_lost
            repair_due[newly_lost] = -1
        if repairing:
            trigger = active & (surviving <= threshold) & (repair_due < 0)
            repair_due[trigger] = step + delay_steps
            due = np.flatnonzero(active & (repair_due >= 0) & (repair_due <= step))
            if due.size:
                reachable = alive[:, due] & ~np.take(down, holders[:, due])
                can = reachable.sum(axis=0) >= cfg.k
                blocked += int((~can).sum())
                rows = due[can]
                keep = np.where(alive[:, rows], holders[:, rows], -1).T
                filled, ok = place_packets(
                    rng_place,
                    xyz,
                    np.flatnonzero(~down),
                    keep,
                    cfg.min_distance_km,
                    cfg.placement_tries,
                )
                placement_failed += int((~ok).sum())
                done = rows[ok]
                missing = ~alive[:, done]
                repairs[step] = done.size
                reads[step] = cfg.k * done.size
                writes[step] = int(missing.sum())
                holders[:, done] = filled[ok].T
                alive[:, done] = True
                repair_due[done] = -1
                touched[done] = False
        if step % cfg.availability_sample_every_steps == 0 and active.any():
            reach_count = (alive & ~np.take(down, holders)).sum(axis=0, dtype=np.int16)
            unavailable.append(float((active & (reach_count < cfg.k)).sum() / active.sum()))

    return SimOutcome(
        config=cfg,
        seed=seed,
        chunks_placed=int(placed.sum()),
        placement_failures=int((~placed).sum()),
        initial_node_degree=initial_degree,
        lost_step=lost_step,
        lost_by_disaster=lost_by_disaster,
        departures=departures,
        disasters=disasters,
        disaster_nodes_killed=killed_total,
        disaster_max_packets_one_chunk=max_hit,
        repairs_per_step=repairs,
        packets_read_per_step=reads,
        packets_written_per_step=writes,
        repair_blocked_unreachable=blocked,
        repair_placement_failures=placement_failed,
        unavailable_fraction_samples=np.asarray(unavailable, dtype=np.float64),
        node_down_fraction=down_sum / steps,
        runtime_s=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------
# Statistics


def binomial_tail(at_least: int, trials: int, p: float) -> float:
    """P(Binomial(trials, p) >= at_least)."""
    if at_least <= 0:
        return 1.0
    return sum(
        math.comb(trials, j) * p**j * (1.0 - p) ** (trials - j) for j in range(at_least, trials + 1)
    )


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


# ---------------------------------------------------------------------------
# The suite: sanity first, then baseline, then the proximity sweep


@attrs.frozen(kw_only=True)
class SuiteSettings:
    """How big each part of a :func:`run` is; quick and full differ only here."""

    baseline: SimConfig
    sweep_chunks: int
    sweep_years: float
    sweep_distances_km: tuple[float, ...] = DEFAULT_SWEEP_DISTANCES_KM
    heavy_disaster_rate_per_year: float = 12.0
    heavy_disaster_radius_km: float = 250.0
    sanity_chunks: int = 20_000
    sanity_curve_p: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
    sanity_curve_chunks: int = 5_000
    policy_delays_days: tuple[float, ...] = (1.0, 3.0, 7.0)
    #: The user-level model of issue 15 (``simulations.user_durability``): "tiny",
    #: "quick", "full", or None to leave it out.
    user_mode: str | None = None

    @classmethod
    def for_mode(cls, quick: bool) -> SuiteSettings:
        if quick:
            return cls(
                baseline=SimConfig(chunks=20_000, years=2.0),
                sweep_chunks=10_000,
                sweep_years=2.0,
                user_mode="quick",
            )
        return cls(
            user_mode="full",
            baseline=SimConfig(chunks=100_000, years=10.0),
            sweep_chunks=50_000,
            sweep_years=5.0,
            sanity_chunks=100_000,
            sanity_curve_chunks=20_000,
        )

    def heavy(self, min_distance_km: float) -> SimConfig:
        return attrs.evolve(
            self.baseline,
            chunks=self.sweep_chunks,
            years=self.sweep_years,
            disaster_rate_per_year=self.heavy_disaster_rate_per_year,
            disaster_radius_km=self.heavy_disaster_radius_km,
            min_distance_km=min_distance_km,
        )

    def policies(self) -> list[SimConfig]:
        """Baseline churn and outages, every valid threshold r times each delay."""
        base = attrs.evolve(self.baseline, chunks=self.sweep_chunks, years=self.sweep_years)
        return [
            attrs.evolve(base, repair_threshold=r, repair_delay_days=delay)
            for r in range(base.k, base.n)
            for delay in self.policy_delays_days
        ]


def run_suite(
    settings: SuiteSettings, *, out_dir: Path | None, seed: int, plots: bool = True
) -> dict[str, Any]:
    """Run sanity, baseline and sweep; write JSON (and PNGs) when ``out_dir`` is set."""
    started = time.perf_counter()
    base = settings.baseline
    sanity = sanity_check(
        k=base.k, n=base.n, p=0.2, nodes=base.nodes, chunks=settings.sanity_chunks, seed=seed
    )
    curve = [
        sanity_check(
            k=base.k,
            n=base.n,
            p=p,
            nodes=base.nodes,
            chunks=settings.sanity_curve_chunks,
            seed=seed + 1 + i,
        )
        for i, p in enumerate(settings.sanity_curve_p)
    ]
    results: dict[str, Any] = {
        "sanity": sanity,
        "sanity_curve": curve,
        "trusted": sanity["passed"] and all(c["passed"] for c in curve),
        "baseline": summarise(simulate(base, seed)),
    }
    rows: list[dict[str, Any]] = []
    for d in settings.sweep_distances_km:
        summary = summarise(simulate(settings.heavy(d), seed))
        rows.append({"min_distance_km": d, **summary})
    m = base.n - base.k + 1
    safe = disaster_safe_distance_km(settings.heavy_disaster_radius_km, m)
    results["proximity_sweep"] = {
        "scenario": (
            f"DISASTER-HEAVY stress scenario (not a forecast): "
            f"{settings.heavy_disaster_rate_per_year:g} disasters/year, each destroying every "
            f"node within {settings.heavy_disaster_radius_km:g} km; churn, outages and repair "
            "as baseline"
        ),
        "packets_one_disaster_must_take": m,
        "safe_distance_km": safe,
        "rows": rows,
    }
    results["repair_policy_sweep"] = [
        {
            "repair_threshold": cfg.threshold,
            "repair_delay_days": cfg.repair_delay_days,
            **summarise(simulate(cfg, seed)),
        }
        for cfg in settings.policies()
    ]
    if settings.user_mode is not None:
        from . import user_durability

        user = user_durability.run_user(settings.user_mode, seed=seed)
        results["user"] = user
        results["trusted"] = results["trusted"] and user["validation"]["passed"]
        # The figures scripts read (issue 15), at the top level of the result.
        for key in USER_HEADLINE_KEYS:
            results[key] = user[key]
    results["runtime_s"] = time.perf_counter() - started
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = [out_dir / "durability.json"]
        if plots and importlib.util.find_spec("matplotlib") is None:
            # The README's plain install has no matplotlib: the figures are all in the
            # JSON; only the pictures need the extra.
            results["plots_skipped"] = PLOTS_NEED
            plots = False
        if plots:
            files += write_plots(results, out_dir)
            if "user" in results:
                from . import user_durability

                files += user_durability.write_plots(results["user"], out_dir)
        results["files"] = [str(f) for f in files]
        (out_dir / "durability.json").write_text(
            json.dumps(_jsonable(results), indent=2, allow_nan=False)
        )
    return results


#: Said up front (benchmarks/__main__) and in the results when plots cannot be drawn.
PLOTS_NEED = "plots skipped: matplotlib is not installed (pip install 'gridnode[sim]')"


def run(quick: bool = False, out_dir: Path | None = None, seed: int = 1) -> dict[str, Any]:
    """Entry point for the benchmark suite: the default quick or full suite."""
    return run_suite(SuiteSettings.for_mode(quick), out_dir=out_dir, seed=seed)


def _jsonable(value: Any) -> Any:
    """Strict JSON: numpy scalars become Python ones, inf and nan become null."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------
# Output


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """PNG figures; matplotlib is imported here so the model runs without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []

    sweep = results["proximity_sweep"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [row["min_distance_km"] for row in sweep["rows"]]
    for i, row in enumerate(sweep["rows"]):
        loss = row["loss"]
        low, high = loss["ci95"]
        if loss["lost_chunks"]:
            ax.errorbar(
                [i],
                [loss["per_year"]],
                yerr=[[loss["per_year"] - low], [high - loss["per_year"]]],
                fmt="o",
                color="tab:red",
                capsize=4,
            )
        else:
            ax.plot([i], [high], marker="v", color="tab:blue", linestyle="none")
    ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    ax.set_yscale("log")
    ax.set_xlabel("packet-proximity minimum distance D (km)")
    ax.set_ylabel("chunk loss probability per year")
    ax.set_title(
        "Loss vs D, disaster-heavy stress scenario\n(dots: 95% CI; triangles: "
        "upper bound, no loss seen)",
        fontsize=9,
    )
    if sweep["safe_distance_km"] is not None:
        ax.text(
            0.02,
            0.02,
            f"one disaster cannot take {sweep['packets_one_disaster_must_take']} "
            f"packets when D > {sweep['safe_distance_km']:.0f} km",
            transform=ax.transAxes,
            fontsize=8,
        )
    fig.tight_layout()
    written.append(out_dir / "loss_vs_min_distance.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    base = results["baseline"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    per_year = base["repair"]["bytes_per_node_by_year"]
    ax.bar(range(1, len(per_year) + 1), [b / 1e9 for b in per_year], color="tab:green")
    ax.set_xlabel("simulated year")
    ax.set_ylabel("repair traffic per node (GB/year, each direction)")
    ax.set_title(
        f"Baseline repair traffic: mean {base['repair']['kbit_s_per_node']:.1f} kbit/s per node",
        fontsize=9,
    )
    fig.tight_layout()
    written.append(out_dir / "repair_traffic.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    curve = results["sanity_curve"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    k, n = curve[0]["k"], curve[0]["n"]
    ps = np.linspace(0.0, max(c["p"] for c in curve), 200)
    ax.plot(ps, [binomial_loss_probability(k, n, float(p)) for p in ps], label="binomial formula")
    ax.errorbar(
        [c["p"] for c in curve],
        [c["observed"] for c in curve],
        yerr=[2 * c["se"] for c in curve],
        fmt="o",
        label="simulated (±2 SE)",
    )
    ax.set_xlabel("node failure probability over the period, p")
    ax.set_ylabel("chunk loss probability")
    ax.set_title(f"Sanity case: {k}-of-{n}, independent failures, no repair", fontsize=9)
    ax.legend()
    fig.tight_layout()
    written.append(out_dir / "sanity_binomial.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    policies = results["repair_policy_sweep"]
    if policies:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for row in policies:
            loss = row["loss"]
            y = loss["per_year"] if loss["lost_chunks"] else loss["ci95"][1]
            x = row["repair"]["kbit_s_per_node"]
            ax.plot(
                [x],
                [y],
                marker="o" if loss["lost_chunks"] else "v",
                linestyle="none",
                color=f"C{row['repair_threshold'] - policies[0]['repair_threshold']}",
            )
            ax.annotate(
                f"r={row['repair_threshold']}, {row['repair_delay_days']:g} d",
                (x, y),
                textcoords="offset points",
                xytext=(5, 3),
                fontsize=8,
            )
        ax.set_yscale("log")
        ax.set_xlabel("repair traffic per node (kbit/s, each direction)")
        ax.set_ylabel("chunk loss probability per year")
        ax.set_title(
            "Repair policy: threshold r and delay vs loss and traffic\n"
            "(triangles: upper bound, no loss seen)",
            fontsize=9,
        )
        fig.tight_layout()
        written.append(out_dir / "repair_policy.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def _fmt_ci(loss: dict[str, Any]) -> str:
    low, high = loss["ci95"]
    if loss["per_year"] is None:
        return "n/a"
    if loss["lost_chunks"] == 0:
        return f"0 (< {high:.2e})"
    return f"{loss['per_year']:.2e} [{low:.2e}, {high:.2e}]"


def format_report(results: dict[str, Any]) -> str:
    """Readable tables for stdout."""
    lines: list[str] = []
    s = results["sanity"]
    lines.append("SANITY (issue 5): independent failures, no repair, no outages, no disasters")
    lines.append(
        f"{'k-of-n':>7} {'p':>6} {'chunks':>8} {'observed':>10} {'binomial':>10} "
        f"{'SE':>9} {'z':>7}  ok"
    )
    for c in [s, *results["sanity_curve"]]:
        lines.append(
            f"{c['k']}-of-{c['n']:<3} {c['p']:>6.3f} {c['chunks']:>8} "
            f"{c['observed']:>10.5f} {c['expected']:>10.5f} {c['se']:>9.2e} "
            f"{c['z']:>7.2f}  {'yes' if c['passed'] else 'NO'}"
        )
    lines.append(f"(SE includes chunks sharing nodes; design effect {s['design_effect']:.2f})")
    lines.append(
        "model results "
        + ("can be trusted" if results["trusted"] else "are NOT trusted: the sanity case failed")
    )
    lines.append("")
    b = results["baseline"]
    c = b["config"]
    lines.append(
        f"BASELINE: {c['nodes']} nodes, {b['chunks_placed']} chunks {c['k']}-of-{c['n']}, "
        f"{c['years']:g} years, lifetime {c['mean_lifetime_years']:g} y, outages "
        f"{c['outage_rate_per_year']:g}/y x {c['outage_mean_days']:g} d, disasters "
        f"{c['disaster_rate_per_year']:g}/y r={c['disaster_radius_km']:g} km, repair at <= "
        f"{c['repair_threshold']} after {c['repair_delay_days']:g} d, D={c['min_distance_km']:g} km"
    )
    loss = b["loss"]
    lines.append(
        f"  chunk loss per year      {_fmt_ci(loss)}  ({loss['lost_chunks']} lost in "
        f"{loss['loss_events']} events, {loss['exposure_chunk_years']:.0f} chunk-years)"
    )
    r = b["repair"]
    lines.append(
        f"  repair per node          {r['bytes_per_node_year'] / 1e9:.2f} GB/year = "
        f"{r['kbit_s_per_node']:.1f} kbit/s ({r['repairs']} repairs in sample)"
    )
    u = b["unavailability"]
    lines.append(
        f"  unavailable chunks       mean {u['mean_fraction']:.2e}, max "
        f"{u['max_fraction']:.2e} over {u['samples']} instants (node down fraction "
        f"{u['node_down_fraction']:.3f})"
    )
    lines.append(f"  placement failures       {b['placement_failures']}")
    lines.append("")
    sw = results["proximity_sweep"]
    lines.append("PROXIMITY SWEEP: " + sw["scenario"])
    if sw["safe_distance_km"] is not None:
        lines.append(
            f"  (a single disaster cannot take {sw['packets_one_disaster_must_take']} "
            f"packets of a chunk once D > {sw['safe_distance_km']:.0f} km)"
        )
    lines.append(
        f"{'D km':>7} {'lost':>6} {'after disaster':>14} {'loss/year [95% CI]':>34} "
        f"{'max pk/disaster':>15} {'repair kbit/s':>13} {'place fail':>10}"
    )
    for row in sw["rows"]:
        loss = row["loss"]
        lines.append(
            f"{row['min_distance_km']:>7g} {loss['lost_chunks']:>6} "
            f"{loss['lost_after_disaster']:>14} {_fmt_ci(loss):>34} "
            f"{row['disasters']['max_packets_of_one_chunk_in_one_disaster']:>15} "
            f"{row['repair']['kbit_s_per_node']:>13.1f} {row['placement_failures']:>10}"
        )
    lines.append("  (after disaster: lost chunks that a disaster had hit since their last repair)")
    if results["repair_policy_sweep"]:
        first = results["repair_policy_sweep"][0]
        lines.append("")
        lines.append(
            f"REPAIR POLICY SWEEP: baseline scenario, {first['chunks_placed']} chunks, "
            f"{first['config']['years']:g} years; repair when <= r packets survive, "
            "after a delay"
        )
        lines.append(
            f"{'r':>3} {'delay d':>7} {'lost':>6} {'loss/year [95% CI]':>34} {'repair kbit/s':>13}"
        )
        for row in results["repair_policy_sweep"]:
            lines.append(
                f"{row['repair_threshold']:>3} {row['repair_delay_days']:>7g} "
                f"{row['loss']['lost_chunks']:>6} {_fmt_ci(row['loss']):>34} "
                f"{row['repair']['kbit_s_per_node']:>13.1f}"
            )
    lines.append("")
    lines.append("Loss intervals treat chunk-years as independent; losses cluster (see events),")
    lines.append(f"so read them as optimistic. Runtime {results['runtime_s']:.1f} s.")
    if "user" in results:
        from . import user_durability

        lines += ["", user_durability.format_report(results["user"])]
    return "\n".join(lines)


def _parse_distances(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(",") if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m simulations.durability [--quick] [--out DIR] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.durability",
        description=__doc__.split("\n")[0],
        allow_abbrev=False,
    )
    parser.add_argument("--quick", action="store_true", help="small run (< 30 s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output directory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--chunks", type=int, help="baseline chunk sample size")
    parser.add_argument("--years", type=float)
    parser.add_argument("--k", type=int)
    parser.add_argument("--n", type=int)
    parser.add_argument("--repair-threshold", type=int)
    parser.add_argument("--repair-delay-days", type=float)
    parser.add_argument("--lifetime-years", type=float)
    parser.add_argument("--outage-rate", type=float, help="outages per node per year")
    parser.add_argument("--outage-days", type=float, help="mean outage length")
    parser.add_argument("--disaster-rate", type=float, help="baseline disasters per year")
    parser.add_argument("--disaster-radius-km", type=float)
    parser.add_argument("--min-distance-km", type=float, help="baseline packet proximity minimum")
    parser.add_argument("--stored-gb-per-node", type=float)
    parser.add_argument("--sweep-chunks", type=int, help="chunk sample of each sweep run")
    parser.add_argument("--sanity-chunks", type=int)
    parser.add_argument(
        "--sweep-distances",
        type=_parse_distances,
        help="comma-separated km, default 0,100,500,1000",
    )
    parser.add_argument("--heavy-disaster-rate", type=float)
    parser.add_argument("--heavy-disaster-radius-km", type=float)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--no-user", action="store_true", help="leave out the user-level model (issue 15)"
    )
    args = parser.parse_args(argv)

    settings = SuiteSettings.for_mode(args.quick)
    overrides = {
        "nodes": args.nodes,
        "chunks": args.chunks,
        "years": args.years,
        "k": args.k,
        "n": args.n,
        "repair_threshold": args.repair_threshold,
        "repair_delay_days": args.repair_delay_days,
        "mean_lifetime_years": args.lifetime_years,
        "outage_rate_per_year": args.outage_rate,
        "outage_mean_days": args.outage_days,
        "disaster_rate_per_year": args.disaster_rate,
        "disaster_radius_km": args.disaster_radius_km,
        "min_distance_km": args.min_distance_km,
        "stored_bytes_per_node": None
        if args.stored_gb_per_node is None
        else args.stored_gb_per_node * 1e9,
    }
    baseline = attrs.evolve(
        settings.baseline, **{k: v for k, v in overrides.items() if v is not None}
    )
    suite_overrides: dict[str, Any] = {"baseline": baseline}
    if args.years is not None:
        suite_overrides["sweep_years"] = args.years
    if args.sweep_chunks is not None:
        suite_overrides["sweep_chunks"] = args.sweep_chunks
    if args.sanity_chunks is not None:
        suite_overrides["sanity_chunks"] = args.sanity_chunks
        suite_overrides["sanity_curve_chunks"] = args.sanity_chunks
    if args.sweep_distances is not None:
        suite_overrides["sweep_distances_km"] = args.sweep_distances
    if args.heavy_disaster_rate is not None:
        suite_overrides["heavy_disaster_rate_per_year"] = args.heavy_disaster_rate
    if args.heavy_disaster_radius_km is not None:
        suite_overrides["heavy_disaster_radius_km"] = args.heavy_disaster_radius_km
    if args.no_user:
        suite_overrides["user_mode"] = None
    settings = attrs.evolve(settings, **suite_overrides)
    results = run_suite(settings, out_dir=args.out, seed=args.seed, plots=not args.no_plots)
    print(format_report(results))
    print(f"\nwrote {', '.join(results['files'])}")
    return 0 if results["trusted"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
