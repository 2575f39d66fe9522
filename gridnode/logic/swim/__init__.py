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

Modules: ``config`` (``GossipConfig``), ``records`` (states and plain records),
``context`` (state shared by the parts), ``table`` (``SharedView`` and the member
table), ``digest`` (the Rule 6 digest), ``dissemination`` (Rule 5), ``verify``
(Rules 4 and 4a), ``accusers`` (Rule 2b), ``suspicion`` (Rules 2 and 7),
``location`` (Rule 8), ``probe`` (Rules 1 and 9), ``own`` (Rule 3), ``merge``
(Rules 2a, 3, 4, 5a and 5c), ``antientropy`` (Rule 6) and ``membership`` (the
``Membership`` facade that wires them).  The names other code uses are re-exported
here.
"""

from __future__ import annotations

from .config import LOCATION_CHECKS, GossipConfig
from .membership import Membership
from .records import DRAINING_LABEL, STATES, MembershipStatistics, MemberView, Outgoing, is_draining
from .table import SharedView

__all__ = [
    "DRAINING_LABEL",
    "LOCATION_CHECKS",
    "STATES",
    "GossipConfig",
    "MemberView",
    "Membership",
    "MembershipStatistics",
    "Outgoing",
    "SharedView",
    "is_draining",
]
