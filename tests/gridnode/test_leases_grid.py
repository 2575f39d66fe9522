"""Leases on real nodes (issue 10): renewed leases keep a backup, a source gone for good
stops costing anyone space, deletes to a holder that could not take them are retried, and
a packet used again is never deleted by a delete queued before.

Leases of a few seconds stand in for the shipped 60 days."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from gridnode.errors import RemoteError
from gridnode.node import Node
from protocol import DeletePacket, Message

from ..integration.trees import assert_same_tree
from .inproc import Grid, open_grid

FAST_LEASES: dict[str, Any] = {
    "lease_s": 4,
    "lease_renew_interval_s": 1,
    "lease_grace_s": 0.5,
    "lease_sweep_interval_s": 0.3,
    "orphan_grace_s": 3600,
    # Nothing else moves packets while leases are watched.
    "audit_interval_s": 0,
    "repair_after_s": 0,
    "repair_delegates": 0,
}


def write_tree(root: Path) -> Path:
    tree = root / "tree"
    tree.mkdir(parents=True)
    (tree / "a.bin").write_bytes(os.urandom(1024 * 1024))
    (tree / "b.txt").write_text("leases " * 5000)
    return tree


def held_bytes(grid: Grid, skip: int = 0) -> int:
    return sum(n.packets.used_bytes for i, n in enumerate(grid.nodes) if i != skip)


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.1)
        return
    raise AssertionError(f"not within {timeout} s: {what}")


async def test_renewed_leases_keep_a_backup_and_a_source_gone_for_good_costs_nothing(
    tmp_path: Path,
) -> None:
    tree = write_tree(tmp_path)
    async with open_grid(tmp_path / "grid", 4, settings=FAST_LEASES) as grid:
        source = grid.nodes[0]
        result = await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        stored = held_bytes(grid)
        assert stored > 0
        # Two leases' time later nothing is lost: the source renewed every packet.
        await trio.sleep(2 * FAST_LEASES["lease_s"] + 1)
        assert held_bytes(grid) == stored
        assert source.lease_keeper is not None
        assert source.lease_keeper.stats.get("leases_renewed", 0) > 0
        assert source.lease_keeper.stats.get("leases_lost", 0) == 0
        await grid.call(0, "restore", snapshot=result["snapshot_id"], to=str(tmp_path / "out"))
        assert_same_tree(tree, tmp_path / "out" / "tree")
        status = await grid.call(0, "status")
        assert status["leases"]["pending_deletes"] == 0
        # The source goes for good: a lease and a grace later every holder has freed it.
        source.shutdown()
        await wait_for(lambda: held_bytes(grid) == 0, 15, "holders reclaim the packets")

        def reclaimed() -> int:
            return sum(n.packet_store.stats.get("bytes_reclaimed", 0) for n in grid.nodes[1:])

        # (The counters follow the files by a moment: counted when the collector returns.)
        await wait_for(lambda: reclaimed() >= stored, 5, "the collectors count what they freed")
        assert reclaimed() == stored


class RefuseDeletes:
    """A holder that cannot take deletes for a while (its disk is read-only, say)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.refusing = True
        self.refused = 0

    async def handle_request(self, link: Any, msg: Message, digest: bytes | None) -> Message:
        if isinstance(msg, DeletePacket) and self.refusing:
            self.refused += 1
            raise RemoteError("storage_error", "read-only file system")
        return await self.node.handle_request(link, msg, digest)

    def handle_oneway(self, link: Any, msg: Message) -> None:
        self.node.handle_oneway(link, msg)


async def test_deletes_a_holder_could_not_take_are_retried_and_never_undo_a_later_backup(
    tmp_path: Path,
) -> None:
    tree = write_tree(tmp_path)
    wrappers: dict[int, RefuseDeletes] = {}

    def wrap(node: Node) -> Any:
        if node.config.home.name == "n1":
            wrappers[1] = RefuseDeletes(node)
            return wrappers[1]
        return node

    settings = {**FAST_LEASES, "lease_sweep_interval_s": 0, "lease_s": 3600}
    async with open_grid(tmp_path / "grid", 4, settings=settings, wrap_handler=wrap) as grid:
        refuse = wrappers[1]
        holder = grid.nodes[1]
        first = await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        on_holder = holder.packets.used_bytes
        assert on_holder > 0
        forgot = await grid.call(0, "forget", snapshot=first["snapshot_id"])
        assert forgot["forgotten"] == [first["snapshot_id"]]
        assert forgot["packets_unreachable"] > 0 and refuse.refused > 0
        assert holder.packets.used_bytes == on_holder  # still there
        assert held_bytes(grid, skip=1) == 0  # the others freed
        queued, _ = grid.nodes[0].catalog.pending_deletes()
        assert queued == forgot["packets_unreachable"]

        # The same tree backed up again lands on the same holder as the same packets: the
        # queued deletes of those packets are withdrawn, so a retry cannot undo it.
        second = await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        refuse.refusing = False
        pruned = await grid.call(0, "prune")
        assert pruned["packets_pending"] == 0
        await grid.call(0, "restore", snapshot=second["snapshot_id"], to=str(tmp_path / "out"))
        assert_same_tree(tree, tmp_path / "out" / "tree")

        # Forget the second one with the holder refusing again, then let it take them.
        refuse.refusing = True
        await grid.call(0, "forget", snapshot=second["snapshot_id"])
        assert holder.packets.used_bytes > 0
        refuse.refusing = False
        pruned = await grid.call(0, "prune")
        assert pruned["packets_released"] > 0 and pruned["bytes_freed"] > 0
        assert pruned["packets_pending"] == 0
        assert held_bytes(grid) == 0


async def test_orphans_of_a_backup_that_never_completed_are_released_after_their_grace(
    tmp_path: Path,
) -> None:
    tree = write_tree(tmp_path)
    settings = {**FAST_LEASES, "lease_sweep_interval_s": 0, "lease_s": 3600}
    async with open_grid(tmp_path / "grid", 4, settings=settings) as grid:
        source = grid.nodes[0]
        result = await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        # What a failed or interrupted backup leaves: chunks stored, no snapshot using them.
        orphans = source.catalog.forget_snapshot(result["snapshot_id"])
        assert orphans and held_bytes(grid) > 0
        keeper = source.lease_keeper
        assert keeper is not None
        kept = await keeper.round(prune=True)
        assert kept["orphan_chunks_released"] == 0  # within the grace: a retry may reuse them
        keeper.orphan_grace_s = 0
        freed = await keeper.round(prune=True)
        assert freed["orphan_chunks_released"] == len(orphans)
        assert freed["packets_released"] > 0 and freed["packets_pending"] == 0
        assert held_bytes(grid) == 0


@pytest.mark.parametrize("count", [1])
async def test_a_renewal_names_only_leases_the_holder_has(tmp_path: Path, count: int) -> None:
    """A holder that lost a packet answers 0 for its lease, and the source counts it lost."""
    tree = write_tree(tmp_path)
    settings = {**FAST_LEASES, "lease_sweep_interval_s": 0}
    async with open_grid(tmp_path / "grid", 4, settings=settings) as grid:
        await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        holder = grid.nodes[1]
        lost = list(holder.packets.iter_ids())[:count]
        for packet_id in lost:
            holder.holdings.remove_tag(packet_id, holder_tag := _tag_of(grid, packet_id))
            assert holder_tag
        keeper = grid.nodes[0].lease_keeper
        assert keeper is not None
        renewed = await keeper.renew()
        assert renewed["leases_lost"] == count
        assert renewed["leases_renewed"] > 0


def _tag_of(grid: Grid, packet_id: bytes) -> bytes:
    source = grid.nodes[0]
    for chunk in source.catalog.chunks_in_use():
        for packet in chunk.packets:
            if packet.packet_id == packet_id:
                return source.identity.packet_owner_tag(packet_id, chunk.policy)
    raise AssertionError("packet not in the source's catalog")


async def test_delegates_renew_the_leases_of_an_owner_that_is_away(tmp_path: Path) -> None:
    """The source destroyed: its delegates keep its packets leased (and repaired) while
    its user recovers from the key, however long past one lease that takes."""
    tree = write_tree(tmp_path)
    settings = {
        **FAST_LEASES,
        "repair_after_s": 0.5,
        "repair_threshold": 1,
        "repair_delegates": 2,
        "gossip_probe_interval_s": 0.2,
    }
    async with open_grid(tmp_path / "grid", 6, settings=settings) as grid:
        owner = grid.nodes[0]
        await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        delegator = owner.delegator
        assert delegator is not None
        await wait_for(lambda: len(delegator.status()) == 2, 20, "two delegates")
        delegates = [n for n in grid.nodes if n.identity.node_id in set(delegator.grants)]
        stored = held_bytes(grid)
        owner.shutdown()
        await owner.stopped.wait()
        # Three leases later every packet is still held: the delegates renewed them.
        await trio.sleep(3 * FAST_LEASES["lease_s"])
        assert held_bytes(grid) == stored
        renewed = sum(
            d.repairer.stats.get("delegated_leases_renewed", 0) for d in delegates if d.repairer
        )
        assert renewed > 0
        assert not any(n.packet_store.stats.get("packets_reclaimed") for n in grid.nodes[1:])
