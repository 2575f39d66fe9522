"""The records of one member's view: states, the per-member entry and what callers get back.

Everything here is plain data shared by the parts of ``Membership``: the four states
(and the groups of them the rules talk about), the overlay entry ``Member`` kept for
a member that differs from the shared view, the Lifeguard ``Suspicion`` timer, and
the public ``Outgoing``, ``MemberView`` and ``MembershipStatistics``.
"""

from __future__ import annotations

import math
from typing import Final

import attrs

from protocol import MemberRecord, MemberUpdate, Message

__all__ = [
    "ALIVE",
    "CLAIMS",
    "DEAD",
    "DRAINING_LABEL",
    "GONE",
    "LEFT",
    "STATES",
    "SUSPECT",
    "Member",
    "MemberView",
    "MembershipStatistics",
    "Outgoing",
    "Suspicion",
    "is_draining",
]

STATES: Final = ("alive", "suspect", "dead", "left")

ALIVE: Final = "alive"
SUSPECT: Final = "suspect"
DEAD: Final = "dead"
LEFT: Final = "left"
GONE: Final = (DEAD, LEFT)
CLAIMS: Final = (SUSPECT, DEAD)

#: The label a member puts in its own signed record while it drains before a graceful
#: leave (``gridnode leave``, ``gridnode.leave``): it stays alive and serves its packets,
#: but placement gives it none, and the owners of what it holds move them away.  A label,
#: not a new record field: every version since 2 carries and relays labels unchanged, so
#: the record still verifies on an older member (a new field would fail its schema and
#: signature); such a member does not know the label but sees the draining member
#: publish no free space, and the member refuses new packets anyway.
DRAINING_LABEL: Final = "gridnode.state=leaving"


def is_draining(record: MemberRecord) -> bool:
    """Does the member drain before leaving (no new packets; owners move theirs)?"""
    return DRAINING_LABEL in record.labels


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


@attrs.define(slots=True)
class Member:
    """A member as this view holds it when it differs from the shared view."""

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
class Suspicion:
    """Rule 2: a Lifeguard suspicion timer and the claims that back it."""

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
