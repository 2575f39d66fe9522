"""The member table: the shared initial view, this instance's overlay, and lookups over both.

Memory: ``SharedView`` lets thousands of instances in one process share the initial
records; each instance keeps only what differs (an overlay of ``Member`` entries,
the shared members it forgot, the members it learnt beyond the shared view), so a
10,000-member simulation does not hold 100 million entries.  Every lookup here
answers "as this view holds it" across the two layers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Final

from protocol import MemberRecord, MemberUpdate, Message, record_digest, record_is_valid
from protocol._gossip import MAX_DIGEST_BITS, entry_hash

from .context import Context
from .records import ALIVE, DEAD, LEFT, SUSPECT, Member, Outgoing

__all__ = ["FINE_BUCKETS", "MemberTable", "SharedView"]

#: Digests are kept at the finest level (one bucket per first byte of the node id) and
#: folded down to the level an exchange uses.
FINE_BUCKETS: Final = 1 << MAX_DIGEST_BITS


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
            nid: MemberUpdate(record=rec, state=ALIVE) for nid, rec in valid.items()
        }
        #: Rule 6: every record's digest entry, the XOR of them per bucket, and the
        #: members of each bucket; an instance keeps only how its view differs.
        self.hashes: dict[bytes, int] = {
            nid: entry_hash(nid, rec.incarnation, rec.sequence, ALIVE) for nid, rec in valid.items()
        }
        self.base: list[int] = [0] * FINE_BUCKETS
        buckets: list[list[bytes]] = [[] for _ in range(FINE_BUCKETS)]
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


class MemberTable:
    """Who this view holds, in which state, layered over a ``SharedView``.

    Index space: the shared ids, then the ids learnt beyond them in arrival order;
    random choices and the probe order draw from it, so no instance stores a list of
    every member.
    """

    def __init__(self, ctx: Context, shared: SharedView) -> None:
        self._ctx = ctx
        self.shared = shared
        self.t0 = ctx.now
        self.overlay: dict[bytes, Member] = {}
        #: Shared members that were reaped (and ourselves): hidden from the shared view.
        self.forgotten: set[bytes] = {ctx.node_id}
        #: Members outside the shared view, in arrival order (index space for choices).
        self.extra_ids: list[bytes] = []
        self.extra_set: set[bytes] = set()
        shared_others = len(shared) - (1 if ctx.node_id in shared else 0)
        self.counts: dict[str, int] = {ALIVE: shared_others, SUSPECT: 0, DEAD: 0, LEFT: 0}

    def state_of(self, node_id: bytes) -> str | None:
        member = self.overlay.get(node_id)
        if member is not None:
            return member.state
        if node_id in self.forgotten or node_id not in self.shared:
            return None
        return ALIVE

    def state_of_or_none(self, node_id: bytes | None) -> str | None:
        return None if node_id is None else self.state_of(node_id)

    def record_of(self, node_id: bytes) -> MemberRecord | None:
        member = self.overlay.get(node_id)
        if member is not None:
            return member.record
        if node_id in self.forgotten or node_id not in self.shared:
            return None
        return self.shared[node_id]

    def materialize(self, node_id: bytes) -> Member | None:
        member = self.overlay.get(node_id)
        if member is None and node_id not in self.forgotten and node_id in self.shared:
            member = Member(
                record=self.shared[node_id],
                state=ALIVE,
                state_since=self.t0,
                update=self.shared.updates[node_id],
            )
            self.overlay[node_id] = member
        return member

    def index_size(self) -> int:
        return len(self.shared.ids) + len(self.extra_ids)

    def id_at(self, index: int) -> bytes:
        shared = self.shared.ids
        return shared[index] if index < len(shared) else self.extra_ids[index - len(shared)]

    def random_members(
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
        size = self.index_size()
        if count <= 0 or size == 0:
            return []
        chosen: list[bytes] = []
        seen: set[bytes] = set()
        rand = self._ctx.rng.randrange
        for _ in range(4 * count + 8):
            node_id = self.id_at(rand(size))
            if node_id in seen or node_id == exclude:
                continue
            seen.add(node_id)
            if self._eligible(node_id, states, recently_dead):
                chosen.append(node_id)
                if len(chosen) == count:
                    return chosen
        pool = [
            node_id
            for node_id in itertools.chain(self.shared.ids, self.extra_ids)
            if node_id not in seen
            and node_id != exclude
            and self._eligible(node_id, states, recently_dead)
        ]
        pool = list(dict.fromkeys(pool))
        missing = count - len(chosen)
        if len(pool) > missing:
            pool = self._ctx.rng.sample(pool, missing)
        return chosen + pool

    def _eligible(self, node_id: bytes, states: tuple[str, ...], recently_dead: bool) -> bool:
        member = self.overlay.get(node_id)
        if member is None:
            return ALIVE in states and node_id not in self.forgotten and node_id in self.shared
        if member.state in states:
            return True
        # A gossip target may also be recently dead, so a wrongly declared member
        # hears of it and refutes (memberlist's gossip to the dead).
        return (
            recently_dead
            and member.state == DEAD
            and self._ctx.now - member.state_since < self._ctx.cfg.gossip_to_dead_s
        )

    def member_count(self) -> int:
        """N for the log-scaled limits: members not dead or left, ourselves included."""
        return self.counts[ALIVE] + self.counts[SUSPECT] + 1

    def send_to_member(self, out: list[Outgoing], node_id: bytes, msg: Message) -> None:
        record = self.record_of(node_id)
        self._ctx.send(out, node_id, "" if record is None else record.address, msg)
