"""The cities test grids are placed in, one node per city in this order.

Tests depend on the order (the first node is the source; distance bands are chosen
against these places), so every grid in the suite takes its cities from here.
"""

from __future__ import annotations

CITIES: tuple[str, ...] = (
    "Paris",
    "Berlin",
    "Madrid",
    "Rome",
    "Vienna",
    "Amsterdam",
    "Warsaw",
    "Prague",
    "Lisbon",
    "Stockholm",
    "Dublin",
    "Athens",
)
