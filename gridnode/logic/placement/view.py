"""The member view placement works on: build once per gossip view version, place per chunk.

Rule 2. Hard filters, never relaxed: not the source; alive; at least
``packet_bytes`` free; not in ``exclude``; and, when any distance bound is set, a
known location that the speed-of-light check still trusts, within the
backup-proximity band of the source; and, when ``distinct`` names labels, a value
for each of them (a member that does not say which site it is in cannot be shown to
be in a different one).

The view composes the pieces: ``MemberIndex`` (the per-member arrays and the pool),
``RendezvousSequence`` (the keyed order), ``PairwiseRules`` (distance and labels),
``Selector`` (the first valid set) and ``Completion`` (around held targets).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from .arrays import BOOL
from .completion import Completion
from .diagnostics import check_distinct_values, shortage
from .index import MemberIndex
from .members import Member, Source
from .proximity import PairwiseRules
from .rules import DEFAULT_SEARCH_BUDGET, PlacementRules
from .selection import Selector
from .sequence import RendezvousSequence

__all__ = ["PlacementView", "place_chunk"]


class PlacementView:
    """Placement over one member view; build once per gossip view version and reuse per chunk.

    Building hashes every eligible member once under the key (about 1 µs
    each) and computes its distance from the source, so that ``place`` is a
    few vectorised passes.
    """

    def __init__(
        self,
        *,
        key: bytes,
        source: Source,
        members: Sequence[Member],
        rules: PlacementRules,
        search_budget: int = DEFAULT_SEARCH_BUDGET,
    ) -> None:
        if not isinstance(key, bytes) or not key:
            raise ValueError("placement key must be non-empty bytes")
        if search_budget < 1:
            raise ValueError(f"search budget must be positive, not {search_budget}")
        self._source = source
        self._rules = rules
        self._index = MemberIndex(source, members, rules)
        self._sequence = RendezvousSequence(key, self._index.pool_ids, self._index.pool_free)
        pairwise = PairwiseRules(rules.packet_proximity)
        self._selector = Selector(self._index, self._sequence, pairwise, rules, search_budget)
        self._completion = Completion(self._index, self._sequence, pairwise, self._selector, rules)

    @property
    def rules(self) -> PlacementRules:
        return self._rules

    @property
    def candidate_count(self) -> int:
        """Members that pass every rule that does not depend on the chunk or packet size."""
        return len(self._index.pool_ids)

    def place(
        self,
        chunk_id: bytes,
        n: int,
        packet_bytes: int,
        exclude: Collection[bytes] = (),
        *,
        fixed: Sequence[bytes] = (),
    ) -> list[bytes]:
        """Pick n distinct targets for one chunk, in sequence order.

        Args:
            chunk_id: the chunk's identifier; different chunks get unrelated orders.
            n: targets needed (one per packet), counting those in ``fixed``.
            packet_bytes: size of one packet; a target needs this much free.
            exclude: node ids not to use, e.g. a target that failed and is
                being replaced.
            fixed: targets that already hold packets of this chunk and stay
                in the answer (Rule 6). They are not checked again for room
                or liveness, since their packets are already stored; every
                newly chosen target must meet the pairwise rules with them.

        Returns:
            The ``fixed`` ids in the order given, then the new ones in
            rendezvous order; n distinct ids in all.

        Raises:
            PlacementError: when no valid set exists or the search gave up;
                the message names the rule and the numbers. With ``fixed``,
                ``needed`` counts the new targets only.
            ValueError: for n < 1 or packet_bytes < 1; and for a ``fixed``
                that names an unknown member, this node, an excluded member
                or one member twice, or holds more than n ids.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, not {n!r}")
        if isinstance(packet_bytes, bool) or not isinstance(packet_bytes, int) or packet_bytes < 1:
            raise ValueError(f"packet_bytes must be a positive int, not {packet_bytes!r}")
        index = self._index
        excluded = frozenset(exclude)
        if fixed:
            held = self._check_fixed(fixed, n, excluded)
            chosen = self._completion.complete(
                chunk_id, n - len(held), packet_bytes, excluded, held
            )
            return list(held) + [index.pool_ids[i] for i in chosen]
        available: BOOL | None = None
        if packet_bytes > index.pool_min_free:
            available = index.pool_free >= packet_bytes
        excluded_positions = [index.pool_index[i] for i in excluded if i in index.pool_index]
        if excluded_positions:
            if available is None:
                available = np.ones(len(index.pool_ids), dtype=np.bool_)
            available[excluded_positions] = False
        count = len(index.pool_ids) if available is None else int(np.count_nonzero(available))
        if count < n:
            raise shortage(index, self._rules, n, packet_bytes, excluded)
        if self._rules.distinct and n > 1:
            check_distinct_values(index, self._rules, n, count, available)

        draws = self._sequence.draws(chunk_id)
        pairwise = n > 1 and (
            bool(self._rules.distinct) or not self._rules.packet_proximity.is_unbounded
        )
        if not pairwise:
            return [index.pool_ids[i] for i in self._sequence.order(draws, available, count, n)]
        chosen = self._selector.search(draws, available, count, n)
        return [index.pool_ids[i] for i in chosen]

    # -- completing a chunk around targets that already hold packets --------

    def _check_fixed(
        self, fixed: Sequence[bytes], n: int, excluded: frozenset[bytes]
    ) -> tuple[bytes, ...]:
        held = tuple(fixed)
        if len(held) > n:
            raise ValueError(f"fixed holds {len(held)} targets, more than the {n} asked for")
        seen: set[bytes] = set()
        for node_id in held:
            problem = None
            if node_id == self._source.node_id:
                problem = "is this node, which is never a target"
            elif node_id not in self._index.all_index:
                problem = "is not a member of this view"
            elif node_id in seen:
                problem = "appears twice"
            elif node_id in excluded:
                problem = "is also excluded"
            if problem is not None:
                shown = node_id.hex() if isinstance(node_id, bytes) else repr(node_id)
                raise ValueError(f"fixed target {shown} {problem}")
            seen.add(node_id)
        return held


def place_chunk(
    *,
    key: bytes,
    chunk_id: bytes,
    source: Source,
    members: Sequence[Member],
    n: int,
    packet_bytes: int,
    rules: PlacementRules,
    exclude: Collection[bytes] = (),
    fixed: Sequence[bytes] = (),
) -> list[bytes]:
    """One-shot placement; for many chunks over one view, build a :class:`PlacementView` once."""
    view = PlacementView(key=key, source=source, members=members, rules=rules)
    return view.place(chunk_id, n, packet_bytes, exclude, fixed=fixed)
