"""A target stores only what it allocated, and only for whom it may (issue 8).

Recovery roots count against the allocation and are capped per delivering peer; owner
tags exist only for packets the target verified and holds; a root's locator is the hash
of its verification key, so nobody who learns a locator can squat or overwrite it; and
free space counts bytes still being written.  Most tests drive the packet store actor
directly (no network); one runs a small in-process grid to cover the wire path.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from blake3 import blake3
from nacl.signing import SigningKey

import gridnode.storage.holdings as holdings_module
from gridnode.actors.calls import call
from gridnode.actors.packet_store import PacketStore, TargetRequest, root_signature_payload
from gridnode.config import build_config
from gridnode.errors import RemoteError
from gridnode.identity import NodeIdentity
from gridnode.node import open_node_storage
from gridnode.recovery_root import fetch_root, publish_root
from gridnode.storage.holdings import (
    MAX_ROOT_BYTES_PER_OWNER,
    MAX_ROOTS_PER_OWNER,
    ROOT_RECORD_BYTES,
    Holdings,
)
from gridnode.storage.packets import AllocationFull, PacketDirectory
from protocol import (
    DeletePacket,
    GetRoot,
    Message,
    PacketPart,
    PacketsStored,
    PacketStored,
    PutRoot,
    RootData,
    RootStored,
    StorePacket,
    StorePackets,
    root_locator,
    sign,
)

from .inproc import open_grid

Ask = Callable[..., Awaitable[Message]]


def _packet(size: int, seed: int) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(size)
    return blake3(data).digest(), data


def _signed_root(
    key: SigningKey, version: int, sealed: bytes, *, locator: bytes | None = None
) -> PutRoot:
    verify_key = bytes(key.verify_key)
    where = root_locator(verify_key) if locator is None else locator
    return PutRoot(
        request_id=1,
        locator=where,
        version=version,
        verify_key=verify_key,
        signature=sign(key, root_signature_payload(where, version, sealed)),
        sealed=sealed,
    )


def _tag_count(storage: Path) -> int:
    with sqlite3.connect(storage / "holdings.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM owner_tags").fetchone()[0])


@asynccontextmanager
async def open_store(tmp_path: Path, allocation: int) -> AsyncIterator[tuple[PacketStore, Ask]]:
    """The target side of a packet store on its own: requests go straight to the actor."""
    storage = tmp_path / "storage"
    packets = PacketDirectory(storage, allocation)
    holdings = Holdings(storage / "holdings.sqlite")
    send, receive = trio.open_memory_channel[Any](16)

    # A target has no way to dial out or place packets: those are the uploader's.
    store = PacketStore(
        identity=NodeIdentity.generate(),
        packets=packets,
        holdings=holdings,
        inbound=receive,
        disk_limiter=trio.CapacityLimiter(4),
    )

    async def ask(msg: Message, *, peer: bytes, digest: bytes | None = None) -> Message:
        answer: Message = await call(send, TargetRequest(msg, digest, peer))
        return answer

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        yield store, ask
        nursery.cancel_scope.cancel()


# --- free space and bytes in flight --------------------------------------------------------


def test_free_space_counts_bytes_still_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two puts that each fit but not together: the second must see the first's bytes."""
    store = PacketDirectory(tmp_path, allocation_bytes=1500)
    first_id, first = _packet(1000, seed=1)
    second_id, second = _packet(1000, seed=2)
    writing, release = threading.Event(), threading.Event()
    write_temp = store._write_temp

    def slow_write(packet_id: bytes, view: memoryview) -> Path:
        if packet_id == first_id:
            writing.set()
            assert release.wait(10)
        return write_temp(packet_id, view)

    monkeypatch.setattr(store, "_write_temp", slow_write)
    outcome: list[bool] = []
    writer = threading.Thread(target=lambda: outcome.append(store.put(first_id, first)))
    writer.start()
    try:
        assert writing.wait(10)
        assert store.free_bytes == 500
        with pytest.raises(AllocationFull, match="1000 being written"):
            store.put(second_id, second)
        with pytest.raises(AllocationFull):
            store.reserve(501)  # a recovery root sees the bytes in flight too
    finally:
        release.set()
        writer.join(10)
    assert outcome == [True]
    assert not store.has(second_id)
    assert (store.used_bytes, store.free_bytes) == (1000, 500)
    assert store.statistics().reserved_bytes == 0


def test_bytes_held_outside_packets_share_the_allocation(tmp_path: Path) -> None:
    store = PacketDirectory(tmp_path, allocation_bytes=10_000, other_bytes=4000)
    assert store.free_bytes == 6000
    store.reserve(5000)
    assert store.free_bytes == 1000
    with pytest.raises(AllocationFull):
        store.put(*_packet(2000, seed=3))
    store.settle(5000, 5000)  # the reserved write committed
    assert (store.statistics().other_bytes, store.free_bytes) == (9000, 1000)
    with pytest.raises(AllocationFull, match="1001"):
        store.reserve(1001)
    store.reserve(800)
    store.settle(800, 0)  # the write was refused after all: nothing is used
    store.settle(0, -9000)  # everything outside packets/ was dropped
    assert (store.statistics().other_bytes, store.free_bytes, store.used_bytes) == (0, 10_000, 0)
    with pytest.raises(ValueError):
        store.reserve(-1)


# --- recovery roots count against the allocation -------------------------------------------


async def test_recovery_roots_count_against_the_allocation(tmp_path: Path) -> None:
    peers = [os.urandom(32) for _ in range(3)]
    async with open_store(tmp_path, allocation=20_000) as (store, ask):
        first = _signed_root(SigningKey.generate(), 1, os.urandom(12_000))
        assert isinstance(await ask(first, peer=peers[0]), RootStored)
        charged = 12_000 + ROOT_RECORD_BYTES
        assert store.packets.free_bytes == 20_000 - charged

        # Another root, or a packet, past what is left is refused.
        with pytest.raises(RemoteError) as info:
            await ask(_signed_root(SigningKey.generate(), 1, os.urandom(9_000)), peer=peers[1])
        assert info.value.code == "allocation_full"
        packet_id, data = _packet(9_000, seed=4)
        store_packet = StorePacket(
            request_id=2, packet_id=packet_id, owner_tag=b"t" * 32, data=data
        )
        with pytest.raises(RemoteError) as info:
            await ask(store_packet, peer=peers[1])
        assert info.value.code == "allocation_full"

        # Two roots that each fit what is left but not together: exactly one is kept.
        assert (
            4_000 + ROOT_RECORD_BYTES < store.packets.free_bytes < 2 * (4_000 + ROOT_RECORD_BYTES)
        )
        outcomes: list[str] = []

        async def put(peer: bytes) -> None:
            try:
                await ask(_signed_root(SigningKey.generate(), 1, os.urandom(4_000)), peer=peer)
                outcomes.append("stored")
            except RemoteError as exc:
                outcomes.append(exc.code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(put, peers[1])
            nursery.start_soon(put, peers[2])
        assert sorted(outcomes) == ["allocation_full", "stored"]
        charged += 4_000 + ROOT_RECORD_BYTES
        assert store.packets.free_bytes == 20_000 - charged

        # A smaller new version gives room back.
        key = SigningKey.generate()
        await ask(_signed_root(key, 1, os.urandom(1_000)), peer=peers[2])
        await ask(_signed_root(key, 2, os.urandom(100)), peer=peers[2])
        charged += 100 + ROOT_RECORD_BYTES
        assert store.packets.free_bytes == 20_000 - charged
        assert store.holdings.root_bytes() == charged
        assert store.packets.statistics().reserved_bytes == 0

    # Reopened, the node counts the roots it holds again.
    config = build_config(tmp_path, {"grid_id": os.urandom(16).hex(), "allocate": "20000B"})
    _, packets, _ = open_node_storage(config, NodeIdentity.generate())
    assert packets.free_bytes == 20_000 - charged


async def test_recovery_roots_are_limited_per_owner(tmp_path: Path) -> None:
    owner, other = os.urandom(32), os.urandom(32)
    async with open_store(tmp_path, allocation=1 << 30) as (store, ask):
        keys = [SigningKey.generate() for _ in range(MAX_ROOTS_PER_OWNER + 1)]
        for key in keys[:-1]:
            await ask(_signed_root(key, 1, b"sealed"), peer=owner)
        with pytest.raises(RemoteError) as info:
            await ask(_signed_root(keys[-1], 1, b"sealed"), peer=owner)
        assert info.value.code == "root_limit"
        assert f"{MAX_ROOTS_PER_OWNER} root" in str(info.value)
        # A new version of a root the owner holds is no new root; another peer has its own quota.
        assert isinstance(await ask(_signed_root(keys[0], 2, b"newer"), peer=owner), RootStored)
        assert isinstance(await ask(_signed_root(keys[-1], 1, b"sealed"), peer=other), RootStored)

        # Bytes: the largest root fits, but no second one beside it.
        big = MAX_ROOT_BYTES_PER_OWNER - ROOT_RECORD_BYTES - 1000
        heavy = os.urandom(32)
        await ask(_signed_root(SigningKey.generate(), 1, os.urandom(big)), peer=heavy)
        with pytest.raises(RemoteError) as info:
            await ask(_signed_root(SigningKey.generate(), 1, os.urandom(2000)), peer=heavy)
        assert info.value.code == "root_limit"
        assert store.holdings.root_count() == MAX_ROOTS_PER_OWNER + 2


# --- owner tags only for verified packets ----------------------------------------------------


async def test_rejected_packets_add_no_owner_tags(tmp_path: Path) -> None:
    attacker, owner = os.urandom(32), os.urandom(32)
    storage = tmp_path / "storage"
    async with open_store(tmp_path, allocation=5_000) as (store, ask):
        packet_id, data = _packet(1_000, seed=5)
        secret = os.urandom(32)
        tag = blake3(secret).digest()

        # Someone who knows a packet id offers wrong bytes under it with a tag of its own.
        forged = StorePacket(request_id=1, packet_id=packet_id, owner_tag=b"x" * 32, data=b"junk")
        with pytest.raises(RemoteError) as info:
            await ask(forged, peer=attacker)
        assert info.value.code == "id_mismatch"
        too_big_id, too_big = _packet(6_000, seed=6)
        with pytest.raises(RemoteError) as info:
            await ask(
                StorePacket(request_id=2, packet_id=too_big_id, owner_tag=b"y" * 32, data=too_big),
                peer=attacker,
            )
        assert info.value.code == "allocation_full"
        assert _tag_count(storage) == 0

        # A batch: one good packet, one lying about its id, one past the allocation.
        bad_id, bad = _packet(500, seed=7)
        parts = (
            PacketPart(packet_id=packet_id, owner_tag=tag, size_bytes=len(data)),
            PacketPart(packet_id=bad_id, owner_tag=b"z" * 32, size_bytes=len(bad) - 1),
            PacketPart(packet_id=too_big_id, owner_tag=b"w" * 32, size_bytes=len(too_big)),
        )
        answer = await ask(
            StorePackets(request_id=3, parts=parts, data=data + bad[:-1] + too_big), peer=owner
        )
        assert isinstance(answer, PacketsStored)
        assert [r.code for r in answer.results] == ["", "id_mismatch", "allocation_full"]
        assert _tag_count(storage) == 1

        # A second owner of the same (verified) packet adds its tag; the packet goes with the last.
        second_secret = os.urandom(32)
        again = StorePacket(
            request_id=4, packet_id=packet_id, owner_tag=blake3(second_secret).digest(), data=data
        )
        assert isinstance(await ask(again, peer=attacker), PacketStored)
        assert _tag_count(storage) == 2
        for n, owner_secret in enumerate((secret, second_secret)):
            await ask(
                DeletePacket(request_id=5 + n, packet_id=packet_id, owner_secret=owner_secret),
                peer=owner,
            )
        # The forged offer's tag does not keep the packet alive.
        assert not store.packets.has(packet_id)
        assert _tag_count(storage) == 0


# --- a locator belongs to its key ---------------------------------------------------------------


async def test_a_root_locator_can_only_be_written_by_its_key(tmp_path: Path) -> None:
    async with open_grid(tmp_path / "grid", 3) as grid:
        owner, attacker, holder = grid.nodes
        locator = owner.identity.root_locator
        assert locator == root_locator(bytes(owner.identity.root_signing_key.verify_key))
        link = await attacker.link_for(holder.identity.node_id)

        async def put(msg: PutRoot) -> Message:
            answer: Message = await link.request(lambda rid: attrs.evolve(msg, request_id=rid))
            return answer

        # The attacker learned the owner's locator (it holds the owner's root, say) and
        # tries to claim it first with a key of its own.
        with pytest.raises(RemoteError) as info:
            await put(_signed_root(SigningKey.generate(), 1, b"squat", locator=locator))
        assert info.value.code == "bad_locator"
        # ... or with the owner's verification key and a signature it cannot make.
        forged = _signed_root(SigningKey.generate(), 1, b"squat", locator=locator)
        forged = PutRoot(
            request_id=1,
            locator=locator,
            version=1,
            verify_key=bytes(owner.identity.root_signing_key.verify_key),
            signature=forged.signature,
            sealed=b"squat",
        )
        with pytest.raises(RemoteError) as info:
            await put(forged)
        assert info.value.code == "bad_signature"
        assert holder.holdings.get_root(locator) is None

        first = await publish_root(owner.services)
        assert first["copies"] == 2
        old = attacker.holdings.get_root(locator)  # the attacker holds a copy too
        assert old is not None and old.version == first["version"]
        second = await publish_root(owner.services)
        assert second["version"] > first["version"] and second["copies"] == 2
        # Replaying the owner's older, validly signed version does not roll the root back.
        replay = PutRoot(
            request_id=1,
            locator=old.locator,
            version=old.version,
            verify_key=old.verify_key,
            signature=old.signature,
            sealed=old.sealed,
        )
        with pytest.raises(RemoteError) as info:
            await put(replay)
        assert info.value.code == "stale_version"
        held = holder.holdings.get_root(locator)
        assert held is not None and held.version == second["version"]
        # Still readable by locator, and recovery finds the newest version.
        answer = await link.request(lambda rid: GetRoot(request_id=rid, locator=locator))
        assert isinstance(answer, RootData) and answer.version == second["version"]
        fetched = await fetch_root(owner.services)
        assert fetched is not None and fetched[0] == second["version"]

        # The holder counts roots against the authenticated session that delivered them.
        for _ in range(MAX_ROOTS_PER_OWNER):
            await put(_signed_root(SigningKey.generate(), 1, b"mine"))
        with pytest.raises(RemoteError) as info:
            await put(_signed_root(SigningKey.generate(), 1, b"one too many"))
        assert info.value.code == "root_limit"
        attacker_tag = holder.identity.root_owner_tag(attacker.identity.node_id)
        assert holder.holdings.root_count(attacker_tag) == MAX_ROOTS_PER_OWNER


async def test_a_packet_whose_tag_cannot_be_recorded_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tags follow the write; if recording them fails, the packet stored now is dropped
    again, since without a tag its owner could never delete it."""
    async with open_store(tmp_path, allocation=5_000) as (store, ask):
        packet_id, data = _packet(1_000, seed=8)

        def broken(tags: list[tuple[bytes, bytes]], *_: object, **__: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(store.holdings, "add_tags", broken)
        msg = StorePacket(request_id=1, packet_id=packet_id, owner_tag=b"t" * 32, data=data)
        with pytest.raises(RemoteError) as info:
            await ask(msg, peer=os.urandom(32))
        assert info.value.code == "storage_error" and "disk I/O error" in str(info.value)
        assert not store.packets.has(packet_id)
        assert (store.packets.used_bytes, store.packets.free_bytes) == (0, 5_000)


def test_holdings_from_before_migrations_are_adopted(tmp_path: Path) -> None:
    """A holdings file made before roots had owners: its roots stay, count against the
    allocation, and are charged to nobody."""
    path = tmp_path / "holdings.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE owner_tags (packet_id BLOB NOT NULL, owner_tag BLOB NOT NULL,
                PRIMARY KEY (packet_id, owner_tag)) WITHOUT ROWID;
            CREATE TABLE roots (locator BLOB PRIMARY KEY, version INTEGER NOT NULL,
                verify_key BLOB NOT NULL, signature BLOB NOT NULL, sealed BLOB NOT NULL);
            """
        )
        db.execute("INSERT INTO owner_tags VALUES (?, ?)", (b"p" * 32, b"t" * 32))
        db.execute(
            "INSERT INTO roots VALUES (?, 3, ?, ?, ?)", (b"l" * 32, b"k" * 32, b"s" * 64, b"old")
        )
    holdings = Holdings(path)
    assert holdings.schema_version == len(holdings_module.MIGRATIONS)
    assert holdings.root_bytes() == 3 + ROOT_RECORD_BYTES
    assert holdings.root_count() == 1 and holdings.root_count(b"") == 1
    assert holdings.remove_tag(b"p" * 32, b"t" * 32) == (True, 0)
    assert Holdings(path).schema_version == len(holdings_module.MIGRATIONS)  # nothing again
