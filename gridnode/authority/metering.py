"""Metering (claims 26, 28, 29): signed usage reports in, usage history, statements and
invoices out.  The authority's side; ``reporting`` is the node's.

A usage report is signed by the node that made it (its Ed25519 node key) over a context
prefix and the canonical msgpack of: grid id, node id, sequence number, the interval
``[start, end)`` it covers (unix seconds) and what the node measured over it: source
bytes (its packets on the grid, redundancy included), target bytes (packets it holds
for others), grid bytes sent and received, bytes served as a target, CPU seconds, and
how many bytes it placed with each target (``placed``: what lets the authority
cross-check what targets claim to hold).

What the authority checks before it keeps one (``Metering.accept``), each refusal an
``Error`` with a stable code:

- ``bad_report``: it does not decode, or its figures are not counts;
- ``wrong_node``: it names a node other than the session's authenticated peer (nobody
  can report for anybody else), ``wrong_grid``: another grid's;
- ``bad_signature``: the node's key did not sign exactly these bytes;
- ``not_subscribed``: the node has no contract;
- ``replayed``: this very report is already stored;
- ``out_of_order``: its sequence number, or a later one, is already stored;
- ``overlapping``: it covers time an earlier report covered (billing it would count
  the same seconds twice); ``from_the_future``: it ends after now (five minutes' skew).

The history (``usage_reports``) is append-only: triggers in the schema refuse UPDATE
and DELETE, and this module only inserts.  Cross-check (cheap: one row per node, the
latest report of each): a target claiming more target bytes than the sources' latest
reports say they placed with it (beyond a tolerance for reports made at different
moments) is flagged ``unvouched_holdings``; one claiming more than its certificate's
target allotment is flagged ``over_allotment`` (the fee module credits it only up to
the allotment anyway).  Flags are shown, never acted on: the operator decides.

Billing periods are ``[epoch + i * P, epoch + (i + 1) * P)``, ``P`` the
``billing_period_s`` config key, ``epoch`` the moment metering first ran (kept in the
database).  A period is closed, and each node whose contract ran during it gets a signed
invoice (``fees.compute_statement`` + ``fees.issue_invoice``), once every node that
reports has reported past its end, or once a settle time (two report intervals, a
quarter of an hour at least, a period at most) has passed since its end and the
authority has been up for it (a quarter of an hour at most): a restarted authority first
gives the nodes time to deliver the reports they queued while it was down.  An invoice
records the last sequence number it counted (``through_sequence``), so it can be
recomputed from the history to the same bytes.  A report arriving after the period it
covers was closed (a node off for days, the authority down past its settle time) is
billed whole in the next invoice: the reports after the previous invoice's
``through_sequence`` that reach back before the period are its late ones
(``fees.compute_statement(late=...)``), so no time is lost and none is billed twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import msgpack
import trio
from nacl.signing import SigningKey

from protocol import (
    Account,
    Allocations,
    GetAccount,
    Message,
    UsageAccepted,
    UsageReport,
    format_node_id,
    short_node_id,
    sign,
    verify,
)

from ..errors import GridError, RemoteError
from ..log import get_logger
from . import AUTHORITY_DB_NAME, AUTHORITY_KEY_NAME, PRICE_BOOK_NAME
from .db import AuthorityDB, allocations_from
from .fees import FeeError, Invoice, UsageSample, compute_statement, issue_invoice
from .keys import load_authority_key
from .pricebook import PriceBook, PriceBookError

__all__ = [
    "MAX_PLACED",
    "Metering",
    "MeteringError",
    "SignedUsage",
    "sign_usage",
    "usage_figures",
]

_log = get_logger()

_REPORT_CONTEXT: Final = b"gridnode usage report v1\x00"
#: Targets listed in one report's ``placed``: a node placing on more lists the largest.
MAX_PLACED: Final = 4096
#: Invoices in one account answer (the newest); the rest stay in the database.
ACCOUNT_INVOICES: Final = 24
#: A report may end this far after the authority's clock (clock skew).
_SKEW_S: Final = 300
#: Holdings within this of what sources vouch for are not flagged: sources and targets
#: report at different moments, and recovery roots ride beside packets.
_TOLERANCE_BYTES: Final = 64 * 1024 * 1024
#: Billing periods closed in one pass at most (an authority down for years catches up
#: over several passes instead of one long transaction).
_PERIODS_PER_PASS: Final = 64
_MAX_COUNT: Final = (1 << 63) - 1
_EMPTY_USAGE: Final = {
    "source_bytes": 0,
    "target_bytes": 0,
    "sent_bytes": 0,
    "received_bytes": 0,
    "served_bytes": 0,
    "cpu_seconds": 0,
    "reports": 0,
    "last_sequence": 0,
    "last_report_end": None,
}


class MeteringError(GridError):
    """A usage report or account request refused; ``code`` goes on the wire."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _is_count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _MAX_COUNT


# --- the signed report ----------------------------------------------------------------------


@attrs.frozen
class SignedUsage:
    """One usage report as the node signed it (see the module docstring)."""

    grid_id: bytes
    node_id: bytes
    sequence: int
    sample: UsageSample
    placed: tuple[tuple[bytes, int], ...] = ()
    signature: bytes = b""

    def _body(self) -> list[Any]:
        s = self.sample
        return [
            self.grid_id,
            self.node_id,
            self.sequence,
            s.start,
            s.end,
            s.source_bytes,
            s.target_bytes,
            s.sent_bytes,
            s.received_bytes,
            s.served_bytes,
            s.cpu_seconds,
            [[target, size] for target, size in self.placed],
        ]

    def signed_bytes(self) -> bytes:
        return _REPORT_CONTEXT + _pack(self._body())

    def encode(self) -> bytes:
        return _pack([*self._body(), self.signature])

    def signed_by_its_node(self) -> bool:
        return verify(self.node_id, self.signed_bytes(), self.signature)

    @classmethod
    def decode(cls, raw: bytes) -> SignedUsage:
        """Parse a report (MeteringError ``bad_report``); the signature is checked by
        ``signed_by_its_node``."""
        try:
            fields = msgpack.unpackb(
                raw,
                raw=False,
                max_array_len=MAX_PLACED + 16,
                max_map_len=0,
                max_bin_len=64,
                max_str_len=0,
            )
        except Exception as exc:
            raise MeteringError(
                "bad_report", f"malformed usage report: {type(exc).__name__}"
            ) from None
        if not isinstance(fields, list) or len(fields) != 13:
            raise MeteringError("bad_report", "malformed usage report: not a 13-field list")
        grid_id, node_id, sequence, *figures, placed, signature = fields
        if not (
            isinstance(grid_id, bytes)
            and isinstance(node_id, bytes)
            and len(node_id) == 32
            and _is_count(sequence)
            and sequence > 0
            and isinstance(placed, list)
            and len(placed) <= MAX_PLACED
            and isinstance(signature, bytes)
            and len(signature) == 64
        ):
            raise MeteringError("bad_report", "malformed usage report: a field is wrong")
        pairs: list[tuple[bytes, int]] = []
        for item in placed:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], bytes)
                and len(item[0]) == 32
                and _is_count(item[1])
            ):
                raise MeteringError("bad_report", "malformed usage report: bad placed entry")
            pairs.append((item[0], item[1]))
        try:
            sample = UsageSample(*figures)
        except (FeeError, TypeError) as exc:
            raise MeteringError("bad_report", f"usage report figures: {exc}") from None
        return cls(grid_id, node_id, sequence, sample, tuple(pairs), signature)


def sign_usage(
    key: SigningKey,
    *,
    grid_id: bytes,
    sequence: int,
    sample: UsageSample,
    placed: Iterable[tuple[bytes, int]] = (),
) -> SignedUsage:
    """The node's report ``sequence`` for ``sample``, signed with its node key."""
    listed = sorted(placed, key=lambda p: (-p[1], p[0]))[:MAX_PLACED]
    unsigned = SignedUsage(grid_id, bytes(key.verify_key), sequence, sample, tuple(sorted(listed)))
    return attrs.evolve(unsigned, signature=sign(key, unsigned.signed_bytes()))


# --- reading the history --------------------------------------------------------------------


def _latest_rows(db: Any) -> dict[bytes, tuple[Any, ...]]:
    """The latest report of every node: node id -> (target bytes, placed JSON)."""
    rows = db.execute(
        "SELECT r.node_id, r.target_bytes, r.placed FROM usage_reports r JOIN "
        "(SELECT node_id, MAX(sequence) AS s FROM usage_reports GROUP BY node_id) m "
        "ON r.node_id = m.node_id AND r.sequence = m.s"
    )
    return {bytes(node): (int(target), str(placed)) for node, target, placed in rows}


def usage_figures(db: Any, node_id: bytes) -> dict[str, Any]:
    """A node's usage as the authority knows it: source and target bytes of its latest
    report (what it stores and holds now), traffic and CPU summed over every report."""
    latest = db.execute(
        "SELECT sequence, end_s, source_bytes, target_bytes FROM usage_reports "
        "WHERE node_id = ? ORDER BY sequence DESC LIMIT 1",
        (node_id,),
    ).fetchone()
    if latest is None:
        return dict(_EMPTY_USAGE)
    sums = db.execute(
        "SELECT COUNT(*), SUM(sent_bytes), SUM(received_bytes), SUM(served_bytes), "
        "SUM(cpu_seconds) FROM usage_reports WHERE node_id = ?",
        (node_id,),
    ).fetchone()
    sequence, end, source, target = latest
    count, sent, received, served, cpu = sums
    return {
        "source_bytes": int(source),
        "target_bytes": int(target),
        "sent_bytes": int(sent or 0),
        "received_bytes": int(received or 0),
        "served_bytes": int(served or 0),
        "cpu_seconds": int(cpu or 0),
        "reports": int(count),
        "last_sequence": int(sequence),
        "last_report_end": int(end),
    }


def holdings_flags(db: Any, allotted: dict[bytes, Allocations]) -> dict[bytes, list[str]]:
    """The cross-check: each node's latest claimed target bytes against what the other
    nodes' latest reports placed with it, and against its allotment."""
    latest = _latest_rows(db)
    vouched: dict[bytes, int] = {}
    for source, (_, placed_text) in latest.items():
        for target_hex, size in json.loads(placed_text).items():
            target = bytes.fromhex(target_hex)
            if target != source:
                vouched[target] = vouched.get(target, 0) + int(size)
    flags: dict[bytes, list[str]] = {}
    for node, (claimed, _) in latest.items():
        found: list[str] = []
        backed = vouched.get(node, 0)
        if claimed > backed + max(_TOLERANCE_BYTES, backed // 10):
            found.append("unvouched_holdings")
        allocation = allotted.get(node)
        if allocation is not None and allocation.target_bytes and claimed > allocation.target_bytes:
            found.append("over_allotment")
        if found:
            flags[node] = found
    return flags


def _samples(rows: Iterable[Sequence[Any]]) -> list[UsageSample]:
    return [UsageSample(*(int(v) for v in row)) for row in rows]


_SAMPLE_COLUMNS: Final = (
    "start_s, end_s, source_bytes, target_bytes, sent_bytes, received_bytes, "
    "served_bytes, cpu_seconds"
)


# --- the authority's metering ---------------------------------------------------------------


class Metering:
    """Accepts reports, closes billing periods into invoices, answers accounts.

    Synchronous and on the authority's home alone, like ``SubscriptionManager``: the
    node calls it through ``trio.to_thread`` (``serve``, ``run``); tests call it directly.
    """

    def __init__(
        self,
        home: Path,
        *,
        billing_period_s: float,
        report_interval_s: float = 3600.0,
        settle_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.home = home
        self.period_s = max(1, int(billing_period_s))
        # Reports covering a period's end arrive within a report interval of it (nodes
        # of a grid share the setting); give them two, a quarter of an hour at least,
        # never more than a period.  After a restart, nodes that queued reports retry
        # within five minutes, so a quarter of an hour of uptime suffices.
        if settle_s is None:
            settle_s = min(float(self.period_s), max(2 * report_interval_s, 900.0))
        self.settle_s = float(settle_s)
        self.uptime_s = min(self.settle_s, 900.0)
        self.clock = clock
        self.started = clock()
        self.key = load_authority_key(home / AUTHORITY_KEY_NAME)
        self.db = AuthorityDB(home / AUTHORITY_DB_NAME)
        grid_hex = self.db.meta("grid_id")
        if grid_hex is None:
            raise MeteringError("setup", f"{home / AUTHORITY_DB_NAME} names no grid id")
        self.grid_id = bytes.fromhex(grid_hex)
        epoch = self.db.meta("billing_epoch")
        if epoch is None:
            epoch = str(int(self.started))
            self.db.set_meta({"billing_epoch": epoch, "billing_closed_until": epoch})
        self.epoch = int(epoch)

    def close(self) -> None:
        self.db.close()

    @property
    def public_key(self) -> bytes:
        return bytes(self.key.verify_key)

    def _price_book(self) -> PriceBook:
        return PriceBook.load(self.home / PRICE_BOOK_NAME)

    # --- reports ------------------------------------------------------------------------------

    def accept(self, peer_id: bytes, raw: bytes) -> int:
        """Check and store one report sent by ``peer_id``; returns its sequence number."""
        report = SignedUsage.decode(raw)
        if report.node_id != peer_id:
            raise MeteringError(
                "wrong_node",
                f"the report names node {short_node_id(report.node_id)}, "
                f"not the sender {short_node_id(peer_id)}",
            )
        if report.grid_id != self.grid_id:
            raise MeteringError("wrong_grid", "the report is for another grid")
        if not report.signed_by_its_node():
            raise MeteringError("bad_signature", "the report is not signed by its node's key")
        sample, now = report.sample, self.clock()
        if sample.end > now + _SKEW_S:
            raise MeteringError("from_the_future", f"the report ends at {sample.end}, after now")
        if sample.served_bytes > sample.sent_bytes:
            # Served packets leave through the node's sessions, so they are part of what it
            # sent: a node claiming more is inflating its served-storage credit.
            raise MeteringError(
                "bad_report",
                f"the report claims {sample.served_bytes} bytes served but only "
                f"{sample.sent_bytes} sent",
            )
        placed = json.dumps({t.hex(): size for t, size in report.placed}, sort_keys=True)
        with self.db.transaction() as db:
            if AuthorityDB.subscription_in(db, peer_id) is None:
                raise MeteringError("not_subscribed", "this node has no subscription")
            last = db.execute(
                "SELECT sequence, end_s FROM usage_reports WHERE node_id = ? "
                "ORDER BY sequence DESC LIMIT 1",
                (peer_id,),
            ).fetchone()
            if last is not None:
                last_sequence, last_end = int(last[0]), int(last[1])
                if report.sequence <= last_sequence:
                    stored = db.execute(
                        "SELECT encoded FROM usage_reports WHERE node_id = ? AND sequence = ?",
                        (peer_id, report.sequence),
                    ).fetchone()
                    # The very report again is a replay (the node drops it: the answer to
                    # its first delivery was lost); another report under a sequence number
                    # already used comes from a node that lost count, and is out of order.
                    if stored is not None and bytes(stored[0]) == raw:
                        raise MeteringError(
                            "replayed", f"report {report.sequence} was already accepted"
                        )
                    raise MeteringError(
                        "out_of_order",
                        f"report {report.sequence} comes after report {last_sequence}",
                    )
                if sample.start < last_end:
                    raise MeteringError(
                        "overlapping",
                        f"the report starts at {sample.start}, before the end of the "
                        f"previous one ({last_end})",
                    )
            db.execute(
                "INSERT INTO usage_reports(node_id, sequence, start_s, end_s, source_bytes, "
                "target_bytes, sent_bytes, received_bytes, served_bytes, cpu_seconds, placed, "
                "received_at, encoded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    peer_id,
                    report.sequence,
                    sample.start,
                    sample.end,
                    sample.source_bytes,
                    sample.target_bytes,
                    sample.sent_bytes,
                    sample.received_bytes,
                    sample.served_bytes,
                    sample.cpu_seconds,
                    placed,
                    now,
                    raw,
                ),
            )
        return report.sequence

    def history(self, node_id: bytes, through_sequence: int | None = None) -> list[UsageSample]:
        """A node's reports (all, or up to a sequence number), oldest first."""
        limit = _MAX_COUNT if through_sequence is None else through_sequence
        rows = self.db._db().execute(
            f"SELECT {_SAMPLE_COLUMNS} FROM usage_reports WHERE node_id = ? AND sequence <= ? "
            "ORDER BY sequence",
            (node_id, limit),
        )
        return _samples(rows)

    # --- billing periods ------------------------------------------------------------------------

    def period_of(self, t: float) -> tuple[int, int]:
        index = max(0, (int(t) - self.epoch) // self.period_s)
        start = self.epoch + index * self.period_s
        return start, start + self.period_s

    def _due(self, db: Any, end: int, now: float) -> bool:
        if now < end:
            return False
        if now >= end + self.settle_s and now - self.started >= self.uptime_s:
            return True
        # Every node that reports has reported past the end: nothing more will come.
        behind = db.execute(
            "SELECT COUNT(*) FROM (SELECT node_id, MAX(end_s) AS e FROM usage_reports "
            "GROUP BY node_id) WHERE e < ?",
            (end,),
        ).fetchone()[0]
        return int(behind) == 0

    def close_periods(self) -> list[Invoice]:
        """Close every billing period that is due; returns the invoices issued."""
        issued: list[Invoice] = []
        try:
            book = self._price_book()
        except PriceBookError as exc:
            _log.error("price_book_unreadable", error=str(exc))
            return issued
        for _ in range(_PERIODS_PER_PASS):
            now = self.clock()
            with self.db.transaction() as db:
                row = db.execute(
                    "SELECT value FROM meta WHERE key = 'billing_closed_until'"
                ).fetchone()
                start = int(row[0]) if row else self.epoch
                end = start + self.period_s
                if not self._due(db, end, now):
                    break
                issued += self._invoice_period(db, book, start, end, int(now))
                db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('billing_closed_until', ?)",
                    (str(end),),
                )
        for invoice in issued:
            _log.info(
                "invoice_issued",
                peer=short_node_id(invoice.node_id),
                number=invoice.number,
                balance=invoice.statement.balance,
            )
        return issued

    def _invoice_period(
        self, db: Any, book: PriceBook, start: int, end: int, now: int
    ) -> list[Invoice]:
        """One invoice per node whose contract ran during ``[start, end)``."""
        contracts = db.execute(
            "SELECT node_id, allocations FROM subscriptions WHERE created < ? "
            "AND (revoked_at IS NULL OR revoked_at > ?) ORDER BY node_id",
            (end, start),
        ).fetchall()
        out: list[Invoice] = []
        for node_raw, allocations_text in contracts:
            node_id = bytes(node_raw)
            if db.execute(
                "SELECT 1 FROM invoices WHERE node_id = ? AND period_start = ?", (node_id, start)
            ).fetchone():
                continue
            through = int(
                db.execute(
                    "SELECT COALESCE(MAX(sequence), 0) FROM usage_reports WHERE node_id = ?",
                    (node_id,),
                ).fetchone()[0]
            )
            history = _samples(
                db.execute(
                    f"SELECT {_SAMPLE_COLUMNS} FROM usage_reports WHERE node_id = ? "
                    "AND sequence <= ? AND end_s > ? AND start_s < ?",
                    (node_id, through, start, end),
                )
            )
            try:
                statement = compute_statement(
                    history,
                    book,
                    start,
                    end,
                    contributed=allocations_from(allocations_text),
                    late=_late_samples(db, node_id, start, through),
                )
            except FeeError as exc:
                _log.error("statement_failed", peer=short_node_id(node_id), error=str(exc))
                continue
            number = int(
                db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM invoices").fetchone()[0]
            )
            invoice = issue_invoice(
                self.key, node_id=node_id, number=number, issued=now, statement=statement
            )
            db.execute(
                "INSERT INTO invoices(number, node_id, period_start, period_end, "
                "through_sequence, issued, balance, encoded) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (number, node_id, start, end, through, now, statement.balance, invoice.encode()),
            )
            out.append(invoice)
        return out

    def invoices(self, node_id: bytes, limit: int = ACCOUNT_INVOICES) -> list[Invoice]:
        """The newest ``limit`` invoices of a node, oldest first."""
        rows = self.db._db().execute(
            "SELECT encoded FROM invoices WHERE node_id = ? ORDER BY number DESC LIMIT ?",
            (node_id, limit),
        )
        return [Invoice.decode(bytes(raw)) for (raw,) in rows][::-1]

    def recompute(self, number: int) -> Invoice:
        """Invoice ``number`` recomputed from the history it counted (same bytes, same
        figures, when the history is untouched)."""
        db = self.db._db()
        row = db.execute(
            "SELECT node_id, period_start, period_end, through_sequence, issued, "
            "s.allocations FROM invoices JOIN subscriptions s USING (node_id) WHERE number = ?",
            (number,),
        ).fetchone()
        if row is None:
            raise MeteringError("no_invoice", f"no invoice {number}")
        node_id, start, end, through, issued, allocations_text = row
        stored = Invoice.decode(
            bytes(
                db.execute("SELECT encoded FROM invoices WHERE number = ?", (number,)).fetchone()[0]
            )
        )
        history = self.history(bytes(node_id), int(through))
        statement = compute_statement(
            history,
            _book_of(stored),
            int(start),
            int(end),
            contributed=allocations_from(allocations_text),
            late=_late_samples(db, bytes(node_id), int(start), int(through)),
        )
        return issue_invoice(
            self.key, node_id=bytes(node_id), number=number, issued=int(issued), statement=statement
        )

    # --- what nodes and the operator see --------------------------------------------------

    def flags(self) -> dict[bytes, list[str]]:
        db = self.db._db()
        allotted = {
            bytes(node): allocations_from(text)
            for node, text in db.execute("SELECT node_id, allocations FROM subscriptions")
        }
        return holdings_flags(db, allotted)

    def usage(self, node_id: bytes) -> dict[str, Any]:
        return usage_figures(self.db._db(), node_id)

    def account(self, node_id: bytes) -> dict[str, Any]:
        """What ``GetAccount`` answers: the node's usage, the statement of the current
        period so far, the newest invoices (each signed), and any flags."""
        db = self.db._db()
        contract = AuthorityDB.subscription_in(db, node_id)
        if contract is None:
            raise MeteringError("not_subscribed", "this node has no subscription")
        start, end = self.period_of(self.clock())
        history = _samples(
            db.execute(
                f"SELECT {_SAMPLE_COLUMNS} FROM usage_reports WHERE node_id = ? AND end_s > ? "
                "AND start_s < ? ORDER BY sequence",
                (node_id, start, end),
            )
        )
        try:
            statement: dict[str, Any] | None = compute_statement(
                history, self._price_book(), start, end, contributed=contract.allocations
            ).to_json()
        except (FeeError, PriceBookError) as exc:
            _log.error("statement_failed", peer=short_node_id(node_id), error=str(exc))
            statement = None
        if statement is not None:
            statement["final"] = False
        return {
            "node_id": format_node_id(node_id),
            "plan": contract.plan,
            "usage": self.usage(node_id),
            "statement": statement,
            "invoices": [
                {**inv.to_json(), "encoded": inv.encode().hex()} for inv in self.invoices(node_id)
            ],
            "flags": self.flags().get(node_id, []),
            "billing_period_s": self.period_s,
        }

    # --- the wire side and the billing loop --------------------------------------------------

    async def serve(
        self, msg: Message, peer_id: bytes, limiter: trio.CapacityLimiter | None = None
    ) -> Message:
        """Answer a ``UsageReport`` or ``GetAccount`` from the authenticated ``peer_id``."""
        request_id = getattr(msg, "request_id", 0)
        try:
            if isinstance(msg, UsageReport):
                raw = msg.report
                sequence = await trio.to_thread.run_sync(
                    lambda: self.accept(peer_id, raw), limiter=limiter
                )
                return UsageAccepted(request_id=request_id, sequence=sequence)
            if isinstance(msg, GetAccount):
                account = await trio.to_thread.run_sync(self.account, peer_id, limiter=limiter)
                return Account(request_id=request_id, account=json.dumps(account))
            raise MeteringError("unsupported", f"{msg.KIND} is not for metering")
        except MeteringError as exc:
            _log.info("usage_refused", peer=short_node_id(peer_id), code=exc.code, error=str(exc))
            raise RemoteError(exc.code, str(exc)) from None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Close billing periods as they become due (a background task: each pass ends
        in a sleep of a quarter period, at most a minute)."""
        task_status.started()
        tick = min(60.0, max(0.25, self.period_s / 4))
        while True:
            try:
                await trio.to_thread.run_sync(self.close_periods)
            except Exception as exc:  # a full disk or a locked database: try again later
                _log.error("billing_failed", error=f"{type(exc).__name__}: {exc}")
            await trio.sleep(tick)


def _late_samples(db: Any, node_id: bytes, start: int, through: int) -> list[UsageSample]:
    """Reports that reach back before ``start`` and that no invoice of an earlier period
    counted: those after the sequence number the node's previous invoice went through.
    (An invoice counts every report up to its ``through_sequence``, so these arrived
    after the period they cover was closed.)"""
    row = db.execute(
        "SELECT through_sequence FROM invoices WHERE node_id = ? AND period_start < ? "
        "ORDER BY period_start DESC LIMIT 1",
        (node_id, start),
    ).fetchone()
    before = int(row[0]) if row else 0
    return _samples(
        db.execute(
            f"SELECT {_SAMPLE_COLUMNS} FROM usage_reports WHERE node_id = ? "
            "AND sequence > ? AND sequence <= ? AND start_s < ?",
            (node_id, before, through, start),
        )
    )


def _book_of(invoice: Invoice) -> PriceBook:
    """A price book with the prices the invoice's statement lines name (recomputing an
    old invoice must not depend on today's price book)."""
    statement = invoice.statement
    prices = {line.kind: line.unit_price for line in (*statement.charges, *statement.credits)}
    return PriceBook(
        currency=statement.currency,
        exponent=statement.exponent,
        source_gb_month=prices["source_storage"],
        transfer_gb=prices["transfer"],
        target_gb_month_credit=prices["target_storage"],
        served_gb_credit=prices["served"],
        minimum_charge=statement.minimum_charge,
    )
