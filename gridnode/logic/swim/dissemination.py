"""Dissemination (Rule 5): the piggyback queue and the gossip rounds that drain it.

Every change is queued and piggybacked on probes, acks and gossip rounds
(``gossip_fanout`` random members every ``gossip_interval_s``) at most
``retransmit_mult * ceil(log10(N + 1))`` times, fewest-sent first.  The queue holds
node ids only: what is sent is the gossip form of the member as held when it goes
out, so a newer record or state replaces the older news for free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from protocol import GossipUpdates, MemberUpdate

from .context import Context
from .records import ALIVE, CLAIMS, SUSPECT, Outgoing, Suspicion
from .table import MemberTable

__all__ = ["BroadcastQueue", "Dissemination"]


class BroadcastQueue:
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


class Dissemination:
    """What this member tells others, and when the next gossip round is due.

    ``suspicions`` is the Lifeguard table (shared with ``Suspicions``): a suspect
    member's claim may be relayed as any of its confirming reporters signed it.
    """

    def __init__(
        self,
        ctx: Context,
        table: MemberTable,
        suspicions: Mapping[bytes, Suspicion],
        next_at: float,
    ) -> None:
        self._ctx = ctx
        self._table = table
        self._suspicions = suspicions
        self.queue = BroadcastQueue()
        self.next_at = next_at
        #: What the broadcast queue carries for us: a snapshot taken when queued, so
        #: peers see at most one new version per self_update_min_interval_s.
        self.self_broadcast: MemberUpdate | None = None

    def queue_update(self, node_id: bytes, reporter: bytes) -> None:
        if not len(self.queue):
            # New news waits for the next tick of the gossip clock, as with a ticker.
            self.next_at = self.grid_after(self._ctx.now)
        self.queue.put(node_id, reporter)

    def update_for(self, node_id: bytes, reporter: bytes | None = None) -> MemberUpdate | None:
        if node_id == self._ctx.node_id:
            return self.self_broadcast
        member = self._table.overlay.get(node_id)
        if member is None:
            if node_id in self._table.forgotten:
                return None
            return self._table.shared.updates.get(node_id)
        state = member.state
        claimant = proof = b""
        if state in CLAIMS:
            # A claim travels as its reporter signed it, with the state it claimed (a
            # "dead" claim may be what backs a suspicion here): Rule 2a.
            claimant, state, proof = member.reporter, member.claim_state or state, member.proof
            if reporter is not None and reporter != claimant and member.state == SUSPECT:
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

    def piggyback(
        self, recipient: bytes | None, first: MemberUpdate | None = None
    ) -> tuple[MemberUpdate, ...]:
        """Pending updates for a message to ``recipient``, fewest-sent first.

        An "alive" about the recipient itself would teach it nothing and use up one of
        the update's few transmissions, so it waits for another message.
        """
        updates: list[MemberUpdate] = [] if first is None else [first]
        room = self._ctx.cfg.max_piggyback - len(updates)
        if room > 0 and len(self.queue):
            skip = recipient if self._table.state_of_or_none(recipient) == ALIVE else None
            for node_id, reporter in self.queue.take(room, self.retransmit_limit(), skip):
                update = self.update_for(node_id, reporter)
                if update is not None and update is not first:
                    updates.append(update)
        return tuple(updates)

    def regossip(self, node_id: bytes) -> None:
        """Rule 5a: a claim older than our news means its sender missed the news.

        A refutation has few transmissions and may be lost (on a flaky link, by the
        very acks that fail); whoever still gossips the old claim shows it did not
        arrive everywhere, so the news goes round again, once it is out of the queue.
        """
        if node_id not in self.queue:
            if node_id == self._ctx.node_id:
                self.self_broadcast = self._ctx.self_update
            self.queue_update(node_id, b"")

    def gossip_round(self, now: float, out: list[Outgoing]) -> None:
        targets = self._table.random_members(
            self._ctx.cfg.gossip_fanout, (ALIVE, SUSPECT), recently_dead=True
        )
        for node_id in targets:
            updates = self.piggyback(node_id)
            if not updates:
                break
            self._table.send_to_member(out, node_id, GossipUpdates(updates=updates))

    def grid_after(self, now: float) -> float:
        interval = self._ctx.cfg.gossip_interval_s
        next_at = self.next_at
        if next_at > now:
            return next_at
        return next_at + (math.floor((now - next_at) / interval) + 1) * interval

    def gossip_form(self, node_id: bytes) -> MemberUpdate | None:
        return self._ctx.self_update if node_id == self._ctx.node_id else self.update_for(node_id)

    def relays_refreshes(self) -> bool:
        """Rule 5b: relay content refreshes only in a small grid."""
        return self._table.member_count() <= self._ctx.cfg.refresh_relay_max_members

    def retransmit_limit(self) -> int:
        return self._ctx.cfg.retransmit_mult * max(
            1, math.ceil(math.log10(self._table.member_count() + 1))
        )
