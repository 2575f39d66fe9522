"""A restore onto a disk that fills up: a clear error that names the disk, nothing
half-written left under a real name, and the node restores elsewhere afterwards."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gridnode.testing.localgrid import GridCommandError
from simulations.harness import LocalGrid

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root"),
]

MiB = 1024 * 1024


def test_a_restore_onto_a_full_disk_says_so_and_leaves_no_partial_file(
    make_grid: Any, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big.bin").write_bytes(os.urandom(3 * MiB))
    for index in range(20):
        (tree / f"small{index}.txt").write_text("hello " * 100)
    grid: LocalGrid = make_grid(4)
    snap = grid.cli("n0", "backup", str(tree), "--redundancy", "2/3")["snapshot_id"]

    disk = tmp_path / "small-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        with pytest.raises(GridCommandError) as failed:
            grid.cli("n0", "restore", snap, "--to", str(disk / "out"))
        message = failed.value.stderr
        assert f"{disk / 'out'} is full" in message and "restore elsewhere" in message
        left = [p for p in (disk / "out").rglob("*") if not p.is_dir()]
        assert left == []  # neither temporary files nor a truncated file under its name
    finally:
        subprocess.run(["umount", str(disk)], check=True)

    result = grid.cli("n0", "restore", snap, "--to", str(tmp_path / "out"))
    assert result["files"] == 21
    assert (tmp_path / "out" / "tree" / "big.bin").read_bytes() == (tree / "big.bin").read_bytes()
    log = grid.cli("n0", "log")["entries"]
    assert [e["event"] for e in log].count("restore_failed") == 1
