"""One SQLite connection per thread, opened the same way for every database of a node
(the catalog, the holdings, the authority's database).

Why per thread: a node reaches its databases from the trio thread and from worker
threads (``trio.to_thread``), and a ``sqlite3`` connection must stay in the thread that
made it.  Each database chooses its own pragmas (how durable a commit is, how much page
cache each connection may keep); the connection itself is always autocommit
(``isolation_level=None``: transactions are explicit, ``BEGIN IMMEDIATE`` where two
writers could race) and in WAL mode, so readers never wait for the writer.

Why connections track their cursors (``_Connection``): when a write fails because the
disk is full (or on another I/O error) SQLite puts the connection's pager in an error
state, and it leaves that state, releasing the WAL write lock, only once no statement
of the connection holds a page.  A read cursor left open on the same connection (a
generator half drained when its reader raised, kept alive by the traceback) kept the
write lock after a failed backup, so every later write, the next backup's included,
failed "database is locked" after the busy timeout; ``in_transaction`` was False
throughout, and closing the connection did not help (``sqlite3_close_v2`` keeps a
connection with unfinalised statements open as a zombie, locks and all).  So after such
an error, every cursor of the connection is closed first.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

__all__ = ["ThreadConnections", "durable", "leaves_connection_broken"]

#: Primary result codes after which SQLite's pager stays in its error state (holding
#: its locks) until no statement of the connection holds a page: a write met a full
#: disk (``SQLITE_FULL``) or failed (``SQLITE_IOERR``).
_PAGER_ERRORS = frozenset({sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL})


def leaves_connection_broken(exc: BaseException) -> bool:
    """Whether ``exc`` is an SQLite error that leaves its connection's pager in the
    error state: a full disk or an I/O error."""
    return isinstance(exc, sqlite3.Error) and (exc.sqlite_errorcode & 0xFF) in _PAGER_ERRORS


class _Connection(sqlite3.Connection):
    """A connection that knows its open cursors, so that an error which breaks it can
    close them all (``release``) and let SQLite drop its locks.  ``with db:`` does so by
    itself on such an error; ``ThreadConnections.reset_all`` does for the calling thread.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cursors: weakref.WeakSet[sqlite3.Cursor] = weakref.WeakSet()

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        cursor = self.cursor()
        self._cursors.add(cursor)
        return cursor.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        cursor = self.cursor()
        self._cursors.add(cursor)
        return cursor.executemany(sql, parameters)

    def release(self) -> None:
        """Close every cursor still open on this connection and roll back its
        transaction, if any: afterwards it holds no lock.  A cursor closed here that
        someone still iterates fails "Cannot operate on a closed cursor"; on a
        connection broken by a full disk its next step would have failed anyway."""
        for cursor in list(self._cursors):
            with contextlib.suppress(sqlite3.Error):
                cursor.close()
        self._cursors.clear()
        if self.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.rollback()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> Literal[False]:
        # Before the rollback: on a broken connection SQLite ends the transaction but
        # keeps the write lock while any cursor holds a page.
        if exc is not None and leaves_connection_broken(exc):
            self.release()
        try:
            return super().__exit__(exc_type, exc, tb)
        except sqlite3.Error as failed:  # the COMMIT met the full disk
            if leaves_connection_broken(failed):
                self.release()
            raise


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
        db: _Connection | None = getattr(self._local, "db", None)
        if db is not None and self._local.generation != self._generation:
            self.close()
            db = None
        if db is None:
            db = sqlite3.connect(
                self.path, timeout=self.timeout_s, isolation_level=None, factory=_Connection
            )
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
        another, so all of them start afresh; the calling thread's (where the error was
        met, when called from the handler of that error) is closed at once, cursors
        first, so that it holds no lock from here on."""
        self._generation += 1
        self.close()

    def close(self) -> None:
        """Close this thread's connection, every cursor on it first (a connection closed
        with an open cursor lives on, with its locks, until the cursor is collected);
        the others close with their threads."""
        db: _Connection | None = getattr(self._local, "db", None)
        if db is not None:
            self._local.db = None
            db.release()
            db.close()


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
