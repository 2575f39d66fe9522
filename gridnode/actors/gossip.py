"""The gossip actor (claims 14-15, 43, 45 need it; design brief: global client profile).

It drives the pure SWIM state machine (``gridnode.logic.swim.Membership``) with real time
and real sessions: one-way ``gossip_*`` messages from links arrive on its inbound channel,
the machine's outgoing messages are handed to a few sender tasks that dial (or reuse) the
authenticated session to each target.  What it maintains is the membership view every
other actor reads: who is alive, where they claim to be (and whether the speed of light
allows it), how much room they have.

Backpressure: gossip is lossy by design, so the inbound channel and the outbox are
written with ``send_nowait``; when full, messages are dropped and counted: a stalled
gossip actor must never stall a link's reader, and SWIM tolerates loss.
Cancellation: nothing to flush; on a clean shutdown the node announces its leave first.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import attrs
import trio

from protocol import Message, short_node_id, sign_record
from protocol._gossip import MemberRecord

from ..errors import PeerError
from ..log import get_logger
from ..logic.placement.members import Member, Source
from ..logic.swim import DRAINING_LABEL, GossipConfig, Membership, MemberView, Outgoing, is_draining
from ..transport.link import PeerLink

__all__ = ["GossipIn", "Gossiper", "build_membership"]

_log = get_logger(actor="gossip")


#: Free space is republished when it moved by this share of the allocation (or at least
#: ``FREE_BYTES_MIN_STEP``) since the figure last published, at most once per
#: ``FREE_BYTES_INTERVAL_S``; every republication reaches every member of the grid
#: (about 1 KB each at 10,000 members), so it must be news.
FREE_BYTES_STEP_FRACTION = 0.01
FREE_BYTES_MIN_STEP = 1 << 20
FREE_BYTES_INTERVAL_S = 300.0
#: Running out is urgent news (placement should stop choosing us): under this share of
#: the allocation a meaningful change goes out after ``FREE_BYTES_LOW_INTERVAL_S``.
FREE_BYTES_LOW_FRACTION = 0.05
FREE_BYTES_LOW_INTERVAL_S = 5.0


class Connect(Protocol):
    """How gossip dials a member (``Transport.connect``): the session it opened."""

    def __call__(self, address: str, *, expect: bytes | None = None) -> Awaitable[PeerLink]:
        raise NotImplementedError


@attrs.frozen
class GossipIn:
    sender: bytes
    message: Message


def parse_labels(labels: Sequence[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for label in labels:
        name, _, value = label.partition("=")
        if name and value:
            pairs.append((name.strip(), value.strip()))
    return tuple(sorted(pairs))


def build_membership(
    *,
    identity: Any,
    config: Any,
    address: str,
    free_bytes: int,
    now: float,
    certificate: bytes = b"",
    rng: random.Random | None = None,
    admit: Callable[[MemberRecord], bool] | None = None,
) -> Membership:
    """The node's own signed record and a fresh state machine.

    Incarnation and sequence start from the wall clock, so a node restarted (or recovered
    on a new machine with the same key) always supersedes what others remember of it.
    """
    from protocol import PROTOCOL_VERSION

    stamp = int(time.time() * 1000)
    record = sign_record(
        identity.signing_key,
        node_id=identity.node_id,
        address=address,
        incarnation=stamp,
        sequence=stamp,
        lat=config.lat,
        lon=config.lon,
        city=config.city,
        allocated_bytes=config.allocated_bytes,
        free_bytes=free_bytes,
        bandwidth_bps=config.bandwidth_bps,
        protocol_version=PROTOCOL_VERSION,
        labels=tuple(config.labels),
        leaving=False,
        certificate=certificate,
    )
    gossip_config = GossipConfig(
        probe_interval_s=config.gossip_probe_interval_s,
        probe_timeout_s=config.gossip_probe_interval_s / 2,
        sync_interval_s=config.gossip_sync_interval_s,
        dead_reap_s=config.gossip_dead_reap_s,
        location_check=config.location_check,
    )
    return Membership(
        signing_key=identity.signing_key,
        self_record=record,
        config=gossip_config,
        rng=rng or random.Random(),
        now=now,
        admit=admit,
    )


@attrs.define
class Gossiper:
    membership: Membership
    inbound: trio.MemoryReceiveChannel[GossipIn]
    connect: Connect  # Transport.connect(address, expect=node_id)
    link_of: Callable[[bytes], PeerLink | None]  # Transport.link(node_id): an open session
    seeds: tuple[str, ...]
    outbox_size: int = 256
    per_peer_in_flight: int = 2
    connect_timeout_s: float = 2.0
    #: The target storage a member's certificate allots (None: not capped; open grid).
    allotted: Callable[[MemberRecord], int | None] | None = None
    _in_flight: dict[bytes, int] = attrs.field(factory=dict)
    free_bytes_interval_s: float = FREE_BYTES_INTERVAL_S
    free_bytes_low_interval_s: float = FREE_BYTES_LOW_INTERVAL_S
    _free_bytes_pending: int | None = None
    _free_bytes_sent_at: float = -1e9
    dropped_outgoing: int = 0
    send_failures: int = 0
    _outbox_send: trio.MemorySendChannel[Outgoing] | None = None
    #: Draining before a graceful leave (``gridnode.leave``): our record carries
    #: ``DRAINING_LABEL`` and publishes no free space, so nobody places packets here.
    draining: bool = False

    def _log_state_change(self, node_id: bytes, old: str, new: str) -> None:
        """An operator wants to see members come and go (issue 12): at info, one line
        per transition (they are rare: a grid of 10,000 sees a few a minute)."""
        record = self.membership._record_of(node_id)
        _log.info(
            "member_" + new,
            peer=short_node_id(node_id),
            was=old,
            address=record.address if record is not None else None,
            members_alive=self.membership.statistics().members_alive,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.membership.on_state_change = self._log_state_change
        send, receive = trio.open_memory_channel[Outgoing](self.outbox_size)
        self._outbox_send = send
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._dispatch, receive, nursery)
            self._deliver(self.membership.join(trio.current_time(), list(self.seeds)))
            task_status.started()
            await self._loop()

    async def _loop(self) -> None:
        # The state machine rejoins through its seeds by itself while it knows nobody.
        async with self.inbound:
            while True:
                now = trio.current_time()
                self._flush_free_bytes(now)  # the trailing update of a burst
                self._deliver(self.membership.tick(now))
                deadline = max(self.membership.next_deadline(), now + 0.01)
                with trio.move_on_at(min(deadline, now + 1.0)):
                    item = await self.inbound.receive()
                    self._deliver(
                        self.membership.handle(trio.current_time(), item.sender, item.message)
                    )

    def _deliver(self, outgoing: Sequence[Outgoing]) -> None:
        assert self._outbox_send is not None
        for out in outgoing:
            try:
                self._outbox_send.send_nowait(out)
            except trio.WouldBlock:
                self.dropped_outgoing += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the actor has stopped (shutdown); gossip is best effort

    async def _dispatch(
        self, outbox: trio.MemoryReceiveChannel[Outgoing], nursery: trio.Nursery
    ) -> None:
        """Hand each message to its own small task and never wait here.

        One unreachable member (a partition, a half-open TCP connection) must not delay
        probes to the others: a dial can take seconds and a send to a stalled peer waits
        for its TCP window, and a delayed probe answer is what makes a live member look
        suspect.  So every send runs in its own task, at most ``per_peer_in_flight`` per
        member and one dial per address at a time; anything beyond is dropped and
        counted (SWIM tolerates loss; it does not tolerate delay).
        """
        async with outbox:
            async for out in outbox:
                key = out.node_id if out.node_id is not None else out.address.encode()
                if not out.address and self.link_of(key) is None:
                    continue  # an answer to a peer whose session is gone
                if self._in_flight.get(key, 0) >= self.per_peer_in_flight:
                    self.dropped_outgoing += 1
                    continue
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
                nursery.start_soon(self._send_one, key, out)

    async def _send_one(self, key: bytes, out: Outgoing) -> None:
        try:
            link = self.link_of(out.node_id) if out.node_id is not None else None
            if link is None:
                with trio.fail_after(self.connect_timeout_s):
                    link = await self.connect(out.address, expect=out.node_id)
                if out.node_id is None:
                    # A seed, dialled by address: the handshake proved who is there, and
                    # that (not a record claiming the address) is who the seed is.
                    self.membership.seed_reached(out.address, link.peer_id)
            await link.send(out.message)
        except (PeerError, trio.TooSlowError) as exc:
            self.send_failures += 1
            if out.node_id is not None:
                self._deliver(self.membership.unreachable(trio.current_time(), out.node_id))
            _log.debug("gossip_send_failed", address=out.address, error=str(exc))
        finally:
            left = self._in_flight.get(key, 1) - 1
            if left <= 0:
                self._in_flight.pop(key, None)
            else:
                self._in_flight[key] = left

    # --- views for the rest of the node ----------------------------------------------------------

    def update_free_bytes(self, free_bytes: int) -> None:
        """Note the new free space; it reaches the record only when it is news.

        Every stored packet changes it, and a new record means a signature here and, on
        every member, a record to fetch and a new view version (placement rebuilds its
        view): per packet it took 20% of a target's CPU during a backup, and every 5 s
        it would be most of a 10,000-member grid's gossip.  So only a move of
        ``FREE_BYTES_STEP_FRACTION`` of the allocation counts, at most once per
        ``free_bytes_interval_s`` (``free_bytes_low_interval_s`` when running out).
        Placement tolerates a stale figure: a target that runs out refuses and the
        packet goes elsewhere.
        """
        self._free_bytes_pending = free_bytes
        self._flush_free_bytes(trio.current_time())

    def free_bytes_due(self, now: float) -> bool:
        """Is the pending free space news worth a new record now?"""
        pending = self._free_bytes_pending
        if pending is None:
            return False
        record = self.membership.self_record
        allocated = record.allocated_bytes
        step = max(FREE_BYTES_MIN_STEP, int(allocated * FREE_BYTES_STEP_FRACTION))
        if abs(pending - record.free_bytes) < step and not (pending == 0 < record.free_bytes):
            return False
        low = pending < allocated * FREE_BYTES_LOW_FRACTION
        interval = self.free_bytes_low_interval_s if low else self.free_bytes_interval_s
        return now - self._free_bytes_sent_at >= interval

    def set_draining(self, on: bool, free_bytes: int) -> None:
        """Start (or stop) draining: one new record, with ``DRAINING_LABEL`` and no free
        space (or without it and ``free_bytes``).

        Raises:
            ValueError: the record cannot take one more label (``MAX_LABELS``).
        """
        record = self.membership.self_record
        labels = tuple(label for label in record.labels if label != DRAINING_LABEL)
        labels += (DRAINING_LABEL,) if on else ()
        self.membership.update_self(
            trio.current_time(), labels=labels, free_bytes=0 if on else free_bytes
        )
        self.draining = on
        self._free_bytes_pending = None

    def _flush_free_bytes(self, now: float) -> None:
        if self.draining:  # the record says 0 until the node leaves or stops draining
            self._free_bytes_pending = None
            return
        if self.free_bytes_due(now):
            assert self._free_bytes_pending is not None
            self._free_bytes_sent_at = now
            pending, self._free_bytes_pending = self._free_bytes_pending, None
            self.membership.update_self(now, free_bytes=pending)

    def leave(self) -> None:
        self._deliver(self.membership.leave(trio.current_time()))

    def members(self) -> list[MemberView]:
        return self.membership.members()

    def counters(self) -> dict[str, int]:
        """What ``status`` shows of the membership's defences: a peer that forges records
        or claims, accuses falsely or floods the node with records shows up here."""
        stats = self.membership.statistics()
        return {
            "gossip_forged_records": stats.forged_records_dropped,
            "gossip_unadmitted_records": stats.unadmitted_records_dropped,
            "gossip_forged_claims": stats.forged_claims_dropped,
            "gossip_false_accusations": stats.false_accusations,
            "gossip_accusations_rate_limited": stats.accusations_rate_limited,
            "gossip_updates_deferred": stats.updates_deferred,
            "gossip_updates_over_budget": stats.updates_over_budget,
            "gossip_sync_answers_refused": stats.sync_answers_refused,
            "gossip_probe_requests_refused": stats.probe_requests_refused,
        }

    def placement_view(self) -> tuple[int, list[Member]]:
        members = [
            Member(
                node_id=view.record.node_id,
                lat=view.record.lat,
                lon=view.record.lon,
                free_bytes=self._capacity(view.record),
                alive=True,
                location_trusted=view.location_trusted,
                labels=parse_labels(view.record.labels),
            )
            for view in self.membership.members()
            # A suspect is alive until proven dead (SWIM); excluding it would make one slow
            # probe answer fail a backup.  If it is really gone the upload is replaced.
            # A draining member (a graceful leave) takes no new packets.
            if view.state in ("alive", "suspect") and not is_draining(view.record)
        ]
        return self.membership.version, members

    def _capacity(self, record: MemberRecord) -> int:
        """What placement weighs a member by: its free space, but never more than the
        target storage its certificate allots (three liars claiming huge free space must
        not take half of every chunk)."""
        allotted = self.allotted(record) if self.allotted is not None else None
        return record.free_bytes if allotted is None else min(record.free_bytes, allotted)

    def source(self) -> Source:
        record = self.membership.self_record
        return Source(node_id=record.node_id, lat=record.lat, lon=record.lon)

    def alive(self) -> list[tuple[bytes, str]]:
        return [(v.record.node_id, v.record.address) for v in self.membership.alive_members()]

    def draining_members(self) -> frozenset[bytes]:
        """Members alive or suspect that drain before leaving: owners move their packets
        away from them (``gridnode.leave.Handover``)."""
        return frozenset(
            view.record.node_id
            for view in self.membership.members()
            if view.state in ("alive", "suspect") and is_draining(view.record)
        )

    def address_of(self, node_id: bytes) -> str | None:
        view = self.membership.member(node_id)
        return view.record.address if view is not None else None
