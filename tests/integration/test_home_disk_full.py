"""The node's own disk fills up during a backup (its home: catalog, scratch files).

What a user must see: a clear error that says which disk and what to do, a node that
keeps running (background loops that write meet the same full disk), and, once space
is freed, a backup that works and a catalog with no snapshot stuck "running".
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from gridnode.testing.localgrid import GridCommandError, LocalGrid, NodeSpec

from ..cities import CITIES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root"),
]

MiB = 1024 * 1024


def test_a_full_home_fails_the_backup_clearly_and_the_node_recovers(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for d in range(30):  # 30,000 entries: their catalog rows are more than the free space
        folder = tree / f"d{d:02d}"
        folder.mkdir(parents=True)
        for f in range(1000):
            (folder / f"a-file-with-a-longish-name-{f:04d}").write_text("x")
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("hello")

    grid_root = tmp_path / "grid"
    home = grid_root / "n0"
    home.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(home)], check=True)
    grid = LocalGrid(grid_root)
    try:
        specs = [NodeSpec(name=f"n{i}", location=CITIES[i]) for i in range(4)]
        specs[0] = NodeSpec(name="n0", location=CITIES[0], allocate="0")
        grid.add_many(specs)
        # The node's own output goes elsewhere: under systemd it is the journal's.
        (home / "node.log").symlink_to(tmp_path / "n0.log")
        filler = home / "filler"
        filler.write_bytes(bytes(16 * MiB))
        grid.start_all()
        grid.wait_converged(timeout=60)

        with pytest.raises(GridCommandError) as failed:
            grid.cli("n0", "backup", str(tree), "--redundancy", "2/3", timeout=300)
        message = failed.value.stderr
        assert "the node's disk is full" in message and "free space" in message
        assert "Traceback" not in message

        # Still full (what the failed backup's scratch files took is taken again): what
        # only reads must still answer, and no connection is left broken by the failure.
        more = home / "more-filler"
        with pytest.raises(OSError) as full, more.open("wb", buffering=0) as fh:
            for _ in range(64):  # 64 MiB: more than the whole home
                fh.write(bytes(MiB))
        assert full.value.errno == errno.ENOSPC
        assert "pending_deletes" in grid.cli("n0", "status")["leases"]  # read from the catalog
        assert all(s["state"] != "complete" for s in grid.cli("n0", "snapshots"))
        assert grid.cli("n0", "log")["verified"] is True
        more.unlink()

        filler.unlink()  # the user frees space; the node never stopped
        done = grid.cli("n0", "backup", str(small), "--redundancy", "2/3", timeout=120)
        states = {s["snapshot_id"]: s["state"] for s in grid.cli("n0", "snapshots")}
        assert states.pop(done["snapshot_id"]) == "complete"
        assert set(states.values()) <= {"interrupted"}  # none left "running"
        out = tmp_path / "out"
        grid.cli("n0", "restore", done["snapshot_id"], "--to", str(out))
        assert (out / "small" / "a.txt").read_text() == "hello"
        assert grid.cli("n0", "log")["verified"] is True
    finally:
        grid.close()
        subprocess.run(["umount", str(home)], check=True)
