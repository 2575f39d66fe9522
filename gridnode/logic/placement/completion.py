"""Completing a chunk around targets that already hold packets (Rule 6, ``fixed``).

Rule 6. When one target of a chunk fails during upload, its replacement is chosen
together with the targets that already hold packets.  Those are part of the answer
and are not checked again for room or liveness (their packets are stored); every new
target meets the member rules of Rule 2 itself and the pairwise rules with each held
target and with the other new ones, and the new targets are the first valid set in
rendezvous order among the members that fit the held ones.  A held target without a
known, trusted location (under packet proximity) or without a label that
``distinct`` names cannot be shown to fit any member, so completion fails rather
than guess.  Pairs of held targets are not checked again: they were valid when
placed, and refusing the replacement would not move their packets.  Failures name
the rule and count the new targets needed.

Speed: completion filters a growing head of the order by the held targets (against
one of them first, the rest only for the survivors) and takes the full pass over
every candidate only when greedy dead-ends or no completion exists.
"""

from __future__ import annotations

import math

import numpy as np

from .arrays import BOOL, I64
from .diagnostics import holders as _holders
from .diagnostics import plural as _plural
from .diagnostics import rule_words, shortage
from .diagnostics import some_holders as _some_holders
from .index import MemberIndex
from .proximity import PairwiseRules
from .rules import PlacementError, PlacementRules
from .selection import Selector
from .sequence import RendezvousSequence

__all__ = ["Completion"]


class Completion:
    """Chooses the new targets of a chunk so that they fit the held ones."""

    def __init__(
        self,
        index: MemberIndex,
        sequence: RendezvousSequence,
        pairwise: PairwiseRules,
        selector: Selector,
        rules: PlacementRules,
    ) -> None:
        self._index = index
        self._sequence = sequence
        self._pairwise = pairwise
        self._selector = selector
        self._rules = rules

    def complete(
        self,
        chunk_id: bytes,
        k: int,
        packet_bytes: int,
        excluded: frozenset[bytes],
        held: tuple[bytes, ...],
    ) -> list[int]:
        """Pool positions of k new targets that fit the held ones, in rank order.

        The candidates are the pool members with room, not excluded and not
        held, that meet the pairwise rules with every held target; the answer
        is the first valid k-set among them in rank order, exactly as
        without ``fixed``. Fast path: that filter is applied to a growing
        head of the order only, so a single replacement among 10,000
        members costs a few small vector operations.
        """
        if k == 0:
            return []
        available: BOOL = self._index.pool_free >= packet_bytes
        blocked = [
            self._index.pool_index[i] for i in excluded | set(held) if i in self._index.pool_index
        ]
        available[blocked] = False
        count = int(np.count_nonzero(available))
        if count < k:
            raise shortage(self._index, self._rules, k, packet_bytes, excluded, held)
        draws = self._sequence.draws(chunk_id)
        use_packet = not self._rules.packet_proximity.is_unbounded
        use_distinct = bool(self._rules.distinct)
        if not (use_packet or use_distinct):
            return [int(i) for i in self._sequence.order(draws, available, count, k)]
        rows = np.array([self._index.all_index[i] for i in held], dtype=np.int64)
        measurable = (not use_distinct or bool(self._index.labelled[rows].all())) and (
            not use_packet or bool(self._index.located[rows].all())
        )
        if measurable and self._sequence.total_weight > 0.0:
            chosen = self._complete_from_head(draws, k, available, count, rows)
            if chosen is not None:
                return chosen
        return self._complete_fully(draws, k, available, rows, use_packet, use_distinct)

    def _complete_from_head(
        self, draws: I64, k: int, available: BOOL, count: int, rows: I64
    ) -> list[int] | None:
        """The first valid completion found in a head of the order, or None.

        Like ``RendezvousSequence.head``, but the held targets filter the candidates before
        they are scored: every available member with t < tau passes the
        integer test, so the fitting ones below tau are exactly the first
        fitting members in rank order, however few of the members fit. When
        greedy completes on that prefix, its answer is the first valid set
        in rank order. None when greedy dead-ends or the whole order has been
        seen; the full pass then decides (and explains).
        """
        use_packet = not self._rules.packet_proximity.is_unbounded
        use_distinct = bool(self._rules.distinct)
        greedy_limit = 4 * k + 28
        # About 2**level members score below tau = 2**level / sum(w). Each
        # level costs a dozen numpy calls whatever its size, so the first one
        # aims at greedy_limit members and the next ones at a few more than
        # k fitting members, judging by the share that fit so far.
        level = math.ceil(math.log2(greedy_limit))
        # The level rises by 1 to 8 each pass; by level 128 every threshold is 0.
        while level < 130:
            candidates = np.flatnonzero(draws >= self._sequence.thresholds(level))
            candidates = candidates[available[candidates]]
            scanned = candidates.size
            candidates = self._fit_held(
                rows, candidates, use_packet=use_packet, use_distinct=use_distinct
            )
            scores = self._sequence.scores(draws, candidates)
            below = scores < 2.0**level / self._sequence.total_weight
            if np.count_nonzero(below) >= k:
                prefix: I64 = candidates[below][np.lexsort((candidates[below], scores[below]))]
                if k == 1:
                    return [int(prefix[0])]
                chosen = self._selector.greedy(prefix[:greedy_limit], k)
                if chosen is not None:
                    return chosen
                if prefix.size >= greedy_limit:
                    return None
            if scanned == count and bool(below.all()):
                return None  # the whole order was seen
            # None fitting among `scanned` suggests a share well below 1/scanned.
            share = candidates.size / scanned if candidates.size else 0.25 / max(scanned, 1)
            aim = math.ceil(math.log2((2 * k + 2) / share))
            level = min(max(aim, level + 1), level + 8)
        return None

    def _complete_fully(
        self,
        draws: I64,
        k: int,
        available: BOOL,
        rows: I64,
        use_packet: bool,
        use_distinct: bool,
    ) -> list[int]:
        """Filter every candidate against the held targets, rule by rule, then search.

        Each rule is applied on its own first so that a failure names the
        first rule (in Rule 4's order) that leaves too few candidates.
        """
        positions = np.flatnonzero(available)
        count = int(positions.size)
        holders = _holders(int(rows.size))
        fitting = positions
        if use_distinct:
            fitting = self._fit_held_labels(rows, positions, k, holders)
        if use_packet:
            by_band = self._fit_held_band(rows, positions, k, holders)
            if use_distinct:
                fitting = np.intersect1d(fitting, by_band, assume_unique=True)
                together = int(fitting.size)
                if together < k:
                    what = rule_words(self._rules, use_packet=True, use_distinct=True)
                    raise PlacementError(
                        f"{what}: only {together} of the {count} candidate members meet both "
                        f"rules together with {holders} (each rule alone leaves enough), "
                        f"{k} needed",
                        rule="packet_proximity",
                        needed=k,
                        available=together,
                    )
            else:
                fitting = by_band
        narrowed: BOOL = np.zeros(available.size, dtype=np.bool_)
        narrowed[fitting] = True
        if k == 1:
            return [int(i) for i in self._sequence.order(draws, narrowed, int(fitting.size), 1)]
        return self._selector.search(
            draws, narrowed, int(fitting.size), k, among=f" that fit {holders}"
        )

    def _fit_held(self, rows: I64, positions: I64, *, use_packet: bool, use_distinct: bool) -> I64:
        """The pool positions (a subsequence) that meet the pairwise rules with every held target.

        Labels take one set lookup per label. Distances are tested against
        the first held target, then against the others only for the
        candidates left, which under an upper bound are few: checking a
        replacement then costs about one dot product per candidate, not one
        per candidate and held target.
        """
        keep = positions
        if use_distinct:
            held_codes = self._index.all_points.codes[rows]
            for column in range(held_codes.shape[1]):
                keep = keep[~np.isin(self._index.pool_codes[keep, column], held_codes[:, column])]
        if use_packet:
            for part in (rows[:1], rows[1:]):
                if keep.size and part.size:
                    ok = self._pairwise.pairs(
                        self._index.pool_points,
                        keep,
                        self._index.all_points,
                        part,
                        use_packet=True,
                        use_distinct=False,
                    )
                    keep = keep[np.logical_and.reduce(ok, axis=1)]
        return keep

    def _fit_held_labels(self, rows: I64, positions: I64, k: int, holders: str) -> I64:
        """Candidates whose every distinct label differs from every held target's."""
        names = ", ".join(self._rules.distinct)
        count = int(positions.size)
        unlabelled = int(np.count_nonzero(~self._index.labelled[rows]))
        if unlabelled:
            raise PlacementError(
                f"distinct {names}: {_some_holders(unlabelled, int(rows.size))} "
                f"{'does' if unlabelled == 1 else 'do'} not carry every label it names, so no "
                f"member can be shown to differ from {'it' if unlabelled == 1 else 'them'}, "
                f"{k} needed",
                rule="distinct",
                needed=k,
                available=0,
            )
        held_codes = self._index.all_points.codes[rows]
        for column, name in enumerate(self._rules.distinct):
            used = np.unique(held_codes[:, column])
            values = np.unique(self._index.pool_codes[positions, column])
            other = int(np.count_nonzero(~np.isin(values, used)))
            if other < k:
                raise PlacementError(
                    f"distinct {name}: {holders} {'uses' if rows.size == 1 else 'use'} "
                    f"{_plural(int(used.size), repr(name) + ' value')} and the {count} "
                    f"candidate members have only {_plural(other, 'other value')}, {k} needed",
                    rule="distinct",
                    needed=k,
                    available=other,
                )
        fits = self._fit_held(rows, positions, use_packet=False, use_distinct=True)
        have = int(fits.size)
        if have < k:
            raise PlacementError(
                f"distinct {names}: only {have} of the {count} candidate members differ from "
                f"{holders} in every label, {k} needed",
                rule="distinct",
                needed=k,
                available=have,
            )
        return fits

    def _fit_held_band(self, rows: I64, positions: I64, k: int, holders: str) -> I64:
        """Candidates within the packet-proximity band of every held target."""
        band = self._rules.packet_proximity.describe()
        unlocated = int(np.count_nonzero(~self._index.located[rows]))
        if unlocated:
            raise PlacementError(
                f"packet proximity {band}: {_some_holders(unlocated, int(rows.size))} "
                f"{'has' if unlocated == 1 else 'have'} an unknown or untrusted location, so "
                f"no member can be shown to lie within the band of "
                f"{'it' if unlocated == 1 else 'them'}, {k} needed",
                rule="packet_proximity",
                needed=k,
                available=0,
            )
        fits = self._fit_held(rows, positions, use_packet=True, use_distinct=False)
        have = int(fits.size)
        if have < k:
            who = (
                "no member with room lies"
                if have == 0
                else f"only {have} of the {int(positions.size)} candidate members lie"
            )
            raise PlacementError(
                f"packet proximity {band}: {who} within the band of {holders}, {k} needed",
                rule="packet_proximity",
                needed=k,
                available=have,
            )
        return fits

    # -- the pairwise search ------------------------------------------------
