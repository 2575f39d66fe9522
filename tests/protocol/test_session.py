"""Handshake and sealed frames: every refusal the issue lists, with its reason."""

from __future__ import annotations

import os

import attrs
import pytest
from nacl.signing import SigningKey

from protocol import (
    HANDSHAKE_MAX_FRAME_BYTES,
    HandshakeComplete,
    Hello,
    LocalProtocolError,
    MessageReceived,
    Offer,
    PacketData,
    Ping,
    RemoteProtocolError,
    Role,
    Session,
    SessionClosed,
    SessionState,
    StorePacket,
    decode,
    encode,
)

from .sessions import GRID, handshake, make, pair, pump, pump_frames


def test_handshake_authenticates_both_sides() -> None:
    ka, kb = SigningKey.generate(), SigningKey.generate()
    a, b = make(Role.INITIATOR, key=ka), make(Role.RESPONDER, key=kb)
    ev_a, ev_b = handshake(a, b)
    assert ev_a == [HandshakeComplete(bytes(kb.verify_key), "127.0.0.1:2", "")]
    assert ev_b == [HandshakeComplete(bytes(ka.verify_key), "127.0.0.1:1", "")]


@pytest.mark.parametrize("seal_payloads", [False, True])
def test_messages_flow_both_ways(seal_payloads: bool) -> None:
    a, b = pair(seal_payloads=seal_payloads)
    msg = StorePacket(request_id=7, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=b"d" * 9000)
    assert b.receive(a.send(msg))[0].message == msg  # type: ignore[union-attr]
    reply = PacketData(request_id=7, packet_id=b"p" * 32, data=b"r" * 100)
    assert a.receive(b.send(reply))[0].message == reply  # type: ignore[union-attr]


def test_detached_payload_is_outside_the_cipher_but_bound_to_it() -> None:
    a, b = pair()
    data = b"plain-payload-" * 100
    frame = a.send(StorePacket(request_id=1, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=data))
    assert frame.endswith(data)  # not re-encrypted: already end-to-end encrypted packets
    tampered = frame[:-1] + bytes([frame[-1] ^ 1])
    with pytest.raises(RemoteProtocolError) as info:
        b.receive(tampered)
    assert info.value.code == "tampered"
    assert b.state is SessionState.ERROR


def test_sealed_mode_hides_the_payload() -> None:
    a, _b = pair(seal_payloads=True)
    data = b"secret-payload-" * 100
    frame = a.send(StorePacket(request_id=1, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=data))
    assert b"secret-payload-" not in frame


def test_wrong_grid_is_refused_by_the_responder_before_it_says_anything() -> None:
    a, b = make(Role.INITIATOR, grid=b"another-grid-0001"), make(Role.RESPONDER)
    a.start()
    b.start()
    pump(a, b)
    offer_b = b.data_to_send()
    pump_frames(offer_b, a)
    with pytest.raises(RemoteProtocolError) as info:
        pump(a, b)  # a's sealed hello names another grid
    assert info.value.code == "wrong_grid"
    assert b.data_to_send() == []  # b never sends its hello


def test_a_stranger_learns_no_identity_and_no_grid_id() -> None:
    """What a responder sends to someone who opens a socket: one Offer of random values.

    The grid id, the node id and the version are never in the clear, and the responder's
    Hello comes only after the initiator's has verified (issue 8: the Hello leak)."""
    key = SigningKey.generate()
    b = make(Role.RESPONDER, key=key)
    b.start()
    stranger = make(Role.INITIATOR, grid=b"guessed-grid-id-1")
    stranger.start()
    pump(stranger, b)
    sent = b.data_to_send()
    assert len(sent) == 1
    offer = decode(sent[0][1:])
    assert isinstance(offer, Offer)
    for secret in (GRID, bytes(key.verify_key)):
        assert secret not in sent[0]
    pump_frames(sent, stranger)
    with pytest.raises(RemoteProtocolError):
        pump(stranger, b)
    assert b.data_to_send() == []


def test_a_passive_observer_sees_no_identity() -> None:
    ka, kb = SigningKey.generate(), SigningKey.generate()
    a, b = make(Role.INITIATOR, key=ka), make(Role.RESPONDER, key=kb)
    a.start()
    b.start()
    wire: list[bytes] = []
    for _ in range(2):
        frames = a.data_to_send()
        wire += frames
        pump_frames(frames, b)
        frames = b.data_to_send()
        wire += frames
        pump_frames(frames, a)
    assert a.is_ready and b.is_ready
    seen = b"".join(wire)
    for secret in (GRID, bytes(ka.verify_key), bytes(kb.verify_key), b"127.0.0.1"):
        assert secret not in seen


def _hello_from(session_key: SigningKey, **overrides: object) -> tuple[Session, Session, Hello]:
    """A handshake stopped where the initiator's sealed hello is about to reach b."""
    a, b = make(Role.INITIATOR, key=session_key), make(Role.RESPONDER)
    a.start()
    b.start()
    pump(a, b)
    pump(b, a)
    a.data_to_send()  # a's real sealed hello, not delivered
    hello = a._hello()  # what a sealed, to be altered by the test
    return a, b, attrs.evolve(hello, **overrides)  # type: ignore[arg-type]


def _seal_from(a: Session, msg: object) -> bytes:
    a._tx_counter = 0  # the altered hello takes the place of the real one
    return a._seal(msg)  # type: ignore[arg-type]


def test_bad_signature_is_refused() -> None:
    a, b, forged = _hello_from(SigningKey.generate(), signature=bytes(64))
    with pytest.raises(RemoteProtocolError) as info:
        b.receive(_seal_from(a, forged))
    assert info.value.code == "bad_signature"


def test_impostor_with_another_key_is_refused() -> None:
    # a claims node id X in its hello but signs with key Y.
    claimed = SigningKey.generate()
    a, b, hello = _hello_from(SigningKey.generate(), node_id=bytes(claimed.verify_key))
    with pytest.raises(RemoteProtocolError) as info:
        b.receive(_seal_from(a, hello))
    assert info.value.code == "bad_signature"


def test_a_hello_signed_for_other_offers_is_refused() -> None:
    """An attacker who recorded a's hello in one session replays its signature into a new
    one (sealed correctly: the attacker is the initiator there)."""
    key_a = SigningKey.generate()
    _a1, _b1, old = _hello_from(key_a)
    a2, b2, _ = _hello_from(key_a)
    with pytest.raises(RemoteProtocolError) as info:
        b2.receive(_seal_from(a2, old))
    assert info.value.code == "bad_signature"


def test_handshake_frames_are_small_and_refused_before_decoding() -> None:
    b = make(Role.RESPONDER)
    b.start()
    huge = b"P" + encode(Ping(request_id=1)) + b"\x00" * HANDSHAKE_MAX_FRAME_BYTES
    with pytest.raises(RemoteProtocolError) as info:
        b.receive(huge)
    assert info.value.code == "too_large"


def test_a_hello_in_the_clear_is_refused() -> None:
    _a, b, hello = _hello_from(SigningKey.generate())
    with pytest.raises(RemoteProtocolError) as info:
        b.receive(b"P" + encode(hello))
    assert info.value.code == "unexpected"


def test_tampered_frame_is_refused() -> None:
    a, b = pair()
    frame = bytearray(a.send(Ping(request_id=1)))
    frame[15] ^= 0x40
    with pytest.raises(RemoteProtocolError) as info:
        b.receive(bytes(frame))
    assert info.value.code == "tampered"


def test_replayed_frame_is_refused() -> None:
    a, b = pair()
    frame = a.send(Ping(request_id=1))
    b.receive(frame)
    with pytest.raises(RemoteProtocolError) as info:
        b.receive(frame)
    assert info.value.code == "replayed"


def test_reordered_frame_is_refused() -> None:
    a, b = pair()
    a.send(Ping(request_id=1))
    second = a.send(Ping(request_id=2))
    with pytest.raises(RemoteProtocolError) as info:
        b.receive(second)
    assert info.value.code == "reordered"


def test_frame_from_the_wrong_direction_is_refused() -> None:
    a, _b = pair()
    own = a.send(Ping(request_id=1))
    with pytest.raises(RemoteProtocolError) as info:
        a.receive(own)  # our own frame reflected back at us
    assert info.value.code == "wrong_direction"


def test_truncated_frame_is_refused() -> None:
    a, b = pair()
    frame = a.send(
        StorePacket(request_id=1, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=b"x" * 1000)
    )
    with pytest.raises(RemoteProtocolError) as info:
        b.receive(frame[:-10])
    assert info.value.code == "truncated"
    a2, b2 = pair()
    with pytest.raises(RemoteProtocolError) as info:
        b2.receive(a2.send(Ping(request_id=1))[:12])
    assert info.value.code == "truncated"


def test_clear_message_after_handshake_is_refused() -> None:
    _a, b = pair()
    with pytest.raises(RemoteProtocolError) as info:
        b.receive(b"P" + encode(Ping(request_id=1)))
    assert info.value.code == "unexpected"


def test_sealed_frame_before_handshake_is_refused() -> None:
    a, _ = pair()
    fresh = make(Role.RESPONDER)
    fresh.start()
    with pytest.raises(RemoteProtocolError) as info:
        fresh.receive(a.send(Ping(request_id=1)))
    assert info.value.code == "unexpected"


def test_send_before_ready_is_a_local_error() -> None:
    a = make(Role.INITIATOR)
    with pytest.raises(LocalProtocolError):
        a.send(Ping(request_id=1))


def test_goodbye_closes_the_session() -> None:
    a, b = pair()
    frame = a.close("shutdown", "bye")
    assert frame is not None
    events = b.receive(frame)
    assert events == [SessionClosed("shutdown", "bye")]
    assert b.state is SessionState.CLOSED
    assert b.receive(frame) == []  # late frames after a close are ignored, not processed
    with pytest.raises(LocalProtocolError):
        b.send(Ping(request_id=2))


def test_session_refuses_everything_after_an_error() -> None:
    a, b = pair()
    with pytest.raises(RemoteProtocolError):
        b.receive(b"\x99garbage")
    with pytest.raises(LocalProtocolError):
        b.receive(a.send(Ping(request_id=1)))


def test_self_connection_is_refused() -> None:
    key = SigningKey.generate()
    a, b = make(Role.INITIATOR, key=key), make(Role.RESPONDER, key=key)
    with pytest.raises(RemoteProtocolError) as info:
        handshake(a, b)
    assert info.value.code == "self_connection"


def test_message_received_carries_payload_digest() -> None:
    import blake3

    a, b = pair()
    data = b"z" * 777
    (event,) = b.receive(
        a.send(StorePacket(request_id=1, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=data))
    )
    assert isinstance(event, MessageReceived)
    assert event.payload_digest == blake3.blake3(data).digest()
    assert GRID


def test_a_side_that_asks_for_sealed_payloads_gets_them_and_refuses_detached_ones() -> None:
    """The network observer of issue 8: a packet id is the BLAKE3 of the packet, so a
    payload on the wire names its packet.  b asks for sealed payloads in its hello."""
    a, b = make(Role.INITIATOR), make(Role.RESPONDER, require_sealed=True)
    handshake(a, b)
    assert a.seal_payloads  # a learned it from b's hello
    data = os.urandom(4096)
    frame = a.send(StorePacket(request_id=1, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=data))
    assert data[:64] not in frame
    (event,) = b.receive(frame)
    assert isinstance(event, MessageReceived) and event.message.data == data  # type: ignore[attr-defined]
    # A peer that sends a payload outside the AEAD anyway is refused.
    c, d = make(Role.INITIATOR), make(Role.RESPONDER, require_sealed=True)
    handshake(c, d)
    c.seal_payloads = False  # a lying or broken peer
    detached = c.send(
        StorePacket(request_id=1, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=data)
    )
    assert detached.endswith(data)
    with pytest.raises(RemoteProtocolError) as info:
        d.receive(detached)
    assert info.value.code == "unsealed"


def test_a_peer_the_grid_does_not_admit_is_refused_before_it_learns_anything() -> None:
    """``check_peer`` sees the peer's node id and certificate (both sealed in its Hello)
    and refuses before the responder says who it is; the initiator checks the responder
    the same way."""
    seen: list[tuple[bytes, bytes]] = []

    def refuse_all(node_id: bytes, certificate: bytes) -> str | None:
        seen.append((node_id, certificate))
        return "no valid certificate"

    a = make(Role.INITIATOR)
    a.certificate = b"not-a-real-certificate"
    b = Session(
        role=Role.RESPONDER,
        grid_id=GRID,
        signing_key=SigningKey.generate(),
        listen_address="127.0.0.1:2",
        check_peer=refuse_all,
    )
    a.start()
    b.start()
    pump(a, b)
    pump(b, a)
    with pytest.raises(RemoteProtocolError) as info:
        pump(a, b)
    assert info.value.code == "not_admitted"
    assert seen == [(a.node_id, b"not-a-real-certificate")]
    assert b.data_to_send() == []  # b never sent its hello
    # And the other way round: the initiator refuses a responder it does not admit.
    c = Session(
        role=Role.INITIATOR,
        grid_id=GRID,
        signing_key=SigningKey.generate(),
        listen_address="127.0.0.1:1",
        check_peer=refuse_all,
    )
    d = make(Role.RESPONDER)
    with pytest.raises(RemoteProtocolError) as info:
        handshake(c, d)
    assert info.value.code == "not_admitted"
