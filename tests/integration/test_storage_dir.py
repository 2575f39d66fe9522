"""Issue 12: a node's packets on another directory than its home (``storage_dir``).
Real node processes on loopback: a node whose store is elsewhere stores the packets of a
backup there, serves them for a restore when no other holder is up, keeps them across a
restart, and refuses to start on a wrong or missing directory with one clear line
instead of starting empty.  The backup's summary is checked in 80 columns on the way."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

from simulations.harness import LocalGrid, NodeSpec

from ..cities import CITIES

SUMMARY_KEYS = {
    "snapshot_id",
    "files",
    "bytes",
    "files_unchanged",
    "bytes_uploaded",
    "packets_uploaded",
    "seconds",
}


def _packet_files(root: Path) -> list[Path]:
    return [path for path in (root / "packets").rglob("*") if path.is_file()]


def _same_tree(a: Path, b: Path) -> bool:
    compared = filecmp.dircmp(a, b)
    if compared.left_only or compared.right_only or compared.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, compared.common_files, shallow=False)
    return (
        not mismatch
        and not errors
        and all(_same_tree(a / name, b / name) for name in compared.common_dirs)
    )


def _run_node(home: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridnode", "run", "--home", str(home), "--quiet", *more],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_store_on_another_directory_stores_serves_and_survives(tmp_path: Path) -> None:
    bulk = tmp_path / "bulk" / "n1"  # does not exist: init makes it
    specs = [
        NodeSpec(
            name=f"n{i}",
            location=CITIES[i],
            redundancy="1/3",  # three targets, each share alone rebuilds a chunk
            extra=(f"storage_dir={bulk}",) if i == 1 else (),
        )
        for i in range(4)
    ]
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    for n in range(6):
        (tree / "sub" / f"f{n}.bin").write_bytes(os.urandom(50_000 + n * 7_000))
    with LocalGrid(tmp_path / "grid", authority=False) as grid:
        grid.add_many(specs)
        grid.start_all()
        grid.wait_converged(timeout=60)
        n0, n1 = grid.node("n0"), grid.node("n1")

        # The human summary: every line fits 80 columns; --json keeps its keys.
        text = grid.gridnode("backup", "--home", str(n0.home), str(tree), json_out=False)
        lines = text.splitlines()
        assert lines and all(len(line) <= 80 for line in lines), lines
        assert lines[0].startswith("snapshot ") and lines[1].startswith("  uploaded ")
        snapshot = lines[0].split()[1].rstrip(":")
        (tree / "sub" / "f0.bin").write_bytes(os.urandom(30_000))
        result = grid.cli("n0", "backup", str(tree))
        assert set(result) >= SUMMARY_KEYS and result["files_unchanged"] == 5

        status = grid.status("n1")["storage"]
        assert status["dir"] == str(bulk)
        held = _packet_files(bulk)
        assert status["packets"] == len(held) > 0
        assert status["used_bytes"] == sum(path.stat().st_size for path in held)
        assert not (n1.home / "storage" / "packets").exists()  # none in the home
        assert (n1.home / "storage" / "holdings.sqlite").exists()  # holdings stay there

        # n1 alone holds the snapshot's shares: the restore reads them from bulk/.
        grid.stop("n2")
        grid.stop("n3")
        served = grid.status("n1")["counters"].get("packets_served", 0)
        grid.cli("n0", "restore", "latest", "--to", str(tmp_path / "out1"), timeout=300)
        assert _same_tree(tmp_path / "out1" / "tree", tree)
        assert grid.status("n1")["counters"]["packets_served"] > served

        # A restart keeps them.
        grid.stop("n1")
        grid.start("n1")
        grid.wait_ready("n1")
        after = grid.status("n1")["storage"]
        assert (after["packets"], after["used_bytes"]) == (status["packets"], status["used_bytes"])
        grid.wait_state("n0", "n1", "alive", timeout=60)
        grid.cli("n0", "restore", snapshot, "--to", str(tmp_path / "out2"), timeout=300)
        restored = tmp_path / "out2" / "tree" / "sub"
        assert sorted(p.name for p in restored.iterdir()) == [f"f{n}.bin" for n in range(6)]
        assert (restored / "f3.bin").read_bytes() == (tree / "sub" / "f3.bin").read_bytes()
        assert (restored / "f0.bin").stat().st_size == 50_000  # as it was then

        # A wrong directory (empty) and a missing one: refused in one line, nothing made.
        grid.stop("n1")
        empty = tmp_path / "elsewhere"
        empty.mkdir()
        done = _run_node(n1.home, "--set", f"storage_dir={empty}")
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "holds no packet store" in done.stderr and str(bulk) in done.stderr
        assert list(empty.iterdir()) == []
        done = _run_node(n1.home, "--set", f"storage_dir={tmp_path / 'missing'}")
        assert done.returncode == 1 and "is not a directory" in done.stderr, done.stderr
        assert not (tmp_path / "missing").exists()
        assert len(_packet_files(bulk)) == len(held)
