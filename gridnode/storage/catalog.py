"""The node's catalog: the metadata records of claims 2-3 and 31, in one SQLite file.

Tables and the claim element each one is:

- ``profile``: the source client profile (who this node is, when it started backing up).
- ``entries``: source data records, one row per backed-up entry of a snapshot (file,
  directory, symlink, FIFO, device, socket; the path as bytes), with its metadata (owner,
  extended attributes, hard-link group) and its extents (chunk id, offset, length).
- ``chunks``: the unique data identifiers (keyed BLAKE3) of every chunk this node has
  stored on the grid, with the coding parameters needed to decode it.  A chunk is kept
  once per *policy* (erasure parameters + placement rules): data stored 4-of-6 within
  2000 km does not satisfy a snapshot that asks for 2-of-3 at least 300 km away, so dedup
  only reuses a chunk placed under the same policy.
- ``packets``: target data records: which target holds which packet of which chunk, with
  the target's signed receipt.  Ordered by share, it is also the non-transparent sequence.
- ``snapshots`` + ``snapshot_chunks``: one data assembly record per snapshot (tree,
  chunk lists, erasure parameters, placement rules, where its sealed copy lives).
- ``backup_log``: every backup, restore, verify, forget and failure, hash-chained and
  signed by the node so that editing or deleting an entry is detected.

Why SQLite: transactions make "a snapshot is complete" one atomic fact; WAL lets the CLI
read while a backup writes.  Chunk records are committed often and cheaply
(``synchronous=NORMAL``); completing a snapshot and appending to the log are committed with
``synchronous=FULL``, so what the user is told is on disk when they are told.  Schema changes are
numbered migrations (``gridnode.storage.catalog_schema``) applied in order under
``PRAGMA user_version``.

The record types the tables hold (``SnapshotRecord``, ``EntryRecord``, ``ChunkRecord``,
``PacketRecord``) are in ``gridnode.storage.records``; the backup log's hashing, chaining
and checking is in ``gridnode.storage.backup_log``, which ``Catalog`` derives from.

Blocking: call through ``trio.to_thread``; one connection per thread.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Generator, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import msgpack
from nacl.signing import SigningKey

from .backup_log import BackupLog
from .catalog_schema import MIGRATIONS
from .lease_book import LeaseBook
from .migrations import apply_migrations
from .records import (
    SNAPSHOT_COLUMNS,
    ChunkRecord,
    EntryRecord,
    EntryRow,
    PacketRecord,
    SnapshotRecord,
    entry_row,
    pack_extents,
    packed_entry_wire,
)
from .sqlite import ThreadConnections, durable
from .survival import Survival, survival

__all__ = ["Catalog", "placed_bytes_by_target"]

#: How long ``Catalog.checkpoint`` waits for readers before it does what it can.
CHECKPOINT_BUSY_MS: Final = 1000

_ENTRY_COLUMNS: Final = (
    "path, kind, mode, mtime_ns, size, inode, device, link_target, extents, meta"
)


def _rows(cur: sqlite3.Cursor) -> Generator[Any, None, None]:
    """A cursor's rows, one at a time, and the cursor closed when the reader is done or
    lets go (a generator closed early, or dropped): a half-read cursor keeps a read open
    on the log, and after a failed write its connection's lock (``storage/sqlite.py``)."""
    try:
        # Not ``yield from``: closing the generator would call ``cur.close()`` unguarded.
        for row in cur:  # noqa: UP028
            yield row
    finally:
        with contextlib.suppress(sqlite3.Error):  # unless its connection is gone
            cur.close()


def _entry_from_row(row: Sequence[Any]) -> EntryRecord:
    path, kind, mode, mtime_ns, size, inode, device, link_target, extents, meta = row
    return EntryRecord.build(
        path,
        kind,
        mode,
        mtime_ns,
        size,
        inode,
        device,
        link_target,
        msgpack.unpackb(extents) if extents else None,
        msgpack.unpackb(meta, raw=False) if meta else None,
    )


def _scope(under: bytes | None, parents: Sequence[bytes]) -> tuple[str, tuple[bytes, ...]]:
    """An SQL condition (and its parameters) for the entries at or below the path
    ``under`` (names are bytes, so those below it sort from ``under/`` up to, not
    including, ``under0``: ``0`` follows ``/``) and the directories ``parents``."""
    if under is None:
        return "", ()
    marks = ", ".join("?" for _ in parents)
    above = f" OR (kind = 'dir' AND path IN ({marks}))" if parents else ""
    return (
        f" AND (path = ? OR (path > ? AND path < ?){above})",
        (under, under + b"/", under + b"0", *parents),
    )


_INSERT_ENTRY: Final = (
    "INSERT OR REPLACE INTO entries(snapshot_id, path, kind, mode, mtime_ns, size, inode,"
    " device, link_target, extents, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def placed_bytes_by_target(db: sqlite3.Connection) -> dict[bytes, int]:
    """Bytes of this node's packets on each target (one packet is its chunk's ciphertext
    over k): the source's usage, as the quota check and the usage reports count it."""
    rows = db.execute(
        "SELECT p.target, SUM((c.cipher_size + c.k - 1) / c.k) FROM packets p "
        "JOIN chunks c ON c.chunk_id = p.chunk_id AND c.policy = p.policy "
        "GROUP BY p.target"
    ).fetchall()
    return {bytes(target): int(size) for target, size in rows}


class Catalog(BackupLog, LeaseBook):
    """The node's metadata records in one SQLite file; the backup log (``BackupLog``)
    and the leases and queued deletes (``LeaseBook``) live in the same file, so a job's
    ``catalog.log(...)`` is a call on this object."""

    def __init__(self, path: Path, *, signing_key: SigningKey) -> None:
        self.path = path
        db = ThreadConnections(
            path,
            timeout_s=60,
            # NORMAL: in WAL mode a commit survives a crash of this process but may be lost
            # with the OS; the facts a user is told about (a complete snapshot, a log entry)
            # are committed under FULL (``durable``), which makes the WAL durable up to
            # them.  One connection per worker thread that ever touches the catalog: keep
            # each page cache small (1 MiB) so a long backup's memory does not grow with it.
            pragmas=("synchronous=NORMAL", "foreign_keys=ON", "cache_size=-1024"),
            private=True,
        )
        super().__init__(db, signing_key)
        self._migrate()

    # --- connections and schema ----------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def reset_connections(self) -> None:
        """After an SQLite error: every thread's connection is opened afresh
        (``ThreadConnections.reset_all``)."""
        self._db.reset_all()

    @property
    def schema_version(self) -> int:
        return int(self._db().execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        apply_migrations(self._db(), MIGRATIONS, what="catalog", path=self.path)

    # --- profile -----------------------------------------------------------------------------

    def set_profile(self, values: dict[str, Any]) -> None:
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            for key, value in values.items():
                db.execute(
                    "INSERT OR REPLACE INTO profile(key, value) VALUES (?, ?)",
                    (key, json.dumps(value)),
                )

    def profile(self) -> dict[str, Any]:
        rows = self._db().execute("SELECT key, value FROM profile").fetchall()
        return {k: json.loads(v) for k, v in rows}

    # --- snapshots ---------------------------------------------------------------------------

    def begin_snapshot(
        self,
        snapshot_id: str,
        *,
        roots: Sequence[str],
        parent: str | None,
        params: str,
        rules: dict[str, Any],
        tags: Sequence[str] = (),
    ) -> None:
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO snapshots(snapshot_id, created, state, parent, roots, params, rules,"
                " tags) VALUES (?, ?, 'running', ?, ?, ?, ?, ?)",
                (
                    snapshot_id,
                    time.time(),
                    parent,
                    json.dumps(list(roots)),
                    params,
                    json.dumps(rules),
                    json.dumps(list(tags)),
                ),
            )

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the catalog and truncate it, where no reader
        holds it (else SQLite does what it can).  After a failure on a full disk: the
        log holds every page the failed backup wrote, and the space freed by the user
        must not go to the log's growth first."""
        db = self._db()
        # Readers of other threads make TRUNCATE wait on the busy handler: a cleanup
        # must not wait out the minute a writer would, so at most a second here.
        db.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            db.execute(f"PRAGMA busy_timeout={round(self._db.timeout_s * 1000)}")

    def mark_interrupted(self) -> list[str]:
        """At startup: a snapshot still 'running' belongs to a process that died."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT snapshot_id FROM snapshots WHERE state = 'running'"
                ).fetchall()
            ]
            for sid in ids:
                db.execute("DELETE FROM entries WHERE snapshot_id = ?", (sid,))
                db.execute("DELETE FROM snapshot_chunks WHERE snapshot_id = ?", (sid,))
            db.execute(
                "UPDATE snapshots SET state = 'interrupted', finished = ? WHERE state = 'running'",
                (time.time(),),
            )
        return ids

    def fail_snapshot(self, snapshot_id: str) -> None:
        """A failed backup records no snapshot (the backup log keeps the failure); chunks it
        stored stay in ``chunks`` for the next attempt to reuse."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM entries WHERE snapshot_id = ?", (snapshot_id,))
            db.execute("DELETE FROM snapshot_chunks WHERE snapshot_id = ?", (snapshot_id,))
            db.execute(
                "DELETE FROM snapshots WHERE snapshot_id = ? AND state = 'running'", (snapshot_id,)
            )

    def add_entries(
        self,
        snapshot_id: str,
        entries: Iterable[EntryRecord],
        chunk_ids: Iterable[bytes] = (),
        *,
        policy: str = "",
    ) -> None:
        """Record part of a running snapshot's tree; written in batches so memory stays flat.

        Rows of a snapshot that never completes are deleted when it is failed or found
        interrupted; only ``complete_snapshot`` makes them part of a usable snapshot.
        """
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            self._insert_entries(db, snapshot_id, entries, chunk_ids, policy)

    def add_entry_rows(
        self, snapshot_id: str, rows: Sequence[EntryRow], chunk_ids: Iterable[bytes], *, policy: str
    ) -> None:
        """``add_entries`` for rows a backup built itself (``EntryRow``): the same table, the
        same bytes, without an ``EntryRecord`` per entry on the way."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(_INSERT_ENTRY, rows)
            db.executemany(
                "INSERT OR IGNORE INTO snapshot_chunks(snapshot_id, chunk_id, policy)"
                " VALUES (?, ?, ?)",
                [(snapshot_id, c, policy) for c in chunk_ids],
            )

    def file_page(
        self, snapshot_id: str, *, after: bytes = b"", limit: int = 1024
    ) -> list[tuple[bytes, int, int, int, bytes]]:
        """A snapshot's next ``limit`` regular files after the path ``after``, in path
        order: (path, size, mtime_ns, inode, packed extents).

        What an incremental backup compares each scanned file with, read beside its walk
        (which goes in the same order) a page at a time, so memory stays one page
        whatever the tree's size; the extents are kept as stored, for an unchanged file
        to carry over as they are.  Keyset pagination on the primary key: every page
        costs the same, and no read stays open between pages."""
        empty = pack_extents(())
        return [
            (bytes(path), size, mtime_ns, inode, bytes(extents) if extents else empty)
            for path, size, mtime_ns, inode, extents in self._db().execute(
                "SELECT path, size, mtime_ns, inode, extents FROM entries"
                " WHERE snapshot_id = ? AND path > ? AND kind = 'file' ORDER BY path LIMIT ?",
                (snapshot_id, after, limit),
            )
        ]

    @staticmethod
    def _insert_entries(
        db: sqlite3.Connection,
        snapshot_id: str,
        entries: Iterable[EntryRecord],
        chunk_ids: Iterable[bytes],
        policy: str,
    ) -> None:
        db.executemany(_INSERT_ENTRY, (entry_row(snapshot_id, e) for e in entries))
        db.executemany(
            "INSERT OR IGNORE INTO snapshot_chunks(snapshot_id, chunk_id, policy) VALUES (?, ?, ?)",
            ((snapshot_id, c, policy) for c in chunk_ids),
        )

    def complete_snapshot(
        self, snapshot_id: str, *, files: int, size_bytes: int, record: bytes | None
    ) -> None:
        """One transaction flips the snapshot to complete: before it, restore ignores it."""
        db = self._db()
        with durable(db):
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                "UPDATE snapshots SET state = 'complete', finished = ?, files = ?, bytes = ?,"
                " record = ? WHERE snapshot_id = ? AND state = 'running'",
                (time.time(), files, size_bytes, record, snapshot_id),
            )
            if cur.rowcount != 1:
                raise RuntimeError(f"snapshot {snapshot_id} is not running; cannot complete it")

    def import_snapshot(
        self,
        snapshot: SnapshotRecord,
        items: Iterable[EntryRecord | ChunkRecord],
    ) -> None:
        """Recovery: a snapshot read back from its sealed record on the grid, in one
        transaction, streamed (a record can describe millions of files and chunks).

        ``items`` are its entries and chunks, and the pieces of its record; every chunk
        is referenced by the snapshot, so ``forget`` accounts for all of them."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO snapshots(snapshot_id, created, finished, state, parent, roots,"
                " files, bytes, params, rules, record, tags) VALUES (?, ?, ?, 'complete', ?, ?,"
                " ?, ?, ?, ?, ?, ?)",
                (
                    snapshot.snapshot_id,
                    snapshot.created,
                    snapshot.finished,
                    snapshot.parent,
                    json.dumps(list(snapshot.roots)),
                    snapshot.files,
                    snapshot.total_bytes,
                    snapshot.params,
                    json.dumps(snapshot.rules),
                    snapshot.record,
                    json.dumps(list(snapshot.tags)),
                ),
            )
            policy = snapshot.policy
            for item in items:
                if isinstance(item, EntryRecord):
                    self._insert_entries(db, snapshot.snapshot_id, [item], (), policy)
                else:
                    self._insert_chunks(db, [item], snapshot.snapshot_id)

    def set_snapshot_record(self, snapshot_id: str, record: bytes) -> None:
        self._db().execute(
            "UPDATE snapshots SET record = ? WHERE snapshot_id = ?", (record, snapshot_id)
        )

    def snapshots(self) -> list[SnapshotRecord]:
        rows = (
            self._db()
            .execute(f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots ORDER BY created")
            .fetchall()
        )
        return [SnapshotRecord.from_row(r) for r in rows]

    def snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        row = (
            self._db()
            .execute(
                f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE snapshot_id = ?", (snapshot_id,)
            )
            .fetchone()
        )
        return SnapshotRecord.from_row(row) if row else None

    def resolve_snapshot(self, prefix: str) -> SnapshotRecord:
        """Accept a unique prefix, as git does, or "latest"."""
        if prefix == "latest":
            done = [s for s in self.snapshots() if s.complete]
            if not done:
                raise LookupError("there is no complete snapshot yet")
            return done[-1]
        rows = (
            self._db()
            .execute(
                f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE snapshot_id LIKE ? || '%'",
                (prefix,),
            )
            .fetchall()
        )
        if not rows:
            raise LookupError(f"no snapshot {prefix!r}")
        if len(rows) > 1:
            raise LookupError(f"snapshot prefix {prefix!r} is ambiguous ({len(rows)} match)")
        return SnapshotRecord.from_row(rows[0])

    def latest_complete(self, roots: Sequence[str], policy: str) -> SnapshotRecord | None:
        """The parent for an incremental backup: the newest complete snapshot of the same
        roots under the same policy (its chunks must satisfy the new snapshot's rules)."""
        for snap in reversed(self.snapshots()):
            if snap.complete and list(snap.roots) == list(roots) and snap.policy == policy:
                return snap
        return None

    def entries(self, snapshot_id: str) -> Generator[EntryRecord, None, None]:
        """A snapshot's entries in path order, one at a time; holds a cursor as
        ``iter_chunks_of`` does."""
        cur = self._db().execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE snapshot_id = ? ORDER BY path",
            (snapshot_id,),
        )
        for row in _rows(cur):
            yield _entry_from_row(row)

    def entries_packed(self, snapshot_id: str) -> Generator[bytes, None, None]:
        """``entries``, each as its ``EntryRecord.to_wire()`` packed by msgpack: what the
        data assembly record holds (``record_store.write_record``), spliced from the
        stored bytes where it can be (``records.packed_entry_wire``)."""
        cur = self._db().execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE snapshot_id = ? ORDER BY path",
            (snapshot_id,),
        )
        packer = msgpack.Packer(use_bin_type=True)
        for row in _rows(cur):
            packed = packed_entry_wire(row, packer)
            yield packer.pack(_entry_from_row(row).to_wire()) if packed is None else packed

    def entry_page(
        self,
        snapshot_id: str,
        *,
        kinds: Sequence[str],
        exclude: bool = False,
        after: bytes | None = None,
        descending: bool = False,
        limit: int = 512,
        under: bytes | None = None,
        parents: Sequence[bytes] = (),
    ) -> list[EntryRecord]:
        """The next ``limit`` entries of ``kinds`` (with ``exclude``: of every other kind)
        after the path ``after``, in path order (or reversed).

        For a restore, which walks a snapshot of millions of entries across many
        worker-thread calls: memory stays one page (keyset pagination on the primary
        key, so each page costs the same).  ``under`` limits the page to one path and
        what lies below it, plus the directories ``parents`` (those above it)."""
        marks = ", ".join("?" for _ in kinds)
        sql = [
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE snapshot_id = ?",
            f" AND kind {'NOT IN' if exclude else 'IN'} ({marks})",
        ]
        params: list[Any] = [snapshot_id, *kinds]
        if after is not None:
            sql.append(" AND path < ?" if descending else " AND path > ?")
            params.append(after)
        clause, scope = _scope(under, parents)
        sql.append(clause)
        sql.append(f" ORDER BY path {'DESC' if descending else 'ASC'} LIMIT ?")
        return [
            _entry_from_row(row)
            for row in self._db().execute("".join(sql), (*params, *scope, limit))
        ]

    def entry_totals(
        self, snapshot_id: str, *, kind: str, under: bytes | None = None
    ) -> tuple[int, int]:
        """How many entries of ``kind`` (at or below ``under``) and their bytes."""
        clause, scope = _scope(under, ())
        count, size = (
            self._db()
            .execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM entries"
                f" WHERE snapshot_id = ? AND kind = ?{clause}",
                (snapshot_id, kind, *scope),
            )
            .fetchone()
        )
        return int(count), int(size)

    def entry_paths(
        self,
        snapshot_id: str,
        paths: Iterable[bytes],
        *,
        kind: str | None = None,
        under: bytes | None = None,
    ) -> set[bytes]:
        """Which of ``paths`` the snapshot has (of ``kind``, at or below ``under``)."""
        db = self._db()
        clause, scope = _scope(under, ())
        found: set[bytes] = set()
        for path in paths:
            row = db.execute(
                "SELECT kind FROM entries WHERE snapshot_id = ? AND path = ?" + clause,
                (snapshot_id, path, *scope),
            ).fetchone()
            if row is not None and (kind is None or row[0] == kind):
                found.add(path)
        return found

    def forget_snapshot(self, snapshot_id: str) -> list[tuple[bytes, str]]:
        """Drop a snapshot; returns the (chunk id, policy) pairs no other snapshot uses."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            return self._drop_snapshot(db, snapshot_id)

    def release_snapshot(self, snapshot_id: str) -> int:
        """Drop a snapshot and, in the same transaction, the chunks no other snapshot
        uses, queuing their packets' deletes (``LeaseBook``); returns the chunks freed."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            return self._queue_and_drop(db, self._drop_snapshot(db, snapshot_id))

    @staticmethod
    def _drop_snapshot(db: sqlite3.Connection, snapshot_id: str) -> list[tuple[bytes, str]]:
        orphans = [
            (bytes(r[0]), str(r[1]))
            for r in db.execute(
                "SELECT sc.chunk_id, sc.policy FROM snapshot_chunks sc WHERE sc.snapshot_id = ?"
                " AND NOT EXISTS (SELECT 1 FROM snapshot_chunks o"
                " WHERE o.chunk_id = sc.chunk_id"
                " AND o.policy = sc.policy AND o.snapshot_id != ?)",
                (snapshot_id, snapshot_id),
            ).fetchall()
        ]
        db.execute("DELETE FROM entries WHERE snapshot_id = ?", (snapshot_id,))
        db.execute("DELETE FROM snapshot_chunks WHERE snapshot_id = ?", (snapshot_id,))
        db.execute("DELETE FROM snapshots WHERE snapshot_id = ?", (snapshot_id,))
        return orphans

    # --- chunks and packets ----------------------------------------------------------------------

    def has_chunk(self, chunk_id: bytes, policy: str) -> bool:
        return (
            self._db()
            .execute("SELECT 1 FROM chunks WHERE chunk_id = ? AND policy = ?", (chunk_id, policy))
            .fetchone()
            is not None
        )

    def add_chunks(self, chunks: Iterable[ChunkRecord], *, snapshot_id: str | None = None) -> None:
        """Record stored chunks (all n packets acknowledged) in one transaction."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            self._insert_chunks(db, chunks, snapshot_id)

    @staticmethod
    def _insert_chunks(
        db: sqlite3.Connection, chunks: Iterable[ChunkRecord], snapshot_id: str | None
    ) -> None:
        now = time.time()
        for c in chunks:
            policy = c.policy
            db.execute(
                "INSERT OR REPLACE INTO chunks(chunk_id, policy, plain_size, cipher_size,"
                " compressed, k, n, stored_at, rules, domain)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    c.chunk_id,
                    policy,
                    c.plain_size,
                    c.cipher_size,
                    int(c.compressed),
                    c.k,
                    c.n,
                    now,
                    json.dumps(c.rules, sort_keys=True),
                    c.domain,
                ),
            )
            db.execute(
                "DELETE FROM packets WHERE chunk_id = ? AND policy = ?", (c.chunk_id, policy)
            )
            db.executemany(
                "INSERT INTO packets(chunk_id, policy, share, packet_id, target, receipt)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (c.chunk_id, policy, p.share, p.packet_id, p.target, p.receipt)
                    for p in c.packets
                ),
            )
            # A packet used again where a delete of it waits: the delete must never go.
            db.executemany(
                "DELETE FROM pending_deletes WHERE packet_id = ? AND target = ?",
                ((p.packet_id, p.target) for p in c.packets),
            )
            if snapshot_id is not None:
                db.execute(
                    "INSERT OR IGNORE INTO snapshot_chunks(snapshot_id, chunk_id,"
                    " policy) VALUES (?, ?, ?)",
                    (snapshot_id, c.chunk_id, policy),
                )

    def chunk(self, chunk_id: bytes, policy: str) -> ChunkRecord | None:
        db = self._db()
        row = db.execute(
            "SELECT chunk_id, plain_size, cipher_size, compressed, k, n, rules,"
            " domain FROM chunks WHERE chunk_id = ? AND policy = ?",
            (chunk_id, policy),
        ).fetchone()
        if row is None:
            return None
        return self._chunk_from_row(db, (*row, policy))

    @staticmethod
    def _chunk_from_row(db: sqlite3.Connection, row: Sequence[Any]) -> ChunkRecord:
        """(chunk_id, plain, cipher, compressed, k, n, rules, domain, policy) + its packets."""
        chunk_id, plain, cipher, compressed, k, n, rules, domain, policy = row
        packets = tuple(
            PacketRecord(s, bytes(p), bytes(t), bytes(r))
            for s, p, t, r in db.execute(
                "SELECT share, packet_id, target, receipt FROM packets WHERE chunk_id = ?"
                " AND policy = ? ORDER BY share",
                (chunk_id, policy),
            )
        )
        return ChunkRecord(
            bytes(chunk_id),
            plain,
            cipher,
            bool(compressed),
            k,
            n,
            packets,
            json.loads(rules),
            domain,
        )

    def chunks_of(self, snapshot_id: str) -> list[ChunkRecord]:
        """The data chunks of a snapshot (not its record), in chunk id order."""
        return list(self.iter_chunks_of(snapshot_id))

    def iter_chunks_of(self, snapshot_id: str) -> Generator[ChunkRecord, None, None]:
        """Like ``chunks_of`` but one at a time: a snapshot may have millions of chunks.

        The iterator holds a cursor of this thread's connection: drain it in one thread,
        or close it where it may be left half read (an open read keeps checkpoints from
        emptying the log, and a traceback can keep it for long)."""
        return self._chunks_where(snapshot_id, b"", -1, "('data')")

    def chunk_page(
        self, snapshot_id: str, *, after: bytes = b"", limit: int = 256
    ) -> list[ChunkRecord]:
        """The next ``limit`` chunks (data and record pieces) with ids above ``after``.

        For jobs that walk a snapshot across many worker-thread calls (repair), where a
        cursor cannot follow; memory stays one page whatever the snapshot's size."""
        return list(self._chunks_where(snapshot_id, after, limit, "('data', 'record')"))

    def _chunks_where(
        self, snapshot_id: str, after: bytes, limit: int, domains: str
    ) -> Generator[ChunkRecord, None, None]:
        db = self._db()
        cur = db.execute(
            "SELECT c.chunk_id, c.plain_size, c.cipher_size, c.compressed, c.k, c.n, c.rules,"
            " c.domain, c.policy FROM snapshot_chunks sc JOIN chunks c"
            " ON c.chunk_id = sc.chunk_id AND c.policy = sc.policy"
            f" WHERE sc.snapshot_id = ? AND sc.chunk_id > ? AND c.domain IN {domains}"
            " ORDER BY sc.chunk_id LIMIT ?",
            (snapshot_id, after, limit),
        )
        for row in _rows(cur):
            yield self._chunk_from_row(db, row)

    def delete_chunks(self, chunks: Sequence[tuple[bytes, str]]) -> None:
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            for chunk_id, policy in chunks:
                db.execute(
                    "DELETE FROM packets WHERE chunk_id = ? AND policy = ?", (chunk_id, policy)
                )
                db.execute(
                    "DELETE FROM chunks WHERE chunk_id = ? AND policy = ?", (chunk_id, policy)
                )

    def holders(self) -> set[bytes]:
        """Every node that holds a packet of a chunk some snapshot uses."""
        return {
            bytes(r[0])
            for r in self._db().execute(
                "SELECT DISTINCT p.target FROM packets p WHERE EXISTS (SELECT 1 FROM"
                " snapshot_chunks sc WHERE sc.chunk_id = p.chunk_id AND sc.policy = p.policy)"
            )
        }

    def chunks_on_page(
        self, targets: Sequence[bytes], *, after: tuple[bytes, str] = (b"", ""), limit: int = 256
    ) -> list[ChunkRecord]:
        """Chunks in use with a packet on any of ``targets``, in (chunk id, policy) order."""
        if not targets:
            return []
        db = self._db()
        marks = ", ".join("?" for _ in targets)
        keys = db.execute(
            "SELECT DISTINCT p.chunk_id, p.policy FROM packets p"
            f" WHERE p.target IN ({marks}) AND (p.chunk_id, p.policy) > (?, ?)"
            " AND EXISTS (SELECT 1 FROM snapshot_chunks sc"
            " WHERE sc.chunk_id = p.chunk_id AND sc.policy = p.policy)"
            " ORDER BY p.chunk_id, p.policy LIMIT ?",
            (*targets, after[0], after[1], limit),
        ).fetchall()
        return [c for k, pol in keys if (c := self.chunk(bytes(k), pol)) is not None]

    def repair_chunk(self, chunk: ChunkRecord) -> None:
        """Record a repaired chunk's new holders and, in the same transaction, mark every
        complete snapshot that uses it: its data assembly record on the grid names the old
        holders until rewritten.  The marks outlive a crash or a failed rewrite, so the
        next repair finishes the job (``stale_records``/``record_rewritten``)."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            self._insert_chunks(db, [chunk], None)
            using = {
                r[0]
                for r in db.execute(
                    "SELECT sc.snapshot_id FROM snapshot_chunks sc JOIN snapshots s"
                    " ON s.snapshot_id = sc.snapshot_id"
                    " WHERE sc.chunk_id = ? AND sc.policy = ? AND s.state = 'complete'",
                    (chunk.chunk_id, chunk.policy),
                )
            }
            stale = set(self._stale(db))
            if not using <= stale:
                self._set_stale(db, stale | using)

    @staticmethod
    def _stale(db: sqlite3.Connection) -> list[str]:
        row = db.execute("SELECT value FROM profile WHERE key = 'stale_records'").fetchone()
        return [str(s) for s in json.loads(row[0])] if row else []

    @staticmethod
    def _set_stale(db: sqlite3.Connection, snapshot_ids: Iterable[str]) -> None:
        db.execute(
            "INSERT OR REPLACE INTO profile(key, value) VALUES ('stale_records', ?)",
            (json.dumps(sorted(snapshot_ids)),),
        )

    def stale_records(self) -> list[str]:
        """Complete snapshots whose record on the grid still names replaced holders."""
        return self._stale(self._db())

    def record_rewritten(self, snapshot_id: str) -> None:
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            self._set_stale(db, (s for s in self._stale(db) if s != snapshot_id))

    def replace_record(
        self, snapshot_id: str, pieces: Sequence[ChunkRecord], record: bytes
    ) -> list[tuple[bytes, str]]:
        """Point a snapshot at a rewritten data assembly record, in one transaction.

        Returns the old record pieces that no snapshot references any more; the caller
        deletes their packets on the grid and then their rows (as forget does).
        """
        db = self._db()
        with durable(db):
            db.execute("BEGIN IMMEDIATE")
            old = [
                (bytes(r[0]), str(r[1]))
                for r in db.execute(
                    "SELECT sc.chunk_id, sc.policy FROM snapshot_chunks sc JOIN chunks c"
                    " ON c.chunk_id = sc.chunk_id AND c.policy = sc.policy"
                    " WHERE sc.snapshot_id = ? AND c.domain = 'record'",
                    (snapshot_id,),
                )
            ]
            db.executemany(
                "DELETE FROM snapshot_chunks WHERE snapshot_id = ? AND chunk_id = ?",
                ((snapshot_id, chunk_id) for chunk_id, _ in old),
            )
            self._insert_chunks(db, pieces, snapshot_id)
            db.execute(
                "UPDATE snapshots SET record = ? WHERE snapshot_id = ?", (record, snapshot_id)
            )
            return [
                (chunk_id, policy)
                for chunk_id, policy in old
                if db.execute(
                    "SELECT 1 FROM snapshot_chunks WHERE chunk_id = ? AND policy = ?",
                    (chunk_id, policy),
                ).fetchone()
                is None
            ]

    def source_bytes(self) -> int:
        """Bytes this node keeps on the grid as a source, redundancy included: every
        packet of every chunk it stored (a packet is the chunk's ciphertext over k)."""
        return sum(placed_bytes_by_target(self._db()).values())

    def packets_on(self, target: bytes) -> int:
        return int(
            self._db()
            .execute("SELECT COUNT(*) FROM packets WHERE target = ?", (target,))
            .fetchone()[0]
        )

    # --- automatic repair (gridnode.repair) ------------------------------------------------------

    def holders_seen(self) -> dict[bytes, float]:
        """Per holder, when the member view last had it (wall clock)."""
        return {
            bytes(r[0]): float(r[1])
            for r in self._db().execute("SELECT node_id, last_seen FROM holder_seen")
        }

    def note_holders_seen(
        self, seen: dict[bytes, float], *, keep: Iterable[bytes] | None = None
    ) -> None:
        """Record last-seen times (a later time wins) and, given ``keep``, forget every
        other node: one transaction, so a crash leaves the old times whole."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO holder_seen(node_id, last_seen) VALUES (?, ?) ON CONFLICT(node_id)"
                " DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
                sorted(seen.items()),
            )
            if keep is not None:
                wanted = set(keep)
                doomed = [
                    (r[0],)
                    for r in db.execute("SELECT node_id FROM holder_seen")
                    if bytes(r[0]) not in wanted
                ]
                db.executemany("DELETE FROM holder_seen WHERE node_id = ?", doomed)

    # --- delegated repair (gridnode.delegation) --------------------------------------------------

    def chunks_in_use(self) -> Generator[ChunkRecord, None, None]:
        """Every chunk some snapshot uses (data and record pieces), each once: what a
        repair capability maps.  Holds this thread's cursor: drain it in one thread."""
        db = self._db()
        cur = db.execute(
            "SELECT c.chunk_id, c.plain_size, c.cipher_size, c.compressed, c.k, c.n, c.rules,"
            " c.domain, c.policy FROM chunks c WHERE EXISTS (SELECT 1 FROM snapshot_chunks sc"
            " WHERE sc.chunk_id = c.chunk_id AND sc.policy = c.policy)"
            " ORDER BY c.chunk_id, c.policy"
        )
        for row in _rows(cur):
            yield self._chunk_from_row(db, row)

    def mark_stale(self, snapshot_ids: Iterable[str]) -> None:
        """Records on the grid that name holders the catalog no longer has (moves taken
        in at recovery): the next repair run rewrites them."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            self._set_stale(db, set(self._stale(db)) | set(snapshot_ids))

    def delegates(self) -> dict[bytes, float]:
        """Members that held a repair capability of this node, and until when: whose
        move records this node trusts (the recovery root carries them)."""
        row = self._db().execute("SELECT value FROM profile WHERE key = 'delegates'").fetchone()
        return {bytes.fromhex(k): float(v) for k, v in json.loads(row[0]).items()} if row else {}

    def set_delegates(self, delegates: dict[bytes, float]) -> None:
        self._db().execute(
            "INSERT OR REPLACE INTO profile(key, value) VALUES ('delegates', ?)",
            (json.dumps({k.hex(): v for k, v in sorted(delegates.items())}),),
        )

    def root_version(self) -> int:
        row = self._db().execute("SELECT version FROM recovery_root WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    # --- recovery root -------------------------------------------------------------------------

    def next_root_version(self) -> int:
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT version FROM recovery_root WHERE id = 1").fetchone()
            version = (row[0] + 1) if row else 1
            db.execute(
                "INSERT OR REPLACE INTO recovery_root(id, version, published) VALUES (1, ?, NULL)",
                (version,),
            )
        return int(version)

    def set_root_version(self, version: int) -> None:
        self._db().execute(
            "INSERT OR REPLACE INTO recovery_root(id, version, published) VALUES (1, ?, ?)",
            (version, time.time()),
        )

    # --- check (gridnode.check) ------------------------------------------------------------------

    def survival(self, survivors: dict[bytes, bool], threshold: int) -> Survival:
        """Surviving packets per chunk and per complete snapshot, without a fetch
        (``gridnode.storage.survival``): ``survivors`` maps each holder counted alive to
        whether it passed an audit lately."""
        return survival(self._db(), survivors, threshold)
