"""The catalog's schema: numbered migrations, applied in order under ``PRAGMA user_version``.

Kept apart from :mod:`gridnode.storage.catalog` so that the tables a newcomer looks for
(which claim element each one is: see the catalog's docstring) read as one piece, and a
migration is added here, at the end, never by editing an earlier one: a catalog on
someone's disk has already run those.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MIGRATIONS"]

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: the initial schema
    """
    CREATE TABLE profile (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE snapshots (
        snapshot_id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        finished REAL,
        state TEXT NOT NULL,
        parent TEXT,
        roots TEXT NOT NULL,
        files INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        params TEXT NOT NULL,
        rules TEXT NOT NULL,
        record BLOB
    );
    CREATE TABLE entries (
        snapshot_id TEXT NOT NULL,
        path TEXT NOT NULL,
        kind TEXT NOT NULL,
        mode INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        size INTEGER NOT NULL,
        inode INTEGER NOT NULL DEFAULT 0,
        device INTEGER NOT NULL DEFAULT 0,
        link_target TEXT,
        extents BLOB,
        PRIMARY KEY (snapshot_id, path)
    ) WITHOUT ROWID;
    CREATE TABLE chunks (
        chunk_id BLOB NOT NULL,
        policy TEXT NOT NULL,
        plain_size INTEGER NOT NULL,
        cipher_size INTEGER NOT NULL,
        compressed INTEGER NOT NULL,
        k INTEGER NOT NULL,
        n INTEGER NOT NULL,
        stored_at REAL NOT NULL,
        rules TEXT NOT NULL,
        domain TEXT NOT NULL DEFAULT 'data',
        PRIMARY KEY (chunk_id, policy)
    ) WITHOUT ROWID;
    CREATE TABLE packets (
        chunk_id BLOB NOT NULL,
        policy TEXT NOT NULL,
        share INTEGER NOT NULL,
        packet_id BLOB NOT NULL,
        target BLOB NOT NULL,
        receipt BLOB NOT NULL,
        PRIMARY KEY (chunk_id, policy, share)
    ) WITHOUT ROWID;
    CREATE INDEX packets_by_target ON packets(target);
    CREATE TABLE snapshot_chunks (
        snapshot_id TEXT NOT NULL,
        chunk_id BLOB NOT NULL,
        policy TEXT NOT NULL,
        PRIMARY KEY (snapshot_id, chunk_id)
    ) WITHOUT ROWID;
    CREATE INDEX snapshot_chunks_by_chunk ON snapshot_chunks(chunk_id);
    CREATE TABLE backup_log (
        seq INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        event TEXT NOT NULL,
        snapshot_id TEXT,
        detail TEXT NOT NULL,
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL,
        signature BLOB NOT NULL
    );
    CREATE TABLE recovery_root (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL,
        published REAL
    );
    """,
    # 2: names are bytes (a file name need not be UTF-8); owners, device numbers, extended
    # attributes and hard-link groups ride in ``meta`` (msgpack), NULL when there are none.
    """
    CREATE TABLE entries_v2 (
        snapshot_id TEXT NOT NULL,
        path BLOB NOT NULL,
        kind TEXT NOT NULL,
        mode INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        size INTEGER NOT NULL,
        inode INTEGER NOT NULL DEFAULT 0,
        device INTEGER NOT NULL DEFAULT 0,
        link_target BLOB,
        extents BLOB,
        meta BLOB,
        PRIMARY KEY (snapshot_id, path)
    ) WITHOUT ROWID;
    INSERT INTO entries_v2 SELECT snapshot_id, CAST(path AS BLOB), kind, mode, mtime_ns, size,
        inode, device, CAST(link_target AS BLOB), extents, NULL FROM entries;
    DROP TABLE entries;
    ALTER TABLE entries_v2 RENAME TO entries
    """,
    # 3: when each holder of this node's packets was last seen in the member view (wall
    # clock), so that the repair delay survives a restart (``gridnode.repair``).
    """
    CREATE TABLE holder_seen (node_id BLOB PRIMARY KEY, last_seen REAL NOT NULL) WITHOUT ROWID
    """,
    # 4: each snapshot's ``backup --tag`` labels, a JSON list (``gridnode.logic.tags``);
    # snapshots made before have none.
    """
    ALTER TABLE snapshots ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'
    """,
    # 5: leases (issue 10, ``gridnode.storage.lease_book``): when each packet's lease on
    # its holder is next renewed (0: at the next round), and the deletes holders have
    # not confirmed yet, retried until they do.
    """
    ALTER TABLE packets ADD COLUMN renew_at REAL NOT NULL DEFAULT 0;
    CREATE INDEX packets_by_renewal ON packets(renew_at);
    CREATE TABLE pending_deletes (
        packet_id BLOB NOT NULL,
        target BLOB NOT NULL,
        policy TEXT NOT NULL,
        size INTEGER NOT NULL,
        queued REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (packet_id, target)
    ) WITHOUT ROWID
    """,
)
