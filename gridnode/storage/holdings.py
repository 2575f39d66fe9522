"""What a target keeps beside the packets themselves: delete tags and recovery roots.

Owner tags: when a source stores a packet it sends the hash of a per-packet delete
secret; presenting the secret later proves the right to delete, without the target ever
learning who the owner is (design brief: a target cannot tell whose data it holds).
Two sources in one dedup domain may store the same packet: each adds its own tag and
the packet goes only when the last tag is withdrawn.  A tag is recorded only for a
packet the target verified and holds: a tag offered with a refused packet would let
anyone who knows a packet id keep that packet alive against its owners' deletes, and
would grow this database outside the allocation.

Leases (issue 10): each tag is held until its lease ends, and a source renews its leases
in the background (``gridnode.leases``).  A packet goes when its last tag is withdrawn
(the owner's delete secret) or its last lease has ended and the holder's collector runs
(``gridnode.storage.collector``), never before.  A renewal only extends a tag already
held, so whoever learns a (packet, tag) pair (the owner's repair delegates do: they renew
for an owner that is away) can keep that lease alive but never create one; a withdrawal
needs the secret.

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
    # 4: leases (issue 10).  Each owner tag is held until ``expires`` (unix seconds).
    # NULL: held without a lease, as every tag kept from before leases and every tag a
    # peer of a protocol before 4 stores: such a peer cannot renew, so its packets must
    # not run out under it; a renewal turns the tag into a lease.  ``untagged`` notes
    # packets found on disk with no tag at all (a crash between the write and the tag),
    # reclaimed when still untagged a grace later.  ``source_usage.expires`` is the end
    # of the longest lease the source took or renewed here: once it has passed, all of
    # that source's leases have, and its usage row goes (the tags name no source, so an
    # expiring tag cannot be taken off one; NULL: never reset).
    """
    ALTER TABLE owner_tags ADD COLUMN expires REAL;
    CREATE INDEX owner_tags_by_expiry ON owner_tags(expires) WHERE expires IS NOT NULL;
    CREATE TABLE untagged (packet_id BLOB PRIMARY KEY, since REAL NOT NULL) WITHOUT ROWID;
    ALTER TABLE source_usage ADD COLUMN expires REAL
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

    def add_tag(self, packet_id: bytes, owner_tag: bytes, expires: float | None = None) -> None:
        self.add_tags([(packet_id, owner_tag)], expires=expires)

    def add_tags(
        self,
        tags: list[tuple[bytes, bytes]],
        charges: list[tuple[bytes, int]] | None = None,
        *,
        expires: float | None = None,
    ) -> None:
        """Record (packet id, owner tag) pairs; only for packets verified and held here.

        ``charges[i]`` = (source, bytes) charges the i-th tag's packet to that source's
        usage, when the tag is new (a packet sent again under the same tag costs nothing
        more), in the same transaction.  ``expires``: the lease's end (None: held
        without a lease, for a peer that cannot renew).  A tag stored again keeps the
        later of its two ends, and a tag held without a lease keeps none."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            for index, (packet_id, owner_tag) in enumerate(tags):
                held = db.execute(
                    "SELECT 1 FROM owner_tags WHERE packet_id = ? AND owner_tag = ?",
                    (packet_id, owner_tag),
                ).fetchone()
                if held is None:
                    db.execute(
                        "INSERT INTO owner_tags(packet_id, owner_tag, expires) VALUES (?, ?, ?)",
                        (packet_id, owner_tag, expires),
                    )
                    db.execute("DELETE FROM untagged WHERE packet_id = ?", (packet_id,))
                    if charges is not None and charges[index][0]:
                        self._charge(db, *charges[index], expires=expires)
                elif expires is not None:
                    db.execute(
                        "UPDATE owner_tags SET expires = MAX(expires, ?)"
                        " WHERE packet_id = ? AND owner_tag = ? AND expires IS NOT NULL",
                        (expires, packet_id, owner_tag),
                    )

    @staticmethod
    def _charge(
        db: sqlite3.Connection, source: bytes, nbytes: int, *, expires: float | None = None
    ) -> None:
        db.execute(
            "INSERT INTO source_usage(source, bytes, expires) VALUES (?, MAX(?, 0), ?)"
            " ON CONFLICT(source) DO UPDATE SET bytes = MAX(bytes + ?, 0),"
            " expires = CASE WHEN expires IS NULL OR excluded.expires IS NULL THEN NULL"
            " ELSE MAX(expires, excluded.expires) END",
            (source, nbytes, expires, nbytes),
        )

    def renew(
        self, pairs: list[tuple[bytes, bytes]], until: float, *, source: bytes = b""
    ) -> list[float]:
        """Extend each (packet id, owner tag) lease to at least ``until``; per pair, the
        lease's end now, or 0 where no such tag is held (a renewal never creates one:
        only a store does, for a packet verified and held).  A tag held without a lease
        becomes a lease: whoever renews it will keep renewing."""
        db = self._db()
        out: list[float] = []
        with db:
            db.execute("BEGIN IMMEDIATE")
            for packet_id, owner_tag in pairs:
                db.execute(
                    "UPDATE owner_tags SET expires = MAX(COALESCE(expires, 0), ?)"
                    " WHERE packet_id = ? AND owner_tag = ?",
                    (until, packet_id, owner_tag),
                )
                row = db.execute(
                    "SELECT expires FROM owner_tags WHERE packet_id = ? AND owner_tag = ?",
                    (packet_id, owner_tag),
                ).fetchone()
                out.append(float(row[0]) if row else 0.0)
            if source and any(out):
                db.execute(
                    "UPDATE source_usage SET expires = MAX(COALESCE(expires, 0), ?)"
                    " WHERE source = ?",
                    (until, source),
                )
        return out

    def expire(self, now: float, *, limit: int = 10_000) -> tuple[int, list[bytes]]:
        """Drop up to ``limit`` tags whose lease ended before ``now``, and the usage rows
        of sources whose every lease did; returns (tags dropped, packets left with no
        tag).  The caller deletes those packets' files, under the same lock as stores
        take, after checking again that they have no tag (see ``untagged_now``)."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(
                "SELECT packet_id, owner_tag FROM owner_tags"
                " WHERE expires IS NOT NULL AND expires < ? LIMIT ?",
                (now, limit),
            ).fetchall()
            db.executemany("DELETE FROM owner_tags WHERE packet_id = ? AND owner_tag = ?", rows)
            db.execute("DELETE FROM source_usage WHERE expires IS NOT NULL AND expires < ?", (now,))
        packets = sorted({bytes(r[0]) for r in rows})
        return len(rows), self.untagged_now(packets)

    def untagged_now(self, packet_ids: list[bytes]) -> list[bytes]:
        """Those of ``packet_ids`` no tag holds."""
        db = self._db()
        return [
            p
            for p in packet_ids
            if db.execute("SELECT 1 FROM owner_tags WHERE packet_id = ?", (p,)).fetchone() is None
        ]

    def sweep_untagged(self, packet_ids: list[bytes], now: float, grace_s: float) -> list[bytes]:
        """Of packets found on disk (``packet_ids``), those held by no tag since before
        ``now - grace_s``: nobody can release them, so they are reclaimed.  Packets seen
        untagged for the first time are noted with ``now``."""
        db = self._db()
        doomed: list[bytes] = []
        with db:
            db.execute("BEGIN IMMEDIATE")
            for packet_id in packet_ids:
                if db.execute(
                    "SELECT 1 FROM owner_tags WHERE packet_id = ?", (packet_id,)
                ).fetchone():
                    db.execute("DELETE FROM untagged WHERE packet_id = ?", (packet_id,))
                    continue
                row = db.execute(
                    "SELECT since FROM untagged WHERE packet_id = ?", (packet_id,)
                ).fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO untagged(packet_id, since) VALUES (?, ?)", (packet_id, now)
                    )
                elif float(row[0]) < now - grace_s:
                    doomed.append(packet_id)
        return doomed

    def forget_untagged(self, packet_ids: list[bytes]) -> None:
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM untagged WHERE packet_id = ?", ((p,) for p in packet_ids))

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

    def adopt_tags(
        self,
        tags: list[tuple[bytes, bytes]],
        charges: list[tuple[bytes, int]],
        *,
        expires: float | None = None,
    ) -> list[bool]:
        """A dedup group's second source keeps a packet another tag holds already
        (``AdoptPackets``, ``gridnode.dedup_group.adopt_held``): its tag is added only
        where the packet has some tag, through ``add_tags`` as a store's is (so leases
        and usage charges apply alike).  Returns per pair whether the tag is held now.
        The caller has verified each packet's bytes and holds the packet store's keep
        lock, so no tag is withdrawn between this check and the new tag."""
        db = self._db()
        held = [
            db.execute(
                "SELECT 1 FROM owner_tags WHERE packet_id = ? LIMIT 1", (packet_id,)
            ).fetchone()
            is not None
            for packet_id, _ in tags
        ]
        chosen = [index for index, ok in enumerate(held) if ok]
        if chosen:
            self.add_tags([tags[i] for i in chosen], [charges[i] for i in chosen], expires=expires)
        return held
