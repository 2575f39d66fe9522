"""SWIM membership with Lifeguard's refinements, as a pure state machine.

Nothing here does I/O or reads a clock: the driver (the gossip actor, a test harness or
the scale simulation) passes ``now`` in, delivers every ``Outgoing`` it gets back, and
calls ``tick`` no later than ``next_deadline()``.  The same code therefore runs under
trio's MockClock, in a discrete-event simulation of 10,000 members and in production.

Rules (after HashiCorp memberlist; "Lifeguard" is Dadgar et al., 2018):

Rule 1. Every probe interval (scaled by the local health score, Lifeguard's "local
        health awareness") a member probes the next member of a round-robin cycle in
        random order.  No ack within the probe timeout: k other members are asked to
        probe it (ping-req) and it is probed directly once more; no ack, direct or
        relayed, by the end of the interval: the member is suspected.  Relays that
        cannot reach the target either answer with a nack, which tells the prober its
        own network is fine.
Rule 2. A suspicion refers to the subject's incarnation.  It expires into ``dead``
        after a timeout that starts at ``suspicion_max_timeout_mult`` times the minimum
        and shrinks towards the minimum (``suspicion_mult * log10(N) * probe_interval``)
        with each independent confirmation (Lifeguard's dynamic suspicion).  Only this
        member's own timer declares a death: a "dead" claim from anyone else counts as
        one more confirmation, so no single member moves another from alive to dead
        without the whole suspicion period, and a lone accuser always meets the maximum.
Rule 2a. Suspect and dead claims are signed by their reporter (``proof``), so who said
        what survives relaying.  A claim counts only when its proof verifies and its
        reporter is a member held alive or suspect here, other than the subject; each
        reporter counts once per suspicion, so confirmations are independent
        authenticated members.  A forged claim drops its whole update and is counted.
Rule 2b. A reporter is struck for a false accusation when a suspicion it made or
        confirmed is refuted, or when it accuses this member.  With
        ``accuser_strike_limit`` strikes inside ``accuser_strike_window_s`` its claims
        are accepted at most once per ``accuser_cooldown_s`` (none for that long after
        a strike) and the rest are dropped and counted.  A claim about ourselves is
        always refuted, whoever made it: keeping quiet would let the others' timers
        run out.
Rule 3. A member that hears itself suspected or declared dead at its current
        incarnation (or newer, a leftover of a previous life) refutes: it signs its
        record again with a higher incarnation and gossips it.  Only a higher
        incarnation clears suspect or dead; a higher sequence only refreshes content.
Rule 4. Records are owner-signed.  A record newer than the one held is verified before
        it is used (a shared cache remembers verdicts: validity is a property of the
        bytes); a bad signature is dropped and counted, an older record ignored.
        ``left`` needs the owner's own record with ``leaving`` set.
Rule 4a. Signature checks are the expensive part of gossip, so they are budgeted: at
        most ``max_verifications_per_message`` per message (or per tick), and token
        buckets per authenticated sender (``peer_verify_per_s``, ``peer_verify_burst``)
        and overall (``verify_per_s``, ``verify_burst``).  An update that would
        exceed a budget waits in a bounded queue (``max_pending_per_peer``,
        ``max_pending_updates``) and is applied by later ticks; beyond that it is
        dropped and counted (anti-entropy brings it again).  A sync page therefore
        costs bounded work however many new records it carries, and a peer that
        sends fresh forgeries spends only its own bucket.
Rule 5. Every change is queued for dissemination and piggybacked on probes, acks and
        gossip rounds (``gossip_fanout`` random members every ``gossip_interval_s``)
        at most ``retransmit_mult * ceil(log10(N + 1))`` times, fewest-sent first.
Rule 5a. A suspect or dead claim older than the alive record we hold (about a member
        or ourselves) puts that record back in the queue, unless it is still there:
        the claim's sender missed the refutation, and maybe others did too.
Rule 5b. A content refresh (a newer sequence at the same incarnation of a member held
        alive: free space, mostly) is piggybacked by its owner, but relayed by others
        only in a grid of at most ``refresh_relay_max_members``; above that it spreads
        by anti-entropy (Rule 6).  Relaying costs every member ``retransmit limit x
        record size`` (~9 KB at 10,000 members) per change, anti-entropy about one
        record; placement tolerates a free-space figure some minutes old.
Rule 5c. A member learnt from a full state or a digest answer is not queued for
        dissemination: the sender's view already holds it, and a joiner relaying
        the 10,000 records of its first state would send ~90 MB.  News in such an
        answer (a refutation, a claim) is still queued as usual.
Rule 6. Anti-entropy by digest: every ``sync_interval_s`` a member sends one random
        member a digest of its view (``GossipDigest``: the XOR of ``entry_hash`` per
        bucket of node ids, at most 256 buckets, ~2 KiB at 10,000 members).  The
        receiver answers with its entry hashes in the buckets that differ; the sender
        pushes the records the receiver lacks or holds differently and asks for the
        ones it lacks; only those records travel.  A full state, in pages of at most
        ``max_records_per_message``, goes only to a joiner (``join``).  A member
        answers one sender's digest, and its join, at most once per
        ``sync_answer_interval_s``; a digest's lists are hints that only choose
        which signed records to send or ask for, so a lying digest suppresses and
        forges nothing, and every list has a wire bound.  To heal partitions, a
        member also exchanges digests with a dead member or a seed that is not
        alive, with probability (those) / (alive members + 1), like serf's reconnect;
        a member alone re-joins through its seeds.  A seed is known by the node id
        the transport met when it dialled the seed's address (``seed_reached``),
        never by whichever record claims that address.
Rule 7. Dead and left members are forgotten ``dead_reap_s`` after the transition.
Rule 8. Probe round trips are recorded; a member whose claimed distance could not be
        covered by light in fibre within its best recent round trip has an implausible
        location: untrusted under ``enforce``, flagged under ``warn``, ignored under
        ``off``.  Under ``enforce`` a member is not trusted on location either until
        it has at least one round-trip sample: a claim nothing has measured is no
        better than an implausible one for a distance rule.
Rule 9. A probe request (ping-req) is served only for a member we know, at the address
        of its signed record; the address the requester supplies is never dialled, so
        no peer can point this node at an arbitrary host.

Memory: ``shared_view`` lets thousands of instances in one process share the initial
records; each instance keeps only what differs (an overlay), so a 10,000-member
simulation does not hold 100 million entries.
"""

from __future__ import annotations

import collections
import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Final, TypeVar

import attrs
import nacl.signing

from gridnode.logic.distance import haversine_km
from protocol import (
    GossipIndirectAck,
    GossipLeave,
    GossipProbe,
    GossipProbeAck,
    GossipProbeRequest,
    GossipSync,
    GossipSyncReply,
    GossipUpdates,
    LocalProtocolError,
    MemberRecord,
    MemberUpdate,
    Message,
    claim_digest,
    claim_is_valid,
    encode,
    encoded_size,
    record_digest,
    record_is_valid,
    sign_claim,
    sign_record,
)
from protocol._gossip import (
    DIGEST_HASH_BYTES,
    MAX_DIGEST_BITS,
    MAX_DIGEST_ENTRIES,
    MAX_DIGEST_RECORDS,
    GossipDigest,
    GossipDigestRecords,
    GossipDigestReply,
    entry_hash,
)

__all__ = [
    "LOCATION_CHECKS",
    "STATES",
    "GossipConfig",
    "MemberView",
    "Membership",
    "MembershipStatistics",
    "Outgoing",
    "SharedView",
]

STATES: Final = ("alive", "suspect", "dead", "left")
LOCATION_CHECKS: Final = ("enforce", "warn", "off")

_ALIVE: Final = "alive"
_SUSPECT: Final = "suspect"
_DEAD: Final = "dead"
_LEFT: Final = "left"
_GONE: Final = (_DEAD, _LEFT)
_CLAIMS: Final = (_SUSPECT, _DEAD)
_OWN_VERIFY_CACHE_MAX: Final = 1 << 16
_PROBE_ID_WRAP: Final = 1 << 62
#: Bounds on the per-peer tables (buckets, accusers, sync answers): above this many
#: entries the idle ones are purged, then the oldest.
_PEER_TABLE_MAX: Final = 4096
_UNSETTABLE: Final = frozenset({"node_id", "signature", "sequence", "incarnation", "leaving"})
_RECORD_FIELDS: Final = tuple(f.name for f in attrs.fields(MemberRecord) if f.name != "signature")
#: Digests are kept at the finest level (one bucket per first byte of the node id) and
#: folded down to the level an exchange uses.
_FINE_BUCKETS: Final = 1 << MAX_DIGEST_BITS
#: Members per bucket a digest aims at: a differing bucket costs ~8 bytes per member.
_DIGEST_MEMBERS_PER_BUCKET: Final = 32
#: Digest exchanges we started and are waiting for, and answered and may still be
#: asked records for (per peer); older ones are forgotten.
_DIGESTS_OPEN_MAX: Final = 64


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number, not {value!r}")


def _count(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer, not {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


@attrs.frozen
class GossipConfig:
    """Intervals, fan-outs and timeouts; the defaults are memberlist's LAN profile."""

    probe_interval_s: float = attrs.field(default=1.0, validator=_positive)
    probe_timeout_s: float = attrs.field(default=0.5, validator=_positive)
    indirect_probes: int = attrs.field(
        default=3, validator=[attrs.validators.instance_of(int), _non_negative]
    )
    gossip_interval_s: float = attrs.field(default=0.2, validator=_positive)
    gossip_fanout: int = attrs.field(default=3, validator=_count)
    #: Retransmit limit = retransmit_mult * ceil(log10(N + 1)).
    retransmit_mult: int = attrs.field(default=4, validator=_count)
    #: Lifeguard: the suspicion timeout shrinks with independent confirmations from
    #: ``suspicion_max_timeout_mult`` times the minimum down to the minimum.
    suspicion_mult: int = attrs.field(default=4, validator=_count)
    suspicion_max_timeout_mult: int = attrs.field(default=6, validator=_count)
    #: Forget dead and left members after this.
    dead_reap_s: float = attrs.field(default=30.0, validator=_positive)
    #: Anti-entropy: a digest exchange with one random member (Rule 6).
    sync_interval_s: float = attrs.field(default=30.0, validator=_positive)
    location_check: str = attrs.field(
        default="enforce", validator=attrs.validators.in_(LOCATION_CHECKS)
    )
    fibre_km_per_ms_rtt: float = attrs.field(default=100.0, validator=_positive)
    #: Keep gossiping to the recently dead so a wrongly declared member hears it and
    #: refutes (memberlist's GossipToTheDeadTime).
    gossip_to_dead_s: float = attrs.field(default=30.0, validator=_non_negative)
    #: Lifeguard local health: probe interval and timeout scale up to this factor.
    awareness_max_multiplier: int = attrs.field(default=8, validator=_count)
    #: Updates piggybacked on one probe, ack or gossip message.
    max_piggyback: int = attrs.field(default=8, validator=_count)
    #: One page of a full state exchange.
    max_records_per_message: int = attrs.field(default=4096, validator=_count)
    #: Was: above this many members the sync interval grew like memberlist's push/pull.
    #: Unused since anti-entropy runs by digest (Rule 6); kept so callers still work.
    sync_scale_threshold: int = attrs.field(default=32, validator=_count)
    #: Rule 5b: above this many members content refreshes spread by anti-entropy only.
    refresh_relay_max_members: int = attrs.field(default=64, validator=_count)
    #: A member that knows nobody retries its seeds this often.
    rejoin_interval_s: float = attrs.field(default=5.0, validator=_positive)
    #: Round trips kept per member; the minimum of them is the "best recent" one.
    rtt_samples: int = attrs.field(default=8, validator=_count)
    #: Own record changes are disseminated at most this often (latest value wins).
    self_update_min_interval_s: float = attrs.field(default=1.0, validator=_non_negative)
    #: Rule 4a: fresh signature checks per message (and per tick for waiting updates);
    #: about 110 us each, so 128 keep one message under ~15 ms of CPU.
    max_verifications_per_message: int = attrs.field(default=128, validator=_count)
    #: Rule 4a: fresh signature checks one sender may cause: a burst (a join into a
    #: grid of 4,096) and a sustained rate (~3% of a core).
    peer_verify_burst: int = attrs.field(default=4096, validator=_count)
    peer_verify_per_s: float = attrs.field(default=256.0, validator=_positive)
    #: Rule 4a: the same over every sender together (~25% of a core).
    verify_burst: int = attrs.field(default=2048, validator=_count)
    verify_per_s: float = attrs.field(default=2048.0, validator=_positive)
    #: Rule 4a: updates waiting for a budget, in all and from one sender.
    max_pending_updates: int = attrs.field(default=8192, validator=_count)
    max_pending_per_peer: int = attrs.field(default=4096, validator=_count)
    #: Rule 6: one sender gets a full state answer at most this often.
    sync_answer_interval_s: float = attrs.field(default=5.0, validator=_non_negative)
    #: Rule 2b: false accusations within a window that get a reporter rate-limited,
    #: and how often a limited reporter's claims are still heard.
    accuser_strike_limit: int = attrs.field(default=3, validator=_count)
    accuser_strike_window_s: float = attrs.field(default=300.0, validator=_positive)
    accuser_cooldown_s: float = attrs.field(default=30.0, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.max_piggyback > 64:
            raise ValueError("max_piggyback must be at most 64 (the wire limit)")
        if self.max_records_per_message > 4096:
            raise ValueError("max_records_per_message must be at most 4096 (the wire limit)")


@attrs.frozen
class Outgoing:
    """A message for the driver to deliver; ``node_id`` is None for a bare seed address.

    ``address`` is empty when the receiver's address is unknown (an answer to a member
    we have no record of): deliver it on the session the request came in on.
    """

    node_id: bytes | None
    address: str
    message: Message


@attrs.frozen
class MemberView:
    """One member as status output and placement see it."""

    record: MemberRecord
    state: str
    #: Best recent direct probe round trip, in ms.
    rtt_ms: float | None
    #: Great-circle distance from this node, when both locations are known.
    distance_km: float | None
    #: False only under ``location_check="enforce"`` for an implausible location.
    location_trusted: bool
    #: False when the best round trip is too short for the claimed distance.
    location_plausible: bool
    state_since: float

    @property
    def node_id(self) -> bytes:
        return self.record.node_id


@attrs.frozen
class MembershipStatistics:
    """Counters since construction (trio's ``statistics()`` convention)."""

    members_alive: int
    members_suspect: int
    members_dead: int
    members_left: int
    messages_sent: dict[str, int]
    bytes_sent: dict[str, int]
    messages_received: dict[str, int]
    bytes_received: dict[str, int]
    forged_records_dropped: int
    #: Correctly signed records without a valid subscription certificate (issue 9).
    unadmitted_records_dropped: int
    stale_updates_ignored: int
    invalid_messages_dropped: int
    probes_sent: int
    probes_failed: int
    indirect_probes_sent: int
    relays_served: int
    suspicions_started: int
    suspicions_refuted: int
    refutations: int
    deaths_declared: int
    members_reaped: int
    syncs_sent: int
    syncs_answered: int
    broadcasts_pending: int
    health_score: int
    #: Suspect/dead claims whose reporter's signature did not verify (Rule 2a).
    forged_claims_dropped: int
    #: Strikes given to reporters whose accusations proved false (Rule 2b).
    false_accusations: int
    #: Claims dropped because their reporter is rate-limited (Rule 2b).
    accusations_rate_limited: int
    #: Updates that waited for a verification budget, and that were dropped because
    #: the queue was full (Rule 4a); updates waiting now.
    updates_deferred: int
    updates_over_budget: int
    updates_pending: int
    #: Full state requests left unanswered: the sender asked too often (Rule 6).
    sync_answers_refused: int
    #: Probe requests for a member we do not know (Rule 9).
    probe_requests_refused: int


class SharedView(Mapping[bytes, MemberRecord]):
    """Initial records shared read-only by many ``Membership`` instances.

    Signatures are checked once here, invalid and leaving records are left out, and the
    gossip form of every record is built once, so a thousand instances built on one
    ``SharedView`` pay for none of it again.
    """

    __slots__ = ("_records", "base", "by_bucket", "hashes", "ids", "updates")

    def __init__(
        self,
        records: Iterable[MemberRecord],
        *,
        verify_cache: MutableMapping[bytes, bool] | None = None,
    ) -> None:
        cache = verify_cache if verify_cache is not None else {}
        valid: dict[bytes, MemberRecord] = {}
        for rec in records:
            if rec.leaving or not _verified(rec, cache):
                continue
            old = valid.get(rec.node_id)
            if old is None or (rec.incarnation, rec.sequence) > (old.incarnation, old.sequence):
                valid[rec.node_id] = rec
        self._records = valid
        self.ids: tuple[bytes, ...] = tuple(valid)
        self.updates: dict[bytes, MemberUpdate] = {
            nid: MemberUpdate(record=rec, state=_ALIVE) for nid, rec in valid.items()
        }
        #: Rule 6: every record's digest entry, the XOR of them per bucket, and the
        #: members of each bucket; an instance keeps only how its view differs.
        self.hashes: dict[bytes, int] = {
            nid: entry_hash(nid, rec.incarnation, rec.sequence, _ALIVE)
            for nid, rec in valid.items()
        }
        self.base: list[int] = [0] * _FINE_BUCKETS
        buckets: list[list[bytes]] = [[] for _ in range(_FINE_BUCKETS)]
        for nid, value in self.hashes.items():
            self.base[nid[0]] ^= value
            buckets[nid[0]].append(nid)
        self.by_bucket: tuple[tuple[bytes, ...], ...] = tuple(tuple(b) for b in buckets)

    def __getitem__(self, key: bytes) -> MemberRecord:
        return self._records[key]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, key: object) -> bool:
        return key in self._records


def _verified(rec: MemberRecord, cache: MutableMapping[bytes, bool]) -> bool:
    # The digest covers every signed field and the signature: a changed field or a
    # swapped signature is a different key, so one cache can serve every instance of
    # a simulation.
    key = record_digest(rec)
    ok = cache.get(key)
    if ok is None:
        ok = record_is_valid(rec)
        cache[key] = ok
    return ok


@attrs.define(slots=True)
class _Member:
    record: MemberRecord
    state: str
    state_since: float
    #: The gossip form of (record, state, reporter), reused so identical updates are
    #: recognised by identity and not rebuilt per message.
    update: MemberUpdate | None = None
    #: The suspect or dead claim currently held: who made it, which of the two it
    #: claims (a "dead" claim may back a suspicion here) and its signature.
    reporter: bytes = b""
    claim_state: str = ""
    proof: bytes = b""
    rtts_ms: list[float] | None = None
    plausible: bool = True


@attrs.define(slots=True)
class _Suspicion:
    start: float
    min_s: float
    max_s: float
    #: Independent confirmations wanted to reach the minimum timeout.
    wanted: int
    #: reporter -> (claimed state, proof): kept so each claim can be relayed as signed.
    reporters: dict[bytes, tuple[str, bytes]]
    confirmations: int
    deadline: float

    def would_confirm(self, reporter: bytes) -> bool:
        return self.confirmations < self.wanted and reporter not in self.reporters

    def confirm(self, reporter: bytes, claim: tuple[str, bytes]) -> bool:
        """Count a new independent suspector; True when it shortened the timeout."""
        if not self.would_confirm(reporter):
            return False
        self.reporters[reporter] = claim
        self.confirmations += 1
        fraction = math.log(self.confirmations + 1.0) / math.log(self.wanted + 1.0)
        timeout = max(self.min_s, self.max_s - fraction * (self.max_s - self.min_s))
        self.deadline = self.start + timeout
        return True


@attrs.define(slots=True)
class _Probe:
    target: bytes
    address: str
    sent_at: float
    timeout_at: float
    deadline: float
    #: False for a probe begun because the transport could not reach the target:
    #: no direct ping was sent, so there is no round trip and no health signal.
    direct: bool
    indirect: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    #: Probed again directly in the indirect phase (Rule 1): an ack may answer either
    #: probe, so it gives no round trip.
    reprobed: bool = False


@attrs.define(slots=True)
class _Relay:
    origin: bytes
    origin_probe_id: int
    target: bytes
    sent_at: float
    deadline: float


@attrs.define(slots=True)
class _Bucket:
    """A token bucket: ``tokens`` as of time ``at``."""

    tokens: float
    at: float

    def refill(self, now: float, rate: float, burst: float) -> None:
        if now > self.at:
            self.tokens = min(burst, self.tokens + (now - self.at) * rate)
            self.at = now

    def ready_at(self, rate: float) -> float:
        """When one token will be there (``at`` itself when one already is)."""
        return self.at if self.tokens >= 1.0 else self.at + (1.0 - self.tokens) / rate


@attrs.define(slots=True)
class _Accuser:
    """Rule 2b: when one reporter's latest false accusations were, and when its next
    claim may count."""

    strikes: collections.deque[float]
    allowed_at: float = -math.inf


_K = TypeVar("_K")
_V = TypeVar("_V")


def _trim(table: dict[_K, _V], idle: Callable[[_V], bool]) -> None:
    """Keep a per-peer table under ``_PEER_TABLE_MAX``: idle entries go, then the oldest."""
    if len(table) < _PEER_TABLE_MAX:
        return
    for key in [key for key, value in table.items() if idle(value)]:
        del table[key]
    while len(table) >= _PEER_TABLE_MAX:
        del table[next(iter(table))]


class _OverBudget(Exception):
    """A signature check would exceed a budget (Rule 4a): the update has to wait."""


class _BroadcastQueue:
    """Pending updates, one per member (newer replaces older), fewest transmits first."""

    __slots__ = ("_buckets", "_entries")

    def __init__(self) -> None:
        #: node id -> (times sent, reporter)
        self._entries: dict[bytes, tuple[int, bytes]] = {}
        #: transmits -> node ids in insertion order (newest last)
        self._buckets: list[dict[bytes, None]] = [{}]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._entries

    def put(self, node_id: bytes, reporter: bytes) -> None:
        old = self._entries.get(node_id)
        if old is not None:
            del self._buckets[old[0]][node_id]
        self._entries[node_id] = (0, reporter)
        self._buckets[0][node_id] = None

    def take(self, count: int, limit: int, skip: bytes | None = None) -> list[tuple[bytes, bytes]]:
        """Up to ``count`` (node id, reporter) pairs, each counted as sent once more.

        ``skip`` is left in place: news about the receiver itself that it already has.
        """
        chosen: list[tuple[bytes, int, bytes]] = []
        for sent, bucket in enumerate(self._buckets):
            if not bucket:
                continue
            if sent >= limit:
                # The limit shrinks when the view does; what is over it is done.
                for node_id in bucket:
                    del self._entries[node_id]
                bucket.clear()
                continue
            if len(chosen) >= count:
                continue
            for node_id in reversed(bucket):
                if node_id == skip:
                    continue
                chosen.append((node_id, sent, self._entries[node_id][1]))
                if len(chosen) >= count:
                    break
        for node_id, sent, reporter in chosen:
            del self._buckets[sent][node_id]
            if sent + 1 >= limit:
                del self._entries[node_id]
                continue
            if sent + 1 == len(self._buckets):
                self._buckets.append({})
            self._entries[node_id] = (sent + 1, reporter)
            self._buckets[sent + 1][node_id] = None
        return [(node_id, reporter) for node_id, _, reporter in chosen]


def _check_wire(record: MemberRecord) -> None:
    """Our own record must pass the bounds we impose on everyone else's, or no peer
    would ever accept it; better to refuse it here than fail on every send."""
    try:
        encode(GossipLeave(record=record))
    except LocalProtocolError as exc:
        raise ValueError(f"member record refused by the wire format: {exc}") from None


def _record_fields(rec: MemberRecord) -> dict[str, Any]:
    return {name: getattr(rec, name) for name in _RECORD_FIELDS}


class Membership:
    """One member's view of the grid and the SWIM protocol that keeps it current.

    All methods are synchronous and never block; every method that may send returns
    the messages to deliver.  ``now`` must not go backwards between calls.

    Args:
        signing_key: this node's Ed25519 key; it signs our own record.
        self_record: our record, signed with ``signing_key``.
        config: intervals, fan-outs, timeouts, location check.
        rng: every random choice comes from here (deterministic tests and simulations).
        now: current time in seconds (any monotonic origin).
        shared_view: initial records of other members, shared read-only (a plain
            mapping is wrapped and verified; pass a ``SharedView`` to share the work).
        verify_cache: signature verdicts keyed by record digest, may be shared.

    Raises:
        ValueError: when ``self_record`` is not ours, its signature does not verify, or
            it breaks the wire format's bounds.
    """

    def __init__(
        self,
        *,
        signing_key: nacl.signing.SigningKey,
        self_record: MemberRecord,
        config: GossipConfig,
        rng: random.Random,
        now: float,
        shared_view: Mapping[bytes, MemberRecord] | None = None,
        verify_cache: MutableMapping[bytes, bool] | None = None,
        admit: Callable[[MemberRecord], bool] | None = None,
    ) -> None:
        if self_record.node_id != bytes(signing_key.verify_key):
            raise ValueError("self_record.node_id is not the public half of signing_key")
        if not record_is_valid(self_record):
            raise ValueError("self_record's signature does not verify")
        _check_wire(self_record)
        self._key = signing_key
        #: The grid's admission rule for member records (a valid subscription
        #: certificate); None admits every correctly signed record (an open grid).
        self._admit = admit
        self._cfg = config
        self._rng = rng
        self._id = self_record.node_id
        self._now = now
        self._t0 = now
        self._own_cache = verify_cache is None
        self._verify_cache: MutableMapping[bytes, bool] = (
            verify_cache if verify_cache is not None else {}
        )
        if isinstance(shared_view, SharedView):
            self._shared = shared_view
        else:
            self._shared = SharedView(
                () if shared_view is None else shared_view.values(),
                verify_cache=self._verify_cache,
            )
        self._overlay: dict[bytes, _Member] = {}
        #: Shared members that were reaped (and ourselves): hidden from the shared view.
        self._forgotten: set[bytes] = {self._id}
        #: Members outside the shared view, in arrival order (index space for choices).
        self._extra_ids: list[bytes] = []
        self._extra_set: set[bytes] = set()
        shared_others = len(self._shared) - (1 if self._id in self._shared else 0)
        self._counts: dict[str, int] = {_ALIVE: shared_others, _SUSPECT: 0, _DEAD: 0, _LEFT: 0}
        self._suspicions: dict[bytes, _Suspicion] = {}
        self._reap_at: dict[bytes, float] = {}
        self._probes: dict[int, _Probe] = {}
        self._probing: dict[bytes, int] = {}
        self._relays: dict[int, _Relay] = {}
        self._queue = _BroadcastQueue()
        self._next_id = rng.randrange(1 << 31)
        self._awareness = 0
        self._leaving = False
        self._version = 0
        self._seeds: tuple[str, ...] = ()
        self._seed_ids: dict[str, bytes] = {}
        self._rejoin_at = math.inf
        self._self_dirty = False
        self._self_sent_at = -math.inf
        #: What the broadcast queue carries for us: a snapshot taken when queued, so
        #: peers see at most one new version per self_update_min_interval_s.
        self._self_broadcast: MemberUpdate | None = None
        # Round-robin probe order: an affine permutation of the index space, so no
        # instance stores a shuffled list of every member.
        self._rr_n = 0
        self._rr_pos = 0
        self._rr_stride = 1
        self._rr_offset = 0
        # Random phases keep thousands of members from probing in lockstep.
        self._probe_next_at = now + rng.uniform(0.0, config.probe_interval_s)
        self._gossip_next_at = now + rng.uniform(0.0, config.gossip_interval_s)
        self._sync_next_at = now + rng.uniform(0.0, self._sync_interval())
        self._n: dict[str, int] = dict.fromkeys(
            (
                "forged",
                "unadmitted",
                "stale",
                "invalid",
                "probes_sent",
                "probes_failed",
                "indirect_sent",
                "relays",
                "suspicions",
                "suspicions_refuted",
                "refutations",
                "deaths",
                "reaped",
                "syncs_sent",
                "syncs_answered",
            ),
            0,
        )
        self._n.update(
            dict.fromkeys(
                (
                    "forged_claims",
                    "false_accusations",
                    "rate_limited",
                    "deferred",
                    "over_budget",
                    "sync_refused",
                    "relay_refused",
                ),
                0,
            )
        )
        # Rule 4a: who caused the signature checks now being made, and what is left.
        self._sender: bytes | None = None
        self._msg_budget = config.max_verifications_per_message
        self._buckets: dict[bytes | None, _Bucket] = {}
        self._global_bucket = _Bucket(tokens=float(config.verify_burst), at=now)
        self._pending: dict[bytes | None, collections.deque[MemberUpdate]] = {}
        self._pending_total = 0
        self._accusers: dict[bytes, _Accuser] = {}
        self._answered_at: dict[bytes | None, float] = {}
        #: The sender's own incarnation at its last full-state answer, and the senders
        #: answered a second time within the interval (a new run of that node).
        self._answered_incarnation: dict[bytes | None, int] = {}
        self._answered_again: set[bytes | None] = set()
        #: Rule 6: the view's digest as XOR deltas per bucket against the shared base,
        #: and the entry hash now folded in for every member that differs from it.
        self._digest_delta: dict[int, int] = {}
        self._folded: dict[bytes, int] = {}
        #: Digest exchanges under way: ours (sync id -> peer) and the ones we answered
        #: (peer -> sync id), each answered with records at most once.
        self._digests_sent: dict[int, bytes | None] = {}
        self._digests_answered: dict[bytes | None, int] = {}
        self._digest_answered_at: dict[bytes | None, float] = {}
        #: Rule 5c: the updates being applied came in a state or digest answer.
        self._quietly = False
        self._sent_msgs: dict[str, int] = {}
        self._sent_bytes: dict[str, int] = {}
        self._recv_msgs: dict[str, int] = {}
        self._recv_bytes: dict[str, int] = {}
        self.self_record = self_record
        self._self_update = MemberUpdate(
            record=self_record, state=_LEFT if self_record.leaving else _ALIVE
        )
        self._touch(self._id)
        #: Called as (node id, old state, new state) on every change of a member's
        #: state here: the simulation counts false suspicions and deaths with it.
        self.on_state_change: Callable[[bytes, str, str], None] | None = None

    # --- public API ----------------------------------------------------------------------

    @property
    def node_id(self) -> bytes:
        return self._id

    @property
    def version(self) -> int:
        """Increments on any change of membership, state, record content or trust.

        A new round-trip sample alone does not count, so placement caches survive the
        steady stream of probes.
        """
        return self._version

    def join(self, now: float, seed_addresses: Sequence[str]) -> list[Outgoing]:
        """Send our state to each seed and ask for theirs; retried while we know nobody."""
        self._now = now
        own = self.self_record.address
        self._seeds = tuple(dict.fromkeys(a for a in seed_addresses if a and a != own))
        # Announce ourselves too, not only through the seed (memberlist does the same):
        # members the seed's news misses may still hear it from us.
        self._disseminate_self(now)
        out: list[Outgoing] = []
        for address in self._seeds:
            self._sync_to(out, self._seed_ids.get(address), address, join=True)
        self._rejoin_at = now + self._cfg.rejoin_interval_s
        return out

    def start_digest(self, now: float, node_id: bytes) -> list[Outgoing]:
        """Begin an anti-entropy exchange with ``node_id`` now (Rule 6; sync rounds do
        this by themselves, tests and the simulation may want one at a given time)."""
        self._now = now
        out: list[Outgoing] = []
        record = self._record_of(node_id)
        self._digest_to(out, node_id, "" if record is None else record.address)
        return out

    def seed_reached(self, address: str, node_id: bytes) -> None:
        """The transport dialled seed ``address`` and the handshake proved ``node_id``.

        Only this binds a seed to a member (Rule 6): a record claiming the seed's
        address is its owner's word, and any member may sign any address.
        """
        if address in self._seeds:
            self._seed_ids[address] = node_id

    def seed_id(self, address: str) -> bytes | None:
        """The node met at seed ``address``, once the transport has reached it."""
        return self._seed_ids.get(address)

    def tick(self, now: float) -> list[Outgoing]:
        """Run whatever is due: timeouts, probes, gossip rounds, anti-entropy, reaping."""
        self._now = now
        cfg = self._cfg
        out: list[Outgoing] = []
        if self._pending:
            self._drain_pending(now)
        for node_id, suspicion in list(self._suspicions.items()):
            if now >= suspicion.deadline:
                self._suspicion_expired(now, node_id)
        for probe_id, probe in list(self._probes.items()):
            if not probe.indirect and now >= probe.timeout_at:
                self._escalate(now, probe_id, probe, out)
            if now >= probe.deadline:
                del self._probes[probe_id]
                self._probing.pop(probe.target, None)
                self._probe_failed(now, probe)
        for relay_id, relay in list(self._relays.items()):
            if now >= relay.deadline:
                del self._relays[relay_id]
                self._send_to_member(
                    out,
                    relay.origin,
                    GossipIndirectAck(
                        probe_id=relay.origin_probe_id,
                        target=relay.target,
                        reached=False,
                        updates=self._piggyback(relay.origin),
                    ),
                )
        if self._reap_at:
            for node_id, when in list(self._reap_at.items()):
                if now >= when:
                    self._forget(node_id)
        if self._self_dirty and now >= self._self_sent_at + cfg.self_update_min_interval_s:
            self._disseminate_self(now)
        if now >= self._probe_next_at:
            scaled = cfg.probe_interval_s * (self._awareness + 1)
            self._probe_next_at += scaled
            if self._probe_next_at <= now:
                self._probe_next_at = now + scaled
            if not self._leaving:
                self._start_probe(now, out)
        if now >= self._gossip_next_at:
            if len(self._queue):
                self._gossip_round(now, out)
            self._gossip_next_at = self._grid_after(now)
        if now >= self._sync_next_at:
            self._sync_next_at = now + self._sync_interval()
            if not self._leaving:
                self._sync_round(out)
        if (
            self._seeds
            and not self._leaving
            and now >= self._rejoin_at
            and self._counts[_ALIVE] + self._counts[_SUSPECT] == 0
        ):
            for address in self._seeds:
                self._sync_to(out, None, address, join=True)
            self._rejoin_at = now + cfg.rejoin_interval_s
        return out

    def next_deadline(self) -> float:
        """Earliest time at which ``tick`` has work; drivers may sleep until then."""
        deadline = math.inf
        if not self._leaving:
            deadline = min(self._probe_next_at, self._sync_next_at)
        if len(self._queue):
            deadline = min(deadline, self._gossip_next_at)
        if self._self_dirty:
            deadline = min(deadline, self._self_sent_at + self._cfg.self_update_min_interval_s)
        for probe in self._probes.values():
            deadline = min(deadline, probe.deadline if probe.indirect else probe.timeout_at)
        for relay in self._relays.values():
            deadline = min(deadline, relay.deadline)
        for suspicion in self._suspicions.values():
            deadline = min(deadline, suspicion.deadline)
        if self._reap_at:
            deadline = min(deadline, min(self._reap_at.values()))
        if self._seeds and not self._leaving and self._counts[_ALIVE] + self._counts[_SUSPECT] == 0:
            deadline = min(deadline, self._rejoin_at)
        if self._pending:
            deadline = min(deadline, self._pending_ready_at())
        return deadline

    def handle(self, now: float, sender: bytes | None, message: Message) -> list[Outgoing]:
        """Process a gossip message from the authenticated node ``sender``.

        ``sender`` None (no authenticated peer) is for tests; answers then go to the
        record the message itself carries, when it carries one.
        """
        self._now = now
        self._sender = sender
        self._msg_budget = self._cfg.max_verifications_per_message
        kind = message.KIND
        self._recv_msgs[kind] = self._recv_msgs.get(kind, 0) + 1
        self._recv_bytes[kind] = self._recv_bytes.get(kind, 0) + encoded_size(message)
        out: list[Outgoing] = []
        if isinstance(message, GossipProbe):
            self._apply_all(now, sender, message.updates)
            if message.target != self._id:
                self._n["invalid"] += 1  # a probe for someone else: stay silent
            elif sender is not None:
                self._send_to_member(
                    out,
                    sender,
                    GossipProbeAck(probe_id=message.probe_id, updates=self._piggyback(sender)),
                )
        elif isinstance(message, GossipProbeAck):
            self._apply_all(now, sender, message.updates)
            self._on_ack(now, sender, message.probe_id, out)
        elif isinstance(message, GossipProbeRequest):
            self._apply_all(now, sender, message.updates)
            if sender is not None:
                self._relay(now, sender, message, out)
        elif isinstance(message, GossipIndirectAck):
            self._apply_all(now, sender, message.updates)
            self._on_indirect_ack(now, message)
        elif isinstance(message, GossipUpdates):
            self._apply_all(now, sender, message.updates)
        elif isinstance(message, GossipSync):
            self._apply_all(now, sender, message.updates)
            if message.page == 0 and message.join:
                self._answer_sync(now, sender, message, out)
        elif isinstance(message, GossipSyncReply):
            self._apply_all(now, sender, message.updates, quietly=True)
        elif isinstance(message, GossipDigest):
            self._answer_digest(now, sender, message, out)
        elif isinstance(message, GossipDigestReply):
            self._on_digest_reply(sender, message, out)
        elif isinstance(message, GossipDigestRecords):
            self._apply_all(now, sender, message.updates, quietly=True)
            self._on_digest_records(sender, message, out)
        elif isinstance(message, GossipLeave):
            if message.record.leaving:
                self._apply_all(now, sender, (MemberUpdate(record=message.record, state=_LEFT),))
            else:
                self._n["invalid"] += 1
        else:
            self._n["invalid"] += 1
        return out

    def unreachable(self, now: float, node_id: bytes) -> list[Outgoing]:
        """The transport could not deliver to ``node_id``: count it as a failed probe.

        A pending direct probe skips straight to the indirect phase; otherwise an
        alive member gets an indirect probe now.  Relayed probes to it are nacked.
        """
        self._now = now
        out: list[Outgoing] = []
        for relay_id, relay in list(self._relays.items()):
            if relay.target == node_id:
                del self._relays[relay_id]
                self._send_to_member(
                    out,
                    relay.origin,
                    GossipIndirectAck(
                        probe_id=relay.origin_probe_id,
                        target=relay.target,
                        reached=False,
                        updates=self._piggyback(relay.origin),
                    ),
                )
        probe_id = self._probing.get(node_id)
        if probe_id is not None:
            probe = self._probes[probe_id]
            if not probe.indirect:
                self._escalate(now, probe_id, probe, out)
            return out
        if self._state_of(node_id) != _ALIVE or self._leaving:
            return out
        record = self._record_of(node_id)
        assert record is not None
        scale = self._awareness + 1
        probe_id = self._new_id()
        probe = _Probe(
            target=node_id,
            address=record.address,
            sent_at=now,
            timeout_at=now,
            deadline=now
            + max(self._cfg.probe_timeout_s, self._cfg.probe_interval_s - self._cfg.probe_timeout_s)
            * scale,
            direct=False,
        )
        self._probes[probe_id] = probe
        self._probing[node_id] = probe_id
        self._escalate(now, probe_id, probe, out)
        return out

    def update_self(self, now: float, **changes: Any) -> None:
        """Change our own record (``free_bytes=...``); re-signed with ``sequence + 1``.

        Dissemination is rate-limited to once per ``self_update_min_interval_s``; the
        latest value wins.

        Raises:
            ValueError: for identity, ordering or leave fields, which are not ours to set
                here, unknown fields, or values outside the wire format's bounds.
        """
        self._now = now
        bad = sorted(set(changes) & _UNSETTABLE)
        if bad:
            raise ValueError(f"update_self cannot change {', '.join(bad)}")
        unknown = sorted(set(changes) - set(_RECORD_FIELDS))
        if unknown:
            raise ValueError(f"unknown member record field(s) {', '.join(unknown)}")
        current = _record_fields(self.self_record)
        fields = {**current, **changes}
        if fields == current:
            return
        fields["sequence"] = current["sequence"] + 1
        moved = (fields["lat"], fields["lon"]) != (current["lat"], current["lon"])
        record = sign_record(self._key, **fields)
        _check_wire(record)
        self._set_self_record(record)
        if moved:
            self._recheck_locations()
        if now >= self._self_sent_at + self._cfg.self_update_min_interval_s:
            self._disseminate_self(now)
        else:
            self._self_dirty = True

    def leave(self, now: float) -> list[Outgoing]:
        """Announce a graceful leave: sign ``leaving=True`` and push it to some members.

        Probing and anti-entropy stop; gossip rounds go on so the news spreads while
        the driver lets the node linger.
        """
        self._now = now
        out: list[Outgoing] = []
        if self._leaving:
            return out
        self._leaving = True
        fields = _record_fields(self.self_record)
        fields["sequence"] += 1
        fields["leaving"] = True
        self._set_self_record(sign_record(self._key, **fields))
        self._disseminate_self(now)
        message = GossipLeave(record=self.self_record)
        for node_id in self._random_members(self._retransmit_limit(), (_ALIVE, _SUSPECT)):
            self._send_to_member(out, node_id, message)
        return out

    def members(self) -> list[MemberView]:
        """Every known member except ourselves, dead and left ones until reaped."""
        views: list[MemberView] = []
        overlay = self._overlay
        forgotten = self._forgotten
        for node_id in self._shared.ids:
            if node_id not in overlay and node_id not in forgotten:
                views.append(self._view_of_shared(self._shared[node_id]))
        views.extend(self._view(m) for m in overlay.values())
        return views

    def alive_members(self) -> list[MemberView]:
        return [view for view in self.members() if view.state == _ALIVE]

    def member(self, node_id: bytes) -> MemberView | None:
        member = self._overlay.get(node_id)
        if member is not None:
            return self._view(member)
        if node_id in self._forgotten or node_id not in self._shared:
            return None
        return self._view_of_shared(self._shared[node_id])

    def state_of(self, node_id: bytes) -> str | None:
        """The state we hold for ``node_id``, or None when we do not know it."""
        return self._state_of(node_id)

    def statistics(self) -> MembershipStatistics:
        n = self._n
        return MembershipStatistics(
            members_alive=self._counts[_ALIVE],
            members_suspect=self._counts[_SUSPECT],
            members_dead=self._counts[_DEAD],
            members_left=self._counts[_LEFT],
            messages_sent=dict(self._sent_msgs),
            bytes_sent=dict(self._sent_bytes),
            messages_received=dict(self._recv_msgs),
            bytes_received=dict(self._recv_bytes),
            forged_records_dropped=n["forged"],
            unadmitted_records_dropped=n["unadmitted"],
            stale_updates_ignored=n["stale"],
            invalid_messages_dropped=n["invalid"],
            probes_sent=n["probes_sent"],
            probes_failed=n["probes_failed"],
            indirect_probes_sent=n["indirect_sent"],
            relays_served=n["relays"],
            suspicions_started=n["suspicions"],
            suspicions_refuted=n["suspicions_refuted"],
            refutations=n["refutations"],
            deaths_declared=n["deaths"],
            members_reaped=n["reaped"],
            syncs_sent=n["syncs_sent"],
            syncs_answered=n["syncs_answered"],
            broadcasts_pending=len(self._queue),
            health_score=self._awareness,
            forged_claims_dropped=n["forged_claims"],
            false_accusations=n["false_accusations"],
            accusations_rate_limited=n["rate_limited"],
            updates_deferred=n["deferred"],
            updates_over_budget=n["over_budget"],
            updates_pending=self._pending_total,
            sync_answers_refused=n["sync_refused"],
            probe_requests_refused=n["relay_refused"],
        )

    # --- lookups ---------------------------------------------------------------------------

    def _state_of(self, node_id: bytes) -> str | None:
        member = self._overlay.get(node_id)
        if member is not None:
            return member.state
        if node_id in self._forgotten or node_id not in self._shared:
            return None
        return _ALIVE

    def _state_of_or_none(self, node_id: bytes | None) -> str | None:
        return None if node_id is None else self._state_of(node_id)

    def _record_of(self, node_id: bytes) -> MemberRecord | None:
        member = self._overlay.get(node_id)
        if member is not None:
            return member.record
        if node_id in self._forgotten or node_id not in self._shared:
            return None
        return self._shared[node_id]

    def _materialize(self, node_id: bytes) -> _Member | None:
        member = self._overlay.get(node_id)
        if member is None and node_id not in self._forgotten and node_id in self._shared:
            member = _Member(
                record=self._shared[node_id],
                state=_ALIVE,
                state_since=self._t0,
                update=self._shared.updates[node_id],
            )
            self._overlay[node_id] = member
        return member

    def _index_size(self) -> int:
        return len(self._shared.ids) + len(self._extra_ids)

    def _id_at(self, index: int) -> bytes:
        shared = self._shared.ids
        return shared[index] if index < len(shared) else self._extra_ids[index - len(shared)]

    def _random_members(
        self,
        count: int,
        states: tuple[str, ...],
        exclude: bytes | None = None,
        recently_dead: bool = False,
    ) -> list[bytes]:
        """Up to ``count`` distinct members in ``states``, uniformly at random.

        Random draws over the index space are cheap when most members qualify (the
        common case); after a bounded number of misses it falls back to a scan.
        """
        size = self._index_size()
        if count <= 0 or size == 0:
            return []
        chosen: list[bytes] = []
        seen: set[bytes] = set()
        rand = self._rng.randrange
        for _ in range(4 * count + 8):
            node_id = self._id_at(rand(size))
            if node_id in seen or node_id == exclude:
                continue
            seen.add(node_id)
            if self._eligible(node_id, states, recently_dead):
                chosen.append(node_id)
                if len(chosen) == count:
                    return chosen
        pool = [
            node_id
            for node_id in itertools.chain(self._shared.ids, self._extra_ids)
            if node_id not in seen
            and node_id != exclude
            and self._eligible(node_id, states, recently_dead)
        ]
        pool = list(dict.fromkeys(pool))
        missing = count - len(chosen)
        if len(pool) > missing:
            pool = self._rng.sample(pool, missing)
        return chosen + pool

    def _eligible(self, node_id: bytes, states: tuple[str, ...], recently_dead: bool) -> bool:
        member = self._overlay.get(node_id)
        if member is None:
            return _ALIVE in states and node_id not in self._forgotten and node_id in self._shared
        if member.state in states:
            return True
        # A gossip target may also be recently dead, so a wrongly declared member
        # hears of it and refutes (memberlist's gossip to the dead).
        return (
            recently_dead
            and member.state == _DEAD
            and self._now - member.state_since < self._cfg.gossip_to_dead_s
        )

    def _member_count(self) -> int:
        """N for the log-scaled limits: members not dead or left, ourselves included."""
        return self._counts[_ALIVE] + self._counts[_SUSPECT] + 1

    def _relays_refreshes(self) -> bool:
        """Rule 5b: relay content refreshes only in a small grid."""
        return self._member_count() <= self._cfg.refresh_relay_max_members

    def _retransmit_limit(self) -> int:
        return self._cfg.retransmit_mult * max(1, math.ceil(math.log10(self._member_count() + 1)))

    def _sync_interval(self) -> float:
        """Rule 6: a digest costs ~8 bytes per bucket whatever the view's size, so the
        interval no longer grows with the grid (full states did, like memberlist's)."""
        return self._cfg.sync_interval_s

    def _grid_after(self, now: float) -> float:
        interval = self._cfg.gossip_interval_s
        next_at = self._gossip_next_at
        if next_at > now:
            return next_at
        return next_at + (math.floor((now - next_at) / interval) + 1) * interval

    def _new_id(self) -> int:
        self._next_id = (self._next_id + 1) % _PROBE_ID_WRAP
        return self._next_id

    # --- sending --------------------------------------------------------------------------

    def _send(self, out: list[Outgoing], node_id: bytes | None, address: str, msg: Message) -> None:
        kind = msg.KIND
        self._sent_msgs[kind] = self._sent_msgs.get(kind, 0) + 1
        self._sent_bytes[kind] = self._sent_bytes.get(kind, 0) + encoded_size(msg)
        out.append(Outgoing(node_id=node_id, address=address, message=msg))

    def _send_to_member(self, out: list[Outgoing], node_id: bytes, msg: Message) -> None:
        record = self._record_of(node_id)
        self._send(out, node_id, "" if record is None else record.address, msg)

    def _queue_update(self, node_id: bytes, reporter: bytes) -> None:
        if not len(self._queue):
            # New news waits for the next tick of the gossip clock, as with a ticker.
            self._gossip_next_at = self._grid_after(self._now)
        self._queue.put(node_id, reporter)

    def _update_for(self, node_id: bytes, reporter: bytes | None = None) -> MemberUpdate | None:
        if node_id == self._id:
            return self._self_broadcast
        member = self._overlay.get(node_id)
        if member is None:
            if node_id in self._forgotten:
                return None
            return self._shared.updates.get(node_id)
        state = member.state
        claimant = proof = b""
        if state in _CLAIMS:
            # A claim travels as its reporter signed it, with the state it claimed (a
            # "dead" claim may be what backs a suspicion here): Rule 2a.
            claimant, state, proof = member.reporter, member.claim_state or state, member.proof
            if reporter is not None and reporter != claimant and member.state == _SUSPECT:
                suspicion = self._suspicions.get(node_id)
                held = None if suspicion is None else suspicion.reporters.get(reporter)
                if held is not None:
                    claimant, (state, proof) = reporter, held
        cached = member.update
        if (
            cached is not None
            and cached.record is member.record
            and cached.state == state
            and cached.reporter == claimant
            and cached.proof == proof
        ):
            return cached
        cached = MemberUpdate(record=member.record, state=state, reporter=claimant, proof=proof)
        member.update = cached
        return cached

    def _piggyback(
        self, recipient: bytes | None, first: MemberUpdate | None = None
    ) -> tuple[MemberUpdate, ...]:
        """Pending updates for a message to ``recipient``, fewest-sent first.

        An "alive" about the recipient itself would teach it nothing and use up one of
        the update's few transmissions, so it waits for another message.
        """
        updates: list[MemberUpdate] = [] if first is None else [first]
        room = self._cfg.max_piggyback - len(updates)
        if room > 0 and len(self._queue):
            skip = recipient if self._state_of_or_none(recipient) == _ALIVE else None
            for node_id, reporter in self._queue.take(room, self._retransmit_limit(), skip):
                update = self._update_for(node_id, reporter)
                if update is not None and update is not first:
                    updates.append(update)
        return tuple(updates)

    # --- merging updates -------------------------------------------------------------------

    def _verify(self, key: bytes, check: Callable[[], bool]) -> bool:
        """A signature verdict from the cache, or checked now within the budgets (Rule 4a).

        Raises:
            _OverBudget: a fresh check would exceed this message's, the sender's or the
                node's budget.  Callers check signatures before they change anything,
                so the whole update can simply be applied again later.
        """
        cache = self._verify_cache
        ok = cache.get(key)
        if ok is not None:
            return ok
        self._spend()
        if self._own_cache and len(cache) >= _OWN_VERIFY_CACHE_MAX:
            cache.clear()
        ok = check()
        cache[key] = ok
        return ok

    def _spend(self) -> None:
        cfg = self._cfg
        now = self._now
        if self._msg_budget < 1:
            raise _OverBudget
        overall = self._global_bucket
        overall.refill(now, cfg.verify_per_s, cfg.verify_burst)
        bucket = self._buckets.get(self._sender)
        if bucket is None:
            bucket = _Bucket(tokens=float(cfg.peer_verify_burst), at=now)
        else:
            bucket.refill(now, cfg.peer_verify_per_s, cfg.peer_verify_burst)
        if overall.tokens < 1.0 or bucket.tokens < 1.0:
            raise _OverBudget
        overall.tokens -= 1.0
        bucket.tokens -= 1.0
        self._msg_budget -= 1
        if self._sender not in self._buckets:

            def idle(b: _Bucket) -> bool:
                b.refill(now, cfg.peer_verify_per_s, cfg.peer_verify_burst)
                return b.tokens >= cfg.peer_verify_burst

            _trim(self._buckets, idle)
            self._buckets[self._sender] = bucket

    def _verified(self, record: MemberRecord) -> bool:
        ok = self._verify(record_digest(record), lambda: record_is_valid(record))
        if not ok:
            self._n["forged"] += 1
        elif self._admit is not None and not self._admit(record):
            self._n["unadmitted"] += 1
            return False
        return ok

    def _claim_verified(self, update: MemberUpdate) -> bool:
        ok = self._verify(claim_digest(update), lambda: claim_is_valid(update))
        if not ok:
            self._n["forged_claims"] += 1
        return ok

    def _apply_all(
        self,
        now: float,
        sender: bytes | None,
        updates: Iterable[MemberUpdate],
        quietly: bool = False,
    ) -> None:
        """``quietly``: records from a state or digest answer (Rule 5c)."""
        self._quietly = quietly
        try:
            for update in updates:
                try:
                    self._apply(now, update)
                except _OverBudget:
                    self._defer(sender, update)
        finally:
            self._quietly = False

    def _defer(self, sender: bytes | None, update: MemberUpdate) -> None:
        """Rule 4a: keep an update until the budgets allow its signature checks."""
        cfg = self._cfg
        queue = self._pending.get(sender)
        if self._pending_total >= cfg.max_pending_updates or (
            queue is not None and len(queue) >= cfg.max_pending_per_peer
        ):
            self._n["over_budget"] += 1
            return
        if queue is None:
            queue = self._pending[sender] = collections.deque()
        queue.append(update)
        self._pending_total += 1
        self._n["deferred"] += 1

    def _drain_pending(self, now: float) -> None:
        """Apply waiting updates, one sender after another, within one tick's budget."""
        self._msg_budget = self._cfg.max_verifications_per_message
        # Bounded: every pass applies at least one update or ends the loop.
        for _ in range(self._pending_total):
            progressed = False
            for sender in list(self._pending):
                queue = self._pending[sender]
                self._sender = sender
                try:
                    self._apply(now, queue[0])
                except _OverBudget:
                    continue
                queue.popleft()
                self._pending_total -= 1
                progressed = True
                if not queue:
                    del self._pending[sender]
            if not progressed or not self._pending:
                break
        self._sender = None

    def _pending_ready_at(self) -> float:
        """When a waiting update may next get a signature check."""
        cfg = self._cfg
        now = self._now
        overall = self._global_bucket
        overall.refill(now, cfg.verify_per_s, cfg.verify_burst)
        soonest = math.inf
        for sender in self._pending:
            bucket = self._buckets.get(sender)
            if bucket is None:
                soonest = now
                break
            bucket.refill(now, cfg.peer_verify_per_s, cfg.peer_verify_burst)
            soonest = min(soonest, bucket.ready_at(cfg.peer_verify_per_s))
        return max(soonest, overall.ready_at(cfg.verify_per_s))

    def _apply(self, now: float, update: MemberUpdate) -> None:
        """Merge one update.  Every signature check comes before any change of state
        (Rule 4a: an update over budget is retried whole)."""
        record = update.record
        node_id = record.node_id
        if node_id == self._id:
            self._apply_about_self(now, update)
            return
        member = self._overlay.get(node_id)
        if member is None:
            if node_id not in self._forgotten:
                shared = self._shared.updates.get(node_id)
                if shared is not None:
                    if update is shared or update == shared:
                        return
                    member = self._materialize(node_id)
        elif update is member.update:
            return
        state = update.state
        if record.leaving:
            state = _LEFT  # the owner's own word outranks anyone's claim
        elif state == _LEFT:
            self._n["invalid"] += 1  # "left" without the owner's signed leaving record
            return
        if member is None:
            self._learn(now, update, state)
            return
        known = member.record
        record_version = (record.incarnation, record.sequence)
        known_version = (known.incarnation, known.sequence)
        newer = False
        if record_version > known_version:
            if not self._verified(record):
                return
            newer = True
        elif record_version == known_version:
            if record is not known and record != known:
                # Same version, other content: a forgery, or an owner signing twice.
                if self._verified(record):
                    self._n["stale"] += 1
                return
        elif not (state in _CLAIMS and record.incarnation == known.incarnation):
            self._n["stale"] += 1
            if state in _CLAIMS and member.state == _ALIVE:
                self._regossip(node_id)
            return
        self._merge(now, node_id, member, update, state, newer)

    def _learn(self, now: float, update: MemberUpdate, state: str) -> None:
        """A member we do not know: only its owner's "alive" is worth keeping.

        Claims about unknown members are ignored (as memberlist does): otherwise a
        member reaped here but not yet elsewhere would come back as a suspect and
        bounce between the views for as long as the reapers are out of step.
        """
        if state != _ALIVE:
            return
        record = update.record
        if not self._verified(record):
            return
        node_id = record.node_id
        member = _Member(record=record, state=_ALIVE, state_since=now)
        self._overlay[node_id] = member
        if node_id in self._forgotten:
            self._forgotten.discard(node_id)
        elif node_id not in self._shared and node_id not in self._extra_set:
            self._extra_set.add(node_id)
            self._extra_ids.append(node_id)
        self._counts[_ALIVE] += 1
        self._version += 1
        self._touch(node_id)
        member.update = update if update.state == _ALIVE and not update.reporter else None
        if not self._quietly:
            self._queue_update(node_id, b"")

    def _judge_claim(
        self, now: float, node_id: bytes, current: str, update: MemberUpdate
    ) -> bool | None:
        """Rules 2a and 2b: does this suspect/dead claim count, the subject being
        ``current`` here?

        False: it changes nothing (already counted, a reporter we do not hold alive or
        suspect, a rate-limited one); None: forged, and nothing of the update is used.
        The cheap tests come first, so only a claim that would count costs a check.
        """
        reporter = update.reporter
        if current in _GONE or reporter == self._id:
            return False
        if current == _SUSPECT:
            suspicion = self._suspicions.get(node_id)
            if suspicion is None or not suspicion.would_confirm(reporter):
                return False
        if reporter == node_id or self._state_of(reporter) not in (_ALIVE, _SUSPECT):
            return False
        if self._limited(now, reporter):
            self._n["rate_limited"] += 1
            return False
        if not self._claim_verified(update):
            return None
        return True

    def _merge(
        self,
        now: float,
        node_id: bytes,
        member: _Member,
        update: MemberUpdate,
        state: str,
        newer: bool,
    ) -> None:
        record = update.record
        current = member.state
        refutes = newer and (record.incarnation > member.record.incarnation or current == _LEFT)
        # A claim about a newer incarnation than the suspicion or death held here: the
        # subject has refuted since, so what we hold is over (its claims are signed for
        # the old incarnation) and this claim is news about a live member.
        renewed = refutes and state in _CLAIMS and current in _CLAIMS
        counts: bool | None = False
        if state in _CLAIMS:
            counts = self._judge_claim(now, node_id, _ALIVE if renewed else current, update)
            if counts is None:
                return
        if newer:
            self._set_record(member, record)
        if renewed:
            self._refuted(now, node_id, member, current)
            current = _ALIVE
        if state == _ALIVE:
            if not newer:
                return
            if current != _ALIVE and refutes:
                self._refuted(now, node_id, member, current)
            if refutes or current != _ALIVE or self._relays_refreshes():
                self._queue_update(node_id, member.reporter)
        elif state in _CLAIMS:
            # A "dead" claim counts as one more confirmation: Rule 2.
            if counts:
                claim = (update.state, update.proof)
                if current == _ALIVE:
                    self._suspect(now, node_id, member, update.reporter, claim)
                else:
                    suspicion = self._suspicions.get(node_id)
                    if suspicion is not None and suspicion.confirm(update.reporter, claim):
                        self._queue_update(node_id, update.reporter)
                self._heard(now, update.reporter)
            elif newer and current not in _GONE:
                self._queue_update(node_id, member.reporter)
        else:  # left
            if current == _LEFT and not newer:
                return
            self._set_state(now, node_id, member, _LEFT)
            self._queue_update(node_id, b"")
        if self._is_held(member, update):
            member.update = update

    @staticmethod
    def _is_held(member: _Member, update: MemberUpdate) -> bool:
        """Is ``update`` exactly what we would gossip about ``member`` (so it is reused)?"""
        if update.record is not member.record:
            return False
        if member.state in _CLAIMS:
            return (
                update.reporter == member.reporter
                and update.state == member.claim_state
                and update.proof == member.proof
            )
        return update.state == member.state and not update.reporter and not update.proof

    def _apply_about_self(self, now: float, update: MemberUpdate) -> None:
        """Rule 3: refute suspicion, death, a stale leave or a record of a past life."""
        if self._leaving:
            return
        record = update.record
        mine = self.self_record
        version = (record.incarnation, record.sequence)
        mine_version = (mine.incarnation, mine.sequence)
        # Newer than ours, or the same version with other content: a record signed in
        # a previous life of this node (a restart that lost its counters).
        if version > mine_version or (
            version == mine_version and record is not mine and record != mine
        ):
            if self._verified(record):
                self._refute(record.incarnation)
            return
        claim = update.state in _CLAIMS and not record.leaving
        if not claim and not record.leaving:
            return
        if record.incarnation < mine.incarnation:
            self._regossip(self._id)  # its sender missed our refutation
            return
        if claim:
            # Always refuted when genuine, even from a rate-limited reporter (Rule 2b):
            # others may have heard it.  Unsigned or forged, it costs us nothing more.
            if update.reporter == self._id or not self._claim_verified(update):
                return
            self._refute(record.incarnation)
            if self._state_of(update.reporter) is not None:
                self._strike(now, update.reporter)
        elif self._verified(record):  # a leave of ours, signed in a past life
            self._refute(record.incarnation)

    # --- false accusers (Rule 2b) -------------------------------------------------------------

    def _at_limit(self, accuser: _Accuser, now: float) -> bool:
        strikes = accuser.strikes
        return (
            len(strikes) >= self._cfg.accuser_strike_limit
            and now - strikes[0] < self._cfg.accuser_strike_window_s
        )

    def _limited(self, now: float, reporter: bytes) -> bool:
        accuser = self._accusers.get(reporter)
        return accuser is not None and self._at_limit(accuser, now) and now < accuser.allowed_at

    def _heard(self, now: float, reporter: bytes) -> None:
        """A claim of ``reporter`` counted: a limited reporter waits before the next."""
        accuser = self._accusers.get(reporter)
        if accuser is not None and self._at_limit(accuser, now):
            accuser.allowed_at = now + self._cfg.accuser_cooldown_s

    def _strike(self, now: float, reporter: bytes) -> None:
        cfg = self._cfg
        accuser = self._accusers.get(reporter)
        if accuser is None:
            window = cfg.accuser_strike_window_s
            _trim(self._accusers, lambda a: not a.strikes or now - a.strikes[-1] >= window)
            accuser = _Accuser(strikes=collections.deque(maxlen=cfg.accuser_strike_limit))
            self._accusers[reporter] = accuser
        accuser.strikes.append(now)
        self._n["false_accusations"] += 1
        if self._at_limit(accuser, now):
            accuser.allowed_at = max(accuser.allowed_at, now + cfg.accuser_cooldown_s)

    def _refuted(self, now: float, node_id: bytes, member: _Member, current: str) -> None:
        """The subject signed a higher incarnation: alive again, its accusers were wrong."""
        if current == _SUSPECT:
            self._n["suspicions_refuted"] += 1
            self._strike_suspectors(now, node_id)
        self._set_state(now, node_id, member, _ALIVE)

    def _strike_suspectors(self, now: float, node_id: bytes) -> None:
        """The subject refuted: everyone who suspected or confirmed it was wrong."""
        suspicion = self._suspicions.get(node_id)
        if suspicion is not None:
            for reporter in suspicion.reporters:
                if reporter != self._id:
                    self._strike(now, reporter)

    def _own_claim(self, member: _Member, state: str) -> tuple[str, bytes]:
        record = member.record
        return state, sign_claim(self._key, record.node_id, record.incarnation, state)

    def _regossip(self, node_id: bytes) -> None:
        """Rule 5a: a claim older than our news means its sender missed the news.

        A refutation has few transmissions and may be lost (on a flaky link, by the
        very acks that fail); whoever still gossips the old claim shows it did not
        arrive everywhere, so the news goes round again, once it is out of the queue.
        """
        if node_id not in self._queue:
            if node_id == self._id:
                self._self_broadcast = self._self_update
            self._queue_update(node_id, b"")

    def _set_record(self, member: _Member, record: MemberRecord) -> None:
        old = member.record
        member.record = record
        self._version += 1
        self._touch(record.node_id)
        if member.rtts_ms and (old.lat, old.lon) != (record.lat, record.lon):
            self._recheck(member)

    def _set_state(
        self,
        now: float,
        node_id: bytes,
        member: _Member,
        state: str,
        reporter: bytes = b"",
        claim: tuple[str, bytes] = ("", b""),
    ) -> None:
        old = member.state
        member.reporter = reporter
        member.claim_state, member.proof = claim
        if old == state:
            return
        self._counts[old] -= 1
        self._counts[state] += 1
        member.state = state
        member.state_since = now
        self._version += 1
        self._touch(node_id)
        if self.on_state_change is not None:
            self.on_state_change(node_id, old, state)
        if old == _SUSPECT:
            self._suspicions.pop(node_id, None)
        if state in _GONE:
            self._reap_at[node_id] = now + self._cfg.dead_reap_s
        elif old in _GONE:
            self._reap_at.pop(node_id, None)

    def _suspect(
        self,
        now: float,
        node_id: bytes,
        member: _Member,
        reporter: bytes,
        claim: tuple[str, bytes],
    ) -> None:
        """Rule 2: start a Lifeguard suspicion timer."""
        cfg = self._cfg
        n = self._member_count()
        min_s = cfg.suspicion_mult * max(1.0, math.log10(max(1, n))) * cfg.probe_interval_s
        max_s = cfg.suspicion_max_timeout_mult * min_s
        wanted = cfg.suspicion_mult - 2
        if n - 2 < wanted:
            wanted = 0
        timeout = min_s if wanted < 1 else max_s
        self._set_state(now, node_id, member, _SUSPECT, reporter, claim)
        self._suspicions[node_id] = _Suspicion(
            start=now,
            min_s=min_s,
            max_s=max_s,
            wanted=wanted,
            reporters={reporter: claim},
            confirmations=0,
            deadline=now + timeout,
        )
        self._n["suspicions"] += 1
        self._queue_update(node_id, reporter)

    def _suspicion_expired(self, now: float, node_id: bytes) -> None:
        member = self._overlay.get(node_id)
        self._suspicions.pop(node_id, None)
        if member is None or member.state != _SUSPECT:
            return
        self._n["deaths"] += 1
        self._set_state(now, node_id, member, _DEAD, self._id, self._own_claim(member, _DEAD))
        self._queue_update(node_id, self._id)

    def _forget(self, node_id: bytes) -> None:
        """Rule 7."""
        del self._reap_at[node_id]
        member = self._overlay.pop(node_id, None)
        if member is None:
            return
        self._counts[member.state] -= 1
        if node_id in self._shared:
            self._forgotten.add(node_id)
        else:
            self._extra_set.discard(node_id)
            if len(self._extra_ids) > 2 * len(self._extra_set) + 64:
                self._extra_ids = [i for i in self._extra_ids if i in self._extra_set]
        self._n["reaped"] += 1
        self._version += 1
        self._touch(node_id)

    # --- our own record ---------------------------------------------------------------------

    def _set_self_record(self, record: MemberRecord) -> None:
        self.self_record = record
        self._self_update = MemberUpdate(record=record, state=_LEFT if record.leaving else _ALIVE)
        self._touch(self._id)

    def _disseminate_self(self, now: float) -> None:
        self._self_dirty = False
        self._self_sent_at = now
        self._self_broadcast = self._self_update
        self._queue_update(self._id, b"")

    def _refute(self, incarnation: int) -> None:
        fields = _record_fields(self.self_record)
        fields["incarnation"] = max(fields["incarnation"], incarnation) + 1
        fields["sequence"] += 1
        self._set_self_record(sign_record(self._key, **fields))
        self._n["refutations"] += 1
        # Being suspected hints that our own network or CPU is struggling (Lifeguard).
        self._awareness = min(self._awareness + 1, self._cfg.awareness_max_multiplier - 1)
        self._disseminate_self(self._now)

    # --- location ---------------------------------------------------------------------------

    def _plausible(self, record: MemberRecord, rtts_ms: list[float] | None) -> bool:
        """Rule 8: can light in fibre cover the claimed distance in the best round trip?"""
        if self._cfg.location_check == "off" or not rtts_ms:
            return True
        distance = self._distance(record)
        if distance is None:
            return True
        return min(rtts_ms) * self._cfg.fibre_km_per_ms_rtt >= distance

    def _distance(self, record: MemberRecord) -> float | None:
        mine = self.self_record
        if mine.lat is None or mine.lon is None or record.lat is None or record.lon is None:
            return None
        return haversine_km(mine.lat, mine.lon, record.lat, record.lon)

    def _recheck(self, member: _Member) -> None:
        plausible = self._plausible(member.record, member.rtts_ms)
        if plausible != member.plausible:
            member.plausible = plausible
            self._version += 1

    def _recheck_locations(self) -> None:
        self._version += 1  # every distance from us changed
        for member in self._overlay.values():
            if member.rtts_ms:
                self._recheck(member)

    def _record_rtt(self, node_id: bytes, rtt_s: float) -> None:
        member = self._materialize(node_id)
        if member is None:
            return
        if not member.rtts_ms and self._cfg.location_check == "enforce":
            self._version += 1  # a first sample makes the location trustworthy (Rule 8)
        if member.rtts_ms is None:
            member.rtts_ms = []
        member.rtts_ms.append(rtt_s * 1000.0)
        if len(member.rtts_ms) > self._cfg.rtt_samples:
            del member.rtts_ms[0]
        self._recheck(member)

    def _view(self, member: _Member) -> MemberView:
        rtt = min(member.rtts_ms) if member.rtts_ms else None
        return MemberView(
            record=member.record,
            state=member.state,
            rtt_ms=rtt,
            distance_km=self._distance(member.record),
            location_trusted=self._cfg.location_check != "enforce"
            or (member.plausible and bool(member.rtts_ms)),
            location_plausible=member.plausible,
            state_since=member.state_since,
        )

    def _view_of_shared(self, record: MemberRecord) -> MemberView:
        return MemberView(
            record=record,
            state=_ALIVE,
            rtt_ms=None,
            distance_km=self._distance(record),
            # Never probed: nothing backs the claimed location yet (Rule 8).
            location_trusted=self._cfg.location_check != "enforce",
            location_plausible=True,
            state_since=self._t0,
        )

    # --- probing ----------------------------------------------------------------------------

    def _next_probe_target(self) -> bytes | None:
        """Rule 1: the next member of this cycle's permutation that can be probed."""
        size = self._index_size()
        for _ in range(size + 1):
            if self._rr_pos >= self._rr_n:
                self._rr_n = size
                if size == 0:
                    return None
                self._rr_pos = 0
                self._rr_offset = self._rng.randrange(size)
                stride = 1
                for _ in range(8):
                    stride = self._rng.randrange(1, size) if size > 1 else 1
                    if math.gcd(stride, size) == 1:
                        break
                else:
                    stride = 1
                self._rr_stride = stride
            index = (self._rr_offset + self._rr_pos * self._rr_stride) % self._rr_n
            self._rr_pos += 1
            if index >= size:
                continue
            node_id = self._id_at(index)
            state = self._state_of(node_id)
            if state in (_ALIVE, _SUSPECT) and node_id not in self._probing:
                return node_id
        return None

    def _start_probe(self, now: float, out: list[Outgoing]) -> None:
        node_id = self._next_probe_target()
        if node_id is None:
            return
        record = self._record_of(node_id)
        assert record is not None
        scale = self._awareness + 1
        probe_id = self._new_id()
        self._probes[probe_id] = _Probe(
            target=node_id,
            address=record.address,
            sent_at=now,
            timeout_at=now + self._cfg.probe_timeout_s * scale,
            deadline=now + self._cfg.probe_interval_s * scale,
            direct=True,
        )
        self._probing[node_id] = probe_id
        # Lifeguard's buddy system: tell a suspect directly, so it can refute at once.
        first = self._update_for(node_id) if self._state_of(node_id) == _SUSPECT else None
        self._n["probes_sent"] += 1
        self._send(
            out,
            node_id,
            record.address,
            GossipProbe(probe_id=probe_id, target=node_id, updates=self._piggyback(node_id, first)),
        )

    def _escalate(self, now: float, probe_id: int, probe: _Probe, out: list[Outgoing]) -> None:
        probe.indirect = True
        if probe.direct:
            # Beside the relays, one more direct try (memberlist's TCP fallback ping):
            # at 2% loss it cuts the false suspicions of live members ~25-fold, and each
            # one costs every member of a 10,000-member grid ~10 KB of gossip.
            probe.reprobed = True
            self._send(
                out,
                probe.target,
                probe.address,
                GossipProbe(probe_id=probe_id, target=probe.target, updates=()),
            )
        relays = self._random_members(self._cfg.indirect_probes, (_ALIVE,), exclude=probe.target)
        probe.expected_nacks = len(relays)
        for relay in relays:
            self._n["indirect_sent"] += 1
            self._send_to_member(
                out,
                relay,
                GossipProbeRequest(
                    probe_id=probe_id,
                    target=probe.target,
                    target_address=probe.address,
                    updates=self._piggyback(relay),
                ),
            )

    def _probe_failed(self, now: float, probe: _Probe) -> None:
        self._n["probes_failed"] += 1
        if probe.direct:
            # Missing nacks hint that the problem is on our side (Lifeguard).
            expected = probe.expected_nacks
            delta = max(0, expected - probe.nacks) if expected > 0 else 1
            self._awareness = min(self._awareness + delta, self._cfg.awareness_max_multiplier - 1)
        state = self._state_of(probe.target)
        if state == _ALIVE:
            member = self._materialize(probe.target)
            assert member is not None
            self._suspect(now, probe.target, member, self._id, self._own_claim(member, _SUSPECT))
        elif state == _SUSPECT:
            # Our own failed probe is an independent confirmation (Lifeguard).
            suspicion = self._suspicions.get(probe.target)
            if suspicion is not None and suspicion.would_confirm(self._id):
                member = self._overlay[probe.target]
                suspicion.confirm(self._id, self._own_claim(member, _SUSPECT))
                self._queue_update(probe.target, self._id)

    def _probe_succeeded(self, probe: _Probe) -> None:
        if probe.direct and self._awareness > 0:
            self._awareness -= 1

    def _on_ack(self, now: float, sender: bytes | None, probe_id: int, out: list[Outgoing]) -> None:
        probe = self._probes.get(probe_id)
        if probe is not None:
            if sender is not None and sender != probe.target:
                self._n["invalid"] += 1
                return
            del self._probes[probe_id]
            self._probing.pop(probe.target, None)
            if probe.direct and not probe.reprobed:
                self._record_rtt(probe.target, now - probe.sent_at)
            self._probe_succeeded(probe)
            return
        relay = self._relays.get(probe_id)
        if relay is not None:
            if sender is not None and sender != relay.target:
                self._n["invalid"] += 1
                return
            del self._relays[probe_id]
            self._record_rtt(relay.target, now - relay.sent_at)
            self._send_to_member(
                out,
                relay.origin,
                GossipIndirectAck(
                    probe_id=relay.origin_probe_id,
                    target=relay.target,
                    reached=True,
                    updates=self._piggyback(relay.origin),
                ),
            )

    def _on_indirect_ack(self, now: float, message: GossipIndirectAck) -> None:
        probe = self._probes.get(message.probe_id)
        if probe is None or probe.target != message.target:
            return
        if message.reached:
            del self._probes[message.probe_id]
            self._probing.pop(probe.target, None)
            self._probe_succeeded(probe)
        else:
            probe.nacks += 1

    def _relay(
        self, now: float, sender: bytes, message: GossipProbeRequest, out: list[Outgoing]
    ) -> None:
        if message.target == self._id:
            self._send_to_member(
                out,
                sender,
                GossipIndirectAck(
                    probe_id=message.probe_id, target=self._id, reached=True, updates=()
                ),
            )
            return
        known = self._record_of(message.target)
        if known is None:
            # Rule 9: never dial an address a peer hands us.  The nack is the truth: we
            # could not reach it.
            self._n["relay_refused"] += 1
            self._send_to_member(
                out,
                sender,
                GossipIndirectAck(
                    probe_id=message.probe_id,
                    target=message.target,
                    reached=False,
                    updates=self._piggyback(sender),
                ),
            )
            return
        self._n["relays"] += 1
        relay_id = self._new_id()
        self._relays[relay_id] = _Relay(
            origin=sender,
            origin_probe_id=message.probe_id,
            target=message.target,
            sent_at=now,
            deadline=now + self._cfg.probe_timeout_s,
        )
        address = known.address  # signed by the target, unlike the requester's hint
        first = self._update_for(message.target)
        if first is not None and first.state not in _CLAIMS:
            first = None
        self._send(
            out,
            message.target,
            address,
            GossipProbe(
                probe_id=relay_id,
                target=message.target,
                updates=self._piggyback(message.target, first),
            ),
        )

    # --- gossip rounds and anti-entropy -------------------------------------------------------

    def _gossip_round(self, now: float, out: list[Outgoing]) -> None:
        targets = self._random_members(
            self._cfg.gossip_fanout, (_ALIVE, _SUSPECT), recently_dead=True
        )
        for node_id in targets:
            updates = self._piggyback(node_id)
            if not updates:
                break
            self._send_to_member(out, node_id, GossipUpdates(updates=updates))

    def _full_state(self) -> list[MemberUpdate]:
        updates = [self._self_update]
        overlay = self._overlay
        forgotten = self._forgotten
        shared_updates = self._shared.updates
        for node_id in self._shared.ids:
            if node_id not in overlay and node_id not in forgotten:
                updates.append(shared_updates[node_id])
        for node_id in overlay:
            update = self._update_for(node_id)
            if update is not None:
                updates.append(update)
        return updates

    def _pages(self) -> list[tuple[MemberUpdate, ...]]:
        updates = self._full_state()
        size = self._cfg.max_records_per_message
        return [tuple(updates[i : i + size]) for i in range(0, len(updates), size)]

    def _sync_to(
        self, out: list[Outgoing], node_id: bytes | None, address: str, join: bool
    ) -> None:
        sync_id = self._new_id()
        pages = self._pages()
        self._n["syncs_sent"] += 1
        for page, updates in enumerate(pages):
            self._send(
                out,
                node_id,
                address,
                GossipSync(
                    sync_id=sync_id, join=join, page=page, pages=len(pages), updates=updates
                ),
            )

    def _answer_sync(
        self, now: float, sender: bytes | None, message: GossipSync, out: list[Outgoing]
    ) -> None:
        if sender is None:
            # Unauthenticated (tests only): answer the record the request carried.
            if not message.updates:
                return
            sender = message.updates[0].record.node_id
        # Rule 6: a full state is thousands of records for one small request; one
        # sender gets it at most once per interval.  Except once: a joiner whose own
        # record is newer than when it was last answered is a new run of that node (a
        # restart, or ``gridnode recover`` then ``gridnode run`` with the same key, seconds
        # apart), and it knows nobody until it is answered.
        interval = self._cfg.sync_answer_interval_s
        last = self._answered_at.get(sender)
        incarnation = next(
            (u.record.incarnation for u in message.updates if u.record.node_id == sender), 0
        )
        if last is not None and now - last < interval:
            restarted = (
                message.join
                and incarnation > self._answered_incarnation.get(sender, incarnation)
                and sender not in self._answered_again
            )
            if not restarted:
                self._n["sync_refused"] += 1
                return
            self._answered_again.add(sender)
        else:
            self._answered_again.discard(sender)
        _trim(self._answered_at, lambda at: now - at >= interval)
        for gone in set(self._answered_incarnation) - set(self._answered_at):
            del self._answered_incarnation[gone]
        self._answered_again &= set(self._answered_at)
        self._answered_at[sender] = now
        self._answered_incarnation[sender] = incarnation
        known = self._record_of(sender)
        address = "" if known is None else known.address
        self._n["syncs_answered"] += 1
        pages = self._pages()
        for page, updates in enumerate(pages):
            self._send(
                out,
                sender,
                address,
                GossipSyncReply(
                    sync_id=message.sync_id, page=page, pages=len(pages), updates=updates
                ),
            )

    def _sync_round(self, out: list[Outgoing]) -> None:
        """Rule 6: one random alive member, plus maybe one lost member or seed."""
        for node_id in self._random_members(1, (_ALIVE,)):
            record = self._record_of(node_id)
            assert record is not None
            self._digest_to(out, node_id, record.address)
        lost: list[tuple[bytes | None, str]] = []
        for node_id in self._reap_at:
            member = self._overlay[node_id]
            if member.state == _DEAD:
                lost.append((node_id, member.record.address))
        for address in self._seeds:
            seed_id = self._seed_ids.get(address)
            if seed_id is None or self._state_of(seed_id) not in (_ALIVE, _SUSPECT):
                lost.append((seed_id, address))
        if lost and self._rng.random() < len(lost) / (self._counts[_ALIVE] + 1):
            lost_id, lost_address = lost[self._rng.randrange(len(lost))]
            self._digest_to(out, lost_id, lost_address)

    # --- anti-entropy by digest (Rule 6) -----------------------------------------------------

    def _current_hash(self, node_id: bytes) -> int:
        """The digest entry of ``node_id`` in this view; 0 when it is not in the view."""
        if node_id == self._id:
            record = self.self_record
            state = _LEFT if record.leaving else _ALIVE
            return entry_hash(node_id, record.incarnation, record.sequence, state)
        member = self._overlay.get(node_id)
        if member is not None:
            record = member.record
            return entry_hash(node_id, record.incarnation, record.sequence, member.state)
        if node_id in self._forgotten:
            return 0
        return self._shared.hashes.get(node_id, 0)

    def _touch(self, node_id: bytes) -> None:
        """Fold ``node_id``'s entry into the digest again after any change of it."""
        current = self._current_hash(node_id)
        base = self._shared.hashes.get(node_id, 0)
        old = self._folded.get(node_id, base)
        if current == old:
            return
        bucket = node_id[0]
        delta = self._digest_delta.get(bucket, 0) ^ old ^ current
        if delta:
            self._digest_delta[bucket] = delta
        else:
            self._digest_delta.pop(bucket, None)
        if current == base:
            self._folded.pop(node_id, None)
        else:
            self._folded[node_id] = current

    def digest(self, bits: int) -> list[int]:
        """The view's bucket hashes at ``bits`` bits (0 to 8)."""
        base = self._shared.base
        delta = self._digest_delta
        shift = MAX_DIGEST_BITS - bits
        out = [0] * (1 << bits)
        for fine in range(_FINE_BUCKETS):
            value = base[fine] ^ delta.get(fine, 0)
            if value:
                out[fine >> shift] ^= value
        return out

    def _digest_bits(self) -> int:
        n = self._member_count()
        wanted = math.ceil(math.log2(max(1.0, n / _DIGEST_MEMBERS_PER_BUCKET)))
        return max(0, min(MAX_DIGEST_BITS, wanted))

    def _entries(self, bits: int, buckets: Iterable[int]) -> dict[int, bytes]:
        """entry hash -> node id, for every member of the view in ``buckets``."""
        shift = MAX_DIGEST_BITS - bits
        fine: set[int] = set()
        for bucket in buckets:
            fine.update(range(bucket << shift, (bucket + 1) << shift))
        found: dict[int, bytes] = {}
        by_bucket = self._shared.by_bucket
        candidates: list[Iterable[bytes]] = [by_bucket[b] for b in sorted(fine)]
        candidates.append([nid for nid in self._extra_ids if nid[0] in fine])
        if self._id[0] in fine and self._id not in self._shared:
            candidates.append([self._id])
        for node_id in itertools.chain.from_iterable(candidates):
            value = self._current_hash(node_id)
            if value:
                found[value] = node_id
        return found

    def _gossip_form(self, node_id: bytes) -> MemberUpdate | None:
        return self._self_update if node_id == self._id else self._update_for(node_id)

    def _digest_to(self, out: list[Outgoing], node_id: bytes | None, address: str) -> None:
        sync_id = self._new_id()
        while len(self._digests_sent) >= _DIGESTS_OPEN_MAX:
            del self._digests_sent[next(iter(self._digests_sent))]
        self._digests_sent[sync_id] = node_id
        bits = self._digest_bits()
        hashes = b"".join(v.to_bytes(DIGEST_HASH_BYTES, "big") for v in self.digest(bits))
        self._n["syncs_sent"] += 1
        self._send(out, node_id, address, GossipDigest(sync_id=sync_id, bits=bits, hashes=hashes))

    def _answer_digest(
        self, now: float, sender: bytes | None, message: GossipDigest, out: list[Outgoing]
    ) -> None:
        """Step 2: list our entries in the buckets that differ, as many as fit."""
        if len(message.hashes) != DIGEST_HASH_BYTES << message.bits:
            self._n["invalid"] += 1
            return
        interval = self._cfg.sync_answer_interval_s
        last = self._digest_answered_at.get(sender)
        if last is not None and now - last < interval:
            self._n["sync_refused"] += 1
            return
        _trim(self._digest_answered_at, lambda at: now - at >= interval)
        self._digest_answered_at[sender] = now
        bits = message.bits
        theirs = message.hashes
        ours = self.digest(bits)
        differing = [
            bucket
            for bucket, value in enumerate(ours)
            if theirs[bucket * DIGEST_HASH_BYTES : (bucket + 1) * DIGEST_HASH_BYTES]
            != value.to_bytes(DIGEST_HASH_BYTES, "big")
        ]
        if not differing:
            return
        self._rng.shuffle(differing)
        listed: list[int] = []
        entries: list[int] = []
        for bucket in differing:
            found = self._entries(bits, (bucket,))
            if len(entries) + len(found) > MAX_DIGEST_ENTRIES:
                continue
            listed.append(bucket)
            entries.extend(found)
        while len(self._digests_answered) >= _DIGESTS_OPEN_MAX:
            del self._digests_answered[next(iter(self._digests_answered))]
        self._digests_answered.pop(sender, None)
        self._digests_answered[sender] = message.sync_id
        self._n["syncs_answered"] += 1
        self._send_answer(
            out,
            sender,
            GossipDigestReply(
                sync_id=message.sync_id,
                bits=bits,
                buckets=bytes(listed),
                entries=b"".join(v.to_bytes(DIGEST_HASH_BYTES, "big") for v in entries),
            ),
        )

    def _on_digest_reply(
        self, sender: bytes | None, message: GossipDigestReply, out: list[Outgoing]
    ) -> None:
        """Step 3: push what differs on our side, ask for what differs on theirs."""
        if message.sync_id not in self._digests_sent:
            self._n["invalid"] += 1
            return
        peer = self._digests_sent[message.sync_id]
        if sender is not None and peer is not None and sender != peer:
            self._n["invalid"] += 1
            return
        del self._digests_sent[message.sync_id]
        if not message.buckets:
            return
        if max(message.buckets) >= 1 << message.bits:
            self._n["invalid"] += 1
            return
        raw = message.entries
        theirs = {
            int.from_bytes(raw[i : i + DIGEST_HASH_BYTES], "big")
            for i in range(0, len(raw), DIGEST_HASH_BYTES)
        }
        ours = self._entries(message.bits, message.buckets)
        updates: list[MemberUpdate] = []
        for value, node_id in ours.items():
            if value in theirs or len(updates) >= MAX_DIGEST_RECORDS:
                continue
            update = self._gossip_form(node_id)
            if update is not None:
                updates.append(update)
        want = [value for value in theirs if value not in ours]
        if not updates and not want:
            return
        self._send_answer(
            out,
            sender,
            GossipDigestRecords(
                sync_id=message.sync_id,
                bits=message.bits,
                buckets=message.buckets,
                updates=tuple(updates),
                want=b"".join(v.to_bytes(DIGEST_HASH_BYTES, "big") for v in want),
            ),
        )

    def _on_digest_records(
        self, sender: bytes | None, message: GossipDigestRecords, out: list[Outgoing]
    ) -> None:
        """Step 4: the records asked for, once per digest we answered."""
        if self._digests_answered.get(sender) != message.sync_id:
            if message.want:
                self._n["invalid"] += 1
            return
        del self._digests_answered[sender]
        if not message.want or not message.buckets:
            return
        if max(message.buckets) >= 1 << message.bits:
            self._n["invalid"] += 1
            return
        raw = message.want
        want = {
            int.from_bytes(raw[i : i + DIGEST_HASH_BYTES], "big")
            for i in range(0, len(raw), DIGEST_HASH_BYTES)
        }
        ours = self._entries(message.bits, message.buckets)
        updates = [
            update
            for value, node_id in ours.items()
            if value in want and (update := self._gossip_form(node_id)) is not None
        ]
        # What one exchange may cost us, like what it may push: a peer asking for
        # everything gets a slice (the rest comes with later exchanges), not a full state.
        del updates[MAX_DIGEST_RECORDS:]
        size = self._cfg.max_records_per_message
        pages = [tuple(updates[i : i + size]) for i in range(0, len(updates), size)]
        for page, chunk in enumerate(pages):
            self._send_answer(
                out,
                sender,
                GossipSyncReply(
                    sync_id=message.sync_id, page=page, pages=len(pages), updates=chunk
                ),
            )

    def _send_answer(self, out: list[Outgoing], peer: bytes | None, msg: Message) -> None:
        if peer is None:
            self._send(out, None, "", msg)
        else:
            self._send_to_member(out, peer, msg)
