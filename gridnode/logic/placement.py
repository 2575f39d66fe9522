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

Speed: member hashes are computed once per view (one keyed BLAKE3 per member);
per chunk there is one BLAKE3 of the chunk id and a handful of vectorised
64-bit operations (a splitmix64 finaliser over ``h_member XOR h_chunk``).
Only the members that a per-view integer threshold lets through get a
logarithm and a sort, so the cost per chunk barely grows with the view. The
greedy pass works on a small compatibility matrix of the head of the order.
The failure path (depth-first search, diagnostics) is slower by design: up to
``search_budget`` steps of one vectorised comparison each. Completion filters
a growing head of the order by the held targets (against one of them first,
the rest only for the survivors) and takes the full pass over every candidate
only when greedy dead-ends or no completion exists.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any, Literal

import attrs
import blake3
import numpy as np
import numpy.typing as npt

from gridnode.logic.distance import EARTH_RADIUS_KM, Band, haversine_km, haversine_km_array

__all__ = [
    "DEFAULT_SEARCH_BUDGET",
    "Member",
    "PlacementError",
    "PlacementRules",
    "PlacementView",
    "RuleName",
    "Source",
    "place_chunk",
]

RuleName = Literal[
    "backup_proximity", "packet_proximity", "capacity", "members", "distinct", "search_bound"
]

DEFAULT_SEARCH_BUDGET = 20_000
NODE_ID_BYTES = 32

# Separate subkeys for the two hash inputs: a chunk id that happened to equal
# a node id must not yield the same 64-bit value and cancel out in the XOR.
_MEMBER_CONTEXT = "gridnode placement 2025-01 member rank hash"
_CHUNK_CONTEXT = "gridnode placement 2025-01 chunk rank hash"

_U64 = npt.NDArray[np.uint64]
_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_BOOL = npt.NDArray[np.bool_]

_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_SHIFT_30 = np.uint64(30)
_SHIFT_27 = np.uint64(27)
_SHIFT_31 = np.uint64(31)
_SHIFT_11 = np.uint64(11)
_TWO_POW_53 = 2.0**53
_LN_TWO_POW_53 = 53.0 * math.log(2.0)
_INT64_MAX = 2**63 - 1
# Fast distance tests run on dot products of unit vectors (or vectorised
# haversine) and are only trusted outside these margins; anything closer to a
# band's edge is decided by the scalar haversine_km, so placement agrees with
# the one canonical definition of distance to the last bit. Both fast paths
# are accurate to about 1e-14 in their units, so the margins are generous.
_DOT_MARGIN = 1e-11
_KM_MARGIN = 1e-6
# The greedy pass builds a head-by-head compatibility matrix; past this many
# candidates (n above ~250) the depth-first search's vector steps are cheaper.
_GREEDY_HEAD_LIMIT = 1024


def _check_node_id(instance: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != NODE_ID_BYTES:
        raise ValueError(f"{attribute.name} must be {NODE_ID_BYTES} bytes, not {value!r}")


def _check_latitude(
    instance: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and not (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and -90.0 <= value <= 90.0
    ):
        raise ValueError(f"latitude must be in -90..90 or None, not {value!r}")


def _check_longitude(
    instance: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and not (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and -180.0 <= value <= 180.0
    ):
        raise ValueError(f"longitude must be in -180..180 or None, not {value!r}")


def _check_location_pair(lat: float | None, lon: float | None) -> None:
    if (lat is None) != (lon is None):
        raise ValueError("a location needs both latitude and longitude, or neither")


def _check_free_bytes(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"free_bytes must be a non-negative int, not {value!r}")


def _check_labels(
    instance: object,
    attribute: attrs.Attribute[tuple[tuple[str, str], ...]],
    value: tuple[tuple[str, str], ...],
) -> None:
    names: set[str] = set()
    for pair in value:
        if (
            not isinstance(pair, tuple)
            or len(pair) != 2
            or not all(isinstance(part, str) for part in pair)
        ):
            raise ValueError(f"labels must be (name, value) string pairs, not {pair!r}")
        if pair[0] in names:
            raise ValueError(f"label {pair[0]!r} given twice")
        names.add(pair[0])


def _labels_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(tuple(pair) if isinstance(pair, list) else pair for pair in value)
    return value


@attrs.frozen
class Member:
    """What placement needs to know about one grid member, taken from the gossip view.

    ``labels`` name failure domains (``("site", "zrh-1")``, ``("rack", "r4")``)
    for the ``distinct`` rule.
    """

    node_id: bytes = attrs.field(validator=_check_node_id)
    lat: float | None = attrs.field(validator=_check_latitude)
    lon: float | None = attrs.field(validator=_check_longitude)
    free_bytes: int = attrs.field(validator=_check_free_bytes)
    alive: bool = True
    location_trusted: bool = True
    labels: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=_labels_tuple, validator=_check_labels
    )

    def __attrs_post_init__(self) -> None:
        _check_location_pair(self.lat, self.lon)


@attrs.frozen
class Source:
    """The node backing up: never a target, and the origin of backup proximity."""

    node_id: bytes = attrs.field(validator=_check_node_id)
    lat: float | None = attrs.field(validator=_check_latitude)
    lon: float | None = attrs.field(validator=_check_longitude)

    def __attrs_post_init__(self) -> None:
        _check_location_pair(self.lat, self.lon)


def _distinct_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _check_distinct(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"distinct must be a tuple of label names, not {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"distinct names a label twice: {value!r}")


def _check_band(instance: object, attribute: attrs.Attribute[Band], value: Band) -> None:
    if not isinstance(value, Band):
        raise ValueError(f"{attribute.name} must be a Band, not {value!r}")


@attrs.frozen
class PlacementRules:
    """The rules one snapshot was placed under; stored in its record so re-placement obeys them.

    ``backup_proximity`` bounds the distance from the source to every
    target; ``packet_proximity`` bounds the distance between every two
    targets of one chunk; ``distinct`` names labels whose values must all
    differ among one chunk's targets.
    """

    backup_proximity: Band = attrs.field(default=Band(), validator=_check_band)
    packet_proximity: Band = attrs.field(default=Band(), validator=_check_band)
    distinct: tuple[str, ...] = attrs.field(
        default=(), converter=_distinct_tuple, validator=_check_distinct
    )

    @property
    def uses_distance(self) -> bool:
        return not (self.backup_proximity.is_unbounded and self.packet_proximity.is_unbounded)

    def to_wire(self) -> dict[str, Any]:
        return {
            "backup_proximity": self.backup_proximity.to_wire(),
            "packet_proximity": self.packet_proximity.to_wire(),
            "distinct": list(self.distinct),
        }

    @classmethod
    def from_wire(cls, data: Any) -> PlacementRules:
        """Rebuild rules from a snapshot record.

        Raises:
            ValueError: when the record does not hold exactly the three rules
                in their wire form.
        """
        expected = {"backup_proximity", "packet_proximity", "distinct"}
        if not isinstance(data, dict) or set(data) != expected:
            raise ValueError(f"placement rules must be a dict with {sorted(expected)}: {data!r}")
        distinct = data["distinct"]
        if not isinstance(distinct, (list, tuple)):
            raise ValueError(f"placement rules distinct must be a list, not {distinct!r}")
        return cls(
            backup_proximity=Band.from_wire(data["backup_proximity"]),
            packet_proximity=Band.from_wire(data["packet_proximity"]),
            distinct=tuple(distinct),
        )

    def describe(self) -> str:
        parts = []
        if not self.backup_proximity.is_unbounded:
            parts.append(f"backup proximity {self.backup_proximity.describe()}")
        if not self.packet_proximity.is_unbounded:
            parts.append(f"packet proximity {self.packet_proximity.describe()}")
        if self.distinct:
            parts.append(f"distinct {', '.join(self.distinct)}")
        return "; ".join(parts) if parts else "no placement rules"


class PlacementError(Exception):
    """No valid set of targets, with the rule that made it so.

    Attributes:
        rule: the rule that could not be met ("members", "capacity",
            "backup_proximity", "packet_proximity", "distinct") or
            "search_bound" when the bounded search gave up.
        needed: targets required (n).
        available: how many could be had under that rule (members that pass
            it, or the largest compatible set found).
    """

    def __init__(self, message: str, *, rule: RuleName, needed: int, available: int) -> None:
        super().__init__(message)
        self.rule: RuleName = rule
        self.needed = needed
        self.available = available


@attrs.frozen
class _SearchResult:
    chosen: list[int] | None
    exhausted: bool
    best: int
    steps: int


@attrs.frozen(eq=False)
class _Points:
    """Unit vectors, coordinates and label codes of some members, row-aligned."""

    xyz: _F64
    lat: _F64
    lon: _F64
    codes: _I64


def _unit_vectors(lat: _F64, lon: _F64) -> _F64:
    """Points on the unit sphere (NaN where the location is unknown).

    The angle between two members is acos of their dot product, so a
    packet-proximity test costs one small matrix product.
    """
    phi = np.radians(lat)
    lmb = np.radians(lon)
    xyz: _F64 = np.ascontiguousarray(
        np.stack([np.cos(phi) * np.cos(lmb), np.cos(phi) * np.sin(lmb), np.sin(phi)], axis=1)
    )
    return xyz


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _holders(count: int) -> str:
    """How messages name the targets that already hold packets of the chunk."""
    if count == 1:
        return "the target that already holds packets"
    return f"the {count} targets that already hold packets"


def _some_holders(some: int, count: int) -> str:
    """``some`` of the ``count`` holders, as the subject of a sentence."""
    return _holders(count) if count == 1 else f"{some} of {_holders(count)}"


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
        self._budget = search_budget
        self._member_key = blake3.blake3(key, derive_key_context=_MEMBER_CONTEXT).digest()
        self._chunk_key = blake3.blake3(key, derive_key_context=_CHUNK_CONTEXT).digest()

        seen: set[bytes] = set()
        others: list[Member] = []
        for member in members:
            if member.node_id in seen:
                raise ValueError(f"member {member.node_id.hex()} appears twice in the view")
            seen.add(member.node_id)
            if member.node_id != source.node_id:
                others.append(member)
        # Sorting makes the result independent of the order the view lists members in.
        others.sort(key=lambda m: m.node_id)
        self._others = tuple(others)
        count = len(others)

        self._alive: _BOOL = np.fromiter((m.alive for m in others), dtype=np.bool_, count=count)
        self._free: _I64 = np.fromiter(
            (min(m.free_bytes, _INT64_MAX) for m in others), dtype=np.int64, count=count
        )
        lat: _F64 = np.fromiter(
            (math.nan if m.lat is None else m.lat for m in others), dtype=np.float64, count=count
        )
        lon: _F64 = np.fromiter(
            (math.nan if m.lon is None else m.lon for m in others), dtype=np.float64, count=count
        )
        self._located: _BOOL = np.fromiter(
            (m.lat is not None and m.location_trusted for m in others),
            dtype=np.bool_,
            count=count,
        )
        self._source_located = source.lat is not None and source.lon is not None
        backup = rules.backup_proximity
        if backup.is_unbounded:
            self._in_backup: _BOOL = np.ones(count, dtype=np.bool_)
        elif not self._source_located or count == 0:
            self._in_backup = np.zeros(count, dtype=np.bool_)
        else:
            assert source.lat is not None and source.lon is not None
            self._in_backup = self._backup_mask(backup, source.lat, source.lon, lat, lon)

        codes = np.full((count, len(rules.distinct)), -1, dtype=np.int64)
        for column, name in enumerate(rules.distinct):
            values: dict[str, int] = {}
            for row, member in enumerate(others):
                value = dict(member.labels).get(name)
                if value is not None:
                    codes[row, column] = values.setdefault(value, len(values))
        self._labelled: _BOOL = np.all(codes >= 0, axis=1)
        # Every member's geometry and labels, not just the pool's: a target that
        # already holds a packet (``fixed``) may since have left the pool.
        self._all_points = _Points(xyz=_unit_vectors(lat, lon), lat=lat, lon=lon, codes=codes)

        eligible = self._alive & self._labelled
        if rules.uses_distance:
            eligible &= self._located & self._in_backup
        pool = np.flatnonzero(eligible)
        self._pool_ids: tuple[bytes, ...] = tuple(others[i].node_id for i in pool)
        self._pool_index = {node_id: i for i, node_id in enumerate(self._pool_ids)}
        self._pool_free: _I64 = self._free[pool]
        self._pool_min_free = int(self._pool_free.min()) if pool.size else 0
        self._pool_points = _Points(
            xyz=np.ascontiguousarray(self._all_points.xyz[pool]),
            lat=lat[pool],
            lon=lon[pool],
            codes=codes[pool],
        )
        packet = rules.packet_proximity
        # d <= max  <=>  dot >= cos(max / R);  d >= min  <=>  dot <= cos(min / R).
        self._dot_at_max = (
            None
            if packet.max_km is None
            else math.cos(min(packet.max_km / EARTH_RADIUS_KM, math.pi))
        )
        self._dot_at_min = (
            None
            if packet.min_km is None or packet.min_km == 0.0
            else math.cos(min(packet.min_km / EARTH_RADIUS_KM, math.pi))
        )
        self._pool_codes: _I64 = self._pool_points.codes
        # Weight 0 (a full member) gets an infinite t and can never be ranked;
        # place() requires packet_bytes >= 1, so such members are filtered anyway.
        with np.errstate(divide="ignore"):
            self._pool_inverse_weight: _F64 = 1.0 / self._pool_free.astype(np.float64)
        self._pool_inverse_weight.setflags(write=False)
        self._pool_weight_53: _F64 = self._pool_free.astype(np.float64) * _TWO_POW_53
        self._pool_total_weight = float(self._pool_free.astype(np.float64).sum())
        self._threshold_cache: dict[int, _I64] = {}
        self._pool_hash: _U64 = np.fromiter(
            (
                int.from_bytes(
                    blake3.blake3(node_id, key=self._member_key).digest(length=8), "little"
                )
                for node_id in self._pool_ids
            ),
            dtype=np.uint64,
            count=len(self._pool_ids),
        )
        self._all_index = {m.node_id: i for i, m in enumerate(others)}

    @property
    def rules(self) -> PlacementRules:
        return self._rules

    @property
    def candidate_count(self) -> int:
        """Members that pass every rule that does not depend on the chunk or packet size."""
        return len(self._pool_ids)

    @staticmethod
    def _backup_mask(band: Band, lat0: float, lon0: float, lat: _F64, lon: _F64) -> _BOOL:
        km = haversine_km_array(lat0, lon0, lat, lon)
        mask: _BOOL = np.ones(km.shape, dtype=np.bool_)
        unsure: _BOOL = np.zeros(km.shape, dtype=np.bool_)
        for bound in (band.min_km, band.max_km):
            if bound is not None:
                unsure |= np.abs(km - bound) <= _KM_MARGIN * max(1.0, bound)
        if band.min_km is not None:
            mask &= km >= band.min_km
        if band.max_km is not None:
            mask &= km <= band.max_km
        for row in np.flatnonzero(unsure):
            mask[row] = band.contains(haversine_km(lat0, lon0, float(lat[row]), float(lon[row])))
        return mask

    def _draws(self, chunk_id: bytes) -> _I64:
        """Each pool member's 53-bit uniform draw for this chunk."""
        chunk_hash = np.uint64(
            int.from_bytes(blake3.blake3(chunk_id, key=self._chunk_key).digest(length=8), "little")
        )
        # splitmix64 finaliser on h_member XOR h_chunk, in place to spare allocations.
        z = self._pool_hash ^ chunk_hash
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
        draws: _I64 = z.view(np.int64)
        return draws

    def _scores(self, draws: _I64, positions: _I64 | None = None) -> _F64:
        """Exact rendezvous scores t = -ln(u) / w, for all members or some positions."""
        # u = (x + 0.5) / 2**53 is never 0 or 1, so -ln(u) = 53 ln 2 - ln(x + 0.5)
        # is finite and positive.
        picked = draws
        weights = self._pool_inverse_weight
        if positions is not None:
            picked, weights = draws[positions], weights[positions]
        scores: _F64 = picked.astype(np.float64)
        scores += 0.5
        np.log(scores, out=scores)
        np.subtract(_LN_TWO_POW_53, scores, out=scores)
        scores *= weights
        return scores

    def _thresholds(self, level: int) -> _I64:
        """Draws below which a member cannot score under tau = 2**level / sum(w).

        Since -ln(u) >= 1 - u, a score t = -ln(u)/w < tau needs 1 - u < tau*w,
        that is x >= 2**53 - 0.5 - tau*w*2**53. Cached per level: the few
        levels a view uses are reused by every chunk.
        """
        cached = self._threshold_cache.get(level)
        if cached is None:
            tau = 2.0**level / self._pool_total_weight
            # Two units of slack (and a relative 1e-9) keep float rounding from
            # ever dropping a member that belongs in the head of the order.
            bound = _TWO_POW_53 - 2.0 - tau * (1.0 + 1e-9) * self._pool_weight_53
            cached = np.clip(np.floor(bound), 0.0, _TWO_POW_53).astype(np.int64)
            self._threshold_cache[level] = cached
        return cached

    def _head(self, draws: _I64, available: _BOOL | None, limit: int) -> _I64 | None:
        """The first ``limit`` positions of the order without scoring every member.

        Only members that pass a cheap integer test get a logarithm; the
        answer is exact (every member with t < tau is scored, and they are
        exactly the head of the order). None when tau was too small.
        """
        first_level = max(0, math.ceil(math.log2(2 * limit)))
        for level in range(first_level, first_level + 6, 2):
            candidates = np.flatnonzero(draws >= self._thresholds(level))
            if available is not None:
                candidates = candidates[available[candidates]]
            if candidates.size < limit:
                continue
            scores = self._scores(draws, candidates)
            below = scores < 2.0**level / self._pool_total_weight
            if np.count_nonzero(below) < limit:
                continue
            candidates, scores = candidates[below], scores[below]
            ordered: _I64 = candidates[np.lexsort((candidates, scores))[:limit]]
            return ordered
        return None

    def _order(self, draws: _I64, available: _BOOL | None, count: int, limit: int) -> _I64:
        """The first ``min(limit, count)`` available positions in rendezvous order."""
        # Below a few hundred members scoring everyone is as cheap as the shortcut.
        if 8 * limit < count and count > 256 and self._pool_total_weight > 0.0:
            head = self._head(draws, available, limit)
            if head is not None:
                return head
        scores = self._scores(draws)
        if available is not None:
            scores[~available] = math.inf
        return self._ranked(scores, min(limit, count))

    @staticmethod
    def _ranked(scores: _F64, limit: int) -> _I64:
        """Positions of the ``limit`` smallest scores, ordered by (score, position)."""
        if limit >= scores.size:
            full: _I64 = np.argsort(scores, kind="stable")
            return full
        part = np.argpartition(scores, limit - 1)[:limit]
        # lexsort ties by position, so a prefix ranks exactly as the full stable sort would.
        ordered: _I64 = part[np.lexsort((part, scores[part]))]
        return ordered

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
        excluded = frozenset(exclude)
        if fixed:
            held = self._check_fixed(fixed, n, excluded)
            chosen = self._complete(chunk_id, n - len(held), packet_bytes, excluded, held)
            return list(held) + [self._pool_ids[i] for i in chosen]
        available: _BOOL | None = None
        if packet_bytes > self._pool_min_free:
            available = self._pool_free >= packet_bytes
        excluded_positions = [self._pool_index[i] for i in excluded if i in self._pool_index]
        if excluded_positions:
            if available is None:
                available = np.ones(len(self._pool_ids), dtype=np.bool_)
            available[excluded_positions] = False
        count = len(self._pool_ids) if available is None else int(np.count_nonzero(available))
        if count < n:
            raise self._shortage(n, packet_bytes, excluded)
        if self._rules.distinct and n > 1:
            self._check_distinct_values(n, count, available)

        draws = self._draws(chunk_id)
        pairwise = n > 1 and (
            bool(self._rules.distinct) or not self._rules.packet_proximity.is_unbounded
        )
        if not pairwise:
            return [self._pool_ids[i] for i in self._order(draws, available, count, n)]
        chosen = self._search(draws, available, count, n)
        return [self._pool_ids[i] for i in chosen]

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
            elif node_id not in self._all_index:
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

    def _complete(
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
        available: _BOOL = self._pool_free >= packet_bytes
        blocked = [self._pool_index[i] for i in excluded | set(held) if i in self._pool_index]
        available[blocked] = False
        count = int(np.count_nonzero(available))
        if count < k:
            raise self._shortage(k, packet_bytes, excluded, held)
        draws = self._draws(chunk_id)
        use_packet = not self._rules.packet_proximity.is_unbounded
        use_distinct = bool(self._rules.distinct)
        if not (use_packet or use_distinct):
            return [int(i) for i in self._order(draws, available, count, k)]
        rows = np.array([self._all_index[i] for i in held], dtype=np.int64)
        measurable = (not use_distinct or bool(self._labelled[rows].all())) and (
            not use_packet or bool(self._located[rows].all())
        )
        if measurable and self._pool_total_weight > 0.0:
            chosen = self._complete_from_head(draws, k, available, count, rows)
            if chosen is not None:
                return chosen
        return self._complete_fully(draws, k, available, rows, use_packet, use_distinct)

    def _complete_from_head(
        self, draws: _I64, k: int, available: _BOOL, count: int, rows: _I64
    ) -> list[int] | None:
        """The first valid completion found in a head of the order, or None.

        Like ``_head``, but the held targets filter the candidates before
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
            candidates = np.flatnonzero(draws >= self._thresholds(level))
            candidates = candidates[available[candidates]]
            scanned = candidates.size
            candidates = self._fit_held(
                rows, candidates, use_packet=use_packet, use_distinct=use_distinct
            )
            scores = self._scores(draws, candidates)
            below = scores < 2.0**level / self._pool_total_weight
            if np.count_nonzero(below) >= k:
                prefix: _I64 = candidates[below][np.lexsort((candidates[below], scores[below]))]
                if k == 1:
                    return [int(prefix[0])]
                chosen = self._greedy(prefix[:greedy_limit], k)
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
        draws: _I64,
        k: int,
        available: _BOOL,
        rows: _I64,
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
                    what = self._rule_words(use_packet=True, use_distinct=True)
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
        narrowed: _BOOL = np.zeros(available.size, dtype=np.bool_)
        narrowed[fitting] = True
        if k == 1:
            return [int(i) for i in self._order(draws, narrowed, int(fitting.size), 1)]
        return self._search(draws, narrowed, int(fitting.size), k, among=f" that fit {holders}")

    def _fit_held(
        self, rows: _I64, positions: _I64, *, use_packet: bool, use_distinct: bool
    ) -> _I64:
        """The pool positions (a subsequence) that meet the pairwise rules with every held target.

        Labels take one set lookup per label. Distances are tested against
        the first held target, then against the others only for the
        candidates left, which under an upper bound are few: checking a
        replacement then costs about one dot product per candidate, not one
        per candidate and held target.
        """
        keep = positions
        if use_distinct:
            held_codes = self._all_points.codes[rows]
            for column in range(held_codes.shape[1]):
                keep = keep[~np.isin(self._pool_codes[keep, column], held_codes[:, column])]
        if use_packet:
            for part in (rows[:1], rows[1:]):
                if keep.size and part.size:
                    ok = self._pairs(
                        self._pool_points,
                        keep,
                        self._all_points,
                        part,
                        use_packet=True,
                        use_distinct=False,
                    )
                    keep = keep[np.logical_and.reduce(ok, axis=1)]
        return keep

    def _fit_held_labels(self, rows: _I64, positions: _I64, k: int, holders: str) -> _I64:
        """Candidates whose every distinct label differs from every held target's."""
        names = ", ".join(self._rules.distinct)
        count = int(positions.size)
        unlabelled = int(np.count_nonzero(~self._labelled[rows]))
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
        held_codes = self._all_points.codes[rows]
        for column, name in enumerate(self._rules.distinct):
            used = np.unique(held_codes[:, column])
            values = np.unique(self._pool_codes[positions, column])
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

    def _fit_held_band(self, rows: _I64, positions: _I64, k: int, holders: str) -> _I64:
        """Candidates within the packet-proximity band of every held target."""
        band = self._rules.packet_proximity.describe()
        unlocated = int(np.count_nonzero(~self._located[rows]))
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

    def _compatible(
        self, rows: _I64, columns: _I64, *, use_packet: bool, use_distinct: bool
    ) -> _BOOL:
        """Pairwise-rule compatibility of every (row, column) pair of pool positions."""
        pool = self._pool_points
        return self._pairs(
            pool, rows, pool, columns, use_packet=use_packet, use_distinct=use_distinct
        )

    def _pairs(
        self,
        left: _Points,
        rows: _I64,
        right: _Points,
        columns: _I64,
        *,
        use_packet: bool,
        use_distinct: bool,
    ) -> _BOOL:
        """Pairwise-rule compatibility of ``left[rows]`` with ``right[columns]``."""
        # Few, whole-array numpy calls: this runs once per search step.
        ok: _BOOL
        if use_packet and (self._dot_at_max is not None or self._dot_at_min is not None):
            dot = left.xyz[rows] @ right.xyz[columns].T
            if self._dot_at_max is not None:
                ok = dot >= self._dot_at_max + _DOT_MARGIN
                unsure: _BOOL = np.abs(dot - self._dot_at_max) < _DOT_MARGIN
                if self._dot_at_min is not None:
                    ok &= dot <= self._dot_at_min - _DOT_MARGIN
                    unsure |= np.abs(dot - self._dot_at_min) < _DOT_MARGIN
            else:
                assert self._dot_at_min is not None
                ok = dot <= self._dot_at_min - _DOT_MARGIN
                unsure = np.abs(dot - self._dot_at_min) < _DOT_MARGIN
            band = self._rules.packet_proximity
            unsure_rows, unsure_columns = unsure.nonzero() if unsure.any() else ((), ())
            for i, j in zip(unsure_rows, unsure_columns, strict=True):
                a, b = int(rows[i]), int(columns[j])
                ok[i, j] = band.contains(
                    haversine_km(
                        float(left.lat[a]),
                        float(left.lon[a]),
                        float(right.lat[b]),
                        float(right.lon[b]),
                    )
                )
        else:
            ok = np.ones((rows.size, columns.size), dtype=np.bool_)
        if use_distinct:
            for column in range(left.codes.shape[1]):
                ok &= left.codes[rows, column][:, None] != right.codes[columns, column][None, :]
        return ok

    def _greedy(self, order: _I64, n: int) -> list[int] | None:
        """Take each candidate in rank order that fits with those taken so far."""
        ok = self._compatible(
            order,
            order,
            use_packet=not self._rules.packet_proximity.is_unbounded,
            use_distinct=bool(self._rules.distinct),
        )
        open_: _BOOL = np.ones(order.size, dtype=np.bool_)
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
        self, order: _I64, n: int, *, use_packet: bool, use_distinct: bool
    ) -> _SearchResult:
        """First valid n-set in rank order, or proof (within the budget) that none exists.

        Each frame holds the candidates compatible with everything chosen so
        far, so a branch is cut as soon as too few (or, for distinct labels,
        too few different values) remain to complete it.
        """
        codes = self._pool_codes
        chosen: list[int] = []
        frames: list[_I64] = [order]
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
                self._compatible(pick, rest, use_packet=use_packet, use_distinct=use_distinct)[0]
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

    def _search(
        self, draws: _I64, available: _BOOL | None, count: int, n: int, *, among: str = ""
    ) -> list[int]:
        # Greedy over the head of the order (a small compatibility matrix):
        # when it succeeds its answer is the depth-first search's first leaf,
        # so taking it changes nothing but the cost.
        head_size = 4 * n + 28
        if head_size <= _GREEDY_HEAD_LIMIT:
            greedy = self._greedy(self._order(draws, available, count, head_size), n)
            if greedy is not None:
                return greedy
        order = self._order(draws, available, count, count)
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

    def _rule_words(self, use_packet: bool, use_distinct: bool) -> str:
        words = []
        if use_packet:
            words.append(f"packet proximity {self._rules.packet_proximity.describe()}")
        if use_distinct:
            words.append(f"distinct {', '.join(self._rules.distinct)}")
        return " with ".join(words)

    def _grow_from_starts(
        self, order: _I64, n: int, *, use_packet: bool, use_distinct: bool
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
                    self._compatible(
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
        what = self._rule_words(use_packet, use_distinct)
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
        order: _I64,
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
        what = self._rule_words(use_packet, use_distinct)
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

    def _check_distinct_values(self, n: int, count: int, available: _BOOL | None) -> None:
        codes = self._pool_codes if available is None else self._pool_codes[available]
        for column, name in enumerate(self._rules.distinct):
            different = int(np.unique(codes[:, column]).size)
            if different < n:
                raise PlacementError(
                    f"distinct {name}: the {count} candidate members have only "
                    f"{different} different {name!r} values, {n} needed",
                    rule="distinct",
                    needed=n,
                    available=different,
                )

    def _shortage(
        self,
        n: int,
        packet_bytes: int,
        excluded: frozenset[bytes],
        held: tuple[bytes, ...] = (),
    ) -> PlacementError:
        """Walk the filters in order and report the first one that leaves fewer than n.

        Held targets (``fixed``) are not candidates, so they are not counted;
        the messages say n more are needed besides them.
        """
        not_excluded = np.ones(len(self._others), dtype=np.bool_)
        excluded_rows = [self._all_index[i] for i in excluded if i in self._all_index]
        not_excluded[excluded_rows] = False
        not_held = np.ones(len(self._others), dtype=np.bool_)
        not_held[[self._all_index[i] for i in held]] = False
        besides = f" besides {_holders(len(held))}" if held else ""
        needed = f"{n} needed{besides}"

        alive = self._alive & not_excluded & not_held
        have = int(np.count_nonzero(alive))
        if have < n:
            dropped = int(np.count_nonzero(self._alive & ~not_excluded))
            note = f" (not counting {dropped} excluded)" if dropped else ""
            return PlacementError(
                f"members: only {_plural(have, 'alive member')} besides this node{note}, {needed}",
                rule="members",
                needed=n,
                available=have,
            )

        roomy = alive & (self._free >= packet_bytes)
        have = int(np.count_nonzero(roomy))
        if have < n:
            return PlacementError(
                f"capacity: only {_plural(have, 'alive member')} "
                f"{'has' if have == 1 else 'have'} {packet_bytes} bytes free, {needed}",
                rule="capacity",
                needed=n,
                available=have,
            )

        current = roomy
        if self._rules.uses_distance:
            located = roomy & self._located
            unlocated = have - int(np.count_nonzero(located))
            backup = self._rules.backup_proximity
            if not backup.is_unbounded:
                band = backup.describe()
                if not self._source_located:
                    return PlacementError(
                        f"backup proximity {band}: this node's own location is unknown, so "
                        f"no member can be shown to lie in that band; set this node's "
                        f"location ({_plural(n, 'target')} needed{besides})",
                        rule="backup_proximity",
                        needed=n,
                        available=0,
                    )
                current = located & self._in_backup
                have = int(np.count_nonzero(current))
                if have < n:
                    note = (
                        f" ({unlocated} more with room were not considered because their "
                        "location is unknown or untrusted)"
                        if unlocated
                        else ""
                    )
                    return PlacementError(
                        f"backup proximity {band}: only {_plural(have, 'alive member')} "
                        f"with room lie in that band, {needed}{note}",
                        rule="backup_proximity",
                        needed=n,
                        available=have,
                    )
            else:
                current = located
                have = int(np.count_nonzero(current))
                if have < n:
                    band = self._rules.packet_proximity.describe()
                    return PlacementError(
                        f"packet proximity {band}: only {_plural(have, 'alive member')} "
                        f"with room {'has' if have == 1 else 'have'} a known, trusted "
                        f"location, {needed} ({unlocated} others have an unknown or "
                        "untrusted location)",
                        rule="packet_proximity",
                        needed=n,
                        available=have,
                    )

        if self._rules.distinct:
            before = int(np.count_nonzero(current))
            labelled = current & self._labelled
            have = int(np.count_nonzero(labelled))
            if have < n:
                names = ", ".join(self._rules.distinct)
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
