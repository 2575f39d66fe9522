"""Issue 4 on real processes: gossip convergence, failure detection, placement bands,
and the speed-of-light check."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from simulations.harness import GridCommandError, LocalGrid, NodeSpec

from ..cities import CITIES
from .trees import make_mixed_tree

pytestmark = pytest.mark.slow


def views(grid: LocalGrid) -> dict[str, dict[str, str]]:
    out = {}
    for name in grid.running():
        status = grid.status(name)
        view = {m["node_id"]: m["state"] for m in grid.without_authority(status["members"])}
        view[status["node_id"]] = "self"
        out[name] = view
    return out


def test_twelve_nodes_converge_detect_a_death_and_rejoin(tmp_path: Path) -> None:
    with LocalGrid(tmp_path / "g") as grid:
        grid.add_many([NodeSpec(name=f"n{i}", location=c) for i, c in enumerate(CITIES)])
        grid.start_all(timeout=90)
        grid.wait_converged(timeout=90)
        seen = views(grid)
        ids = set(next(iter(seen.values())))
        assert len(ids) == 12
        assert all(set(v) == ids for v in seen.values())
        assert all(state in ("alive", "self") for v in seen.values() for state in v.values())

        victim = grid.status("n5")["node_id"]
        grid.kill("n5")
        killed_at = time.monotonic()
        deadline = killed_at + 45
        while time.monotonic() < deadline:
            states = [v.get(victim) for v in views(grid).values()]
            if all(s == "dead" for s in states):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"not every member marked the killed node dead: {states}")
        detected_in = time.monotonic() - killed_at
        assert detected_in < 45

        grid.start("n5")
        grid.wait_ready("n5")
        grid.wait_converged(timeout=60)
        assert all(v[victim] in ("alive", "self") for v in views(grid).values())

        # Placement under a backup-proximity band, audited through `placement --json`.
        tree = make_mixed_tree(tmp_path / "src", big_bytes=2 * 1024 * 1024, small_files=10)
        result = grid.cli(
            "n0",
            "backup",
            str(tree),
            "--backup-proximity",
            "800km:1600km",
            "--packet-proximity",
            ":2500km",
        )
        placement = grid.cli("n0", "placement", result["snapshot_id"])
        assert placement["source"]["node_id"] == grid.status("n0")["node_id"]
        assert placement["chunks"]
        for chunk in placement["chunks"]:
            assert len(chunk["packets"]) == 6
            for packet in chunk["packets"]:
                assert 800 <= packet["distance_km"] <= 1600, packet
            assert chunk["pairwise_max_km"] <= 2500
            targets = [p["target"] for p in chunk["packets"]]
            assert len(set(targets)) == 6
        # A band nobody satisfies fails, naming the rule and the numbers.
        with pytest.raises(GridCommandError) as info:
            grid.cli("n0", "backup", str(tree), "--backup-proximity", "3000km:4000km")
        assert "backup proximity 3000-4000 km" in info.value.stderr
        assert "6 needed" in info.value.stderr
        miles = grid.cli("n0", "backup", str(tree), "--backup-proximity", "500mi:1000mi")
        placed = grid.cli("n0", "placement", miles["snapshot_id"])
        for chunk in placed["chunks"]:
            for packet in chunk["packets"]:
                assert 804 <= packet["distance_km"] <= 1610


def test_a_node_lying_about_its_location_is_not_trusted(tmp_path: Path) -> None:
    with LocalGrid(tmp_path / "g") as grid:
        specs = [
            NodeSpec(name=f"f{i}", location="Frankfurt", location_check="enforce") for i in range(7)
        ]
        specs.append(NodeSpec(name="liar", location="Sydney", location_check="enforce"))
        grid.add_many(specs)
        grid.start_all(timeout=90)
        grid.wait_converged(timeout=90)
        liar = grid.status("liar")["node_id"]
        deadline = time.monotonic() + 30
        # Trust takes a measured round trip: wait until f0 has probed every member.
        while time.monotonic() < deadline:
            members = {
                m["node_id"]: m for m in grid.without_authority(grid.status("f0")["members"])
            }
            if all(m["rtt_ms"] is not None for m in members.values()):
                break
            time.sleep(0.5)
        members = {m["node_id"]: m for m in grid.without_authority(grid.status("f0")["members"])}
        assert members[liar]["trusted"] is False
        assert members[liar]["distance_km"] > 10_000
        honest = [m for m in members.values() if m["node_id"] != liar]
        assert len(honest) == 6 and all(m["trusted"] for m in honest)

        tree = make_mixed_tree(tmp_path / "src", big_bytes=2 * 1024 * 1024, small_files=10)
        result = grid.cli("f0", "backup", str(tree), "--backup-proximity", ":20000km")
        placement = grid.cli("f0", "placement", result["snapshot_id"])
        targets = {p["target"] for c in placement["chunks"] for p in c["packets"]}
        assert liar not in targets
        assert len(targets) == 6
