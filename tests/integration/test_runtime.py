"""Issue 2 end to end: node processes connect, report status, stop cleanly, rejoin."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from simulations.harness import GridCommandError, LocalGrid, NodeSpec

pytestmark = pytest.mark.slow


def test_two_nodes_then_five_see_each_other(make_grid: Any) -> None:
    grid: LocalGrid = make_grid(2)
    a, b = grid.status("n0"), grid.status("n1")
    for key in ("node_id", "grid_id", "address", "peers", "members"):
        assert key in a
    assert a["grid_id"] == b["grid_id"]
    # The harness's grid has an authority: both nodes joined with its certificate.
    assert a["subscription"]["plan"] == b["subscription"]["plan"] == "harness"
    assert [p["node_id"] for p in grid.without_authority(a["peers"])] == [b["node_id"]]
    peer = grid.without_authority(a["peers"])[0]
    assert peer["address"] == grid.nodes["n1"].address
    assert isinstance(peer["rtt_ms"], float) and 0 < peer["rtt_ms"] < 1000

    for i in range(2, 5):
        grid.add(NodeSpec(name=f"n{i}", location="Rome"), seeds=[grid.nodes["n0"].address])
        grid.start(f"n{i}")
    for i in range(2, 5):
        grid.wait_ready(f"n{i}")
    grid.wait_converged(timeout=60)
    ids = {grid.status(name)["node_id"] for name in grid.nodes}
    assert len(ids) == 5
    for name in grid.nodes:
        status = grid.status(name)
        members = grid.without_authority(status["members"])
        seen = {m["node_id"] for m in members if m["state"] == "alive"}
        assert seen == ids - {status["node_id"]}
        for member in status["members"]:
            for key in (
                "node_id",
                "state",
                "lat",
                "lon",
                "distance_km",
                "free_bytes",
                "rtt_ms",
                "trusted",
            ):
                assert key in member


def test_sigterm_stops_cleanly_and_a_restarted_node_rejoins(make_grid: Any) -> None:
    grid: LocalGrid = make_grid(3)
    node = grid.nodes["n2"]
    assert node.process is not None
    started = time.monotonic()
    node.process.send_signal(signal.SIGTERM)
    code = node.process.wait(timeout=10)
    assert code == 0
    assert time.monotonic() - started < 5
    node.process = None
    assert "Traceback" not in (node.home / "node.log").read_text()
    grid.wait_state("n0", "n2", "left", timeout=30)
    grid.start("n2")
    grid.wait_ready("n2")
    grid.wait_converged(timeout=60)
    assert grid.stop("n1") == 0


def test_node_of_another_grid_is_refused(make_grid: Any, tmp_path: Path) -> None:
    grid: LocalGrid = make_grid(2)
    other = LocalGrid(tmp_path / "other", name="other", authority=False)
    try:
        other.add(NodeSpec(name="x", location="Paris"), seeds=[grid.nodes["n0"].address])
        other.start("x")
        other.wait_ready("x")
        time.sleep(3)
        assert other.status("x")["members"] == []
        counters = grid.status("n0")["counters"]
        assert counters["refused_handshakes"] >= 1
        assert len(grid.without_authority(grid.status("n0")["members"])) == 1
        assert "wrong_grid" in (grid.nodes["n0"].home / "node.log").read_text()
    finally:
        other.close()


def test_cli_errors_are_one_line_and_nonzero(tmp_path: Path) -> None:
    grid = LocalGrid(tmp_path / "g", authority=False)  # a grid file, no processes
    with pytest.raises(GridCommandError) as info:
        grid.gridnode("status", "--home", str(tmp_path / "nothing"), "--json")
    assert info.value.returncode == 4  # no such home (README, "Exit codes")
    assert info.value.stderr.strip().count("\n") == 0
    assert info.value.stderr.startswith("gridnode: error:")
    with pytest.raises(GridCommandError) as info:
        grid.gridnode(
            "init",
            "--home",
            str(tmp_path / "h"),
            "--grid",
            str(grid.grid_file),
            "--listen",
            "127.0.0.1:1",
            "--allocate",
            "5 parsecs",
            json_out=False,
        )
    assert "'allocate'" in info.value.stderr
    with pytest.raises(GridCommandError) as info:
        grid.gridnode(
            "init",
            "--home",
            str(tmp_path / "h"),
            "--grid",
            str(grid.grid_file),
            "--listen",
            "nowhere",
            json_out=False,
        )
    assert "'listen'" in info.value.stderr
    with pytest.raises(GridCommandError) as info:
        grid.gridnode(
            "init",
            "--home",
            str(tmp_path / "h"),
            "--grid",
            str(grid.grid_file),
            "--listen",
            "127.0.0.1:1",
            "--location",
            "Atlantis Prime",
            json_out=False,
        )
    assert "'location'" in info.value.stderr
