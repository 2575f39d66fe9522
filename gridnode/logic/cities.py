"""The embedded table of world cities, so a node's location can be a city name.

A person configuring a node knows which city it is in, not its coordinates.
The table (``gridnode/data/cities.csv``, GeoNames data under CC BY 4.0; see
``gridnode/data/CITIES_SOURCE.md``) ships inside the package, so resolving a
name never touches the network. It is read once, on first use.
"""

from __future__ import annotations

import csv
import difflib
import functools
import importlib.resources
import io
import math
import re
import unicodedata

import attrs

__all__ = [
    "City",
    "UnknownCityError",
    "all_cities",
    "fold_name",
    "parse_location",
    "resolve_city",
]

# Letters with no Unicode decomposition to an ASCII base letter; kept in step
# with tools/make_cities.py so the CSV's ascii_name and a user's typing fold alike.
_FOLD_TABLE = str.maketrans(
    {
        "ø": "o",
        "Ø": "O",
        "æ": "ae",
        "Æ": "AE",
        "œ": "oe",
        "Œ": "OE",
        "ł": "l",
        "Ł": "L",
        "đ": "d",
        "Đ": "D",
        "ð": "d",
        "Ð": "D",
        "þ": "th",
        "Þ": "Th",
        "ı": "i",
        "ß": "ss",
    }
)
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_COUNTRY_SUFFIX = re.compile(r"^(?P<name>.*\S)\s*,\s*(?P<country>[A-Za-z]{2})\s*$")
_COORDINATES = re.compile(
    r"^\s*(?P<lat>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*,\s*(?P<lon>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$"
)
_MAX_SUGGESTIONS = 3


def fold_name(text: str) -> str:
    """Reduce a place name to the key it is looked up by.

    Accents, case, hyphens and punctuation are dropped so that "Zürich",
    "zurich" and "ZURICH" meet, and "Saint-Étienne" meets "saint etienne".
    """
    decomposed = unicodedata.normalize("NFKD", text.translate(_FOLD_TABLE))
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NON_ALNUM.sub(" ", stripped.casefold()).strip()


@attrs.frozen
class City:
    """One row of the city table; ``country`` is the ISO 3166-1 alpha-2 code."""

    name: str
    country: str
    lat: float
    lon: float
    population: int

    @property
    def display_name(self) -> str:
        """The form that :func:`resolve_city` maps back to this city (barring same-name towns)."""
        return f"{self.name}, {self.country}"


class UnknownCityError(ValueError):
    """A location names no city in the table; the message offers close names."""


@attrs.frozen
class _CityIndex:
    cities: tuple[City, ...]
    # folded name -> cities with that name, most populous first
    by_key: dict[str, tuple[City, ...]]


def _build_index(text: str) -> _CityIndex:
    reader = csv.DictReader(io.StringIO(text))
    cities: list[City] = []
    buckets: dict[str, list[City]] = {}
    for row in reader:
        city = City(
            name=row["name"],
            country=row["country"].upper(),
            lat=float(row["lat"]),
            lon=float(row["lon"]),
            population=int(row["population"]),
        )
        cities.append(city)
        key = fold_name(city.name)
        if key:
            buckets.setdefault(key, []).append(city)
        ascii_key = fold_name(row["ascii_name"]) if row["ascii_name"] != city.name else key
        if ascii_key and ascii_key != key:
            buckets.setdefault(ascii_key, []).append(city)
    by_key = {
        key: tuple(sorted(group, key=lambda c: -c.population)) for key, group in buckets.items()
    }
    return _CityIndex(cities=tuple(cities), by_key=by_key)


@functools.cache
def _index() -> _CityIndex:
    resource = importlib.resources.files("gridnode") / "data" / "cities.csv"
    return _build_index(resource.read_text(encoding="utf-8"))


def all_cities() -> tuple[City, ...]:
    """Every city in the table, most populous first (simulations pick locations from it)."""
    return _index().cities


def _suggest(key: str, country: str | None) -> list[str]:
    index = _index()
    if country is not None:
        keys = [k for k, group in index.by_key.items() if any(c.country == country for c in group)]
    else:
        keys = list(index.by_key)
    names: list[str] = []
    for close in difflib.get_close_matches(key, keys, n=_MAX_SUGGESTIONS, cutoff=0.6):
        group = index.by_key[close]
        if country is not None:
            group = tuple(c for c in group if c.country == country)
        names.append(group[0].display_name)
    return names


def resolve_city(text: str) -> City:
    """Find a city by name: ``"Paris"``, ``"paris"``, ``"Paris, FR"``, ``"Zurich"``.

    Several cities share many names (Paris, FR and Paris, US); without a
    country code the most populous wins, because that is nearly always the
    one meant, and ``"Name, CC"`` picks another.

    Raises:
        UnknownCityError: when no city matches; the message suggests up to
            three close names.
    """
    if not isinstance(text, str) or not text.strip():
        raise UnknownCityError(f"empty city name {text!r}")
    name = text
    country: str | None = None
    match = _COUNTRY_SUFFIX.match(text)
    if match is not None:
        name, country = match["name"], match["country"].upper()
    key = fold_name(name)
    index = _index()
    group = index.by_key.get(key, ())
    if country is not None:
        in_country = tuple(c for c in group if c.country == country)
        if in_country:
            return in_country[0]
        whole = index.by_key.get(fold_name(text), ())
        if whole:
            return whole[0]
        if group:
            elsewhere = ", ".join(sorted({c.country for c in group}))
            raise UnknownCityError(
                f"unknown city {text!r}: no city called {name.strip()!r} in {country} "
                f"(there is one in {elsewhere})"
            )
    elif group:
        return group[0]
    # "Frankfurt" for "Frankfurt am Main": accept a word prefix when it names one city.
    prefixed = {
        c
        for k, cities in index.by_key.items()
        if k.startswith(key + " ")
        for c in cities
        if country is None or c.country == country
    }
    if len(prefixed) == 1:
        return prefixed.pop()
    suggestions = _suggest(key, country)
    hint = f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
    raise UnknownCityError(
        f"unknown city {text!r}{hint} (give coordinates as LAT,LON if it is not in the "
        "table of cities with 100,000+ people and capitals)"
    )


def parse_location(text: str) -> tuple[float, float, str | None]:
    """Read a configured location: ``"47.37,8.54"`` or a city name.

    Returns:
        ``(lat, lon, city)`` where ``city`` is the resolved city's display
        name (``"Zürich, CH"``) or None when coordinates were given.

    Raises:
        ValueError: coordinates out of range, naming the text.
        UnknownCityError: a name that is not in the table.
    """
    if not isinstance(text, str):
        raise ValueError(f"location must be text, not {text!r}")
    match = _COORDINATES.match(text)
    if match is not None:
        lat, lon = float(match["lat"]), float(match["lon"])
        if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
            raise ValueError(f"location {text!r}: latitude {lat} is outside -90..90")
        if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
            raise ValueError(f"location {text!r}: longitude {lon} is outside -180..180")
        return lat, lon, None
    city = resolve_city(text)
    return city.lat, city.lon, city.display_name
