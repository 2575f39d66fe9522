"""The distance rules in placement's hot paths: backup proximity and packet proximity.

Rule 5: distance is ``haversine_km`` and nothing else.  The fast paths (dot products
of unit vectors, vectorised haversine) decide only pairs that are clearly inside or
outside a band; pairs within a hair of an edge are decided by the scalar function,
so "within 500 km" means the same here as in the audit output and the tests.
Distinct labels ride along in the same pairwise test, as integer codes per label.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from gridnode.logic.distance import EARTH_RADIUS_KM, Band, haversine_km, haversine_km_array

from .arrays import BOOL, F64, I64

__all__ = ["PairwiseRules", "Points", "backup_mask", "unit_vectors"]

# Fast distance tests run on dot products of unit vectors (or vectorised
# haversine) and are only trusted outside these margins; anything closer to a
# band's edge is decided by the scalar haversine_km, so placement agrees with
# the one canonical definition of distance to the last bit. Both fast paths
# are accurate to about 1e-14 in their units, so the margins are generous.
_DOT_MARGIN = 1e-11
_KM_MARGIN = 1e-6


@attrs.frozen(eq=False)
class Points:
    """Unit vectors, coordinates and label codes of some members, row-aligned."""

    xyz: F64
    lat: F64
    lon: F64
    codes: I64


def unit_vectors(lat: F64, lon: F64) -> F64:
    """Points on the unit sphere (NaN where the location is unknown).

    The angle between two members is acos of their dot product, so a
    packet-proximity test costs one small matrix product.
    """
    phi = np.radians(lat)
    lmb = np.radians(lon)
    xyz: F64 = np.ascontiguousarray(
        np.stack([np.cos(phi) * np.cos(lmb), np.cos(phi) * np.sin(lmb), np.sin(phi)], axis=1)
    )
    return xyz


def backup_mask(band: Band, lat0: float, lon0: float, lat: F64, lon: F64) -> BOOL:
    km = haversine_km_array(lat0, lon0, lat, lon)
    mask: BOOL = np.ones(km.shape, dtype=np.bool_)
    unsure: BOOL = np.zeros(km.shape, dtype=np.bool_)
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


class PairwiseRules:
    """Packet proximity and distinct labels as one compatibility test over pairs of members.

    ``d <= max`` is ``dot >= cos(max / R)`` and ``d >= min`` is ``dot <= cos(min / R)``
    for unit vectors, so a band test costs one small matrix product.
    """

    def __init__(self, packet: Band) -> None:
        self._band = packet
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

    def pairs(
        self,
        left: Points,
        rows: I64,
        right: Points,
        columns: I64,
        *,
        use_packet: bool,
        use_distinct: bool,
    ) -> BOOL:
        """Pairwise-rule compatibility of ``left[rows]`` with ``right[columns]``."""
        # Few, whole-array numpy calls: this runs once per search step.
        ok: BOOL
        if use_packet and (self._dot_at_max is not None or self._dot_at_min is not None):
            dot = left.xyz[rows] @ right.xyz[columns].T
            if self._dot_at_max is not None:
                ok = dot >= self._dot_at_max + _DOT_MARGIN
                unsure: BOOL = np.abs(dot - self._dot_at_max) < _DOT_MARGIN
                if self._dot_at_min is not None:
                    ok &= dot <= self._dot_at_min - _DOT_MARGIN
                    unsure |= np.abs(dot - self._dot_at_min) < _DOT_MARGIN
            else:
                assert self._dot_at_min is not None
                ok = dot <= self._dot_at_min - _DOT_MARGIN
                unsure = np.abs(dot - self._dot_at_min) < _DOT_MARGIN
            band = self._band
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
