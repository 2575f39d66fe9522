"""The plain records of delegated repair: what a capability says of a chunk and its
packets, the move record a repairer signs, their limits and errors."""

from __future__ import annotations

import json
from typing import Any, Final

import attrs
import blake3
import msgpack
from nacl.signing import SigningKey

from protocol import sign, verify
from protocol._messages import (
    MAX_MOVE_BYTES,
)

from ..errors import GridError
from ..identity import NodeIdentity
from ..log import get_logger
from ..storage.records import ChunkRecord, PacketRecord

_log = get_logger(actor="delegation")

_CAPABILITY_CONTEXT: Final = b"gridnode repair capability v2\x00"
_LINK_CONTEXT: Final = b"gridnode repair hand-on v1\x00"
_MOVE_CONTEXT: Final = b"gridnode repair move v1\x00"
_HANDLE_CONTEXT: Final = "gridnode 2026-12 delegated repair chunk handle"
#: The longest lease a delegate accepts: an owner that vanished is not repaired forever
#: on the strength of one old grant.
MAX_LEASE_S: Final = 90 * 86400.0
#: While the owner is away its delegates keep a capability this long past its issue,
#: past the lease, and hand it on as they leave: repair outlives the owner by years (the
#: model's five-year aim, docs/DURABILITY.md), on the strength of the owner's signature.
HANDON_S: Final = 5 * 365 * 86400.0
#: The longest hand-on horizon a delegate accepts.
MAX_CHARTER_S: Final = 10 * 365 * 86400.0
#: Hand-ons one capability may go through (each adds a signed link of ~150 bytes).
MAX_HOPS: Final = 16
#: Members past its delegates an owner asks for moves (where hand-ons went).
HANDON_PROBE: Final = 6
#: Clocks of owner and delegate may differ this much (issue times in the future).
CLOCK_SKEW_S: Final = 300.0
#: A delegate keeps move records this long after the capability expired: they are the
#: owner's only record of where its moved packets went.
MOVES_KEPT_S: Final = 90 * 86400.0
#: Move records a delegate keeps per owner (a bound against a grid in free fall).
MAX_MOVES_KEPT: Final = 100_000
#: The shortest repair delay a delegate accepts from an owner (tests use about a second).
MIN_AFTER_S: Final = 0.2
#: Owners one delegate holds capabilities for: each may be 8 MiB on disk and in memory.
MAX_OWNERS: Final = 64
#: Placement attempts per packet before the chunk is left for the next tick.
PLACE_ATTEMPTS: Final = 3


class CapabilityRefused(GridError):
    """A capability a delegate will not hold; ``code`` is the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class MoveRejected(GridError):
    """A move record the owner will not take into its catalog."""


def _handle_key(identity: NodeIdentity) -> bytes:
    return blake3.blake3(identity.record_key, derive_key_context=_HANDLE_CONTEXT).digest()


def chunk_handle(identity: NodeIdentity, chunk_id: bytes, policy: str) -> bytes:
    """What a capability calls a chunk: keyed by the owner, so it matches nothing a
    delegate could compute from data it holds itself (a chunk id is convergent)."""
    return blake3.blake3(chunk_id + policy.encode(), key=_handle_key(identity)).digest()


@attrs.frozen
class HeldPacket:
    share: int
    packet_id: bytes
    target: bytes
    owner_tag: bytes


@attrs.frozen
class HeldChunk:
    """One chunk as a delegate sees it: where its packets are and how to rebuild them."""

    handle: bytes
    k: int
    n: int
    cipher_size: int
    rules: dict[str, Any]
    packets: tuple[HeldPacket, ...]

    @property
    def packet_bytes(self) -> int:
        return -(-self.cipher_size // self.k)

    def to_wire(self) -> list[Any]:
        return [
            self.handle,
            self.k,
            self.n,
            self.cipher_size,
            json.dumps(self.rules, sort_keys=True),
            [[p.share, p.packet_id, p.target, p.owner_tag] for p in self.packets],
        ]

    @classmethod
    def from_wire(cls, raw: Any) -> HeldChunk:
        handle, k, n, cipher_size, rules, packets = raw
        chunk = cls(
            bytes(handle),
            int(k),
            int(n),
            int(cipher_size),
            json.loads(rules),
            tuple(HeldPacket(int(s), bytes(p), bytes(t), bytes(o)) for s, p, t, o in packets),
        )
        if not 1 <= chunk.k <= chunk.n <= 256 or chunk.cipher_size < 0:
            raise ValueError("bad erasure parameters")
        if sorted(p.share for p in chunk.packets) != list(range(chunk.n)):
            raise ValueError("a chunk must list each of its n shares once")
        if any(len(p.packet_id) != 32 or len(p.target) != 32 for p in chunk.packets):
            raise ValueError("bad packet id or holder")
        return chunk

    def moved(self, share: int, target: bytes) -> HeldChunk:
        return attrs.evolve(
            self,
            packets=tuple(
                attrs.evolve(p, target=target) if p.share == share else p for p in self.packets
            ),
        )

    def as_record(self) -> ChunkRecord:
        """The shape the retriever fetches (the handle stands in for the chunk id)."""
        return ChunkRecord(
            self.handle,
            0,
            self.cipher_size,
            False,
            self.k,
            self.n,
            tuple(PacketRecord(p.share, p.packet_id, p.target, b"") for p in self.packets),
            self.rules,
        )


@attrs.frozen
class MoveRecord:
    """One packet a repairer moved, signed by the repairer; ``receipt`` is the new
    holder's signature over (packet id, size), exactly as at backup."""

    owner: bytes
    delegate: bytes
    seq: int
    handle: bytes
    share: int
    packet_id: bytes
    size_bytes: int
    old_target: bytes
    new_target: bytes
    receipt: bytes
    at: float
    signature: bytes = b""

    def _fields(self) -> list[Any]:
        return [
            self.owner,
            self.delegate,
            self.seq,
            self.handle,
            self.share,
            self.packet_id,
            self.size_bytes,
            self.old_target,
            self.new_target,
            self.receipt,
            self.at,
        ]

    def _digest(self) -> bytes:
        return blake3.blake3(
            _MOVE_CONTEXT + msgpack.packb(self._fields(), use_bin_type=True)
        ).digest()

    def signed(self, key: SigningKey) -> MoveRecord:
        return attrs.evolve(self, signature=sign(key, self._digest()))

    def signature_ok(self) -> bool:
        return verify(self.delegate, self._digest(), self.signature)

    def encode(self) -> bytes:
        return bytes(msgpack.packb([*self._fields(), self.signature], use_bin_type=True))

    @classmethod
    def decode(cls, blob: bytes) -> MoveRecord:
        if len(blob) > MAX_MOVE_BYTES:
            raise MoveRejected("move record too large")
        try:
            raw = msgpack.unpackb(blob, raw=False)
            owner, delegate, seq, handle, share, pid, size, old, new, receipt, at, sig = raw
            move = cls(
                bytes(owner),
                bytes(delegate),
                int(seq),
                bytes(handle),
                int(share),
                bytes(pid),
                int(size),
                bytes(old),
                bytes(new),
                bytes(receipt),
                float(at),
                bytes(sig),
            )
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise MoveRejected(f"malformed move record: {exc}") from None
        return move
