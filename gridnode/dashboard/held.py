"""Whether a chunk's placement rules still hold for where its packets are now.

A snapshot's rules (``PlacementRules``, stored with each chunk record) were met when
its packets were placed; members move (a new location in a new gossip record), so the
snapshots page asks again, from the member view this node has now.  Distance is
``haversine_km`` and a band is ``Band.contains``, the definitions placement itself uses
(Rule 5 of ``gridnode.logic.placement``), so "held" here means what it means there:

- packet proximity: every pair of the chunk's distinct holders within the band;
- backup proximity: every holder within the band from the source (this node);
- distinct labels: every pair of holders with different values of each label named.

A holder whose location (or a label the rules name) is not in the view is *unknown*,
never *broken*: the view not knowing where a member is says nothing about where it is.
A chunk is broken when any rule is definitely broken, else unknown when any part is
unknown, else held.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from ..actors.gossip import parse_labels
from ..logic.distance import haversine_km
from ..logic.placement.rules import PlacementRules

__all__ = ["Place", "RulesCheck", "Verdict", "pair_distances", "places_from_status"]

Verdict = Literal["held", "broken", "unknown"]

#: Pair distances remembered by one check (distinct holder pairs are few).
PAIR_CACHE_LIMIT: Final = 100_000


@attrs.frozen
class Place:
    """Where the view has a member, and its failure-domain labels (name to value)."""

    lat: float | None
    lon: float | None
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def located(self) -> bool:
        return self.lat is not None and self.lon is not None


def places_from_status(status: Mapping[str, Any]) -> tuple[Place, dict[str, Place]]:
    """(this node's place, every member's place by printable node id) from a ``status``
    answer: the locations of the members' signed gossip records, as the view has them."""
    source = Place(status.get("lat"), status.get("lon"))
    places = {
        str(m["node_id"]): Place(m.get("lat"), m.get("lon"), parse_labels(m.get("labels") or ()))
        for m in status.get("members", [])
        if m.get("node_id")
    }
    places.setdefault(str(status.get("node_id")), source)
    return source, places


def pair_distances(
    spots: Sequence[tuple[str, float | None, float | None]],
) -> list[tuple[str, str, float | None]]:
    """Every pair of distinct holders (by name) with its distance in km (None when either
    place is unknown); the placement page draws these lines."""
    seen: dict[str, tuple[float | None, float | None]] = {}
    for name, lat, lon in spots:
        seen.setdefault(name, (lat, lon))
    out: list[tuple[str, str, float | None]] = []
    for (a, (lat1, lon1)), (b, (lat2, lon2)) in itertools.combinations(seen.items(), 2):
        if lat1 is None or lon1 is None or lat2 is None or lon2 is None:
            out.append((a, b, None))
        else:
            out.append((a, b, haversine_km(lat1, lon1, lat2, lon2)))
    return out


@attrs.define
class RulesCheck:
    """Checks chunks against their rules from one view of the members; remembers pair
    distances, as a snapshot's chunks share a few holders."""

    source: Place
    places: Mapping[str, Place]
    _pairs: dict[tuple[str, str], float] = attrs.field(factory=dict)

    def _km(self, a: str, pa: Place, b: str, pb: Place) -> float:
        key = (a, b) if a < b else (b, a)
        km = self._pairs.get(key)
        if km is None:
            assert pa.lat is not None and pa.lon is not None
            assert pb.lat is not None and pb.lon is not None
            km = haversine_km(pa.lat, pa.lon, pb.lat, pb.lon)
            if len(self._pairs) < PAIR_CACHE_LIMIT:
                self._pairs[key] = km
        return km

    def chunk(self, rules_wire: Mapping[str, Any] | None, holders: Sequence[str]) -> Verdict:
        """The verdict for one chunk: ``rules_wire`` as stored with it (empty: no rules),
        ``holders`` the printable node ids of its packets' targets."""
        try:
            rules = PlacementRules.from_wire(dict(rules_wire)) if rules_wire else PlacementRules()
        except ValueError:
            return "unknown"  # a damaged record: nothing can be said either way
        distinct = list(dict.fromkeys(holders))
        unknown = False
        backup = rules.backup_proximity
        if not backup.is_unbounded:
            if not self.source.located:
                unknown = True
            else:
                for holder in distinct:
                    place = self.places.get(holder)
                    if place is None or not place.located:
                        unknown = True
                    elif not backup.contains(self._km("", self.source, holder, place)):
                        return "broken"
        packet = rules.packet_proximity
        for a, b in itertools.combinations(distinct, 2):
            pa, pb = self.places.get(a), self.places.get(b)
            if not packet.is_unbounded:
                if pa is None or pb is None or not pa.located or not pb.located:
                    unknown = True
                elif not packet.contains(self._km(a, pa, b, pb)):
                    return "broken"
            for label in rules.distinct:
                va = dict(pa.labels).get(label) if pa is not None else None
                vb = dict(pb.labels).get(label) if pb is not None else None
                if va is None or vb is None:
                    unknown = True
                elif va == vb:
                    return "broken"
        return "unknown" if unknown else "held"
