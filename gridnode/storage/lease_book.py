"""Leases and queued deletes as the source keeps them (issue 10); part of the catalog.

A holder keeps a packet while a lease on it runs (``storage.holdings``).  The source
records, per packet, when to renew its lease next (``packets.renew_at``; 0, "at the next
round", for a packet just stored: renewing right after the upload costs ~70 bytes
against its ~100 KB and tells the source what the holder really granted), and renews the
ones due (``gridnode.leases``).

Releasing a chunk (``forget``, a record rewritten by repair, an orphan) drops its rows and,
in the same transaction, queues a delete for each of its packets (``pending_deletes``).
The queue is retried until each holder confirms, so a holder that was away when the user
forgot a snapshot still frees the space when it is back; an entry older than a lease and
its grace is dropped, since the holder has reclaimed the packet by itself by then.  A
packet recorded again (a later backup stored the same bytes on the same holder) leaves
the queue in that same transaction (``Catalog._insert_chunks``): the delete must never
reach the holder after the packet is in use again.  Both sides run under the node's backup
lock, so no backup can decide to reuse a chunk while it is being released.

Orphans are chunks no snapshot uses: a backup that failed or was interrupted keeps what
it stored for the next attempt to reuse; after ``orphan_grace_s`` they are released.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence

import attrs

from .sqlite import ThreadConnections

__all__ = ["LeaseBook", "LeaseDue", "PendingDelete"]


@attrs.frozen
class LeaseDue:
    """A packet whose lease is due for renewal, with what names its row."""

    chunk_id: bytes
    policy: str
    share: int
    packet_id: bytes
    target: bytes


@attrs.frozen
class PendingDelete:
    """A delete a holder has not confirmed yet."""

    packet_id: bytes
    target: bytes
    policy: str
    size: int
    attempts: int


#: The longest wait between two tries of a queued delete.
MAX_RETRY_S = 6 * 3600.0


class LeaseBook:
    """Mixed into ``Catalog``: the same file and connections."""

    _db: ThreadConnections

    # --- leases ----------------------------------------------------------------------------

    def leases_due(self, now: float, limit: int, *, skip: Sequence[bytes] = ()) -> list[LeaseDue]:
        """Packets whose renewal is due at ``now``, longest due first, but for those on
        the holders in ``skip`` (away: they must not hold up the others)."""
        marks = ",".join("?" * len(skip))
        rows = (
            self._db()
            .execute(
                "SELECT chunk_id, policy, share, packet_id, target FROM packets"
                f" WHERE renew_at <= ? AND target NOT IN ({marks})"
                " ORDER BY renew_at LIMIT ?",
                (now, *skip, limit),
            )
            .fetchall()
        )
        return [LeaseDue(bytes(c), str(p), int(s), bytes(i), bytes(t)) for c, p, s, i, t in rows]

    def set_renewals(self, when: Iterable[tuple[LeaseDue, float]]) -> None:
        """Record when each packet's lease is next renewed, where it still has that
        holder (a repair may have moved it meanwhile)."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "UPDATE packets SET renew_at = ?"
                " WHERE chunk_id = ? AND policy = ? AND share = ? AND target = ?",
                ((at, d.chunk_id, d.policy, d.share, d.target) for d, at in when),
            )

    # --- releasing chunks --------------------------------------------------------------------

    @staticmethod
    def _queue_and_drop(db: sqlite3.Connection, keys: Sequence[tuple[bytes, str]]) -> int:
        """Inside the caller's transaction: queue a delete for every packet of each chunk
        of ``keys`` and drop the chunks' rows; returns the chunks dropped."""
        now = time.time()
        dropped = 0
        for chunk_id, policy in keys:
            db.execute(
                "INSERT OR IGNORE INTO pending_deletes(packet_id, target, policy, size, queued)"
                " SELECT p.packet_id, p.target, p.policy, (c.cipher_size + c.k - 1) / c.k, ?"
                " FROM packets p JOIN chunks c ON c.chunk_id = p.chunk_id"
                " AND c.policy = p.policy WHERE p.chunk_id = ? AND p.policy = ?",
                (now, chunk_id, policy),
            )
            db.execute("DELETE FROM packets WHERE chunk_id = ? AND policy = ?", (chunk_id, policy))
            dropped += db.execute(
                "DELETE FROM chunks WHERE chunk_id = ? AND policy = ?", (chunk_id, policy)
            ).rowcount
        return dropped

    def release_chunks(self, keys: Sequence[tuple[bytes, str]]) -> int:
        """Drop chunks no snapshot uses any more and queue their packets' deletes."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            still_used = [
                key
                for key in keys
                if db.execute(
                    "SELECT 1 FROM snapshot_chunks WHERE chunk_id = ? AND policy = ?", key
                ).fetchone()
            ]
            if still_used:
                raise ValueError(f"{len(still_used)} chunk(s) to release are still in use")
            return self._queue_and_drop(db, keys)

    def release_orphans(self, stored_before: float) -> int:
        """Release the chunks no snapshot uses that were stored before ``stored_before``
        (none while a backup of this process runs: the caller holds the backup lock, and
        a snapshot still 'running' in the file keeps everything)."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT 1 FROM snapshots WHERE state = 'running'").fetchone():
                return 0
            keys = [
                (bytes(r[0]), str(r[1]))
                for r in db.execute(
                    "SELECT c.chunk_id, c.policy FROM chunks c WHERE c.stored_at < ?"
                    " AND NOT EXISTS (SELECT 1 FROM snapshot_chunks sc"
                    " WHERE sc.chunk_id = c.chunk_id AND sc.policy = c.policy)",
                    (stored_before,),
                )
            ]
            return self._queue_and_drop(db, keys)

    def queue_deletes(self, items: Iterable[tuple[bytes, bytes, str, int]]) -> None:
        """Queue deletes of packets no record names at that holder any more (a repaired
        packet's old copy on a holder that was away)."""
        now = time.time()
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            for packet_id, target, policy, size in items:
                if db.execute(
                    "SELECT 1 FROM packets WHERE packet_id = ? AND target = ?", (packet_id, target)
                ).fetchone():
                    continue
                db.execute(
                    "INSERT OR IGNORE INTO pending_deletes(packet_id, target, policy, size,"
                    " queued) VALUES (?, ?, ?, ?, ?)",
                    (packet_id, target, policy, size, now),
                )

    # --- the queue ---------------------------------------------------------------------------

    def deletes_due(self, now: float, limit: int, *, all_now: bool = False) -> list[PendingDelete]:
        """Queued deletes whose next try is due (``all_now``: every one, for ``prune``)."""
        rows = (
            self._db()
            .execute(
                "SELECT packet_id, target, policy, size, attempts FROM pending_deletes"
                " WHERE next_try <= ? ORDER BY next_try LIMIT ?",
                (float("inf") if all_now else now, limit),
            )
            .fetchall()
        )
        return [PendingDelete(bytes(i), bytes(t), str(p), int(s), int(a)) for i, t, p, s, a in rows]

    def deletes_done(self, done: Iterable[tuple[bytes, bytes]]) -> None:
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM pending_deletes WHERE packet_id = ? AND target = ?", done)

    def deletes_failed(self, failed: Iterable[PendingDelete], now: float) -> None:
        """Try again later: a minute, doubling per attempt, at most ``MAX_RETRY_S``."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "UPDATE pending_deletes SET attempts = attempts + 1, next_try = ?"
                " WHERE packet_id = ? AND target = ?",
                (
                    (now + min(MAX_RETRY_S, 60.0 * 2 ** min(d.attempts, 16)), d.packet_id, d.target)
                    for d in failed
                ),
            )

    def drop_stale_deletes(self, queued_before: float) -> int:
        """Forget deletes queued before ``queued_before``: the holder's own collector has
        reclaimed those packets, since nobody renewed them."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            return int(
                db.execute(
                    "DELETE FROM pending_deletes WHERE queued < ?", (queued_before,)
                ).rowcount
            )

    def pending_deletes(self) -> tuple[int, int]:
        """(queued deletes, their bytes)."""
        count, size = (
            self._db()
            .execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM pending_deletes")
            .fetchone()
        )
        return int(count), int(size)
