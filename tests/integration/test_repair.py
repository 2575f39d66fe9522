"""Repair on real processes: holders leave for good, redundancy is put back, and data
survives losses that would have destroyed it without repair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simulations.harness import LocalGrid

from .trees import assert_same_tree, lose_and_recover, make_mixed_tree

pytestmark = pytest.mark.slow


def _holders(grid: LocalGrid, source: str, snap: str) -> dict[str, set[str]]:
    """chunk id -> node ids holding its packets, by the owner's own placement report."""
    report = grid.cli(source, "placement", snap)
    return {c["chunk_id"]: {p["target"] for p in c["packets"]} for c in report["chunks"]}


def test_repair_restores_redundancy_and_outlives_further_losses(
    make_grid: Any, tmp_path: Path
) -> None:
    grid: LocalGrid = make_grid(7)
    ids = {name: grid.status(name)["node_id"] for name in grid.nodes}
    tree = make_mixed_tree(tmp_path / "src", big_bytes=4 * 1024 * 1024, small_files=30)
    snap = grid.cli("n0", "backup", str(tree), "--redundancy", "2/4")["snapshot_id"]
    before = _holders(grid, "n0", snap)
    # Which holders die when is chosen from where the packets went (placement is keyed
    # by the source's secret, so it differs every run): two holders of one chunk first,
    # then two others, leaving a pair that does not hold all of that chunk's packets.
    name_of = {node_id: name for name, node_id in ids.items()}
    held = sorted(name_of[t] for t in next(iter(before.values())))
    outside = sorted(n for n in ("n1", "n2", "n3", "n4", "n5", "n6") if n not in held)
    first, rest = held[:2], [*held[2:], *outside[1:]]
    later, last = rest[:2], [outside[0], rest[2]]
    gone = {ids[n] for n in first}
    expected_rebuilt = sum(len(targets & gone) for targets in before.values())
    assert expected_rebuilt > 0  # the first two hold packets of that chunk
    first_four = {ids[n] for n in (*first, *later)}
    # The losses below would destroy these chunks (fewer than k = 2 packets left on the
    # last two) if nothing were repaired in between.
    assert any(len(targets - first_four) < 2 for targets in before.values())

    # Two holders leave for good.
    for name in first:
        grid.kill(name)
    result = grid.cli("n0", "repair")
    assert result["ok"] is True, result["problems"]
    assert result["chunks_lost"] == 0 and result["chunks_unrepaired"] == 0
    assert result["packets_rebuilt"] == expected_rebuilt
    assert result["chunks_repaired"] == sum(1 for t in before.values() if t & gone)
    assert result["records_rewritten"] == [snap]

    after = _holders(grid, "n0", snap)
    survivors = {ids[n] for n in (*later, *last)}
    for chunk_id, targets in after.items():
        # Every chunk is back to 4 distinct holders, all of them alive.
        assert targets == survivors, (chunk_id, before.get(chunk_id), after, ids, result)
    verified = grid.cli("n0", "verify", snap)
    assert verified["ok"] is True and verified["chunks_degraded"] == 0

    # A second run has nothing to do.
    again = grid.cli("n0", "repair", snap)
    assert again["chunks_repaired"] == 0 and again["chunks_healthy"] == again["chunks_checked"]
    log_events = [e["event"] for e in grid.cli("n0", "log")["entries"]]
    assert log_events.count("repair") == 2

    # The source machine is lost too: its recovered catalog must name the *new* holders
    # (the rewritten record and the republished root), or the next losses are fatal.
    recovered = lose_and_recover(grid, "n0", tmp_path / "recovered", seed=last[0])
    assert recovered["snapshots"] == [snap]

    # Two more holders die: every chunk keeps exactly k = 2 packets (on the last two).
    # Without the repair above, chunks with packets on the first four would be lost.
    for name in later:
        grid.kill(name)
    grid.cli("recovered", "restore", snap, "--to", str(tmp_path / "out"), timeout=300)
    assert_same_tree(tree, tmp_path / "out" / "tree")
