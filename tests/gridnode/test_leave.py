"""The graceful leave (issue 10) on real Nodes on 127.0.0.1 (see inproc.py): a holder
that leaves hands every packet over to new holders chosen by their owners, refuses new
packets meanwhile, and afterwards no repair runs for it."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import msgpack
import pytest
import trio

from gridnode.config import build_config, dump_toml
from gridnode.config_keys import ConfigError
from gridnode.errors import RemoteError
from gridnode.home_layout import CONFIG_NAME
from gridnode.identity import NodeIdentity
from gridnode.leave import LEAVING_FILE
from gridnode.logic.swim import DRAINING_LABEL
from gridnode.node import Node
from gridnode.storage.records import ChunkRecord
from protocol import (
    MIN_PROTOCOL_VERSION,
    GossipUpdates,
    MemberUpdate,
    StorePacket,
    decode,
    encode,
    record_is_valid,
)

from .inproc import Grid, open_grid

pytestmark = pytest.mark.slow

#: Holders count as gone 2 s after they vanish, at the first loss: had any catalog still
#: named the leaver after it left, its automatic repair would have run within seconds.
FAST_REPAIR: dict[str, object] = {"repair_after_s": 2.0, "repair_threshold": 1}
#: The keys of ``leave``'s result (the interface scripts rely on, README).
#: A delegate's counters of repair work (``gridnode.delegation.repairer``).
DELEGATED_REPAIR = frozenset({"packets_moved", "chunks_lost", "chunks_unrepaired"})
FORCE_ARGS = ("--json", "--timeout", "1", "--force")
RESULT_KEYS = {
    "event",
    "ok",
    "left",
    "packets_at_start",
    "packets_held",
    "seconds",
    "timeout_s",
    "forced",
}


def _tree(root: Path, name: str, files: int = 3) -> Path:
    tree = root / name
    tree.mkdir(parents=True)
    for i in range(files):
        (tree / f"file{i}.bin").write_bytes(os.urandom(120_000 + 7 * i))
    return tree


async def _until(what: Callable[[], bool], timeout: float = 30.0, step: float = 0.1) -> None:
    with trio.fail_after(timeout):
        while not what():
            await trio.sleep(step)


async def _chunks(node: Node, snapshot_id: str) -> list[ChunkRecord]:
    """Every chunk of a snapshot, data and record pieces, from the owner's catalog."""
    out: list[ChunkRecord] = []
    after = b""
    for _ in range(10_000):
        page = await trio.to_thread.run_sync(
            functools.partial(node.catalog.chunk_page, snapshot_id, after=after)
        )
        if not page:
            break
        out += page
        after = page[-1].chunk_id
    return out


def _holding(grid: Grid, node_id: bytes) -> Node:
    (node,) = [n for n in grid.nodes if n.identity.node_id == node_id]
    return node


def _no_repair_ran(nodes: list[Node]) -> None:
    for node in nodes:
        assert node.request.repairs == {}, node.identity.short_id
        assert node.auto_repair is not None and node.auto_repair.runs == []
        assert node.repairer is not None
        # Delegated repair for others: nothing rebuilt or moved either.
        assert not {k: v for k, v in node.repairer.stats.items() if k in DELEGATED_REPAIR and v}


async def test_a_leaving_holder_hands_every_packet_over_and_no_repair_runs(
    tmp_path: Path,
) -> None:
    async with open_grid(tmp_path / "grid", 7, settings=FAST_REPAIR) as grid:
        sources = {0: "3/5", 1: "2/3"}
        trees: dict[str, Path] = {}
        snapshots: dict[int, list[str]] = {0: [], 1: []}
        for index, redundancy in sources.items():
            tree = _tree(tmp_path / f"src{index}", "tree")
            for round_ in range(2):  # two snapshots each, the second with a new file
                if round_:
                    (tree / "later.bin").write_bytes(os.urandom(90_000))
                done = await grid.call(index, "backup", paths=[str(tree)], redundancy=redundancy)
                snapshots[index].append(done["snapshot_id"])
                trees[done["snapshot_id"]] = tmp_path / f"copy-{done['snapshot_id']}"
                # What the snapshot holds, kept aside for the byte-equal restore check.
                shutil.copytree(tree, trees[done["snapshot_id"]])
        # The leaver: the holder with the most packets, which must hold both sources'.
        leaver = max(grid.nodes[2:], key=lambda n: n.packets.packet_count)
        leaver_id = leaver.identity.node_id
        for index in sources:
            holders = await trio.to_thread.run_sync(grid.nodes[index].catalog.holders)
            assert leaver_id in holders
        held_at_start = leaver.packets.packet_count
        assert held_at_start > 0

        events: list[dict[str, Any]] = []

        async def emit(event: dict[str, Any]) -> None:
            events.append(event)

        result = await leaver._control_job("leave", {"timeout_s": 120}, emit)
        assert set(result) == RESULT_KEYS
        assert result["ok"] is True and result["left"] is True and result["forced"] is False
        assert result["packets_held"] == 0
        assert result["packets_at_start"] == held_at_start
        progress = [e for e in events if e["event"] == "progress"]
        assert progress and progress[0]["packets_held"] == held_at_start
        assert all(e["phase"] == "handover" for e in progress)
        with trio.fail_after(10):
            await leaver.stopped.wait()
        # Its packet store is empty, on disk too.
        assert leaver.packets.packet_count == 0
        assert list(leaver.packets.iter_ids()) == []

        live = [n for n in grid.nodes if n is not leaver]

        # Everyone learns of the leave by gossip (the announcement at shutdown).
        def left_everywhere() -> bool:
            return all(
                any(v.record.node_id == leaver_id and v.state == "left" for v in members)
                for members in (n.gossiper.members() for n in live if n.gossiper is not None)
            )

        await _until(left_everywhere)
        moved = 0
        for index, redundancy in sources.items():
            owner = grid.nodes[index]
            handover = owner.handover
            assert handover is not None
            # Its packets left the leaver before the owner's run ended: it still rewrites
            # the data assembly records that named the leaver.
            await _until(functools.partial(bool, handover.runs))
            assert handover.runs[-1]["ok"] is True, handover.runs
            n = int(redundancy.split("/")[1])
            assert leaver_id not in await trio.to_thread.run_sync(owner.catalog.holders)
            for snapshot_id in snapshots[index]:
                for chunk in await _chunks(owner, snapshot_id):
                    targets = [p.target for p in chunk.packets]
                    # All n packets, on n distinct live holders that really hold them.
                    assert len(targets) == len(set(targets)) == n
                    assert leaver_id not in targets and owner.identity.node_id not in targets
                    for packet in chunk.packets:
                        holder = _holding(grid, packet.target)
                        assert holder.packets.get(packet.packet_id) is not None
            moved += handover.stats.get("handover_packets_moved", 0)
            counters = (await grid.call(index, "status"))["counters"]
            assert counters["handover_packets_moved"] == handover.stats["handover_packets_moved"]
            assert handover.stats.get("handover_packets_rebuilt", 0) == 0
            # Each snapshot using a moved chunk got its record (naming holders) rewritten.
            rewritten = handover.runs[-1]["records_rewritten"]
            assert rewritten and set(rewritten) <= set(snapshots[index])
            events_logged = [e["event"] for e in (await grid.call(index, "log"))["entries"]]
            assert "handover" in events_logged and "repair" not in events_logged
        # Copied off the leaver, one move per packet it held (the record pieces rewritten
        # since add new packets, never on the leaver).
        assert moved == held_at_start

        # No repair ran, and none runs later: nobody's catalog names the leaver.
        await trio.sleep(5)  # more than repair_after_s, the auto-repair's settle and tick
        _no_repair_ran(live)

        # Every snapshot of every source restores byte-equal.
        for index in sources:
            for snapshot_id in snapshots[index]:
                out = tmp_path / f"out-{snapshot_id}"
                await grid.call(index, "restore", snapshot=snapshot_id, to=str(out))
                original = trees[snapshot_id]
                for path in original.rglob("*"):
                    if path.is_file():
                        rel = path.relative_to(original)
                        assert (out / "tree" / rel).read_bytes() == path.read_bytes(), rel


async def _store_directly(source: Node, target: Node) -> None:
    data = os.urandom(4096)
    packet_id = blake3.blake3(data).digest()
    link = await source.link_for(target.identity.node_id)
    await link.request(
        lambda rid: StorePacket(
            request_id=rid,
            packet_id=packet_id,
            owner_tag=source.identity.packet_owner_tag(packet_id, ""),
            data=data,
        ),
        timeout_s=10,
        payload_digest=packet_id,
    )


async def test_a_draining_node_refuses_packets_gets_none_placed_and_can_stay(
    tmp_path: Path,
) -> None:
    async with open_grid(tmp_path / "grid", 5) as grid:
        source, leaver = grid.nodes[0], grid.nodes[4]
        leaver_id = leaver.identity.node_id
        assert leaver.departure is not None
        leaver.departure.start()
        assert (leaver.config.home / LEAVING_FILE).exists()
        assert (await grid.call(4, "status"))["draining"] is True
        # A store sent straight to it is refused with a code of its own.
        with pytest.raises(RemoteError) as refused:
            await _store_directly(source, leaver)
        assert refused.value.code == "leaving"
        assert leaver.packet_store.stats.get("store_refused_leaving") == 1
        # Gossip tells the others: no member places a packet there any more.
        gossiper = source.gossiper
        assert gossiper is not None
        await _until(lambda: gossiper.draining_members() == {leaver_id})
        assert leaver_id not in {m.node_id for m in gossiper.placement_view()[1]}
        seen = {v.record.node_id: v.record for v in gossiper.members()}
        assert seen[leaver_id].free_bytes == 0
        tree = _tree(tmp_path, "tree")
        await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        assert leaver.packets.packet_count == 0
        assert leaver_id not in await trio.to_thread.run_sync(source.catalog.holders)

        # ``leave --cancel``: it stays, and takes packets again.
        cancelled = await grid.call(4, "leave", cancel=True)
        assert cancelled["draining"] is False
        assert not (leaver.config.home / LEAVING_FILE).exists()
        await _until(lambda: not gossiper.draining_members())
        await _until(lambda: leaver_id in {m.node_id for m in gossiper.placement_view()[1]})
        await _store_directly(source, leaver)
        assert leaver.packets.packet_count == 1


async def test_an_owner_away_stops_the_hand_over_at_the_timeout(tmp_path: Path) -> None:
    async with open_grid(tmp_path / "grid", 5) as grid:
        tree = _tree(tmp_path, "tree")
        await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        holders = await trio.to_thread.run_sync(grid.nodes[0].catalog.holders)
        leaver = _holding(grid, sorted(holders)[0])
        held = leaver.packets.packet_count
        assert held > 0
        # The only owner goes away: nobody can move its packets.
        grid.nodes[0].shutdown()
        with trio.fail_after(10):
            await grid.nodes[0].stopped.wait()
        index = grid.nodes.index(leaver)
        result = await grid.call(index, "leave", timeout_s=3)
        assert result["ok"] is False and result["left"] is False
        assert result["packets_held"] == held == result["packets_at_start"]
        assert 3 <= result["seconds"] < 10
        # It did not leave: it runs on, still draining (no new packets), for the operator
        # to wait longer, cancel, or leave anyway.
        assert not leaver.stopped.is_set()
        assert (await grid.call(index, "status"))["draining"] is True
        with pytest.raises(RemoteError):
            await _store_directly(grid.nodes[1 if index != 1 else 2], leaver)

        # ``--force``: it leaves at the timeout with the packets still held; the owner's
        # repair (or its delegates) rebuilds them once it sees the holder gone.
        home = leaver.config.home
        (home / CONFIG_NAME).write_text(dump_toml(leaver.config.to_values()), encoding="utf-8")
        done = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "gridnode", "leave", "--home", str(home), *FORCE_ARGS],
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        assert done.returncode == 0, done.stderr
        final = json.loads(done.stdout.splitlines()[-1])
        assert final["left"] is True and final["forced"] is True and final["ok"] is False
        assert final["packets_held"] == held
        with trio.fail_after(10):
            await leaver.stopped.wait()


async def test_the_cli_returns_when_the_hand_over_is_complete(tmp_path: Path) -> None:
    async with open_grid(tmp_path / "grid", 5) as grid:
        tree = _tree(tmp_path, "tree")
        await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        holders = await trio.to_thread.run_sync(grid.nodes[0].catalog.holders)
        leaver = _holding(grid, sorted(holders)[0])
        held = leaver.packets.packet_count
        assert held > 0
        home = leaver.config.home
        (home / CONFIG_NAME).write_text(dump_toml(leaver.config.to_values()), encoding="utf-8")
        done = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "gridnode", "leave", "--home", str(home), "--json"],
                capture_output=True,
                text=True,
                timeout=120,
            )
        )
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        *progress, final = lines
        assert progress and all(e["event"] == "progress" for e in progress)
        assert {"packets_held", "packets_at_start", "seconds", "timeout_s"} <= set(progress[0])
        assert set(final) == RESULT_KEYS
        assert final["ok"] is True and final["left"] is True and final["packets_held"] == 0
        assert final["timeout_s"] == 3600
        # When the command returns the hand-over is done: the leaver holds nothing and
        # the owner's catalog names it nowhere; the node has stopped.
        assert leaver.packets.packet_count == 0
        assert leaver.identity.node_id not in await trio.to_thread.run_sync(
            grid.nodes[0].catalog.holders
        )
        with trio.fail_after(10):
            await leaver.stopped.wait()


def test_no_node_can_be_configured_to_look_draining(tmp_path: Path) -> None:
    """Owners move every packet off a member whose record carries the draining label, so
    the label is the node's own to set (``gridnode leave``), never a configured one."""
    values = {"grid_id": os.urandom(16).hex(), "listen": "127.0.0.1:0"}
    with pytest.raises(ConfigError, match="reserved"):
        build_config(tmp_path, {**values, "labels": [DRAINING_LABEL]})
    assert build_config(tmp_path, {**values, "labels": ["rack=a"]}).labels == ("rack=a",)


async def test_draining_survives_a_restart_and_its_record_reads_on_older_members(
    tmp_path: Path,
) -> None:
    identity = NodeIdentity.generate()
    values = {"grid_id": os.urandom(16).hex(), "listen": "127.0.0.1:0", "grace_period_s": 0.2}
    config = build_config(tmp_path / "n0", values)
    config.home.mkdir(parents=True)
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(config, identity).run)
        assert node.departure is not None and node.gossiper is not None
        node.departure.start()
        record = node.gossiper.membership.self_record
        assert DRAINING_LABEL in record.labels and record.free_bytes == 0
        # The draining state rides in a field every protocol version has (a label), so a
        # member of the oldest version we speak decodes the record and its signature holds.
        frame = encode(
            GossipUpdates(updates=(MemberUpdate(record=record, state="alive"),)),
            version=MIN_PROTOCOL_VERSION,
        )
        assert msgpack.unpackb(frame)["v"] == MIN_PROTOCOL_VERSION
        message = decode(frame)
        assert isinstance(message, GossipUpdates)
        assert message.updates[0].record == record and record_is_valid(message.updates[0].record)
        node.shutdown()
        with trio.fail_after(10):
            await node.stopped.wait()

        # Started again, it drains again (HOME/leaving) until it leaves or cancels.
        again: Node = await nursery.start(Node(config, identity).run)
        assert again.departure is not None and again.departure.draining
        assert again.gossiper is not None and again.gossiper.draining
        assert DRAINING_LABEL in again.gossiper.membership.self_record.labels
        again.departure.cancel()
        assert not again.packet_store.leaving
        assert DRAINING_LABEL not in again.gossiper.membership.self_record.labels
        assert again.gossiper.membership.self_record.free_bytes > 0
        again.shutdown()


def test_the_command_imports_no_node_machinery() -> None:
    """``gridnode leave`` only asks the node: it answers in milliseconds like the others."""
    code = (
        "import sys, gridnode.cli, gridnode.leave_cli; "
        "heavy = {'trio', 'trio_websocket', 'structlog', 'protocol', 'nacl', 'attrs'}; "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
