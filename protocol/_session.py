"""Session: the sans-IO handshake and sealed-frame state machine of one peer connection.

The I/O layer feeds each received websocket message to ``receive()`` and writes
whatever ``data_to_send()`` returns; it never interprets bytes itself.  All rules of
the session live in this file (after h11's ``_state.py``):

Rule 1. Both sides call ``start()``; each sends an ``Offer`` in the clear: a fresh
        32-byte nonce and a fresh X25519 public key, nothing else.  Until the session
        is READY a frame may be at most ``HANDSHAKE_MAX_FRAME_BYTES`` (refused before it
        is decoded), so a stranger costs a few KiB at most.
Rule 2. On the peer's Offer both sides derive the session keys (Rule 4).  The
        initiator then sends its ``Hello`` sealed (Rule 5): grid id, node id (an
        Ed25519 public key), protocol version, listen address, and a signature over the
        transcript (grid id, role, both Offers as sent, its identity fields).
Rule 2a. Versions.  Each side speaks a range of protocol versions (``min_version`` to
        ``max_version``).  Its Offer and its Hello are written in its lowest version,
        and the Hello's ``version`` names it; the highest follows the ``software``
        string as a last word ``protocol/MIN-MAX``.  That is where a version-2 node,
        which compares ``version`` with its own and refuses unknown fields, reads past
        it; a Hello without the word (a version-2 node's) speaks ``version`` alone.
        Each side takes the highest version both ranges hold ("unsupported_version",
        naming both ranges, when none); the Hellos are signed, so both compute the
        same.  Every sealed frame after the handshake is written in that version
        (``Session.version``; another is "unsupported_version"), and a message or field
        newer than it is neither sent (``LocalProtocolError``, see ``speaks``) nor
        accepted.  Below ``CERTIFIED_FRAMES_SINCE`` a certified batch goes as a "D"
        frame (Rule 6a).
Rule 3. The responder checks the initiator's Hello (grid id: "wrong_grid"; version;
        not itself; the signature under the node id it names: "bad_signature") and
        only then answers with its own sealed Hello, which the initiator checks the
        same way.  The initiator proves first: a peer that does not know the grid id
        learns neither the grid id nor the responder's node id or version, and a
        network observer learns no identity at all.  An old Hello replayed into a new
        session fails its seal (other keys) or its signature (other Offers).
Rule 4. Session keys come from libsodium's ``crypto_kx`` over the two ephemeral X25519
        keys: one key per direction.  The initiator is kx "client", the responder
        kx "server".
Rule 5. Every frame after the handshake is sealed with XChaCha20-Poly1305 under the
        sender's direction key.  Its header (direction byte, 64-bit counter) is the
        associated data and the counter is the nonce, so each side checks, in order:
        direction (a reflected frame is "wrong_direction"), counter (lower than
        expected is "replayed", higher is "reordered": a frame went missing), then
        the tag ("tampered").
Rule 6. A message with a ``DETACHED_FIELD`` (packet payloads) may travel with that
        field outside the AEAD: the sealed header then carries the payload's length
        and BLAKE3 digest, so a changed, cut or swapped payload is still detected
        ("tampered"/"truncated") at the cost of one hash instead of one cipher pass.
        Packet payloads are end-to-end encrypted already (design brief), but a packet
        id is the BLAKE3 of its bytes: an observer who sees them recomputes which
        target holds which packet.  So a side that says ``sealed_payloads`` in its
        Hello gets every payload sealed, and refuses a detached one ("unsealed").
Rule 6a. A message whose sealed header names the BLAKE3 of every byte of its payload
        (``Message.PAYLOAD_CERTIFIED``: a ``StorePackets`` batch lists each packet's id
        and length, and a packet id is the BLAKE3 of the packet) travels as a "C" frame:
        the sealed header carries the payload's length only, and this layer does not
        hash the payload; the receiver of the message checks each part against its id
        (a changed or swapped part is refused there, "id_mismatch"; a cut payload is
        "truncated" here).  Hashing a batch here as well would hash every byte twice.
        A "C" frame must hold such a message ("malformed" otherwise); a "D" frame may
        still carry one (digest checked as in Rule 6).
Rule 7. ``close()`` sends a sealed ``Goodbye``; receiving one ends the session.  A
        connection that just stops is therefore distinguishable from a close.
Rule 8. Any refused input moves the session to ERROR and raises
        ``RemoteProtocolError``; nothing more is accepted or sent after that.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from typing import Final

import attrs
import blake3
import nacl.bindings as sodium
import nacl.utils
from nacl.signing import SigningKey

from ._codec import DEFAULT_LIMITS, Limits, decode_versioned, encode
from ._errors import LocalProtocolError, RemoteProtocolError
from ._identity import handshake_transcript, sign, verify
from ._messages import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Goodbye,
    Hello,
    Message,
    Offer,
)

__all__ = [
    "CERTIFIED_FRAMES_SINCE",
    "HANDSHAKE_MAX_FRAME_BYTES",
    "Event",
    "HandshakeComplete",
    "MessageReceived",
    "Role",
    "Session",
    "SessionClosed",
    "SessionState",
]

_PLAIN: Final = 0x50  # "P": handshake frame in the clear
_SEALED: Final = 0x53  # "S": whole message inside the AEAD
_DETACHED: Final = 0x44  # "D": sealed header + payload outside it (Rule 6)
_CERTIFIED: Final = 0x43  # "C": as "D", the header certifies the payload (Rule 6a)
_DIR_FROM_INITIATOR: Final = 0x49  # "I"
_DIR_FROM_RESPONDER: Final = 0x52  # "R"
_PREFIX_LEN: Final = 10  # type, direction, counter
#: Largest frame accepted before the session is READY: an Offer is about 120 bytes and a
#: Hello under 3 KiB with its certificate; anything bigger is refused before a byte of it
#: is decoded.
HANDSHAKE_MAX_FRAME_BYTES: Final = 4096  # a Hello with a 2 KiB certificate fits
_TAG_LEN: Final = 16
_DETACHED_META_LEN: Final = 8 + 32  # payload length + BLAKE3 digest
_CERTIFIED_META_LEN: Final = 8  # payload length
#: The protocol version that introduced the "C" frame (Rule 6a).
CERTIFIED_FRAMES_SINCE: Final = 3
#: The last word of a Hello's ``software`` that names the sender's versions (Rule 2a).
_VERSIONS_WORD: Final = re.compile(r"protocol/([0-9]{1,9})-([0-9]{1,9})")
_MAX_SOFTWARE_LEN: Final = 100  # Hello.software's bound
#: A buffer the payload may be given in (the sender's packets, without joining them first).
Buffer = bytes | bytearray | memoryview


class Role(enum.Enum):
    INITIATOR = "initiator"  # the dialer
    RESPONDER = "responder"  # the listener


class SessionState(enum.Enum):
    START = "start"
    OFFER_SENT = "offer_sent"  # waiting for the peer's Offer
    HELLO_WAIT = "hello_wait"  # keys agreed; waiting for the peer's sealed Hello
    READY = "ready"
    CLOSED = "closed"
    ERROR = "error"


@attrs.frozen
class HandshakeComplete:
    peer_id: bytes
    peer_address: str
    peer_software: str
    #: The negotiated protocol version (Rule 2a).
    version: int = PROTOCOL_VERSION


@attrs.frozen
class MessageReceived:
    message: Message
    #: For messages whose payload travelled detached: its verified BLAKE3 digest, so a
    #: receiver that needs the hash (packet ids are BLAKE3) need not compute it again.
    payload_digest: bytes | None = None


@attrs.frozen
class SessionClosed:
    code: str
    reason: str


Event = HandshakeComplete | MessageReceived | SessionClosed


def _nonce(counter: int) -> bytes:
    return b"\x00" * 16 + counter.to_bytes(8, "big")


class Session:
    """One peer session.  Not thread-safe; one task owns it (see gridnode.transport)."""

    def __init__(
        self,
        *,
        role: Role,
        grid_id: bytes,
        signing_key: SigningKey,
        listen_address: str,
        software: str = "",
        limits: Limits = DEFAULT_LIMITS,
        seal_payloads: bool = False,
        require_sealed: bool = False,
        certificate: bytes = b"",
        check_peer: Callable[[bytes, bytes], str | None] | None = None,
        random: Callable[[int], bytes] = nacl.utils.random,
        min_version: int = MIN_PROTOCOL_VERSION,
        max_version: int = PROTOCOL_VERSION,
    ) -> None:
        if not MIN_PROTOCOL_VERSION <= min_version <= max_version <= PROTOCOL_VERSION:
            raise LocalProtocolError(
                f"versions {min_version}-{max_version} are not within the "
                f"{MIN_PROTOCOL_VERSION}-{PROTOCOL_VERSION} this software speaks",
                code="unsupported_version",
            )
        announced = _announce(software, min_version, max_version)
        if len(announced) > _MAX_SOFTWARE_LEN:
            raise LocalProtocolError(
                f"software name {software[:40]!r}... is too long", code="bad_field"
            )
        self.role = role
        #: The range this side speaks (Rule 2a), and once READY the version negotiated
        #: with the peer and the range it announced.
        self.min_version = min_version
        self.max_version = max_version
        self.version: int | None = None
        self.peer_versions: tuple[int, int] | None = None
        self.grid_id = grid_id
        self.node_id = bytes(signing_key.verify_key)
        self.limits = limits
        self.seal_payloads = seal_payloads or require_sealed
        self.require_sealed = require_sealed
        self.certificate = certificate
        #: ``check_peer(node_id, certificate)``: why the peer may not join, or None.  The
        #: I/O layer's (it knows the authority key, the revocations and the time); called
        #: before this side reveals anything of itself to an initiator.
        self._check_peer = check_peer
        self.peer_certificate = b""
        self.state = SessionState.START
        self.peer_id: bytes | None = None
        self.peer_address: str = ""
        self.peer_software: str = ""
        self.close_reason: str | None = None
        self._signing_key = signing_key
        self._listen_address = listen_address
        self._software = announced
        self._nonce = random(32)
        self._kx_public, self._kx_secret = sodium.crypto_kx_seed_keypair(random(32))
        self._my_offer: bytes | None = None
        self._peer_offer: bytes | None = None
        self._tx_key: bytes | None = None
        self._rx_key: bytes | None = None
        self._tx_counter = 0
        self._rx_counter = 0
        self._outbox: list[bytes] = []
        initiator = role is Role.INITIATOR
        self._tx_dir = _DIR_FROM_INITIATOR if initiator else _DIR_FROM_RESPONDER
        self._rx_dir = _DIR_FROM_RESPONDER if initiator else _DIR_FROM_INITIATOR

    # --- outbound -------------------------------------------------------------------------

    def start(self) -> None:
        """Queue our Offer (Rule 1)."""
        self._require(SessionState.START, "start")
        offer = Offer(nonce=self._nonce, kx_public=self._kx_public)
        self._my_offer = bytes([_PLAIN]) + encode(
            offer, limits=self.limits, version=self.min_version
        )
        self._outbox.append(self._my_offer)
        self.state = SessionState.OFFER_SENT

    def data_to_send(self) -> list[bytes]:
        """Frames the I/O layer must write, in order; drains the queue."""
        out, self._outbox = self._outbox, []
        return out

    def send(
        self,
        msg: Message,
        *,
        payload_digest: bytes | None = None,
        payload: Sequence[Buffer] | None = None,
    ) -> bytes:
        """Seal ``msg`` into one frame (Rules 5, 6 and 6a): ``send_pieces`` joined."""
        pieces = self.send_pieces(msg, payload_digest=payload_digest, payload=payload)
        return b"".join(pieces)  # one piece: returned as it is, not copied

    def send_pieces(
        self,
        msg: Message,
        *,
        payload_digest: bytes | None = None,
        payload: Sequence[Buffer] | None = None,
    ) -> list[Buffer]:
        """Seal ``msg`` into one frame, returned in pieces whose concatenation is the
        frame: the sealed part, then the detached payload's pieces as given.  The I/O
        layer copies each piece once, into its websocket frame (issue 11), instead of
        joining the frame first.

        ``payload_digest``: the BLAKE3 of the detached payload when the caller already has
        it (a packet's id is exactly that), so the payload is not hashed a second time.
        The caller vouches for it; the receiver checks it regardless.

        ``payload``: the bytes of the message's detached field as pieces, in order (the
        field itself then empty): a batch of packets is joined once, into the frame,
        instead of into a payload and then again into the frame.
        """
        if self.state is not SessionState.READY:
            raise LocalProtocolError(
                f"cannot send {msg.KIND} in state {self.state.value}", code="not_ready"
            )
        if not self.speaks(msg):
            raise LocalProtocolError(
                f"{msg.KIND} is new in protocol {msg.SINCE_VERSION}; "
                f"this session speaks {self.version}",
                code="unsupported_version",
            )
        if payload is not None:
            name = msg.DETACHED_FIELD
            if name is None or getattr(msg, name):
                raise LocalProtocolError(
                    f"{msg.KIND}: payload pieces need an empty detached field", code="malformed"
                )
        return self._seal_pieces(msg, payload_digest, payload)

    def close(self, code: str = "normal", reason: str = "") -> bytes | None:
        """Return a sealed Goodbye (Rule 7), or None when the session cannot send any more."""
        frame = self._seal(Goodbye(code=code, reason=reason)) if self.is_ready else None
        if self.state is not SessionState.ERROR:
            self.state = SessionState.CLOSED
            self.close_reason = self.close_reason or reason or code
        return frame

    @property
    def is_ready(self) -> bool:
        return self.state is SessionState.READY

    def speaks(self, msg: Message | type[Message]) -> bool:
        """Whether the negotiated version has this kind of message (Rule 2a): the I/O
        layer asks before it sends what an older peer could not read."""
        return self.version is not None and self.version >= msg.SINCE_VERSION

    @property
    def _wire_version(self) -> int:
        """The version frames are written in: our lowest until one is negotiated."""
        return self.min_version if self.version is None else self.version

    def _seal(self, msg: Message) -> bytes:
        return b"".join(self._seal_pieces(msg))

    def _seal_pieces(
        self,
        msg: Message,
        payload_digest: bytes | None = None,
        payload: Sequence[Buffer] | None = None,
    ) -> list[Buffer]:
        assert self._tx_key is not None
        detached_name = None if self.seal_payloads else msg.DETACHED_FIELD
        if detached_name is None:
            if payload is not None:  # sealed inside the AEAD: the field must hold it
                assert msg.DETACHED_FIELD is not None
                msg = attrs.evolve(msg, **{msg.DETACHED_FIELD: b"".join(payload)})  # type: ignore[misc]
            # too large: raises, no counter spent
            body = encode(msg, limits=self.limits, version=self._wire_version)
            counter = self._next_counter()
            prefix = bytes([_SEALED, self._tx_dir]) + counter.to_bytes(8, "big")
            sealed = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
                body, prefix, _nonce(counter), self._tx_key
            )
            return [prefix + sealed]
        if payload is None:
            pieces: Sequence[Buffer] = (getattr(msg, detached_name),)
            header_msg = attrs.evolve(msg, **{detached_name: b""})  # type: ignore[misc]
        else:
            pieces, header_msg = payload, msg
        size = sum(memoryview(piece).nbytes for piece in pieces)
        if msg.PAYLOAD_CERTIFIED and self._wire_version >= CERTIFIED_FRAMES_SINCE:
            # Rule 6a: the header names every byte's hash already
            kind = _CERTIFIED
            meta = size.to_bytes(8, "big")
        else:
            kind = _DETACHED
            if payload_digest is None:
                hasher = blake3.blake3()
                for piece in pieces:
                    hasher.update(piece)
                payload_digest = hasher.digest()
            meta = size.to_bytes(8, "big") + payload_digest
        body = meta + encode(header_msg, limits=self.limits, version=self._wire_version)
        sealed_len = len(body) + _TAG_LEN
        if _PREFIX_LEN + 4 + sealed_len + size > self.limits.max_frame_bytes:
            raise LocalProtocolError(f"{msg.KIND} frame exceeds the frame limit", code="too_large")
        counter = self._next_counter()
        aad = (
            bytes([kind, self._tx_dir]) + counter.to_bytes(8, "big") + sealed_len.to_bytes(4, "big")
        )
        sealed = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            body, aad, _nonce(counter), self._tx_key
        )
        return [aad + sealed, *pieces]

    def _next_counter(self) -> int:
        counter = self._tx_counter
        self._tx_counter += 1
        return counter

    # --- inbound --------------------------------------------------------------------------

    @staticmethod
    def work_bytes(frame: bytes | bytearray | memoryview) -> int:
        """How many of ``frame``'s bytes ``receive`` decrypts, hashes or decodes: all of
        them, except the payload of a "C" frame (Rule 6a), which is only copied.  The I/O
        layer opens frames with much work off its event loop and the rest on it."""
        if len(frame) >= _PREFIX_LEN + 4 and frame[0] == _CERTIFIED:
            return min(int.from_bytes(frame[_PREFIX_LEN : _PREFIX_LEN + 4], "big"), len(frame))
        return len(frame)

    @staticmethod
    def frame_work(frame: bytes | bytearray | memoryview) -> tuple[int, int]:
        """``work_bytes`` split in two: (bytes ``receive`` decrypts and decodes, bytes of a
        "D" frame's detached payload it only hashes).  Hashing is linear and fast (BLAKE3:
        a packet of 256 KiB in about 0.1 ms), decoding a hostile body is not, so the I/O
        layer can open a packet frame on its event loop (a worker-thread hop costs about
        as much CPU as that hash) and still send big sealed bodies off it."""
        if len(frame) >= _PREFIX_LEN + 4 and frame[0] in (_CERTIFIED, _DETACHED):
            sealed = min(int.from_bytes(frame[_PREFIX_LEN : _PREFIX_LEN + 4], "big"), len(frame))
            payload = len(frame) - _PREFIX_LEN - 4 - sealed
            return sealed, payload if frame[0] == _DETACHED and payload > 0 else 0
        return len(frame), 0

    def receive(self, frame: bytes | bytearray | memoryview) -> list[Event]:
        """Process one received frame; raises RemoteProtocolError and enters ERROR on refusal.

        After a close (ours or the peer's) frames still in flight are ignored: the peer may
        have sent them before it saw our goodbye.
        """
        if self.state is SessionState.CLOSED:
            return []
        if self.state is SessionState.ERROR:
            raise LocalProtocolError("session is in the error state", code="closed")
        try:
            view = frame if isinstance(frame, bytes) else memoryview(frame).cast("B")
            return self._receive(view)
        except RemoteProtocolError as exc:
            self.state = SessionState.ERROR
            self.close_reason = f"{exc.code}: {exc.message}"
            raise

    def _receive(self, frame: bytes | memoryview) -> list[Event]:
        if self.state is not SessionState.READY and len(frame) > HANDSHAKE_MAX_FRAME_BYTES:
            raise RemoteProtocolError(
                f"handshake frame of {len(frame)} bytes exceeds {HANDSHAKE_MAX_FRAME_BYTES}",
                code="too_large",
            )
        if len(frame) > self.limits.max_frame_bytes:
            raise RemoteProtocolError(
                f"frame of {len(frame)} bytes exceeds the limit of {self.limits.max_frame_bytes}",
                code="too_large",
            )
        if len(frame) < 1:
            raise RemoteProtocolError("empty frame", code="truncated")
        kind = frame[0]
        if kind == _PLAIN:
            return self._receive_handshake(bytes(frame))
        if kind == _SEALED and self.state is SessionState.HELLO_WAIT:
            return self._receive_sealed(frame, detached=False)
        if kind in (_SEALED, _DETACHED, _CERTIFIED):
            if self.state is not SessionState.READY:
                raise RemoteProtocolError(
                    f"sealed frame before the handshake finished (state {self.state.value})",
                    code="unexpected",
                )
            if kind == _CERTIFIED and self._wire_version < CERTIFIED_FRAMES_SINCE:
                raise RemoteProtocolError(
                    f"certified frame in protocol {self._wire_version}", code="malformed"
                )
            return self._receive_sealed(
                frame, detached=kind != _SEALED, certified=kind == _CERTIFIED
            )
        raise RemoteProtocolError(f"unknown frame type 0x{kind:02x}", code="malformed")

    def _receive_handshake(self, frame: bytes) -> list[Event]:
        _version, msg = decode_versioned(memoryview(frame)[1:], limits=self.limits)
        if not isinstance(msg, Offer):
            raise RemoteProtocolError(
                f"{msg.KIND} sent in the clear; only an offer may be", code="unexpected"
            )
        if self.state is not SessionState.OFFER_SENT:
            raise RemoteProtocolError(f"offer in state {self.state.value}", code="unexpected")
        if msg.kx_public == self._kx_public or msg.nonce == self._nonce:
            raise RemoteProtocolError("peer echoed our own handshake values", code="reflected")
        self._peer_offer = frame
        try:
            if self.role is Role.INITIATOR:
                rx, tx = sodium.crypto_kx_client_session_keys(
                    self._kx_public, self._kx_secret, msg.kx_public
                )
            else:
                rx, tx = sodium.crypto_kx_server_session_keys(
                    self._kx_public, self._kx_secret, msg.kx_public
                )
        except Exception as exc:  # libsodium refuses degenerate public keys
            raise RemoteProtocolError(f"bad key exchange value: {exc}", code="bad_key") from None
        self._rx_key, self._tx_key = rx, tx
        self.state = SessionState.HELLO_WAIT
        if self.role is Role.INITIATOR:  # Rule 2: the initiator proves first
            self._outbox.append(self._seal(self._hello()))
        return []

    def _hello(self) -> Hello:
        transcript = self._transcript(
            signer_is_initiator=self.role is Role.INITIATOR,
            node_id=self.node_id,
            version=self.min_version,
            listen_address=self._listen_address,
            software=self._software,
            sealed_payloads=self.require_sealed,
            certificate=self.certificate,
        )
        return Hello(
            grid_id=self.grid_id,
            node_id=self.node_id,
            version=self.min_version,
            listen_address=self._listen_address,
            software=self._software,
            sealed_payloads=self.require_sealed,
            certificate=self.certificate,
            signature=sign(self._signing_key, transcript),
        )

    def _transcript(
        self,
        *,
        signer_is_initiator: bool,
        node_id: bytes,
        version: int,
        listen_address: str,
        software: str,
        sealed_payloads: bool,
        certificate: bytes,
    ) -> bytes:
        assert self._my_offer is not None and self._peer_offer is not None
        me_initiator = self.role is Role.INITIATOR
        return handshake_transcript(
            grid_id=self.grid_id,
            signer_is_initiator=signer_is_initiator,
            initiator_offer=self._my_offer if me_initiator else self._peer_offer,
            responder_offer=self._peer_offer if me_initiator else self._my_offer,
            node_id=node_id,
            version=version,
            listen_address=listen_address,
            software=software,
            sealed_payloads=sealed_payloads,
            certificate=certificate,
        )

    def _on_hello(self, hello: Hello, frame_version: int) -> list[Event]:
        """Rule 3: check the peer's sealed Hello; the responder answers only after it."""
        if hello.grid_id != self.grid_id:
            raise RemoteProtocolError(
                f"peer belongs to grid {hello.grid_id.hex()[:16]}, not {self.grid_id.hex()[:16]}",
                code="wrong_grid",
            )
        peer_min, peer_max, software = _announced(hello)
        if frame_version != peer_min:
            raise RemoteProtocolError(
                f"hello written in protocol {frame_version} says it is {peer_min}",
                code="malformed",
            )
        version = min(peer_max, self.max_version)
        if version < max(peer_min, self.min_version):
            raise RemoteProtocolError(
                f"peer speaks protocol versions {peer_min}-{peer_max}, "
                f"this node {self.min_version}-{self.max_version}: none in common",
                code="unsupported_version",
            )
        if hello.node_id == self.node_id:
            raise RemoteProtocolError("connected to itself", code="self_connection")
        transcript = self._transcript(
            signer_is_initiator=self.role is not Role.INITIATOR,
            node_id=hello.node_id,
            version=hello.version,
            listen_address=hello.listen_address,
            software=hello.software,
            sealed_payloads=hello.sealed_payloads,
            certificate=hello.certificate,
        )
        if not verify(hello.node_id, transcript, hello.signature):
            raise RemoteProtocolError(
                "hello signature does not verify under the node id it names",
                code="bad_signature",
            )
        if self._check_peer is not None:
            refusal = self._check_peer(hello.node_id, hello.certificate)
            if refusal is not None:
                raise RemoteProtocolError(refusal, code="not_admitted")
        self.peer_id = hello.node_id
        self.peer_certificate = hello.certificate
        self.peer_address = hello.listen_address
        self.peer_software = software
        self.peer_versions = (peer_min, peer_max)
        self.seal_payloads = self.seal_payloads or hello.sealed_payloads
        if self.role is Role.RESPONDER:
            self._outbox.append(self._seal(self._hello()))  # in our lowest version
        self.version = version
        self.state = SessionState.READY
        return [HandshakeComplete(self.peer_id, self.peer_address, self.peer_software, version)]

    def _receive_sealed(
        self, frame: bytes | memoryview, *, detached: bool, certified: bool = False
    ) -> list[Event]:
        header_len = _PREFIX_LEN + (4 if detached else 0)
        if len(frame) < header_len + _TAG_LEN:
            raise RemoteProtocolError(f"frame of {len(frame)} bytes is truncated", code="truncated")
        direction = frame[1]
        if direction != self._rx_dir:
            raise RemoteProtocolError(
                "frame from the wrong direction (our own frame reflected back?)",
                code="wrong_direction",
            )
        counter = int.from_bytes(frame[2:10], "big")
        if counter < self._rx_counter:
            raise RemoteProtocolError(
                f"replayed frame: counter {counter}, expected {self._rx_counter}", code="replayed"
            )
        if counter > self._rx_counter:
            raise RemoteProtocolError(
                f"reordered or missing frame: counter {counter}, expected {self._rx_counter}",
                code="reordered",
            )
        assert self._rx_key is not None
        payload: bytes | memoryview = b""
        if detached and self.require_sealed:
            raise RemoteProtocolError(
                "payload outside the AEAD on a link that asked for sealed payloads",
                code="unsealed",
            )
        meta_len = _CERTIFIED_META_LEN if certified else _DETACHED_META_LEN
        if detached:
            sealed_len = int.from_bytes(frame[10:14], "big")
            if sealed_len < _TAG_LEN + meta_len or header_len + sealed_len > len(frame):
                raise RemoteProtocolError("detached frame header is truncated", code="truncated")
            aad = bytes(frame[:header_len])
            sealed = frame[header_len : header_len + sealed_len]
            payload = frame[header_len + sealed_len :]
        else:
            aad = bytes(frame[:_PREFIX_LEN])
            sealed = frame[_PREFIX_LEN:]
        try:
            body = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                bytes(sealed), aad, _nonce(counter), self._rx_key
            )
        except Exception:
            raise RemoteProtocolError(
                f"frame {counter} failed authentication (tampered or wrong key)", code="tampered"
            ) from None
        self._rx_counter += 1
        digest: bytes | None = None
        if detached:
            declared_len = int.from_bytes(body[:8], "big")
            digest = None if certified else body[8:_DETACHED_META_LEN]
            if len(payload) != declared_len:
                raise RemoteProtocolError(
                    f"payload of {len(payload)} bytes, header says {declared_len}",
                    code="truncated",
                )
            if digest is not None and blake3.blake3(payload).digest() != digest:
                raise RemoteProtocolError(
                    f"payload of frame {counter} does not match its sealed digest",
                    code="tampered",
                )
            body = body[meta_len:]
        frame_version, msg = decode_versioned(body, limits=self.limits)
        if self.version is not None and frame_version != self.version:
            raise RemoteProtocolError(
                f"frame written in protocol {frame_version}; this session speaks {self.version}",
                code="unsupported_version",
            )
        if detached:
            name = msg.DETACHED_FIELD
            if name is None:
                raise RemoteProtocolError(
                    f"{msg.KIND} cannot carry a detached payload", code="malformed"
                )
            if certified and not msg.PAYLOAD_CERTIFIED:
                # Rule 6a: only a header that names every part's hash may skip the digest.
                raise RemoteProtocolError(
                    f"{msg.KIND} does not certify its payload; it needs a digest",
                    code="malformed",
                )
            msg = attrs.evolve(msg, **{name: bytes(payload)})  # type: ignore[misc]
        if self.state is SessionState.HELLO_WAIT:
            if not isinstance(msg, Hello):
                raise RemoteProtocolError(f"{msg.KIND} before the peer's hello", code="unexpected")
            return self._on_hello(msg, frame_version)
        if isinstance(msg, Hello):
            raise RemoteProtocolError("hello after the handshake", code="unexpected")
        if isinstance(msg, Goodbye):
            self.state = SessionState.CLOSED
            self.close_reason = f"peer closed: {msg.code} {msg.reason}".strip()
            return [SessionClosed(msg.code, msg.reason)]
        return [MessageReceived(msg, digest)]

    def _require(self, state: SessionState, action: str) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"cannot {action} in state {self.state.value}", code="state")


def _announce(software: str, low: int, high: int) -> str:
    """``software`` with the last word that names our versions (Rule 2a)."""
    return f"{software} protocol/{low}-{high}" if software else f"protocol/{low}-{high}"


def _announced(hello: Hello) -> tuple[int, int, str]:
    """The versions a Hello announces and its software name without the word that
    named them; a Hello without that word (version 2's) speaks ``version`` alone."""
    name, _, last = hello.software.rpartition(" ")
    match = _VERSIONS_WORD.fullmatch(last)
    if match is None:
        return hello.version, hello.version, hello.software
    low, high = int(match[1]), int(match[2])
    if low != hello.version or high < low:
        raise RemoteProtocolError(
            f"hello says version {hello.version} but announces {low}-{high}", code="bad_field"
        )
    return low, high, name
