"""The backup's walk and what it records (issue 11: the data path rebuilt for speed).

The walk goes in the byte order of the paths, the catalog's order, so a backup reads its
parent snapshot beside it a page at a time; the reader builds catalog rows itself and
carries an unchanged file's extents over as stored.  These tests pin what that must not
change: every unchanged file is found (also across the ``a`` / ``a.txt`` / ``a/x``
orderings and page boundaries), and the rows are byte for byte what
``Catalog.add_entries`` writes for the same records.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import gridnode.backup
from gridnode.logic.chunking import read_small_regular
from gridnode.scanner import iter_tree
from gridnode.storage.records import EntryRecord, entry_row

from .inproc import open_grid


def _tree(root: Path) -> int:
    """A tree whose depth-first walk by name is not in path order; returns its files."""
    (root / "a").mkdir(parents=True)
    (root / "a" / "x").write_bytes(b"below a")
    (root / "a.txt").write_bytes(b"after a, before a/x in path order")
    (root / "a-b").mkdir()
    (root / "a-b" / "deep").mkdir()
    (root / "a-b" / "deep" / "f").write_bytes(os.urandom(3000))
    (root / "big").write_bytes(os.urandom(600_000))  # chunked alone, not packed
    (root / "empty").write_bytes(b"")
    (root / "linked").write_bytes(b"two names")
    os.link(root / "linked", root / "a" / "second-name")
    (root / "tagged").write_bytes(b"with an attribute")
    os.setxattr(root / "tagged", "user.note", b"\x00\xff")
    os.symlink("a.txt", root / "link")
    for i in range(30):  # more files than a page of the parent (set small below)
        (root / "many").mkdir(exist_ok=True)
        (root / "many" / f"{i:02d}").write_bytes(b"%d" % i)
    return 8 + 30


def test_the_walk_goes_in_the_byte_order_of_the_paths(tmp_path: Path) -> None:
    _tree(tmp_path / "r")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "r.b").write_bytes(b"a second root sorting between r and r/...")
    paths = [e.path for e in iter_tree([str(tmp_path / "r"), str(tmp_path / "other" / "r.b")])]
    assert paths == sorted(paths)
    assert len(paths) == len(set(paths))
    # the directory "r/a" before "r/a-b" and "r/a.txt", what lies below it after them
    assert paths.index(b"r/a") < paths.index(b"r/a-b") < paths.index(b"r/a.txt")
    assert paths.index(b"r/a.txt") < paths.index(b"r/a/x")
    assert paths[:2] == [b"r", b"r.b"]


def _rows(db: Path, snapshot_id: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT path, kind, mode, mtime_ns, size, inode, device, link_target, extents, meta"
            " FROM entries WHERE snapshot_id = ? ORDER BY path",
            (snapshot_id,),
        ).fetchall()


async def test_an_unchanged_rebackup_carries_every_file_over_as_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gridnode.backup, "PARENT_PAGE", 4)  # many page boundaries
    tree = tmp_path / "tree"
    files = _tree(tree)
    async with open_grid(tmp_path / "grid", 7) as grid:
        first = await grid.call(0, "backup", paths=[str(tree)])
        again = await grid.call(0, "backup", paths=[str(tree)])
        assert first["files"] == again["files"] == files
        # every file but the hard link's second name, which takes the first's extents
        assert again["files_unchanged"] == files - 1
        assert again["bytes_read"] == 0
        assert again["chunks_new"] == 0 and again["packets_uploaded"] == 0
        catalog = grid.nodes[0].catalog
        db = catalog.path
        old, new = _rows(db, first["snapshot_id"]), _rows(db, again["snapshot_id"])
        assert new == old  # the same tree: the same rows, extents and meta included
        # ... and exactly the rows add_entries writes for the records read back
        records = list(catalog.entries(again["snapshot_id"]))
        assert [entry_row("s", e)[1:] for e in records] == new
        by_path = {e.path: e for e in records}
        second: EntryRecord = by_path[b"tree/linked"]
        assert by_path[b"tree/a/second-name"].hardlink is None  # first in path order
        assert second.hardlink == b"tree/a/second-name"
        assert by_path[b"tree/tagged"].xattrs == ((b"user.note", b"\x00\xff"),)
        # The snapshot uses the same chunks as its parent.
        assert {c.chunk_id for c in catalog.chunks_of(again["snapshot_id"])} == {
            c.chunk_id for c in catalog.chunks_of(first["snapshot_id"])
        }

        # One file changed, one added: only those are read.
        (tree / "a.txt").write_bytes(b"changed, and longer than before")
        (tree / "a" / "y").write_bytes(b"new")
        third = await grid.call(0, "backup", paths=[str(tree)])
        assert third["files"] == files + 1
        assert third["files_unchanged"] == files - 2
        assert third["bytes_read"] == len(b"changed, and longer than before") + 3


def test_a_small_file_is_read_whole_and_guarded_as_open_regular(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    name = os.fsencode(path)
    assert read_small_regular(name, 100, 1000) == b"x" * 100
    # grew (or shrank) since the walk: read to the end all the same
    assert read_small_regular(name, 40, 1000) == b"x" * 100
    assert read_small_regular(name, 400, 1000) == b"x" * 100
    # more than the limit: limit + 1 bytes, so the caller sees it
    assert read_small_regular(name, 100, 10) == b"x" * 11
    (tmp_path / "empty").write_bytes(b"")
    assert read_small_regular(os.fsencode(tmp_path / "empty"), 0, 10) == b""
    os.mkfifo(tmp_path / "fifo")  # opening it for reading without O_NONBLOCK would hang
    with pytest.raises(OSError, match="no longer a regular file"):
        read_small_regular(os.fsencode(tmp_path / "fifo"), 0, 10)
    os.symlink(path, tmp_path / "link")
    with pytest.raises(OSError):
        read_small_regular(os.fsencode(tmp_path / "link"), 100, 1000)
