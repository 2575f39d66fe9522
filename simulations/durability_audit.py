"""Silent loss, storage audits and leases in the user-level durability model (issue 10).

``user_durability`` loses packets only when their holders *leave*: the holder drops out
of the member view, and ``repair_after_s`` after its last sighting its packets are
rebuilt.  Two more ways to lose data exist once the node has storage audits and leases:

* **Silent loss.**  A holder stays a member (answers gossip, is "seen") but its disk
  rots, or a dishonest member deletes what it holds.  Nothing in the member view
  changes, so only a storage audit (``gridnode.audit``) notices: the source challenges
  ``audit_batch`` packets every ``audit_interval_s`` (a random holder each, then a
  random packet of it), scores each holder (an exponentially weighted mean of outcomes:
  pass 1, fail 0, miss 0.5, weight 0.2) and, once a holder with at least 3 audits falls
  under ``audit_threshold``, distrusts it: repair treats it as gone at once (with the
  same threshold as a departure).  With audits off, a silently lost packet stays lost
  until its holder leaves for good.
* **Leases.**  A holder keeps a packet while a lease on it runs; the owner renews every
  ``lease_renew_interval_s`` (a week; at most half a lease) for ``lease_s`` (60 days),
  and the holder reclaims a packet ``lease_grace_s`` after its lease ended
  (``gridnode.leases``).  An owner away longer than what is left of its lease loses
  *the whole backup* at once, unless its delegates renew (they do in the design).

How the figures are computed, and why this way.

1. **Detection time** (:func:`detection_times`): a Monte Carlo of one source auditing
   one holder, for many independent (source, holder) pairs on the home availability
   schedules of ``user_durability`` (audits only while the source is up; a holder that
   is off is a miss).  Per round each of the ``batch`` draws picks this holder with
   probability 1/H (H holders of the source's packets), so the holder's audits arrive
   as a Poisson process of rate ``batch / (interval * H)`` while the source is up.  At
   a random instant after a warm-up (so the score and audit count are the holder's
   usual ones) the holder silently loses a fraction f of its packets; every later
   audit that finds it up fails with probability f.  Measured: the time to the first
   failed audit (a lost packet *caught*) and to the distrust that starts repair
   (*detection*).  The score rules are ``gridnode.audit``'s, read from it.
2. **Loss per year** (:func:`silent_loss_rate`), the conditional method of
   ``user_durability_stats`` extended by one state.  Each packet of a chunk is healthy,
   silently lost and not yet known (U), or gone (known: its holder left, or was
   distrusted).  Healthy packets go U at ``sigma * f`` a year (sigma silent events per
   holder-year) and gone at lambda; a U packet becomes gone after T = min(D, X), D the
   detection time measured in 1. (infinite with audits off, or beyond the run) and X
   the holder's departure.  Among packets not gone, a share q = s E[T] / (1 + s E[T])
   is U (s = sigma f; flow balance).  A repair episode starts when ``n - r`` packets are
   gone and lasts W, the repair times the Monte Carlo of ``user_durability`` measured
   for the shipped policy (departure to repair, so it includes ``repair_after_s``: a
   distrusted holder, gone at once, is repaired sooner; conservative).  At its start
   S ~ Binomial(r, q) of the r others are U; the chunk is lost if r - S - k + 1 of the
   r - S healthy ones are lost (left or rotted) within W.  Between episodes the U
   packets alone can pile up past n - k: that rate is added (the rate at which the
   count of U packets crosses n - k, independent slots).  With sigma = 0 this is
   exactly the headline estimate of ``user_durability_stats.conditional_loss_rate``
   (open episodes extended by their mean rest, as there).
3. **Lease lapse** (:func:`lease_lapse`): absences start as a Poisson process (rate
   rho a year) with a length distribution; the lease left when an absence starts, with
   the grace, is at least x = L - R + G (renewed at most R ago).  The owner alone loses
   the backup when an absence outlasts that: rate rho P(A > x).  With d delegates
   renewing too, each must be away throughout the same window: P = rho E[(A - x)+] per
   delegate (an absence covering a fixed window of that length), so the rate is
   rho P(A > x) (rho E[(A - x)+])^d.  Leases only the source renews also lapse on the
   holders it is never up with (``never_up_together`` of the detection run): their
   packets are a floor of lost, unknown packets in 2.  Two absence models: the home
   model's (2 a year, exponential, mean 4 days) and a heavy-tailed one (2 a year,
   log-normal, median 7 days, sigma 1: holidays, a laptop in for repair), an
   assumption stated as such.

Audit traffic (:func:`audit_traffic`): a challenge (packet id, chunk index) and its
proof, one 1 KiB chunk of the packet and its BLAKE3 path (``logic.audit_proof``:
``CHUNK_LEN`` + 32 bytes per level, 7 levels for the 120 kB packets of 10-of-30), plus
framing.  A node is a source and a holder: on a grid where every member audits alike it
answers as many proofs as it checks, so its traffic is twice its own audits'.  Audits
run only while the source is up.

Not modelled: a holder that keeps a packet but answers wrongly (the same as losing it
here), rotten packets found by a restore or a repair fetch (only audits and departures
find them here), distrust that lifts again, correlated silent loss (one firmware bug on
many disks), and audits by delegates after the source is lost (the source audits; its
delegates do not).
"""

from __future__ import annotations

import math
import time
from typing import Any, Final

import attrs
import numpy as np

from gridnode import audit as node_audit
from gridnode.config import NodeConfig
from gridnode.leases import RENEW_ROWS_PER_ROUND
from gridnode.logic import audit_proof

from .durability_stats import any_loss, binomial_tail_vec
from .user_durability import (
    BACKUP_BYTES,
    DAY,
    HOUR,
    MEAN_CHUNK_BYTES,
    YEAR,
    Availability,
    FloatArray,
    Policy,
    SimSettings,
    availability,
    backup_chunks,
    departure_rate,
    shipped_policy,
    simulate,
)
from .user_durability_stats import residual_s
from .user_durability_suite import DESIGN_DEPARTURES, HEADLINE_DEPARTURES

__all__ = [
    "AUDIT_SETTINGS",
    "AuditSetting",
    "ExponentialAbsence",
    "LogNormalAbsence",
    "audit_traffic",
    "detection_times",
    "lease_lapse",
    "shipped_audits",
    "silent_loss_rate",
]

#: Renewal bytes per packet (``RenewLeases`` names packet and owner tag; the figure of
#: ``config_keys``' comment on ``lease_s``).
LEASE_BYTES_PER_PACKET: Final = 70
#: Bytes of framing around each message (session header, msgpack, AEAD tag): assumed.
FRAME_BYTES: Final = 64
#: A challenge's fields besides framing: request id, 32-byte packet id, chunk index.
CHALLENGE_BYTES: Final = 48
#: The longest run of the detection Monte Carlo, in steps (memory: steps x 2 x pairs).
MAX_DETECTION_STEPS: Final = 20_000
#: Holders of one source's packets: placement draws from the whole grid, so a 100 GB
#: backup (2.5 million packets of 10-of-30) is on every member of a 1,000-member grid.
DEFAULT_HOLDERS: Final = 1_000


@attrs.frozen
class AuditSetting:
    """One audit rate: ``batch`` packets every ``interval_s``; interval 0 is off."""

    interval_s: float
    batch: int

    @property
    def off(self) -> bool:
        return self.interval_s <= 0 or self.batch <= 0

    @property
    def per_second(self) -> float:
        """Audits a source sends per second while it is up."""
        return 0.0 if self.off else self.batch / self.interval_s

    @property
    def label(self) -> str:
        if self.off:
            return "off"
        interval = (
            f"{self.interval_s / HOUR:g}h" if self.interval_s >= HOUR else f"{self.interval_s:g}s"
        )
        return f"{self.batch}/{interval}"


#: The sweep: audits off, then rates from one a day per ~40 holders to 6 a second.
AUDIT_SETTINGS: Final = (
    AuditSetting(0.0, 0),
    AuditSetting(3600.0, 1),
    AuditSetting(3600.0, 8),
    AuditSetting(600.0, 8),
    AuditSetting(60.0, 1),
    AuditSetting(60.0, 2),
    AuditSetting(60.0, 4),
    AuditSetting(60.0, 8),
    AuditSetting(60.0, 16),
    AuditSetting(60.0, 64),
    AuditSetting(10.0, 64),
)


def shipped_audits() -> dict[str, Any]:
    """The node's audit defaults and score rules, read from the node so the model follows."""
    fields = attrs.fields_dict(NodeConfig)

    def default(name: str, fallback: float) -> float:
        field = fields.get(name)
        value: Any = None if field is None else field.default
        return fallback if value is None else float(value)

    return {
        "audit_interval_s": default("audit_interval_s", 60.0),
        "audit_batch": int(default("audit_batch", 8)),
        "audit_threshold": default("audit_threshold", 0.5),
        "score_weight": float(node_audit.SCORE_WEIGHT),
        "outcome_value": dict(node_audit.OUTCOME_VALUE),
        "min_audits": int(node_audit.MIN_AUDITS),
        # Leases (gridnode.leases): the design's figures where the node has no key yet.
        "lease_s": default("lease_s", 60 * DAY),
        "lease_renew_interval_s": default("lease_renew_interval_s", 7 * DAY),
        "lease_grace_s": default("lease_grace_s", DAY),
        "lease_sweep_interval_s": default("lease_sweep_interval_s", HOUR),
    }


# ---------------------------------------------------------------------------
# Traffic


def proof_bytes(packet_bytes: float) -> int:
    """A proof's payload for a packet of that size: the chunk and the path (worst index)."""
    size = max(1, round(packet_bytes))
    chunks = audit_proof.chunk_count(size)
    levels = max(audit_proof.path_length(size, i) for i in {0, chunks - 1})
    return audit_proof.CHUNK_LEN + 32 * levels


def audit_traffic(setting: AuditSetting, k: int, up_fraction: float) -> dict[str, float]:
    """Audit bytes of one node a day: as a source (challenges out, proofs in) and as a
    holder (the same again, on a grid where every member audits alike)."""
    packet = MEAN_CHUNK_BYTES / k
    proof = proof_bytes(packet) + FRAME_BYTES
    challenge = CHALLENGE_BYTES + FRAME_BYTES
    per_audit = proof + challenge
    audits_per_day_up = setting.per_second * DAY
    return {
        "proof_bytes": float(proof),
        "challenge_bytes": float(challenge),
        "audits_per_day_while_up": audits_per_day_up,
        "bytes_per_node_per_day_always_up": 2.0 * audits_per_day_up * per_audit,
        "bytes_per_node_per_day": 2.0 * audits_per_day_up * per_audit * up_fraction,
        "bytes_per_second_while_up": 2.0 * setting.per_second * per_audit,
    }


# ---------------------------------------------------------------------------
# Detection


@attrs.frozen(kw_only=True)
class DetectionSettings:
    """Size of one detection run; ``max_days`` bounds the wait measured."""

    pairs: int = 1_000
    max_days: float = 365.0
    warmup_days: float = 7.0
    holders: int = DEFAULT_HOLDERS
    #: The shortest horizon: home machines are away for days at a time, and a wait cut
    #: by the horizon counts as no detection at all (until the holder leaves).
    min_days: float = 90.0


def _plan(rate_per_s: float, settings: DetectionSettings) -> tuple[float, float]:
    """(step_s, horizon_days): about one audit per step at most, and a horizon of ten
    times the typical wait (home sources are up a third of the day, holders half of
    that) but at least ``min_days`` (multi-day absences), within ``max_days``; the step
    grows when the run would exceed ``MAX_DETECTION_STEPS`` (several audits a step are
    then applied one by one)."""
    typical_s = 6.0 / (rate_per_s * 0.3 * 0.5)
    horizon = float(
        np.clip(
            10.0 * typical_s / DAY, min(settings.min_days, settings.max_days), settings.max_days
        )
    )
    span_s = (horizon + settings.warmup_days + 1.0) * DAY
    step = float(np.clip(0.5 / rate_per_s, 60.0, HOUR))
    step = max(step, span_s / MAX_DETECTION_STEPS)
    return step, horizon


def detection_times(
    setting: AuditSetting,
    avail: Availability,
    fraction: float,
    settings: DetectionSettings,
    seed: int = 1,
    rules: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Times (seconds) from a silent loss of ``fraction`` of a holder's packets to the
    first failed audit and to distrust, for ``settings.pairs`` (source, holder) pairs;
    ``inf`` where it did not happen within the horizon.  Every loop is bounded."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rules = rules or shipped_audits()
    pairs = settings.pairs
    if setting.off:
        inf = np.full(pairs, math.inf)
        return {
            "caught_s": inf,
            "distrusted_s": inf,
            "never_up_together": math.nan,
            "horizon_s": math.inf,
            "step_s": 0.0,
        }
    rate = setting.per_second / settings.holders
    step_s, horizon_days = _plan(rate, settings)
    warm = round(settings.warmup_days * DAY / step_s)
    day = max(1, round(DAY / step_s))
    steps = warm + day + round(horizon_days * DAY / step_s)
    rng_sched, rng_audit, rng_event = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    up = avail.schedule(rng_sched, 2 * pairs, steps, step_s)
    source_up, holder_up = up[:, :pairs], up[:, pairs:]
    # The loss happens at a random time of the first day after the warm-up.
    t0 = warm + rng_event.integers(0, day, pairs)
    weight = float(rules["score_weight"])
    value = rules["outcome_value"]
    pass_v, fail_v, miss_v = float(value["passed"]), float(value["failed"]), float(value["missed"])
    threshold = float(rules["audit_threshold"])
    min_audits = int(rules["min_audits"])
    # A holder audited for long: its count is past the minimum, and its score settles
    # to its usual level (passes while up, misses while off) during the warm-up.
    score = np.ones(pairs)
    audits = np.full(pairs, int(rules["min_audits"]), dtype=np.int64)
    caught = np.full(pairs, -1, dtype=np.int64)
    distrusted = np.full(pairs, -1, dtype=np.int64)
    mean_count = rate * step_s
    for t in range(steps):
        count = rng_audit.poisson(mean_count, pairs) * source_up[t]
        top = int(count.max(initial=0))
        after = t >= t0
        for i in range(top):
            hit = count > i
            lost = after & (rng_audit.random(pairs) < fraction)
            outcome = np.where(holder_up[t], np.where(lost, fail_v, pass_v), miss_v)
            score = np.where(hit, score + weight * (outcome - score), score)
            audits += hit
            failed = hit & holder_up[t] & lost
            caught = np.where((caught < 0) & failed, t, caught)
            trusted_not = (
                hit
                & after
                & (threshold > 0)
                & (audits >= min_audits)
                & (score < threshold)
                & (distrusted < 0)
            )
            distrusted = np.where(trusted_not, t, distrusted)
        if t > int(t0.max()) and (distrusted >= 0).all():
            break

    def seconds(at: np.ndarray) -> FloatArray:
        out = np.full(pairs, math.inf)
        done = at >= 0
        out[done] = (at[done] - t0[done] + 0.5) * step_s
        return out

    # Pairs whose source and holder were never up at the same time after the loss: no
    # audit of the source can reach that holder (every one is a miss).
    together = np.zeros(pairs, dtype=np.bool_)
    for start in np.unique(t0).tolist():
        rows = t0 == start
        together[rows] = (source_up[start:, rows] & holder_up[start:, rows]).any(axis=0)
    return {
        "caught_s": seconds(caught),
        "distrusted_s": seconds(distrusted),
        "never_up_together": float(1.0 - together.mean()),
        "horizon_s": (steps - int(t0.max())) * step_s,
        "step_s": step_s,
    }


def summarise_times(times: FloatArray) -> dict[str, Any]:
    """Hours: the mean of the waits that ended within the run, the median and 90th
    percentile of all (None when that quantile lies beyond the run), and the share that
    did not end within the run."""
    done = times[np.isfinite(times)]
    share = 1.0 - done.size / times.size if times.size else 1.0
    ordered = np.sort(times)

    def quantile(level: float) -> float | None:
        if not ordered.size:
            return None
        value = float(ordered[max(0, math.ceil(level * ordered.size) - 1)])
        return value / HOUR if math.isfinite(value) else None

    return {
        "mean_h": float(done.mean() / HOUR) if done.size else None,
        "median_h": quantile(0.5),
        "p90_h": quantile(0.9),
        "not_within_run": share,
    }


# ---------------------------------------------------------------------------
# Loss


def repair_times(
    episodes_w_s: FloatArray, open_elapsed_s: FloatArray, rest_s: float
) -> tuple[FloatArray, FloatArray]:
    """The repair times W (years) and their weights: each closed episode once, each open
    one extended by a memoryless rest of mean ``max(rest_s, elapsed)`` (as
    ``conditional_loss_rate``), spread over Gauss-Laguerre nodes whose weights sum to 1."""
    nodes, weights = np.polynomial.laguerre.laggauss(12)
    mean_rest = np.maximum(open_elapsed_s, rest_s)
    open_w = open_elapsed_s[:, None] + mean_rest[:, None] * nodes[None, :]
    w = np.concatenate([episodes_w_s, open_w.ravel()]) / YEAR
    wt = np.concatenate([np.ones(episodes_w_s.size), np.tile(weights, open_elapsed_s.size)])
    if w.size == 0:
        raise ValueError("the Monte Carlo saw no repair episode: run it longer")
    return w, wt


def silent_loss_rate(
    policy: Policy,
    lam: float,
    sigma: float,
    fraction: float,
    detection_s: FloatArray,
    w_years: FloatArray,
    w_weights: FloatArray,
    q_floor: float = 0.0,
) -> dict[str, float]:
    """Loss rate per chunk-year with departures (lam a year) and silent loss (sigma
    events per holder-year, each losing ``fraction`` of the holder's packets), the
    method of the module doc.  ``detection_s`` are measured times to distrust (inf:
    never); ``w_years`` and ``w_weights`` the repair times of episodes (``repair_times``).
    ``q_floor`` is a share of packets lost and unknown whatever the audits (the leases of
    holders the renewer never meets, which lapse)."""
    k, n, r = policy.k, policy.n, policy.repair_threshold
    s = sigma * fraction
    d_years = detection_s / YEAR
    finite = np.isfinite(d_years)
    if s == 0:
        t_mean = 0.0
    elif lam > 0:
        # E[min(D, X)], X ~ Exp(lam) the holder's departure: (1 - exp(-lam D)) / lam.
        held = np.full(d_years.size, 1.0 / lam)
        held[finite] = -np.expm1(-lam * d_years[finite]) / lam
        t_mean = float(held.mean())
    else:
        t_mean = float(d_years.mean()) if finite.all() else math.inf
    q = 0.0 if s == 0 else (1.0 if math.isinf(t_mean) else s * t_mean / (1.0 + s * t_mean))
    q = 1.0 - (1.0 - q) * (1.0 - q_floor)
    fail_w = -np.expm1(-(lam + s) * w_years)
    total_weight = float(w_weights.sum())
    # Episode loss: sum over S (U packets among the r others) of P(S) * P(lost | S).
    per_episode = 0.0
    for u in range(0, r + 1):
        p_u = math.comb(r, u) * q**u * (1.0 - q) ** (r - u)
        if p_u == 0.0:
            continue
        healthy = r - u
        if healthy < k:
            continue  # already lost before the episode: the term below counts it
        tail = binomial_tail_vec(healthy - k + 1, healthy, fail_w)
        per_episode += p_u * float(tail @ w_weights) / total_weight
    gone_rate = lam + s
    healthy_phase = (
        sum(1.0 / (j * gone_rate) for j in range(r + 1, n + 1)) if gone_rate else math.inf
    )
    cycle = healthy_phase + float(w_years @ w_weights) / total_weight
    episodes = per_episode / cycle
    # U packets piling up past n - k between episodes (independent slots).
    crossing = n * (1.0 - q) * s * float(binomial_tail_vec(n - k, n - 1, np.array([q]))[0])
    return {
        "rate": episodes + crossing,
        "rate_episodes": episodes,
        "rate_crossing": crossing,
        "share_undetected": q,
        "undetected_years_mean": t_mean,
    }


# ---------------------------------------------------------------------------
# Leases


@attrs.frozen
class ExponentialAbsence:
    """Absences of the home availability model: Poisson starts, exponential lengths."""

    rate_per_year: float
    mean_days: float
    name: str = "home"

    def survival(self, days: float) -> float:
        return math.exp(-days / self.mean_days) if days > 0 else 1.0

    def excess(self, days: float) -> float:
        """E[(A - days)+] in days."""
        return self.mean_days * self.survival(days)


def _phi(x: float) -> float:
    """The standard normal distribution function."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


@attrs.frozen
class LogNormalAbsence:
    """Heavy-tailed absences (an assumption): log-normal lengths, median and sigma."""

    rate_per_year: float
    median_days: float
    sigma: float
    name: str = "long"

    def survival(self, days: float) -> float:
        if days <= 0:
            return 1.0
        z = (math.log(days) - math.log(self.median_days)) / self.sigma
        return 0.5 * math.erfc(z / math.sqrt(2.0))

    def excess(self, days: float) -> float:
        mu, s = math.log(self.median_days), self.sigma
        if days <= 0:
            return math.exp(mu + s * s / 2.0) - days
        d2 = (mu - math.log(days)) / s
        return math.exp(mu + s * s / 2.0) * _phi(d2 + s) - days * _phi(d2)


Absence = ExponentialAbsence | LogNormalAbsence


def absence_models(avail: Availability) -> tuple[Absence, ...]:
    return (
        ExponentialAbsence(avail.absence_rate_per_year, avail.absence_mean_days),
        LogNormalAbsence(2.0, 7.0, 1.0),
    )


def lease_lapse(
    lease_s: float, renew_s: float, absence: Absence, delegates: int, grace_s: float = 0.0
) -> dict[str, Any]:
    """Yearly chance that the owner (and its ``delegates``) renew nothing for longer than
    the lease left and the holder's grace, so every holder reclaims the backup (module
    doc, point 3).  The node renews at most every half lease (``LeaseKeeper``)."""
    if lease_s <= 0 or renew_s <= 0 or grace_s < 0:
        raise ValueError("lease and renewal interval must be > 0, grace >= 0")
    every = min(renew_s, lease_s / 2.0)
    left_days = (lease_s - every + grace_s) / DAY
    rho = absence.rate_per_year
    owner = rho * absence.survival(left_days)
    covered = min(1.0, rho / 365.25 * absence.excess(left_days))
    rate = owner * covered**delegates
    return {
        "lease_days": lease_s / DAY,
        "renew_days": renew_s / DAY,
        "absence_model": absence.name,
        "delegates": delegates,
        "safe_absence_days": left_days,
        "loss_per_year": -math.expm1(-rate),
    }


def lease_traffic(rules: dict[str, Any], packets: int, up_fraction: float) -> dict[str, float]:
    """Renewal bytes a day of a source (``RenewLeases`` names every packet: some 70 bytes
    each, ``config_keys``), and how many packets it can keep leased on a home machine:
    ``RENEW_ROWS_PER_ROUND`` rows a round, a round every ``lease_sweep_interval_s`` while
    it is up, within the window a renewal has before the lease ends (lease - interval)."""
    every = min(rules["lease_renew_interval_s"], rules["lease_s"] / 2.0)
    window = rules["lease_s"] - every
    sweep = rules["lease_sweep_interval_s"]
    rounds = window / sweep * up_fraction if sweep > 0 else 0.0
    capacity = rounds * RENEW_ROWS_PER_ROUND
    backup_per_packet = BACKUP_BYTES / packets
    return {
        "bytes_per_packet": float(LEASE_BYTES_PER_PACKET),
        "bytes_per_source_per_day": packets * LEASE_BYTES_PER_PACKET * DAY / every,
        "packets_renewable_per_window_home": capacity,
        "largest_backup_bytes_home": capacity * backup_per_packet,
    }


# ---------------------------------------------------------------------------
# The sweep


#: Silent-loss scenarios (sigma per holder-year, fraction lost per event).  The first is
#: the design point: one member in ten a year silently loses everything it holds (a
#: dead disk behind a running node, or a member that cheats), several times the yearly
#: failure rate of a disk.  The audit defaults must hold a 100 GB backup at or under 1 %
#: a year in every scenario that loses packets at most as fast (sigma * f).
SCENARIOS: Final = (
    (0.1, 1.0),
    (0.3, 1.0),
    (1.0, 1.0),
    (0.3, 0.25),
)
TARGET_ANY_LOSS: Final = 0.01
#: Leases and renewal intervals of the lease sweep (days).
LEASE_DAYS: Final = (14.0, 30.0, 60.0, 90.0, 180.0)
RENEW_DAYS: Final = (1.0, 7.0)


@attrs.frozen(kw_only=True)
class AuditSuite:
    detection: DetectionSettings
    sim: SimSettings
    settings: tuple[AuditSetting, ...]
    fractions: tuple[float, ...]

    @classmethod
    def for_mode(cls, mode: str) -> AuditSuite:
        """ "tiny" (tests: a few seconds), "quick" or "full"."""
        if mode == "tiny":
            return cls(
                detection=DetectionSettings(pairs=300, max_days=60.0, warmup_days=2.0),
                sim=SimSettings(nodes=200, chunks=100, days=8.0, step_s=3600.0),
                settings=(
                    AUDIT_SETTINGS[0],
                    AuditSetting(600.0, 8),
                    AuditSetting(60.0, 8),
                    AuditSetting(60.0, 16),
                ),
                fractions=(1.0,),
            )
        if mode == "quick":
            return cls(
                detection=DetectionSettings(pairs=400, max_days=180.0),
                sim=SimSettings(nodes=400, chunks=300, days=16.0, step_s=3600.0),
                settings=AUDIT_SETTINGS,
                fractions=(1.0, 0.25),
            )
        if mode == "full":
            return cls(
                detection=DetectionSettings(pairs=1_000, max_days=365.0),
                sim=SimSettings(nodes=1_500, chunks=2_000, days=50.0, step_s=900.0),
                settings=AUDIT_SETTINGS,
                fractions=(1.0, 0.25),
            )
        raise ValueError(f"unknown mode {mode!r}; use tiny, quick or full")


def _loss_row(
    policy: Policy,
    p_year: float,
    sigma: float,
    fraction: float,
    distrusted_s: FloatArray,
    w: tuple[FloatArray, FloatArray],
    chunks: int,
) -> dict[str, Any]:
    out = silent_loss_rate(policy, departure_rate(p_year), sigma, fraction, distrusted_s, *w)
    return {
        "departures_per_year": p_year,
        "silent_per_holder_year": sigma,
        "fraction": fraction,
        **out,
        "loss_any_file_100gb_per_year": any_loss(out["rate"], chunks),
    }


def _choose_audits(rows: list[dict[str, Any]], repair_after_s: float) -> dict[str, Any] | None:
    """The least audit traffic that (a) keeps a 100 GB backup at or under the target in
    every scenario losing packets at most as fast as the design point (``SCENARIOS[0]``,
    sigma * f) at the headline departures, and (b) distrusts a holder that lost
    everything, on average, no later than a departed holder is taken for gone
    (``repair_after_s``)."""
    design = SCENARIOS[0][0] * SCENARIOS[0][1]
    fine = []
    for row in rows:
        losses = [
            x["loss_any_file_100gb_per_year"]
            for x in row["loss"]
            if x["departures_per_year"] == HEADLINE_DEPARTURES
            and x["silent_per_holder_year"] * x["fraction"] <= design
        ]
        whole = row["detection"]["fraction_1"]["distrusted"]
        fast = whole["mean_h"] is not None and whole["mean_h"] * HOUR <= repair_after_s
        if losses and max(losses) <= TARGET_ANY_LOSS and fast:
            fine.append(row)
    return min(fine, key=lambda r: r["audits_per_second"]) if fine else None


def _choose_lease(lease_rows: list[dict[str, Any]], delegates: int) -> tuple[float, float] | None:
    """The shortest lease (the least space a source gone for good keeps) whose lapse stays
    under a tenth of the target both for the owner alone with the home model's absences
    and with the delegates renewing under the heavy-tailed ones; renewed at the slowest
    rate that does (the least traffic)."""

    def lapse(pair: tuple[float, float], model: str, d: int) -> float:
        return float(
            next(
                r["loss_per_year"]
                for r in lease_rows
                if (r["lease_days"], r["renew_days"], r["absence_model"], r["delegates"])
                == (*pair, model, d)
            )
        )

    budget = TARGET_ANY_LOSS / 10.0
    pairs = sorted({(r["lease_days"], r["renew_days"]) for r in lease_rows})
    fine = [
        p for p in pairs if lapse(p, "home", 0) <= budget and lapse(p, "long", delegates) <= budget
    ]
    return min(fine, key=lambda p: (p[0], -p[1])) if fine else None


def run_audits(mode: str = "full", seed: int = 1) -> dict[str, Any]:
    """Detection and loss against the audit rate, the lease sweep and the defaults."""
    started = time.perf_counter()
    suite = AuditSuite.for_mode(mode)
    rules = shipped_audits()
    ship = shipped_policy()
    policy = Policy.shipped()
    home = availability("home")
    chunks = backup_chunks()
    packets = chunks * policy.n
    up = home.mean_up()
    # The shipped policy's repair times on home machines (user_durability).
    mc = simulate(policy, home, suite.sim, seed)
    w = repair_times(mc.episodes_w_s, mc.open_elapsed_s, residual_s(mc, home))
    shipped_setting = AuditSetting(rules["audit_interval_s"], rules["audit_batch"])
    settings = sorted(set(suite.settings) | {shipped_setting}, key=lambda s: s.per_second)
    departures = (HEADLINE_DEPARTURES, DESIGN_DEPARTURES)
    fractions = sorted(set(suite.fractions) | {1.0}, reverse=True)
    rows: list[dict[str, Any]] = []
    for setting in settings:
        # One seed for every setting: the same schedules wherever the step is the same.
        found = {
            f: detection_times(setting, home, f, suite.detection, seed=seed + 100, rules=rules)
            for f in fractions
        }
        rows.append(
            {
                "audit_interval_s": setting.interval_s,
                "audit_batch": setting.batch,
                "label": setting.label,
                "shipped": setting == shipped_setting,
                "audits_per_second": setting.per_second,
                "audits_per_holder_per_day_while_up": setting.per_second
                * DAY
                / suite.detection.holders,
                "traffic": audit_traffic(setting, policy.k, up),
                # The brief's figure: one given packet among all the source's packets,
                # ``batch`` of them sampled per interval.
                "days_to_sample_one_given_packet_while_up": (
                    None if setting.off else packets / setting.per_second / DAY
                ),
                "detection": {
                    f"fraction_{f:g}": {
                        "caught": summarise_times(d["caught_s"]),
                        "distrusted": summarise_times(d["distrusted_s"]),
                        "never_up_together": d["never_up_together"],
                        "horizon_days": d["horizon_s"] / DAY,
                        "step_s": d["step_s"],
                    }
                    for f, d in found.items()
                },
                "loss": [
                    _loss_row(policy, p, sigma, f, found[f]["distrusted_s"], w, chunks)
                    for p in departures
                    for sigma, f in SCENARIOS
                    if f in found
                ],
            }
        )
    baseline = silent_loss_rate(
        policy, departure_rate(HEADLINE_DEPARTURES), 0.0, 1.0, np.zeros(1), *w
    )
    chosen = _choose_audits(rows, float(ship["repair_after_s"]))
    delegates = int(ship["repair_delegates"])
    lease_rows = [
        lease_lapse(lease_d * DAY, renew_d * DAY, absence, d, rules["lease_grace_s"])
        for absence in absence_models(home)
        for lease_d in LEASE_DAYS
        for renew_d in RENEW_DAYS
        if renew_d < lease_d
        for d in sorted({0, delegates})
    ]
    lease = _choose_lease(lease_rows, delegates)
    recommendation: dict[str, Any] = {
        "criteria": (
            "audits: the least traffic with every scenario of sigma * f <= "
            f"{SCENARIOS[0][0] * SCENARIOS[0][1]:g} silent losses per holder-year "
            f"at or under {TARGET_ANY_LOSS:.0%} a year (departures "
            f"{HEADLINE_DEPARTURES:.1%}/yr) and a holder that lost everything distrusted "
            f"within repair_after_s ({ship['repair_after_s'] / DAY:g} d) on average; "
            f"leases: the shortest with a lapse under {TARGET_ANY_LOSS / 10:.1%} a year for "
            "the owner alone (home absences) and with its delegates (heavy-tailed absences)"
        ),
        "met": chosen is not None and lease is not None,
    }

    def figures(row: dict[str, Any]) -> dict[str, Any]:
        """What the closing note compares: detection, loss at the design point, bytes."""
        return {
            "label": row["label"],
            "detection_whole_loss": row["detection"]["fraction_1"]["distrusted"],
            "loss_any_file_100gb_per_year_silent": next(
                x["loss_any_file_100gb_per_year"]
                for x in row["loss"]
                if x["departures_per_year"] == HEADLINE_DEPARTURES
                and (x["silent_per_holder_year"], x["fraction"]) == SCENARIOS[0]
            ),
            "audit_bytes_per_node_per_day": row["traffic"]["bytes_per_node_per_day"],
        }

    recommendation["shipped"] = figures(next(r for r in rows if r["shipped"]))
    recommendation["off"] = figures(next(r for r in rows if r["audits_per_second"] == 0))
    if chosen is not None:
        head = next(
            x
            for x in chosen["loss"]
            if x["departures_per_year"] == HEADLINE_DEPARTURES
            and (x["silent_per_holder_year"], x["fraction"]) == SCENARIOS[0]
        )
        recommendation.update(
            audit_interval_s=chosen["audit_interval_s"],
            audit_batch=chosen["audit_batch"],
            audits_per_holder_per_day_while_up=chosen["audits_per_holder_per_day_while_up"],
            loss_any_file_100gb_per_year_silent=head["loss_any_file_100gb_per_year"],
            detection_whole_loss=chosen["detection"]["fraction_1"]["distrusted"],
            audit_bytes_per_node_per_day=chosen["traffic"]["bytes_per_node_per_day"],
        )
    if lease is not None:
        lapse_rows = [r for r in lease_rows if (r["lease_days"], r["renew_days"]) == lease]
        recommendation.update(
            lease_s=lease[0] * DAY,
            lease_renew_interval_s=lease[1] * DAY,
            lease_lapse_per_year={
                f"{r['absence_model']}_delegates_{r['delegates']}": r["loss_per_year"]
                for r in lapse_rows
            },
        )
    if chosen is not None and lease is not None:
        recommendation["loss_any_file_100gb_per_year_total"] = (
            recommendation["loss_any_file_100gb_per_year_silent"]
            + recommendation["lease_lapse_per_year"][f"long_delegates_{delegates}"]
        )
    # Leases only the source renews lapse on holders it is never up with (their packets
    # are reclaimed; repair comes when the holder leaves): a floor of lost packets.
    shipped_row = next(r for r in rows if r["shipped"])
    never = float(shipped_row["detection"]["fraction_1"]["never_up_together"])
    unrenewed = silent_loss_rate(
        policy, departure_rate(HEADLINE_DEPARTURES), 0.0, 1.0, np.zeros(1), *w, q_floor=never
    )
    leases_source_only = {
        "share_of_holders_never_up_with_the_source": never,
        "loss_any_file_100gb_per_year": any_loss(unrenewed["rate"], chunks),
    }
    return {
        "mode": mode,
        "shipped_audits": rules,
        "policy": policy.label,
        "holders": suite.detection.holders,
        "detection_pairs": suite.detection.pairs,
        "packets_of_100gb": packets,
        "home_up_fraction": up,
        "departures_per_year": list(departures),
        "headline_departures_per_year": HEADLINE_DEPARTURES,
        "repair_after_s_h": float(ship["repair_after_s"]) / HOUR,
        "target_loss_any_file_per_year": TARGET_ANY_LOSS,
        "scenarios": [{"silent_per_holder_year": s, "fraction": f} for s, f in SCENARIOS],
        "baseline_no_silent_loss_any_file_100gb_per_year": any_loss(baseline["rate"], chunks),
        "repair_episodes": int(mc.episodes_w_s.size + mc.open_elapsed_s.size),
        "repair_time_mean_h": float(w[0] @ w[1] / w[1].sum() * YEAR / HOUR),
        "rows": rows,
        "leases": lease_rows,
        "lease_traffic": lease_traffic(rules, packets, up),
        "leases_renewed_by_the_source_only": leases_source_only,
        "recommendation": recommendation,
        "runtime_s": time.perf_counter() - started,
    }
