"""What a target keeps beside the packets themselves: delete tags and recovery roots.

Owner tags: when a source stores a packet it sends the hash of a per-packet delete
secret; presenting the secret later proves the right to delete, without the target ever
learning who the owner is (design brief: a target cannot tell whose data it holds).
Two sources in one dedup domain may store the same packet: each adds its own tag and
the packet goes only when the last tag is withdrawn.  A tag is recorded only for a
packet the target verified and holds: a tag offered with a refused packet would let
anyone who knows a packet id keep that packet alive against its owners' deletes, and
would grow this database outside the allocation.

Recovery roots: sealed blobs at locators derived from their verification keys (see
``gridnode.recovery``, ``protocol.root_locator``).  The packet store checks the
locator and the signature; here a root is only replaced by the same key, never by an
older version, and each root is charged to the peer whose authenticated session
delivered it (recorded as the holder's keyed hash of that peer's node id, see
``NodeIdentity.root_owner_tag``), within the per-owner limits below.  Roots count
against the node's allocation (the packet store charges :func:`root_cost` to the
packet directory).

SQLite in WAL mode; every change is one transaction; schema changes are numbered
migrations under ``PRAGMA user_version``.  Blocking: call through ``trio.to_thread``.
One connection per thread (sqlite3 objects are not shareable).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Final

import attrs

from protocol import MAX_ROOT_BYTES

from .migrations import apply_migrations
from .sqlite import ThreadConnections

__all__ = [
    "MAX_ROOTS_PER_OWNER",
    "MAX_ROOT_BYTES_PER_OWNER",
    "ROOT_RECORD_BYTES",
    "Holdings",
    "RootRefused",
    "StoredRoot",
    "root_cost",
]

#: What holding one root costs beyond its sealed bytes: locator, verification key,
#: signature, version and owner (about 170 bytes) plus SQLite's row and index, rounded
#: up.  Charged so that many tiny roots cannot hold space for free.
ROOT_RECORD_BYTES: Final = 256
#: Roots one peer may have this node keep.  A node publishes exactly one root (one
#: locator per seed); the second slot lets it move to a new root key or locator without
#: being refused, since there is no message to withdraw the old one.
MAX_ROOTS_PER_OWNER: Final = 2
#: Root bytes (``root_cost`` summed) one peer may have this node keep: one root as large
#: as the wire allows (``MAX_ROOT_BYTES``, 8 MiB, enough to list thousands of snapshots)
#: plus the record cost of each root it may have.  So 100 peers can hold at most about
#: 800 MiB of roots here, and never more than the allocation, which roots count against.
MAX_ROOT_BYTES_PER_OWNER: Final = MAX_ROOT_BYTES + MAX_ROOTS_PER_OWNER * ROOT_RECORD_BYTES

#: Numbered schema migrations, applied in order under ``PRAGMA user_version``.
MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: owner tags and recovery roots.  IF NOT EXISTS: a database made before there were
    # migrations (user_version 0, these tables already there) is adopted as it is.
    """
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
    )
    """,
    # 2: the peer that delivered each root (its owner tag), for the per-owner limits.
    # Roots held before it have no known owner (empty): they count against the
    # allocation, not against a peer.
    """
    ALTER TABLE roots ADD COLUMN owner BLOB NOT NULL DEFAULT x'';
    CREATE INDEX roots_by_owner ON roots(owner)
    """,
    # 3: bytes of packets each source keeps here (keyed by the same per-peer hash as
    # roots), so a source over its subscription's quota is refused.  One total per
    # source, never which packet is whose: the holdings file links no packet to a source.
    """
    CREATE TABLE source_usage (
        source BLOB PRIMARY KEY,
        bytes INTEGER NOT NULL CHECK (bytes >= 0)
    ) WITHOUT ROWID
    """,
)


def root_cost(sealed_bytes: int) -> int:
    """Bytes of the allocation one held root takes."""
    return sealed_bytes + ROOT_RECORD_BYTES


class RootRefused(Exception):
    """A recovery root this node will not keep; ``code`` is the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


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
        self._db = ThreadConnections(
            path, timeout_s=30, pragmas=("synchronous=NORMAL", "cache_size=-512")
        )
        self._migrate()

    @property
    def schema_version(self) -> int:
        return int(self._db().execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        apply_migrations(self._db(), MIGRATIONS, what="holdings", path=self.path)

    def add_tag(self, packet_id: bytes, owner_tag: bytes) -> None:
        self.add_tags([(packet_id, owner_tag)])

    def add_tags(
        self, tags: list[tuple[bytes, bytes]], charges: list[tuple[bytes, int]] | None = None
    ) -> None:
        """Record (packet id, owner tag) pairs; only for packets verified and held here.

        ``charges[i]`` = (source, bytes) charges the i-th tag's packet to that source's
        usage, when the tag is new (a packet sent again under the same tag costs nothing
        more), in the same transaction."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            for index, pair in enumerate(tags):
                added = db.execute(
                    "INSERT OR IGNORE INTO owner_tags(packet_id, owner_tag) VALUES (?, ?)", pair
                ).rowcount
                if added and charges is not None and charges[index][0]:
                    self._charge(db, *charges[index])

    @staticmethod
    def _charge(db: sqlite3.Connection, source: bytes, nbytes: int) -> None:
        db.execute(
            "INSERT INTO source_usage(source, bytes) VALUES (?, MAX(?, 0))"
            " ON CONFLICT(source) DO UPDATE SET bytes = MAX(bytes + ?, 0)",
            (source, nbytes, nbytes),
        )

    def source_bytes(self, source: bytes) -> int:
        """Bytes of packets ``source`` keeps here (tags it added and did not withdraw)."""
        row = (
            self._db()
            .execute("SELECT bytes FROM source_usage WHERE source = ?", (source,))
            .fetchone()
        )
        return int(row[0]) if row else 0

    def remove_tag(
        self, packet_id: bytes, owner_tag: bytes, *, source: bytes = b"", size: int = 0
    ) -> tuple[bool, int]:
        """Withdraw one tag (and ``size`` bytes from ``source``'s usage with it); returns
        (was present, tags left)."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                "DELETE FROM owner_tags WHERE packet_id = ? AND owner_tag = ?",
                (packet_id, owner_tag),
            )
            if cur.rowcount > 0 and source:
                self._charge(db, source, -size)
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

    def put_root(
        self,
        root: StoredRoot,
        *,
        owner: bytes,
        charge: Callable[[int], None] | None = None,
    ) -> int:
        """Keep ``root`` for the peer whose owner tag is ``owner``, replacing an older version.

        The caller has checked the locator and the signature.  Refused here: a root at a
        locator held by another key (only roots kept from before locators were bound to
        keys), an older version than the one held (an equal one replaces it: a publish
        that reached no holder reuses its version number), and a new root past the
        owner's limits.  ``charge(delta)`` is called inside the transaction, just before
        the write, with the bytes the holdings grow by (``root_cost``; negative when a
        smaller version replaces a larger one); it raises to refuse (a full allocation),
        and nothing is written.  Writes are serialised by the transaction, so the delta
        is exact however many puts run at once.

        Returns:
            The bytes the holdings grew by, as passed to ``charge``.

        Raises:
            RootRefused: with the wire error code and a sentence saying why.
        """
        cost = root_cost(len(root.sealed))
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT version, verify_key, LENGTH(sealed) FROM roots WHERE locator = ?",
                (root.locator,),
            ).fetchone()
            held_cost = 0
            if row is not None:
                version, verify_key, held_bytes = row
                if verify_key != root.verify_key:
                    raise RootRefused("refused", "locator is held by a different root key")
                if root.version < version:
                    raise RootRefused(
                        "stale_version", f"stale root version {root.version} (holding {version})"
                    )
                held_cost = root_cost(int(held_bytes))
            count, sealed_total = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(sealed)), 0) FROM roots"
                " WHERE owner = ? AND locator != ?",
                (owner, root.locator),
            ).fetchone()
            if count + 1 > MAX_ROOTS_PER_OWNER:
                raise RootRefused(
                    "root_limit",
                    f"this peer already has {count} recovery root(s) held here; "
                    f"at most {MAX_ROOTS_PER_OWNER} roots per peer",
                )
            owner_bytes = int(sealed_total) + int(count) * ROOT_RECORD_BYTES
            if owner_bytes + cost > MAX_ROOT_BYTES_PER_OWNER:
                raise RootRefused(
                    "root_limit",
                    f"this root takes {cost} bytes beside the {owner_bytes} this peer's other "
                    f"roots take; at most {MAX_ROOT_BYTES_PER_OWNER} bytes of roots per peer",
                )
            if charge is not None:
                charge(cost - held_cost)
            db.execute(
                "INSERT OR REPLACE INTO roots"
                "(locator, version, verify_key, signature, sealed, owner)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (root.locator, root.version, root.verify_key, root.signature, root.sealed, owner),
            )
        return cost - held_cost

    def root_bytes(self) -> int:
        """Bytes of the allocation the held roots take (``root_cost`` summed)."""
        row = (
            self._db()
            .execute("SELECT COALESCE(SUM(LENGTH(sealed)), 0), COUNT(*) FROM roots")
            .fetchone()
        )
        return int(row[0]) + int(row[1]) * ROOT_RECORD_BYTES

    def root_count(self, owner: bytes | None = None) -> int:
        """Roots held, all of them or those charged to the owner tag ``owner``."""
        if owner is None:
            row = self._db().execute("SELECT COUNT(*) FROM roots").fetchone()
        else:
            row = (
                self._db()
                .execute("SELECT COUNT(*) FROM roots WHERE owner = ?", (owner,))
                .fetchone()
            )
        return int(row[0])
