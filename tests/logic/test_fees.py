"""The fee module and the price book (issue 9, claims 26, 28, 29).

Hand-computed statements pin the rules (integration over time, attribution of counters
to the period holding a report's end, half-even rounding per line, the minimum before
credits, the allocation cap on credited holdings); property tests check what must hold
for any history: more usage never lowers the charges, more contribution never raises the
balance, order and recomputation change nothing, periods add up, amounts are ints, and a
signed invoice verifies while a tampered one does not.
"""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from gridnode.authority.fees import (
    SECONDS_PER_MONTH,
    FeeError,
    Invoice,
    Statement,
    UsageSample,
    compute_statement,
    format_amount,
    issue_invoice,
)
from gridnode.authority.pricebook import (
    DEFAULT_PRICE_BOOK,
    DEFAULT_PRICE_BOOK_TOML,
    PriceBook,
    PriceBookError,
    parse_price_book,
)
from protocol import Allocations

GB = 10**9
DAY = 86_400
MONTH = SECONDS_PER_MONTH
assert MONTH == 30 * DAY

#: Round numbers so that the statements below can be computed by hand: 50 cents per
#: GB-month stored, 2 cents per GB transferred, 20 cents per GB-month held for others,
#: 1 cent per GB served, a minimum of 1.00 EUR per period.
BOOK_TOML = """
currency = "EUR"
exponent = 2
[prices]
source_gb_month = "50"
transfer_gb = "2"
minimum_charge = "100"
[credits]
target_gb_month = "20"
served_gb = "1"
"""
BOOK = parse_price_book(BOOK_TOML)

AUTHORITY = SigningKey(b"\x01" * 32)
AUTHORITY_KEY = bytes(AUTHORITY.verify_key)
NODE = b"\x02" * 32


def amounts(statement: Statement) -> dict[str, int]:
    return {line.kind: line.amount for line in (*statement.charges, *statement.credits)}


# --- hand-computed statements ----------------------------------------------------------------


def test_source_only_node() -> None:
    """30 GB for 10 days then 60 GB for 20 days: 30*(1/3) + 60*(2/3) = 50 GB-months at
    50 = 2500; 0.75 GB sent + 0.5 GB received = 1.25 GB at 2 = 2.5, rounded half to even
    to 2.  Total 2502, above the minimum, no credits."""
    history = [
        UsageSample(0, 10 * DAY, source_bytes=30 * GB, sent_bytes=750_000_000),
        UsageSample(10 * DAY, MONTH, source_bytes=60 * GB, received_bytes=500_000_000),
    ]
    statement = compute_statement(history, BOOK, 0, MONTH)
    assert amounts(statement) == {
        "source_storage": 2500,
        "transfer": 2,
        "target_storage": 0,
        "served": 0,
    }
    assert (statement.charges_total, statement.credits_total, statement.balance) == (2502, 0, 2502)
    doc = statement.to_json()
    assert doc["period"] == {"start": 0, "end": MONTH}
    assert doc["currency"] == "EUR"
    assert (doc["balance"], doc["balance_text"]) == (2502, "25.02")
    storage = doc["charges"][0]
    assert storage["kind"] == "source_storage"
    assert (storage["quantity"], storage["unit"], storage["unit_price"]) == (
        "50.000000",
        "GB-month",
        "50",
    )
    assert storage["basis"] == 30 * GB * 10 * DAY + 60 * GB * 20 * DAY
    assert (storage["amount"], storage["amount_text"]) == (2500, "25.00")
    assert doc["charges"][1]["quantity"] == "1.250000"
    assert doc["usage"]["sent_bytes"] == 750_000_000


def test_target_only_node_earns_more_than_it_is_charged() -> None:
    """500 GB held all month: 500 GB-months at 20 = 10000; 100 GB served at 1 = 100.
    Transfer 100 GB sent + 200 GB received at 2 = 600.  Balance 600 - 10100 = -9500:
    the grid owes the node 95.00.  Its plan allots 400 GB of target storage, so with the
    allocation given only 400 GB-months are credited: 8000 + 100, balance -7500."""
    history = [
        UsageSample(
            0,
            MONTH,
            target_bytes=500 * GB,
            sent_bytes=100 * GB,
            received_bytes=200 * GB,
            served_bytes=100 * GB,
        )
    ]
    statement = compute_statement(history, BOOK, 0, MONTH)
    assert amounts(statement) == {
        "source_storage": 0,
        "transfer": 600,
        "target_storage": 10_000,
        "served": 100,
    }
    assert statement.balance == -9500
    assert statement.to_json()["balance_text"] == "-95.00"
    assert statement.to_json()["credits_total_text"] == "101.00"

    capped = compute_statement(
        history, BOOK, 0, MONTH, contributed=Allocations(target_bytes=400 * GB)
    )
    assert amounts(capped)["target_storage"] == 8000
    assert capped.balance == 600 - 8100
    assert capped.usage.target_byte_seconds == 500 * GB * MONTH
    assert capped.usage.target_byte_seconds_credited == 400 * GB * MONTH


def test_node_under_the_minimum_charge() -> None:
    """1 GB for 15 days = 0.5 GB-months at 50 = 25; 1.75 GB sent at 2 = 3.5, half to even
    gives 4; charges 29, topped up by 71 to the minimum 100.  0.5 GB held all month at
    20 = 10; 0.5 GB served at 1 = 0.5, half to even gives 0.  The minimum applies before
    credits: balance 100 - 10 = 90, not max(29 - 10, 100) = 100."""
    history = [
        UsageSample(0, 15 * DAY, source_bytes=GB, target_bytes=GB // 2, sent_bytes=1_750_000_000),
        UsageSample(15 * DAY, MONTH, target_bytes=GB // 2, served_bytes=GB // 2),
    ]
    statement = compute_statement(history, BOOK, 0, MONTH)
    assert amounts(statement) == {
        "source_storage": 25,
        "transfer": 4,
        "minimum": 71,
        "target_storage": 10,
        "served": 0,
    }
    assert (statement.charges_total, statement.credits_total, statement.balance) == (100, 10, 90)
    doc = statement.to_json()
    assert doc["charges"][-1]["what"] == "minimum charge top-up"
    assert (doc["minimum_charge"], doc["balance_text"]) == (100, "0.90")


def test_a_node_with_no_usage_owes_the_minimum() -> None:
    statement = compute_statement([], BOOK, 0, MONTH)
    assert (statement.charges_total, statement.balance) == (100, 100)
    assert statement.usage.samples == 0


def test_reports_straddling_periods_are_split_by_time_and_counters_go_to_the_end() -> None:
    """A report over [20 days, 40 days) with 3 GB: 10 days in each 30-day period, 1 GB-month
    each (50); its 1 GB sent counts whole in the period holding its end (2)."""
    history = [UsageSample(20 * DAY, 40 * DAY, source_bytes=3 * GB, sent_bytes=GB)]
    first = compute_statement(history, BOOK, 0, MONTH)
    second = compute_statement(history, BOOK, MONTH, 2 * MONTH)
    assert (amounts(first)["source_storage"], amounts(first)["transfer"]) == (50, 0)
    assert (amounts(second)["source_storage"], amounts(second)["transfer"]) == (50, 2)
    assert first.usage.samples == second.usage.samples == 1
    # A report ending exactly at a period's start belongs to the period before.
    edge = [UsageSample(MONTH - DAY, MONTH, sent_bytes=GB)]
    assert compute_statement(edge, BOOK, 0, MONTH).usage.sent_bytes == GB
    assert compute_statement(edge, BOOK, MONTH, 2 * MONTH).usage.samples == 0


def test_fractional_prices_of_the_default_book() -> None:
    """0.4 cents per GB-month: 100 GB for a month = 40 cents; 0.1 cents per GB: 25 GB = 2.5
    cents -> 2; minimum 1.00 EUR tops up 58.  0.2 credit per GB-month held on 50 GB: 10."""
    history = [
        UsageSample(0, MONTH, source_bytes=100 * GB, target_bytes=50 * GB, sent_bytes=25 * GB)
    ]
    statement = compute_statement(history, DEFAULT_PRICE_BOOK, 0, MONTH)
    assert amounts(statement) == {
        "source_storage": 40,
        "transfer": 2,
        "minimum": 58,
        "target_storage": 10,
        "served": 0,
    }
    assert statement.to_json()["charges"][0]["unit_price"] == "0.4"


def test_overlapping_reports_are_refused() -> None:
    history = [UsageSample(0, 100, source_bytes=1), UsageSample(99, 200, source_bytes=1)]
    with pytest.raises(FeeError, match="overlap"):
        compute_statement(history, BOOK, 0, MONTH)
    with pytest.raises(FeeError, match="overlap"):
        compute_statement([history[0], history[0]], BOOK, 0, MONTH)


@pytest.mark.parametrize(
    "fields",
    [
        {"start": 10, "end": 10},
        {"start": 10, "end": 5},
        {"start": 0, "end": 1, "source_bytes": -1},
        {"start": 0, "end": 1, "sent_bytes": 1.5},
        {"start": 0, "end": 1, "served_bytes": True},
        {"start": 0, "end": 1, "cpu_seconds": 1 << 63},
    ],
)
def test_malformed_usage_samples_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(FeeError):
        UsageSample(**fields)


def test_empty_billing_period_is_refused() -> None:
    with pytest.raises(FeeError, match="no time"):
        compute_statement([], BOOK, MONTH, MONTH)


def test_format_amount() -> None:
    assert format_amount(1234, 2) == "12.34"
    assert format_amount(-5, 2) == "-0.05"
    assert format_amount(0, 2) == "0.00"
    assert format_amount(7, 0) == "7"
    assert format_amount(1, 3) == "0.001"


# --- invoices --------------------------------------------------------------------------------


def _invoice() -> Invoice:
    history = [UsageSample(0, MONTH, source_bytes=70 * GB, target_bytes=10 * GB)]
    statement = compute_statement(history, BOOK, 0, MONTH)
    return issue_invoice(AUTHORITY, node_id=NODE, number=7, issued=MONTH + 60, statement=statement)


def test_invoice_verifies_and_round_trips() -> None:
    invoice = _invoice()
    assert invoice.verify(AUTHORITY_KEY)
    assert not invoice.verify(bytes(SigningKey(b"\x03" * 32).verify_key))
    decoded = Invoice.decode(invoice.encode())
    assert decoded == invoice and decoded.verify(AUTHORITY_KEY)
    from_json = Invoice.from_json(json.loads(json.dumps(invoice.to_json())))
    assert from_json == invoice and from_json.verify(AUTHORITY_KEY)


def test_tampered_invoices_do_not_verify() -> None:
    invoice = _invoice()
    cheaper = compute_statement(
        [UsageSample(0, MONTH, source_bytes=GB)], BOOK, invoice.statement.period_start, MONTH
    )
    flipped = bytes([invoice.signature[0] ^ 1]) + invoice.signature[1:]
    for tampered in (
        attrs.evolve(invoice, number=8),
        attrs.evolve(invoice, node_id=b"\x04" * 32),
        attrs.evolve(invoice, issued=invoice.issued + 1),
        attrs.evolve(invoice, statement=cheaper),
        attrs.evolve(invoice, signature=flipped),
    ):
        assert not tampered.verify(AUTHORITY_KEY)


def test_an_edited_statement_amount_is_refused_when_read() -> None:
    doc = _invoice().to_json()
    doc["statement"]["charges"][0]["amount"] -= 100
    with pytest.raises(FeeError, match="amount"):
        Invoice.from_json(doc)
    doc = _invoice().to_json()
    doc["statement"]["balance"] = 0
    with pytest.raises(FeeError, match="balance"):
        Invoice.from_json(doc)
    with pytest.raises(FeeError):
        Invoice.decode(b"\x93\x01\x02\x03")


# --- the price book --------------------------------------------------------------------------


def test_default_price_book_parses_with_plans() -> None:
    book = DEFAULT_PRICE_BOOK
    assert (book.currency, book.exponent, book.minimum_charge) == ("EUR", 2, 100)
    assert book.source_gb_month == Decimal("0.4")
    assert set(book.plans) == {"small", "standard", "large"}
    assert book.default_plan == "standard"
    assert book.plans["standard"].source_bytes == 100 * GB
    assert book.plans["large"].network_bytes_month == 10 * 10**12
    assert parse_price_book(DEFAULT_PRICE_BOOK_TOML) == book


def test_plans_take_sizes_and_integers(tmp_path: Path) -> None:
    text = BOOK_TOML + (
        '[plans.home]\nsource_bytes = "1.5TiB"\ntarget_bytes = 4096\n'
        'bandwidth_bps = "100M"\ncpu_seconds_month = 3600\n'
    )
    path = tmp_path / "pricebook.toml"
    path.write_text(text)
    book = PriceBook.load(path)
    assert book.plans == {
        "home": Allocations(
            source_bytes=3 * 2**39,
            target_bytes=4096,
            bandwidth_bps=100_000_000,
            network_bytes_month=0,
            cpu_seconds_month=3600,
        )
    }
    assert book.default_plan == "home"
    assert book.to_json()["plans"]["home"]["target_bytes"] == 4096


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('source_gb_month = "50"', 'source_gb_month = "-1"'), "prices.source_gb_month"),
        (('served_gb = "1"', "served_gb = 0.1"), "credits.served_gb: .*float"),
        (('transfer_gb = "2"', 'transfer_gb = "two"'), "prices.transfer_gb"),
        (('transfer_gb = "2"', 'transfer_gb = "NaN"'), "prices.transfer_gb"),
        (('transfer_gb = "2"', 'transfer_gb = "1E-20"'), "prices.transfer_gb: at most"),
        (('transfer_gb = "2"', 'transfer_gb = "2"\ntransfer_gbb = "1"'), "prices.transfer_gbb"),
        (('served_gb = "1"', ""), "credits.served_gb: missing"),
        (('minimum_charge = "100"', 'minimum_charge = "99.5"'), "prices.minimum_charge"),
        (('currency = "EUR"', 'currency = "euro"'), "currency"),
        (("exponent = 2", "exponent = 2\ncolour = 1"), "colour"),
        (("exponent = 2", "exponent = 2.0"), "exponent"),
        (("exponent = 2", 'exponent = 2\ndefault_plan = "gold"'), "default_plan"),
    ],
)
def test_bad_price_books_name_the_key(change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in BOOK_TOML
    with pytest.raises(PriceBookError, match=message):
        parse_price_book(BOOK_TOML.replace(old, new))


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ('[plans.a]\nsource_bytes = "50 parsecs"', "plans.a.source_bytes"),
        ("[plans.a]\nsource_bytes = -1", "plans.a.source_bytes"),
        ("[plans.a]\nsource_bytes = 1.5", "plans.a.source_bytes"),
        ('[plans.a]\ncpu_seconds_month = "1GB"', "plans.a.cpu_seconds_month"),
        ("[plans.a]\nstorage = 1", "plans.a.storage"),
        ('[plans.a]\ntarget_bytes = "100000PB"', "plans.a.target_bytes"),
        ('[plans."has space"]\nsource_bytes = 1', "plans.has space"),
    ],
)
def test_bad_plans_name_the_key(plan: str, message: str) -> None:
    with pytest.raises(PriceBookError, match=message):
        parse_price_book(BOOK_TOML + plan)


def test_unreadable_price_book_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pricebook.toml"
    path.write_text("currency = ")
    with pytest.raises(PriceBookError, match=r"pricebook\.toml"):
        PriceBook.load(path)
    with pytest.raises(PriceBookError, match="cannot read"):
        PriceBook.load(tmp_path / "missing.toml")


# --- properties ------------------------------------------------------------------------------

_FIGURES = ("source_bytes", "target_bytes", "sent_bytes", "received_bytes", "served_bytes")


@st.composite
def histories(draw: st.DrawFn) -> list[UsageSample]:
    """Consecutive reports with gaps, up to 10 TB stored and 1 TB moved per report."""
    samples: list[UsageSample] = []
    t = draw(st.integers(0, 3 * MONTH))
    for _ in range(draw(st.integers(0, 8))):
        t += draw(st.sampled_from([0, 0, 1, 3600, DAY]))
        length = draw(st.integers(1, MONTH // 2))
        samples.append(
            UsageSample(
                t,
                t + length,
                source_bytes=draw(st.integers(0, 10 * 10**12)),
                target_bytes=draw(st.integers(0, 10 * 10**12)),
                sent_bytes=draw(st.integers(0, 10**12)),
                received_bytes=draw(st.integers(0, 10**12)),
                served_bytes=draw(st.integers(0, 10**12)),
                cpu_seconds=draw(st.integers(0, 10**6)),
            )
        )
        t += length
    return samples


_prices = st.decimals(min_value=0, max_value=1000, places=3, allow_nan=False, allow_infinity=False)


@st.composite
def price_books(draw: st.DrawFn) -> PriceBook:
    return PriceBook(
        currency="EUR",
        exponent=draw(st.integers(0, 3)),
        source_gb_month=draw(_prices),
        transfer_gb=draw(_prices),
        target_gb_month_credit=draw(_prices),
        served_gb_credit=draw(_prices),
        minimum_charge=draw(st.integers(0, 10_000)),
    )


@st.composite
def periods(draw: st.DrawFn) -> tuple[int, int]:
    start = draw(st.integers(0, 4 * MONTH))
    return start, start + draw(st.integers(1, 2 * MONTH))


_caps = st.none() | st.integers(0, 10 * 10**12).map(lambda b: Allocations(target_bytes=b))


def _all_amounts(doc: Any) -> list[Any]:
    """Every figure named like an amount in a statement's JSON."""
    found: list[Any] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in {"amount", "balance", "charges_total", "credits_total", "minimum_charge"}:
                found.append(value)
            found.extend(_all_amounts(value))
    elif isinstance(doc, list):
        for value in doc:
            found.extend(_all_amounts(value))
    return found


@settings(max_examples=60, deadline=None)
@given(histories(), price_books(), periods(), _caps, st.randoms(use_true_random=False))
def test_recomputed_shuffled_statement_is_identical(
    history: list[UsageSample],
    book: PriceBook,
    period: tuple[int, int],
    cap: Allocations | None,
    rnd: random.Random,
) -> None:
    first = compute_statement(history, book, *period, contributed=cap)
    shuffled = list(history)
    rnd.shuffle(shuffled)
    again = compute_statement(iter(shuffled), book, *period, contributed=cap)
    assert again == first
    assert again.canonical_json() == first.canonical_json()
    doc = json.loads(first.canonical_json())
    assert Statement.from_json(doc) == first
    found = _all_amounts(doc)
    assert found and all(type(v) is int for v in found)
    assert (
        first.balance
        == max(
            first.charges_total - sum(x.amount for x in first.charges if x.kind == "minimum"),
            book.minimum_charge,
        )
        - first.credits_total
    )


@settings(max_examples=60, deadline=None)
@given(
    histories().filter(bool),
    price_books(),
    periods(),
    _caps,
    st.data(),
)
def test_more_usage_never_lowers_the_charges(
    history: list[UsageSample],
    book: PriceBook,
    period: tuple[int, int],
    cap: Allocations | None,
    data: st.DataObject,
) -> None:
    i = data.draw(st.integers(0, len(history) - 1))
    field = data.draw(st.sampled_from(["source_bytes", "sent_bytes", "received_bytes"]))
    delta = data.draw(st.integers(0, 10**13))
    more = list(history)
    more[i] = attrs.evolve(more[i], **{field: getattr(more[i], field) + delta})
    before = compute_statement(history, book, *period, contributed=cap)
    after = compute_statement(more, book, *period, contributed=cap)
    assert after.charges_total >= before.charges_total
    assert after.balance >= before.balance
    assert after.credits_total == before.credits_total


@settings(max_examples=60, deadline=None)
@given(histories().filter(bool), price_books(), periods(), _caps, st.data())
def test_more_contribution_never_raises_the_balance(
    history: list[UsageSample],
    book: PriceBook,
    period: tuple[int, int],
    cap: Allocations | None,
    data: st.DataObject,
) -> None:
    i = data.draw(st.integers(0, len(history) - 1))
    field = data.draw(st.sampled_from(["target_bytes", "served_bytes"]))
    delta = data.draw(st.integers(0, 10**13))
    more = list(history)
    more[i] = attrs.evolve(more[i], **{field: getattr(more[i], field) + delta})
    before = compute_statement(history, book, *period, contributed=cap)
    after = compute_statement(more, book, *period, contributed=cap)
    assert after.balance <= before.balance
    assert after.charges_total == before.charges_total
    # A larger allotment of contributed storage never raises it either.
    if cap is not None:
        bigger = Allocations(target_bytes=cap.target_bytes + delta)
        assert compute_statement(more, book, *period, contributed=bigger).balance <= after.balance


@settings(max_examples=60, deadline=None)
@given(histories(), st.integers(0, 5 * MONTH), st.integers(1, MONTH), st.integers(1, MONTH))
def test_consecutive_periods_add_up_to_the_whole(
    history: list[UsageSample], start: int, first: int, second: int
) -> None:
    """Storage is split by time and counters land in exactly one period, so the usage of
    [a, b) and [b, c) sums to the usage of [a, c): nothing counted twice or lost."""
    a, b, c = start, start + first, start + first + second
    whole = compute_statement(history, BOOK, a, c).usage
    left = compute_statement(history, BOOK, a, b).usage
    right = compute_statement(history, BOOK, b, c).usage
    for name in attrs.fields_dict(type(whole)):
        if name != "samples":
            assert getattr(left, name) + getattr(right, name) == getattr(whole, name), name


@settings(max_examples=60, deadline=None)
@given(histories().filter(bool), periods(), st.data())
def test_splitting_a_report_changes_no_amount(
    history: list[UsageSample], period: tuple[int, int], data: st.DataObject
) -> None:
    """Byte-months are integrated, then rounded once per line: reporting the same figures
    in two halves (counters with the second half, which keeps the end) bills the same."""
    i = data.draw(st.integers(0, len(history) - 1))
    sample = history[i]
    if sample.end - sample.start < 2:
        return
    cut = data.draw(st.integers(sample.start + 1, sample.end - 1))
    first = UsageSample(
        sample.start, cut, source_bytes=sample.source_bytes, target_bytes=sample.target_bytes
    )
    split = [*history[:i], first, attrs.evolve(sample, start=cut), *history[i + 1 :]]
    before = compute_statement(history, DEFAULT_PRICE_BOOK, *period)
    after = compute_statement(split, DEFAULT_PRICE_BOOK, *period)
    assert (after.charges, after.credits) == (before.charges, before.credits)


@settings(max_examples=30, deadline=None)
@given(
    histories(),
    periods(),
    st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.binary(min_size=32, max_size=32),
    st.data(),
)
def test_invoices_verify_and_tampering_is_caught(
    history: list[UsageSample],
    period: tuple[int, int],
    number: int,
    issued: int,
    node_id: bytes,
    data: st.DataObject,
) -> None:
    statement = compute_statement(history, DEFAULT_PRICE_BOOK, *period)
    invoice = issue_invoice(
        AUTHORITY, node_id=node_id, number=number, issued=issued, statement=statement
    )
    assert invoice.verify(AUTHORITY_KEY)
    assert Invoice.decode(invoice.encode()).verify(AUTHORITY_KEY)
    field = data.draw(st.sampled_from(["number", "issued", "period_end", "signature"]))
    if field == "signature":
        at = data.draw(st.integers(0, 63))
        sig = bytearray(invoice.signature)
        sig[at] ^= 1 << data.draw(st.integers(0, 7))
        tampered = attrs.evolve(invoice, signature=bytes(sig))
    elif field == "period_end":
        tampered = attrs.evolve(
            invoice, statement=attrs.evolve(statement, period_end=statement.period_end + 1)
        )
    else:
        tampered = attrs.evolve(invoice, **{field: getattr(invoice, field) + 1})
    assert not tampered.verify(AUTHORITY_KEY)
