"""Rule 6a: a batch whose sealed header certifies its payload ("C" frames).

A ``StorePackets`` header names every packet's id (its BLAKE3) and length, so the
session neither hashes the batch nor carries a digest; the packet store checks each
packet against its id.  These tests recompute the frame layout independently and try
the frames a hostile peer would send.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import blake3
import nacl.bindings as sodium
import pytest
from nacl.signing import SigningKey

from protocol import (
    Limits,
    LocalProtocolError,
    MessageReceived,
    PacketPart,
    Ping,
    RemoteProtocolError,
    Role,
    Session,
    StorePacket,
    StorePackets,
    decode,
    encode,
)

from .sessions import handshake, pair


def _nonce(counter: int) -> bytes:
    return bytes(16) + counter.to_bytes(8, "big")


def _batch(packets: Sequence[bytes], data: bytes = b"") -> StorePackets:
    parts = tuple(
        PacketPart(packet_id=blake3.blake3(p).digest(), owner_tag=b"o" * 32, size_bytes=len(p))
        for p in packets
    )
    return StorePackets(request_id=7, parts=parts, data=data)


def _raises(code: str, fn: object, *args: object) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.code == code, info.value
    return info.value


def _certified(a: Session, body: bytes, payload: bytes) -> bytes:
    """A "C" frame sealed with a's real key around ``body`` (meta + envelope)."""
    assert a._tx_key is not None
    counter = a._tx_counter
    a._tx_counter += 1
    sealed_len = len(body) + 16
    aad = b"C" + bytes([a._tx_dir]) + counter.to_bytes(8, "big") + sealed_len.to_bytes(4, "big")
    sealed = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        body, aad, _nonce(counter), a._tx_key
    )
    return aad + sealed + payload


def test_a_batch_travels_as_a_c_frame_without_a_digest_joined_once() -> None:
    a, b = pair()
    packets = [b"first" * 100, b"second" * 200, b"third" * 300]
    msg = _batch(packets)
    frame = a.send(msg, payload=packets)
    assert frame[:2] == b"CI"
    sealed_len = int.from_bytes(frame[10:14], "big")
    header = encode(msg)
    assert sealed_len == 8 + len(header) + 16  # a length, no digest
    payload = b"".join(packets)
    assert len(frame) == 14 + sealed_len + len(payload) and frame.endswith(payload)
    assert a._tx_key is not None
    body = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        frame[14 : 14 + sealed_len], frame[:14], _nonce(frame[9]), a._tx_key
    )
    assert body[:8] == len(payload).to_bytes(8, "big")
    assert decode(body[8:]) == msg
    (event,) = b.receive(frame)
    # The session vouches for nothing beyond the length: no digest is handed on.
    assert event == MessageReceived(attrs.evolve(msg, data=payload), None)


def test_a_batch_with_its_data_in_the_field_is_the_same_frame() -> None:
    packets = [b"x" * 10, b"y" * 20]
    a1, _ = pair()
    a2, b2 = pair()
    whole = a1.send(_batch(packets, b"".join(packets)))
    pieces = a2.send(_batch(packets), payload=packets)
    assert whole[:2] == pieces[:2] == b"CI" and len(whole) == len(pieces)
    (event,) = b2.receive(pieces)
    assert isinstance(event, MessageReceived) and isinstance(event.message, StorePackets)
    assert event.message.data == b"x" * 10 + b"y" * 20


def test_pieces_on_a_sealed_link_travel_inside_the_aead() -> None:
    a, b = pair(require_sealed=True)
    packets = [b"s" * 50, b"t" * 60]
    frame = a.send(_batch(packets), payload=packets)
    assert frame[:1] == b"S" and b"s" * 50 not in frame
    (event,) = b.receive(frame)
    assert event == MessageReceived(_batch(packets, b"".join(packets)), None)


def test_pieces_need_an_empty_detached_field() -> None:
    a, _ = pair()
    with pytest.raises(LocalProtocolError):
        a.send(_batch([b"a"], b"a"), payload=[b"a"])
    with pytest.raises(LocalProtocolError):
        single = StorePacket(request_id=1, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=b"q")
        a.send(single, payload=[b"q"])


def test_a_c_frame_must_carry_a_message_whose_header_certifies_its_payload() -> None:
    """A lone StorePacket names one id but the session is what checks its digest: it may
    not skip that by arriving as a "C" frame."""
    a, b = pair()
    store = StorePacket(request_id=1, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=b"")
    payload = b"unchecked"
    err = _raises(
        "malformed",
        b.receive,
        _certified(a, len(payload).to_bytes(8, "big") + encode(store), payload),
    )
    assert "store_packet" in err.message


def test_a_c_frame_whose_payload_length_lies_is_truncated() -> None:
    a, b = pair()
    packets = [b"1" * 40, b"2" * 40]
    header = encode(_batch(packets))
    for declared in (79, 81):
        a, b = pair()
        _raises(
            "truncated",
            b.receive,
            _certified(a, declared.to_bytes(8, "big") + header, b"".join(packets)),
        )


def test_a_c_frame_shorter_than_its_length_field_is_truncated() -> None:
    a, b = pair()
    frame = a.send(_batch([b"q" * 30]), payload=[b"q" * 30])
    cut = frame[:10] + (7 + 16).to_bytes(4, "big") + frame[14:]  # sealed part under 8 + tag
    _raises("truncated", b.receive, cut)


def test_a_changed_batch_payload_reaches_the_store_unverified_and_a_changed_header_fails() -> None:
    """The session binds the length only: a flipped payload byte is for the packet store
    to refuse (its id no longer matches, tests/gridnode/test_node_inproc.py); a flipped
    byte of the sealed header is refused here."""
    packets = [b"m" * 64]
    a, b = pair()
    frame = bytearray(a.send(_batch(packets), payload=packets))
    frame[-1] ^= 1
    (event,) = b.receive(bytes(frame))
    assert isinstance(event, MessageReceived) and event.payload_digest is None
    assert isinstance(event.message, StorePackets)
    assert blake3.blake3(event.message.data).digest() != event.message.parts[0].packet_id
    a, b = pair()
    frame = bytearray(a.send(_batch(packets), payload=packets))
    frame[20] ^= 1
    _raises("tampered", b.receive, bytes(frame))


def test_work_bytes_leave_out_only_a_certified_payload() -> None:
    a, _ = pair()
    packets = [b"w" * 100_000]
    frame = a.send(_batch(packets), payload=packets)
    assert Session.work_bytes(frame) == int.from_bytes(frame[10:14], "big") < 1000
    single = a.send(
        StorePacket(request_id=1, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=packets[0])
    )
    assert Session.work_bytes(single) == len(single)
    lying = frame[:10] + (1 << 31).to_bytes(4, "big") + frame[14:]
    assert Session.work_bytes(lying) == len(lying)


def test_a_message_too_large_to_send_spends_no_counter() -> None:
    """The link answers an over-limit reply with an Error on the same session: the
    refused frame must not leave a gap in the counters ("reordered" at the peer)."""

    def session(role: Role) -> Session:
        return Session(
            role=role,
            grid_id=b"test-grid-000001",
            signing_key=SigningKey.generate(),
            listen_address="127.0.0.1:1",
            limits=Limits(max_frame_bytes=4096),
            seal_payloads=True,
        )

    a, b = session(Role.INITIATOR), session(Role.RESPONDER)
    handshake(a, b)
    with pytest.raises(LocalProtocolError):
        a.send(_batch([b"x" * 5000]), payload=[b"x" * 5000])  # sealed: too large to encode
    a2, b2 = pair()
    a2.limits = Limits(max_frame_bytes=4096)
    with pytest.raises(LocalProtocolError):
        a2.send(_batch([b"y" * 5000]), payload=[b"y" * 5000])  # detached: too large
    for sender, receiver in ((a, b), (a2, b2)):
        (event,) = receiver.receive(sender.send(Ping(request_id=9)))
        assert event == MessageReceived(Ping(request_id=9), None)
