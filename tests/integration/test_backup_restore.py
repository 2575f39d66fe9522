"""Issue 3 end to end on real node processes: backup, restore, loss, incremental."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from gridnode.logic.chunking import CHUNK_MAX
from simulations.harness import GridCommandError, LocalGrid

from .trees import assert_same_tree, make_mixed_tree

pytestmark = pytest.mark.slow


def test_mixed_tree_round_trip_single_file_and_incremental(make_grid: Any, tmp_path: Path) -> None:
    grid: LocalGrid = make_grid(7)
    tree = make_mixed_tree(tmp_path / "src")
    events = grid.events("n0", "backup", str(tree))
    result = events[-1]
    assert result["event"] == "result"
    for key in (
        "snapshot_id",
        "files",
        "bytes_read",
        "bytes_uploaded",
        "packets_uploaded",
        "seconds",
    ):
        assert key in result
    assert any(e["event"] == "progress" for e in events[:-1])
    assert result["files"] == 207
    snapshot = result["snapshot_id"]

    listing = grid.cli("n0", "snapshots")
    assert [s["snapshot_id"] for s in listing] == [snapshot]
    assert listing[0]["complete"] is True
    for key in ("created", "files", "bytes"):
        assert key in listing[0]

    restored = grid.cli("n0", "restore", snapshot, "--to", str(tmp_path / "out"))
    assert restored["files"] == 207
    assert restored["bytes"] == result["bytes"]
    assert_same_tree(tree, tmp_path / "out" / "tree")

    one = grid.cli(
        "n0",
        "restore",
        snapshot,
        "--to",
        str(tmp_path / "one"),
        "--path",
        "tree/nested/deeper/deepest/note.md",
    )
    assert one["files"] == 1
    files = [p for p in (tmp_path / "one").rglob("*") if p.is_file()]
    assert [p.relative_to(tmp_path / "one").as_posix() for p in files] == [
        "tree/nested/deeper/deepest/note.md"
    ]
    assert files[0].read_bytes() == (tree / "nested/deeper/deepest/note.md").read_bytes()

    # Unchanged tree: nothing read, nothing uploaded.
    again = grid.cli("n0", "backup", str(tree))
    assert again["bytes_read"] == 0
    assert again["packets_uploaded"] == 0
    assert again["files_unchanged"] == 207

    # 1% of a large file changed in place: the upload is a small multiple of the change
    # (the chunks around the change, times n/k), not the file.
    large = tmp_path / "large"
    large.mkdir()
    rng = random.Random(64)  # seeded: chunk boundaries, hence the bound below, are fixed
    data = bytearray(rng.randbytes(64 * 1024 * 1024))
    (large / "disk.img").write_bytes(bytes(data))
    first = grid.cli("n0", "backup", str(large))
    assert first["bytes_uploaded"] > len(data) * 1.4  # n/k = 1.5x of incompressible data
    change = len(data) // 100
    start = len(data) // 3
    data[start : start + change] = rng.randbytes(change)
    (large / "disk.img").write_bytes(bytes(data))
    changed = grid.cli("n0", "backup", str(large))
    assert changed["bytes_read"] == len(data)
    # The changed bytes plus the content-defined chunks around them (a few MiB at most),
    # times n/k: a few percent of the first upload, not the file again.
    assert changed["bytes_uploaded"] < 1.5 * (change + 2 * CHUNK_MAX)
    assert changed["bytes_uploaded"] < 0.1 * first["bytes_uploaded"]
    restored2 = grid.cli("n0", "restore", changed["snapshot_id"], "--to", str(tmp_path / "o2"))
    assert restored2["files"] == 1
    assert (tmp_path / "o2" / "large" / "disk.img").read_bytes() == bytes(data)

    log = grid.cli("n0", "log")
    assert log["verified"] is True
    assert [e["event"] for e in log["entries"]].count("backup") == 4


def test_loss_of_n_minus_k_targets_and_corruption(make_grid: Any, tmp_path: Path) -> None:
    grid: LocalGrid = make_grid(7)
    tree = make_mixed_tree(tmp_path / "src", big_bytes=6 * 1024 * 1024, small_files=30)
    snap = grid.cli("n0", "backup", str(tree))["snapshot_id"]

    # Corrupt one packet on one target's disk: detected, fetched elsewhere.
    victim = grid.nodes["n3"].home / "storage" / "packets"
    packet_files = sorted(p for p in victim.rglob("*") if p.is_file())
    assert packet_files, "n3 holds no packets"
    for path in packet_files:
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    verify = grid.cli("n0", "verify", snap)
    assert verify["ok"] is True
    assert verify["chunks_degraded"] >= 1
    assert verify["problems"]
    # The holder checks every packet before serving it: corrupt ones are quarantined, never
    # sent; the source sees them as missing and decodes from the other holders.
    assert grid.status("n3")["storage"]["quarantined"] == len(packet_files)
    grid.cli("n0", "restore", snap, "--to", str(tmp_path / "r1"))
    assert_same_tree(tree, tmp_path / "r1" / "tree")

    # Every chunk has one packet on each of the 6 other nodes.  With n3 (whose packets
    # are bad anyway) and n5 gone, n - k = 2 holders are lost: restore still works.
    # With a third one gone, too few are left and the restore says so.
    grid.kill("n3")
    grid.kill("n5")
    grid.kill("n6")
    with pytest.raises(GridCommandError) as info:
        grid.cli("n0", "restore", snap, "--to", str(tmp_path / "r-too-few"))
    assert "only 3 of the 4 packets" in info.value.stderr
    grid.start("n6")
    grid.wait_ready("n6")
    grid.wait_state("n0", "n6", "alive", timeout=30)
    restored = grid.cli("n0", "restore", snap, "--to", str(tmp_path / "r2"))
    assert restored["files"] == 37
    assert_same_tree(tree, tmp_path / "r2" / "tree")
