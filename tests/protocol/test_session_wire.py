"""The session's wire format and every refusal code, checked against the rules in
``protocol/_session.py`` rather than against the session itself.

Written from a mutation run (docs/MUTATION.md): two sessions that make the same mistake
on both sides still talk to each other, so these tests recompute the keys, the nonces,
the frame layout and the signed transcript independently, the way another
implementation would.
"""

from __future__ import annotations

import itertools
from typing import Final

import attrs
import blake3
import nacl.bindings as sodium
import pytest
from nacl.signing import SigningKey

from protocol import (
    HANDSHAKE_MAX_FRAME_BYTES,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    HandshakeComplete,
    Hello,
    Limits,
    LocalProtocolError,
    MessageReceived,
    Offer,
    PacketPart,
    Ping,
    RemoteProtocolError,
    Role,
    Session,
    SessionState,
    StorePacket,
    StorePackets,
    decode,
    encode,
)
from protocol._errors import ProtocolError
from protocol._identity import handshake_transcript, verify

from .sessions import GRID, handshake, make, pair, pump

SOFTWARE_A: Final = f"gridnode-a/1 protocol/{MIN_PROTOCOL_VERSION}-{PROTOCOL_VERSION}"


def _seeded(seed: int) -> object:
    """A deterministic ``random`` for Session: the same seed gives the same nonce and key."""
    counter = itertools.count()

    def random(n: int) -> bytes:
        return bytes([seed, next(counter)]) * (n // 2)

    return random


def _session(role: Role, seed: int, **kwargs: object) -> Session:
    return Session(
        role=role,
        grid_id=GRID,
        signing_key=kwargs.pop("key", None) or SigningKey.generate(),  # type: ignore[arg-type]
        listen_address=f"10.0.0.{seed}:7",
        random=_seeded(seed),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def _lpair(limits: Limits, **kwargs: object) -> tuple[Session, Session]:
    """``pair()`` with both sides under ``limits``."""
    a = _session(Role.INITIATOR, 3, limits=limits, **kwargs)
    b = _session(Role.RESPONDER, 4, limits=limits, **kwargs)
    handshake(a, b)
    assert a.is_ready and b.is_ready
    return a, b


def _nonce(counter: int) -> bytes:
    return bytes(16) + counter.to_bytes(8, "big")


def _store(data: bytes) -> StorePacket:
    return StorePacket(request_id=1, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=data)


def _raises(code: str, fn: object, *args: object, local: bool = False) -> ProtocolError:
    kind = LocalProtocolError if local else RemoteProtocolError
    with pytest.raises(kind) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.code == code, info.value
    assert isinstance(info.value.message, str) and info.value.message
    return info.value


# --- Rule 4 and 5: keys, nonces and frame layout, recomputed -----------------------------


def test_frames_follow_rules_4_and_5_byte_for_byte() -> None:
    ka, kb = SigningKey.generate(), SigningKey.generate()
    a = _session(Role.INITIATOR, 1, key=ka, software="gridnode-a/1")
    b = _session(Role.RESPONDER, 2, key=kb, require_sealed=True)
    a.start()
    b.start()
    (offer_a,) = a.data_to_send()
    (offer_b,) = b.data_to_send()
    assert offer_a[:1] == b"P" and isinstance(decode(offer_a[1:]), Offer)
    # Rule 4: the initiator is kx "client", the responder kx "server".
    a_pk, a_sk = sodium.crypto_kx_seed_keypair(bytes([1, 1]) * 16)
    b_pk, b_sk = sodium.crypto_kx_seed_keypair(bytes([2, 1]) * 16)
    assert decode(offer_a[1:]).kx_public == a_pk  # type: ignore[attr-defined]
    assert decode(offer_b[1:]).kx_public == b_pk  # type: ignore[attr-defined]
    a_rx, a_tx = sodium.crypto_kx_client_session_keys(a_pk, a_sk, b_pk)
    b_rx, b_tx = sodium.crypto_kx_server_session_keys(b_pk, b_sk, a_pk)
    assert (a_tx, a_rx) == (b_rx, b_tx)

    b.receive(offer_a)
    a.receive(offer_b)
    (hello_frame,) = a.data_to_send()
    # Rule 5: type "S", direction "I", 64-bit big-endian counter 0, nonce = counter.
    assert hello_frame[:10] == b"SI" + (0).to_bytes(8, "big")
    body = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        hello_frame[10:], hello_frame[:10], _nonce(0), a_tx
    )
    hello = decode(body)
    assert isinstance(hello, Hello)
    # Rule 2a: the Hello is written in our lowest version; the range ends the software.
    assert (hello.grid_id, hello.node_id, hello.version) == (
        GRID,
        bytes(ka.verify_key),
        MIN_PROTOCOL_VERSION,
    )
    assert hello.software == SOFTWARE_A and hello.sealed_payloads is False
    # Rule 2: the signature covers the transcript, built here from the frames as sent.
    transcript = handshake_transcript(
        grid_id=GRID,
        signer_is_initiator=True,
        initiator_offer=offer_a,
        responder_offer=offer_b,
        node_id=hello.node_id,
        version=MIN_PROTOCOL_VERSION,
        listen_address="10.0.0.1:7",
        software=SOFTWARE_A,
        sealed_payloads=False,
    )
    assert verify(hello.node_id, transcript, hello.signature)

    (event,) = b.receive(hello_frame)
    assert event == HandshakeComplete(bytes(ka.verify_key), "10.0.0.1:7", "gridnode-a/1")
    (hello_b_frame,) = b.data_to_send()
    assert hello_b_frame[:10] == b"SR" + (0).to_bytes(8, "big")
    hello_b = decode(
        sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            hello_b_frame[10:], hello_b_frame[:10], _nonce(0), b_tx
        )
    )
    assert isinstance(hello_b, Hello) and hello_b.sealed_payloads is True
    transcript_b = handshake_transcript(
        grid_id=GRID,
        signer_is_initiator=False,
        initiator_offer=offer_a,
        responder_offer=offer_b,
        node_id=bytes(kb.verify_key),
        version=MIN_PROTOCOL_VERSION,
        listen_address="10.0.0.2:7",
        software=f"protocol/{MIN_PROTOCOL_VERSION}-{PROTOCOL_VERSION}",
        sealed_payloads=True,
    )
    assert verify(hello_b.node_id, transcript_b, hello_b.signature)
    a.receive(hello_b_frame)
    assert a.is_ready and b.is_ready

    # The second frame a sends has counter 1 in the last byte of the header.
    a.send(Ping(request_id=1))
    ping2 = a.send(Ping(request_id=2))
    assert ping2[:10] == b"SI" + (2).to_bytes(8, "big")
    assert decode(
        sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ping2[10:], ping2[:10], _nonce(2), a_tx)
    ) == Ping(request_id=2)


def test_detached_frame_layout_follows_rule_6() -> None:
    a, b = pair()
    data = b"detached-payload" * 64
    msg = _store(data)
    frame = a.send(msg)
    assert frame[:2] == b"DI"
    sealed_len = int.from_bytes(frame[10:14], "big")
    header = encode(attrs.evolve(msg, data=b""))
    # The header is sealed without the payload; the payload follows the seal once.
    assert sealed_len == 8 + 32 + len(header) + 16
    assert len(frame) == 14 + sealed_len + len(data)
    assert frame.count(data) == 1 and frame.endswith(data)
    assert a._tx_key is not None
    body = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        frame[14 : 14 + sealed_len], frame[:14], _nonce(frame[9]), a._tx_key
    )
    assert body[:8] == len(data).to_bytes(8, "big")
    assert body[8:40] == blake3.blake3(data).digest()
    (event,) = b.receive(frame)
    assert event == MessageReceived(msg, blake3.blake3(data).digest())


def test_a_default_session_sends_payloads_detached() -> None:
    a = Session(
        role=Role.INITIATOR, grid_id=GRID, signing_key=SigningKey.generate(), listen_address="x"
    )
    b = Session(
        role=Role.RESPONDER, grid_id=GRID, signing_key=SigningKey.generate(), listen_address="y"
    )
    assert not a.seal_payloads and not a.require_sealed
    handshake(a, b)
    assert a.send(_store(b"q" * 500)).endswith(b"q" * 500)


def test_a_fresh_session_knows_no_peer() -> None:
    s = make(Role.INITIATOR)
    assert (s.peer_id, s.peer_address, s.peer_software, s.close_reason) == (None, "", "", None)
    assert s.state is SessionState.START


def test_the_callers_payload_digest_is_sent_as_given_and_checked_by_the_receiver() -> None:
    """send() trusts the caller's digest instead of hashing again; the receiver does not."""
    a, b = pair()
    data = b"d" * 300
    right = blake3.blake3(data).digest()
    (event,) = b.receive(a.send(_store(data), payload_digest=right))
    assert event == MessageReceived(_store(data), right)
    frame = a.send(_store(data), payload_digest=bytes(32))
    _raises("tampered", b.receive, frame)


def test_a_plain_message_has_no_payload_digest() -> None:
    a, b = pair()
    (event,) = b.receive(a.send(Ping(request_id=3)))
    assert event == MessageReceived(Ping(request_id=3), None)


def test_frames_may_arrive_as_bytearray_or_memoryview() -> None:
    a, b = pair()
    (e1,) = b.receive(bytearray(a.send(Ping(request_id=1))))
    (e2,) = b.receive(memoryview(a.send(_store(b"m" * 200))))
    assert e1 == MessageReceived(Ping(request_id=1), None)
    assert isinstance(e2, MessageReceived) and e2.message == _store(b"m" * 200)


def test_an_empty_payload_fills_the_frame_exactly() -> None:
    a, b = pair()
    frame = a.send(_store(b""))
    assert len(frame) == 14 + int.from_bytes(frame[10:14], "big")
    (event,) = b.receive(frame)
    assert isinstance(event, MessageReceived) and event.message == _store(b"")


# --- limits ----------------------------------------------------------------------------------


def test_the_frame_limit_is_inclusive_on_both_sides() -> None:
    data = b"L" * 1000
    probe_a, _ = pair()
    size = len(probe_a.send(_store(data)))
    a, b = _lpair(Limits(max_frame_bytes=size))
    (event,) = b.receive(a.send(_store(data)))
    assert isinstance(event, MessageReceived)
    _raises("too_large", a.send, _store(data + b"L"), local=True)
    _c, d = _lpair(Limits(max_frame_bytes=size - 1))
    _raises("too_large", d.receive, probe_a.send(_store(data)))
    assert d.close_reason is not None and d.close_reason.startswith("too_large: ")


def test_a_sealed_message_over_the_senders_limit_is_a_local_error() -> None:
    a, _b = _lpair(Limits(max_frame_bytes=4096), seal_payloads=True)
    _raises("too_large", a.send, _store(b"s" * 5000), local=True)


def test_the_receivers_decode_limits_apply_inside_the_seal() -> None:
    a, b = _lpair(Limits(max_objects=50))  # encode() checks only the frame size
    parts = tuple(
        PacketPart(packet_id=bytes([i]) * 32, owner_tag=b"o" * 32, size_bytes=1) for i in range(16)
    )
    frame = a.send(StorePackets(request_id=1, parts=parts, data=b"a" * 16))
    with pytest.raises(RemoteProtocolError):
        b.receive(frame)


def test_a_handshake_frame_of_exactly_the_limit_is_decoded() -> None:
    b = make(Role.RESPONDER)
    b.start()
    frame = b"P" + b"\xc1" * (HANDSHAKE_MAX_FRAME_BYTES - 1)
    with pytest.raises(RemoteProtocolError) as info:
        b.receive(frame)
    assert info.value.code != "too_large"


# --- the remaining refusals and their codes ----------------------------------------------


def test_empty_and_one_byte_frames() -> None:
    _raises("truncated", make(Role.RESPONDER).receive, b"")
    err = _raises("malformed", make(Role.RESPONDER).receive, b"\x99")
    assert "0x99" in err.message


def test_a_sealed_frame_one_byte_short_of_a_tag_is_truncated_and_at_the_tag_is_tampered() -> None:
    a, b = pair()
    frame = a.send(Ping(request_id=1))
    _raises("truncated", b.receive, frame[: 10 + 16 - 1])
    a2, b2 = pair()
    frame = a2.send(Ping(request_id=1))
    _raises("tampered", b2.receive, frame[: 10 + 16])


def _detached(a: Session, body: bytes, payload: bytes, sealed_len: int | None = None) -> bytes:
    """A detached frame sealed with a's real key, with a chosen sealed length."""
    assert a._tx_key is not None
    counter = a._tx_counter
    a._tx_counter += 1
    real_len = len(body) + 16
    prefix = b"D" + bytes([a._tx_dir]) + counter.to_bytes(8, "big")
    aad = prefix + real_len.to_bytes(4, "big")
    sealed = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        body, aad, _nonce(counter), a._tx_key
    )
    claimed = real_len if sealed_len is None else sealed_len
    return prefix + claimed.to_bytes(4, "big") + sealed + payload


def _meta(payload: bytes) -> bytes:
    return len(payload).to_bytes(8, "big") + blake3.blake3(payload).digest()


def test_detached_header_lengths_are_checked_before_decrypting() -> None:
    payload = b"x" * 100
    body = _meta(payload) + encode(_store(b""))
    for claimed in (16 + 40 - 1, len(body) + 16 + len(payload) + 1):
        a, b = pair()
        _raises("truncated", b.receive, _detached(a, body, payload, claimed))
    a, b = pair()  # the smallest sealed length passes the length check and fails the seal
    _raises("tampered", b.receive, _detached(a, body, payload, 16 + 40))


def test_a_detached_payload_on_a_message_without_one_is_malformed() -> None:
    a, b = pair()
    payload = b"y" * 10
    err = _raises(
        "malformed", b.receive, _detached(a, _meta(payload) + encode(Ping(request_id=1)), payload)
    )
    assert "ping" in err.message


def test_the_payload_length_in_the_seal_must_match() -> None:
    a, b = pair()
    payload = b"z" * 10
    _raises(
        "truncated", b.receive, _detached(a, _meta(payload + b"!") + encode(_store(b"")), payload)
    )


def test_an_offer_echoing_our_nonce_alone_is_reflected() -> None:
    b = make(Role.RESPONDER)
    b.start()
    (own,) = b.data_to_send()
    nonce = decode(own[1:]).nonce  # type: ignore[attr-defined]
    fresh_key = sodium.crypto_kx_keypair()[0]
    _raises("reflected", b.receive, b"P" + encode(Offer(nonce=nonce, kx_public=fresh_key)))
    c = make(Role.RESPONDER)
    c.start()
    (own,) = c.data_to_send()
    kx = decode(own[1:]).kx_public  # type: ignore[attr-defined]
    _raises("reflected", c.receive, b"P" + encode(Offer(nonce=b"n" * 32, kx_public=kx)))


def test_a_degenerate_key_exchange_value_is_refused() -> None:
    b = make(Role.RESPONDER)
    b.start()
    _raises("bad_key", b.receive, b"P" + encode(Offer(nonce=b"n" * 32, kx_public=bytes(32))))


def test_a_second_offer_is_unexpected() -> None:
    a, b = make(Role.INITIATOR), make(Role.RESPONDER)
    a.start()
    b.start()
    (offer,) = a.data_to_send()
    b.receive(offer)
    err = _raises("unexpected", b.receive, offer)
    assert "hello_wait" in err.message


def _at_hello_wait(**overrides: object) -> tuple[Session, Session, Hello]:
    a, b = make(Role.INITIATOR), make(Role.RESPONDER)
    a.start()
    b.start()
    pump(a, b)
    pump(b, a)
    a.data_to_send()
    a._tx_counter = 0
    return a, b, attrs.evolve(a._hello(), **overrides)  # type: ignore[arg-type]


def test_another_protocol_version_is_refused() -> None:
    a, b, hello = _at_hello_wait(version=PROTOCOL_VERSION + 1, software="")
    a.version = PROTOCOL_VERSION + 1  # written in a version this node does not know
    err = _raises("unsupported_version", b.receive, a._seal(hello))
    assert f"{MIN_PROTOCOL_VERSION}-{PROTOCOL_VERSION}" in err.message


def test_a_message_before_the_hello_is_unexpected() -> None:
    a, b, _ = _at_hello_wait()
    _raises("unexpected", b.receive, a._seal(Ping(request_id=1)))


def test_a_hello_after_the_handshake_is_unexpected() -> None:
    a, b = pair()
    _raises("unexpected", b.receive, a._seal(a._hello()))


def test_local_misuse_has_its_own_codes() -> None:
    s = make(Role.INITIATOR)
    _raises("not_ready", s.send, Ping(request_id=1), local=True)
    s.start()
    _raises("state", s.start, local=True)
    a, b = pair()
    with pytest.raises(RemoteProtocolError):
        b.receive(b"\x99")
    _raises("closed", b.receive, a.send(Ping(request_id=1)), local=True)


# --- closing ------------------------------------------------------------------------------


def test_close_records_why_on_both_sides() -> None:
    a, b = pair()
    frame = a.close("shutdown", "bye")
    assert a.state is SessionState.CLOSED and a.close_reason == "bye"
    assert frame is not None
    b.receive(frame)
    assert b.close_reason == "peer closed: shutdown bye"
    c, _ = pair()
    c.close("shutdown")
    assert c.close_reason == "shutdown"


def test_close_before_the_handshake_sends_nothing() -> None:
    s = make(Role.INITIATOR)
    s.start()
    assert s.close() is None
    assert s.state is SessionState.CLOSED and s.close_reason == "normal"


def test_close_after_an_error_keeps_the_error() -> None:
    _a, b = pair()
    with pytest.raises(RemoteProtocolError):
        b.receive(b"\x99")
    reason = b.close_reason
    assert b.close("normal", "later") is None
    assert b.state is SessionState.ERROR and b.close_reason == reason
