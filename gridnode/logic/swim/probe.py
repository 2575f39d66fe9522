"""Failure detection (Rules 1 and 9): probes, indirect probes through relays, local health.

Rule 1. Every probe interval (scaled by the local health score, Lifeguard's "local
health awareness") a member probes the next member of a round-robin cycle in random
order.  No ack within the probe timeout: k other members are asked to probe it
(ping-req) and it is probed directly once more; no ack, direct or relayed, by the
end of the interval: the member is suspected.  Relays that cannot reach the target
either answer with a nack, which tells the prober its own network is fine.

Rule 9. A probe request (ping-req) is served only for a member we know, at the
address of its signed record; the address the requester supplies is never dialled,
so no peer can point this node at an arbitrary host.
"""

from __future__ import annotations

import math

import attrs

from protocol import GossipIndirectAck, GossipProbe, GossipProbeRequest

from .context import Context
from .dissemination import Dissemination
from .location import Locations
from .records import ALIVE, CLAIMS, SUSPECT, Outgoing
from .suspicion import Suspicions
from .table import MemberTable

__all__ = ["Probe", "Prober", "Relay"]


@attrs.define(slots=True)
class Probe:
    """A probe of ours under way."""

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
class Relay:
    """A probe we make for another member (ping-req), and whom to answer."""

    origin: bytes
    origin_probe_id: int
    target: bytes
    sent_at: float
    deadline: float


class Prober:
    """Probes of ours, probes we relay, and the round-robin order of targets."""

    def __init__(
        self,
        ctx: Context,
        table: MemberTable,
        dissemination: Dissemination,
        suspicions: Suspicions,
        locations: Locations,
        next_at: float,
    ) -> None:
        self._ctx = ctx
        self._table = table
        self._diss = dissemination
        self._susp = suspicions
        self._loc = locations
        self.probes: dict[int, Probe] = {}
        self.probing: dict[bytes, int] = {}
        self.relays: dict[int, Relay] = {}
        self.next_at = next_at
        # Round-robin probe order: an affine permutation of the index space, so no
        # instance stores a shuffled list of every member.
        self._rr_n = 0
        self._rr_pos = 0
        self._rr_stride = 1
        self._rr_offset = 0

    def round(self, now: float, out: list[Outgoing]) -> None:
        """Rule 1: when the (health-scaled) probe interval is up, probe the next member."""
        if now >= self.next_at:
            scaled = self._ctx.cfg.probe_interval_s * (self._ctx.awareness + 1)
            self.next_at += scaled
            if self.next_at <= now:
                self.next_at = now + scaled
            if not self._ctx.leaving:
                self.start(now, out)

    def expire(self, now: float, out: list[Outgoing]) -> None:
        """Escalate probes past their timeout, fail those past their deadline, nack relays."""
        for probe_id, probe in list(self.probes.items()):
            if not probe.indirect and now >= probe.timeout_at:
                self.escalate(now, probe_id, probe, out)
            if now >= probe.deadline:
                del self.probes[probe_id]
                self.probing.pop(probe.target, None)
                self._failed(now, probe)
        for relay_id, relay in list(self.relays.items()):
            if now >= relay.deadline:
                del self.relays[relay_id]
                self._nack(out, relay)

    def deadline(self) -> float:
        """The earliest probe timeout or deadline, or relay deadline (inf when none)."""
        deadline = math.inf
        for probe in self.probes.values():
            deadline = min(deadline, probe.deadline if probe.indirect else probe.timeout_at)
        for relay in self.relays.values():
            deadline = min(deadline, relay.deadline)
        return deadline

    def _nack(self, out: list[Outgoing], relay: Relay) -> None:
        """Tell the origin of a relayed probe that its target did not answer us."""
        self._table.send_to_member(
            out,
            relay.origin,
            GossipIndirectAck(
                probe_id=relay.origin_probe_id,
                target=relay.target,
                reached=False,
                updates=self._diss.piggyback(relay.origin),
            ),
        )

    def _next_target(self) -> bytes | None:
        """Rule 1: the next member of this cycle's permutation that can be probed."""
        size = self._table.index_size()
        for _ in range(size + 1):
            if self._rr_pos >= self._rr_n:
                self._rr_n = size
                if size == 0:
                    return None
                self._rr_pos = 0
                self._rr_offset = self._ctx.rng.randrange(size)
                stride = 1
                for _ in range(8):
                    stride = self._ctx.rng.randrange(1, size) if size > 1 else 1
                    if math.gcd(stride, size) == 1:
                        break
                else:
                    stride = 1
                self._rr_stride = stride
            index = (self._rr_offset + self._rr_pos * self._rr_stride) % self._rr_n
            self._rr_pos += 1
            if index >= size:
                continue
            node_id = self._table.id_at(index)
            state = self._table.state_of(node_id)
            if state in (ALIVE, SUSPECT) and node_id not in self.probing:
                return node_id
        return None

    def start(self, now: float, out: list[Outgoing]) -> None:
        node_id = self._next_target()
        if node_id is None:
            return
        record = self._table.record_of(node_id)
        assert record is not None
        scale = self._ctx.awareness + 1
        probe_id = self._ctx.new_id()
        self.probes[probe_id] = Probe(
            target=node_id,
            address=record.address,
            sent_at=now,
            timeout_at=now + self._ctx.cfg.probe_timeout_s * scale,
            deadline=now + self._ctx.cfg.probe_interval_s * scale,
            direct=True,
        )
        self.probing[node_id] = probe_id
        # Lifeguard's buddy system: tell a suspect directly, so it can refute at once.
        first = self._diss.update_for(node_id) if self._table.state_of(node_id) == SUSPECT else None
        self._ctx.n["probes_sent"] += 1
        self._ctx.send(
            out,
            node_id,
            record.address,
            GossipProbe(
                probe_id=probe_id, target=node_id, updates=self._diss.piggyback(node_id, first)
            ),
        )

    def escalate(self, now: float, probe_id: int, probe: Probe, out: list[Outgoing]) -> None:
        probe.indirect = True
        if probe.direct:
            # Beside the relays, one more direct try (memberlist's TCP fallback ping):
            # at 2% loss it cuts the false suspicions of live members ~25-fold, and each
            # one costs every member of a 10,000-member grid ~10 KB of gossip.
            probe.reprobed = True
            self._ctx.send(
                out,
                probe.target,
                probe.address,
                GossipProbe(probe_id=probe_id, target=probe.target, updates=()),
            )
        relays = self._table.random_members(
            self._ctx.cfg.indirect_probes, (ALIVE,), exclude=probe.target
        )
        probe.expected_nacks = len(relays)
        for relay in relays:
            self._ctx.n["indirect_sent"] += 1
            self._table.send_to_member(
                out,
                relay,
                GossipProbeRequest(
                    probe_id=probe_id,
                    target=probe.target,
                    target_address=probe.address,
                    updates=self._diss.piggyback(relay),
                ),
            )

    def _failed(self, now: float, probe: Probe) -> None:
        self._ctx.n["probes_failed"] += 1
        if probe.direct:
            # Missing nacks hint that the problem is on our side (Lifeguard).
            expected = probe.expected_nacks
            delta = max(0, expected - probe.nacks) if expected > 0 else 1
            self._ctx.awareness = min(
                self._ctx.awareness + delta, self._ctx.cfg.awareness_max_multiplier - 1
            )
        state = self._table.state_of(probe.target)
        if state == ALIVE:
            member = self._table.materialize(probe.target)
            assert member is not None
            self._susp.suspect(
                now, probe.target, member, self._ctx.node_id, self._susp.own_claim(member, SUSPECT)
            )
        elif state == SUSPECT:
            # Our own failed probe is an independent confirmation (Lifeguard).
            suspicion = self._susp.suspicions.get(probe.target)
            if suspicion is not None and suspicion.would_confirm(self._ctx.node_id):
                member = self._table.overlay[probe.target]
                suspicion.confirm(self._ctx.node_id, self._susp.own_claim(member, SUSPECT))
                self._diss.queue_update(probe.target, self._ctx.node_id)

    def _succeeded(self, probe: Probe) -> None:
        if probe.direct and self._ctx.awareness > 0:
            self._ctx.awareness -= 1

    def on_ack(self, now: float, sender: bytes | None, probe_id: int, out: list[Outgoing]) -> None:
        probe = self.probes.get(probe_id)
        if probe is not None:
            if sender is not None and sender != probe.target:
                self._ctx.n["invalid"] += 1
                return
            del self.probes[probe_id]
            self.probing.pop(probe.target, None)
            if probe.direct and not probe.reprobed:
                self._loc.record_rtt(probe.target, now - probe.sent_at)
            self._succeeded(probe)
            return
        relay = self.relays.get(probe_id)
        if relay is not None:
            if sender is not None and sender != relay.target:
                self._ctx.n["invalid"] += 1
                return
            del self.relays[probe_id]
            self._loc.record_rtt(relay.target, now - relay.sent_at)
            self._table.send_to_member(
                out,
                relay.origin,
                GossipIndirectAck(
                    probe_id=relay.origin_probe_id,
                    target=relay.target,
                    reached=True,
                    updates=self._diss.piggyback(relay.origin),
                ),
            )

    def on_indirect_ack(self, now: float, message: GossipIndirectAck) -> None:
        probe = self.probes.get(message.probe_id)
        if probe is None or probe.target != message.target:
            return
        if message.reached:
            del self.probes[message.probe_id]
            self.probing.pop(probe.target, None)
            self._succeeded(probe)
        else:
            probe.nacks += 1

    def relay(
        self, now: float, sender: bytes, message: GossipProbeRequest, out: list[Outgoing]
    ) -> None:
        if message.target == self._ctx.node_id:
            self._table.send_to_member(
                out,
                sender,
                GossipIndirectAck(
                    probe_id=message.probe_id, target=self._ctx.node_id, reached=True, updates=()
                ),
            )
            return
        known = self._table.record_of(message.target)
        if known is None:
            # Rule 9: never dial an address a peer hands us.  The nack is the truth: we
            # could not reach it.
            self._ctx.n["relay_refused"] += 1
            self._table.send_to_member(
                out,
                sender,
                GossipIndirectAck(
                    probe_id=message.probe_id,
                    target=message.target,
                    reached=False,
                    updates=self._diss.piggyback(sender),
                ),
            )
            return
        self._ctx.n["relays"] += 1
        relay_id = self._ctx.new_id()
        self.relays[relay_id] = Relay(
            origin=sender,
            origin_probe_id=message.probe_id,
            target=message.target,
            sent_at=now,
            deadline=now + self._ctx.cfg.probe_timeout_s,
        )
        address = known.address  # signed by the target, unlike the requester's hint
        first = self._diss.update_for(message.target)
        if first is not None and first.state not in CLAIMS:
            first = None
        self._ctx.send(
            out,
            message.target,
            address,
            GossipProbe(
                probe_id=relay_id,
                target=message.target,
                updates=self._diss.piggyback(message.target, first),
            ),
        )

    def unreachable(self, now: float, node_id: bytes) -> list[Outgoing]:
        """The transport could not deliver to ``node_id``: count it as a failed probe.

        A pending direct probe skips straight to the indirect phase; otherwise an
        alive member gets an indirect probe now.  Relayed probes to it are nacked.
        """
        out: list[Outgoing] = []
        for relay_id, relay in list(self.relays.items()):
            if relay.target == node_id:
                del self.relays[relay_id]
                self._nack(out, relay)
        probe_id = self.probing.get(node_id)
        if probe_id is not None:
            probe = self.probes[probe_id]
            if not probe.indirect:
                self.escalate(now, probe_id, probe, out)
            return out
        if self._table.state_of(node_id) != ALIVE or self._ctx.leaving:
            return out
        record = self._table.record_of(node_id)
        assert record is not None
        scale = self._ctx.awareness + 1
        probe_id = self._ctx.new_id()
        probe = Probe(
            target=node_id,
            address=record.address,
            sent_at=now,
            timeout_at=now,
            deadline=now
            + max(
                self._ctx.cfg.probe_timeout_s,
                self._ctx.cfg.probe_interval_s - self._ctx.cfg.probe_timeout_s,
            )
            * scale,
            direct=False,
        )
        self.probes[probe_id] = probe
        self.probing[node_id] = probe_id
        self.escalate(now, probe_id, probe, out)
        return out
