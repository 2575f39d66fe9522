"""The fee module (claims 26, 28, 29): usage history in, statement and payment request out.

Pure and deterministic: no clock, no I/O, no floats.  The authority hands in a node's
usage history (the contents of its signed usage reports, already checked by metering),
the price book, the billing period and optionally the node's allocations; it gets back a
``Statement`` that anyone holding the same history and price book recomputes to the
same bytes, and signs it into an ``Invoice`` (the payment request) for the node.

The rules
=========

Units.  GB = 10**9 bytes.  A month, for pricing, is 30 days = 2,592,000 s, whatever the
calendar says, so a GB-month is 2.592e15 byte-seconds and a statement does not depend on
the time zone or on which month it is.

Stored bytes are integrated over time.  A report (``UsageSample``) covers the half-open
interval ``[start, end)``; its ``source_bytes`` and ``target_bytes`` are taken to hold
over all of it.  A statement for the period ``[period_start, period_end)`` counts, for
each report, ``bytes * seconds of overlap`` between the two intervals (exact integers):
a report straddling two periods is split between them by time, so consecutive periods
add up to the whole history, second for second.  Time no report covers counts nothing,
neither charge nor credit (metering flags a node that stops reporting).  Reports of one
node must not overlap: an overlap would count the same second twice, so it is refused
(``FeeError``) rather than billed.

Counters are attributed, not split.  ``sent_bytes``, ``received_bytes``,
``served_bytes`` and ``cpu_seconds`` are what happened during the report's interval;
they count whole in the one period that contains the report's end, i.e. where
``period_start < end <= period_end``.  A counter cannot be split by time without
inventing fractional bytes, and with this rule every report lands in exactly one period
of a partition, so nothing is counted twice or lost.

What is charged and credited.
- charge ``source storage``: source byte-months (bytes placed on the grid, redundancy
  included) at ``source_gb_month``;
- charge ``transfer``: GB sent + received for the grid at ``transfer_gb``;
- credit ``target storage``: target byte-months (bytes held for others) at
  ``target_gb_month_credit``.  When the node's allocations are given (claim 29), each
  report's ``target_bytes`` is capped at the allotted ``target_bytes`` first: a node is
  credited for what it contracted to contribute, never for holdings beyond it (which it
  could only have by accepting packets placement should not have sent, or by lying);
- credit ``served``: GB served to others as a target at ``served_gb_credit``.  Served
  bytes are usually also part of ``sent_bytes`` (charged as transfer); the price book
  sets both rates, so the net of the two is its choice.
CPU seconds are reported in the statement's usage but not priced.

Rounding.  Each line's amount is ``quantity * unit price``, computed exactly as a
rational number from integer byte-seconds or bytes and the ``Decimal`` price, then
rounded once to a whole smallest unit with ROUND_HALF_EVEN (banker's rounding, the rule
of ``decimal.ROUND_HALF_EVEN``).  Rounding per line (not per report) means splitting a
report into two with the same figures changes nothing, and a half unit is not always
rounded in the same direction over many statements.  The exact rational is used rather
than a ``Decimal`` quotient because 1/2,592,000 has no finite decimal expansion: a
``Decimal`` division would round before the rounding rule is applied.

The minimum charge applies to the charges, before credits:
``balance = max(charges, minimum) - credits``.  The minimum pays for what a subscription
costs the authority whatever the node does (its certificate, metering, its log); it is
a floor on what a subscription costs, not on what a node owes.  Applied after credits it
would stop a contributor's credits from counting below the floor, so a node holding
terabytes for others could never earn more than the minimum back, and more contribution
would stop lowering the balance.  When it applies it shows as a ``minimum charge``
line topping the charges up to the minimum, so the charge lines always add up to the
charges total.  A negative balance is what the grid owes the node (a credit to carry
forward or pay out).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Final

import attrs
import msgpack
from nacl.signing import SigningKey

from protocol import Allocations, sign, verify

from .pricebook import PriceBook

__all__ = [
    "BYTES_PER_GB",
    "SECONDS_PER_MONTH",
    "FeeError",
    "Invoice",
    "Line",
    "Statement",
    "Usage",
    "UsageSample",
    "compute_statement",
    "format_amount",
    "issue_invoice",
]

BYTES_PER_GB: Final = 10**9
SECONDS_PER_MONTH: Final = 30 * 24 * 3600  # 2,592,000
_BYTE_SECONDS_PER_GB_MONTH: Final = BYTES_PER_GB * SECONDS_PER_MONTH
_INVOICE_CONTEXT: Final = b"gridnode invoice v1\x00"
#: Decimal places shown for a line's quantity (display only: amounts use the exact basis).
_QUANTITY_PLACES: Final = 6
_MAX_COUNT: Final = (1 << 63) - 1

#: Line kinds, their unit, and how many basis units make one priced unit.
_UNITS: Final[Mapping[str, tuple[str, str, int]]] = {
    "source_storage": ("source storage", "GB-month", _BYTE_SECONDS_PER_GB_MONTH),
    "transfer": ("transfer (sent + received)", "GB", BYTES_PER_GB),
    "minimum": ("minimum charge top-up", "period", 1),
    "target_storage": ("target storage contributed", "GB-month", _BYTE_SECONDS_PER_GB_MONTH),
    "served": ("served to others", "GB", BYTES_PER_GB),
}
_BASIS_UNITS: Final[Mapping[str, str]] = {
    "source_storage": "byte-seconds",
    "transfer": "bytes",
    "minimum": "periods",
    "target_storage": "byte-seconds",
    "served": "bytes",
}
_CHARGE_KINDS: Final = ("source_storage", "transfer", "minimum")
_CREDIT_KINDS: Final = ("target_storage", "served")


class FeeError(ValueError):
    """A history or period the fee module refuses to bill (the message says why)."""


def _is_count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _MAX_COUNT


@attrs.frozen
class UsageSample:
    """The content of one signed usage report of one node (see the module docstring).

    ``start``/``end``: unix seconds, the report covers ``[start, end)``, ``start < end``.
    ``source_bytes``: bytes the node has placed on the grid as a source, redundancy
    included, over the interval.  ``target_bytes``: bytes it holds for others as a
    target (backed by receipts it signed).  ``sent_bytes``/``received_bytes``: grid
    traffic during the interval, all of it; ``served_bytes``: the part of it sent to
    others as a target (restores, repair).  ``cpu_seconds``: CPU spent on grid work.
    """

    start: int
    end: int
    source_bytes: int = 0
    target_bytes: int = 0
    sent_bytes: int = 0
    received_bytes: int = 0
    served_bytes: int = 0
    cpu_seconds: int = 0

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(UsageSample):
            if not _is_count(getattr(self, field.name)):
                raise FeeError(
                    f"usage sample {field.name} must be a non-negative int below 2**63, "
                    f"not {getattr(self, field.name)!r}"
                )
        if self.end <= self.start:
            raise FeeError(f"usage sample covers no time: [{self.start}, {self.end})")

    def sort_key(self) -> tuple[int, ...]:
        """A total order on samples, so a history's order never changes a result."""
        return tuple(getattr(self, f.name) for f in attrs.fields(UsageSample))

    def to_json(self) -> dict[str, int]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> UsageSample:
        try:
            return cls(**raw)
        except TypeError as exc:
            raise FeeError(f"malformed usage sample: {exc}") from None


@attrs.frozen
class Usage:
    """What a statement was computed from, summed over the period (all exact ints).

    ``target_byte_seconds_credited`` is ``target_byte_seconds`` after the allocation cap.
    """

    samples: int = 0
    source_byte_seconds: int = 0
    target_byte_seconds: int = 0
    target_byte_seconds_credited: int = 0
    sent_bytes: int = 0
    received_bytes: int = 0
    served_bytes: int = 0
    cpu_seconds: int = 0

    def to_json(self) -> dict[str, int]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Usage:
        if not isinstance(raw, Mapping) or set(raw) != {f.name for f in attrs.fields(Usage)}:
            raise FeeError("malformed statement usage")
        if not all(_is_count(v) for v in raw.values()):
            raise FeeError("malformed statement usage: figures must be non-negative ints")
        return cls(**raw)


def _round_half_even(value: Fraction) -> int:
    """Round an exact rational to an int, ties to even (``decimal.ROUND_HALF_EVEN``)."""
    floor, remainder = divmod(value.numerator, value.denominator)
    twice = 2 * remainder
    if twice > value.denominator or (twice == value.denominator and floor % 2 == 1):
        return floor + 1
    return floor


def format_amount(amount: int, exponent: int) -> str:
    """An amount in smallest units as a decimal string: ``1234, 2 -> "12.34"``."""
    return f"{Decimal(amount).scaleb(-exponent):.{exponent}f}"


def _quantity_text(basis: int, per_unit: int) -> str:
    scale = 10**_QUANTITY_PLACES
    scaled = _round_half_even(Fraction(basis * scale, per_unit))
    return format_amount(scaled, _QUANTITY_PLACES)


@attrs.frozen
class Line:
    """One charge or credit: ``amount = round_half_even(basis / per_unit * unit_price)``.

    ``basis`` is the exact integer measure (byte-seconds, bytes, periods) so the amount
    can be recomputed without trusting the rounded ``quantity`` shown to people.
    """

    kind: str
    basis: int
    unit_price: Decimal  # smallest units per priced unit
    amount: int

    @classmethod
    def priced(cls, kind: str, basis: int, unit_price: Decimal) -> Line:
        per_unit = _UNITS[kind][2]
        exact = Fraction(basis, per_unit) * Fraction(unit_price)
        return cls(kind, basis, unit_price, _round_half_even(exact))

    @property
    def description(self) -> str:
        return _UNITS[self.kind][0]

    @property
    def unit(self) -> str:
        return _UNITS[self.kind][1]

    def to_json(self, exponent: int) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "what": self.description,
            "basis": self.basis,
            "basis_unit": _BASIS_UNITS[self.kind],
            "quantity": _quantity_text(self.basis, _UNITS[self.kind][2]),
            "unit": self.unit,
            "unit_price": format(self.unit_price, "f"),
            "amount": self.amount,
            "amount_text": format_amount(self.amount, exponent),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], kinds: Sequence[str]) -> Line:
        """Parse a line and check that its amount is what its basis and price give."""
        try:
            kind, basis, price_text, amount = (
                raw["kind"],
                raw["basis"],
                raw["unit_price"],
                raw["amount"],
            )
        except (KeyError, TypeError):
            raise FeeError("malformed statement line") from None
        if kind not in kinds or not _is_count(basis) or not isinstance(price_text, str):
            raise FeeError(f"malformed statement line: {kind!r}")
        try:
            price = Decimal(price_text)
        except InvalidOperation:
            raise FeeError(f"malformed unit price {price_text!r}") from None
        if not price.is_finite() or price < 0:
            raise FeeError(f"malformed unit price {price_text!r}")
        line = cls.priced(kind, basis, price)
        if line.amount != amount:
            raise FeeError(f"statement line {kind}: amount {amount!r} is not {line.amount}")
        return line


@attrs.frozen
class Statement:
    """A node's charges, credits and balance for one billing period (integers of the
    smallest unit of ``currency``; ``exponent`` says where the decimal point goes)."""

    period_start: int
    period_end: int
    currency: str
    exponent: int
    charges: tuple[Line, ...]
    credits: tuple[Line, ...]
    minimum_charge: int
    usage: Usage

    @property
    def charges_total(self) -> int:
        return sum(line.amount for line in self.charges)

    @property
    def credits_total(self) -> int:
        return sum(line.amount for line in self.credits)

    @property
    def balance(self) -> int:
        """What the node owes (negative: what it is owed).  The minimum is already in
        ``charges`` as a top-up line, so this is ``max(charges, minimum) - credits``."""
        return self.charges_total - self.credits_total

    def to_json(self) -> dict[str, Any]:
        exp = self.exponent
        return {
            "period": {"start": self.period_start, "end": self.period_end},
            "currency": self.currency,
            "exponent": exp,
            "charges": [line.to_json(exp) for line in self.charges],
            "charges_total": self.charges_total,
            "charges_total_text": format_amount(self.charges_total, exp),
            "credits": [line.to_json(exp) for line in self.credits],
            "credits_total": self.credits_total,
            "credits_total_text": format_amount(self.credits_total, exp),
            "minimum_charge": self.minimum_charge,
            "minimum_charge_text": format_amount(self.minimum_charge, exp),
            "balance": self.balance,
            "balance_text": format_amount(self.balance, exp),
            "usage": self.usage.to_json(),
        }

    def canonical_json(self) -> bytes:
        """The JSON with sorted keys and no spaces: what an invoice signs, and what two
        recomputations of one statement must agree on byte for byte."""
        return json.dumps(
            self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode("ascii")

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Statement:
        """Parse a statement's JSON, checking every amount against its basis and price
        and every total against its lines (FeeError otherwise)."""
        try:
            period = raw["period"]
            start, end = period["start"], period["end"]
            currency, exponent = raw["currency"], raw["exponent"]
            charges_raw, credits_raw = raw["charges"], raw["credits"]
            minimum = raw["minimum_charge"]
            usage = Usage.from_json(raw["usage"])
        except (KeyError, TypeError):
            raise FeeError("malformed statement") from None
        if not (
            _is_count(start)
            and _is_count(end)
            and start < end
            and isinstance(currency, str)
            and type(exponent) is int
            and 0 <= exponent <= 8
            and _is_count(minimum)
            and isinstance(charges_raw, list)
            and isinstance(credits_raw, list)
        ):
            raise FeeError("malformed statement: a field has the wrong type")
        statement = cls(
            period_start=start,
            period_end=end,
            currency=currency,
            exponent=exponent,
            charges=tuple(Line.from_json(x, _CHARGE_KINDS) for x in charges_raw),
            credits=tuple(Line.from_json(x, _CREDIT_KINDS) for x in credits_raw),
            minimum_charge=minimum,
            usage=usage,
        )
        kinds = [line.kind for line in statement.charges]
        shortfall = minimum - sum(
            line.amount for line in statement.charges if line.kind != "minimum"
        )
        expected = ["source_storage", "transfer"] + (["minimum"] if shortfall > 0 else [])
        if kinds != expected or (shortfall > 0 and statement.charges[-1].amount != shortfall):
            raise FeeError("statement charges are not the lines compute_statement makes")
        if [line.kind for line in statement.credits] != list(_CREDIT_KINDS):
            raise FeeError("statement credits are not the lines compute_statement makes")
        for key, value in (
            ("charges_total", statement.charges_total),
            ("credits_total", statement.credits_total),
            ("balance", statement.balance),
        ):
            if raw.get(key, value) != value:
                raise FeeError(f"statement {key} {raw.get(key)!r} does not add up to {value}")
        return statement


def _check_no_overlap(samples: Sequence[UsageSample]) -> None:
    """Samples sorted by start; refuse two that share a second (it would be billed twice)."""
    for before, after in itertools.pairwise(samples):
        if after.start < before.end:
            raise FeeError(
                f"usage reports overlap: [{before.start}, {before.end}) and "
                f"[{after.start}, {after.end}); the same time cannot be billed twice"
            )


def compute_statement(
    history: Iterable[UsageSample],
    price_book: PriceBook,
    period_start: int,
    period_end: int,
    *,
    contributed: Allocations | None = None,
    late: Iterable[UsageSample] = (),
) -> Statement:
    """The statement of one node for ``[period_start, period_end)`` (claims 28, 29).

    ``history``: the node's usage reports, in any order, and it may reach outside the
    period (only the overlap counts, see the module docstring).  ``contributed``: the
    node's allocations; when given, credited target holdings are capped at its
    ``target_bytes`` (None: no cap, e.g. an open grid).  ``late``: reports no earlier
    statement counted although they reach back before this period (they arrived after
    the periods they cover were closed: a node off for days, an authority down past
    its settle time); what lies before ``period_start`` is billed here, so no time and
    no counter is lost, and nothing twice (the caller passes only reports no earlier
    invoice counted).  Raises FeeError for an empty period or overlapping reports.
    """
    if not (_is_count(period_start) and _is_count(period_end)) or period_end <= period_start:
        raise FeeError(f"billing period covers no time: [{period_start}, {period_end})")
    samples = sorted(history, key=UsageSample.sort_key)
    overdue = sorted((x for x in late if x.start < period_start), key=UsageSample.sort_key)
    in_history = set(samples)
    only_late = [x for x in overdue if x not in in_history]
    _check_no_overlap(sorted([*samples, *only_late], key=UsageSample.sort_key))
    cap = None if contributed is None else contributed.target_bytes

    counted = 0
    source_bs = target_bs = credited_bs = 0
    sent = received = served = cpu = 0
    for sample in samples:
        overlap = min(sample.end, period_end) - max(sample.start, period_start)
        ends_here = period_start < sample.end <= period_end
        if overlap <= 0 and not ends_here:
            continue
        counted += 1
        if overlap > 0:
            source_bs += sample.source_bytes * overlap
            target_bs += sample.target_bytes * overlap
            held = sample.target_bytes if cap is None else min(sample.target_bytes, cap)
            credited_bs += held * overlap
        if ends_here:
            sent += sample.sent_bytes
            received += sample.received_bytes
            served += sample.served_bytes
            cpu += sample.cpu_seconds
    for sample in overdue:  # only the part before the period: the loop above has the rest
        counted += not (sample.end > period_start and sample in in_history)
        before = min(sample.end, period_start) - sample.start
        source_bs += sample.source_bytes * before
        target_bs += sample.target_bytes * before
        held = sample.target_bytes if cap is None else min(sample.target_bytes, cap)
        credited_bs += held * before
        if sample.end <= period_start:  # counters go with the end, which no period billed
            sent += sample.sent_bytes
            received += sample.received_bytes
            served += sample.served_bytes
            cpu += sample.cpu_seconds

    usage = Usage(
        samples=counted,
        source_byte_seconds=source_bs,
        target_byte_seconds=target_bs,
        target_byte_seconds_credited=credited_bs,
        sent_bytes=sent,
        received_bytes=received,
        served_bytes=served,
        cpu_seconds=cpu,
    )
    charges = [
        Line.priced("source_storage", source_bs, price_book.source_gb_month),
        Line.priced("transfer", sent + received, price_book.transfer_gb),
    ]
    shortfall = price_book.minimum_charge - sum(line.amount for line in charges)
    if shortfall > 0:
        charges.append(Line("minimum", 1, Decimal(shortfall), shortfall))
    credits = (
        Line.priced("target_storage", credited_bs, price_book.target_gb_month_credit),
        Line.priced("served", served, price_book.served_gb_credit),
    )
    return Statement(
        period_start=period_start,
        period_end=period_end,
        currency=price_book.currency,
        exponent=price_book.exponent,
        charges=tuple(charges),
        credits=credits,
        minimum_charge=price_book.minimum_charge,
        usage=usage,
    )


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


@attrs.frozen
class Invoice:
    """A payment request (claim 26): a statement addressed to one node, numbered, dated
    and signed with the authority's Ed25519 grid key.

    The signature covers a context prefix (so it can never pass for a certificate or a
    revocation, which the same key signs) and the msgpack of
    ``[node_id, number, issued, statement canonical JSON]``; the statement is signed as
    its canonical JSON so that the bytes signed are the bytes anyone recomputing it
    from the history gets.  A negative balance makes it a credit note.
    """

    node_id: bytes
    number: int
    issued: int  # unix seconds
    statement: Statement
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        return _INVOICE_CONTEXT + _pack(
            [self.node_id, self.number, self.issued, self.statement.canonical_json()]
        )

    def verify(self, authority_key: bytes) -> bool:
        """True when the authority whose public key is ``authority_key`` signed exactly
        this invoice."""
        return verify(authority_key, self.signed_bytes(), self.signature)

    def encode(self) -> bytes:
        """The invoice as sent to the node (msgpack; ``decode`` reads it back)."""
        return _pack(
            [
                self.node_id,
                self.number,
                self.issued,
                self.statement.canonical_json(),
                self.signature,
            ]
        )

    @classmethod
    def decode(cls, raw: bytes) -> Invoice:
        """Parse an encoded invoice (FeeError if malformed; the signature is ``verify``'s)."""
        try:
            fields = msgpack.unpackb(raw, raw=False, max_array_len=8, max_map_len=0)
            node_id, number, issued, statement_json, signature = fields
            statement = Statement.from_json(json.loads(statement_json))
        except FeeError:
            raise
        except Exception as exc:
            raise FeeError(f"malformed invoice: {type(exc).__name__}") from None
        return cls._checked(node_id, number, issued, statement, signature)

    @classmethod
    def _checked(
        cls, node_id: Any, number: Any, issued: Any, statement: Statement, signature: Any
    ) -> Invoice:
        if not (
            isinstance(node_id, bytes)
            and len(node_id) == 32
            and _is_count(number)
            and _is_count(issued)
            and isinstance(signature, bytes)
            and len(signature) == 64
        ):
            raise FeeError("malformed invoice: a field has the wrong type or size")
        return cls(node_id, number, issued, statement, signature)

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id.hex(),
            "number": self.number,
            "issued": self.issued,
            "statement": self.statement.to_json(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Invoice:
        try:
            node_id = bytes.fromhex(raw["node_id"])
            signature = bytes.fromhex(raw["signature"])
            number, issued = raw["number"], raw["issued"]
            statement = Statement.from_json(raw["statement"])
        except FeeError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise FeeError(f"malformed invoice: {type(exc).__name__}") from None
        return cls._checked(node_id, number, issued, statement, signature)


def issue_invoice(
    authority: SigningKey, *, node_id: bytes, number: int, issued: int, statement: Statement
) -> Invoice:
    """Sign ``statement`` into payment request ``number`` for ``node_id``."""
    unsigned = Invoice(node_id, number, issued, statement)
    signature = sign(authority, unsigned.signed_bytes())
    return Invoice._checked(node_id, number, issued, statement, signature)
