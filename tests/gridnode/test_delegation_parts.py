"""A capability's map in parts: how a large backup is delegated, renewed and handed on
without any side holding its map whole (issue 15: 100 GB is ~2.5 million packets)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gridnode.delegation import MoveRecord, Repairer, build_capability
from gridnode.delegation import map_parts as mp
from gridnode.delegation.capability import held_chunk
from gridnode.delegation.transfer import deliver
from gridnode.errors import RemoteError
from gridnode.identity import NodeIdentity
from gridnode.storage.records import ChunkRecord, PacketRecord
from protocol._messages import GrantRepair, GrantRepairPart, Message, RepairGranted

from .delegates import idle_repairer

NOW = 1_800_000_000.0


def _holders(count: int) -> list[bytes]:
    return [NodeIdentity.generate().node_id for _ in range(count)]


def _chunks(count: int, holders: list[bytes], *, n: int = 30, k: int = 10) -> list[ChunkRecord]:
    out = []
    for i in range(count):
        packets = tuple(
            PacketRecord(s, os.urandom(32), holders[(i + s) % len(holders)], b"") for s in range(n)
        )
        out.append(ChunkRecord(os.urandom(32), 1000, 1200, False, k, n, packets, {}))
    return out


def test_parts_are_stable_even_and_a_change_touches_one_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = NodeIdentity.generate()
    monkeypatch.setattr(mp, "PART_PACKETS", 3_000)
    chunks = [held_chunk(owner, c) for c in _chunks(400, _holders(40))]  # 12,000 packets
    parts = mp.build_parts(chunks)
    assert len(parts) == 4
    assert sum(p.ref.chunks for p in parts) == 400
    assert sum(p.ref.packets for p in parts) == 12_000
    assert min(p.ref.packets for p in parts) > 1_500  # handles are keyed hashes: even
    # Order of the stream does not matter; every part decodes to what went in.
    again = mp.build_parts(list(reversed(chunks)))
    assert [p.ref for p in again] == [p.ref for p in parts]
    decoded = {c.handle: c for p in parts for c in mp.decode_part(p.body, p.ref)}
    assert decoded == {c.handle: c for c in chunks}
    # A moved packet changes its chunk's part only: a renewal resends one part.
    moved = list(chunks)
    moved[7] = moved[7].moved(3, os.urandom(32))
    changed = [
        a.ref.digest for a, b in zip(parts, mp.build_parts(moved), strict=True) if a.ref != b.ref
    ]
    assert len(changed) == 1
    # Compact: holders and rules once per part, ~70 bytes a packet.
    assert sum(p.size for p in parts) / 12_000 < 75


def test_the_builder_spills_to_disk_and_builds_the_same_parts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    owner = NodeIdentity.generate()
    chunks = [held_chunk(owner, c) for c in _chunks(200, _holders(12))]
    in_memory = mp.build_parts(chunks)
    monkeypatch.setattr(mp, "SPILL_BYTES", 10_000)
    spilled = mp.build_parts(chunks, tmp_path / "out")
    assert [p.ref for p in spilled] == [p.ref for p in in_memory]
    assert [p.read() for p in spilled] == [p.body for p in in_memory]
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == sorted(
        p.ref.digest.hex() for p in spilled
    )
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("gridnode-map-*"))


class _Loop:
    """A link whose far end is a repairer in this process (the session's peer is
    ``sender``): what ``deliver`` talks to."""

    def __init__(self, repairer: Repairer, sender: bytes) -> None:
        self.repairer, self.sender, self.sent = repairer, sender, []

    async def request(self, build: Callable[[int], Message], *, timeout_s: float) -> Any:
        msg = build(len(self.sent) + 1)
        self.sent.append(msg.KIND)
        return await self.repairer.serve(msg, self.sender)


async def _grant(
    owner: NodeIdentity, repairer: Repairer, chunks: list[ChunkRecord], *, now: float
) -> tuple[RepairGranted, list[str]]:
    cap = build_capability(
        owner, repairer.identity.node_id, (), now=now, lease_s=3600, lat=None, lon=None
    )
    parts = mp.build_parts([held_chunk(owner, c) for c in chunks])
    head = cap.seal(owner.signing_key, parts=parts, inline=False)
    by_digest = {p.ref.digest: p for p in parts}

    async def load(digest: bytes) -> bytes:
        return by_digest[digest].body

    async def seal(body: bytes) -> bytes:
        return mp.seal_part(body, repairer.identity.node_id)

    link = _Loop(repairer, owner.node_id)
    answer = await deliver(
        link,
        owner=owner.node_id,
        version=cap.version,
        head=head,
        parts=dict.fromkeys(by_digest, load),
        seal_for=seal,
        timeout_s=5,
    )
    return answer, link.sent


async def test_a_map_in_parts_is_taken_up_renewed_by_difference_and_survives_restart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(mp, "PART_PACKETS", 2_000)
    owner, delegate = NodeIdentity.generate(), NodeIdentity.generate()
    holders = _holders(20)
    chunks = _chunks(300, holders)  # 9,000 packets: 8 parts
    repairer = idle_repairer(delegate, tmp_path, lambda: NOW)
    answer, sent = await _grant(owner, repairer, chunks, now=NOW - 100)
    assert answer.missing == () and answer.expires == NOW - 100 + 3600
    assert sent == ["grant_repair"] + ["grant_repair_part"] * 8
    (lease,) = repairer.leases()
    assert lease["packets"] == 9_000 and lease["packets_away"] == 9_000  # none present
    held = repairer.held[owner.node_id]
    assert held.map.targets == {h: 450 for h in holders}
    # A renewal after one chunk changed sends the grant and the one part that changed.
    chunks[5] = ChunkRecord(
        chunks[5].chunk_id,
        1000,
        1200,
        False,
        10,
        30,
        (PacketRecord(0, chunks[5].packets[0].packet_id, holders[9], b""), *chunks[5].packets[1:]),
        {},
    )
    answer, sent = await _grant(owner, repairer, chunks, now=NOW - 50)
    assert answer.missing == () and sent == ["grant_repair", "grant_repair_part"]
    assert len(list((tmp_path / "delegations" / f"{owner.node_id.hex()}.parts").iterdir())) == 8
    # A restart reads the head and the part files back; the map is whole.
    again = idle_repairer(delegate, tmp_path, lambda: NOW)
    again.load()
    assert again.leases() == repairer.leases()
    held = again.held[owner.node_id]
    found = held.map.find({held_chunk(owner, chunks[5]).handle})
    assert [c.packets[0].target for c in found.values()] == [holders[9]]
    assert sum(1 for _ in held.map.chunks()) == 300


async def test_parts_come_only_from_the_granting_sender_and_only_as_signed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(mp, "PART_PACKETS", 2_000)
    owner, delegate = NodeIdentity.generate(), NodeIdentity.generate()
    chunks = _chunks(150, _holders(10))
    repairer = idle_repairer(delegate, tmp_path, lambda: NOW)
    cap = build_capability(owner, delegate.node_id, (), now=NOW, lease_s=3600, lat=None, lon=None)
    parts = mp.build_parts([held_chunk(owner, c) for c in chunks])
    head = cap.seal(owner.signing_key, parts=parts, inline=False)
    first = await repairer.serve(GrantRepair(request_id=1, capability=head), owner.node_id)
    assert isinstance(first, RepairGranted) and len(first.missing) == len(parts) > 1
    assert repairer.leases() == []  # not taken up before its map is whole
    sealed = mp.seal_part(parts[0].body, delegate.node_id)

    async def part(body: bytes, sender: bytes, version: int = cap.version) -> Message:
        msg = GrantRepairPart(request_id=2, owner=owner.node_id, version=version, part=body)
        return await repairer.serve(msg, sender)

    stranger = NodeIdentity.generate()
    for bad, sender in [
        (sealed, stranger.node_id),  # another member
        (mp.seal_part(b"forged" * 10, delegate.node_id), owner.node_id),  # not signed
        (mp.seal_part(parts[0].body, stranger.node_id), owner.node_id),  # sealed to another
    ]:
        with pytest.raises(RemoteError):
            await part(bad, sender)
    with pytest.raises(RemoteError) as wrong:
        await part(sealed, owner.node_id, version=cap.version + 1)
    assert wrong.value.code == "unexpected_part"
    ok = await part(sealed, owner.node_id)
    assert isinstance(ok, RepairGranted) and len(ok.missing) == len(parts) - 1
    with pytest.raises(RemoteError):  # the same part twice
        await part(sealed, owner.node_id)


async def test_a_delegate_refuses_maps_past_its_budget_and_keeps_moves_when_parts_vanish(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(mp, "PART_PACKETS", 2_000)
    owner, delegate = NodeIdentity.generate(), NodeIdentity.generate()
    chunks = _chunks(100, _holders(10))  # 3,000 packets
    # Anyone may choose a member as its delegate: the maps it keeps have a budget.
    small = idle_repairer(delegate, tmp_path / "small", lambda: NOW)
    small.map_budget_bytes = 3_000 * 80 - 1
    cap = build_capability(owner, delegate.node_id, (), now=NOW, lease_s=3600, lat=None, lon=None)
    head = cap.seal(owner.signing_key, parts=mp.build_parts([held_chunk(owner, c) for c in chunks]))
    with pytest.raises(RemoteError) as refused:
        await small.serve(GrantRepair(request_id=1, capability=head), owner.node_id)
    assert refused.value.code == "no_room"
    assert not (tmp_path / "small" / "delegations").exists() or not any(
        (tmp_path / "small" / "delegations").rglob("*")
    )
    # Taken up; then its part files vanish (a disk problem): the restarted delegate
    # drops the map, not the owner's record of moves, and says so.
    repairer = idle_repairer(delegate, tmp_path / "big", lambda: NOW)
    answer, _ = await _grant(owner, repairer, chunks, now=NOW)
    assert answer.missing == ()
    held = repairer.held[owner.node_id]
    move_owner = owner.node_id
    held.moves.append(
        MoveRecord(
            move_owner,
            delegate.node_id,
            1,
            b"h" * 32,
            0,
            b"p" * 32,
            1,
            b"a" * 32,
            b"b" * 32,
            b"r" * 64,
            NOW,
        ).signed(delegate.signing_key)
    )
    repairer._save(owner.node_id)
    for part in (tmp_path / "big" / "delegations" / f"{owner.node_id.hex()}.parts").iterdir():
        part.unlink()
    again = idle_repairer(delegate, tmp_path / "big", lambda: NOW)
    again.load()
    kept = again.held[owner.node_id]
    assert kept.capability is None and len(kept.moves) == 1
    assert again.leases() == []
