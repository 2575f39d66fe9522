"""Issue 12's unattended backups on real node processes: a node configured with a
``[[schedule]]`` backs up by itself within its interval, applies its retention policy,
its snapshots show the schedule in ``snapshots``, and ``gridnode schedule list --json``
reports it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from simulations.harness import LocalGrid

pytestmark = pytest.mark.slow

#: Bound on every wait below (seconds).
WAIT_S = 120.0

SCHEDULE = """
[[schedule]]
name = "docs"
paths = ["{tree}"]
exclude = ["*.tmp"]
every = "2s"
keep = {{ last = 1 }}
"""


def _scheduled(grid: LocalGrid) -> list[dict[str, Any]]:
    rows = grid.cli("n0", "snapshots")
    return [r for r in rows if r["schedule"] == "docs" and r["complete"]]


def test_a_schedule_backs_up_by_itself_and_keeps_its_policy(make_grid: Any, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("hello\n" * 1000)
    (tree / "skip.tmp").write_text("not this")
    grid: LocalGrid = make_grid(3, start=False, authority=False, redundancy="1/2")
    config = grid.nodes["n0"].home / "gridnode.toml"
    config.write_text(config.read_text() + SCHEDULE.format(tree=tree))
    shown = grid.gridnode("config", "show", "--home", str(grid.nodes["n0"].home), "--json")
    assert shown["values"]["schedule"][0]["every"] == "2s"
    grid.start_all()
    grid.wait_converged(timeout=60)

    # No one types a backup: the node makes them, every 2 s, and keeps the last one.
    deadline = time.monotonic() + WAIT_S
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:  # bounded by the deadline
        (row,) = grid.cli("n0", "schedule", "list")
        if row["last_result"] == "ok" and row["forgotten"] >= 1:
            break
        assert row["last_result"] in (None, "ok"), row
        time.sleep(0.5)
    else:
        raise AssertionError(f"no second scheduled run within {WAIT_S} s: {row}")
    assert row["name"] == "docs" and row["paths"] == [str(tree)]
    assert (row["every"], row["at"]) == ("2s", None)
    assert row["last_snapshot"] and row["last_run"] <= time.time()
    assert row["next_run"] <= row["last_run"] + 2 + 1e-6

    # Retention leaves one complete snapshot of the schedule (a run may be between its
    # backup and its retention at any moment: look until it is not).
    while time.monotonic() < deadline:  # bounded by the deadline
        kept = _scheduled(grid)
        if len(kept) == 1:
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"retention kept {len(kept)} snapshots")
    assert kept[0]["roots"] == [str(tree)]
    listing = grid.cli("n0", "ls", kept[0]["snapshot_id"])
    names = {entry["path"].rsplit("/", 1)[-1] for entry in listing}
    assert "a.txt" in names and "skip.tmp" not in names  # the schedule's excludes
    log = (grid.nodes["n0"].home / "node.log").read_text(errors="replace")
    assert "schedule_started" in log and "schedule_finished" in log
    text = grid.gridnode("schedule", "list", "--home", str(grid.nodes["n0"].home), json_out=False)
    assert "docs" in text and "every 2s" in text
