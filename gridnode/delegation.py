"""Delegated repair: members that rebuild an owner's lost packets when the owner is gone.

Only the source could repair its packets, because only its catalog says which packet of
which chunk sits where.  A backup exists for the day the source is destroyed, and from
that day nothing was repaired.  So the owner (the *source*, claim element "source node")
hands ``repair_delegates`` chosen members a **repair capability**:

- **What it holds.**  For every chunk in use: an opaque *handle* (a keyed hash of the
  chunk id and policy, so the capability names no chunk id a dedup domain could match),
  the erasure parameters (k, n, ciphertext size), the chunk's placement rules, and per
  packet its share number, packet id, holder and delete tag (the hash of the owner's
  per-packet delete secret, never the secret).  Plus the owner's location, the origin
  of the backup-proximity band.  No key, no file name, no plaintext size: repair works
  on ciphertext packets (``packing.rebuild_shares``), which need none of them.
- **How it is sealed.**  The body is msgpack encrypted to the holder's Curve25519 key
  (converted from its Ed25519 node id; libsodium sealed box), so only the holder reads
  it.  The owner signs the *grant* with its node key: owner, delegate, version, issue
  time, lease end (``expires``), hand-on horizon (``until``) and the hash of the body in
  clear, so the body is the owner's whoever seals it.  A delegate takes a capability
  from its owner's own authenticated session, addressed to itself, unexpired, with a
  lease no longer than ``MAX_LEASE_S``, and never older than the one it holds.
- **The lease.**  It runs until ``expires``; the owner renews it at half-time and
  whenever its catalog changed.  It binds while the owner is in the member view: an
  owner that is around and stops renewing has dropped the delegate.  While the owner is
  away, the capability holds until ``until`` (``HANDON_S``, five years after the grant,
  at most ``MAX_CHARTER_S``): the owner pre-signed that its data be repaired that long
  after it is gone, as the durability model needs (docs/DURABILITY.md).
- **Hand-on.**  A delegate cannot sign in the owner's name, so it never issues a grant:
  it passes the owner's signed grant on with a *link* (giver, taker, time) signed by
  its own key over the grant's digest and the link's place in the chain, and seals the
  owner's body, unchanged, to the taker.  The taker checks the owner's signature, each
  link (signed by the holder before it, no member twice, at most ``MAX_HOPS``), that
  the sender is the last giver, and that the body hashes to what the owner signed.
  When the owner has been gone ``repair_after_s`` and fewer of its delegates than it
  chose are left (each gone ``repair_after_s``), the acting delegate hands on to the
  members first in the owner's own ranking, carrying its moves not yet taken in (the
  taker checks each against the map and the receipt and signs it again as its own).
  So repair outlives the owner *and* its first delegates, until ``until``.  The chain
  (``Authority``) travels with the move records: the owner, back or recovered from its
  key, trusts the moves of a member it never chose because the chain starts with its
  own signature; it asks its known delegates and the members first in its ranking.
- **Moves.**  A repairer acts only while the owner has been out of the member view for
  ``repair_after_s`` (a live owner repairs for itself), and only the first of the
  delegates it knows of, in the owner's ranking, that is in the view.  It counts a
  holder gone once not seen for ``repair_after_s``, from last-seen times kept on disk
  (a restart does not reset them); repairs a chunk once the owner's ``repair_threshold``
  of its holders are gone; rebuilds those holders' packets only, places them under the
  chunk's own rules (the owner as origin, the surviving holders fixed), stores them
  with the owner's delete tag and signs a **move record** per packet: owner, repairer,
  number, handle, share, packet id, size, old holder, new holder, and the new holder's
  signed receipt.  The owner (alive again, or recovered from its key) fetches the
  records, checks each one (``check_move``) and takes it into its catalog.

What a hand-on costs the security model: a delegate can pass the map (holders and sizes,
never data or names) to a member of its choosing, which it could leak anyway; a chain
can only start with a grant the owner signed and end past ``until`` never; a taker's
moves are checked by the owner against receipts like any delegate's.  A delegate the
owner dropped keeps repairing while the owner is away (until ``until``): the owner
chose that horizon when it signed.

The owner side is ``Delegator``; the delegate side is ``Repairer``.  What a repairer
learns and what it could do if it lied: docs/ARCHITECTURE.md, "Delegated repair".
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import blake3
import msgpack
import trio
from nacl.exceptions import CryptoError
from nacl.public import SealedBox
from nacl.signing import SigningKey, VerifyKey

from protocol import Message, PacketStored, StorePacket, receipt_payload, sign, verify
from protocol._messages import (
    MAX_AUTHORITY_BYTES,
    MAX_CAPABILITY_BYTES,
    MAX_MOVE_BYTES,
    MAX_MOVES_PER_MESSAGE,
    GetRepairMoves,
    GrantRepair,
    RepairGranted,
    RepairMoves,
)

from .errors import GridError, PeerError, RemoteError
from .fsutil import atomic_write
from .identity import NodeIdentity
from .log import get_logger
from .logic.packing import ChunkIntegrityError, ErasureParams, rebuild_shares
from .logic.placement import Member, PlacementError, PlacementRules, PlacementView, Source
from .storage.catalog import ChunkRecord, PacketRecord

__all__ = [
    "HANDON_S",
    "MAX_HOPS",
    "MAX_LEASE_S",
    "Authority",
    "Capability",
    "CapabilityRefused",
    "Delegator",
    "HeldChunk",
    "HeldPacket",
    "MoveRecord",
    "MoveRejected",
    "Repairer",
    "apply_moves",
    "asked_for_moves",
    "check_move",
    "chunk_handle",
    "fetch_moves",
    "gather_moves",
    "rank_for",
    "verify_authority",
]

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
class Link:
    """One hand-on: ``giver`` (the holder so far) passes the capability to ``taker``,
    signed by the giver over the owner's grant and its place in the chain."""

    giver: bytes
    taker: bytes
    issued: float
    signature: bytes = b""

    def to_wire(self) -> list[Any]:
        return [self.giver, self.taker, self.issued, self.signature]


def _grant_digest(
    owner: bytes,
    delegate: bytes,
    version: int,
    issued: float,
    expires: float,
    until: float,
    body_hash: bytes,
) -> bytes:
    head = msgpack.packb(
        [owner, delegate, version, issued, expires, until, body_hash], use_bin_type=True
    )
    return blake3.blake3(_CAPABILITY_CONTEXT + head).digest()


def _link_digest(grant: bytes, index: int, giver: bytes, taker: bytes, issued: float) -> bytes:
    tail = msgpack.packb([index, giver, taker, issued], use_bin_type=True)
    return blake3.blake3(_LINK_CONTEXT + grant + tail).digest()


@attrs.frozen
class Authority:
    """The signed part of a capability, without the sealed body: the owner's grant to its
    delegate and the chain of hand-ons to the current holder.  It proves to anyone who
    knows the owner's id (the owner itself, after a recovery from its key) that the
    holder repairs for it by the owner's leave: nothing in it needs the owner's key to
    check, and nothing in it can be made without the owner's and each giver's keys."""

    owner: bytes
    delegate: bytes
    version: int
    issued: float
    expires: float
    until: float
    body_hash: bytes
    owner_signature: bytes
    links: tuple[Link, ...] = ()

    @property
    def holder(self) -> bytes:
        return self.links[-1].taker if self.links else self.delegate

    @property
    def grant_digest(self) -> bytes:
        return _grant_digest(
            self.owner,
            self.delegate,
            self.version,
            self.issued,
            self.expires,
            self.until,
            self.body_hash,
        )

    def to_wire(self) -> list[Any]:
        return [
            2,
            self.owner,
            self.delegate,
            self.version,
            self.issued,
            self.expires,
            self.until,
            self.body_hash,
            self.owner_signature,
            [link.to_wire() for link in self.links],
        ]

    def encode(self) -> bytes:
        return bytes(msgpack.packb(self.to_wire(), use_bin_type=True))

    @classmethod
    def from_wire(cls, raw: Any) -> Authority:
        """Parse and check every signature and bound; raises CapabilityRefused."""
        try:
            v, owner, delegate, version, issued, expires, until, body_hash, sig, links = raw
            if v != 2 or type(version) is not int or version < 0:
                raise ValueError("unknown capability format")
            auth = cls(
                bytes(owner),
                bytes(delegate),
                version,
                float(issued),
                float(expires),
                float(until),
                bytes(body_hash),
                bytes(sig),
                tuple(Link(bytes(g), bytes(t), float(i), bytes(s)) for g, t, i, s in links[:1000]),
            )
            if len(auth.owner) != 32 or len(auth.delegate) != 32 or len(auth.body_hash) != 32:
                raise ValueError("bad node ids or body hash")
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CapabilityRefused("bad_capability", f"malformed capability: {exc}") from None
        auth.check()
        return auth

    @classmethod
    def decode(cls, blob: bytes) -> Authority:
        if len(blob) > MAX_AUTHORITY_BYTES:
            raise CapabilityRefused("bad_capability", "capability authority too large")
        try:
            raw = msgpack.unpackb(blob, raw=False, max_bin_len=MAX_AUTHORITY_BYTES)
        except (ValueError, msgpack.UnpackException) as exc:
            raise CapabilityRefused("bad_capability", f"malformed authority: {exc}") from None
        return cls.from_wire(raw)

    def check(self) -> None:
        """Signatures, chain and bounds; not the time (the caller knows what it needs)."""
        if not verify(self.owner, self.grant_digest, self.owner_signature):
            raise CapabilityRefused("bad_signature", "capability not signed by its owner")
        if self.expires - self.issued > MAX_LEASE_S or self.expires <= self.issued:
            raise CapabilityRefused("bad_lease", f"a lease lasts at most {MAX_LEASE_S:.0f} s")
        if not self.expires <= self.until <= self.issued + MAX_CHARTER_S:
            raise CapabilityRefused(
                "bad_lease", f"hand-on must end after the lease and within {MAX_CHARTER_S:.0f} s"
            )
        if len(self.links) > MAX_HOPS:
            raise CapabilityRefused("bad_capability", f"more than {MAX_HOPS} hand-ons")
        holder = self.delegate
        seen = {self.owner, self.delegate}
        grant = self.grant_digest
        for index, link in enumerate(self.links):
            if link.giver != holder:
                raise CapabilityRefused("bad_capability", "a hand-on not made by the holder")
            if link.taker in seen or len(link.taker) != 32:
                raise CapabilityRefused("bad_capability", "a hand-on back to a past holder")
            digest = _link_digest(grant, index, link.giver, link.taker, link.issued)
            if not verify(link.giver, digest, link.signature):
                raise CapabilityRefused("bad_signature", "a hand-on not signed by its giver")
            seen.add(link.taker)
            holder = link.taker

    def handed_on(self, giver: SigningKey, taker: bytes, now: float) -> Authority:
        """This authority passed on by its holder (``giver``) to ``taker``."""
        if bytes(giver.verify_key) != self.holder:
            raise ValueError("only the holder hands a capability on")
        index = len(self.links)
        link = Link(self.holder, taker, now)
        signature = sign(giver, _link_digest(self.grant_digest, index, link.giver, taker, now))
        return attrs.evolve(self, links=(*self.links, attrs.evolve(link, signature=signature)))

    def members(self) -> set[bytes]:
        """Every member that held this capability (the owner's delegate and the takers)."""
        return {self.delegate, *(link.taker for link in self.links)}


def verify_authority(blob: bytes, *, owner: bytes, holder: bytes) -> bool:
    """True when ``blob`` proves that ``holder`` holds a capability ``owner`` granted
    (directly or handed on): how an owner trusts the moves of a delegate it never chose."""
    try:
        auth = Authority.decode(blob)
    except CapabilityRefused:
        return False
    return auth.owner == owner and auth.holder == holder


@attrs.frozen
class Capability:
    owner: bytes
    delegate: bytes
    version: int
    issued: float
    expires: float
    lat: float | None
    lon: float | None
    chunks: tuple[HeldChunk, ...]
    #: Every delegate of the owner, in rank order: only the first one present repairs,
    #: the others stand by (two repairers would rebuild the same packets twice).
    peers: tuple[bytes, ...] = ()
    #: The owner's ``repair_after_s``: how long a holder (and the owner) must be out of
    #: the view before its packets are rebuilt; the owner's policy, not the delegate's.
    after_s: float = 3600.0
    #: The owner's ``repair_threshold``: gone holders of a chunk that start its repair.
    threshold: int = 1
    #: While the owner is away, the capability holds (and is handed on) until then,
    #: past the lease: the owner pre-signed it (``HANDON_S``).  0: the lease's end.
    until: float = 0.0
    #: The grant and the hand-ons that brought it here (set by ``seal`` and ``open``).
    authority: Authority | None = None
    #: The owner's body exactly as signed (its hash is in the grant): what a holder
    #: seals again for the member it hands the capability on to.
    body: bytes = b""
    #: Moves made by earlier holders that the owner has not taken in, handed on with it.
    carried: tuple[MoveRecord, ...] = ()

    @property
    def holder(self) -> bytes:
        return self.authority.holder if self.authority is not None else self.delegate

    def standby(self, present: set[bytes]) -> bool:
        """True while a delegate ranked before this one is in the view."""
        if self.holder not in self.peers:
            return False
        ahead = self.peers[: self.peers.index(self.holder)]
        return any(p in present for p in ahead)

    def _body(self) -> bytes:
        return bytes(
            msgpack.packb(
                {
                    "v": 1,
                    "lat": self.lat,
                    "lon": self.lon,
                    "peers": list(self.peers),
                    "after_s": self.after_s,
                    "threshold": self.threshold,
                    "chunks": [c.to_wire() for c in self.chunks],
                },
                use_bin_type=True,
            )
        )

    @staticmethod
    def _pack(auth: Authority, body: bytes, carried: Sequence[MoveRecord]) -> bytes:
        inner = msgpack.packb([body, [m.encode() for m in carried]], use_bin_type=True)
        sealed = bytes(SealedBox(VerifyKey(auth.holder).to_curve25519_public_key()).encrypt(inner))
        return bytes(msgpack.packb([*auth.to_wire(), sealed], use_bin_type=True))

    def seal(self, signing_key: SigningKey) -> bytes:
        """Encrypt the body to the delegate and sign the grant with the owner's key."""
        if bytes(signing_key.verify_key) != self.owner:
            raise ValueError("a capability is signed by its owner")
        body = self._body()
        body_hash = blake3.blake3(body).digest()
        until = max(self.until, self.expires)
        digest = _grant_digest(
            self.owner, self.delegate, self.version, self.issued, self.expires, until, body_hash
        )
        auth = Authority(
            self.owner,
            self.delegate,
            self.version,
            self.issued,
            self.expires,
            until,
            body_hash,
            sign(signing_key, digest),
        )
        return self._pack(auth, body, ())

    def hand_on(
        self, giver: SigningKey, taker: bytes, *, now: float, carried: Sequence[MoveRecord]
    ) -> bytes:
        """The capability for ``taker``, handed on by this holder with its pending moves."""
        if self.authority is None or not self.body:
            raise ValueError("only an opened capability is handed on")
        return self._pack(self.authority.handed_on(giver, taker, now), self.body, carried)

    @classmethod
    def open(
        cls,
        blob: bytes,
        *,
        identity: NodeIdentity,
        sender: bytes | None,
        now: float,
    ) -> Capability:
        """Check and unseal a capability delivered by ``sender`` (None: read back from
        this node's own disk); raises CapabilityRefused.

        From the owner's own session it must be unexpired; handed on, it comes from the
        holder before this one and holds until the owner's hand-on horizon."""
        if len(blob) > MAX_CAPABILITY_BYTES:
            raise CapabilityRefused("bad_capability", "capability too large")
        try:
            raw = msgpack.unpackb(blob, raw=False, max_bin_len=MAX_CAPABILITY_BYTES)
            if not isinstance(raw, list) or len(raw) != 11:
                raise ValueError("unknown capability format")
            sealed = bytes(raw[10])
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CapabilityRefused("bad_capability", f"malformed capability: {exc}") from None
        auth = Authority.from_wire(raw[:10])
        if sender is not None:
            giver = auth.links[-1].giver if auth.links else auth.owner
            if sender != giver:
                raise CapabilityRefused(
                    "not_owner",
                    "a capability is accepted only from its owner's session, or handed on "
                    "by the delegate that held it",
                )
        if auth.holder != identity.node_id:
            raise CapabilityRefused("not_delegate", "this capability is for another member")
        handed = bool(auth.links) or sender is None
        if (auth.until if handed else auth.expires) <= now:
            raise CapabilityRefused("expired", "capability lease already ran out")
        if auth.issued > now + CLOCK_SKEW_S or any(
            link.issued > now + CLOCK_SKEW_S for link in auth.links
        ):
            raise CapabilityRefused("bad_lease", "a lease must start by now")
        try:
            box = SealedBox(identity.signing_key.to_curve25519_private_key())
            body, carried_raw = msgpack.unpackb(
                box.decrypt(sealed), raw=False, max_bin_len=MAX_CAPABILITY_BYTES
            )
            body = bytes(body)
            if blake3.blake3(body).digest() != auth.body_hash:
                raise ValueError("the body is not the one the owner signed")
            fields = msgpack.unpackb(body, raw=False, max_bin_len=MAX_CAPABILITY_BYTES)
            if not isinstance(fields, dict) or fields.get("v") != 1:
                raise ValueError("unknown body format")
            chunks = tuple(HeldChunk.from_wire(c) for c in fields["chunks"])
            lat, lon = fields.get("lat"), fields.get("lon")
            source = Source(auth.owner, lat, lon)  # validates the location
            peers = tuple(bytes(p) for p in fields.get("peers", [])[:64])
            after_s = float(fields.get("after_s", 3600.0))
            if not MIN_AFTER_S <= after_s <= MAX_LEASE_S:
                raise ValueError(f"repair delay {after_s} s out of bounds")
            threshold = int(fields.get("threshold", 1))
            if not 1 <= threshold <= 255:
                raise ValueError(f"repair threshold {threshold} out of bounds")
            carried = tuple(MoveRecord.decode(bytes(m)) for m in carried_raw[:MAX_MOVES_KEPT])
        except (
            CryptoError,
            ValueError,
            TypeError,
            KeyError,
            GridError,
            msgpack.UnpackException,
        ) as exc:
            raise CapabilityRefused("bad_capability", f"capability body unusable: {exc}") from None
        return cls(
            auth.owner,
            auth.delegate,
            auth.version,
            auth.issued,
            auth.expires,
            source.lat,
            source.lon,
            chunks,
            peers,
            after_s,
            threshold,
            auth.until,
            auth,
            body,
            carried,
        )


def build_capability(
    identity: NodeIdentity,
    delegate: bytes,
    chunks: Iterable[ChunkRecord],
    *,
    now: float,
    lease_s: float,
    lat: float | None,
    lon: float | None,
    peers: Sequence[bytes] = (),
    after_s: float = 3600.0,
    threshold: int = 1,
    handon_s: float | None = None,
) -> Capability:
    """The owner's map of ``chunks`` for ``delegate``; the version is the issue time in
    milliseconds, so a node recovered from its key (no state) still issues newer ones.
    ``handon_s`` (default ``HANDON_S``): how long delegates carry on while the owner is
    away, handing the capability on as they leave."""
    held = tuple(
        HeldChunk(
            chunk_handle(identity, c.chunk_id, c.policy),
            c.k,
            c.n,
            c.cipher_size,
            c.rules,
            tuple(
                HeldPacket(
                    p.share,
                    p.packet_id,
                    p.target,
                    identity.packet_owner_tag(p.packet_id, c.policy),
                )
                for p in c.packets
            ),
        )
        for c in chunks
    )
    return Capability(
        owner=identity.node_id,
        delegate=delegate,
        version=int(now * 1000),
        issued=now,
        expires=now + lease_s,
        lat=lat,
        lon=lon,
        chunks=held,
        peers=tuple(peers),
        after_s=after_s,
        threshold=threshold,
        until=now + max(lease_s, HANDON_S if handon_s is None else handon_s),
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


# --- the delegate side ----------------------------------------------------------------------


@attrs.define
class _Held:
    """What a delegate keeps for one owner: the capability (None once expired), the moves
    the owner has not yet taken in, its authority (shown with the moves, so the owner
    trusts them even after the capability expired) and the members it handed it on to."""

    blob: bytes
    capability: Capability | None
    expires: float
    moves: list[MoveRecord] = attrs.field(factory=list)
    next_seq: int = 1
    chunks: dict[bytes, HeldChunk] = attrs.field(factory=dict)
    authority: bytes = b""
    handed: set[bytes] = attrs.field(factory=set)

    def to_file(self) -> bytes:
        return bytes(
            msgpack.packb(
                {
                    "blob": self.blob if self.capability is not None else b"",
                    "expires": self.expires,
                    "moves": [m.encode() for m in self.moves],
                    "next_seq": self.next_seq,
                    "authority": self.authority,
                    "handed": sorted(self.handed),
                },
                use_bin_type=True,
            )
        )


@attrs.define
class Repairer:
    """A member's delegate role: holds capabilities, repairs for absent owners, and
    hands a capability on when fewer of the owner's delegates are left than it chose.

    ``present`` gives the members gossip reports alive or suspect; ``members`` the
    placement view; ``fetch`` a chunk's surviving packets (the retriever).  A member
    (owner, holder or fellow delegate) counts as gone once not seen for the owner's
    ``after_s``, from last-seen times kept on disk (a restart does not reset them) and
    only after this process too has missed it for ``settle_s``."""

    identity: NodeIdentity
    home: Path
    present: Callable[[], set[bytes]]
    members: Callable[[], Sequence[Member]]
    fetch: Callable[[ChunkRecord, frozenset[bytes]], Any]
    link_for: Callable[[bytes], Any]
    #: Stores a packet on this node itself (a StorePacket served as if from a peer).
    store_local: Callable[[Message], Awaitable[Message]]
    cpu_limiter: trio.CapacityLimiter
    after_s: float
    tick_s: float
    request_timeout_s: float = 30.0
    settle_s: float = 0.0
    clock: Callable[[], float] = time.time
    held: dict[bytes, _Held] = attrs.field(factory=dict)
    #: When each watched member was last seen (wall clock; saved in ``seen.msgpack``).
    seen: dict[bytes, float] = attrs.field(factory=dict)
    #: When this process first missed each absent watched member (trio clock).
    missing_here: dict[bytes, float] = attrs.field(factory=dict)
    stats: dict[str, int] = attrs.field(factory=dict)
    problems: list[str] = attrs.field(factory=list)
    #: Set on the first tick: ``settle_s``, or a day after this node was itself off
    #: longer than the delay (as ``repair.AutoRepair``: its sightings are its own).
    watch_s: float | None = None

    @property
    def directory(self) -> Path:
        return self.home / "delegations"

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def _problem(self, text: str) -> None:
        """Why a chunk was not repaired (the latest few, for ``status``)."""
        self._count("chunks_unrepaired")
        self.problems.append(text[:300])
        del self.problems[:-20]

    def load(self) -> None:
        """Capabilities, moves and last-seen times survive a restart of the delegate."""
        if not self.directory.is_dir():
            return
        now = self.clock()
        try:
            raw_seen = msgpack.unpackb((self.directory / "seen.msgpack").read_bytes(), raw=False)
            self.seen = {bytes(k): float(v) for k, v in dict(raw_seen).items()}
        except (OSError, ValueError, TypeError, msgpack.UnpackException):
            self.seen = {}
        for path in sorted(self.directory.glob("*.msgpack"))[:10_000]:
            if path.name == "seen.msgpack":
                continue
            try:
                owner = bytes.fromhex(path.stem)
                raw = msgpack.unpackb(path.read_bytes(), raw=False)
                moves = [MoveRecord.decode(m) for m in raw["moves"]]
                cap = None
                if raw["blob"]:
                    try:
                        cap = Capability.open(
                            raw["blob"], identity=self.identity, sender=None, now=now
                        )
                    except CapabilityRefused:  # its time ran out while this node was off
                        cap = None
                held = _Held(
                    raw["blob"] if cap else b"",
                    cap,
                    float(raw["expires"]),
                    moves,
                    int(raw["next_seq"]),
                    authority=bytes(raw.get("authority", b"")),
                    handed={bytes(n) for n in raw.get("handed", [])[:64]},
                )
            except (ValueError, KeyError, TypeError, GridError, msgpack.UnpackException) as exc:
                _log.warning("delegation_unreadable", file=path.name, error=str(exc))
                continue
            self._index(held)
            self.held[owner] = held

    def _index(self, held: _Held) -> None:
        """The capability's map with the moves not yet taken in by the owner applied."""
        held.chunks = {c.handle: c for c in held.capability.chunks} if held.capability else {}
        for move in held.moves:
            chunk = held.chunks.get(move.handle)
            if chunk is not None:
                held.chunks[move.handle] = chunk.moved(move.share, move.new_target)

    def _save(self, owner: bytes) -> None:
        path = self.directory / f"{owner.hex()}.msgpack"
        held = self.held.get(owner)
        if held is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write(path, held.to_file(), mode=0o600)

    def _save_seen(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        blob = msgpack.packb(dict(sorted(self.seen.items())), use_bin_type=True)
        atomic_write(self.directory / "seen.msgpack", bytes(blob), mode=0o600)

    def leases(self) -> list[dict[str, Any]]:
        """What ``status`` shows of the capabilities held: per owner, the lease, the moves
        not yet taken in, and the packets whose holder is out of the view now."""
        present = self.present()
        return [
            {
                "owner": o.hex(),
                "expires": h.expires,
                "until": h.capability.until,
                "handed_on": len(h.capability.authority.links) if h.capability.authority else 0,
                "moves": len(h.moves),
                "standby": self._standby(o, h, present),
                "packets_away": sum(
                    1 for c in h.chunks.values() for p in c.packets if p.target not in present
                ),
            }
            for o, h in sorted(self.held.items())
            if h.capability is not None
        ]

    # --- serving owners -------------------------------------------------------------------

    async def serve(self, msg: Message, peer: bytes) -> Message:
        if isinstance(msg, GrantRepair):
            return await self._grant(msg, peer)
        if isinstance(msg, GetRepairMoves):
            held = self.held.get(peer)
            moves = [m for m in (held.moves if held else []) if m.seq > msg.after]
            page = moves[:MAX_MOVES_PER_MESSAGE]
            return RepairMoves(
                request_id=msg.request_id,
                moves=tuple(m.encode() for m in page),
                more=len(moves) > len(page),
                authority=held.authority if held and moves else b"",
            )
        raise RemoteError("unsupported", f"{msg.KIND} is not a delegation request")

    async def _grant(self, msg: GrantRepair, peer: bytes) -> Message:
        now = self.clock()
        try:
            cap = await trio.to_thread.run_sync(
                functools.partial(
                    Capability.open, msg.capability, identity=self.identity, sender=peer, now=now
                ),
                limiter=self.cpu_limiter,
            )
        except CapabilityRefused as exc:
            self._count("capabilities_refused")
            _log.info("capability_refused", sender=peer.hex()[:12], reason=str(exc))
            raise RemoteError(exc.code, str(exc)) from None
        assert cap.authority is not None
        owner = cap.owner
        direct = not cap.authority.links
        old = self.held.get(owner)
        if old is None and len(self.held) >= MAX_OWNERS:
            raise RemoteError("too_many_owners", "this node holds as many capabilities as it may")
        if old is not None and old.capability is not None:
            if cap.version < old.capability.version:
                raise RemoteError("stale_capability", "a newer capability of this owner is held")
            if not direct and cap.version == old.capability.version:
                # Handed on a capability already held (from the owner or another giver).
                return RepairGranted(
                    request_id=msg.request_id, version=cap.version, expires=cap.until
                )
        if direct:
            moves = [m for m in (old.moves if old else []) if m.seq > msg.applied_through]
        else:
            moves = list(old.moves) if old else []
        held = _Held(
            msg.capability,
            cap,
            cap.expires,
            moves,
            old.next_seq if old else 1,
            authority=cap.authority.encode(),
            handed=set(old.handed) if old and direct else set(),
        )
        self._index(held)
        if cap.carried:
            self._adopt(owner, held, cap)
        self.held[owner] = held
        await trio.to_thread.run_sync(self._save, owner)
        self._count("capabilities_held" if direct else "capabilities_taken_on")
        return RepairGranted(
            request_id=msg.request_id,
            version=cap.version,
            expires=cap.expires if direct else cap.until,
        )

    def _adopt(self, owner: bytes, held: _Held, cap: Capability) -> None:
        """Take over the moves an earlier holder made and the owner has not taken in:
        each is checked as the owner would (signed by a delegate of this capability,
        the packet on the holder it left, the new holder's receipt), applied to the map
        and signed again by this node, which now answers for it to the owner."""
        assert cap.authority is not None
        signers = set(cap.peers) | cap.authority.members()
        taken = 0
        for move in sorted(cap.carried, key=lambda m: (m.at, m.delegate, m.seq)):
            chunk = held.chunks.get(move.handle)
            if (
                chunk is None
                or move.owner != owner
                or move.delegate not in signers
                or not move.signature_ok()
            ):
                continue
            packet = next((p for p in chunk.packets if p.share == move.share), None)
            if (
                packet is None
                or packet.packet_id != move.packet_id
                or packet.target != move.old_target
                or any(p.target == move.new_target for p in chunk.packets)
                or move.size_bytes != chunk.packet_bytes
                or not verify(
                    move.new_target,
                    receipt_payload(move.packet_id, move.size_bytes),
                    move.receipt,
                )
            ):
                continue
            mine = attrs.evolve(
                move, delegate=self.identity.node_id, seq=held.next_seq, signature=b""
            ).signed(self.identity.signing_key)
            held.next_seq += 1
            if len(held.moves) < MAX_MOVES_KEPT:
                held.moves.append(mine)
            held.chunks[move.handle] = chunk.moved(move.share, move.new_target)
            taken += 1
        self._count("moves_adopted", taken)

    # --- watching members -----------------------------------------------------------------

    def _observe(self, present: set[bytes], watched: set[bytes]) -> None:
        now, mono = self.clock(), trio.current_time()
        for node_id in watched:
            if node_id in present:
                self.seen[node_id] = now
                self.missing_here.pop(node_id, None)
            else:
                self.seen.setdefault(node_id, now)  # first missed: its clock starts
                self.missing_here.setdefault(node_id, mono)
        self.seen = {n: t for n, t in self.seen.items() if n in watched}
        self.missing_here = {n: t for n, t in self.missing_here.items() if n in watched}

    def _gone(self, node_id: bytes, after_s: float, present: set[bytes]) -> bool:
        if node_id in present:
            return False
        now, mono = self.clock(), trio.current_time()
        return now - self.seen.get(node_id, now) >= after_s and mono - self.missing_here.get(
            node_id, mono
        ) >= (self.watch_s or 0.0)

    # --- repairing ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.to_thread.run_sync(self.load)
        task_status.started()
        while True:
            await trio.sleep(self._tick_s())
            try:
                await self.tick()
            except (GridError, OSError, ValueError) as exc:
                _log.warning("delegated_repair_failed", error=str(exc))

    def _tick_s(self) -> float:
        """Often enough for the most impatient owner held (its delay over four)."""
        delays = [h.capability.after_s for h in self.held.values() if h.capability is not None]
        return min([self.tick_s, *(max(MIN_AFTER_S, d / 4) for d in delays)])

    def expire(self, present: set[bytes] | None = None) -> list[bytes]:
        """Drop capabilities whose time ran out (and moves kept past their time).

        The lease binds while the owner is in the view: an owner that is around renews
        what it wants kept.  While it is away a capability holds until the hand-on
        horizon the owner signed (``until``), so repair outlives it."""
        now = self.clock()
        present = self.present() if present is None else present
        dropped: list[bytes] = []
        for owner, held in list(self.held.items()):
            cap = held.capability
            if cap is not None and (now >= cap.until or (now >= held.expires and owner in present)):
                held.capability, held.blob, held.chunks = None, b"", {}
                dropped.append(owner)
            if held.capability is None and (not held.moves or now > held.expires + MOVES_KEPT_S):
                del self.held[owner]
            self._save(owner)
        return dropped

    async def tick(self) -> int:
        """One round: expire capabilities, then for owners gone ``after_s`` hand the
        capability on if delegates left, and repair; returns the packets moved."""
        present = self.present()
        dropped = await trio.to_thread.run_sync(self.expire, present)
        for owner in dropped:
            _log.info("capability_expired", owner=owner.hex()[:12])
        if self.after_s <= 0:
            return 0  # repair is off on this node
        own = self.identity.node_id
        watched: set[bytes] = {own}  # this node's own row: its last tick
        delays = [self.after_s]
        for owner, held in self.held.items():
            if held.capability is not None:
                delays.append(held.capability.after_s)
                watched |= {owner, *self._group(held)}
                watched |= {p.target for c in held.chunks.values() for p in c.packets}
        if self.watch_s is None:
            last_tick = self.seen.get(own)
            self.watch_s = self.settle_s
            if last_tick is not None and self.clock() - last_tick > min(delays):
                self.watch_s = max(self.settle_s, min(min(delays), 86400.0))
        self._observe(present | {own}, watched)
        await trio.to_thread.run_sync(self._save_seen)
        moved = 0
        for owner, held in list(self.held.items()):
            cap = held.capability
            if cap is None or not self._gone(owner, cap.after_s, present):
                continue
            if self._standby(owner, held, present):
                continue
            await self._hand_on(owner, held, present)
            moved += await self._repair_owner(owner, held, present)
        return moved

    def _standby(self, owner: bytes, held: _Held, present: set[bytes]) -> bool:
        """True while a delegate ranked before this one (in the owner's ranking of the
        delegates this node knows) is in the view: one repairer acts at a time."""
        order = rank_for(owner, self._group(held) | {self.identity.node_id})
        ahead = order[: order.index(self.identity.node_id)]
        return any(p in present for p in ahead)

    def _group(self, held: _Held) -> set[bytes]:
        """The owner's delegates this node knows of: the owner's choice, the holders this
        capability came through and the members this node handed it on to."""
        cap = held.capability
        if cap is None or cap.authority is None:
            return set()
        return set(cap.peers) | cap.authority.members() | held.handed

    async def _hand_on(self, owner: bytes, held: _Held, present: set[bytes]) -> int:
        """Give the capability to replacements for the delegates that are gone, so that
        as many as the owner chose are left; returns how many took it."""
        cap = held.capability
        assert cap is not None and cap.authority is not None
        group = self._group(held)
        left = {n for n in group if not self._gone(n, cap.after_s, present)}
        wanted = max(1, len(cap.peers)) - len(left)
        if wanted <= 0:
            return 0
        if len(cap.authority.links) >= MAX_HOPS:
            self._problem("capability handed on too often to hand on again")
            return 0
        candidates = [n for n in rank_for(owner, present) if n not in group and n != owner][
            : wanted + 3
        ]
        taken = 0
        for taker in candidates:
            if taken >= wanted:
                break
            try:
                blob = await trio.to_thread.run_sync(
                    functools.partial(
                        cap.hand_on,
                        self.identity.signing_key,
                        taker,
                        now=self.clock(),
                        carried=held.moves,
                    ),
                    limiter=self.cpu_limiter,
                )
                if len(blob) > MAX_CAPABILITY_BYTES:
                    return taken
                link = await self.link_for(taker)
                answer = await link.request(
                    lambda rid, b=blob: GrantRepair(request_id=rid, capability=b),
                    timeout_s=self.request_timeout_s,
                )
            except (PeerError, GridError) as exc:
                _log.info("hand_on_failed", taker=taker.hex()[:12], error=str(exc))
                continue
            if not isinstance(answer, RepairGranted):
                continue
            held.handed.add(taker)
            await trio.to_thread.run_sync(self._save, owner)
            self._count("capabilities_handed_on")
            _log.info("capability_handed_on", owner=owner.hex()[:12], taker=taker.hex()[:12])
            taken += 1
        return taken

    async def _repair_owner(self, owner: bytes, held: _Held, present: set[bytes]) -> int:
        assert held.capability is not None
        after_s = held.capability.after_s
        threshold = held.capability.threshold
        targets = {p.target for c in held.chunks.values() for p in c.packets}
        gone = frozenset(n for n in targets if self._gone(n, after_s, present))
        if not gone:
            return 0
        source = Source(owner, held.capability.lat, held.capability.lon)
        members = [m for m in self.members() if m.node_id != owner]
        views: dict[PlacementRules, PlacementView] = {}
        moved = 0
        for handle in list(held.chunks):
            chunk = held.chunks[handle]
            lost = sum(1 for p in chunk.packets if p.target in gone)
            if not lost or lost < max(1, min(threshold, chunk.n - chunk.k)):
                continue
            try:
                moved += await self._repair_chunk(owner, held, chunk, gone, source, members, views)
            except (PeerError, ValueError) as exc:  # this chunk waits for the next tick
                self._problem(f"repair failed: {exc}")
        return moved

    async def _repair_chunk(
        self,
        owner: bytes,
        held: _Held,
        chunk: HeldChunk,
        gone: frozenset[bytes],
        source: Source,
        members: list[Member],
        views: dict[PlacementRules, PlacementView],
    ) -> int:
        fetched = await self.fetch(chunk.as_record(), gone)
        if len(fetched.shares) < chunk.k:
            self._count("chunks_lost")
            return 0
        lost = sorted(p.share for p in chunk.packets if p.target in gone)
        by_share = {p.share: p for p in chunk.packets}
        try:
            rebuilt = await trio.to_thread.run_sync(
                functools.partial(
                    rebuild_shares,
                    fetched.shares,
                    params=ErasureParams(chunk.k, chunk.n),
                    cipher_size=chunk.cipher_size,
                    packet_ids=[by_share[i].packet_id for i in range(chunk.n)],
                    wanted=lost,
                ),
                limiter=self.cpu_limiter,
            )
        except ChunkIntegrityError as exc:
            self._problem(f"cannot rebuild: {exc}")
            return 0
        rules = PlacementRules.from_wire(chunk.rules) if chunk.rules else PlacementRules()
        view = views.get(rules)
        if view is None:
            view = views[rules] = PlacementView(
                key=self.identity.sequence_key, source=source, members=members, rules=rules
            )
        moved = 0
        failed: set[bytes] = set(gone)
        for share in lost:
            for _attempt in range(PLACE_ATTEMPTS):
                current = held.chunks[chunk.handle]
                fixed = tuple(p.target for p in current.packets if p.share != share)
                if any(t in gone for t in fixed):
                    fixed = tuple(t for t in fixed if t not in gone)
                try:
                    targets = view.place(
                        chunk.handle,
                        len(fixed) + 1,
                        chunk.packet_bytes,
                        exclude=frozenset(failed),
                        fixed=fixed,
                    )
                except (PlacementError, ValueError) as exc:
                    self._problem(f"no new holder: {exc}")
                    return moved
                fresh = [t for t in targets if t not in fixed]
                if not fresh:
                    return moved
                target = fresh[0]
                try:
                    receipt = await self._store(target, by_share[share], rebuilt[share])
                except (PeerError, GridError) as exc:
                    failed.add(target)
                    _log.info("delegated_store_failed", target=target.hex()[:12], error=str(exc))
                    continue
                await self._record(owner, held, current, share, target, receipt)
                moved += 1
                break
        return moved

    async def _store(self, target: bytes, packet: HeldPacket, data: bytes) -> bytes:
        def request(rid: int) -> StorePacket:
            return StorePacket(
                request_id=rid, packet_id=packet.packet_id, owner_tag=packet.owner_tag, data=data
            )

        answer: Message
        if target == self.identity.node_id:
            answer = await self.store_local(request(0))
        else:
            link = await self.link_for(target)
            answer = await link.request(request, timeout_s=self.request_timeout_s)
        if not isinstance(answer, PacketStored) or answer.packet_id != packet.packet_id:
            raise RemoteError("bad_answer", f"holder answered {answer.KIND}")
        if not verify(target, receipt_payload(packet.packet_id, len(data)), answer.receipt):
            raise RemoteError("bad_receipt", "the new holder's receipt does not verify")
        return answer.receipt

    async def _record(
        self,
        owner: bytes,
        held: _Held,
        chunk: HeldChunk,
        share: int,
        target: bytes,
        receipt: bytes,
    ) -> None:
        old = next(p for p in chunk.packets if p.share == share)
        move = MoveRecord(
            owner=owner,
            delegate=self.identity.node_id,
            seq=held.next_seq,
            handle=chunk.handle,
            share=share,
            packet_id=old.packet_id,
            size_bytes=chunk.packet_bytes,
            old_target=old.target,
            new_target=target,
            receipt=receipt,
            at=self.clock(),
        ).signed(self.identity.signing_key)
        held.next_seq += 1
        if len(held.moves) < MAX_MOVES_KEPT:
            held.moves.append(move)
        held.chunks[chunk.handle] = chunk.moved(share, target)
        await trio.to_thread.run_sync(self._save, owner)
        self._count("packets_moved")
        _log.info(
            "delegated_move",
            owner=owner.hex()[:12],
            share=share,
            old=old.target.hex()[:12],
            new=target.hex()[:12],
        )


# --- the owner side -------------------------------------------------------------------------


@attrs.frozen
class Grant:
    node_id: bytes
    version: int
    expires: float
    root_version: int
    applied_through: int
    peers: tuple[bytes, ...] = ()


@attrs.define
class Delegator:
    """The owner's side: chooses ``count`` delegates, keeps their leases running, and
    takes their moves into the catalog.

    Delegates are ranked by a hash keyed by the owner's id (so a node recovered from its
    key picks the same members again when they are still there); one that leaves the
    view or refuses is replaced by the next in rank."""

    services: Any  # gridnode.services.Services (import cycle)
    count: int
    lease_s: float
    tick_s: float
    #: This node's ``repair_after_s``, handed to its delegates with the capability.
    after_s: float
    lat: float | None
    lon: float | None
    present: Callable[[], set[bytes]]
    clock: Callable[[], float] = time.time
    #: This node's ``repair_threshold``, handed to its delegates with the capability.
    threshold: int = 1
    grants: dict[bytes, Grant] = attrs.field(factory=dict)
    moves_taken: int = 0
    _published_delegates: frozenset[bytes] | None = None
    _refused: dict[bytes, float] = attrs.field(factory=dict)
    #: Per delegate, the highest move number taken in (it may drop those).
    _through: dict[bytes, int] = attrs.field(factory=dict)

    def status(self) -> list[dict[str, Any]]:
        from protocol import format_node_id

        return [
            {"node_id": format_node_id(g.node_id), "expires": g.expires}
            for g in sorted(self.grants.values(), key=lambda g: g.node_id)
        ]

    def delegates(self) -> list[bytes]:
        return sorted(self.grants)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.tick()
            except (GridError, OSError, PlacementError, ValueError) as exc:
                _log.warning("delegation_failed", error=str(exc))
            await trio.sleep(self.tick_s)

    def _ranked(self, candidates: Iterable[bytes]) -> list[bytes]:
        return rank_for(self.services.identity.node_id, candidates)

    async def tick(self) -> None:
        services = self.services
        catalog = services.catalog
        own = services.identity.node_id
        present = self.present() - {own}
        for node_id in [n for n in self.grants if n not in present]:
            del self.grants[node_id]  # it left: its lease runs out by itself
        if self.count <= 0:
            return
        if not await services.db(catalog.holders):
            return  # nothing stored yet
        now = self.clock()
        # Moves first: a capability issued after them names the new holders.
        await self.take_moves()
        known: dict[bytes, float] = await services.db(catalog.delegates)
        root_version = await services.db(_root_version, catalog)
        ranked = [n for n in self._ranked(present) if self._refused.get(n, 0.0) <= now]
        # Keep the delegates that still answer; fill up from the ranking.
        chosen = [n for n in ranked if n in self.grants][: self.count]
        chosen += [n for n in ranked if n not in chosen][: self.count - len(chosen)]
        peers = tuple(self._ranked(chosen))
        chunks: list[ChunkRecord] | None = None
        for node_id in peers:
            grant = self.grants.get(node_id)
            if (
                grant is not None
                and grant.root_version == root_version
                and grant.peers == peers
                and now < grant.expires - self.lease_s / 2
                and grant.applied_through == self._through.get(node_id, 0)
            ):
                continue
            if chunks is None:
                chunks = await services.db(lambda: list(catalog.chunks_in_use()))
            through = self._through.get(node_id, 0)
            try:
                answer, expires = await self._grant(node_id, chunks, now, through, peers)
            except GridError as exc:  # PeerError, RemoteError, CapabilityRefused
                _log.info("grant_failed", delegate=node_id.hex()[:12], error=str(exc))
                self.grants.pop(node_id, None)
                self._refused[node_id] = now + 10 * self.tick_s  # try others meanwhile
                continue
            self.grants[node_id] = Grant(
                node_id, answer.version, expires, root_version, through, peers
            )
            known[node_id] = expires
        self.grants = {n: g for n, g in self.grants.items() if n in peers}
        known = {n: e for n, e in known.items() if now <= e + MOVES_KEPT_S}
        await services.db(catalog.set_delegates, known)
        granted = frozenset(self.grants)
        if granted and granted != self._published_delegates:
            # The recovery root names the delegates, so a node recovered from the key
            # knows whose move records to trust.
            from .recovery import publish_root

            async with services.backup_lock:
                await publish_root(services)
            self._published_delegates = granted
            new_root = await services.db(_root_version, catalog)
            self.grants = {
                n: attrs.evolve(g, root_version=new_root) if g.root_version == root_version else g
                for n, g in self.grants.items()
            }

    async def _grant(
        self,
        node_id: bytes,
        chunks: list[ChunkRecord],
        now: float,
        through: int,
        peers: tuple[bytes, ...],
    ) -> tuple[RepairGranted, float]:
        services = self.services
        cap = build_capability(
            services.identity,
            node_id,
            chunks,
            now=now,
            lease_s=self.lease_s,
            lat=self.lat,
            lon=self.lon,
            peers=peers,
            after_s=self.after_s,
            threshold=self.threshold,
        )
        blob = await trio.to_thread.run_sync(
            cap.seal, services.identity.signing_key, limiter=services.cpu_limiter
        )
        if len(blob) > MAX_CAPABILITY_BYTES:
            raise CapabilityRefused(
                "too_large",
                f"the catalog's map ({len(blob)} bytes) exceeds one capability "
                f"({MAX_CAPABILITY_BYTES} bytes): not delegated",
            )
        link = await services.link_for(node_id)
        answer = await link.request(
            lambda rid: GrantRepair(request_id=rid, capability=blob, applied_through=through),
            timeout_s=services.config.request_timeout_s,
        )
        if not isinstance(answer, RepairGranted):
            raise RemoteError("bad_answer", f"expected repair_granted, got {answer.KIND}")
        return answer, cap.expires

    async def take_moves(self) -> int:
        """Fetch, check and apply the moves this node's delegates made; returns how many
        were taken.  Runs before each grant, and before the node's own automatic repair
        (a node back after a while must not rebuild what its repairers rebuilt already).

        A move that fails the check counts as seen all the same: it never will pass."""
        from .repair import repair_holders

        services = self.services
        own = services.identity.node_id
        known: dict[bytes, float] = await services.db(services.catalog.delegates)
        present = self.present() - {own}
        allowed = set(known)
        by_handle = await gather_moves(
            services.link_for,
            own,
            asked_for_moves(own, known, present, self.count),
            allowed,
            timeout_s=services.config.request_timeout_s,
            after=self._through,
        )
        if not by_handle:
            return 0
        found: dict[bytes, list[MoveRecord]] = {}
        for moves in by_handle.values():
            for move in moves:
                found.setdefault(move.delegate, []).append(move)
        for node_id in allowed - set(known):  # handed on to: trusted from now on
            known[node_id] = self.clock() + self.lease_s
        await services.db(services.catalog.set_delegates, known)
        identity = services.identity
        catalog = services.catalog

        def apply() -> int:
            taken = 0
            for chunk in list(catalog.chunks_in_use()):
                updated, n = apply_moves(identity, chunk, by_handle, allowed)
                if n:
                    catalog.repair_chunk(updated)
                    taken += n
            return taken

        taken = int(await services.db(apply))
        self.moves_taken += taken
        if taken:
            _log.info("delegated_moves_taken", moves=taken)
            await repair_holders(services, [])  # rewrite the stale records, republish the root
        for node_id, moves in found.items():
            self._through[node_id] = max(self._through.get(node_id, 0), *(m.seq for m in moves))
        return taken


def asked_for_moves(
    owner: bytes, known: Iterable[bytes], present: set[bytes], count: int
) -> list[bytes]:
    """Whom an owner asks for moves: its delegates in the view, and the members first in
    its ranking, where delegates that left handed the capability on (``Repairer``)."""
    first = rank_for(owner, present)[: max(2, count) + HANDON_PROBE]
    return sorted({n for n in known if n in present} | set(first))


def _root_version(catalog: Any) -> int:
    return int(catalog.root_version())
