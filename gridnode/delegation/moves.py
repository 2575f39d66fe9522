"""The owner's side of move records: checking a repairer's moves against its own records
and receipts, and fetching them from delegates and the members they handed on to."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs
import blake3
import trio

from protocol import receipt_payload, verify
from protocol._messages import (
    MAX_MOVES_PER_MESSAGE,
    GetRepairMoves,
    RepairMoves,
)

from ..errors import PeerError, RemoteError
from ..identity import NodeIdentity
from ..log import get_logger
from ..storage.records import ChunkRecord, PacketRecord
from .capability import verify_authority
from .records import (
    HANDON_PROBE,
    MAX_MOVES_KEPT,
    MoveRecord,
    MoveRejected,
    chunk_handle,
)

_log = get_logger(actor="delegation")


def check_move(
    move: MoveRecord,
    chunk: ChunkRecord,
    *,
    owner: bytes,
    delegates: Iterable[bytes],
) -> ChunkRecord:
    """The owner's check of a repairer's move against its own record and the receipt.

    Returns the chunk with the packet on its new holder.  A repairer can only *relocate*
    a packet the owner's record places on ``old_target``, to a holder that signed a
    receipt for exactly that packet id and size and holds no other packet of the chunk;
    the bytes themselves are proved by the packet id when the packet is next fetched."""
    if move.owner != owner:
        raise MoveRejected("the move is for another owner")
    if move.delegate not in set(delegates):
        raise MoveRejected("the move is signed by a member that holds no capability of ours")
    if not move.signature_ok():
        raise MoveRejected("bad signature on the move record")
    by_share = {p.share: p for p in chunk.packets}
    packet = by_share.get(move.share)
    if packet is None or packet.packet_id != move.packet_id:
        raise MoveRejected("the move names a packet this chunk does not have")
    if packet.target != move.old_target:
        raise MoveRejected("the packet is not on the holder the move says it left")
    if move.new_target == move.old_target or any(
        p.target == move.new_target for p in chunk.packets
    ):
        raise MoveRejected("the new holder already holds a packet of this chunk")
    if move.size_bytes != -(-chunk.cipher_size // chunk.k):
        raise MoveRejected("the move names the wrong packet size")
    if not verify(move.new_target, receipt_payload(move.packet_id, move.size_bytes), move.receipt):
        raise MoveRejected("the new holder's receipt does not verify")
    return attrs.evolve(
        chunk,
        packets=tuple(
            PacketRecord(p.share, p.packet_id, move.new_target, move.receipt)
            if p.share == move.share
            else p
            for p in chunk.packets
        ),
    )


def apply_moves(
    identity: NodeIdentity,
    chunk: ChunkRecord,
    moves: dict[bytes, list[MoveRecord]],
    delegates: Iterable[bytes],
) -> tuple[ChunkRecord, int]:
    """``chunk`` with every acceptable move of it applied, in the order they were made
    (a packet may have moved twice); returns it and how many moves were taken."""
    mine = moves.get(chunk_handle(identity, chunk.chunk_id, chunk.policy))
    if not mine:
        return chunk, 0
    allowed = set(delegates)
    taken = 0
    for move in sorted(mine, key=lambda m: (m.at, m.seq)):
        try:
            chunk = check_move(move, chunk, owner=identity.node_id, delegates=allowed)
        except MoveRejected as exc:
            _log.info("move_rejected", share=move.share, reason=str(exc))
            continue
        taken += 1
    return chunk, taken


async def fetch_moves(
    link_for: Callable[[bytes], Any], node_id: bytes, *, timeout_s: float = 10.0
) -> list[MoveRecord]:
    """Every move record ``node_id`` keeps for us (we are the session's peer)."""
    return (await fetch_moves_with_authority(link_for, node_id, timeout_s=timeout_s))[0]


async def fetch_moves_with_authority(
    link_for: Callable[[bytes], Any], node_id: bytes, *, timeout_s: float = 10.0, after: int = 0
) -> tuple[list[MoveRecord], bytes]:
    """``fetch_moves`` (numbered above ``after``) and the repairer's capability
    authority (empty if it sent none)."""
    link = await link_for(node_id)
    found: list[MoveRecord] = []
    authority = b""
    for _page in range(MAX_MOVES_KEPT // MAX_MOVES_PER_MESSAGE + 1):
        answer = await link.request(
            lambda rid, a=after: GetRepairMoves(request_id=rid, after=a), timeout_s=timeout_s
        )
        if not isinstance(answer, RepairMoves):
            raise RemoteError("bad_answer", f"expected repair_moves, got {answer.KIND}")
        authority = authority or answer.authority
        for blob in answer.moves:
            try:
                move = MoveRecord.decode(blob)
            except MoveRejected:
                continue
            if move.delegate == node_id and move.seq > after:
                found.append(move)
        if not answer.more or not found or found[-1].seq <= after:
            break
        after = found[-1].seq
    return found, authority


async def gather_moves(
    link_for: Callable[[bytes], Any],
    owner: bytes,
    asked: Iterable[bytes],
    allowed: set[bytes],
    *,
    timeout_s: float = 10.0,
    after: dict[bytes, int] | None = None,
) -> dict[bytes, list[MoveRecord]]:
    """Move records of every member in ``asked``, by chunk handle.  A member outside
    ``allowed`` (the delegates this owner chose) counts only if its authority proves a
    capability of this owner handed on to it; it is then added to ``allowed``."""
    found: dict[bytes, list[MoveRecord]] = {}

    async def get(node_id: bytes) -> None:
        try:
            moves, authority = await fetch_moves_with_authority(
                link_for, node_id, timeout_s=timeout_s, after=(after or {}).get(node_id, 0)
            )
        except (PeerError, RemoteError) as exc:
            _log.info("moves_unavailable", delegate=node_id.hex()[:12], error=str(exc))
            return
        if not moves:
            return
        if node_id not in allowed:
            if not verify_authority(authority, owner=owner, holder=node_id):
                _log.info("moves_without_authority", member=node_id.hex()[:12])
                return
            allowed.add(node_id)
        for move in moves:
            found.setdefault(move.handle, []).append(move)

    async with trio.open_nursery() as nursery:
        for node_id in sorted(set(asked))[:256]:
            nursery.start_soon(get, node_id)
    return found


def rank_for(owner: bytes, candidates: Iterable[bytes]) -> list[bytes]:
    """Members in the order an owner picks delegates (a hash keyed by the owner's id):
    the owner, a recovered owner and delegates handing on all agree on it."""
    key = blake3.blake3(owner).digest()
    return sorted(candidates, key=lambda n: blake3.blake3(n, key=key).digest())


def asked_for_moves(
    owner: bytes, known: Iterable[bytes], present: set[bytes], count: int
) -> list[bytes]:
    """Whom an owner asks for moves: its delegates in the view, and the members first in
    its ranking, where delegates that left handed the capability on (``Repairer``)."""
    first = rank_for(owner, present)[: max(2, count) + HANDON_PROBE]
    return sorted({n for n in known if n in present} | set(first))
