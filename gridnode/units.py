"""Human-friendly sizes (``50GB``, ``1.5TiB``, ``4096``) and durations (``30d``, ``12h``).

Decimal (kB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB) units are both accepted
because people copy numbers from disk vendors (decimal) and from ``df -h`` (binary);
guessing one for the other would silently misallocate 7-10% of a disk.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["format_bytes", "parse_duration", "parse_size"]

_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "p": 1000**5,
    "pb": 1000**5,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "pib": 1024**5,
}
_SIZE_RE: Final = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parse a byte size; raises ValueError with the offending text."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 50GB, 1.5TiB, 4096)")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown size unit {unit!r} in {text!r} (use kB, MB, GB, TB, KiB..TiB)")
    return int(float(number) * factor)


def format_bytes(n: float) -> str:
    """Binary units, three significant digits: what a person reads in a status table."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{value:.0f} {unit}"
            text = f"{value:.3g}"
            # 999.5 to 1023.x would read "1e+03": a person reads "1010 MiB" better.
            return f"{value:.0f} {unit}" if "e" in text else f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION_RE: Final = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdwy]?)\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``12h``, ``30d``, ``2w``, ``1y`` (365 days)."""
    match = _DURATION_RE.match(text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (examples: 90s, 15m, 12h, 30d, 2w, 1y)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
