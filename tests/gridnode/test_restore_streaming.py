"""A restore streams a snapshot (issue 11): the catalog's pages, the assembler's bounded
read-ahead, and a tree cut into many small pages still restored whole.

Real parts: a real SQLite catalog, real files in a temporary directory; the packets come
from a function (the retriever is tested in ``test_restore_pipeline``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import blake3
import pytest
import trio
from nacl.signing import SigningKey

from gridnode.actors import assembler as assembler_module
from gridnode.actors.assembler import Assembler, AssembleTree, EntryKind, ListSource
from gridnode.names import escape
from gridnode.restore import CatalogSource, SnapshotNotFound, select
from gridnode.storage.catalog import Catalog
from gridnode.storage.records import ChunkRecord, EntryRecord, SnapshotRecord


def _assembler(blobs: dict[bytes, bytes], **options: Any) -> Assembler:
    async def fetch(chunk: ChunkRecord) -> dict[int, bytes]:
        return {0: blobs[chunk.chunk_id]}

    _send, receive = trio.open_memory_channel[Any](1)
    return Assembler(
        inbound=receive,
        dedup_secret=b"",
        record_key=b"",
        cpu_limiter=trio.CapacityLimiter(2),
        disk_limiter=trio.CapacityLimiter(2),
        fetch=fetch,
        **options,
    )


async def _plain(self: Assembler, chunk: ChunkRecord) -> bytes:
    """No packets to decode in these tests: a chunk's "share" is its plaintext."""
    return (await self.fetch(chunk))[0]


@pytest.fixture(autouse=True)
def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Assembler, "fetch_plaintext", _plain)


def _chunk(blob: bytes) -> ChunkRecord:
    chunk_id = blake3.blake3(blob).digest()
    return ChunkRecord(chunk_id, len(blob), len(blob), False, 1, 1, ())


class _Counting(ListSource):
    """A list served in small pages, counting the file entries handed out."""

    def __init__(self, *args: Any, page_size: int) -> None:
        super().__init__(*args)
        self.page_size = page_size
        self.files_served = 0
        self.pages: list[tuple[EntryKind, bool]] = []

    async def page(
        self, kind: EntryKind, after: bytes | None, *, descending: bool = False
    ) -> list[EntryRecord]:
        found = await super().page(kind, after, descending=descending)
        self.pages.append((kind, descending))
        if kind == "file":
            self.files_served += len(found)
        return found


def test_a_tree_in_pages_of_two_comes_back_whole(tmp_path: Path) -> None:
    """Pages of two entries: a hard link whose first name was written pages earlier is
    linked to it, symlinks and FIFOs come from their own passes, and every directory
    gets its time last, children before parents, across pages (in reverse path order)."""
    blob = os.urandom(64 * 1024)
    chunk = _chunk(blob)
    cid = chunk.chunk_id
    entries = [
        EntryRecord(b"a", "dir", 0o750, 1_000_000_001, 0),
        EntryRecord(b"a/b", "dir", 0o700, 1_000_000_002, 0),
        EntryRecord(b"a/b/c", "dir", 0o755, 1_000_000_003, 0),
        EntryRecord(b"z", "dir", 0o555, 1_000_000_004, 0),  # read-only: finished last
        EntryRecord(b"a/first", "file", 0o644, 7, 1000, extents=((cid, 0, 1000),)),
        *(
            EntryRecord(
                b"a/b/f%02d" % i, "file", 0o600, i, 100, extents=((cid, 1000 + i * 100, 100),)
            )
            for i in range(9)
        ),
        EntryRecord(
            b"a/b/c/later", "file", 0o644, 7, 1000, extents=((cid, 0, 1000),), hardlink=b"a/first"
        ),
        EntryRecord(b"z/link", "symlink", 0o777, 9, 0, link_target=b"../a/first"),
        EntryRecord(b"a/b/c/pipe", "fifo", 0o640, 11, 0),
    ]
    source = _Counting(entries, {cid: chunk}, page_size=2)
    stats = trio.run(_assembler({cid: blob}).assemble, AssembleTree(source, {}, tmp_path))
    assert stats["files"] == 11 and stats["hardlinks"] == 1 and stats["dirs"] == 4
    assert stats["symlinks"] == 1 and stats["specials"] == 1
    first, later = tmp_path / "a" / "first", tmp_path / "a" / "b" / "c" / "later"
    assert first.read_bytes() == blob[:1000]
    assert os.stat(first).st_ino == os.stat(later).st_ino
    for i in range(9):
        path = tmp_path / "a" / "b" / f"f{i:02d}"
        assert path.read_bytes() == blob[1000 + i * 100 : 1100 + i * 100]
    assert os.readlink(tmp_path / "z" / "link") == "../a/first"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "a" / "b" / "c" / "pipe").st_mode)
    for entry in entries[:4]:
        info = os.lstat(tmp_path / os.fsdecode(entry.path))
        assert (info.st_mtime_ns, info.st_mode & 0o7777) == (entry.mtime_ns, entry.mode)
    # Every pass went page by page: directories twice (made, then finished backwards).
    assert ("dir", True) in source.pages and source.pages.count(("file", False)) >= 6


def test_the_writer_never_has_more_than_the_read_ahead_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,000 small files packed in one chunk: the prefetcher wants nothing more after the
    first page, so the reader reads on only up to ``READ_AHEAD_MAX`` files beyond what
    is written (the old assembler held every entry of the snapshot at once)."""
    monkeypatch.setattr(assembler_module, "READ_AHEAD", 8)
    monkeypatch.setattr(assembler_module, "READ_AHEAD_MAX", 32)
    count, size = 2000, 10
    blob = os.urandom(count * size)
    chunk = _chunk(blob)
    entries = [
        EntryRecord(
            b"f%04d" % i, "file", 0o644, i, size, extents=((chunk.chunk_id, i * size, size),)
        )
        for i in range(count)
    ]
    done = [0]
    ahead: list[int] = []

    class Source(_Counting):
        async def page(
            self, kind: EntryKind, after: bytes | None, *, descending: bool = False
        ) -> list[EntryRecord]:
            ahead.append(self.files_served - done[0])  # read, not yet on disk
            return await super().page(kind, after, descending=descending)

    def progress(files: int, _bytes: int) -> None:
        done[0] = files

    source = Source(entries, {chunk.chunk_id: chunk}, page_size=4)
    assembler = _assembler({chunk.chunk_id: blob}, write_batches=1)
    stats = trio.run(assembler.assemble, AssembleTree(source, {}, tmp_path, progress=progress))
    assert stats["files"] == count and stats["chunks"] == 1
    assert (tmp_path / "f1999").read_bytes() == blob[-size:]
    # Queued (32), one page (4), a batch being filled and one being written (64 each).
    assert max(ahead) <= 32 + 4 + 2 * assembler_module.BATCH_FILES


def _catalog_with(tmp_path: Path, entries: list[EntryRecord]) -> tuple[Catalog, SnapshotRecord]:
    catalog = Catalog(tmp_path / "catalog.sqlite", signing_key=SigningKey.generate())
    catalog.begin_snapshot("s1", roots=["/r"], parent=None, params="1/1", rules={})
    catalog.add_entries("s1", entries)
    catalog.complete_snapshot("s1", files=0, size_bytes=0, record=None)
    snap = catalog.snapshot("s1")
    assert snap is not None
    return catalog, snap


class _Services:
    """What ``CatalogSource`` uses of the job services: the catalog, in a worker thread."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def db(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args)


def test_catalog_pages_follow_kind_order_and_scope(tmp_path: Path) -> None:
    """Keyset pages of the catalog: by kind (or every other kind), forwards and backwards,
    the whole snapshot or one path with what lies below it and the directories above."""
    entries = [
        EntryRecord(b"r", "dir", 0o755, 0, 0),
        EntryRecord(b"r/d", "dir", 0o755, 0, 0),
        EntryRecord(b"r/d/x", "file", 0o644, 0, 3),
        EntryRecord(b"r/d/y", "file", 0o644, 0, 4),
        EntryRecord(b"r/d.txt", "file", 0o644, 0, 5),  # sorts between r/d and r/d/x
        EntryRecord(b"r/d0", "dir", 0o755, 0, 0),  # just past the range below r/d
        EntryRecord(b"r/d/s", "symlink", 0o777, 0, 0, link_target=b"x"),
        EntryRecord(b"r/d/p", "fifo", 0o644, 0, 0),
        EntryRecord(b"r/e\xff", "file", 0o644, 0, 6),
    ]
    catalog, snap = _catalog_with(tmp_path, entries)

    def walk(source: CatalogSource, kind: EntryKind, descending: bool = False) -> list[bytes]:
        async def go() -> list[bytes]:
            paths: list[bytes] = []
            after = None
            for _ in range(100):
                page = await source.page(kind, after, descending=descending)
                paths += [e.path for e in page]
                if len(page) < source.page_size:
                    return paths
                after = page[-1].path
            raise AssertionError("pages never ended")

        return trio.run(go)

    services: Any = _Services(catalog)
    whole = CatalogSource(services, snap)
    whole.page_size = 2
    assert walk(whole, "file") == [b"r/d.txt", b"r/d/x", b"r/d/y", b"r/e\xff"]
    assert walk(whole, "dir", descending=True) == [b"r/d0", b"r/d", b"r"]
    assert walk(whole, "special") == [b"r/d/p"]
    assert walk(whole, "symlink") == [b"r/d/s"]
    below = CatalogSource(services, snap, b"r/d", [b"r"])
    below.page_size = 1
    assert walk(below, "dir") == [b"r", b"r/d"]
    assert walk(below, "file") == [b"r/d/x", b"r/d/y"]
    assert trio.run(below.restored_files, [b"r/d/x", b"r/d.txt", b"r/d/s"]) == {b"r/d/x"}
    assert catalog.entry_totals("s1", kind="file") == (4, 18)
    assert catalog.entry_totals("s1", kind="file", under=b"r/d") == (2, 7)
    catalog.close()


def test_a_path_selects_its_subtree_in_either_form_or_is_refused(tmp_path: Path) -> None:
    """``restore --path``: the literal name or the escaped form ``ls`` shows; a path the
    snapshot lacks is refused before anything is written."""
    entries = [
        EntryRecord(b"r", "dir", 0o755, 0, 0),
        EntryRecord(b"r/e\xff", "dir", 0o755, 0, 0),
        EntryRecord(b"r/e\xff/f", "file", 0o644, 0, 1),
        EntryRecord(b"r/g", "file", 0o644, 0, 2),
    ]
    catalog, snap = _catalog_with(tmp_path, entries)
    services: Any = _Services(catalog)
    for typed in (escape(b"r/e\xff"), os.fsdecode(b"r/e\xff") + "/"):
        source = trio.run(select, services, snap, typed)
        assert (source.under, source.parents) == (b"r/e\xff", (b"r",))
        assert [e.path for e in trio.run(source.page, "file", None)] == [b"r/e\xff/f"]
    with pytest.raises(SnapshotNotFound, match="no path"):
        trio.run(select, services, snap, "r/e")
    assert trio.run(select, services, snap, None).under is None
    catalog.close()
