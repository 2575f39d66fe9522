"""How placement explains a failure (Rule 4): the first rule that cannot be met, with numbers.

Rule 4. Failure says which rule and which numbers: the first of members, capacity,
backup proximity, distinct labels, packet proximity that cannot be met.  A search
that runs out of budget says so (``search_bound``), and does not claim that no set
exists.  These walks run only on the failure path, so they favour clear messages
over speed.
"""

from __future__ import annotations

import numpy as np

from .arrays import BOOL
from .index import MemberIndex
from .rules import PlacementError, PlacementRules

__all__ = [
    "check_distinct_values",
    "holders",
    "plural",
    "rule_words",
    "shortage",
    "some_holders",
]


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def holders(count: int) -> str:
    """How messages name the targets that already hold packets of the chunk."""
    if count == 1:
        return "the target that already holds packets"
    return f"the {count} targets that already hold packets"


def some_holders(some: int, count: int) -> str:
    """``some`` of the ``count`` holders, as the subject of a sentence."""
    return holders(count) if count == 1 else f"{some} of {holders(count)}"


def rule_words(rules: PlacementRules, use_packet: bool, use_distinct: bool) -> str:
    """The pairwise rules in play, as a message names them."""
    words = []
    if use_packet:
        words.append(f"packet proximity {rules.packet_proximity.describe()}")
    if use_distinct:
        words.append(f"distinct {', '.join(rules.distinct)}")
    return " with ".join(words)


def check_distinct_values(
    index: MemberIndex, rules: PlacementRules, n: int, count: int, available: BOOL | None
) -> None:
    """Fail early when some distinct label has fewer than n values among the candidates.

    Raises:
        PlacementError: naming the label and how many values it has.
    """
    codes = index.pool_codes if available is None else index.pool_codes[available]
    for column, name in enumerate(rules.distinct):
        different = int(np.unique(codes[:, column]).size)
        if different < n:
            raise PlacementError(
                f"distinct {name}: the {count} candidate members have only "
                f"{different} different {name!r} values, {n} needed",
                rule="distinct",
                needed=n,
                available=different,
            )


def shortage(
    index: MemberIndex,
    rules: PlacementRules,
    n: int,
    packet_bytes: int,
    excluded: frozenset[bytes],
    held: tuple[bytes, ...] = (),
) -> PlacementError:
    """Walk the filters in order and report the first one that leaves fewer than n.

    Held targets (``fixed``) are not candidates, so they are not counted;
    the messages say n more are needed besides them.
    """
    not_excluded = np.ones(len(index.others), dtype=np.bool_)
    excluded_rows = [index.all_index[i] for i in excluded if i in index.all_index]
    not_excluded[excluded_rows] = False
    not_held = np.ones(len(index.others), dtype=np.bool_)
    not_held[[index.all_index[i] for i in held]] = False
    besides = f" besides {holders(len(held))}" if held else ""
    needed = f"{n} needed{besides}"

    alive = index.alive & not_excluded & not_held
    have = int(np.count_nonzero(alive))
    if have < n:
        dropped = int(np.count_nonzero(index.alive & ~not_excluded))
        note = f" (not counting {dropped} excluded)" if dropped else ""
        return PlacementError(
            f"members: only {plural(have, 'alive member')} besides this node{note}, {needed}",
            rule="members",
            needed=n,
            available=have,
        )

    roomy = alive & (index.free >= packet_bytes)
    have = int(np.count_nonzero(roomy))
    if have < n:
        return PlacementError(
            f"capacity: only {plural(have, 'alive member')} "
            f"{'has' if have == 1 else 'have'} {packet_bytes} bytes free, {needed}",
            rule="capacity",
            needed=n,
            available=have,
        )

    current = roomy
    if rules.uses_distance:
        located = roomy & index.located
        unlocated = have - int(np.count_nonzero(located))
        backup = rules.backup_proximity
        if not backup.is_unbounded:
            band = backup.describe()
            if not index.source_located:
                return PlacementError(
                    f"backup proximity {band}: this node's own location is unknown, so "
                    f"no member can be shown to lie in that band; set this node's "
                    f"location ({plural(n, 'target')} needed{besides})",
                    rule="backup_proximity",
                    needed=n,
                    available=0,
                )
            current = located & index.in_backup
            have = int(np.count_nonzero(current))
            if have < n:
                note = (
                    f" ({unlocated} more with room were not considered because their "
                    "location is unknown or untrusted)"
                    if unlocated
                    else ""
                )
                return PlacementError(
                    f"backup proximity {band}: only {plural(have, 'alive member')} "
                    f"with room lie in that band, {needed}{note}",
                    rule="backup_proximity",
                    needed=n,
                    available=have,
                )
        else:
            current = located
            have = int(np.count_nonzero(current))
            if have < n:
                band = rules.packet_proximity.describe()
                return PlacementError(
                    f"packet proximity {band}: only {plural(have, 'alive member')} "
                    f"with room {'has' if have == 1 else 'have'} a known, trusted "
                    f"location, {needed} ({unlocated} others have an unknown or "
                    "untrusted location)",
                    rule="packet_proximity",
                    needed=n,
                    available=have,
                )

    if rules.distinct:
        before = int(np.count_nonzero(current))
        labelled = current & index.labelled
        have = int(np.count_nonzero(labelled))
        if have < n:
            names = ", ".join(rules.distinct)
            return PlacementError(
                f"distinct {names}: only {have} of the {before} candidate members carry "
                f"every label it names ({names}), {needed}",
                rule="distinct",
                needed=n,
                available=have,
            )
        current = labelled
    # Unreachable while the pool and the walk above apply the same filters;
    # still an honest message if they ever drift apart.
    have = int(np.count_nonzero(current))
    return PlacementError(
        f"members: only {have} members pass every placement rule, {needed}",
        rule="members",
        needed=n,
        available=have,
    )
