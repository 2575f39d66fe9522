"""Choosing the target nodes of one chunk's packets (claims 1, 7, 14, 15, 43, 45).

Pure: no I/O, no clock, no randomness beyond the keyed hashes, so the same
member view, key and rules give the same targets on every run, and the
function can be property-tested against brute force.

Rule 1. The order is non-transparent. Candidates are ranked by weighted
rendezvous hashing under the node's secret sequence key: member i gets
``t_i = -ln(u_i) / w_i`` with ``u_i`` in (0, 1) from a keyed hash of
(chunk id, node id) and ``w_i`` its free bytes; smallest ``t`` first. That is an
exponential race, so member i comes first with probability ``w_i / sum(w)``
and the whole order is sampling without replacement proportional to free
space. Without the key nobody can compute it.

Rule 2. Hard filters, never relaxed: not the source; alive; at least
``packet_bytes`` free; not in ``exclude``; and, when any distance bound is
set, a known location that the speed-of-light check still trusts, within the
backup-proximity band of the source; and, when ``distinct`` names labels, a
value for each of them (a member that does not say which site it is in cannot
be shown to be in a different one).

Rule 3. Pairwise rules (packet proximity, distinct labels) make it a search
for an n-clique in a compatibility graph. The answer is the first valid set
in rendezvous order (lexicographically smallest by rank): a greedy pass finds
it when the first choices do not conflict, which is the common case, and a
depth-first search with a step budget finds it otherwise. If the budget runs
out, greedy restarts from the next few candidates may still find a valid
(if not the first) set.

Rule 4. Failure says which rule and which numbers: the first of members,
capacity, backup proximity, distinct labels, packet proximity that cannot be
met. A search that runs out of budget says so (``search_bound``), and does not
claim that no set exists.

Rule 5. Distance is ``haversine_km`` and nothing else. The fast paths (dot
products of unit vectors, vectorised haversine) decide only pairs that are
clearly inside or outside a band; pairs within a hair of an edge are decided
by the scalar function, so "within 500 km" means the same here as in the
audit output and the tests.

Rule 6. Completion (``fixed``): when one target of a chunk fails during
upload, its replacement is chosen together with the targets that already hold
packets. Those are part of the answer and are not checked again for room or
liveness (their packets are stored); every new target meets the member rules
of Rule 2 itself and the pairwise rules with each held target and with the
other new ones, and the new targets are the first valid set in rendezvous
order among the members that fit the held ones. A held target without a
known, trusted location (under packet proximity) or without a label that
``distinct`` names cannot be shown to fit any member, so completion fails
rather than guess. Pairs of held targets are not checked again: they were
valid when placed, and refusing the replacement would not move their packets.
Failures name the rule and count the new targets needed.

Modules: ``members`` (what placement is told), ``rules`` (``PlacementRules``,
``PlacementError``), ``sequence`` (Rule 1, the keyed order), ``proximity`` (Rule 5,
the distance tests), ``index`` (the view's per-member arrays), ``selection``
(Rule 3), ``completion`` (Rule 6), ``diagnostics`` (Rule 4) and ``view``
(``PlacementView``, Rule 2, which ties them together).  The names other code uses
are re-exported here.
"""

from __future__ import annotations

from .members import NODE_ID_BYTES, Member, Source
from .rules import DEFAULT_SEARCH_BUDGET, PlacementError, PlacementRules, RuleName
from .view import PlacementView, place_chunk

__all__ = [
    "DEFAULT_SEARCH_BUDGET",
    "NODE_ID_BYTES",
    "Member",
    "PlacementError",
    "PlacementRules",
    "PlacementView",
    "RuleName",
    "Source",
    "place_chunk",
]
