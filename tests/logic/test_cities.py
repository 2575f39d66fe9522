"""The embedded city table and location parsing."""

from __future__ import annotations

import importlib.resources
import re

import pytest

from gridnode.logic.cities import (
    City,
    UnknownCityError,
    all_cities,
    fold_name,
    parse_location,
    resolve_city,
)
from gridnode.logic.distance import haversine_km


def test_table_is_shipped_small_and_sane() -> None:
    resource = importlib.resources.files("gridnode") / "data" / "cities.csv"
    assert len(resource.read_bytes()) < 400_000
    cities = all_cities()
    assert 3_000 <= len(cities) <= 8_000
    for city in cities:
        assert -90.0 <= city.lat <= 90.0 and -180.0 <= city.lon <= 180.0
        assert re.fullmatch(r"[A-Z]{2}", city.country)
        assert city.name
    populations = [c.population for c in cities]
    assert populations == sorted(populations, reverse=True)
    assert all_cities() is cities  # loaded once


@pytest.mark.parametrize(
    "text", ["Zürich", "Zurich", "zurich", "ZÜRICH", "  zürich  ", "Zurich, CH"]
)
def test_accents_case_and_country_fold_together(text: str) -> None:
    city = resolve_city(text)
    assert (city.name, city.country) == ("Zürich", "CH")
    assert haversine_km(city.lat, city.lon, 47.3769, 8.5417) < 5


def test_letters_without_decomposition_fold() -> None:
    assert fold_name("Łódź") == "lodz" == fold_name("LODZ")
    assert resolve_city("Lodz").name == "Łódź"
    assert resolve_city("Sao Paulo").country == "BR"
    assert fold_name("Saint-Étienne") == "saint etienne"


def test_most_populous_wins_unless_a_country_is_given() -> None:
    assert resolve_city("Paris").country == "FR"
    assert resolve_city("paris").country == "FR"
    assert resolve_city("London").country == "GB"
    london_ca = resolve_city("London, CA")
    assert london_ca.country == "CA"
    assert london_ca.population < resolve_city("London").population
    assert resolve_city("valencia, es").country == "ES"
    assert resolve_city("Valencia").country == "VE"


def test_small_capitals_are_in_the_table() -> None:
    for name, country in [("Vaduz", "LI"), ("Valletta", "MT"), ("Bern", "CH"), ("Reykjavik", "IS")]:
        assert resolve_city(name).country == country


def test_unknown_city_suggests_close_names() -> None:
    with pytest.raises(UnknownCityError, match="Pariss") as info:
        resolve_city("Pariss")
    assert isinstance(info.value, ValueError)
    assert "'Paris, FR'" in str(info.value)
    suggestions = re.findall(r"'[^']+, [A-Z]{2}'", str(info.value))
    assert 1 <= len(suggestions) <= 3


def test_unknown_city_in_named_country_says_where_it_is() -> None:
    with pytest.raises(UnknownCityError, match=r"no city called 'Zürich' in DE.*CH"):
        resolve_city("Zürich, DE")


@pytest.mark.parametrize("text", ["", "   ", "Qqqqzzzx"])
def test_nothing_matches(text: str) -> None:
    with pytest.raises(UnknownCityError):
        resolve_city(text)


def test_display_name_resolves_back_for_every_city() -> None:
    for city in all_cities():
        found = resolve_city(city.display_name)
        assert found.country == city.country
        assert fold_name(found.name) == fold_name(city.name)
        assert found.population >= city.population


def test_parse_location_coordinates() -> None:
    assert parse_location("47.37,8.54") == (47.37, 8.54, None)
    assert parse_location(" -33.9 , 151.2 ") == (-33.9, 151.2, None)
    assert parse_location("90,-180") == (90.0, -180.0, None)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("91,0", "latitude"),
        ("-90.5,0", "latitude"),
        ("0,180.01", "longitude"),
        ("0,-200", "longitude"),
    ],
)
def test_parse_location_rejects_out_of_range(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        parse_location(text)
    assert not isinstance(info.value, UnknownCityError)
    assert repr(text) in str(info.value)


def test_parse_location_city() -> None:
    lat, lon, name = parse_location("Zurich")
    assert name == "Zürich, CH"
    city = resolve_city("Zürich")
    assert (lat, lon) == (city.lat, city.lon)
    assert isinstance(city, City)
    with pytest.raises(UnknownCityError):
        parse_location("Atlantis")


def test_a_unique_word_prefix_names_the_city() -> None:
    from gridnode.logic.cities import resolve_city

    assert resolve_city("Frankfurt").name == "Frankfurt am Main"
    with pytest.raises(UnknownCityError):
        resolve_city("New")  # New York, New Delhi, ...: ambiguous, not guessed
