"""Crashes and disasters on real processes: SIGKILL mid-backup, and a lost home."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import blake3
import pytest

from simulations.harness import LocalGrid

from .trees import assert_same_tree, lose_and_recover, make_mixed_tree

pytestmark = pytest.mark.slow


def test_sigkill_mid_backup_leaves_a_consistent_catalog(make_grid: Any, tmp_path: Path) -> None:
    grid: LocalGrid = make_grid(7)
    small = make_mixed_tree(tmp_path / "small", big_bytes=1024 * 1024, small_files=20)
    first = grid.cli("n0", "backup", str(small))["snapshot_id"]

    big = tmp_path / "big"
    big.mkdir()
    for i in range(3):
        (big / f"part{i}.bin").write_bytes(os.urandom(16 * 1024 * 1024))
    backup = subprocess.Popen(
        grid.command("backup", str(big), "--home", str(grid.nodes["n0"].home), "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=grid.env,
    )
    assert backup.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = backup.stdout.readline()
        if not line:
            break
        event = json.loads(line)
        if event.get("event") == "progress" and event["bytes_uploaded"] > 0:
            break
    # Mid-backup: the source and one target die without any chance to clean up.
    grid.kill("n0")
    grid.kill("n3")
    assert backup.wait(timeout=30) != 0
    backup.stdout.close()
    assert backup.stderr is not None
    assert backup.stderr.read().decode().startswith("gridnode: error:")
    backup.stderr.close()

    n3_storage = grid.nodes["n3"].home / "storage"
    grid.start("n3")
    grid.start("n0")
    grid.wait_ready("n0")
    grid.wait_ready("n3")
    # A target killed mid-write keeps no half packet it would later serve.
    assert list((n3_storage / "incoming").iterdir()) == []
    for path in (n3_storage / "packets").rglob("*"):
        if path.is_file():
            assert blake3.blake3(path.read_bytes()).hexdigest() == path.name

    listing = {s["snapshot_id"]: s for s in grid.cli("n0", "snapshots")}
    assert listing[first]["complete"] is True
    interrupted = [s for s in listing.values() if s["snapshot_id"] != first]
    assert len(interrupted) == 1
    assert interrupted[0]["complete"] is False and interrupted[0]["state"] == "interrupted"

    grid.wait_converged(timeout=60)
    again = grid.cli("n0", "backup", str(big), timeout=600)
    assert again["files"] == 3
    grid.cli(
        "n0",
        "restore",
        again["snapshot_id"],
        "--to",
        str(tmp_path / "rb"),
        "--path",
        "big/part2.bin",
    )
    assert (tmp_path / "rb" / "big" / "part2.bin").read_bytes() == (big / "part2.bin").read_bytes()
    grid.cli("n0", "restore", first, "--to", str(tmp_path / "rs"))
    assert_same_tree(small, tmp_path / "rs" / "tree")
    log = grid.cli("n0", "log")
    assert log["verified"] is True
    assert "backup_interrupted" in [e["event"] for e in log["entries"]]


def test_recover_with_only_the_key_after_losing_the_home(make_grid: Any, tmp_path: Path) -> None:
    grid: LocalGrid = make_grid(7)
    tree = make_mixed_tree(tmp_path / "src", big_bytes=3 * 1024 * 1024, small_files=40)
    snap = grid.cli("n0", "backup", str(tree))["snapshot_id"]
    # The machine is lost: the node stops and its whole home is gone.
    result = lose_and_recover(grid, "n0", tmp_path / "recovered", seed="n1")
    assert result["snapshots"] == [snap]
    listing = grid.cli("recovered", "snapshots")
    assert [s["snapshot_id"] for s in listing] == [snap]
    assert listing[0]["complete"] is True
    grid.cli("recovered", "restore", snap, "--to", str(tmp_path / "out"))
    assert_same_tree(tree, tmp_path / "out" / "tree")
