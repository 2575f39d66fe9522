"""Delegated repair in process: the capability (sealed, leased, only from its owner) and
the move records (signed by the repairer, checked by the owner against receipts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import msgpack
import pytest
import trio

from gridnode.delegation import (
    HANDON_S,
    MAX_LEASE_S,
    Capability,
    CapabilityRefused,
    MoveRecord,
    MoveRejected,
    apply_moves,
    build_capability,
    check_move,
    chunk_handle,
)
from gridnode.errors import RemoteError
from gridnode.identity import NodeIdentity
from gridnode.storage.records import ChunkRecord
from protocol import receipt_payload, sign
from protocol._messages import GetRepairMoves, GrantRepair, RepairGranted, RepairMoves

from .delegates import FAST_REPAIR, idle_repairer, signed_chunk, small_tree

NOW = 1_800_000_000.0


@attrs.frozen
class Setup:
    owner: NodeIdentity
    delegate: NodeIdentity
    holders: list[NodeIdentity]
    chunk: ChunkRecord


@pytest.fixture
def setup() -> Setup:
    holders = [NodeIdentity.generate() for _ in range(4)]
    return Setup(NodeIdentity.generate(), NodeIdentity.generate(), holders, signed_chunk(holders))


def _capability(s: Setup, *, lease_s: float = 3600.0, now: float = NOW) -> Capability:
    return build_capability(
        s.owner, s.delegate.node_id, [s.chunk], now=now, lease_s=lease_s, lat=47.4, lon=8.5
    )


def test_capability_is_sealed_to_its_delegate_and_names_no_chunk(setup: Setup) -> None:
    blob = _capability(setup).seal(setup.owner.signing_key)
    # Nothing of the map travels in the clear: no chunk id, packet id, holder or tag.
    for secret in (
        setup.chunk.chunk_id,
        *(p.packet_id for p in setup.chunk.packets),
        *(p.target for p in setup.chunk.packets),
    ):
        assert secret not in blob
    opened = Capability.open(blob, identity=setup.delegate, sender=setup.owner.node_id, now=NOW + 1)
    (held,) = opened.chunks
    assert held.handle == chunk_handle(setup.owner, setup.chunk.chunk_id, setup.chunk.policy)
    assert held.handle != setup.chunk.chunk_id
    assert [(p.packet_id, p.target) for p in held.packets] == [
        (p.packet_id, p.target) for p in setup.chunk.packets
    ]
    # The delete tag, never the delete secret.
    assert held.packets[0].owner_tag == setup.owner.packet_owner_tag(
        setup.chunk.packets[0].packet_id, setup.chunk.policy
    )
    assert (held.k, held.n, held.cipher_size) == (2, 4, 1000)
    assert (opened.lat, opened.lon) == (47.4, 8.5)


def test_only_the_addressed_delegate_can_open_it(setup: Setup) -> None:
    blob = _capability(setup).seal(setup.owner.signing_key)
    stranger = NodeIdentity.generate()
    with pytest.raises(CapabilityRefused) as refused:
        Capability.open(blob, identity=stranger, sender=setup.owner.node_id, now=NOW)
    assert refused.value.code == "not_delegate"
    # Re-addressing the envelope to the stranger breaks the owner's signature.
    raw = msgpack.unpackb(blob, raw=False)
    raw[2] = stranger.node_id
    forged = msgpack.packb(raw, use_bin_type=True)
    with pytest.raises(CapabilityRefused) as refused:
        Capability.open(forged, identity=stranger, sender=setup.owner.node_id, now=NOW)
    assert refused.value.code == "bad_signature"


def test_a_capability_is_refused_from_anyone_but_its_owner(setup: Setup) -> None:
    blob = _capability(setup).seal(setup.owner.signing_key)
    relay = NodeIdentity.generate()
    with pytest.raises(CapabilityRefused) as refused:
        Capability.open(blob, identity=setup.delegate, sender=relay.node_id, now=NOW)
    assert refused.value.code == "not_owner"
    # A member cannot issue one in another's name: it cannot sign as the owner.
    impostor = attrs.evolve(_capability(setup), owner=relay.node_id)
    with pytest.raises(ValueError):
        impostor.seal(setup.owner.signing_key)
    raw = msgpack.unpackb(_capability(setup).seal(setup.owner.signing_key), raw=False)
    raw[8] = sign(relay.signing_key, b"x" * 32)  # the owner's signature over the grant
    with pytest.raises(CapabilityRefused) as refused:
        Capability.open(
            msgpack.packb(raw, use_bin_type=True),
            identity=setup.delegate,
            sender=setup.owner.node_id,
            now=NOW,
        )
    assert refused.value.code == "bad_signature"


def test_leases_expire_and_are_bounded(setup: Setup) -> None:
    blob = _capability(setup, lease_s=60).seal(setup.owner.signing_key)
    Capability.open(blob, identity=setup.delegate, sender=setup.owner.node_id, now=NOW + 59)
    with pytest.raises(CapabilityRefused) as refused:
        Capability.open(blob, identity=setup.delegate, sender=setup.owner.node_id, now=NOW + 61)
    assert refused.value.code == "expired"
    long = _capability(setup, lease_s=MAX_LEASE_S + 10).seal(setup.owner.signing_key)
    with pytest.raises(CapabilityRefused) as refused:
        Capability.open(long, identity=setup.delegate, sender=setup.owner.node_id, now=NOW)
    assert refused.value.code == "bad_lease"
    garbage = b"\x93\x01\x02"
    with pytest.raises(CapabilityRefused) as refused:
        Capability.open(garbage, identity=setup.delegate, sender=setup.owner.node_id, now=NOW)
    assert refused.value.code == "bad_capability"


class _Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


async def test_a_delegate_holds_renews_and_drops_capabilities(setup: Setup, tmp_path: Path) -> None:
    clock = _Clock()
    repairer = idle_repairer(setup.delegate, tmp_path, clock)
    first = _capability(setup, lease_s=100)
    answer = await repairer.serve(
        GrantRepair(request_id=1, capability=first.seal(setup.owner.signing_key)),
        setup.owner.node_id,
    )
    assert isinstance(answer, RepairGranted) and answer.expires == NOW + 100
    assert [lease["expires"] for lease in repairer.leases()] == [NOW + 100]
    # Another member cannot grant in the owner's name.
    intruder = NodeIdentity.generate()
    with pytest.raises(RemoteError) as refused:
        await repairer.serve(
            GrantRepair(request_id=2, capability=first.seal(setup.owner.signing_key)),
            intruder.node_id,
        )
    assert refused.value.code == "not_owner"
    # An older capability does not replace a newer one.
    older = _capability(setup, lease_s=100, now=NOW - 10)
    with pytest.raises(RemoteError) as refused:
        await repairer.serve(
            GrantRepair(request_id=3, capability=older.seal(setup.owner.signing_key)),
            setup.owner.node_id,
        )
    assert refused.value.code == "stale_capability"
    # It survives a restart of the delegate.
    again = idle_repairer(setup.delegate, tmp_path, clock)
    again.load()
    assert again.leases() == repairer.leases()
    # The lease runs out while the owner is away: the capability holds (repair must
    # outlive the owner) until the hand-on horizon the owner signed.
    clock.now = NOW + 101
    assert again.expire(set()) == []
    assert [lease["until"] for lease in again.leases()] == [NOW + HANDON_S]
    # With the owner around and not renewing, the capability (the map) is dropped, on
    # disk too.
    assert again.expire({setup.owner.node_id}) == [setup.owner.node_id]
    assert again.leases() == []
    assert not list((tmp_path / "delegations").glob("*.msgpack"))
    moves = await again.serve(GetRepairMoves(request_id=4, after=0), setup.owner.node_id)
    assert isinstance(moves, RepairMoves) and moves.moves == ()


def _move(s: Setup, new_holder: NodeIdentity, *, share: int = 1, seq: int = 1) -> MoveRecord:
    packet = s.chunk.packets[share]
    size = -(-s.chunk.cipher_size // s.chunk.k)
    return MoveRecord(
        owner=s.owner.node_id,
        delegate=s.delegate.node_id,
        seq=seq,
        handle=chunk_handle(s.owner, s.chunk.chunk_id, s.chunk.policy),
        share=share,
        packet_id=packet.packet_id,
        size_bytes=size,
        old_target=packet.target,
        new_target=new_holder.node_id,
        receipt=sign(new_holder.signing_key, receipt_payload(packet.packet_id, size)),
        at=NOW,
    ).signed(s.delegate.signing_key)


def test_moves_are_signed_and_checked_against_receipts(setup: Setup) -> None:
    new_holder = NodeIdentity.generate()
    move = MoveRecord.decode(_move(setup, new_holder).encode())
    delegates = {setup.delegate.node_id}
    moved = check_move(move, setup.chunk, owner=setup.owner.node_id, delegates=delegates)
    assert moved.packets[1].target == new_holder.node_id
    assert moved.packets[1].receipt == move.receipt
    assert [p.target for i, p in enumerate(moved.packets) if i != 1] == [
        p.target for i, p in enumerate(setup.chunk.packets) if i != 1
    ]

    def rejected(bad: MoveRecord, chunk: ChunkRecord = setup.chunk, who: Any = delegates) -> str:
        with pytest.raises(MoveRejected) as exc:
            check_move(bad, chunk, owner=setup.owner.node_id, delegates=who)
        return str(exc.value)

    # A member that holds no capability of ours.
    assert "no capability" in rejected(move, who=set())
    # Edited after signing: the new holder swapped for an accomplice.
    accomplice = NodeIdentity.generate()
    assert "signature" in rejected(attrs.evolve(move, new_target=accomplice.node_id))
    # Signed, but the receipt is not the new holder's (it never stored the packet).
    forged = attrs.evolve(move, new_target=accomplice.node_id).signed(setup.delegate.signing_key)
    assert "receipt" in rejected(forged)
    # A packet the owner's record does not place where the move says it was.
    assert "not on the holder" in rejected(move, moved)
    # Onto a holder of another packet of the chunk (two packets on one node).
    onto = setup.holders[2]
    doubled = attrs.evolve(
        move,
        new_target=onto.node_id,
        receipt=sign(onto.signing_key, receipt_payload(move.packet_id, move.size_bytes)),
    ).signed(setup.delegate.signing_key)
    assert "already holds" in rejected(doubled)
    # The wrong size.
    resized = attrs.evolve(move, size_bytes=move.size_bytes + 1).signed(setup.delegate.signing_key)
    assert "size" in rejected(resized)


def test_chained_moves_apply_in_order_and_bad_ones_are_skipped(setup: Setup) -> None:
    first, second = NodeIdentity.generate(), NodeIdentity.generate()
    one = _move(setup, first, seq=1)
    # The same packet moved on again, later, from its first new holder.
    two = attrs.evolve(_move(setup, second, seq=2), old_target=first.node_id, at=NOW + 5).signed(
        setup.delegate.signing_key
    )
    stranger = NodeIdentity.generate()
    rogue = attrs.evolve(_move(setup, stranger, share=0, seq=3), delegate=stranger.node_id).signed(
        stranger.signing_key
    )
    by_handle = {one.handle: [two, rogue, one]}
    chunk, taken = apply_moves(setup.owner, setup.chunk, by_handle, {setup.delegate.node_id})
    assert taken == 2
    assert chunk.packets[1].target == second.node_id
    assert chunk.packets[0] == setup.chunk.packets[0]
    # Taking them in twice changes nothing.
    again, taken = apply_moves(setup.owner, chunk, by_handle, {setup.delegate.node_id})
    assert (again, taken) == (chunk, 0)


async def _until(predicate: Any, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not await predicate():
            await trio.sleep(0.1)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def test_repairers_move_a_gone_owners_packets_and_it_takes_them_in(
    tmp_path: Path,
) -> None:
    from gridnode.node import Node

    from .inproc import open_grid

    tree = small_tree(tmp_path)
    settings = dict(FAST_REPAIR)
    async with open_grid(tmp_path, 7, settings=settings) as grid:
        owner = grid.nodes[0]
        snap = (await grid.call(0, "backup", paths=[str(tree)], redundancy="2/4"))["snapshot_id"]
        assert owner.delegator is not None

        async def delegated() -> bool:
            assert owner.delegator is not None
            return len(owner.delegator.status()) == 2

        await _until(delegated, 20, "two delegates")
        delegates = set(owner.delegator.grants)
        chunks = await owner.services.db(lambda: list(owner.catalog.chunks_in_use()))
        by_node = {n.identity.node_id: n for n in grid.nodes}
        held = {p.target for c in chunks for p in c.packets}
        victim = by_node[sorted(held - delegates)[0]]
        lost = sum(1 for c in chunks for p in c.packets if p.target == victim.identity.node_id)
        assert lost > 0
        # The owner goes, then a holder of its packets: the delegates step in.
        owner.shutdown()
        await owner.stopped.wait()
        victim.shutdown()
        await victim.stopped.wait()
        repairers = [by_node[d].repairer for d in delegates]

        async def repaired() -> bool:
            leases = [lease for r in repairers if r for lease in r.leases()]
            return any(lease["moves"] > 0 and lease["packets_away"] == 0 for lease in leases)

        await _until(repaired, 30, "the delegated repair")
        moves = sum(lease["moves"] for r in repairers if r for lease in r.leases())
        assert moves == lost  # one repairer acted; the other stood by

        # The owner comes back (same home): it checks the moves and takes them in.
        seed = next(n for n in grid.nodes if n not in (owner, victim)).transport.address
        again = Node(attrs.evolve(owner.config, seeds=(seed,)), owner.identity)
        async with trio.open_nursery() as nursery:
            await nursery.start(again.run)

            async def taken() -> bool:
                return again.delegator is not None and again.delegator.moves_taken > 0

            await _until(taken, 30, "the owner to take the moves in")
            assert again.delegator is not None and again.delegator.moves_taken == lost
            after = await again.services.db(lambda: list(again.catalog.chunks_in_use()))
            assert victim.identity.node_id not in {p.target for c in after for p in c.packets}

            async def acknowledged() -> bool:
                # The renewed capability says the moves were taken in: the delegate drops them.
                leases = [lease for r in repairers if r for lease in r.leases()]
                return len(leases) == 2 and all(lease["moves"] == 0 for lease in leases)

            await _until(acknowledged, 20, "the delegates to drop the moves taken in")

            async def emit(event: dict[str, Any]) -> None:
                pass

            out = tmp_path / "out"
            await again._control_job("restore", {"snapshot": snap, "to": str(out)}, emit)
            for i in range(3):
                assert (out / "src" / f"file{i}").read_bytes() == (tree / f"file{i}").read_bytes()
            again.shutdown()
