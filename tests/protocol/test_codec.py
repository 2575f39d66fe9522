"""Codec: round trips for every message type, golden bytes, and strict refusal."""

from __future__ import annotations

import json
import tracemalloc

import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings

from protocol import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Error,
    Hello,
    Limits,
    LocalProtocolError,
    Message,
    RemoteProtocolError,
    StorePacket,
    decode,
    encode,
)
from protocol._gossip import (
    MAX_LABELS,
    MAX_RECORDS_PER_MESSAGE,
    GossipSyncReply,
    MemberRecord,
    MemberUpdate,
)

from .make_vectors import VECTORS, build
from .schema_tools import example_record, message_strategy


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message_strategy())
def test_every_message_round_trips(msg: Message) -> None:
    assert decode(encode(msg)) == msg


def test_golden_vectors_pin_the_wire_format() -> None:
    stored = json.loads(VECTORS.read_text())
    current = build()
    missing = sorted(set(current) - set(stored))
    assert not missing, f"new message kinds without vectors: {missing} (run make_vectors)"
    for kind, hex_bytes in stored.items():
        assert kind in MESSAGE_TYPES, f"vector for a message kind that no longer exists: {kind}"
        assert current[kind] == hex_bytes, f"the encoding of {kind} changed"
        assert decode(bytes.fromhex(hex_bytes)) == example_record(MESSAGE_TYPES[kind])


def _envelope(kind: str, body: object, version: int = PROTOCOL_VERSION) -> bytes:
    return msgpack.packb({"v": version, "k": kind, "b": body}, use_bin_type=True)


def _hello_body() -> dict[str, object]:
    return {
        "grid_id": b"g" * 16,
        "node_id": b"n" * 32,
        "version": 1,
        "listen_address": "127.0.0.1:1",
        "software": "",
        "signature": b"s" * 64,
    }


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (_envelope("no_such_kind", {}), "unknown_kind"),
        (_envelope("hello", _hello_body(), version=99), "unsupported_version"),
        (_envelope("hello", {**_hello_body(), "version": "1"}), "bad_field"),
        (_envelope("hello", {**_hello_body(), "version": True}), "bad_field"),
        (
            _envelope("hello", {k: v for k, v in _hello_body().items() if k != "signature"}),
            "bad_field",
        ),
        (_envelope("hello", {**_hello_body(), "extra": 1}), "bad_field"),
        (_envelope("hello", {**_hello_body(), "node_id": b"short"}), "bad_field"),
        (_envelope("hello", {**_hello_body(), "listen_address": "a" * 5000}), "bad_field"),
        (_envelope("hello", {**_hello_body(), "grid_id": "text not bytes"}), "bad_field"),
        (_envelope("hello", [1, 2, 3]), "bad_field"),
        (_envelope("ping", {"request_id": -1}), "bad_field"),
        (_envelope("ping", {"request_id": 1.5}), "bad_field"),
        (msgpack.packb([1, "hello", {}]), "malformed"),
        (msgpack.packb({"v": 1, "k": "ping"}), "malformed"),
        (b"\xc1", "malformed"),
        (b"", "malformed"),
        (msgpack.packb({"v": 1, "k": "ping", "b": {"request_id": 1}}) + b"\x00", "malformed"),
    ],
)
def test_bad_frames_are_refused_with_a_code(frame: bytes, code: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(frame)
    assert info.value.code == code


def test_frame_limit_is_checked_before_unpacking() -> None:
    msg = StorePacket(request_id=1, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=b"x" * 5000)
    frame = encode(msg)
    with pytest.raises(RemoteProtocolError) as info:
        decode(frame, limits=Limits(max_frame_bytes=4096))
    assert info.value.code == "too_large"
    assert decode(frame, limits=Limits(max_frame_bytes=len(frame))) == msg


def test_long_list_is_refused() -> None:
    # An array header claiming more items than allowed is refused before allocation.
    frame = _envelope("ping", {"request_id": 1})[:-1] + b"\xdd\xff\xff\xff\xff"
    with pytest.raises(RemoteProtocolError):
        decode(frame, limits=Limits(max_list_len=1000))


def test_our_own_bad_message_is_a_local_error() -> None:
    bad = attrs.evolve(Error(request_id=1, code="x", message=""), code="c" * 100)
    with pytest.raises(LocalProtocolError):
        encode(bad)
    with pytest.raises(LocalProtocolError):
        encode(
            Hello(
                grid_id=b"g" * 16,
                node_id=b"short",
                version=1,
                listen_address="a",
                signature=b"s" * 64,
            )
        )


def test_unregistered_class_cannot_be_sent() -> None:
    @attrs.frozen
    class Rogue(Message):
        KIND = "rogue"

    with pytest.raises(LocalProtocolError):
        encode(Rogue())


def _nested_empty_arrays(n_outer: int, n_inner: int) -> bytes:
    """A frame of arrays of empty arrays: one byte each on the wire, ~64 in memory."""
    inner = b"\xdc" + n_inner.to_bytes(2, "big") + b"\x90" * n_inner
    body = b"\xdc" + n_outer.to_bytes(2, "big") + inner * n_outer
    return b"\x83\xa1v" + bytes([PROTOCOL_VERSION]) + b"\xa1k\xa4ping\xa1b" + body


def test_a_frame_of_nested_empty_arrays_is_refused_cheaply() -> None:
    frame = _nested_empty_arrays(60_000, 30)  # 1.9 MiB: cost 140 MiB and 1.6 s before
    assert len(frame) > 1_800_000
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError) as info:
            decode(frame)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.code == "too_complex"
    assert peak < 10 * 1024 * 1024


def test_the_largest_legitimate_sync_page_fits_the_object_budget() -> None:
    record = MemberRecord(
        node_id=b"n" * 32,
        address="127.0.0.1:1",
        lat=1.0,
        lon=2.0,
        labels=tuple(f"l{i}" for i in range(MAX_LABELS)),
        signature=b"s" * 64,
    )
    page = GossipSyncReply(
        sync_id=1,
        updates=tuple(
            MemberUpdate(record=attrs.evolve(record, incarnation=i), state="alive")
            for i in range(MAX_RECORDS_PER_MESSAGE)
        ),
    )
    assert decode(encode(page)) == page
