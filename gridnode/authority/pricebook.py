"""The price book: what the grid authority charges and credits, and the plans it sells.

One TOML file (read with ``tomllib``) holds both, so an authority has one place to
edit and one file to back up::

    currency = "EUR"            # ISO 4217 code, three capital letters
    exponent = 2                # decimal places of the smallest unit (2: cents)
    default_plan = "standard"   # the plan of an invite or enrolment that names none

    [prices]                    # charges, in smallest units (cents) per unit of usage
    source_gb_month = "0.4"     # per GB-month stored as a source, redundancy included
    transfer_gb = "0.1"         # per GB sent + received for the grid
    minimum_charge = "100"      # per billing period (a whole number of smallest units)

    [credits]                   # credits, in smallest units per unit of contribution
    target_gb_month = "0.2"     # per GB-month held as a target
    served_gb = "0.05"          # per GB served to others as a target

    [plans.standard]            # allocations (protocol.Allocations); missing keys are 0
    source_bytes = "50GB"
    target_bytes = "100GB"
    bandwidth_bps = 100_000_000
    network_bytes_month = "500GB"
    cpu_seconds_month = 36000

Why the rules are what they are:

- Prices are *decimal strings* (or TOML integers) parsed with ``decimal.Decimal``, never
  TOML floats: a float such as ``0.1`` is a binary approximation, and money that is
  not exact cannot be recomputed to the same figure by anyone else.  A float is
  refused with an error that names the key.
- Prices are in the *smallest unit* (cents for ``exponent = 2``) and may have a
  fractional part: a real per-GB price is often a fraction of a cent.  Each statement
  line is rounded to a whole smallest unit once (see ``gridnode.authority.fees``).
  The minimum charge is itself an amount, so it must be whole.
- Unknown keys are refused (a typo such as ``source_gb_mnoth`` would otherwise make a
  price silently zero), and so are negative prices (a negative charge is a credit;
  the book says which is which by section).
- ``default_plan`` must name a plan of the book.  Without it, the default is
  ``standard`` when the book has one, else the first plan by name (none: ``""``).
- Plan figures are integers or sizes (``"50GB"``, ``"1.5TiB"``, via
  ``gridnode.units.parse_size``), except ``cpu_seconds_month``, which is a count of
  seconds and must be an integer.  Every figure must fit the certificate's encoding
  (a non-negative int below 2**63) and a plan name the certificate's 64 characters.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import attrs

from gridnode.units import parse_size
from protocol import Allocations

__all__ = [
    "DEFAULT_PRICE_BOOK",
    "DEFAULT_PRICE_BOOK_TOML",
    "PriceBook",
    "PriceBookError",
    "load_price_book",
    "parse_price_book",
]

_CURRENCY_RE: Final = re.compile(r"^[A-Z]{3}$")
_PLAN_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_EXPONENT: Final = 8
_MAX_COUNT: Final = (1 << 63) - 1
#: Keys of ``[prices]`` and ``[credits]``; each maps to a PriceBook attribute.
_PRICE_KEYS: Final = {
    "source_gb_month": "source_gb_month",
    "transfer_gb": "transfer_gb",
    "minimum_charge": "minimum_charge",
}
_CREDIT_KEYS: Final = {
    "target_gb_month": "target_gb_month_credit",
    "served_gb": "served_gb_credit",
}
_TOP_KEYS: Final = frozenset({"currency", "exponent", "default_plan", "prices", "credits", "plans"})
_SIZE_PLAN_KEYS: Final = (
    "source_bytes",
    "target_bytes",
    "bandwidth_bps",
    "network_bytes_month",
)
_COUNT_PLAN_KEYS: Final = ("cpu_seconds_month",)
#: Above this a price is surely a typo (a million units per GB), and bounding it keeps
#: every product on a statement far below what an int64 consumer could choke on.
_MAX_PRICE: Final = Decimal(10**6)
#: Finer than a trillionth of a cent per GB is no price anyone means; bounding the
#: places bounds the size of the exact rationals a statement is computed with.
_MAX_PRICE_PLACES: Final = 12


class PriceBookError(ValueError):
    """A price book that cannot be used; the message names the offending key."""


@attrs.frozen
class PriceBook:
    """Prices and credits in smallest units (``Decimal``, exact), and the plans on sale.

    ``currency`` is an ISO 4217 code; ``exponent`` the number of decimal places of the
    smallest unit (2: amounts are cents), used only to print amounts as ``"12.34"``.
    ``plans``: allocations by plan name; ``default_plan``: the plan given when none is
    asked for (a key of ``plans``, or ``""`` when there are no plans).
    """

    currency: str
    exponent: int
    source_gb_month: Decimal
    transfer_gb: Decimal
    target_gb_month_credit: Decimal
    served_gb_credit: Decimal
    minimum_charge: int
    plans: Mapping[str, Allocations] = attrs.field(factory=dict)
    default_plan: str = ""

    @classmethod
    def load(cls, path: str | Path) -> PriceBook:
        """Read and validate a price book file (PriceBookError names the file and key)."""
        return load_price_book(path)

    @classmethod
    def parse(cls, text: str, *, source: str = "price book") -> PriceBook:
        """Parse and validate price book TOML text."""
        return parse_price_book(text, source=source)

    def to_json(self) -> dict[str, Any]:
        """Prices as decimal strings (exact), plans as allocation objects."""
        return {
            "currency": self.currency,
            "exponent": self.exponent,
            "default_plan": self.default_plan,
            "prices": {
                "source_gb_month": format(self.source_gb_month, "f"),
                "transfer_gb": format(self.transfer_gb, "f"),
                "minimum_charge": str(self.minimum_charge),
            },
            "credits": {
                "target_gb_month": format(self.target_gb_month_credit, "f"),
                "served_gb": format(self.served_gb_credit, "f"),
            },
            "plans": {name: alloc.to_json() for name, alloc in sorted(self.plans.items())},
        }


def _decimal(key: str, value: Any) -> Decimal:
    """A non-negative, finite price from a decimal string or a TOML integer."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        kind = "a float" if isinstance(value, float) else f"a {type(value).__name__}"
        raise PriceBookError(
            f'{key}: give a decimal string such as "0.25" (or an integer), not {kind}: '
            "binary floats cannot hold money exactly"
        )
    try:
        number = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise PriceBookError(f"{key}: not a decimal number: {value!r}") from None
    if not number.is_finite():
        raise PriceBookError(f"{key}: must be a finite number, not {value!r}")
    if number < 0:
        raise PriceBookError(f"{key}: must not be negative ({value!r})")
    if number > _MAX_PRICE:
        raise PriceBookError(f"{key}: {value!r} is more than {_MAX_PRICE} smallest units")
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -_MAX_PRICE_PLACES:
        raise PriceBookError(
            f"{key}: at most {_MAX_PRICE_PLACES} decimal places of the smallest unit, not {value!r}"
        )
    # "-0" is not negative but would print as "-0"; one zero for all spellings.
    return Decimal(0) if number == 0 else number


def _table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise PriceBookError(f"{key}: must be a table ([{key}])")
    return value


def _refuse_unknown(where: str, table: Mapping[str, Any], known: Any) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        names = ", ".join(f"{where}{k}" for k in unknown)
        raise PriceBookError(f"unknown key(s) {names} (known: {', '.join(sorted(known))})")


def _plan(name: str, raw: Any) -> Allocations:
    where = f"plans.{name}"
    if not _PLAN_NAME_RE.match(name):
        raise PriceBookError(
            f"{where}: a plan name is 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    table = _table(where, raw)
    _refuse_unknown(f"{where}.", table, (*_SIZE_PLAN_KEYS, *_COUNT_PLAN_KEYS))
    figures: dict[str, int] = {}
    for key, value in table.items():
        full = f"{where}.{key}"
        if isinstance(value, bool | float):
            raise PriceBookError(f"{full}: give an integer or a size string, not {value!r}")
        if key in _COUNT_PLAN_KEYS:
            if not isinstance(value, int):
                raise PriceBookError(f"{full}: must be an integer number of seconds")
            number = value
        else:
            if not isinstance(value, int | str):
                raise PriceBookError(f'{full}: give an integer or a size such as "50GB"')
            try:
                number = parse_size(value)
            except ValueError as exc:
                raise PriceBookError(f"{full}: {exc}") from None
        if not 0 <= number <= _MAX_COUNT:
            raise PriceBookError(f"{full}: must be between 0 and 2**63-1, not {value!r}")
        figures[key] = number
    return Allocations(**figures)


def parse_price_book(text: str, *, source: str = "price book") -> PriceBook:
    """Parse and validate price book TOML; PriceBookError names the first bad key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PriceBookError(f"{source}: not valid TOML: {exc}") from None
    return price_book_from_dict(raw)


def price_book_from_dict(raw: Mapping[str, Any]) -> PriceBook:
    """Validate an already parsed price book (e.g. a table inside a larger TOML file)."""
    _refuse_unknown("", raw, _TOP_KEYS)
    for required in ("currency", "prices", "credits"):
        if required not in raw:
            raise PriceBookError(f"{required}: missing")
    currency = raw["currency"]
    if not isinstance(currency, str) or not _CURRENCY_RE.match(currency):
        raise PriceBookError(f'currency: an ISO 4217 code such as "EUR", not {currency!r}')
    exponent = raw.get("exponent", 2)
    if isinstance(exponent, bool) or not isinstance(exponent, int):
        raise PriceBookError(f"exponent: must be an integer, not {exponent!r}")
    if not 0 <= exponent <= _MAX_EXPONENT:
        raise PriceBookError(f"exponent: must be 0 to {_MAX_EXPONENT}, not {exponent}")

    prices = _table("prices", raw["prices"])
    credits = _table("credits", raw["credits"])
    _refuse_unknown("prices.", prices, _PRICE_KEYS)
    _refuse_unknown("credits.", credits, _CREDIT_KEYS)
    values: dict[str, Decimal] = {}
    for section, table, keys in (
        ("prices", prices, _PRICE_KEYS),
        ("credits", credits, _CREDIT_KEYS),
    ):
        for key, attr in keys.items():
            if key not in table:
                raise PriceBookError(f"{section}.{key}: missing")
            values[attr] = _decimal(f"{section}.{key}", table[key])
    minimum = values.pop("minimum_charge")
    if minimum != minimum.to_integral_value():
        raise PriceBookError(
            f"prices.minimum_charge: an amount, so a whole number of smallest units, not {minimum}"
        )

    plans_raw = _table("plans", raw.get("plans", {}))
    plans = {name: _plan(name, plans_raw[name]) for name in sorted(plans_raw)}
    if "default_plan" in raw:
        default_plan = raw["default_plan"]
        if not isinstance(default_plan, str) or default_plan not in plans:
            raise PriceBookError(
                f"default_plan: {default_plan!r} is not a plan of this book "
                f"(plans: {', '.join(plans) or 'none'})"
            )
    elif "standard" in plans:
        default_plan = "standard"
    else:
        default_plan = next(iter(plans), "")
    return PriceBook(
        currency=currency,
        exponent=exponent,
        minimum_charge=int(minimum),
        plans=plans,
        default_plan=default_plan,
        **values,
    )


def load_price_book(path: str | Path) -> PriceBook:
    """Read a price book file; PriceBookError names the file and the bad key."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceBookError(f"{file}: cannot read the price book: {exc}") from None
    try:
        return parse_price_book(text, source=str(file))
    except PriceBookError as exc:
        raise PriceBookError(f"{file}: {exc}") from None


#: What ``gridnode authority init`` writes when no price book is given: modest prices in
#: euro cents, a contributor earning half of what storing the same bytes costs, and
#: three plans.  An authority is expected to edit it.
DEFAULT_PRICE_BOOK_TOML: Final = """\
# gridnode price book.  Prices are in the smallest currency unit (cents for
# exponent = 2), written as decimal strings so that money stays exact.
currency = "EUR"
exponent = 2
default_plan = "standard"

[prices]
source_gb_month = "0.4"   # per GB-month stored as a source, redundancy included
transfer_gb = "0.1"       # per GB sent + received for the grid
minimum_charge = "100"    # per billing period, whole smallest units

[credits]
target_gb_month = "0.2"   # per GB-month held for others as a target
served_gb = "0.05"        # per GB served to others as a target

[plans.small]
source_bytes = "20GB"
target_bytes = "40GB"
bandwidth_bps = 20_000_000
network_bytes_month = "200GB"
cpu_seconds_month = 36_000

[plans.standard]
source_bytes = "100GB"
target_bytes = "200GB"
bandwidth_bps = 100_000_000
network_bytes_month = "1TB"
cpu_seconds_month = 180_000

[plans.large]
source_bytes = "1TB"
target_bytes = "2TB"
bandwidth_bps = 1_000_000_000
network_bytes_month = "10TB"
cpu_seconds_month = 720_000
"""

DEFAULT_PRICE_BOOK: Final = parse_price_book(DEFAULT_PRICE_BOOK_TOML, source="default price book")
