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
the binomial formula) is ``durability_stats.sanity_check``; the suite
(``durability_suite.run``) executes it before anything else and reports it
first. Then come the baseline scenario (loss per year, repair bandwidth per
node, unavailability), the packet-proximity sweep under a deliberately
disaster-heavy scenario, and a sweep of repair threshold and delay (the knobs
that, in this model, decide loss under plain churn).

The user-level model of issue 15 (the chance of losing any file of a 100 GB backup,
the source destroyed, the k-of-n sweep and the recommended defaults) is
``simulations.user_durability``; the suite includes it under ``user`` and copies
its headline figures to the top level of the result (``USER_HEADLINE_KEYS``).

This file holds the model only, so that it can be read (and changed) on its own;
beside it: ``durability_stats`` (the binomial check, the loss intervals and the
summary of a run), ``durability_suite`` (sanity, baseline and sweeps, the
benchmark's entry point), ``durability_plots``, ``durability_report`` (tables and
JSON) and ``durability_cli``.

Run ``python -m simulations.durability_cli [--quick] [--out DIR]``: tables on
stdout, ``durability.json`` and PNG plots in DIR. Every run of one seed
draws node locations, departures, outages and disasters from their own
streams, so the rows of a sweep differ only by the policy under test.
"""

from __future__ import annotations

import math
import time
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
    """Raw counts of one simulation; ``durability_stats.summarise`` turns them into figures."""

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
