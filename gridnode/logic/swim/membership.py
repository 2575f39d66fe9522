"""``Membership``: one member's view of the grid and the SWIM protocol that keeps it current.

The facade owns the collaborators (the rules they implement are in the package
docstring) and is the only API the rest of gridnode, the simulations and the tests
use: it routes each message to them, runs what ``tick`` finds due, and answers the
read-only questions from the member table.  The collaborators share one
``Context`` (config, clock, counters, our own record) and reach each other only
through the references given to them here, so the wiring is in one place.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import nacl.signing

from protocol import (
    GossipIndirectAck,
    GossipLeave,
    GossipProbe,
    GossipProbeAck,
    GossipProbeRequest,
    GossipSync,
    GossipSyncReply,
    GossipUpdates,
    MemberRecord,
    MemberUpdate,
    Message,
    encoded_size,
    record_is_valid,
)
from protocol._gossip import GossipDigest, GossipDigestRecords, GossipDigestReply

from .accusers import Accusers
from .antientropy import AntiEntropy
from .config import GossipConfig
from .context import Context
from .digest import DigestIndex
from .dissemination import Dissemination
from .location import Locations
from .merge import Merger
from .own import OwnRecord, check_wire
from .probe import Prober
from .records import (
    ALIVE,
    DEAD,
    LEFT,
    SUSPECT,
    MembershipStatistics,
    MemberView,
    Outgoing,
    Suspicion,
)
from .suspicion import Suspicions
from .table import MemberTable, SharedView
from .verify import Verifier

__all__ = ["Membership"]


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
        admit: the grid's admission rule for member records (a valid subscription
            certificate); None admits every correctly signed record (an open grid).

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
        check_wire(self_record)
        ctx = self._ctx = Context(
            signing_key=signing_key, self_record=self_record, config=config, rng=rng, now=now
        )
        self._verifier = Verifier(ctx, verify_cache, admit)
        if isinstance(shared_view, SharedView):
            shared = shared_view
        else:
            shared = SharedView(
                () if shared_view is None else shared_view.values(),
                verify_cache=self._verifier.cache,
            )
        # Random phases keep thousands of members from probing in lockstep (drawn in
        # this order, after the probe id seed, so runs stay reproducible).
        probe_at = now + rng.uniform(0.0, config.probe_interval_s)
        gossip_at = now + rng.uniform(0.0, config.gossip_interval_s)
        # Rule 6: a digest costs ~8 bytes per bucket whatever the view's size, so the
        # sync interval does not grow with the grid.
        sync_at = now + rng.uniform(0.0, config.sync_interval_s)
        table = self._table = MemberTable(ctx, shared)
        digest = self._digest = DigestIndex(ctx, table)
        suspicions: dict[bytes, Suspicion] = {}
        diss = self._diss = Dissemination(ctx, table, suspicions, gossip_at)
        accusers = Accusers(ctx)
        susp = self._susp = Suspicions(ctx, table, digest, diss, accusers, suspicions)
        loc = self._loc = Locations(ctx, table)
        self._prober = Prober(ctx, table, diss, susp, loc, probe_at)
        own = self._own = OwnRecord(ctx, table, digest, diss, loc)
        self._merge = Merger(
            ctx=ctx,
            table=table,
            verifier=self._verifier,
            accusers=accusers,
            suspicions=susp,
            dissemination=diss,
            digest=digest,
            locations=loc,
            own=own,
        )
        self._sync = AntiEntropy(ctx, table, diss, digest, susp, sync_at)
        digest.touch(ctx.node_id)

    # --- public API ----------------------------------------------------------------------

    @property
    def node_id(self) -> bytes:
        return self._ctx.node_id

    @property
    def self_record(self) -> MemberRecord:
        """Our own record as last signed (it changes with ``update_self`` and ``leave``)."""
        return self._ctx.self_record

    @property
    def on_state_change(self) -> Callable[[bytes, str, str], None] | None:
        """Called as (node id, old state, new state) on every change of a member's
        state here: the simulation counts false suspicions and deaths with it."""
        return self._ctx.on_state_change

    @on_state_change.setter
    def on_state_change(self, callback: Callable[[bytes, str, str], None] | None) -> None:
        self._ctx.on_state_change = callback

    @property
    def version(self) -> int:
        """Increments on any change of membership, state, record content or trust.

        A new round-trip sample alone does not count, so placement caches survive the
        steady stream of probes.
        """
        return self._ctx.version

    def join(self, now: float, seed_addresses: Sequence[str]) -> list[Outgoing]:
        """Send our state to each seed and ask for theirs; retried while we know nobody."""
        self._ctx.now = now
        # Announce ourselves too, not only through the seed (memberlist does the same):
        # members the seed's news misses may still hear it from us.
        self._own.disseminate(now)
        return self._sync.join(now, seed_addresses)

    def start_digest(self, now: float, node_id: bytes) -> list[Outgoing]:
        """Begin an anti-entropy exchange with ``node_id`` now (Rule 6; sync rounds do
        this by themselves, tests and the simulation may want one at a given time)."""
        return self._sync.start_digest(now, node_id)

    def seed_reached(self, address: str, node_id: bytes) -> None:
        """The transport dialled seed ``address`` and the handshake proved ``node_id``.

        Only this binds a seed to a member (Rule 6): a record claiming the seed's
        address is its owner's word, and any member may sign any address.
        """
        self._sync.seed_reached(address, node_id)

    def seed_id(self, address: str) -> bytes | None:
        """The node met at seed ``address``, once the transport has reached it."""
        return self._sync.seed_id(address)

    def tick(self, now: float) -> list[Outgoing]:
        """Run whatever is due: timeouts, probes, gossip rounds, anti-entropy, reaping."""
        self._ctx.now = now
        out: list[Outgoing] = []
        if self._verifier.pending:
            self._verifier.drain(now, self._merge.apply)
        for node_id, suspicion in list(self._susp.suspicions.items()):
            if now >= suspicion.deadline:
                self._susp.expire(now, node_id)
        self._prober.expire(now, out)
        if self._susp.reap_at:
            for node_id, when in list(self._susp.reap_at.items()):
                if now >= when:
                    self._susp.forget(node_id)
        if now >= self._own.due_at():
            self._own.disseminate(now)
        self._prober.round(now, out)
        if now >= self._diss.next_at:
            if len(self._diss.queue):
                self._diss.gossip_round(now, out)
            self._diss.next_at = self._diss.grid_after(now)
        self._sync.round(now, out)
        return out

    def next_deadline(self) -> float:
        """Earliest time at which ``tick`` has work; drivers may sleep until then."""
        deadline = math.inf
        if not self._ctx.leaving:
            deadline = min(self._prober.next_at, self._sync.next_at)
        if len(self._diss.queue):
            deadline = min(deadline, self._diss.next_at)
        deadline = min(deadline, self._own.due_at(), self._prober.deadline())
        for suspicion in self._susp.suspicions.values():
            deadline = min(deadline, suspicion.deadline)
        if self._susp.reap_at:
            deadline = min(deadline, min(self._susp.reap_at.values()))
        if self._sync.alone():
            deadline = min(deadline, self._sync.rejoin_at)
        if self._verifier.pending:
            deadline = min(deadline, self._verifier.ready_at())
        return deadline

    def handle(self, now: float, sender: bytes | None, message: Message) -> list[Outgoing]:
        """Process a gossip message from the authenticated node ``sender``.

        ``sender`` None (no authenticated peer) is for tests; answers then go to the
        record the message itself carries, when it carries one.
        """
        self._ctx.now = now
        self._verifier.start(sender)
        kind = message.KIND
        self._ctx.recv_msgs[kind] = self._ctx.recv_msgs.get(kind, 0) + 1
        self._ctx.recv_bytes[kind] = self._ctx.recv_bytes.get(kind, 0) + encoded_size(message)
        out: list[Outgoing] = []
        if isinstance(message, GossipProbe):
            self._merge.apply_all(now, sender, message.updates)
            if message.target != self._ctx.node_id:
                self._ctx.n["invalid"] += 1  # a probe for someone else: stay silent
            elif sender is not None:
                self._table.send_to_member(
                    out,
                    sender,
                    GossipProbeAck(probe_id=message.probe_id, updates=self._diss.piggyback(sender)),
                )
        elif isinstance(message, GossipProbeAck):
            self._merge.apply_all(now, sender, message.updates)
            self._prober.on_ack(now, sender, message.probe_id, out)
        elif isinstance(message, GossipProbeRequest):
            self._merge.apply_all(now, sender, message.updates)
            if sender is not None:
                self._prober.relay(now, sender, message, out)
        elif isinstance(message, GossipIndirectAck):
            self._merge.apply_all(now, sender, message.updates)
            self._prober.on_indirect_ack(now, message)
        elif isinstance(message, GossipUpdates):
            self._merge.apply_all(now, sender, message.updates)
        elif isinstance(message, GossipSync):
            self._merge.apply_all(now, sender, message.updates)
            if message.page == 0 and message.join:
                self._sync.answer_sync(now, sender, message, out)
        elif isinstance(message, GossipSyncReply):
            self._merge.apply_all(now, sender, message.updates, quietly=True)
        elif isinstance(message, GossipDigest):
            self._sync.answer_digest(now, sender, message, out)
        elif isinstance(message, GossipDigestReply):
            self._sync.on_digest_reply(sender, message, out)
        elif isinstance(message, GossipDigestRecords):
            self._merge.apply_all(now, sender, message.updates, quietly=True)
            self._sync.on_digest_records(sender, message, out)
        elif isinstance(message, GossipLeave):
            if message.record.leaving:
                self._merge.apply_all(
                    now, sender, (MemberUpdate(record=message.record, state=LEFT),)
                )
            else:
                self._ctx.n["invalid"] += 1
        else:
            self._ctx.n["invalid"] += 1
        return out

    def unreachable(self, now: float, node_id: bytes) -> list[Outgoing]:
        """The transport could not deliver to ``node_id``: count it as a failed probe.

        A pending direct probe skips straight to the indirect phase; otherwise an
        alive member gets an indirect probe now.  Relayed probes to it are nacked.
        """
        self._ctx.now = now
        return self._prober.unreachable(now, node_id)

    def update_self(self, now: float, **changes: Any) -> None:
        """Change our own record (``free_bytes=...``); re-signed with ``sequence + 1``.

        Dissemination is rate-limited to once per ``self_update_min_interval_s``; the
        latest value wins.

        Raises:
            ValueError: for identity, ordering or leave fields, which are not ours to set
                here, unknown fields, or values outside the wire format's bounds.
        """
        self._own.update_self(now, **changes)

    def leave(self, now: float) -> list[Outgoing]:
        """Announce a graceful leave: sign ``leaving=True`` and push it to some members.

        Probing and anti-entropy stop; gossip rounds go on so the news spreads while
        the driver lets the node linger.
        """
        return self._own.leave(now)

    def members(self) -> list[MemberView]:
        """Every known member except ourselves, dead and left ones until reaped."""
        views: list[MemberView] = []
        overlay = self._table.overlay
        forgotten = self._table.forgotten
        for node_id in self._table.shared.ids:
            if node_id not in overlay and node_id not in forgotten:
                views.append(self._loc.view_of_shared(self._table.shared[node_id]))
        views.extend(self._loc.view(m) for m in overlay.values())
        return views

    def alive_members(self) -> list[MemberView]:
        return [view for view in self.members() if view.state == ALIVE]

    def member(self, node_id: bytes) -> MemberView | None:
        member = self._table.overlay.get(node_id)
        if member is not None:
            return self._loc.view(member)
        if node_id in self._table.forgotten or node_id not in self._table.shared:
            return None
        return self._loc.view_of_shared(self._table.shared[node_id])

    def state_of(self, node_id: bytes) -> str | None:
        """The state we hold for ``node_id``, or None when we do not know it."""
        return self._table.state_of(node_id)

    def statistics(self) -> MembershipStatistics:
        n = self._ctx.n
        return MembershipStatistics(
            members_alive=self._table.counts[ALIVE],
            members_suspect=self._table.counts[SUSPECT],
            members_dead=self._table.counts[DEAD],
            members_left=self._table.counts[LEFT],
            messages_sent=dict(self._ctx.sent_msgs),
            bytes_sent=dict(self._ctx.sent_bytes),
            messages_received=dict(self._ctx.recv_msgs),
            bytes_received=dict(self._ctx.recv_bytes),
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
            broadcasts_pending=len(self._diss.queue),
            health_score=self._ctx.awareness,
            forged_claims_dropped=n["forged_claims"],
            false_accusations=n["false_accusations"],
            accusations_rate_limited=n["rate_limited"],
            updates_deferred=n["deferred"],
            updates_over_budget=n["over_budget"],
            updates_pending=self._verifier.pending_total,
            sync_answers_refused=n["sync_refused"],
            probe_requests_refused=n["relay_refused"],
        )

    def digest(self, bits: int) -> list[int]:
        """The view's bucket hashes at ``bits`` bits (0 to 8)."""
        return self._digest.digest(bits)

    # --- for the gossip actor and the tests ------------------------------------------------

    def _record_of(self, node_id: bytes) -> MemberRecord | None:
        """The record held for ``node_id`` (the gossip actor dials its address)."""
        return self._table.record_of(node_id)

    def _full_state(self) -> list[MemberUpdate]:
        """Every update a full state answer would carry (tests measure its size)."""
        return self._sync.full_state()
