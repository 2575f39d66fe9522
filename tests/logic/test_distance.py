"""Distance, distance parsing and distance bands."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridnode.logic.distance import (
    EARTH_RADIUS_KM,
    KM_PER_MILE,
    Band,
    haversine_km,
    haversine_km_array,
    parse_band,
    parse_distance_km,
)

latitudes = st.floats(min_value=-90.0, max_value=90.0, allow_nan=False)
longitudes = st.floats(min_value=-180.0, max_value=180.0, allow_nan=False)
bounds = st.none() | st.floats(min_value=0.0, max_value=25_000.0, allow_nan=False)


def test_haversine_known_city_pairs() -> None:
    # Paris - London, about 344 km; Zurich - New York, about 6,320 km.
    assert haversine_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.6, abs=1.0)
    assert haversine_km(47.3769, 8.5417, 40.7128, -74.0060) == pytest.approx(6320, abs=10)


def test_haversine_extremes() -> None:
    assert haversine_km(10.0, 20.0, 10.0, 20.0) == 0.0
    assert haversine_km(0.0, 0.0, 0.0, 180.0) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    assert haversine_km(90.0, 0.0, -90.0, 0.0) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    # Longitude wraps: 179 E and 179 W are 2 degrees apart, not 358.
    assert haversine_km(0.0, 179.0, 0.0, -179.0) == pytest.approx(
        2 * math.pi * EARTH_RADIUS_KM / 180, rel=1e-9
    )


@settings(max_examples=200, deadline=None)
@given(latitudes, longitudes, latitudes, longitudes)
def test_haversine_symmetric_bounded_and_array_agrees(
    lat1: float, lon1: float, lat2: float, lon2: float
) -> None:
    d = haversine_km(lat1, lon1, lat2, lon2)
    assert d == pytest.approx(haversine_km(lat2, lon2, lat1, lon1), abs=1e-9)
    assert 0.0 <= d <= math.pi * EARTH_RADIUS_KM + 1e-9
    many = haversine_km_array(lat1, lon1, np.array([lat2, lat1]), np.array([lon2, lon1]))
    assert many[0] == pytest.approx(d, abs=1e-6)
    assert many[1] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("text", "km"),
    [
        ("100km", 100.0),
        ("100 km", 100.0),
        ("100KM", 100.0),
        ("  1.5km ", 1.5),
        ("300", 300.0),
        ("0", 0.0),
        (".5km", 0.5),
        ("50mi", 50 * KM_PER_MILE),
        ("50 MI", 50 * KM_PER_MILE),
        ("2 miles", 2 * KM_PER_MILE),
        ("1e3km", 1000.0),
    ],
)
def test_parse_distance_accepts(text: str, km: float) -> None:
    assert parse_distance_km(text) == pytest.approx(km)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-5km", "negative"),
        ("nan", "finite"),
        ("inf km", "finite"),
        ("1e400km", "finite"),
        ("far", "cannot read"),
        ("", "cannot read"),
        ("10 parsecs", "unknown unit"),
        ("10km5", "cannot read"),
        ("1,000km", "cannot read"),
    ],
)
def test_parse_distance_rejects_naming_the_text(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        parse_distance_km(text)
    assert repr(text) in str(info.value)


def test_band_validation() -> None:
    with pytest.raises(ValueError, match="larger than its maximum"):
        Band(min_km=2000.0, max_km=500.0)
    with pytest.raises(ValueError, match="negative"):
        Band(min_km=-1.0)
    with pytest.raises(ValueError, match="finite"):
        Band(max_km=math.inf)
    with pytest.raises(ValueError, match="number"):
        Band(max_km=True)
    assert Band(min_km=300) == Band(min_km=300.0)
    assert isinstance(Band(min_km=300).min_km, float)


def test_band_contains_is_closed() -> None:
    band = Band(min_km=500.0, max_km=2000.0)
    assert band.contains(500.0) and band.contains(2000.0) and band.contains(1000.0)
    assert not band.contains(499.999) and not band.contains(2000.001)
    assert not band.contains(math.nan)
    assert Band().contains(0.0) and Band().contains(1e9)
    assert Band().is_unbounded and not Band(max_km=1.0).is_unbounded


@pytest.mark.parametrize(
    ("band", "unit", "text"),
    [
        (Band(min_km=500.0, max_km=2000.0), "km", "500-2000 km"),
        (Band(min_km=300.0), "km", "at least 300 km"),
        (Band(max_km=50 * KM_PER_MILE), "mi", "at most 50 mi"),
        (Band(max_km=1.5), "km", "at most 1.5 km"),
        (Band(), "km", "any distance"),
        (Band(), "mi", "any distance"),
    ],
)
def test_band_describe(band: Band, unit: str, text: str) -> None:
    assert band.describe(unit) == text


@pytest.mark.parametrize(
    ("text", "band"),
    [
        ("100km:3000km", Band(min_km=100.0, max_km=3000.0)),
        (":2000", Band(max_km=2000.0)),
        (":", Band()),
        (" 10 : 20 ", Band(min_km=10.0, max_km=20.0)),
    ],
)
def test_parse_band_accepts(text: str, band: Band) -> None:
    assert parse_band(text) == band


def test_parse_band_miles() -> None:
    band = parse_band("50mi:")
    assert band.min_km == pytest.approx(80.4672)
    assert band.max_km is None
    assert band.describe("mi") == "at least 50 mi"
    assert parse_band("10mi:100km").max_km == 100.0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("300km", "expected MIN:MAX"),
        ("1:2:3", "expected MIN:MAX"),
        ("2000km:500km", "larger than its maximum"),
        ("abc:", "cannot read distance"),
        ("-1:", "negative"),
    ],
)
def test_parse_band_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        parse_band(text)
    assert repr(text) in str(info.value)


@settings(max_examples=200, deadline=None)
@given(bounds, bounds)
def test_band_wire_round_trip(low: float | None, high: float | None) -> None:
    if low is not None and high is not None and low > high:
        low, high = high, low
    band = Band(min_km=low, max_km=high)
    wire = band.to_wire()
    assert set(wire) == {"min_km", "max_km"}
    assert all(v is None or type(v) is float for v in wire.values())
    assert Band.from_wire(wire) == band


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [1.0, 2.0],
        {"min_km": 1.0},
        {"min_km": 1.0, "max_km": 2.0, "extra": 0},
        {"min_km": "1", "max_km": None},
        {"min_km": True, "max_km": None},
        {"min_km": 3.0, "max_km": 2.0},
    ],
)
def test_band_from_wire_rejects(wire: object) -> None:
    with pytest.raises(ValueError):
        Band.from_wire(wire)
