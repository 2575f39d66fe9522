"""The backup log: every backup, restore, verify, forget and failure of this node, kept
in the catalog's ``backup_log`` table, hash-chained and signed by the node so that
editing or deleting an entry is detected (``verify_log``).

The log is its own concern (how an entry is hashed, chained, seeded after a recovery and
forwarded to the authority's global log) but lives in the catalog's SQLite file: an
entry and the snapshot it reports are facts of the same database.  ``Catalog`` derives
from ``BackupLog`` so that ``catalog.log(...)`` stays the one call every job makes; this
class owns the table's rows and the ``log_base``/``log_forwarded`` profile keys.  The
table itself is created by the catalog's migrations.

Blocking: call through ``trio.to_thread``, like the rest of the catalog.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs
import blake3
import msgpack
from nacl.signing import SigningKey

from protocol import sign, verify

from .sqlite import ThreadConnections, durable

__all__ = ["LOG_GENESIS", "BackupLog", "LogEntry", "log_entry_hash"]

#: The hash the first entry of a chain links to.
LOG_GENESIS: Final = b"\x00" * 32

_LOG_CONTEXT: Final = b"gridnode backup log v1\x00"


def log_entry_hash(
    prev: bytes, seq: int, at: float, event: str, snapshot_id: str | None, detail: str
) -> bytes:
    """An entry's hash, covering the previous entry's: the authority's global backup log
    checks forwarded entries with this, exactly as ``verify_log`` does."""
    body = msgpack.packb([seq, at, event, snapshot_id, detail], use_bin_type=True)
    return blake3.blake3(_LOG_CONTEXT + prev + body).digest()


@attrs.frozen
class LogEntry:
    """One entry as appended or read back (``detail`` parsed from its stored JSON text)."""

    seq: int
    at: float
    event: str
    snapshot_id: str | None
    detail: dict[str, Any]
    prev_hash: bytes
    hash: bytes
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "event": self.event,
            "snapshot_id": self.snapshot_id,
            "detail": self.detail,
            "hash": self.hash.hex(),
        }


_SELECT_LOG: Final = (
    "SELECT seq, at, event, snapshot_id, detail, prev_hash, hash, signature FROM backup_log"
)


def _log_entries(rows: Iterable[Sequence[Any]]) -> list[LogEntry]:
    return [
        LogEntry(s, a, e, sid, json.loads(d), bytes(p), bytes(h), bytes(sig))
        for s, a, e, sid, d, p, h, sig in rows
    ]


class BackupLog:
    """The node's signed, hash-chained log, in the database ``db`` connects to."""

    def __init__(self, db: ThreadConnections, signing_key: SigningKey) -> None:
        self._db = db
        self._signing_key = signing_key
        self._node_id = bytes(signing_key.verify_key)
        # Serialises appends within this process (BEGIN IMMEDIATE does it across them).
        self._log_lock = threading.Lock()

    def log(self, event: str, snapshot_id: str | None = None, **detail: Any) -> LogEntry:
        """Append a signed, hash-chained entry; its hash covers the previous entry's hash."""
        text = json.dumps(detail, sort_keys=True, default=str)
        db = self._db()
        with self._log_lock, durable(db):
            db.execute("BEGIN IMMEDIATE")
            last = db.execute(
                "SELECT seq, hash FROM backup_log ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            if last is None:  # the first entry here: after the seeded head, if any
                base_seq, base_hash = self._log_base(db)
                seq, prev = base_seq + 1, base_hash
            else:
                seq, prev = last[0] + 1, bytes(last[1])
            at = time.time()
            digest = log_entry_hash(prev, seq, at, event, snapshot_id, text)
            signature = sign(self._signing_key, digest)
            db.execute(
                "INSERT INTO backup_log(seq, at, event, snapshot_id, detail, prev_hash,"
                " hash, signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, at, event, snapshot_id, text, prev, digest, signature),
            )
        return LogEntry(seq, at, event, snapshot_id, detail, prev, digest, signature)

    def log_entries(self) -> list[LogEntry]:
        return _log_entries(self._db().execute(f"{_SELECT_LOG} ORDER BY seq").fetchall())

    def log_page(self, after_seq: int, limit: int = 512) -> list[LogEntry]:
        """The next ``limit`` entries after ``after_seq``, in order: a log of years of
        hourly backups is read a page at a time (keyset pagination on ``seq``)."""
        return _log_entries(self.log_rows_after(after_seq, limit))

    @staticmethod
    def _log_base(db: sqlite3.Connection) -> tuple[int, bytes]:
        """Where this catalog's chain starts: (0, genesis), or the head of the chain of a
        node recovered from its key (``seed_log``), which its entries continue."""
        row = db.execute("SELECT value FROM profile WHERE key = 'log_base'").fetchone()
        if row is None:
            return 0, LOG_GENESIS
        base = json.loads(row[0])
        return int(base["seq"]), bytes.fromhex(base["hash"])

    def log_head(self) -> tuple[int, bytes]:
        """The last entry's (seq, hash); the seeded base when there is none yet."""
        db = self._db()
        last = db.execute("SELECT seq, hash FROM backup_log ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(last[0]), bytes(last[1])) if last else self._log_base(db)

    def seed_log(self, seq: int, head: bytes) -> bool:
        """Continue the chain of this node's earlier life: the next entry gets ``seq + 1``
        and links to ``head`` (from the recovery root, or the authority's global log).

        Only a catalog with no entry of its own (a node recovered from its key) is seeded,
        and only forward; False when nothing changed.  Entries up to ``seq`` were the old
        catalog's, so they count as forwarded to the authority already."""
        if seq < 0 or len(head) != 32:
            raise ValueError("a log head is a non-negative seq and a 32-byte hash")
        db = self._db()
        with self._log_lock, durable(db):
            db.execute("BEGIN IMMEDIATE")
            has_entries = db.execute("SELECT 1 FROM backup_log LIMIT 1").fetchone()
            if has_entries is not None or seq <= self._log_base(db)[0]:
                return False
            db.executemany(
                "INSERT OR REPLACE INTO profile(key, value) VALUES (?, ?)",
                [
                    ("log_base", json.dumps({"seq": seq, "hash": head.hex()})),
                    ("log_forwarded", json.dumps(seq)),
                ],
            )
        return True

    def log_rows_after(self, seq: int, limit: int) -> list[tuple[Any, ...]]:
        """Raw entries after ``seq`` (seq, at, event, snapshot id, detail text, prev hash,
        hash, signature), in order: what the node forwards to the global backup log,
        byte for byte as hashed (the detail as its stored JSON text)."""
        rows = self._db().execute(f"{_SELECT_LOG} WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        return [tuple(row) for row in rows.fetchall()]

    def verify_log(self) -> tuple[bool, str]:
        """Walk the chain; returns (ok, what is wrong or how many entries verified)."""
        base_seq, prev = self._log_base(self._db())
        expected_seq = base_seq + 1
        rows = self._db().execute(f"{_SELECT_LOG} ORDER BY seq").fetchall()
        for seq, at, event, sid, detail, prev_hash, digest, signature in rows:
            if seq != expected_seq:
                return False, f"entry {expected_seq} is missing (next is {seq})"
            if bytes(prev_hash) != prev:
                return False, f"entry {seq} does not chain to entry {seq - 1}"
            if log_entry_hash(prev, seq, at, event, sid, detail) != bytes(digest):
                return False, f"entry {seq} was modified (hash mismatch)"
            if not verify(self._node_id, bytes(digest), bytes(signature)):
                return False, f"entry {seq} has a bad signature"
            prev = bytes(digest)
            expected_seq += 1
        return True, f"{len(rows)} entries verified"
