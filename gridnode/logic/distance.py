"""Great-circle distance, distance parsing and distance bands (claims 14, 15, 43, 45).

Every distance option of the CLI and config accepts kilometres or miles; inside
the program everything is kilometres, so a rule written as ``50mi:`` and one
written as ``80.4672km:`` are the same rule once parsed. A band is the
``MIN:MAX`` pair that the packet- and backup-proximity rules are made of.
"""

from __future__ import annotations

import math
import re
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

__all__ = [
    "EARTH_RADIUS_KM",
    "KM_PER_MILE",
    "Band",
    "haversine_km",
    "haversine_km_array",
    "parse_band",
    "parse_distance_km",
]

KM_PER_MILE = 1.609344
# IUGG mean Earth radius. The spherical model is off by up to ~0.5 % against
# the ellipsoid, far below what a proximity rule written by a person means.
EARTH_RADIUS_KM = 6371.0088

_UNITS = {"km": 1.0, "mi": KM_PER_MILE}
_UNIT_ALIASES = {
    "": "km",
    "km": "km",
    "kms": "km",
    "kilometer": "km",
    "kilometers": "km",
    "kilometre": "km",
    "kilometres": "km",
    "mi": "mi",
    "mile": "mi",
    "miles": "mi",
}
_DISTANCE_RE = re.compile(
    r"^\s*(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*(?P<unit>[a-z]*)\s*$",
    re.IGNORECASE,
)
_NON_FINITE_RE = re.compile(r"^\s*[+-]?(?:nan|inf|infinity)\s*[a-z]*\s*$", re.IGNORECASE)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees.

    Haversine rather than the spherical law of cosines because it stays
    accurate for the short distances (same city, same campus) that a
    minimum-separation rule is about.
    """
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2.0) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, max(0.0, a))))


def haversine_km_array(
    lat1: float,
    lon1: float,
    lat2: npt.NDArray[np.float64],
    lon2: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Distances in km from one point to many, all in degrees.

    Placement measures one candidate against all others at once; doing it in
    numpy keeps a chunk's placement well under a millisecond with 10,000
    members.
    """
    phi1 = math.radians(lat1)
    phi2 = np.radians(lat2)
    dphi = phi2 - phi1
    dlmb = np.radians(lon2 - lon1)
    a = np.sin(dphi / 2.0) ** 2 + math.cos(phi1) * np.cos(phi2) * np.sin(dlmb / 2.0) ** 2
    result: npt.NDArray[np.float64] = (
        2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    )
    return result


def parse_distance_km(text: str) -> float:
    """Parse ``"100km"``, ``"100 km"``, ``"50mi"``, ``"1.5km"`` or ``"300"`` (km) into km.

    Raises:
        ValueError: for negative, NaN, infinite or unparseable input; the
            message quotes the offending text so a CLI can show it as is.
    """
    if not isinstance(text, str):
        raise ValueError(f"distance must be text such as '100km' or '50mi', not {text!r}")
    if _NON_FINITE_RE.match(text):
        raise ValueError(f"distance {text!r} is not a finite number")
    match = _DISTANCE_RE.match(text)
    if match is None:
        raise ValueError(
            f"cannot read distance {text!r}: expected a number with an optional unit "
            "'km' or 'mi', such as '100km', '50mi' or '300'"
        )
    unit = _UNIT_ALIASES.get(match["unit"].lower())
    if unit is None:
        raise ValueError(f"distance {text!r} has unknown unit {match['unit']!r}: use 'km' or 'mi'")
    value = float(match["number"])
    if not math.isfinite(value):
        raise ValueError(f"distance {text!r} is not a finite number")
    if value < 0:
        raise ValueError(f"distance {text!r} is negative")
    km = value * _UNITS[unit]
    if not math.isfinite(km):
        raise ValueError(f"distance {text!r} is not a finite number")
    return km


def _format_number(value: float) -> str:
    # Three decimals are plenty for a rule written by a person, and rounding
    # hides the float noise of a km -> mi -> km round trip ("50.000000001 mi").
    text = f"{round(value, 3):.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _check_bound(
    instance: Band, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{attribute.name} must be a number of km or None, not {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be finite, not {value!r}")
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


def _to_float(value: float | None) -> float | None:
    return None if value is None or isinstance(value, bool) else float(value)


def _int_to_float(value: Any) -> Any:
    # Band(min_km=300) and Band(min_km=300.0) must be the same value on the
    # wire and in a snapshot record; anything else goes to the validator.
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@attrs.frozen
class Band:
    """A closed interval of distances in km; ``None`` leaves that side open.

    Closed on both ends so that "at least 300 km" admits exactly 300 km, as a
    person reading the rule would expect.
    """

    min_km: float | None = attrs.field(
        default=None, converter=_int_to_float, validator=_check_bound
    )
    max_km: float | None = attrs.field(
        default=None, converter=_int_to_float, validator=_check_bound
    )

    def __attrs_post_init__(self) -> None:
        if self.min_km is not None and self.max_km is not None and self.min_km > self.max_km:
            raise ValueError(
                f"distance band minimum {_format_number(self.min_km)} km is larger than "
                f"its maximum {_format_number(self.max_km)} km"
            )

    @property
    def is_unbounded(self) -> bool:
        return self.min_km is None and self.max_km is None

    def contains(self, km: float) -> bool:
        if self.min_km is not None and not km >= self.min_km:
            return False
        return self.max_km is None or km <= self.max_km

    def describe(self, unit: str = "km") -> str:
        """Human form for messages: "500-2000 km", "at least 300 km", "any distance"."""
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {unit!r}: use 'km' or 'mi'")
        per = _UNITS[unit]
        if self.min_km is None and self.max_km is None:
            return "any distance"
        if self.max_km is None:
            assert self.min_km is not None
            return f"at least {_format_number(self.min_km / per)} {unit}"
        if self.min_km is None:
            return f"at most {_format_number(self.max_km / per)} {unit}"
        return f"{_format_number(self.min_km / per)}-{_format_number(self.max_km / per)} {unit}"

    def to_wire(self) -> dict[str, float | None]:
        return {"min_km": _to_float(self.min_km), "max_km": _to_float(self.max_km)}

    @classmethod
    def from_wire(cls, data: Any) -> Band:
        """Rebuild a band from a snapshot record; strict, as the record may be old or damaged.

        Raises:
            ValueError: when ``data`` is not a dict of exactly ``min_km`` and
                ``max_km`` holding numbers or None, or the numbers make no band.
        """
        if not isinstance(data, dict) or set(data) != {"min_km", "max_km"}:
            raise ValueError(f"a distance band must be a dict with min_km and max_km, not {data!r}")
        values: list[float | None] = []
        for name in ("min_km", "max_km"):
            value = data[name]
            bad_type = isinstance(value, bool) or not isinstance(value, (int, float))
            if value is not None and bad_type:
                raise ValueError(f"distance band {name} must be a number or None, not {value!r}")
            values.append(_to_float(value))
        return cls(min_km=values[0], max_km=values[1])


def parse_band(text: str) -> Band:
    """Parse ``"MIN:MAX"``, either side may be empty: ``"100km:3000km"``, ``"50mi:"``, ``":"``.

    A bare value is refused rather than guessed at: "300km" could mean at
    least or at most, and a wrong guess would place backups where the user
    did not want them.

    Raises:
        ValueError: naming the text when it is not ``MIN:MAX`` or a side is
            not a distance or the minimum exceeds the maximum.
    """
    if not isinstance(text, str):
        raise ValueError(f"distance band must be text such as '100km:3000km', not {text!r}")
    if text.count(":") != 1:
        raise ValueError(
            f"cannot read distance band {text!r}: expected MIN:MAX with either side "
            "optional, such as '100km:3000km', '50mi:' or ':2000'"
        )
    low_text, high_text = text.split(":")
    try:
        low = parse_distance_km(low_text) if low_text.strip() else None
        high = parse_distance_km(high_text) if high_text.strip() else None
        return Band(min_km=low, max_km=high)
    except ValueError as exc:
        raise ValueError(f"cannot read distance band {text!r}: {exc}") from None
