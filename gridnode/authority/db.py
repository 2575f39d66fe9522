"""The grid authority's database: one SQLite file, ``HOME/authority.sqlite``.

Tables (numbered migrations under ``PRAGMA user_version``, as in the node's catalog):

- ``meta``: the grid id and the authority's public key, so the CLI can sign revocations
  without the node running;
- ``plans``: what each plan of the price book allotted when it was last synced;
- ``invites``: one-time invite codes, kept only as their BLAKE3 hash (a copy of the
  database must not let anyone subscribe), with the plan they are for and who used them;
- ``subscriptions``: one contract per node (claims 21, 34): plan, allocations, status;
- ``certificates``: every certificate issued (serial, node, plan, allocations, validity,
  the encoded certificate);
- ``revocations``: every signed revocation (by certificate serial);
- ``join_requests`` (migration 2): nodes without a contract that asked for a
  certificate, for the operator to approve by hand (``gridnode authority requests``,
  ``approve``, ``deny``); one row per node, at most ``MAX_JOIN_REQUESTS`` kept.

Why SQLite with ``BEGIN IMMEDIATE``: the running authority node and the ``gridnode
authority`` commands write the same file; each change (use an invite and record its
contract and certificate; revoke a node and all its certificates) is one transaction, so
an invite can never be used twice, even by two requests at the same instant.  WAL lets
the CLI read while the node writes.  Blocking: call through ``trio.to_thread``; one
connection per thread.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from protocol import Allocations

from ..storage.migrations import apply_migrations
from ..storage.sqlite import ThreadConnections

__all__ = ["AuthorityDB", "CertificateRow", "SubscriptionRow"]

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: the initial schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE plans (
        name TEXT PRIMARY KEY,
        allocations TEXT NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE invites (
        code_hash BLOB PRIMARY KEY,
        plan TEXT,
        created REAL NOT NULL,
        expires REAL,
        used_by BLOB,
        used_at REAL
    ) WITHOUT ROWID;
    CREATE TABLE subscriptions (
        node_id BLOB PRIMARY KEY,
        plan TEXT NOT NULL,
        allocations TEXT NOT NULL,
        invite_hash BLOB,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        status TEXT NOT NULL,
        revoked_at REAL
    ) WITHOUT ROWID;
    CREATE TABLE certificates (
        serial INTEGER PRIMARY KEY AUTOINCREMENT,
        node_id BLOB NOT NULL,
        plan TEXT NOT NULL,
        allocations TEXT NOT NULL,
        issued INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        encoded BLOB
    );
    CREATE INDEX certificates_by_node ON certificates(node_id, serial);
    CREATE TABLE revocations (
        serial INTEGER PRIMARY KEY,
        node_id BLOB NOT NULL,
        revoked_at INTEGER NOT NULL,
        encoded BLOB NOT NULL
    );
    """,
    # 2: the global backup log (claims 2, 3, 31; ``globallog``): every node's forwarded
    # entries as they were hashed and signed, the problems found in what nodes sent; and
    # the revocation feed, the order in which revocations were recorded (a serial is not
    # that order), which nodes poll with ``GetRevocations`` (``revocations.py`` appends
    # what ``revoke`` recorded since, before it answers).
    """
    CREATE TABLE global_log (
        node_id BLOB NOT NULL,
        seq INTEGER NOT NULL,
        at REAL NOT NULL,
        event TEXT NOT NULL,
        snapshot_id TEXT,
        detail TEXT NOT NULL,
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL,
        signature BLOB NOT NULL,
        received REAL NOT NULL,
        PRIMARY KEY (node_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE global_log_problems (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        node_id BLOB NOT NULL,
        seq INTEGER,
        code TEXT NOT NULL,
        message TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX global_log_problems_by_node ON global_log_problems(node_id, code, seq);
    CREATE TABLE revocation_feed (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        serial INTEGER NOT NULL UNIQUE
    );
    INSERT INTO revocation_feed(serial) SELECT serial FROM revocations ORDER BY revoked_at, serial
    """,
    # 3: metering (``metering``): the usage history, append-only (triggers refuse any
    # UPDATE or DELETE, so a statement recomputed later sees exactly what was billed), and
    # the invoices issued from it, one per node and billing period, immutable too.
    """
    CREATE TABLE usage_reports (
        node_id BLOB NOT NULL,
        sequence INTEGER NOT NULL,
        start_s INTEGER NOT NULL,
        end_s INTEGER NOT NULL,
        source_bytes INTEGER NOT NULL,
        target_bytes INTEGER NOT NULL,
        sent_bytes INTEGER NOT NULL,
        received_bytes INTEGER NOT NULL,
        served_bytes INTEGER NOT NULL,
        cpu_seconds INTEGER NOT NULL,
        placed TEXT NOT NULL,
        received_at REAL NOT NULL,
        encoded BLOB NOT NULL,
        PRIMARY KEY (node_id, sequence)
    ) WITHOUT ROWID;
    CREATE TRIGGER usage_reports_no_update BEFORE UPDATE ON usage_reports BEGIN
        SELECT RAISE(ABORT, 'the usage history is append-only');
    END;
    CREATE TRIGGER usage_reports_no_delete BEFORE DELETE ON usage_reports BEGIN
        SELECT RAISE(ABORT, 'the usage history is append-only');
    END;
    CREATE TABLE invoices (
        number INTEGER PRIMARY KEY,
        node_id BLOB NOT NULL,
        period_start INTEGER NOT NULL,
        period_end INTEGER NOT NULL,
        through_sequence INTEGER NOT NULL,
        issued INTEGER NOT NULL,
        balance INTEGER NOT NULL,
        encoded BLOB NOT NULL,
        UNIQUE (node_id, period_start)
    );
    CREATE TRIGGER invoices_no_update BEFORE UPDATE ON invoices BEGIN
        SELECT RAISE(ABORT, 'an issued invoice cannot change');
    END;
    CREATE TRIGGER invoices_no_delete BEFORE DELETE ON invoices BEGIN
        SELECT RAISE(ABORT, 'an issued invoice cannot be deleted');
    END
    """,
    # 2: requests to join, approved by hand (issue 9).
    """
    CREATE TABLE join_requests (
        node_id BLOB PRIMARY KEY,
        first_asked REAL NOT NULL,
        last_asked REAL NOT NULL,
        times INTEGER NOT NULL DEFAULT 1
    )
    """,
)


def allocations_text(allocations: Allocations) -> str:
    return json.dumps(allocations.to_json(), sort_keys=True)


def allocations_from(text: str) -> Allocations:
    return Allocations(**json.loads(text))


@attrs.frozen
class SubscriptionRow:
    node_id: bytes
    plan: str
    allocations: Allocations
    created: float
    status: str  # "active" or "revoked" (expiry is the latest certificate's)
    revoked_at: float | None


@attrs.frozen
class CertificateRow:
    serial: int
    node_id: bytes
    plan: str
    allocations: Allocations
    issued: int
    expires: int
    encoded: bytes


class AuthorityDB:
    def __init__(self, path: Path) -> None:
        self.path = path
        # FULL: every change here is a promise to a node or to the operator (a contract,
        # a revocation); it is small and rare, so make each durable when committed.
        self._db = ThreadConnections(
            path, timeout_s=30, pragmas=("synchronous=FULL",), private=True
        )
        self._migrate()

    # --- connections and schema ----------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at its start (``BEGIN IMMEDIATE``) so that a
        check-then-write (is this invite unused?) cannot interleave with another writer."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            yield db

    def close(self) -> None:
        self._db.close()

    @property
    def schema_version(self) -> int:
        return int(self._db().execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        apply_migrations(self._db(), MIGRATIONS, what="authority database", path=self.path)

    # --- meta and plans --------------------------------------------------------------------

    def set_meta(self, values: Mapping[str, str]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(values.items())
            )

    def meta(self, key: str) -> str | None:
        row = self._db().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def sync_plans(self, plans: Mapping[str, Allocations], now: float) -> None:
        """Record the price book's plans (a plan removed from it stays, for old contracts)."""
        with self.transaction() as db:
            for name, allocations in plans.items():
                db.execute(
                    "INSERT INTO plans(name, allocations, updated) VALUES (?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET allocations = excluded.allocations, "
                    "updated = excluded.updated WHERE allocations != excluded.allocations",
                    (name, allocations_text(allocations), now),
                )

    def plans(self) -> dict[str, Allocations]:
        rows = self._db().execute("SELECT name, allocations FROM plans ORDER BY name")
        return {name: allocations_from(text) for name, text in rows}

    # --- invites ------------------------------------------------------------------------------

    def add_invite(self, code_hash: bytes, plan: str | None, now: float) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO invites(code_hash, plan, created) VALUES (?, ?, ?)",
                (code_hash, plan, now),
            )

    def invite_count(self) -> int:
        return int(self._db().execute("SELECT count(*) FROM invites").fetchone()[0])

    # --- reading contracts and certificates ------------------------------------------------

    @staticmethod
    def subscription_in(db: sqlite3.Connection, node_id: bytes) -> SubscriptionRow | None:
        row = db.execute(
            "SELECT node_id, plan, allocations, created, status, revoked_at "
            "FROM subscriptions WHERE node_id = ?",
            (node_id,),
        ).fetchone()
        return None if row is None else _subscription(row)

    def subscriptions(self) -> list[SubscriptionRow]:
        rows = self._db().execute(
            "SELECT node_id, plan, allocations, created, status, revoked_at "
            "FROM subscriptions ORDER BY created, node_id"
        )
        return [_subscription(row) for row in rows]

    @staticmethod
    def latest_certificate_in(db: sqlite3.Connection, node_id: bytes) -> CertificateRow | None:
        row = db.execute(
            "SELECT serial, node_id, plan, allocations, issued, expires, encoded "
            "FROM certificates WHERE node_id = ? ORDER BY serial DESC LIMIT 1",
            (node_id,),
        ).fetchone()
        return None if row is None else _certificate(row)

    def latest_certificate(self, node_id: bytes) -> CertificateRow | None:
        return self.latest_certificate_in(self._db(), node_id)

    def certificates(self, node_id: bytes) -> list[CertificateRow]:
        rows = self._db().execute(
            "SELECT serial, node_id, plan, allocations, issued, expires, encoded "
            "FROM certificates WHERE node_id = ? ORDER BY serial",
            (node_id,),
        )
        return [_certificate(row) for row in rows]

    def revocations(self) -> list[tuple[int, bytes, int, bytes]]:
        """(serial, node id, revoked at, encoded signed revocation), oldest first."""
        rows = self._db().execute(
            "SELECT serial, node_id, revoked_at, encoded FROM revocations ORDER BY serial"
        )
        return [(int(s), bytes(n), int(at), bytes(e)) for s, n, at, e in rows]


def _subscription(row: Any) -> SubscriptionRow:
    node_id, plan, allocations, created, status, revoked_at = row
    return SubscriptionRow(
        node_id=bytes(node_id),
        plan=str(plan),
        allocations=allocations_from(allocations),
        created=float(created),
        status=str(status),
        revoked_at=None if revoked_at is None else float(revoked_at),
    )


def _certificate(row: Any) -> CertificateRow:
    serial, node_id, plan, allocations, issued, expires, encoded = row
    return CertificateRow(
        serial=int(serial),
        node_id=bytes(node_id),
        plan=str(plan),
        allocations=allocations_from(allocations),
        issued=int(issued),
        expires=int(expires),
        encoded=bytes(encoded or b""),
    )
