"""Handshake and sealed frames: every refusal the issue lists, with its reason."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from protocol import (
    Auth,
    HandshakeComplete,
    LocalProtocolError,
    MessageReceived,
    PacketData,
    Ping,
    RemoteProtocolError,
    Role,
    SessionClosed,
    SessionState,
    StorePacket,
    decode,
    encode,
)

from .sessions import GRID, handshake, make, pair, pump


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


def test_wrong_grid_is_refused() -> None:
    a, b = make(Role.INITIATOR), make(Role.RESPONDER, grid=b"another-grid-0001")
    a.start()
    b.start()
    with pytest.raises(RemoteProtocolError) as info:
        pump(a, b)
    assert info.value.code == "wrong_grid"
    assert "grid" in str(info.value)


def test_bad_signature_is_refused() -> None:
    a, b = make(Role.INITIATOR), make(Role.RESPONDER)
    a.start()
    b.start()
    pump(a, b)
    frames = b.data_to_send()  # b's hello, then b's auth
    a.receive(frames[0])
    auth = decode(frames[1][1:])
    assert isinstance(auth, Auth)
    forged = Auth(answered_nonce=auth.answered_nonce, signature=bytes(64))
    with pytest.raises(RemoteProtocolError) as info:
        a.receive(b"P" + encode(forged))
    assert info.value.code == "bad_signature"


def test_impostor_with_another_key_is_refused() -> None:
    # b claims node id X in its hello but signs with key Y.
    a, b = make(Role.INITIATOR), make(Role.RESPONDER)
    a.start()
    b.start()
    pump(a, b)
    frames = b.data_to_send()
    a.receive(frames[0])
    transcript_signer = SigningKey.generate()
    auth = decode(frames[1][1:])
    assert isinstance(auth, Auth)
    fake = Auth(
        answered_nonce=auth.answered_nonce,
        signature=bytes(transcript_signer.sign(b"whatever").signature),
    )
    with pytest.raises(RemoteProtocolError) as info:
        a.receive(b"P" + encode(fake))
    assert info.value.code == "bad_signature"


def test_stale_nonce_from_an_old_session_is_refused() -> None:
    key_b = SigningKey.generate()
    # An attacker recorded b's auth in an earlier session with a ...
    a1, b1 = make(Role.INITIATOR), make(Role.RESPONDER, key=key_b)
    a1.start()
    b1.start()
    pump(a1, b1)
    old_auth = b1.data_to_send()[1]
    # ... and replays it in a new session with a fresh nonce.
    a2, b2 = make(Role.INITIATOR), make(Role.RESPONDER, key=key_b)
    a2.start()
    b2.start()
    pump(a2, b2)
    frames = b2.data_to_send()
    a2.receive(frames[0])
    with pytest.raises(RemoteProtocolError) as info:
        a2.receive(old_auth)
    assert info.value.code == "stale_nonce"


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
    a.start()
    b.start()
    with pytest.raises(RemoteProtocolError) as info:
        pump(a, b)
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
