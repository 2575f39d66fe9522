"""Anti-entropy (Rule 6): digest exchanges, full states for joiners, seeds and re-joining.

Every ``sync_interval_s`` a member sends one random member a digest of its view
(``GossipDigest``: the XOR of ``entry_hash`` per bucket of node ids, at most 256
buckets, ~2 KiB at 10,000 members).  The receiver answers with its entry hashes in
the buckets that differ; the sender pushes the records the receiver lacks or holds
differently and asks for the ones it lacks; only those records travel.  A full
state, in pages of at most ``max_records_per_message``, goes only to a joiner
(``join``).  A member answers one sender's digest, and its join, at most once per
``sync_answer_interval_s``; a digest's lists are hints that only choose which signed
records to send or ask for, so a lying digest suppresses and forges nothing, and
every list has a wire bound.  To heal partitions, a member also exchanges digests
with a dead member or a seed that is not alive, with probability (those) / (alive
members + 1), like serf's reconnect; a member alone re-joins through its seeds.  A
seed is known by the node id the transport met when it dialled the seed's address
(``seed_reached``), never by whichever record claims that address.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from protocol import GossipSync, GossipSyncReply, MemberUpdate, Message
from protocol._gossip import (
    DIGEST_HASH_BYTES,
    MAX_DIGEST_ENTRIES,
    MAX_DIGEST_RECORDS,
    GossipDigest,
    GossipDigestRecords,
    GossipDigestReply,
)

from .context import Context, trim
from .digest import DigestIndex
from .dissemination import Dissemination
from .records import ALIVE, DEAD, SUSPECT, Outgoing
from .suspicion import Suspicions
from .table import MemberTable

__all__ = ["AntiEntropy"]

#: Digest exchanges we started and are waiting for, and answered and may still be
#: asked records for (per peer); older ones are forgotten.
_DIGESTS_OPEN_MAX: Final = 64


class AntiEntropy:
    """Digest exchanges and full-state syncs under way, the seeds, and their schedules."""

    def __init__(
        self,
        ctx: Context,
        table: MemberTable,
        dissemination: Dissemination,
        digest: DigestIndex,
        suspicions: Suspicions,
        next_at: float,
    ) -> None:
        self._ctx = ctx
        self._table = table
        self._diss = dissemination
        self._digest = digest
        self._susp = suspicions
        self.next_at = next_at
        self.seeds: tuple[str, ...] = ()
        self.seed_ids: dict[str, bytes] = {}
        self.rejoin_at = math.inf
        self._answered_at: dict[bytes | None, float] = {}
        #: The sender's own incarnation at its last full-state answer, and the senders
        #: answered a second time within the interval (a new run of that node).
        self._answered_incarnation: dict[bytes | None, int] = {}
        self._answered_again: set[bytes | None] = set()
        #: Digest exchanges under way: ours (sync id -> peer) and the ones we answered
        #: (peer -> sync id), each answered with records at most once.
        self._digests_sent: dict[int, bytes | None] = {}
        self._digests_answered: dict[bytes | None, int] = {}
        self._digest_answered_at: dict[bytes | None, float] = {}

    def alone(self) -> bool:
        """True while we have seeds, are not leaving and hold nobody alive or suspect."""
        counts = self._table.counts
        return bool(self.seeds) and not self._ctx.leaving and counts[ALIVE] + counts[SUSPECT] == 0

    def round(self, now: float, out: list[Outgoing]) -> None:
        """A digest exchange when the sync interval is up; re-join while we are alone."""
        if now >= self.next_at:
            self.next_at = now + self.interval()
            if not self._ctx.leaving:
                self.sync_round(out)
        if self.alone() and now >= self.rejoin_at:
            for address in self.seeds:
                self.sync_to(out, None, address, join=True)
            self.rejoin_at = now + self._ctx.cfg.rejoin_interval_s

    def interval(self) -> float:
        """Rule 6: a digest costs ~8 bytes per bucket whatever the view's size, so the
        interval no longer grows with the grid (full states did, like memberlist's)."""
        return self._ctx.cfg.sync_interval_s

    def join(self, now: float, seed_addresses: Sequence[str]) -> list[Outgoing]:
        """Send our state to each seed and ask for theirs; retried while we know nobody.

        The caller announces our own record first.
        """
        self._ctx.now = now
        own = self._ctx.self_record.address
        self.seeds = tuple(dict.fromkeys(a for a in seed_addresses if a and a != own))
        out: list[Outgoing] = []
        for address in self.seeds:
            self.sync_to(out, self.seed_ids.get(address), address, join=True)
        self.rejoin_at = now + self._ctx.cfg.rejoin_interval_s
        return out

    def start_digest(self, now: float, node_id: bytes) -> list[Outgoing]:
        """Begin an anti-entropy exchange with ``node_id`` now (Rule 6; sync rounds do
        this by themselves, tests and the simulation may want one at a given time)."""
        self._ctx.now = now
        out: list[Outgoing] = []
        record = self._table.record_of(node_id)
        self.digest_to(out, node_id, "" if record is None else record.address)
        return out

    def seed_reached(self, address: str, node_id: bytes) -> None:
        """The transport dialled seed ``address`` and the handshake proved ``node_id``.

        Only this binds a seed to a member (Rule 6): a record claiming the seed's
        address is its owner's word, and any member may sign any address.
        """
        if address in self.seeds:
            self.seed_ids[address] = node_id

    def seed_id(self, address: str) -> bytes | None:
        """The node met at seed ``address``, once the transport has reached it."""
        return self.seed_ids.get(address)

    def full_state(self) -> list[MemberUpdate]:
        updates = [self._ctx.self_update]
        overlay = self._table.overlay
        forgotten = self._table.forgotten
        shared_updates = self._table.shared.updates
        for node_id in self._table.shared.ids:
            if node_id not in overlay and node_id not in forgotten:
                updates.append(shared_updates[node_id])
        for node_id in overlay:
            update = self._diss.update_for(node_id)
            if update is not None:
                updates.append(update)
        return updates

    def _pages(self) -> list[tuple[MemberUpdate, ...]]:
        updates = self.full_state()
        size = self._ctx.cfg.max_records_per_message
        return [tuple(updates[i : i + size]) for i in range(0, len(updates), size)]

    def sync_to(self, out: list[Outgoing], node_id: bytes | None, address: str, join: bool) -> None:
        sync_id = self._ctx.new_id()
        pages = self._pages()
        self._ctx.n["syncs_sent"] += 1
        for page, updates in enumerate(pages):
            self._ctx.send(
                out,
                node_id,
                address,
                GossipSync(
                    sync_id=sync_id, join=join, page=page, pages=len(pages), updates=updates
                ),
            )

    def answer_sync(
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
        interval = self._ctx.cfg.sync_answer_interval_s
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
                self._ctx.n["sync_refused"] += 1
                return
            self._answered_again.add(sender)
        else:
            self._answered_again.discard(sender)
        trim(self._answered_at, lambda at: now - at >= interval)
        for gone in set(self._answered_incarnation) - set(self._answered_at):
            del self._answered_incarnation[gone]
        self._answered_again &= set(self._answered_at)
        self._answered_at[sender] = now
        self._answered_incarnation[sender] = incarnation
        known = self._table.record_of(sender)
        address = "" if known is None else known.address
        self._ctx.n["syncs_answered"] += 1
        pages = self._pages()
        for page, updates in enumerate(pages):
            self._ctx.send(
                out,
                sender,
                address,
                GossipSyncReply(
                    sync_id=message.sync_id, page=page, pages=len(pages), updates=updates
                ),
            )

    def sync_round(self, out: list[Outgoing]) -> None:
        """Rule 6: one random alive member, plus maybe one lost member or seed."""
        for node_id in self._table.random_members(1, (ALIVE,)):
            record = self._table.record_of(node_id)
            assert record is not None
            self.digest_to(out, node_id, record.address)
        lost: list[tuple[bytes | None, str]] = []
        for node_id in self._susp.reap_at:
            member = self._table.overlay[node_id]
            if member.state == DEAD:
                lost.append((node_id, member.record.address))
        for address in self.seeds:
            seed_id = self.seed_ids.get(address)
            if seed_id is None or self._table.state_of(seed_id) not in (ALIVE, SUSPECT):
                lost.append((seed_id, address))
        if lost and self._ctx.rng.random() < len(lost) / (self._table.counts[ALIVE] + 1):
            lost_id, lost_address = lost[self._ctx.rng.randrange(len(lost))]
            self.digest_to(out, lost_id, lost_address)

    def digest_to(self, out: list[Outgoing], node_id: bytes | None, address: str) -> None:
        sync_id = self._ctx.new_id()
        while len(self._digests_sent) >= _DIGESTS_OPEN_MAX:
            del self._digests_sent[next(iter(self._digests_sent))]
        self._digests_sent[sync_id] = node_id
        bits = self._digest.bits()
        hashes = b"".join(v.to_bytes(DIGEST_HASH_BYTES, "big") for v in self._digest.digest(bits))
        self._ctx.n["syncs_sent"] += 1
        self._ctx.send(
            out, node_id, address, GossipDigest(sync_id=sync_id, bits=bits, hashes=hashes)
        )

    def answer_digest(
        self, now: float, sender: bytes | None, message: GossipDigest, out: list[Outgoing]
    ) -> None:
        """Step 2: list our entries in the buckets that differ, as many as fit."""
        if len(message.hashes) != DIGEST_HASH_BYTES << message.bits:
            self._ctx.n["invalid"] += 1
            return
        interval = self._ctx.cfg.sync_answer_interval_s
        last = self._digest_answered_at.get(sender)
        if last is not None and now - last < interval:
            self._ctx.n["sync_refused"] += 1
            return
        trim(self._digest_answered_at, lambda at: now - at >= interval)
        self._digest_answered_at[sender] = now
        bits = message.bits
        theirs = message.hashes
        ours = self._digest.digest(bits)
        differing = [
            bucket
            for bucket, value in enumerate(ours)
            if theirs[bucket * DIGEST_HASH_BYTES : (bucket + 1) * DIGEST_HASH_BYTES]
            != value.to_bytes(DIGEST_HASH_BYTES, "big")
        ]
        if not differing:
            return
        self._ctx.rng.shuffle(differing)
        listed: list[int] = []
        entries: list[int] = []
        for bucket in differing:
            found = self._digest.entries(bits, (bucket,))
            if len(entries) + len(found) > MAX_DIGEST_ENTRIES:
                continue
            listed.append(bucket)
            entries.extend(found)
        while len(self._digests_answered) >= _DIGESTS_OPEN_MAX:
            del self._digests_answered[next(iter(self._digests_answered))]
        self._digests_answered.pop(sender, None)
        self._digests_answered[sender] = message.sync_id
        self._ctx.n["syncs_answered"] += 1
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

    def on_digest_reply(
        self, sender: bytes | None, message: GossipDigestReply, out: list[Outgoing]
    ) -> None:
        """Step 3: push what differs on our side, ask for what differs on theirs."""
        if message.sync_id not in self._digests_sent:
            self._ctx.n["invalid"] += 1
            return
        peer = self._digests_sent[message.sync_id]
        if sender is not None and peer is not None and sender != peer:
            self._ctx.n["invalid"] += 1
            return
        del self._digests_sent[message.sync_id]
        if not message.buckets:
            return
        if max(message.buckets) >= 1 << message.bits:
            self._ctx.n["invalid"] += 1
            return
        raw = message.entries
        theirs = {
            int.from_bytes(raw[i : i + DIGEST_HASH_BYTES], "big")
            for i in range(0, len(raw), DIGEST_HASH_BYTES)
        }
        ours = self._digest.entries(message.bits, message.buckets)
        updates: list[MemberUpdate] = []
        for value, node_id in ours.items():
            if value in theirs or len(updates) >= MAX_DIGEST_RECORDS:
                continue
            update = self._diss.gossip_form(node_id)
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

    def on_digest_records(
        self, sender: bytes | None, message: GossipDigestRecords, out: list[Outgoing]
    ) -> None:
        """Step 4: the records asked for, once per digest we answered."""
        if self._digests_answered.get(sender) != message.sync_id:
            if message.want:
                self._ctx.n["invalid"] += 1
            return
        del self._digests_answered[sender]
        if not message.want or not message.buckets:
            return
        if max(message.buckets) >= 1 << message.bits:
            self._ctx.n["invalid"] += 1
            return
        raw = message.want
        want = {
            int.from_bytes(raw[i : i + DIGEST_HASH_BYTES], "big")
            for i in range(0, len(raw), DIGEST_HASH_BYTES)
        }
        ours = self._digest.entries(message.bits, message.buckets)
        updates = [
            update
            for value, node_id in ours.items()
            if value in want and (update := self._diss.gossip_form(node_id)) is not None
        ]
        # What one exchange may cost us, like what it may push: a peer asking for
        # everything gets a slice (the rest comes with later exchanges), not a full state.
        del updates[MAX_DIGEST_RECORDS:]
        size = self._ctx.cfg.max_records_per_message
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
            self._ctx.send(out, None, "", msg)
        else:
            self._table.send_to_member(out, peer, msg)
