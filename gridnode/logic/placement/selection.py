"""Choosing the set: the first valid n-set in the sequence's order (Rule 3).

Rule 3. Pairwise rules (packet proximity, distinct labels) make it a search for an
n-clique in a compatibility graph.  The answer is the first valid set in rendezvous
order (lexicographically smallest by rank): a greedy pass finds it when the first
choices do not conflict, which is the common case, and a depth-first search with a
step budget finds it otherwise.  If the budget runs out, greedy restarts from the
next few candidates may still find a valid (if not the first) set.

The greedy pass works on a small compatibility matrix of the head of the order.  The
failure path (depth-first search, diagnostics) is slower by design: up to
``search_budget`` steps of one vectorised comparison each.
"""

from __future__ import annotations

import attrs
import numpy as np

from .arrays import BOOL, I64
from .diagnostics import rule_words
from .index import MemberIndex
from .proximity import PairwiseRules
from .rules import PlacementError, PlacementRules, RuleName
from .sequence import RendezvousSequence

__all__ = ["Selector"]

# The greedy pass builds a head-by-head compatibility matrix; past this many
# candidates (n above ~250) the depth-first search's vector steps are cheaper.
_GREEDY_HEAD_LIMIT = 1024


@attrs.frozen
class _SearchResult:
    chosen: list[int] | None
    exhausted: bool
    best: int
    steps: int


class Selector:
    """Searches one view's candidate pool for sets that meet the pairwise rules.

    Positions are pool positions (``index.pool_ids``), ranked by ``sequence``.
    """

    def __init__(
        self,
        index: MemberIndex,
        sequence: RendezvousSequence,
        pairwise: PairwiseRules,
        rules: PlacementRules,
        budget: int,
    ) -> None:
        self._index = index
        self._sequence = sequence
        self._pairwise = pairwise
        self._rules = rules
        self._budget = budget

    def compatible(self, rows: I64, columns: I64, *, use_packet: bool, use_distinct: bool) -> BOOL:
        """Pairwise-rule compatibility of every (row, column) pair of pool positions."""
        pool = self._index.pool_points
        return self._pairwise.pairs(
            pool, rows, pool, columns, use_packet=use_packet, use_distinct=use_distinct
        )

    def greedy(self, order: I64, n: int) -> list[int] | None:
        """Take each candidate in rank order that fits with those taken so far."""
        ok = self.compatible(
            order,
            order,
            use_packet=not self._rules.packet_proximity.is_unbounded,
            use_distinct=bool(self._rules.distinct),
        )
        open_: BOOL = np.ones(order.size, dtype=np.bool_)
        chosen: list[int] = []
        # Each pass closes at least the picked candidate, so at most n passes.
        while len(chosen) < n:
            first = int(open_.argmax())
            if not open_[first]:
                return None
            chosen.append(int(order[first]))
            open_ &= ok[first]
            open_[: first + 1] = False
        return chosen

    def _depth_first(
        self, order: I64, n: int, *, use_packet: bool, use_distinct: bool
    ) -> _SearchResult:
        """First valid n-set in rank order, or proof (within the budget) that none exists.

        Each frame holds the candidates compatible with everything chosen so
        far, so a branch is cut as soon as too few (or, for distinct labels,
        too few different values) remain to complete it.
        """
        codes = self._index.pool_codes
        chosen: list[int] = []
        frames: list[I64] = [order]
        cursors: list[int] = [0]
        steps = 0
        best = 0
        # Every iteration either takes a step (at most budget of them) or pops
        # a frame (at most one per step), so the loop is bounded.
        while frames:
            candidates = frames[-1]
            cursor = cursors[-1]
            need = n - len(chosen)
            if candidates.size - cursor < need:
                frames.pop()
                cursors.pop()
                if chosen:
                    chosen.pop()
                continue
            cursors[-1] = cursor + 1
            steps += 1
            if steps > self._budget:
                return _SearchResult(None, exhausted=False, best=best, steps=steps - 1)
            pick = candidates[cursor : cursor + 1]
            if need == 1:
                chosen.append(int(pick[0]))
                return _SearchResult(chosen, exhausted=False, best=n, steps=steps)
            rest = candidates[cursor + 1 :]
            rest = rest[
                self.compatible(pick, rest, use_packet=use_packet, use_distinct=use_distinct)[0]
            ]
            best = max(best, len(chosen) + 1 + min(1, rest.size))
            if rest.size < need - 1:
                continue
            if use_distinct and any(
                np.unique(codes[rest, column]).size < need - 1 for column in range(codes.shape[1])
            ):
                continue
            chosen.append(int(pick[0]))
            frames.append(rest)
            cursors.append(0)
        return _SearchResult(None, exhausted=True, best=best, steps=steps)

    def search(
        self, draws: I64, available: BOOL | None, count: int, n: int, *, among: str = ""
    ) -> list[int]:
        # Greedy over the head of the order (a small compatibility matrix):
        # when it succeeds its answer is the depth-first search's first leaf,
        # so taking it changes nothing but the cost.
        head_size = 4 * n + 28
        if head_size <= _GREEDY_HEAD_LIMIT:
            greedy = self.greedy(self._sequence.order(draws, available, count, head_size), n)
            if greedy is not None:
                return greedy
        order = self._sequence.order(draws, available, count, count)
        use_packet = not self._rules.packet_proximity.is_unbounded
        use_distinct = bool(self._rules.distinct)
        result = self._depth_first(order, n, use_packet=use_packet, use_distinct=use_distinct)
        if result.chosen is not None:
            return result.chosen
        if not result.exhausted:
            # Out of budget: greedy restarts from other early candidates may
            # still find a valid set (not the first in rank order, but valid).
            grown = self._grow_from_starts(
                order, n, use_packet=use_packet, use_distinct=use_distinct
            )
            if len(grown) == n:
                rank = {position: i for i, position in enumerate(order.tolist())}
                return sorted(grown, key=rank.__getitem__)
            raise self._search_bound_error(n, count, result, len(grown), among)
        raise self._infeasible_error(order, n, count, result, use_packet, use_distinct, among)

    # -- error reporting ----------------------------------------------------

    def _grow_from_starts(
        self, order: I64, n: int, *, use_packet: bool, use_distinct: bool
    ) -> list[int]:
        """Largest compatible set (up to n) that greedy growth from the first few starts reaches.

        Used after the depth-first search fails: when the search ran out of
        budget a restart may still find a valid set, and when it proved none
        exists the size reached tells the user how close the rules came (the
        search's own depth understates it, because it cuts branches that
        cannot reach n).
        """
        best: list[int] = []
        # At most 64 starts of at most n - 1 picks each: cheap, and only on the failure path.
        for start in order[:64].tolist():
            grown = [start]
            rest = order[order != start]
            while rest.size and len(grown) < n:
                rest = rest[
                    self.compatible(
                        np.array(grown[-1:]), rest, use_packet=use_packet, use_distinct=use_distinct
                    )[0]
                ]
                if rest.size:
                    grown.append(int(rest[0]))
                    rest = rest[1:]
            if len(grown) > len(best):
                best = grown
            if len(best) >= n:
                break
        return best

    def _search_bound_error(
        self, n: int, count: int, result: _SearchResult, grown: int, among: str
    ) -> PlacementError:
        use_packet = not self._rules.packet_proximity.is_unbounded
        use_distinct = bool(self._rules.distinct)
        what = rule_words(self._rules, use_packet, use_distinct)
        best = max(result.best, grown)
        return PlacementError(
            f"search bound: gave up after {result.steps} search steps without finding {n} of "
            f"the {count} candidate members{among} that meet {what}; the largest set found has "
            f"{best}. The search is bounded, so a valid set may still exist",
            rule="search_bound",
            needed=n,
            available=best,
        )

    def _infeasible_error(
        self,
        order: I64,
        n: int,
        count: int,
        result: _SearchResult,
        use_packet: bool,
        use_distinct: bool,
        among: str,
    ) -> PlacementError:
        rule: RuleName = "packet_proximity" if use_packet else "distinct"
        best = result.best
        together = False
        if use_packet and use_distinct:
            # Blame one rule only when it alone already rules every set out.
            alone = self._depth_first(order, n, use_packet=True, use_distinct=False)
            if alone.exhausted and alone.chosen is None:
                use_distinct, best = False, alone.best
            else:
                alone = self._depth_first(order, n, use_packet=False, use_distinct=True)
                if alone.exhausted and alone.chosen is None:
                    rule, use_packet, best = "distinct", False, alone.best
                else:
                    together = True
        grown = self._grow_from_starts(order, n, use_packet=use_packet, use_distinct=use_distinct)
        best = max(best, len(grown))
        what = rule_words(self._rules, use_packet, use_distinct)
        if together:
            detail = (
                f"no {n} of the {count} candidate members{among} meet both rules together "
                f"(each alone can be met); the largest such set found has {best}"
            )
        elif use_packet:
            detail = (
                f"no {n} of the {count} candidate members{among} lie pairwise within that band; "
                f"the largest such set found has {best}"
            )
        else:
            detail = (
                f"no {n} of the {count} candidate members{among} have pairwise different "
                "values; "
                f"the largest such set found has {best}"
            )
        return PlacementError(f"{what}: {detail}", rule=rule, needed=n, available=best)
