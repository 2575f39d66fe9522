"""The view's anti-entropy digest (Rule 6), kept current as the view changes.

The digest of a view is the XOR of ``entry_hash`` per bucket of node ids.  The
shared view's base digest is computed once; an instance keeps only the XOR deltas
per bucket against it and the entry folded in for every member that differs, so
``touch`` after a change costs two XORs and ``digest`` folds 256 buckets.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Final

from protocol._gossip import MAX_DIGEST_BITS, entry_hash

from .context import Context
from .records import ALIVE, LEFT
from .table import FINE_BUCKETS, MemberTable

__all__ = ["DigestIndex"]

#: Members per bucket a digest aims at: a differing bucket costs ~8 bytes per member.
_DIGEST_MEMBERS_PER_BUCKET: Final = 32


class DigestIndex:
    """Bucket hashes of the view as deltas against the shared base, and entry lookups."""

    def __init__(self, ctx: Context, table: MemberTable) -> None:
        self._ctx = ctx
        self._table = table
        #: Rule 6: the view's digest as XOR deltas per bucket against the shared base,
        #: and the entry hash now folded in for every member that differs from it.
        self._delta: dict[int, int] = {}
        self._folded: dict[bytes, int] = {}

    def current_hash(self, node_id: bytes) -> int:
        """The digest entry of ``node_id`` in this view; 0 when it is not in the view."""
        if node_id == self._ctx.node_id:
            record = self._ctx.self_record
            state = LEFT if record.leaving else ALIVE
            return entry_hash(node_id, record.incarnation, record.sequence, state)
        member = self._table.overlay.get(node_id)
        if member is not None:
            record = member.record
            return entry_hash(node_id, record.incarnation, record.sequence, member.state)
        if node_id in self._table.forgotten:
            return 0
        return self._table.shared.hashes.get(node_id, 0)

    def touch(self, node_id: bytes) -> None:
        """Fold ``node_id``'s entry into the digest again after any change of it."""
        current = self.current_hash(node_id)
        base = self._table.shared.hashes.get(node_id, 0)
        old = self._folded.get(node_id, base)
        if current == old:
            return
        bucket = node_id[0]
        delta = self._delta.get(bucket, 0) ^ old ^ current
        if delta:
            self._delta[bucket] = delta
        else:
            self._delta.pop(bucket, None)
        if current == base:
            self._folded.pop(node_id, None)
        else:
            self._folded[node_id] = current

    def digest(self, bits: int) -> list[int]:
        """The view's bucket hashes at ``bits`` bits (0 to 8)."""
        base = self._table.shared.base
        delta = self._delta
        shift = MAX_DIGEST_BITS - bits
        out = [0] * (1 << bits)
        for fine in range(FINE_BUCKETS):
            value = base[fine] ^ delta.get(fine, 0)
            if value:
                out[fine >> shift] ^= value
        return out

    def bits(self) -> int:
        """Rule 6: the digest level for this view's size (~32 members a bucket)."""
        n = self._table.member_count()
        wanted = math.ceil(math.log2(max(1.0, n / _DIGEST_MEMBERS_PER_BUCKET)))
        return max(0, min(MAX_DIGEST_BITS, wanted))

    def entries(self, bits: int, buckets: Iterable[int]) -> dict[int, bytes]:
        """entry hash -> node id, for every member of the view in ``buckets``."""
        shift = MAX_DIGEST_BITS - bits
        fine: set[int] = set()
        for bucket in buckets:
            fine.update(range(bucket << shift, (bucket + 1) << shift))
        found: dict[int, bytes] = {}
        by_bucket = self._table.shared.by_bucket
        candidates: list[Iterable[bytes]] = [by_bucket[b] for b in sorted(fine)]
        candidates.append([nid for nid in self._table.extra_ids if nid[0] in fine])
        if self._ctx.node_id[0] in fine and self._ctx.node_id not in self._table.shared:
            candidates.append([self._ctx.node_id])
        for node_id in itertools.chain.from_iterable(candidates):
            value = self.current_hash(node_id)
            if value:
                found[value] = node_id
        return found
