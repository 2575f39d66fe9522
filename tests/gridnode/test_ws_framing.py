"""The one-copy websocket framer must build exactly wsproto's frames (masking.py)."""

from __future__ import annotations

import os

import pytest
import wsproto.frame_protocol as fp
from hypothesis import given, settings
from hypothesis import strategies as st

from gridnode.transport.masking import ORIGINAL_SERIALIZE, install, serialize_frame

_SIZES = st.sampled_from([0, 1, 3, 125, 126, 127, 513, 65535, 65536, 70001])


@settings(max_examples=200, deadline=None)
@given(
    size=_SIZES,
    seed=st.binary(min_size=8, max_size=8),
    client=st.booleans(),
    fin=st.booleans(),
    opcode=st.sampled_from([fp.Opcode.BINARY, fp.Opcode.TEXT, fp.Opcode.CONTINUATION]),
)
def test_same_frames_as_wsproto(
    size: int, seed: bytes, client: bool, fin: bool, opcode: fp.Opcode
) -> None:
    payload = (seed * (size // 8 + 1))[:size]
    key = seed[:4]
    real_urandom = os.urandom
    os.urandom = lambda n: key[:n]  # type: ignore[assignment]  # the same masking key for both
    try:
        protocol = fp.FrameProtocol(client=client, extensions=[])
        ours = serialize_frame(protocol, opcode, payload, fin)
        theirs = ORIGINAL_SERIALIZE(protocol, opcode, payload, fin)
    finally:
        os.urandom = real_urandom
    assert isinstance(ours, bytearray) and ours == theirs


def test_a_control_frame_over_125_bytes_is_refused_as_wsproto_does() -> None:
    protocol = fp.FrameProtocol(client=False, extensions=[])
    with pytest.raises(ValueError):
        serialize_frame(protocol, fp.Opcode.PING, b"p" * 126)


def test_masked_frames_round_trip_through_wsproto_and_keys_differ() -> None:
    install()
    sender = fp.FrameProtocol(client=True, extensions=[])
    receiver = fp.FrameProtocol(client=False, extensions=[])
    payload = os.urandom(300_001)
    first, second = sender.send_data(payload), sender.send_data(payload)
    assert first[10:14] != second[10:14]  # a fresh key per frame
    receiver.receive_bytes(bytes(first))
    (frame,) = list(receiver.received_frames())
    assert frame.payload == payload and frame.frame_finished


def test_install_replaces_the_framer() -> None:
    install()
    assert fp.FrameProtocol._serialize_frame is serialize_frame
