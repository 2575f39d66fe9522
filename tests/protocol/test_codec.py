"""Codec: round trips for every message type, golden bytes, and strict refusal."""

from __future__ import annotations

import json
import math
import tracemalloc
from typing import Any

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
from protocol._schema import MAX_DEPTH, TypeNode, decode_value, record_to_raw

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


def _sync_page_body() -> dict[str, object]:
    record = MemberRecord(
        node_id=b"n" * 32, address="127.0.0.1:1", lat=1.0, lon=2.0, signature=b"s" * 64
    )
    page = GossipSyncReply(sync_id=1, updates=(MemberUpdate(record=record, state="alive"),))
    return record_to_raw(page)


_REC = ("updates", 0, "record")


@pytest.mark.parametrize(
    ("path", "value", "where", "why"),
    [
        (("sync_id",), "x", "gossip_sync_reply.sync_id", "expected int"),
        ((*_REC, "node_id"), b"short", "gossip_sync_reply.updates[0].record.node_id", "below"),
        ((*_REC, "address"), "a" * 5000, "gossip_sync_reply.updates[0].record.address", "exceeds"),
        ((*_REC, "lat"), 1000.0, "gossip_sync_reply.updates[0].record.lat", "exceeds"),
        ((*_REC, "lat"), -1000.0, "gossip_sync_reply.updates[0].record.lat", "below"),
        ((*_REC, "signature"), None, "gossip_sync_reply.updates[0].record.signature", "missing"),
        ((*_REC, "zzz"), 1, "gossip_sync_reply.updates[0].record", "unknown field(s) 'zzz'"),
        (("updates", 0), [1], "gossip_sync_reply.updates[0]", "expected a map"),
        ((*_REC, "lat"), "x", "gossip_sync_reply.updates[0].record.lat", "expected float"),
        ((*_REC, "lat"), math.nan, "gossip_sync_reply.updates[0].record.lat", "finite"),
        ((*_REC, "lon"), -math.inf, "gossip_sync_reply.updates[0].record.lon", "finite"),
        ((*_REC, "address"), 5, "gossip_sync_reply.updates[0].record.address", "expected str"),
        ((*_REC, "labels"), "x", "gossip_sync_reply.updates[0].record.labels", "expected list"),
        ((*_REC, "labels"), [1], "gossip_sync_reply.updates[0].record.labels[0]", "expected str"),
        ((*_REC, "leaving"), 1, "gossip_sync_reply.updates[0].record.leaving", "expected bool"),
        ((*_REC, "signature"), "s", "gossip_sync_reply.updates[0].record.signature", "bytes"),
        # Passes the schema, refused by the attrs validator: blamed on the record.
        (("updates", 0, "state"), "bogus", "gossip_sync_reply.updates[0]", "'state' must be"),
    ],
)
def test_refusals_name_the_field_path(
    path: tuple[str | int, ...], value: object, where: str, why: str
) -> None:
    body = _sync_page_body()
    parent: Any = body
    for step in path[:-1]:
        parent = parent[step]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    with pytest.raises(RemoteProtocolError) as info:
        decode(_envelope("gossip_sync_reply", body))
    assert info.value.code == "bad_field"
    assert str(info.value).startswith(f"field {where}: "), str(info.value)
    assert why in str(info.value)


def test_unregistered_class_is_refused_with_a_code() -> None:
    @attrs.frozen
    class Rogue(Message):
        KIND = "rogue"

    with pytest.raises(LocalProtocolError) as info:
        encode(Rogue())
    assert info.value.code == "unknown_kind"

    @attrs.frozen
    class Nameless(Message):  # no KIND at all: the same clear error, not AttributeError
        pass

    with pytest.raises(LocalProtocolError) as info:
        encode(Nameless())
    assert info.value.code == "unknown_kind"


def test_byte_buffers_are_sent_as_bytes() -> None:
    plain = StorePacket(request_id=1, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=b"xyz")
    buffers = StorePacket(
        request_id=1,
        packet_id=bytearray(b"p" * 32),
        owner_tag=memoryview(b"o" * 32),
        data=bytearray(b"xyz"),
    )
    assert encode(buffers) == encode(plain)
    assert decode(encode(buffers)) == plain


def _nested(levels: int) -> tuple[TypeNode, object, object]:
    """An int inside ``levels`` lists: the raw value and what it decodes to."""
    node: TypeNode = TypeNode("int")
    raw: object = 7
    decoded: object = 7
    for _ in range(levels):
        node, raw, decoded = TypeNode("tuple", item=node), [raw], (decoded,)
    return node, raw, decoded


def test_nesting_limit_is_inclusive() -> None:
    node, raw, decoded = _nested(MAX_DEPTH)  # the int sits at depth MAX_DEPTH: allowed
    assert decode_value(raw, node, "f", None, depth=0, max_bytes=100) == decoded
    node, raw, _ = _nested(MAX_DEPTH + 1)
    with pytest.raises(RemoteProtocolError) as info:
        decode_value(raw, node, "f", None, depth=0, max_bytes=100)
    assert info.value.code == "bad_field"


def test_frame_limit_bounds_optional_bytes() -> None:
    node = TypeNode("optional", item=TypeNode("bytes"))
    assert decode_value(None, node, "f", None, depth=0, max_bytes=10) is None
    assert decode_value(b"x" * 10, node, "f", None, depth=0, max_bytes=10) == b"x" * 10
    with pytest.raises(RemoteProtocolError) as info:
        decode_value(b"x" * 11, node, "f", None, depth=0, max_bytes=10)
    assert info.value.code == "bad_field"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (msgpack.packb({"v": str(PROTOCOL_VERSION), "k": "ping", "b": {}}), "malformed"),
        (msgpack.packb({"v": PROTOCOL_VERSION, "k": 5, "b": {}}), "malformed"),
        # Only str map keys, and no extension types, even deep inside a body.
        (_envelope("ping", {1: 1}), "malformed"),
        (_envelope("ping", {"request_id": msgpack.ExtType(1, b"x")}), "malformed"),
        # A list's own bounds from the schema, not only the global list limit.
        (_envelope("store_packets", {"request_id": 1, "parts": [], "data": b""}), "bad_field"),
    ],
)
def test_more_bad_frames_are_refused_with_a_code(frame: bytes, code: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(frame)
    assert info.value.code == code


def test_object_budget_is_inclusive() -> None:
    frame = _envelope("ping", {"request_id": 1})  # two maps: 1 + 1 and 1 + 3 objects
    assert decode(frame, limits=Limits(max_objects=6)) == decode(frame)
    with pytest.raises(RemoteProtocolError) as info:
        decode(frame, limits=Limits(max_objects=5))
    assert info.value.code == "too_complex"
