"""``backup --exclude-file``, ``--one-file-system`` and ``--dry-run`` (issue 12)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gridnode.cli import read_exclude_file
from gridnode.cli_common import CliError
from gridnode.scanner import iter_tree

from .inproc import open_grid


def test_an_exclude_file_has_one_glob_per_line(tmp_path: Path) -> None:
    path = tmp_path / "excludes"
    path.write_text("# caches\n*.tmp\n\n  node_modules  \n#*.log\n")
    assert read_exclude_file(str(path)) == ["*.tmp", "node_modules"]
    with pytest.raises(CliError, match="cannot read the exclude file"):
        read_exclude_file(str(tmp_path / "missing"))
    (tmp_path / "binary").write_bytes(b"\xff\xfe*.x\n")
    with pytest.raises(CliError, match="not UTF-8"):
        read_exclude_file(str(tmp_path / "binary"))


def test_one_file_system_records_mount_points_but_does_not_enter_them() -> None:
    # /dev is a devtmpfs with other file systems mounted inside (/dev/shm, /dev/pts).
    device = os.stat("/dev").st_dev
    mounts = sorted(
        name
        for name in os.listdir("/dev")
        if os.path.isdir(f"/dev/{name}")
        and not os.path.islink(f"/dev/{name}")
        and os.stat(f"/dev/{name}").st_dev != device
    )
    assert mounts, "this machine has no file system mounted under /dev"
    notes: list[str] = []
    paths = {e.path for e in iter_tree(["/dev"], notes=notes, one_file_system=True)}
    for name in mounts:
        assert f"dev/{name}".encode() in paths  # the mount point itself is kept
        assert not any(p.startswith(f"dev/{name}/".encode()) for p in paths)
        assert f"did not enter dev/{name}: another file system" in notes
    everything = {e.path for e in iter_tree(["/dev"], notes=[])}
    assert paths < everything or all(not os.listdir(f"/dev/{m}") for m in mounts)


async def test_a_dry_run_uploads_and_records_nothing(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("alpha " * 1000)
    (tree / "b.bin").write_bytes(os.urandom(300_000))
    (tree / "skip.tmp").write_bytes(b"x" * 1000)
    async with open_grid(tmp_path / "grid", 7) as grid:
        first = await grid.call(0, "backup", paths=[str(tree)], excludes=["*.tmp"])
        held = [node.packets.packet_count for node in grid.nodes]
        (tree / "b.bin").write_bytes(os.urandom(500_000))
        (tree / "c.txt").write_text("new")
        dry = await grid.call(0, "backup", paths=[str(tree)], excludes=["*.tmp"], dry_run=True)
        assert dry["dry_run"] is True and dry["parent"] == first["snapshot_id"]
        assert (dry["files"], dry["files_changed"], dry["files_unchanged"]) == (3, 2, 1)
        assert dry["bytes_changed"] == 500_003
        assert dry["would_store_at_most"] == -(-500_003 * 6 // 4)  # 4/6 by default
        assert dry["bytes_uploaded"] == 0 and dry["quota"] is None  # an open grid
        assert [node.packets.packet_count for node in grid.nodes] == held
        snapshots = await grid.call(0, "snapshots")
        assert [s["snapshot_id"] for s in snapshots] == [first["snapshot_id"]]
        with pytest.raises(Exception, match="must be a boolean"):
            await grid.call(0, "backup", paths=[str(tree)], dry_run="yes")


async def test_find_searches_names_or_paths_across_snapshots(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "taxes").mkdir(parents=True)
    (tree / "taxes" / "2025.pdf").write_bytes(b"pdf" * 100)
    (tree / "notes.txt").write_text("notes")
    (tree / os.fsdecode(b"odd-\xff.pdf")).write_bytes(b"odd")
    async with open_grid(tmp_path / "grid", 7) as grid:
        first = await grid.call(0, "backup", paths=[str(tree)])
        (tree / "taxes" / "2026.pdf").write_bytes(b"new")
        second = await grid.call(0, "backup", paths=[str(tree)])
        found = await grid.call(0, "find", pattern="*.pdf", snapshots=[])
        assert found["snapshots"] == [second["snapshot_id"], first["snapshot_id"]]
        by_snapshot = {
            sid: sorted(m["path"] for m in found["matches"] if m["snapshot_id"] == sid)
            for sid in found["snapshots"]
        }
        assert by_snapshot[first["snapshot_id"]] == [
            "tree/odd-\\xff.pdf",
            "tree/taxes/2025.pdf",
        ]
        assert len(by_snapshot[second["snapshot_id"]]) == 3
        assert found["total"] == 5 and not found["truncated"]
        # A pattern with '/' matches whole paths; one snapshot may be named.
        on_path = await grid.call(0, "find", pattern="tree/taxes/*", snapshots=["latest"])
        assert sorted(m["path"] for m in on_path["matches"]) == [
            "tree/taxes/2025.pdf",
            "tree/taxes/2026.pdf",
        ]
        # The escaped form finds an undecodable byte.
        odd = await grid.call(0, "find", pattern="*\\xff*", snapshots=[first["snapshot_id"]])
        assert [m["path"] for m in odd["matches"]] == ["tree/odd-\\xff.pdf"]
        assert (await grid.call(0, "find", pattern="*.doc", snapshots=[]))["matches"] == []


async def test_forget_by_policy_keeps_what_the_policy_says_per_set_of_paths(
    tmp_path: Path,
) -> None:
    docs, photos = tmp_path / "docs", tmp_path / "photos"
    docs.mkdir()
    photos.mkdir()
    (photos / "p.bin").write_bytes(os.urandom(100_000))
    async with open_grid(tmp_path / "grid", 7) as grid:
        ids = []
        for i in range(4):  # each backup of docs adds one unique file
            (docs / f"v{i}.bin").write_bytes(os.urandom(150_000))
            ids.append((await grid.call(0, "backup", paths=[str(docs)]))["snapshot_id"])
        photo_id = (await grid.call(0, "backup", paths=[str(photos)]))["snapshot_id"]
        held = sum(node.packets.packet_count for node in grid.nodes)
        dry = await grid.call(0, "forget", policy={"keep_last": 2}, dry_run=True)
        assert dry["dry_run"] and sorted(dry["forget"]) == sorted(ids[:2])
        assert {k["snapshot_id"] for k in dry["keep"]} == {ids[2], ids[3], photo_id}
        assert sum(node.packets.packet_count for node in grid.nodes) == held
        done = await grid.call(0, "forget", policy={"keep_last": 2})
        assert sorted(done["forget"]) == sorted(ids[:2])
        snapshots = {s["snapshot_id"] for s in await grid.call(0, "snapshots")}
        assert snapshots == {ids[2], ids[3], photo_id}
        # The two forgotten snapshots shared everything with the kept ones except their
        # own records: nothing the kept snapshots need was deleted.
        restored = await grid.call(0, "restore", snapshot=ids[3], to=str(tmp_path / "out"))
        assert restored["files"] == 4
        assert (await grid.call(0, "forget", policy={"keep_last": 2}))["forget"] == []
        with pytest.raises(Exception, match="must keep something"):
            await grid.call(0, "forget", policy={})
        with pytest.raises(Exception, match="unknown policy keys: keep_forever"):
            await grid.call(0, "forget", policy={"keep_forever": 1})
