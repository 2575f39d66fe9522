"""A write that meets a full disk must leave no lock behind (``gridnode.storage.sqlite``).

What happened: a backup's record writer failed on a full home with the catalog's entries
half read; the cleanup's delete, on the same thread's connection, met the full disk too.
SQLite then kept that connection's WAL write lock for as long as the half-read cursor
lived (the failure's traceback kept it), with ``in_transaction`` False, and the user's
next backup failed "database is locked" after the busy timeout.

The disk is made full without root: ``RLIMIT_FSIZE`` stops the write-ahead log from
growing (a real write error, as on a full disk; ``max_page_count`` would not do, its
"full" is a quota SQLite checks before writing, which leaves no error state behind).
Another connection with a short busy timeout then shows whether a lock was left.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gridnode.job_services import fresh_after_errors
from gridnode.storage.catalog import Catalog
from gridnode.storage.records import EntryRow
from gridnode.storage.sqlite import ThreadConnections, leaves_connection_broken

SNAPSHOT = "f00d"
#: The log may grow to this; the entries' pages are several MiB, the page cache 1 MiB.
LIMIT_BYTES = 256 * 1024


@contextlib.contextmanager
def log_cannot_grow() -> Iterator[None]:
    """Writes past ``LIMIT_BYTES`` of any file of this process fail (EFBIG, or a short
    write SQLite reports as a full disk), as they would on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def catalog_with_a_running_snapshot(tmp_path: Path) -> Catalog:
    catalog = Catalog(tmp_path / "catalog.sqlite", signing_key=SigningKey.generate())
    catalog.begin_snapshot(SNAPSHOT, roots=["/t"], parent=None, params="2/3", rules={})
    rows: list[EntryRow] = [
        (SNAPSHOT, b"/t/%06d-" % i + b"n" * 80, "dir", 0o755, 0, 0, i, 1, None, None, None)
        for i in range(30_000)
    ]
    catalog.add_entry_rows(SNAPSHOT, rows, (), policy="")
    catalog.checkpoint()  # an empty log: whatever the delete writes must grow it
    assert (tmp_path / "catalog.sqlite-wal").stat().st_size == 0
    return catalog


def another_writer_can_write(path: Path) -> bool:
    """Whether a second connection gets the write lock within its (short) busy timeout."""
    other = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT OR REPLACE INTO profile(key, value) VALUES ('probe', '1')")
        other.execute("COMMIT")
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        other.close()


def test_a_transaction_that_meets_a_full_disk_keeps_no_lock_behind_a_half_read(
    tmp_path: Path,
) -> None:
    catalog = catalog_with_a_running_snapshot(tmp_path)
    reading = catalog.entries(SNAPSHOT)  # as the record writer left it: half read
    assert next(reading).path.startswith(b"/t/000000-")

    with log_cannot_grow(), pytest.raises(sqlite3.OperationalError) as full:
        catalog.fail_snapshot(SNAPSHOT)  # on the same thread's connection, as the cleanup
    assert leaves_connection_broken(full.value)

    # Space is back: the next backup's first write must not wait for anything.
    assert another_writer_can_write(catalog.path)
    catalog.reset_connections()  # as ``fresh_after_errors`` does after the error
    catalog.fail_snapshot(SNAPSHOT)
    assert catalog.snapshot(SNAPSHOT) is None
    with pytest.raises(sqlite3.ProgrammingError):  # the half read ended with the error
        next(reading)
    catalog.close()


def test_a_lone_write_that_meets_a_full_disk_keeps_no_lock_once_the_error_is_handled(
    tmp_path: Path,
) -> None:
    """A write outside a transaction block: ``fresh_after_errors`` (how every job calls
    the catalog) resets the connections, and this thread's is released there."""
    catalog = catalog_with_a_running_snapshot(tmp_path)
    reading = catalog.entries(SNAPSHOT)
    next(reading)
    many = {bytes([i % 256]) * 32 + i.to_bytes(4, "big"): float(i) for i in range(20_000)}

    with log_cannot_grow(), pytest.raises(sqlite3.OperationalError) as full:
        fresh_after_errors(catalog, catalog.set_delegates, many)
    assert leaves_connection_broken(full.value)

    assert another_writer_can_write(catalog.path)
    catalog.set_delegates(many)
    assert len(catalog.delegates()) == len(many)
    catalog.close()


def test_closing_a_connection_closes_its_cursors_so_it_keeps_no_read_of_the_log(
    tmp_path: Path,
) -> None:
    """``close`` with a cursor open: SQLite would keep the connection (a zombie) and its
    read of the log, and a TRUNCATE checkpoint could never empty the log."""
    connections = ThreadConnections(tmp_path / "db.sqlite", timeout_s=60, pragmas=())
    db = connections()
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    with db:
        db.execute("BEGIN")
        db.executemany("INSERT INTO t(k) VALUES (?)", ((i,) for i in range(1000)))
    cursor = db.execute("SELECT k FROM t")
    assert cursor.fetchone() == (0,)
    connections.close()

    other = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    assert (tmp_path / "db.sqlite-wal").stat().st_size == 0
    other.close()


def test_the_cleanup_checkpoint_gives_up_on_a_reader_and_keeps_the_writers_patience(
    tmp_path: Path,
) -> None:
    """A reader in another connection keeps TRUNCATE from emptying the log: the
    checkpoint does what it can without waiting out the writers' busy timeout, which
    it leaves as it was."""
    catalog = Catalog(tmp_path / "catalog.sqlite", signing_key=SigningKey.generate())
    catalog.set_profile({"a": 1})
    reader = sqlite3.connect(catalog.path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM profile").fetchall()
    catalog.set_profile({"a": 2})  # a frame the reader's snapshot predates

    catalog.checkpoint()

    assert (tmp_path / "catalog.sqlite-wal").stat().st_size > 0  # the reader kept it
    db = catalog._db()
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 60_000
    reader.close()
    catalog.checkpoint()
    assert (tmp_path / "catalog.sqlite-wal").stat().st_size == 0
    catalog.close()
