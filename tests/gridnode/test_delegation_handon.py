"""Hand-on of repair capabilities (issue 15): repair that outlives the owner *and* its
first delegates.  A delegate cannot sign in the owner's name; what it hands on is the
owner's own signed grant (over the hash of the body it sealed) plus a chain of links,
each signed by the holder before.  These tests check what a holder, a taker and the
owner each accept."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import msgpack
import pytest
import trio

from gridnode.delegation import (
    MAX_HOPS,
    Capability,
    CapabilityRefused,
    MoveRecord,
    apply_moves,
    build_capability,
    chunk_handle,
    verify_authority,
)
from gridnode.errors import RemoteError
from gridnode.identity import NodeIdentity
from gridnode.storage.records import ChunkRecord, PacketRecord
from protocol import receipt_payload, sign
from protocol._messages import GetRepairMoves, GrantRepair, RepairGranted, RepairMoves

from .delegates import FAST_REPAIR, idle_repairer, small_tree

NOW = 1_800_000_000.0
LEASE_S = 3600.0


@attrs.frozen
class World:
    owner: NodeIdentity
    first: NodeIdentity  # the owner's own delegate
    taker: NodeIdentity  # who the first hands it on to
    holders: list[NodeIdentity]
    chunk: ChunkRecord


@pytest.fixture
def world() -> World:
    holders = [NodeIdentity.generate() for _ in range(4)]
    k, cipher_size = 2, 1000
    packets = []
    for share, holder in enumerate(holders):
        packet_id = os.urandom(32)
        receipt = sign(holder.signing_key, receipt_payload(packet_id, -(-cipher_size // k)))
        packets.append(PacketRecord(share, packet_id, holder.node_id, receipt))
    chunk = ChunkRecord(os.urandom(32), 900, cipher_size, False, k, 4, tuple(packets), {})
    return World(
        NodeIdentity.generate(), NodeIdentity.generate(), NodeIdentity.generate(), holders, chunk
    )


def _granted(w: World) -> bytes:
    cap = build_capability(
        w.owner,
        w.first.node_id,
        [w.chunk],
        now=NOW,
        lease_s=LEASE_S,
        lat=None,
        lon=None,
        peers=[w.first.node_id],
        after_s=60.0,
        threshold=2,
    )
    return cap.seal(w.owner.signing_key)


def _opened(blob: bytes, who: NodeIdentity, sender: bytes, now: float = NOW + 1) -> Capability:
    return Capability.open(blob, identity=who, sender=sender, now=now)


def _move(w: World, by: NodeIdentity, new_holder: NodeIdentity, share: int = 1) -> MoveRecord:
    packet = w.chunk.packets[share]
    size = -(-w.chunk.cipher_size // w.chunk.k)
    return MoveRecord(
        owner=w.owner.node_id,
        delegate=by.node_id,
        seq=1,
        handle=chunk_handle(w.owner, w.chunk.chunk_id, w.chunk.policy),
        share=share,
        packet_id=packet.packet_id,
        size_bytes=size,
        old_target=packet.target,
        new_target=new_holder.node_id,
        receipt=sign(new_holder.signing_key, receipt_payload(packet.packet_id, size)),
        at=NOW,
    ).signed(by.signing_key)


def test_a_delegate_hands_on_what_the_owner_signed_and_nothing_else(world: World) -> None:
    w = world
    first = _opened(_granted(w), w.first, w.owner.node_id)
    assert first.threshold == 2 and first.until > first.expires
    # Months later, the owner gone and its lease long over: the first delegate hands on.
    later = NOW + 60 * 86400
    blob = first.hand_on(w.first.signing_key, w.taker.node_id, now=later, carried=())
    taken = _opened(blob, w.taker, w.first.node_id, now=later)
    assert taken.owner == w.owner.node_id and taken.chunks == first.chunks
    assert taken.authority is not None and taken.authority.holder == w.taker.node_id
    # Only from the giver's own session, and only for the taker.
    for sender in (w.owner.node_id, w.taker.node_id):
        with pytest.raises(CapabilityRefused) as refused:
            _opened(blob, w.taker, sender, now=later)
        assert refused.value.code == "not_owner"
    with pytest.raises(CapabilityRefused) as refused:
        _opened(blob, w.first, w.first.node_id, now=later)
    assert refused.value.code == "not_delegate"
    # Past the horizon the owner signed, nobody holds it any more.
    with pytest.raises(CapabilityRefused) as refused:
        _opened(blob, w.taker, w.first.node_id, now=first.until + 1)
    assert refused.value.code == "expired"
    # Only the holder can hand on: the taker cannot forge a link in the first's name.
    with pytest.raises(ValueError):
        first.hand_on(w.taker.signing_key, w.taker.node_id, now=later, carried=())
    raw = msgpack.unpackb(blob, raw=False)
    raw[9][0][3] = sign(w.taker.signing_key, b"x" * 32)
    with pytest.raises(CapabilityRefused) as refused:
        _opened(msgpack.packb(raw, use_bin_type=True), w.taker, w.first.node_id, now=later)
    assert refused.value.code == "bad_signature"
    # Nor can a holder hand on a body of its own making: the owner signed the body's hash.
    forged = attrs.evolve(first, body=first.body + b"\x00")
    blob2 = forged.hand_on(w.first.signing_key, w.taker.node_id, now=later, carried=())
    with pytest.raises(CapabilityRefused) as refused:
        _opened(blob2, w.taker, w.first.node_id, now=later)
    assert refused.value.code == "bad_capability"
    # A chain is bounded and never comes back to a past holder.
    back = taken.hand_on(w.taker.signing_key, w.first.node_id, now=later, carried=())
    with pytest.raises(CapabilityRefused):
        _opened(back, w.first, w.taker.node_id, now=later)
    # The owner (recovered from its key: it needs nothing but its id) trusts the taker.
    assert taken.authority is not None
    proof = taken.authority.encode()
    assert verify_authority(proof, owner=w.owner.node_id, holder=w.taker.node_id)
    assert not verify_authority(proof, owner=w.owner.node_id, holder=w.first.node_id)
    assert not verify_authority(proof, owner=w.taker.node_id, holder=w.taker.node_id)
    assert MAX_HOPS >= 8


async def test_the_taker_answers_for_the_moves_handed_on_and_the_owner_takes_them(
    world: World, tmp_path: Path
) -> None:
    w = world
    later = NOW + 60 * 86400
    first = _opened(_granted(w), w.first, w.owner.node_id)
    new_holder = NodeIdentity.generate()
    made = _move(w, w.first, new_holder)
    stranger = NodeIdentity.generate()
    forged = _move(w, stranger, stranger, share=2)  # not a delegate of this owner
    blob = first.hand_on(w.first.signing_key, w.taker.node_id, now=later, carried=[made, forged])
    repairer = idle_repairer(w.taker, tmp_path, lambda: later, after_s=60.0)
    answer = await repairer.serve(GrantRepair(request_id=1, capability=blob), w.first.node_id)
    assert isinstance(answer, RepairGranted) and answer.expires == first.until
    # The first's move is now the taker's (checked, signed again); the forged one is not.
    held = repairer.held[w.owner.node_id]
    assert [(m.delegate, m.share, m.new_target) for m in held.moves] == [
        (w.taker.node_id, 1, new_holder.node_id)
    ]
    handle = chunk_handle(w.owner, w.chunk.chunk_id, w.chunk.policy)
    assert held.map.find({handle})[handle].packets[1].target == new_holder.node_id
    # A restart keeps it all; the owner's lease ended long ago but the owner is away.
    again = idle_repairer(w.taker, tmp_path, lambda: later, after_s=60.0)
    again.load()
    assert again.held[w.owner.node_id].moves == held.moves
    assert again.expire(set()) == []
    # Nobody but the owner is told; the owner gets the authority with the moves.
    told = await again.serve(GetRepairMoves(request_id=2, after=0), stranger.node_id)
    assert isinstance(told, RepairMoves) and told.moves == () and told.authority == b""
    answer = await again.serve(GetRepairMoves(request_id=2, after=0), w.owner.node_id)
    assert isinstance(answer, RepairMoves) and len(answer.moves) == 1
    allowed = {w.first.node_id}  # the owner knows only the delegate it chose
    assert verify_authority(answer.authority, owner=w.owner.node_id, holder=w.taker.node_id)
    allowed.add(w.taker.node_id)
    moves = [MoveRecord.decode(b) for b in answer.moves]
    chunk, taken = apply_moves(w.owner, w.chunk, {handle: moves}, allowed)
    assert taken == 1 and chunk.packets[1].target == new_holder.node_id
    # The same capability handed on again (a retry) changes nothing.
    answer = await again.serve(GrantRepair(request_id=3, capability=blob), w.first.node_id)
    assert isinstance(answer, RepairGranted)
    assert len(again.held[w.owner.node_id].moves) == 1
    # A hand-on of an older grant than the one held is refused.
    newer = build_capability(
        w.owner, w.taker.node_id, [w.chunk], now=later - 5, lease_s=LEASE_S, lat=None, lon=None
    ).seal(w.owner.signing_key)
    await again.serve(GrantRepair(request_id=4, capability=newer), w.owner.node_id)
    with pytest.raises(RemoteError) as refused:
        await again.serve(GrantRepair(request_id=5, capability=blob), w.first.node_id)
    assert refused.value.code == "stale_capability"


async def _until(predicate: Any, timeout: float, what: str) -> Any:
    with trio.move_on_after(timeout):
        while not (found := predicate()):
            await trio.sleep(0.1)
        return found
    raise AssertionError(f"timed out waiting for {what}")


async def test_repair_outlives_the_owner_and_both_its_delegates(tmp_path: Path) -> None:
    """The owner goes, then its two delegates one after the other: each time the one
    left hands the capability on, so two repairers remain; a holder then dies and the
    packets it held are rebuilt; the owner, back, takes the moves of members it never
    chose, on the strength of the chain."""
    from gridnode.node import Node

    from .inproc import open_grid

    tree = small_tree(tmp_path)
    settings = dict(FAST_REPAIR)
    async with open_grid(tmp_path / "grid", 10, settings=settings) as grid:
        owner = grid.nodes[0]
        snap = (await grid.call(0, "backup", paths=[str(tree)], redundancy="2/4"))["snapshot_id"]
        assert owner.delegator is not None
        await _until(lambda: len(owner.delegator.status()) == 2, 20, "two delegates")
        by_id = {n.identity.node_id: n for n in grid.nodes}
        chosen = set(owner.delegator.grants)
        own = owner.identity.node_id

        def holding(node: Node, links: int) -> bool:
            """``node`` holds the owner's capability handed on ``links`` times."""
            held = node.repairer.held.get(own) if node.repairer else None
            cap = held.capability if held else None
            return (
                cap is not None and cap.authority is not None and len(cap.authority.links) == links
            )

        owner.shutdown()
        await owner.stopped.wait()
        gone: list[Node] = []
        for first in sorted(chosen):  # a delegate leaves for good; the one left hands on
            leaving = by_id[first]
            leaving.shutdown()
            await leaving.stopped.wait()
            gone.append(leaving)
            links = len(gone)
            taker = await _until(
                lambda n=links: next(
                    (x for x in grid.nodes if x not in gone and x is not owner and holding(x, n)),
                    None,
                ),
                30,
                f"a hand-on ({links} links)",
            )
            assert taker.identity.node_id not in chosen
        live = [n for n in grid.nodes if n is not owner and n not in gone]
        holders = [n for n in live if n.repairer and own in n.repairer.held]
        assert len(holders) == 2 and not any(
            h.identity.node_id in set(owner.delegator.grants) for h in holders
        )

        # A holder of the owner's packets dies: the repairers now in charge rebuild.
        chunks = await owner.services.db(lambda: list(owner.catalog.chunks_in_use()))
        on = {p.target for c in chunks for p in c.packets}
        victim = next(n for n in live if n not in holders and n.identity.node_id in on)
        victim.shutdown()
        await victim.stopped.wait()
        dead = {own, victim.identity.node_id, *(g.identity.node_id for g in gone)}

        def repaired() -> bool:
            leases = [lease for h in holders if h.repairer for lease in h.repairer.leases()]
            return any(lease["moves"] > 0 and lease["packets_away"] == 0 for lease in leases)

        await _until(repaired, 40, "the repair by the members handed on to")

        # The owner comes back: it takes in the moves of members it never chose.
        seed = holders[0].transport.address
        again = Node(attrs.evolve(owner.config, seeds=(seed,)), owner.identity)
        async with trio.open_nursery() as nursery:
            await nursery.start(again.run)
            await _until(
                lambda: again.delegator is not None and again.delegator.moves_taken > 0,
                30,
                "the owner to take the moves in",
            )

            def clean() -> bool:
                chunks_now = list(again.catalog.chunks_in_use())
                return not {p.target for c in chunks_now for p in c.packets} & dead

            # The moves taken in, the record's pieces rewritten on live holders.
            await _until(clean, 30, "a catalog that names no dead holder")
            known = await again.services.db(again.catalog.delegates)
            movers = {
                h.identity.node_id
                for h in holders
                if h.repairer and h.repairer.stats.get("packets_moved")
            }
            assert movers and movers <= set(known)  # trusted on the strength of the chain

            async def emit(event: dict[str, Any]) -> None:
                pass

            out = tmp_path / "out"
            await again._control_job("restore", {"snapshot": snap, "to": str(out)}, emit)
            for i in range(3):
                assert (out / "src" / f"file{i}").read_bytes() == (tree / f"file{i}").read_bytes()
            again.shutdown()
