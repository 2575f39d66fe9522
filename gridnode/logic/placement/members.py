"""What placement is told about the grid: the members it may choose and the source.

Both are validated on construction, so the view that ranks them can trust every
field (32-byte ids, finite coordinates in range, a location given whole or not at
all, non-negative free space, well-formed failure-domain labels).
"""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["NODE_ID_BYTES", "Member", "Source"]

NODE_ID_BYTES = 32


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
