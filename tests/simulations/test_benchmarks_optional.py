"""The comparisons with Tahoe-LAFS and restic are optional: without the tool the runner
reports them as skipped, never failed, and a run still writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import bench_tree
from benchmarks.bench_tahoe import compare
from benchmarks.optional import Unavailable, find_tool

REPO = Path(__file__).resolve().parents[2]


def test_find_tool_honours_a_variable_naming_a_missing_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRIDNODE_TEST_TOOL", "/nonexistent/tool")
    with pytest.raises(Unavailable, match="GRIDNODE_TEST_TOOL"):
        find_tool("GRIDNODE_TEST_TOOL", "sh")  # sh is on PATH: the variable still wins
    monkeypatch.delenv("GRIDNODE_TEST_TOOL")
    assert find_tool("GRIDNODE_TEST_TOOL", "sh").name == "sh"


def test_compare_puts_gridnode_beside_tahoe() -> None:
    keys = (
        "grid_cpu_s_per_gb_backup", "grid_cpu_s_per_gb_restore",
        "source_cpu_s_per_gb_backup", "source_cpu_s_per_gb_restore",
    )  # fmt: skip
    grid = {"backup_wall_mb_s": 40.0, "restore_wall_mb_s": 60.0, **dict.fromkeys(keys, 10.0)}
    tahoe: dict[str, Any] = {"bytes": 1, "backup_mb_s": 10.0, "restore_mb_s": 10.0}
    tahoe.update(dict.fromkeys(keys, 100.0))
    figures = compare({"grid": grid, "tahoe": tahoe})
    assert [f["ratio"] for f in figures] == [4.0, 6.0, 0.1, 0.1, 0.1, 0.1]
    assert tahoe["vs_gridnode"]["backup_wall_mb_s_ratio"] == 4.0
    assert compare({"tahoe": tahoe}) == []  # no grid in the run: nothing to compare


@pytest.mark.slow
def test_runner_skips_tahoe_and_tree_without_their_tools(tmp_path: Path) -> None:
    out = tmp_path / "skipped.json"
    env = {**os.environ, "GRIDNODE_TAHOE": "/nonexistent", "GRIDNODE_RESTIC": "/nonexistent"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "tahoe,tree", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    for name, variable in (("tahoe", "GRIDNODE_TAHOE"), ("tree", "GRIDNODE_RESTIC")):
        bench = report["benchmarks"][name]
        assert bench["status"] == "skipped"
        assert variable in bench["error"]


def test_create_probe_times_creates_and_leaves_the_files(tmp_path: Path) -> None:
    """The probe beside each tree restore: files are made (and kept, so deleting them does
    not slow what follows), and a second probe into the same directory is refused."""
    micros = bench_tree.create_probe(tmp_path / "probe", count=50)
    assert micros > 0
    assert sorted(p.name for p in (tmp_path / "probe").iterdir()) == sorted(
        f"f{n}" for n in range(50)
    )
    with pytest.raises(FileExistsError):
        bench_tree.create_probe(tmp_path / "probe", count=1)
