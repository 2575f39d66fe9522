"""Issue 11's rule for a house a newcomer can walk: no module of the product or of the
simulations is over 1,000 lines.  A module that grows past it has more than one job;
split it along its seam (as the catalog's schema left ``catalog.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gridnode", "protocol", "simulations")
MAX_LINES = 1000


def _modules() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def test_the_packages_hold_modules() -> None:
    # A moved tree would make the size rule pass on nothing.
    assert len(_modules()) > 100


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(ROOT)))
def test_module_is_at_most_1000_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"
