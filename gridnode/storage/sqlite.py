"""One SQLite connection per thread, opened the same way for every database of a node
(the catalog, the holdings, the authority's database).

Why per thread: a node reaches its databases from the trio thread and from worker
threads (``trio.to_thread``), and a ``sqlite3`` connection must stay in the thread that
made it.  Each database chooses its own pragmas (how durable a commit is, how much page
cache each connection may keep); the connection itself is always autocommit
(``isolation_level=None``: transactions are explicit, ``BEGIN IMMEDIATE`` where two
writers could race) and in WAL mode, so readers never wait for the writer.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["ThreadConnections", "durable"]


class ThreadConnections:
    """``connections()`` is this thread's connection to ``path``, made on first use."""

    def __init__(
        self, path: Path, *, timeout_s: float, pragmas: Sequence[str], private: bool = False
    ) -> None:
        """``pragmas`` run on each new connection after ``journal_mode=WAL``;
        ``private`` creates the file owner-only (0600) before SQLite creates it."""
        self.path = path
        self.timeout_s = timeout_s
        self.pragmas = tuple(pragmas)
        self._local = threading.local()
        #: Bumped by ``reset_all``: a thread whose connection is older opens a new one.
        self._generation = 0
        if private:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.touch(mode=0o600)

    def __call__(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None and self._local.generation != self._generation:
            db.close()
            db = None
        if db is None:
            db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            for pragma in self.pragmas:
                db.execute(f"PRAGMA {pragma}")
            self._local.db = db
            self._local.generation = self._generation
        return db

    def reset_all(self) -> None:
        """Every thread opens a fresh connection at its next call.

        After a full disk or an I/O error a connection can stay in SQLite's error state
        and fail every later statement, even once space is freed (seen: a backup after
        the user freed 16 MiB failed "database or disk is full" at its first statement).
        The error may be met in any worker thread, and the connection that keeps it in
        another, so all of them start afresh."""
        self._generation += 1

    def close(self) -> None:
        """Close this thread's connection (the others close with their threads)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


@contextlib.contextmanager
def durable(db: sqlite3.Connection) -> Iterator[None]:
    """One transaction committed with a full sync (and every commit before it), on a
    connection that otherwise commits under ``synchronous=NORMAL``: for the facts a user
    is told about, which must be on disk when they are told."""
    db.execute("PRAGMA synchronous=FULL")
    try:
        with db:
            yield
    finally:
        db.execute("PRAGMA synchronous=NORMAL")
