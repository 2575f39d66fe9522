"""The rules one snapshot is placed under, and how placement says it could not meet them.

The distance rules (backup and packet proximity) are ``Band`` values measured with
``haversine_km``; ``distinct`` names failure-domain labels whose values must differ
among one chunk's targets.  ``PlacementError`` names the first rule that could not be
met (Rule 4 of the package docstring) with the numbers behind it.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from gridnode.logic.distance import Band

__all__ = ["DEFAULT_SEARCH_BUDGET", "PlacementError", "PlacementRules", "RuleName"]

RuleName = Literal[
    "backup_proximity", "packet_proximity", "capacity", "members", "distinct", "search_bound"
]

DEFAULT_SEARCH_BUDGET = 20_000


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
