"""Data-path behaviour on real Nodes in one process (see inproc.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel

from gridnode.actors.calls import call
from gridnode.actors.uploader import UploadChunk
from gridnode.control import ControlError
from gridnode.errors import RemoteError
from gridnode.logic.packing import ErasureParams, encode_chunk
from gridnode.logic.placement import PlacementRules
from gridnode.node import Node
from protocol import Message, PacketData, PacketsData, format_node_id

from .inproc import open_grid

#: A directory name long and random enough that random ciphertext never contains it by
#: chance (a 4-byte marker like "sub/" did, once in two full runs).
SUB = "sub-dir-7c1e94a2d05b"


def write_tree(root: Path) -> Path:
    tree = root / "tree"
    (tree / SUB).mkdir(parents=True)
    (tree / SUB / "quarterly-report-zebra.txt").write_text("confidential zebra numbers " * 500)
    (tree / "random.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    return tree


async def test_backup_and_restore_in_process(tmp_path: Path) -> None:
    tree = write_tree(tmp_path)
    async with open_grid(tmp_path / "grid", 7) as grid:
        result = await grid.call(0, "backup", paths=[str(tree)])
        assert result["files"] == 2
        restored = await grid.call(
            0, "restore", snapshot=result["snapshot_id"], to=str(tmp_path / "out")
        )
        assert restored["bytes"] == result["bytes"]
        for rel in (f"{SUB}/quarterly-report-zebra.txt", "random.bin"):
            assert (tmp_path / "out" / "tree" / rel).read_bytes() == (tree / rel).read_bytes()
        # The holders count what they served (metered, credited by the fee module): at
        # least the restored bytes, since every chunk needs k packets of 1/k of it each.
        served = sum(node.packet_store.stats.get("bytes_served", 0) for node in grid.nodes[1:])
        assert served >= restored["bytes"] * 0.9  # compressed text can be a little less
        assert grid.nodes[0].packet_store.stats.get("bytes_served", 0) == 0


async def test_full_target_refuses_and_its_packet_is_placed_elsewhere(tmp_path: Path) -> None:
    allocations = ["1GB"] * 8
    allocations[3] = "300kB"  # smaller than one packet of a 2 MiB chunk
    async with open_grid(tmp_path / "grid", 8, allocations=allocations) as grid:
        source, full = grid.nodes[0], grid.nodes[3]
        encoded = encode_chunk(
            os.urandom(2 * 1024 * 1024),
            dedup_secret=source.identity.dedup_secret,
            params=ErasureParams(4, 6),
        )
        assert encoded.packet_size > 300_000
        targets = (
            full.identity.node_id,
            *tuple(n.identity.node_id for n in grid.nodes[4:8]),
            grid.nodes[1].identity.node_id,
        )
        uploaded = await call(
            source._upload_send,
            UploadChunk(
                encoded.chunk_id,
                encoded.packets,
                encoded.packet_ids,
                targets,
                PlacementRules(),
                encoded.packet_size,
            ),
        )
        assert uploaded.replaced == 1
        holders = {p.target for p in uploaded.placed}
        assert full.identity.node_id not in holders
        assert len(holders) == 6
        assert full.packet_store.stats.get("store_refused_full") == 1
        assert full.packets.used_bytes == 0


async def test_whole_grid_full_fails_clearly_and_records_no_snapshot(tmp_path: Path) -> None:
    tree = tmp_path / "big"
    tree.mkdir()
    (tree / "data.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    async with open_grid(tmp_path / "grid", 7, allocations=["600kB"] * 7) as grid:
        with pytest.raises(ControlError) as info:
            await grid.call(0, "backup", paths=[str(tree)])
        message = str(info.value)
        assert "capacity" in message or "no target" in message or "full" in message
        assert await grid.call(0, "snapshots") == []
        log = await grid.call(0, "log")
        assert log["entries"][-1]["event"] == "backup_failed"


class Recorder:
    """Wraps a node as the transport's handler: records every message it receives."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.messages: list[Message] = []

    async def handle_request(self, link: Any, msg: Message, digest: bytes | None) -> Message:
        self.messages.append(msg)
        return await self.node.handle_request(link, msg, digest)

    def handle_oneway(self, link: Any, msg: Message) -> None:
        self.messages.append(msg)
        self.node.handle_oneway(link, msg)


def _flatten(msg: Message) -> bytes:
    import attrs

    parts: list[bytes] = []

    def walk(value: Any) -> None:
        if isinstance(value, bytes):
            parts.append(value)
        elif isinstance(value, str):
            parts.append(value.encode())
        elif isinstance(value, tuple | list):
            for v in value:
                walk(v)
        elif attrs.has(type(value)):
            for f in attrs.fields(type(value)):
                walk(getattr(value, f.name))

    walk(msg)
    return b"\x00".join(parts)


async def test_targets_learn_nothing_about_the_source_or_the_data(tmp_path: Path) -> None:
    tree = write_tree(tmp_path)
    plaintext = (tree / "random.bin").read_bytes()
    recorders: dict[Node, Recorder] = {}

    def wrap(node: Node) -> Recorder:
        recorders[node] = Recorder(node)
        return recorders[node]

    async with open_grid(tmp_path / "grid", 7, wrap_handler=wrap) as grid:
        del recorders[grid.nodes[0]]  # the source
        result = await grid.call(0, "backup", paths=[str(tree)])
        placement = await grid.call(0, "placement", snapshot=result["snapshot_id"])
        source = grid.nodes[0]
        secrets_ = [
            source.identity.node_id,
            source.identity.node_id.hex().encode(),
            format_node_id(source.identity.node_id).encode(),
            b"quarterly-report-zebra",
            b"confidential zebra",
            f"{SUB}/".encode(),
            plaintext[1000:1064],
            plaintext[-64:],
        ]
        for node, recorder in recorders.items():
            data_msgs = [m for m in recorder.messages if not m.KIND.startswith("gossip_")]
            assert data_msgs, "every target received packets"
            mine = {
                bytes.fromhex(p["packet_id"])
                for c in placement["chunks"]
                for p in c["packets"]
                if p["target"] == format_node_id(node.identity.node_id)
            }
            others = {
                bytes.fromhex(p["packet_id"]) for c in placement["chunks"] for p in c["packets"]
            } - mine
            other_targets = {n.identity.node_id for n in grid.nodes[1:]} - {node.identity.node_id}
            blob = b"".join(_flatten(m) for m in data_msgs)
            for secret in secrets_:
                assert secret not in blob
            for packet_id in others:  # the sequence: which other packets belong together
                assert packet_id not in blob
            for target in other_targets:
                assert target not in blob
            stored = b"".join(
                p.read_bytes() for p in (node.config.home / "storage").rglob("*") if p.is_file()
            )
            for secret in secrets_ + list(other_targets):
                assert secret not in stored
            assert {m.packet_id for m in data_msgs if m.KIND == "store_packet"} <= mine  # type: ignore[attr-defined]


async def test_placement_error_names_the_rule(tmp_path: Path) -> None:
    tree = write_tree(tmp_path)
    async with open_grid(tmp_path / "grid", 7) as grid:
        with pytest.raises(ControlError) as info:
            await grid.call(0, "backup", paths=[str(tree)], backup_proximity="20000km:")
        assert "backup proximity" in str(info.value)
        assert await grid.call(0, "snapshots") == []
        await trio.lowlevel.checkpoint()


def _held(grid: Any) -> int:
    return sum(n.packets.packet_count for n in grid.nodes[1:])


async def test_dedup_is_per_policy_and_forget_frees_only_unshared_packets(tmp_path: Path) -> None:
    tree = write_tree(tmp_path)
    async with open_grid(tmp_path / "grid", 7) as grid:
        first = await grid.call(0, "backup", paths=[str(tree)])
        held_after_first = _held(grid)
        same = await grid.call(0, "backup", paths=[str(tree)])
        assert same["packets_uploaded"] == 0 and same["bytes_read"] == 0
        other_rules = await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        assert other_rules["bytes_read"] > 0  # a different policy is not satisfied by 4/6
        assert other_rules["chunks_new"] >= 1
        held_after_three = _held(grid)
        assert held_after_three > held_after_first

        # `first` and `same` share every data chunk: forgetting `first` frees none of them.
        result = await grid.call(0, "forget", snapshot=first["snapshot_id"])
        assert result["packets_unreachable"] == 0
        restored = await grid.call(
            0, "restore", snapshot=same["snapshot_id"], to=str(tmp_path / "o1")
        )
        assert restored["files"] == 2
        # Forgetting the 2/3 snapshot frees its packets on the targets.
        freed = await grid.call(0, "forget", snapshot=other_rules["snapshot_id"])
        assert freed["packets_deleted"] > 0
        assert _held(grid) < held_after_three
        verify = await grid.call(0, "verify", snapshot=same["snapshot_id"])
        assert verify["ok"] and verify["chunks_degraded"] == 0
        listing = await grid.call(0, "snapshots")
        assert [s["snapshot_id"] for s in listing] == [same["snapshot_id"]]


async def test_a_batch_of_packets_is_answered_packet_by_packet(tmp_path: Path) -> None:
    import blake3

    from protocol import PacketPart, PacketsStored, StorePackets

    async with open_grid(tmp_path / "grid", 2) as grid:
        source, target = grid.nodes
        link = await source.link_for(target.identity.node_id)
        good = [os.urandom(1000), os.urandom(2000), os.urandom(3000)]
        ids = [blake3.blake3(d).digest() for d in good]
        ids[1] = bytes(32)  # the second packet lies about its id
        parts = tuple(
            PacketPart(packet_id=i, owner_tag=b"t" * 32, size_bytes=len(d))
            for i, d in zip(ids, good, strict=True)
        )
        answer = await link.request(
            lambda rid: StorePackets(request_id=rid, parts=parts, data=b"".join(good))
        )
        assert isinstance(answer, PacketsStored)
        assert [r.code for r in answer.results] == ["", "id_mismatch", ""]
        assert len(answer.results[0].receipt) == 64 and answer.results[1].receipt == b""
        assert target.packets.has(ids[0]) and target.packets.has(ids[2])
        assert not target.packets.has(ids[1])
        # Sizes that do not add up are refused as a whole.
        bad = (PacketPart(packet_id=ids[0], owner_tag=b"t" * 32, size_bytes=5),)
        with pytest.raises(RemoteError) as info:
            await link.request(lambda rid: StorePackets(request_id=rid, parts=bad, data=b"xx"))
        assert info.value.code == "malformed"


async def test_a_batch_is_hashed_once_on_the_target_and_never_by_the_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 6a: the batch's sealed header names each packet's id, so neither session
    hashes the payload and the target hashes each packet exactly once, against its id."""
    import blake3

    import gridnode.storage.packets
    from protocol import PacketPart, PacketsStored, StorePackets

    async with open_grid(tmp_path / "grid", 2) as grid:
        source, target = grid.nodes
        link = await source.link_for(target.identity.node_id)
        assert not link.session.seal_payloads  # loopback: the payload travels detached
        packets = [os.urandom(10_000 + 1_000 * i) for i in range(3)]
        ids = [blake3.blake3(p).digest() for p in packets]
        hashed: list[int] = []
        real = blake3.blake3

        def counting(data: Any = b"", *args: Any, **kwargs: Any) -> Any:
            if memoryview(data).nbytes >= 4096:  # packets, not tags and keys
                hashed.append(memoryview(data).nbytes)
            return real(data, *args, **kwargs)

        monkeypatch.setattr(blake3, "blake3", counting)
        monkeypatch.setattr(gridnode.storage.packets, "blake3", counting)
        parts = tuple(
            PacketPart(packet_id=i, owner_tag=b"t" * 32, size_bytes=len(p))
            for i, p in zip(ids, packets, strict=True)
        )
        answer = await link.request(
            lambda rid: StorePackets(request_id=rid, parts=parts, data=b""), payload=packets
        )
        assert isinstance(answer, PacketsStored)
        assert [r.code for r in answer.results] == ["", "", ""]
        assert all(target.packets.has(i) for i in ids)
        assert sorted(hashed) == sorted(len(p) for p in packets)


async def test_a_batch_changed_on_the_way_stores_none_of_the_changed_packets(
    tmp_path: Path,
) -> None:
    """The session no longer hashes a batch, so a payload changed in transit (here by
    the sender itself, after sealing the header) must still be caught, packet by packet,
    by the target: the changed packet is refused, the others are kept."""
    import blake3

    from protocol import PacketPart, PacketsStored, StorePackets

    async with open_grid(tmp_path / "grid", 2) as grid:
        source, target = grid.nodes
        link = await source.link_for(target.identity.node_id)
        packets = [os.urandom(5_000) for _ in range(3)]
        ids = [blake3.blake3(p).digest() for p in packets]
        parts = tuple(
            PacketPart(packet_id=i, owner_tag=b"t" * 32, size_bytes=len(p))
            for i, p in zip(ids, packets, strict=True)
        )
        changed = bytearray(packets[1])
        changed[100] ^= 0x01
        answer = await link.request(
            lambda rid: StorePackets(request_id=rid, parts=parts, data=b""),
            payload=[packets[0], bytes(changed), packets[2]],
        )
        assert isinstance(answer, PacketsStored)
        assert [r.code for r in answer.results] == ["", "id_mismatch", ""]
        assert target.packets.has(ids[0]) and target.packets.has(ids[2])
        assert not target.packets.has(ids[1])


async def test_repair_puts_rotten_packets_back_and_rewrites_every_record_using_them(
    tmp_path: Path,
) -> None:
    import blake3

    tree = write_tree(tmp_path)
    async with open_grid(tmp_path / "grid", 7) as grid:
        source = grid.nodes[0]
        first = await grid.call(0, "backup", paths=[str(tree)])
        (tree / "extra.txt").write_text("another file " * 100)
        second = await grid.call(0, "backup", paths=[str(tree)])
        ids = [first["snapshot_id"], second["snapshot_id"]]

        def chunk_ids(snapshot_id: str) -> set[bytes]:
            return {c.chunk_id for c in source.catalog.iter_chunks_of(snapshot_id)}

        shared = sorted(chunk_ids(ids[0]) & chunk_ids(ids[1]))
        assert shared  # random.bin is unchanged: its chunks are in both snapshots
        chunk = next(c for c in source.catalog.iter_chunks_of(ids[0]) if c.chunk_id == shared[0])
        by_id = {n.identity.node_id: n for n in grid.nodes}
        rotten, deleted = chunk.packets[0], chunk.packets[4]
        rotten_path = by_id[rotten.target].packets.path_for(rotten.packet_id)
        data = bytearray(rotten_path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        rotten_path.write_bytes(bytes(data))
        by_id[deleted.target].packets.path_for(deleted.packet_id).unlink()
        before = await grid.call(0, "verify", snapshot=ids[0])
        assert before["chunks_degraded"] == 1

        result = await grid.call(0, "repair")
        assert result["ok"] is True
        assert result["chunks_repaired"] == 1 and result["packets_rebuilt"] == 2
        assert result["records_rewritten"] == sorted(ids)
        after = source.catalog.chunk(chunk.chunk_id, chunk.policy)
        assert after is not None
        # The holders answered (their copies were gone or rotten): the packets went back
        # to them, so the chunk keeps the holders its rules were checked against.
        assert [p.target for p in after.packets] == [p.target for p in chunk.packets]
        for packet in (rotten, deleted):
            stored = by_id[packet.target].packets.get(packet.packet_id)
            assert stored is not None
            assert blake3.blake3(stored).digest() == packet.packet_id
        for snapshot_id in ids:
            verified = await grid.call(0, "verify", snapshot=snapshot_id)
            assert verified["ok"] and verified["chunks_degraded"] == 0
        log = await grid.call(0, "log")
        assert log["entries"][-3]["event"] == "repair"


async def test_a_holder_gone_for_repair_after_s_has_its_packets_rebuilt_elsewhere(
    tmp_path: Path,
) -> None:
    tree = write_tree(tmp_path)
    settings = {"repair_after_s": 1.0, "repair_threshold": 1}
    async with open_grid(tmp_path / "grid", 8, settings=settings) as grid:
        source = grid.nodes[0]
        snap = (await grid.call(0, "backup", paths=[str(tree)]))["snapshot_id"]
        chunks = list(source.catalog.iter_chunks_of(snap))
        holders = {p.target for c in chunks for p in c.packets}
        # The node holding the most packets leaves the grid for good.
        leaving = max(
            grid.nodes[1:],
            key=lambda n: sum(p.target == n.identity.node_id for c in chunks for p in c.packets),
        )
        gone = leaving.identity.node_id
        assert gone in holders
        on_gone = source.catalog.packets_on(gone)
        assert on_gone > 0
        leaving.shutdown()
        await leaving.stopped.wait()
        assert source.auto_repair is not None
        with trio.fail_after(30):
            # Chunks move one by one; the run ends after the records are rewritten.
            while source.catalog.packets_on(gone) or not source.auto_repair.runs:
                await trio.sleep(0.2)
        run = source.auto_repair.runs[-1]
        assert run["ok"] is True and run["packets_rebuilt"] >= on_gone
        assert run["records_rewritten"] == [snap]
        entry = next(
            e for e in reversed((await grid.call(0, "log"))["entries"]) if e["event"] == "repair"
        )
        assert entry["detail"]["automatic"] is True
        verified = await grid.call(0, "verify", snapshot=snap)
        assert verified["ok"] and verified["chunks_degraded"] == 0
        # Nothing else moved: the other holders kept their packets.
        for before in chunks:
            after = source.catalog.chunk(before.chunk_id, before.policy)
            assert after is not None
            for old, new in zip(before.packets, after.packets, strict=True):
                assert new.target == old.target or old.target == gone


async def test_repair_reports_chunks_it_cannot_save_and_keeps_their_records(
    tmp_path: Path,
) -> None:
    """Below k survivors nothing can be rebuilt: said plainly, and the catalog keeps the
    old holders (they may come back), so nothing is lost by trying."""
    tree = tmp_path / "one"
    tree.mkdir()
    (tree / "data.bin").write_bytes(os.urandom(1024 * 1024))
    async with open_grid(tmp_path / "grid", 5) as grid:
        source = grid.nodes[0]
        snap = (await grid.call(0, "backup", paths=[str(tree)], redundancy="3/4"))["snapshot_id"]
        before = list(source.catalog.iter_chunks_of(snap))
        for node in grid.nodes[1:3]:
            node.shutdown()
            await node.stopped.wait()
        result = await grid.call(0, "repair", snapshot=snap)
        assert result["ok"] is False
        # Every chunk (the data and the record's pieces) has 2 of its 4 packets left.
        assert result["chunks_checked"] > len(before)
        assert result["chunks_lost"] == result["chunks_checked"]
        assert result["chunks_repaired"] == 0 and result["records_rewritten"] == []
        assert all("survive" in p["problem"] for p in result["problems"])
        assert list(source.catalog.iter_chunks_of(snap)) == before


async def test_targets_failing_together_are_replaced_by_distinct_nodes(tmp_path: Path) -> None:
    """Two of a chunk's targets refuse at once; with exactly two spare nodes left, each
    replacement must see the other's choice or both packets land on one node."""
    allocations = ["1GB"] * 9
    allocations[1] = allocations[2] = "300kB"  # smaller than one packet of a 2 MiB chunk
    async with open_grid(tmp_path / "grid", 9, allocations=allocations) as grid:
        source = grid.nodes[0]
        for _ in range(5):  # the race needs both failures in flight together: try a few
            encoded = encode_chunk(
                os.urandom(2 * 1024 * 1024),
                dedup_secret=source.identity.dedup_secret,
                params=ErasureParams(4, 6),
            )
            targets = tuple(n.identity.node_id for n in grid.nodes[1:7])
            uploaded = await call(
                source._upload_send,
                UploadChunk(
                    encoded.chunk_id,
                    encoded.packets,
                    encoded.packet_ids,
                    targets,
                    PlacementRules(),
                    encoded.packet_size,
                ),
            )
            holders = [p.target for p in uploaded.placed]
            assert len(set(holders)) == 6, holders
            assert set(holders) == {n.identity.node_id for n in grid.nodes[3:9]}


class LyingHolder:
    """A holder that sends wrong bytes for every packet it serves (its disk is fine: the
    lie is on the wire, where the holder's own checks cannot catch it)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.lies = 0

    async def handle_request(self, link: Any, msg: Message, digest: bytes | None) -> Message:
        answer = await self.node.handle_request(link, msg, digest)
        if isinstance(answer, PacketData):
            self.lies += 1
            data = bytearray(answer.data)
            data[len(data) // 2] ^= 0x01
            return attrs.evolve(answer, data=bytes(data))
        if isinstance(answer, PacketsData):  # a batch: one flipped bit in every packet
            data = bytearray(answer.data)
            offset = 0
            for part in answer.parts:
                if part.size_bytes:
                    self.lies += 1
                    data[offset + part.size_bytes // 2] ^= 0x01
                    offset += part.size_bytes
            return attrs.evolve(answer, data=bytes(data))
        return answer

    def handle_oneway(self, link: Any, msg: Message) -> None:
        self.node.handle_oneway(link, msg)


async def test_a_holder_sending_wrong_bytes_costs_one_packet_not_the_chunk(
    tmp_path: Path,
) -> None:
    tree = write_tree(tmp_path)
    liars: list[LyingHolder] = []

    def wrap(node: Node) -> Any:
        if len(liars) == 0 and node.config.home.name == "n1":
            liars.append(LyingHolder(node))
            return liars[0]
        return node

    async with open_grid(tmp_path / "grid", 4, wrap_handler=wrap) as grid:
        result = await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        verify = await grid.call(0, "verify", snapshot=result["snapshot_id"])
        assert verify["ok"] is True
        assert verify["chunks_degraded"] >= 1
        assert any("corrupt" in p["problem"] for p in verify["problems"])
        await grid.call(0, "restore", snapshot=result["snapshot_id"], to=str(tmp_path / "out"))
        assert liars[0].lies >= 1
        for rel in (f"{SUB}/quarterly-report-zebra.txt", "random.bin"):
            assert (tmp_path / "out" / "tree" / rel).read_bytes() == (tree / rel).read_bytes()


async def test_a_snapshot_is_complete_only_once_its_record_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gridnode.backup

    async def record_storage_fails(*args: Any, **kwargs: Any) -> Any:
        raise gridnode.backup.BackupFailed("the grid refused the record (test)")

    tree = write_tree(tmp_path)
    async with open_grid(tmp_path / "grid", 4) as grid:
        monkeypatch.setattr(gridnode.backup, "store_blob", record_storage_fails)
        with pytest.raises(Exception, match="refused the record"):
            await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        snapshots = await grid.call(0, "snapshots")
        assert not any(s["complete"] for s in snapshots)
        with pytest.raises(Exception, match=r"no complete snapshot|not complete|no snapshot"):
            await grid.call(0, "restore", snapshot="latest", to=str(tmp_path / "out"))
