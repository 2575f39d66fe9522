"""Random and mutated bytes give only typed errors: no crash, no hang, no other exception."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    Limits,
    LocalProtocolError,
    Message,
    Ping,
    ProtocolError,
    RemoteProtocolError,
    Role,
    StorePacket,
    decode,
    encode,
)

from .schema_tools import message_strategy
from .sessions import make, pair

LIMITS = Limits(max_frame_bytes=1 << 16, max_list_len=1000)


def _decode_is_safe(data: bytes) -> None:
    try:
        msg = decode(data, limits=LIMITS)
    except RemoteProtocolError:
        return
    assert isinstance(msg, Message)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_give_typed_errors(data: bytes) -> None:
    _decode_is_safe(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message_strategy(), st.randoms(use_true_random=False))
def test_mutated_valid_frames_only_give_typed_errors(msg: Message, rnd: random.Random) -> None:
    frame = bytearray(encode(msg))
    for _ in range(rnd.randint(1, 8)):
        op = rnd.randrange(4)
        pos = rnd.randrange(len(frame)) if frame else 0
        if op == 0 and frame:
            frame[pos] = rnd.randrange(256)
        elif op == 1:
            frame.insert(pos, rnd.randrange(256))
        elif op == 2 and frame:
            del frame[pos]
        else:
            frame = frame[: rnd.randrange(len(frame) + 1)]
    _decode_is_safe(bytes(frame))


def test_nested_depth_bombs_are_refused() -> None:
    bomb = b"\x91" * 100_000 + b"\x00"  # a list inside a list inside ... 100k deep
    _decode_is_safe(bomb)
    _decode_is_safe(b"\x81\xa1b" * 50_000 + b"\xc0")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["start", "ready"]))
def test_session_survives_garbage(data: bytes, when: str) -> None:
    if when == "start":
        session = make(Role.RESPONDER)
        session.start()
    else:
        _, session = pair()
    try:
        session.receive(data)
    except RemoteProtocolError:
        assert session.close_reason
    except LocalProtocolError:  # pragma: no cover - would mean the state machine misjudged
        raise


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=255),
    st.booleans(),
)
def test_session_detects_any_single_byte_change(position: int, value: int, big: bool) -> None:
    a, b = pair()
    msg: Message = (
        StorePacket(request_id=1, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=b"d" * 4000)
        if big
        else Ping(request_id=3)
    )
    frame = bytearray(a.send(msg))
    position %= len(frame)
    if frame[position] == value:
        return
    frame[position] = value
    try:
        b.receive(bytes(frame))
    except ProtocolError:
        return
    raise AssertionError("a modified frame was accepted")
