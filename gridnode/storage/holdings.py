"""What a target keeps beside the packets themselves: delete tags and recovery roots.

Owner tags: when a source stores a packet it sends the hash of a per-packet delete
secret; presenting the secret later proves the right to delete, without the target ever
learning who the owner is (design brief: a target cannot tell whose data it holds).
Two sources in one dedup domain may store the same packet: each adds its own tag and
the packet goes only when the last tag is withdrawn.

Recovery roots: sealed blobs at key-derived locators (see ``gridnode.recovery``).
A newer version replaces an older one only when signed by the same root key.

SQLite in WAL mode; every change is one transaction.  Blocking: call through
``trio.to_thread``.  One connection per thread (sqlite3 objects are not shareable).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Final

import attrs

__all__ = ["Holdings", "StoredRoot"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS owner_tags (
    packet_id BLOB NOT NULL,
    owner_tag BLOB NOT NULL,
    PRIMARY KEY (packet_id, owner_tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roots (
    locator BLOB PRIMARY KEY,
    version INTEGER NOT NULL,
    verify_key BLOB NOT NULL,
    signature BLOB NOT NULL,
    sealed BLOB NOT NULL
);
"""


@attrs.frozen
class StoredRoot:
    locator: bytes
    version: int
    verify_key: bytes
    signature: bytes
    sealed: bytes


class Holdings:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        with self._db() as db:
            db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA cache_size=-512")
            self._local.db = db
        return db

    def add_tag(self, packet_id: bytes, owner_tag: bytes) -> None:
        self.add_tags([(packet_id, owner_tag)])

    def add_tags(self, tags: list[tuple[bytes, bytes]]) -> None:
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT OR IGNORE INTO owner_tags(packet_id, owner_tag) VALUES (?, ?)", tags
            )

    def remove_tag(self, packet_id: bytes, owner_tag: bytes) -> tuple[bool, int]:
        """Withdraw one tag; returns (was present, tags left)."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                "DELETE FROM owner_tags WHERE packet_id = ? AND owner_tag = ?",
                (packet_id, owner_tag),
            )
            left = db.execute(
                "SELECT COUNT(*) FROM owner_tags WHERE packet_id = ?", (packet_id,)
            ).fetchone()[0]
        return cur.rowcount > 0, int(left)

    def get_root(self, locator: bytes) -> StoredRoot | None:
        row = (
            self._db()
            .execute(
                "SELECT locator, version, verify_key, signature, sealed FROM roots"
                " WHERE locator = ?",
                (locator,),
            )
            .fetchone()
        )
        return StoredRoot(*row) if row else None

    def put_root(self, root: StoredRoot) -> str | None:
        """Store ``root`` unless refused; returns the refusal reason or None."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT version, verify_key FROM roots WHERE locator = ?", (root.locator,)
            ).fetchone()
            if row is not None:
                version, verify_key = row
                if verify_key != root.verify_key:
                    return "locator is held by a different root key"
                if root.version < version:
                    return f"stale root version {root.version} (holding {version})"
            db.execute(
                "INSERT OR REPLACE INTO roots(locator, version, verify_key, signature, sealed) "
                "VALUES (?, ?, ?, ?, ?)",
                (root.locator, root.version, root.verify_key, root.signature, root.sealed),
            )
        return None

    def root_bytes(self) -> int:
        row = self._db().execute("SELECT COALESCE(SUM(LENGTH(sealed)), 0) FROM roots").fetchone()
        return int(row[0])
