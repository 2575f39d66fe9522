"""The benchmark runner end to end, on its cheapest benchmark: it writes valid JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_quick_placement_writes_json_with_figures(tmp_path: Path) -> None:
    out = tmp_path / "results" / "quick.json"
    proc = _run("--quick", "--only", "placement", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())  # strict JSON: no NaN, no Infinity
    assert report["quick"] is True
    assert list(report["benchmarks"]) == ["placement"]
    env = report["environment"]
    assert env["cpu_count"] >= 1
    assert len(env["load_average_start"]) == 3 and len(env["load_average_end"]) == 3
    bench = report["benchmarks"]["placement"]
    assert bench["status"] == "ok"
    assert {row["members"] for row in bench["result"]["rows"]} == {100, 1_000, 10_000}
    figures = bench["figures"]
    assert len(figures) == 9
    for figure in figures:
        assert figure["value"] > 0 and figure["baseline_value"] > 0
        assert math.isclose(
            figure["ratio"], figure["value"] / figure["baseline_value"], rel_tol=1e-6
        )
    # The summary prints each figure beside its baseline.
    assert "plain hash selection" in proc.stdout
    assert str(out) in proc.stdout
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, nothing left over


def test_unknown_benchmark_is_refused_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "never.json"
    proc = _run("--quick", "--only", "placement,nonsense", "--out", str(out))
    assert proc.returncode == 2
    assert "nonsense" in proc.stderr
    assert not out.exists()
