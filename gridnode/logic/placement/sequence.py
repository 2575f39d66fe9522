"""The non-transparent sequence: the owner-keyed order of candidate targets (Rule 1).

Candidates are ranked by weighted rendezvous hashing under the node's secret
sequence key: member i gets ``t_i = -ln(u_i) / w_i`` with ``u_i`` in (0, 1) from a
keyed hash of (chunk id, node id) and ``w_i`` its free bytes; smallest ``t`` first.
That is an exponential race, so member i comes first with probability
``w_i / sum(w)`` and the whole order is sampling without replacement proportional to
free space.  Without the key nobody can compute it.

This module holds only the ordering, so the property the design rests on (who can
compute the sequence, and what it samples) is read in one place; which members may
be ranked at all, and which sets of them satisfy the pairwise rules, is decided by
the view and the selection around it.

Speed: member hashes are computed once per view (one keyed BLAKE3 per member); per
chunk there is one BLAKE3 of the chunk id and a handful of vectorised 64-bit
operations (a splitmix64 finaliser over ``h_member XOR h_chunk``).  Only the members
that a per-view integer threshold lets through get a logarithm and a sort, so the
cost per chunk barely grows with the view.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import blake3
import numpy as np

from .arrays import BOOL, F64, I64, U64

__all__ = ["RendezvousSequence"]

# Separate subkeys for the two hash inputs: a chunk id that happened to equal
# a node id must not yield the same 64-bit value and cancel out in the XOR.
_MEMBER_CONTEXT = "gridnode placement 2025-01 member rank hash"
_CHUNK_CONTEXT = "gridnode placement 2025-01 chunk rank hash"

_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_SHIFT_30 = np.uint64(30)
_SHIFT_27 = np.uint64(27)
_SHIFT_31 = np.uint64(31)
_SHIFT_11 = np.uint64(11)
_TWO_POW_53 = 2.0**53
_LN_TWO_POW_53 = 53.0 * math.log(2.0)


class RendezvousSequence:
    """The keyed rendezvous order of one view's candidates (positions ``0..len(ids)``).

    Built once per view: it hashes every candidate under the member subkey and keeps
    the weights; per chunk, ``draws`` then ``order`` (or ``head``) rank them.

    Args:
        key: the node's secret sequence key (non-empty).
        ids: the candidates' node ids; positions in every array follow this order.
        free: each candidate's free bytes, its weight.
    """

    def __init__(self, key: bytes, ids: Sequence[bytes], free: I64) -> None:
        member_key = blake3.blake3(key, derive_key_context=_MEMBER_CONTEXT).digest()
        self._chunk_key = blake3.blake3(key, derive_key_context=_CHUNK_CONTEXT).digest()
        # Weight 0 (a full member) gets an infinite t and can never be ranked;
        # place() requires packet_bytes >= 1, so such members are filtered anyway.
        with np.errstate(divide="ignore"):
            self._inverse_weight: F64 = 1.0 / free.astype(np.float64)
        self._inverse_weight.setflags(write=False)
        self._weight_53: F64 = free.astype(np.float64) * _TWO_POW_53
        self.total_weight = float(free.astype(np.float64).sum())
        self._threshold_cache: dict[int, I64] = {}
        self._hash: U64 = np.fromiter(
            (
                int.from_bytes(blake3.blake3(node_id, key=member_key).digest(length=8), "little")
                for node_id in ids
            ),
            dtype=np.uint64,
            count=len(ids),
        )

    def draws(self, chunk_id: bytes) -> I64:
        """Each pool member's 53-bit uniform draw for this chunk."""
        chunk_hash = np.uint64(
            int.from_bytes(blake3.blake3(chunk_id, key=self._chunk_key).digest(length=8), "little")
        )
        # splitmix64 finaliser on h_member XOR h_chunk, in place to spare allocations.
        z = self._hash ^ chunk_hash
        tmp = z >> _SHIFT_30
        z ^= tmp
        z *= _MIX_1
        np.right_shift(z, _SHIFT_27, out=tmp)
        z ^= tmp
        z *= _MIX_2
        np.right_shift(z, _SHIFT_31, out=tmp)
        z ^= tmp
        z >>= _SHIFT_11
        # 53 bits fit int64, whose conversion to float is much faster than uint64's.
        draws: I64 = z.view(np.int64)
        return draws

    def scores(self, draws: I64, positions: I64 | None = None) -> F64:
        """Exact rendezvous scores t = -ln(u) / w, for all members or some positions."""
        # u = (x + 0.5) / 2**53 is never 0 or 1, so -ln(u) = 53 ln 2 - ln(x + 0.5)
        # is finite and positive.
        picked = draws
        weights = self._inverse_weight
        if positions is not None:
            picked, weights = draws[positions], weights[positions]
        scores: F64 = picked.astype(np.float64)
        scores += 0.5
        np.log(scores, out=scores)
        np.subtract(_LN_TWO_POW_53, scores, out=scores)
        scores *= weights
        return scores

    def thresholds(self, level: int) -> I64:
        """Draws below which a member cannot score under tau = 2**level / sum(w).

        Since -ln(u) >= 1 - u, a score t = -ln(u)/w < tau needs 1 - u < tau*w,
        that is x >= 2**53 - 0.5 - tau*w*2**53. Cached per level: the few
        levels a view uses are reused by every chunk.
        """
        cached = self._threshold_cache.get(level)
        if cached is None:
            tau = 2.0**level / self.total_weight
            # Two units of slack (and a relative 1e-9) keep float rounding from
            # ever dropping a member that belongs in the head of the order.
            bound = _TWO_POW_53 - 2.0 - tau * (1.0 + 1e-9) * self._weight_53
            cached = np.clip(np.floor(bound), 0.0, _TWO_POW_53).astype(np.int64)
            self._threshold_cache[level] = cached
        return cached

    def head(self, draws: I64, available: BOOL | None, limit: int) -> I64 | None:
        """The first ``limit`` positions of the order without scoring every member.

        Only members that pass a cheap integer test get a logarithm; the
        answer is exact (every member with t < tau is scored, and they are
        exactly the head of the order). None when tau was too small.
        """
        first_level = max(0, math.ceil(math.log2(2 * limit)))
        for level in range(first_level, first_level + 6, 2):
            candidates = np.flatnonzero(draws >= self.thresholds(level))
            if available is not None:
                candidates = candidates[available[candidates]]
            if candidates.size < limit:
                continue
            scores = self.scores(draws, candidates)
            below = scores < 2.0**level / self.total_weight
            if np.count_nonzero(below) < limit:
                continue
            candidates, scores = candidates[below], scores[below]
            ordered: I64 = candidates[np.lexsort((candidates, scores))[:limit]]
            return ordered
        return None

    def order(self, draws: I64, available: BOOL | None, count: int, limit: int) -> I64:
        """The first ``min(limit, count)`` available positions in rendezvous order."""
        # Below a few hundred members scoring everyone is as cheap as the shortcut.
        if 8 * limit < count and count > 256 and self.total_weight > 0.0:
            head = self.head(draws, available, limit)
            if head is not None:
                return head
        scores = self.scores(draws)
        if available is not None:
            scores[~available] = math.inf
        return self.ranked(scores, min(limit, count))

    @staticmethod
    def ranked(scores: F64, limit: int) -> I64:
        """Positions of the ``limit`` smallest scores, ordered by (score, position)."""
        if limit >= scores.size:
            full: I64 = np.argsort(scores, kind="stable")
            return full
        part = np.argpartition(scores, limit - 1)[:limit]
        # lexsort ties by position, so a prefix ranks exactly as the full stable sort would.
        ordered: I64 = part[np.lexsort((part, scores[part]))]
        return ordered
