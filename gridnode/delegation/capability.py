"""A repair capability: the owner's signed grant, its hand-on chain, and the sealed map
of chunks (``records``) it gives a delegate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs
import blake3
import msgpack
from nacl.exceptions import CryptoError
from nacl.public import SealedBox
from nacl.signing import SigningKey, VerifyKey

from protocol import sign, verify
from protocol._messages import (
    MAX_AUTHORITY_BYTES,
    MAX_CAPABILITY_BYTES,
    MAX_CAPABILITY_PARTS,
)

from ..errors import GridError
from ..identity import NodeIdentity
from ..logic.placement.members import Source
from ..storage.records import ChunkRecord
from .map_parts import MapPart, PartRef, build_parts, decode_part, open_part, seal_part
from .records import (
    _CAPABILITY_CONTEXT,
    _LINK_CONTEXT,
    CLOCK_SKEW_S,
    HANDON_S,
    MAX_CHARTER_S,
    MAX_HOPS,
    MAX_LEASE_S,
    MAX_MOVES_KEPT,
    MIN_AFTER_S,
    CapabilityRefused,
    HeldChunk,
    HeldPacket,
    MoveRecord,
    chunk_handle,
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


#: Parts whose bodies add up to this travel inline with the grant, in one round trip.
INLINE_PART_BYTES: Final = 6 * 1024 * 1024


@attrs.frozen
class Capability:
    owner: bytes
    delegate: bytes
    version: int
    issued: float
    expires: float
    lat: float | None
    lon: float | None
    #: The map's chunks when they are at hand: built by the owner in memory, or opened
    #: from parts that came inline.  A delegate keeps large maps on disk, by part.
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
    #: The map's parts as the signed body lists them (set by ``seal`` and ``open``).
    parts: tuple[PartRef, ...] = ()
    #: Parts that came inline, still sealed to this holder, by digest (set by ``open``).
    sealed_parts: dict[bytes, bytes] = attrs.field(factory=dict, eq=False)

    @property
    def holder(self) -> bytes:
        return self.authority.holder if self.authority is not None else self.delegate

    @property
    def packets(self) -> int:
        return sum(p.packets for p in self.parts)

    def standby(self, present: set[bytes]) -> bool:
        """True while a delegate ranked before this one is in the view."""
        if self.holder not in self.peers:
            return False
        ahead = self.peers[: self.peers.index(self.holder)]
        return any(p in present for p in ahead)

    def _body(self, parts: Sequence[PartRef]) -> bytes:
        return bytes(
            msgpack.packb(
                {
                    "v": 2,
                    "lat": self.lat,
                    "lon": self.lon,
                    "peers": list(self.peers),
                    "after_s": self.after_s,
                    "threshold": self.threshold,
                    "parts": [p.to_wire() for p in parts],
                },
                use_bin_type=True,
            )
        )

    @staticmethod
    def _pack(
        auth: Authority, body: bytes, carried: Sequence[MoveRecord], inline: Sequence[bytes]
    ) -> bytes:
        """The wire form: the authority, the sealed body (with carried moves), and the
        parts sent inline (each sealed to the holder; none when they follow apart)."""
        inner = msgpack.packb([body, [m.encode() for m in carried]], use_bin_type=True)
        sealed = bytes(SealedBox(VerifyKey(auth.holder).to_curve25519_public_key()).encrypt(inner))
        parts = [seal_part(b, auth.holder) for b in inline]
        return bytes(msgpack.packb([*auth.to_wire(), sealed, parts], use_bin_type=True))

    def map_parts(self) -> list[MapPart]:
        """The in-memory map cut into parts (small maps; the owner streams large ones)."""
        return build_parts(self.chunks)

    def seal(
        self,
        signing_key: SigningKey,
        *,
        parts: Sequence[MapPart] | None = None,
        inline: bool | None = None,
    ) -> bytes:
        """Sign the grant with the owner's key and seal the body to the delegate.

        ``parts``: the map (default: ``chunks`` cut in memory).  They travel inline
        when they add up to ``INLINE_PART_BYTES`` at most (or as ``inline`` says);
        otherwise the delegate answers which it lacks and the owner sends those."""
        if bytes(signing_key.verify_key) != self.owner:
            raise ValueError("a capability is signed by its owner")
        parts = self.map_parts() if parts is None else parts
        if len(parts) > MAX_CAPABILITY_PARTS:
            raise ValueError(f"a map of more than {MAX_CAPABILITY_PARTS} parts")
        body = self._body([p.ref for p in parts])
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
        if inline is None:
            inline = sum(p.size for p in parts) <= INLINE_PART_BYTES
        return self._pack(auth, body, (), [p.read() for p in parts] if inline else [])

    def hand_on(
        self,
        giver: SigningKey,
        taker: bytes,
        *,
        now: float,
        carried: Sequence[MoveRecord],
        bodies: Sequence[bytes] | None = None,
    ) -> bytes:
        """The capability for ``taker``, handed on by this holder with its pending moves.

        ``bodies``: the parts to send inline (default: those that came inline here);
        an empty list sends none, and the taker asks for the parts it lacks."""
        if self.authority is None or not self.body:
            raise ValueError("only an opened capability is handed on")
        auth = self.authority.handed_on(giver, taker, now)
        if bodies is None:
            bodies = [open_part(self.sealed_parts[r.digest], giver, r) for r in self.parts]
        return self._pack(auth, self.body, carried, bodies)

    def head(self) -> bytes:
        """This capability as this holder keeps it on disk: no parts inline."""
        if self.authority is None:
            raise ValueError("only an opened capability has a head")
        inner = msgpack.packb([self.body, [m.encode() for m in self.carried]], use_bin_type=True)
        sealed = bytes(SealedBox(VerifyKey(self.holder).to_curve25519_public_key()).encrypt(inner))
        return bytes(msgpack.packb([*self.authority.to_wire(), sealed, []], use_bin_type=True))

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
        holder before this one and holds until the owner's hand-on horizon.  Parts that
        came inline are checked against the signed digests and decoded into ``chunks``."""
        if len(blob) > MAX_CAPABILITY_BYTES:
            raise CapabilityRefused("bad_capability", "capability too large")
        try:
            raw = msgpack.unpackb(blob, raw=False, max_bin_len=MAX_CAPABILITY_BYTES)
            if not isinstance(raw, list) or len(raw) != 12:
                raise ValueError("unknown capability format")
            sealed = bytes(raw[10])
            inline = [bytes(p) for p in raw[11][: MAX_CAPABILITY_PARTS + 1]]
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
            if not isinstance(fields, dict) or fields.get("v") != 2:
                raise ValueError("unknown body format")
            refs = tuple(PartRef.from_wire(r) for r in fields["parts"][: MAX_CAPABILITY_PARTS + 1])
            if len(refs) > MAX_CAPABILITY_PARTS or len({r.digest for r in refs}) != len(refs):
                raise ValueError("bad list of map parts")
            if inline and len(inline) != len(refs):
                raise ValueError("parts sent inline must be all of them")
            chunks: list[HeldChunk] = []
            for ref, part in zip(refs, inline, strict=False):
                chunks += decode_part(open_part(part, identity.signing_key, ref), ref)
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
            IndexError,
            GridError,
            msgpack.UnpackException,
        ) as exc:
            if isinstance(exc, CapabilityRefused):
                raise
            raise CapabilityRefused("bad_capability", f"capability body unusable: {exc}") from None
        return cls(
            auth.owner,
            auth.delegate,
            auth.version,
            auth.issued,
            auth.expires,
            source.lat,
            source.lon,
            tuple(chunks),
            peers,
            after_s,
            threshold,
            auth.until,
            auth,
            body,
            carried,
            refs,
            dict(zip((r.digest for r in refs), inline, strict=False)),
        )


def held_chunk(identity: NodeIdentity, chunk: ChunkRecord) -> HeldChunk:
    """A chunk of the owner's catalog as its capability names it."""
    return HeldChunk(
        chunk_handle(identity, chunk.chunk_id, chunk.policy),
        chunk.k,
        chunk.n,
        chunk.cipher_size,
        chunk.rules,
        tuple(
            HeldPacket(
                p.share, p.packet_id, p.target, identity.packet_owner_tag(p.packet_id, chunk.policy)
            )
            for p in chunk.packets
        ),
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
    held = tuple(held_chunk(identity, c) for c in chunks)
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
