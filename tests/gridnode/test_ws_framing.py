"""The one-copy websocket framer must build exactly wsproto's frames (masking.py)."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
import trio
import wsproto.frame_protocol as fp
from hypothesis import given, settings
from hypothesis import strategies as st

from gridnode.transport import masking
from gridnode.transport.masking import (
    ORIGINAL_PROCESS_BUFFER,
    ORIGINAL_SERIALIZE,
    frame_buffers,
    frame_from_pieces,
    install,
    process_buffer,
    send_pieces,
    serialize_frame,
)

from .wspair import websocket_pair

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


@settings(max_examples=200, deadline=None)
@given(
    size=_SIZES,
    seed=st.binary(min_size=8, max_size=8),
    client=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=70001), max_size=5),
)
def test_frames_from_pieces_are_wsproto_frames_of_the_joined_payload(
    size: int, seed: bytes, client: bool, cuts: list[int]
) -> None:
    """Pieces of any length (so the masking key turns mid-word at each seam) give the
    bytes wsproto would send for the whole payload, also from memoryviews."""
    payload = bytes((seed * (size // 8 + 1))[:size])
    points = sorted({c % (size + 1) for c in cuts} | {0, size})
    view = memoryview(payload)
    pieces = [
        view[a:b] if i % 2 else payload[a:b] for i, (a, b) in enumerate(itertools.pairwise(points))
    ]
    key = seed[:4]
    real_urandom = os.urandom
    os.urandom = lambda n: key[:n]  # type: ignore[assignment]  # the same masking key for both
    try:
        ours = frame_from_pieces(pieces, client=client)
        gathered = frame_buffers(pieces, client=client)
        theirs = ORIGINAL_SERIALIZE(
            fp.FrameProtocol(client=client, extensions=[]), fp.Opcode.BINARY, payload, True
        )
    finally:
        os.urandom = real_urandom
    assert ours == theirs
    assert b"".join(gathered) == theirs
    if not client:  # an unmasked frame's payload is the pieces themselves, not copies
        sent = [p for p in pieces if len(p)]
        assert len(gathered) == 1 + len(sent)
        assert all(g is p for g, p in zip(gathered[1:], sent, strict=True))


def test_a_frame_from_pieces_round_trips_through_wsproto() -> None:
    receiver = fp.FrameProtocol(client=False, extensions=[])
    pieces = [os.urandom(n) for n in (10, 262_147, 1, 300_001)]
    receiver.receive_bytes(bytes(frame_from_pieces(pieces, client=True)))
    (frame,) = list(receiver.received_frames())
    assert frame.payload == b"".join(pieces) and frame.frame_finished


def _frames_out(decoder: fp.FrameDecoder, process: Callable[[Any], Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for _ in range(10_000):  # bounded: a few frames per feed
        frame = process(decoder)
        if frame is None:
            return out
        out.append(
            (frame.opcode, bytes(frame.payload), frame.frame_finished, frame.message_finished)
        )
    raise AssertionError("the decoder never ran dry")


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(_SIZES, min_size=1, max_size=4),
    seed=st.binary(min_size=8, max_size=8),
    client=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=300_000), max_size=6),
)
def test_received_frames_are_wsproto_frames(
    sizes: list[int], seed: bytes, client: bool, cuts: list[int]
) -> None:
    """The one-copy ``process_buffer`` yields what wsproto's yields, frame for frame,
    whatever the sizes, the masking (a server receives masked frames) and the points at
    which the bytes arrive: a data message in fragments, a ping and a close among them."""
    install()
    sender = fp.FrameProtocol(client=not client, extensions=[])
    wire = bytearray()
    for index, size in enumerate(sizes):
        payload = (seed * (size // 8 + 1))[:size]
        wire += sender.send_data(payload, fin=index == len(sizes) - 1)
        if index == 0:
            wire += sender.ping(seed[:5])
    wire += sender.close(fp.CloseReason.NORMAL_CLOSURE, "bye")
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    ours = fp.FrameDecoder(client=client, extensions=[])
    theirs = fp.FrameDecoder(client=client, extensions=[])
    got: list[tuple[Any, ...]] = []
    expected: list[tuple[Any, ...]] = []
    for start, stop in itertools.pairwise(points):
        ours.receive_bytes(bytes(wire[start:stop]))
        theirs.receive_bytes(bytes(wire[start:stop]))
        got += _frames_out(ours, process_buffer)
        expected += _frames_out(theirs, ORIGINAL_PROCESS_BUFFER)
    assert got == expected
    assert b"".join(
        f[1] for f in got if f[0] in (fp.Opcode.BINARY, fp.Opcode.CONTINUATION)
    ) == b"".join((seed * (size // 8 + 1))[:size] for size in sizes)


def test_installed_decoder_serves_a_real_frame_protocol() -> None:
    install()
    assert fp.FrameDecoder.process_buffer is process_buffer
    receiver = fp.FrameProtocol(client=False, extensions=[])
    payload = os.urandom(200_003)
    wire = bytes(frame_from_pieces([payload], client=True))
    receiver.receive_bytes(wire[:70_000])
    receiver.receive_bytes(wire[70_000:])
    frames = list(receiver.received_frames())
    assert (
        b"".join(f.payload for f in frames if isinstance(f.payload, bytes | bytearray)) == payload
    )
    assert frames[-1].message_finished


@pytest.mark.parametrize("client", [False, True])
async def test_send_pieces_writes_whole_frames_through_a_small_socket_buffer(
    client: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a real websocket on 127.0.0.1 whose send buffer is far smaller than a frame,
    so ``sendmsg`` writes each frame in many partial writes: every message arrives whole
    and in order, from the gathered writes of a server's frames and the masked ones of
    a client's.  No frame is joined into one buffer on the way (issue 11)."""

    def joined(*args: Any, **kwargs: Any) -> bytearray:
        raise AssertionError("a socket stream's frame was joined before sending")

    monkeypatch.setattr(masking, "frame_from_pieces", joined)
    messages = [
        [os.urandom(n) for n in sizes] for sizes in ((37,), (200, 1_000_003), (5, 0, 70_001))
    ]
    async with trio.open_nursery() as nursery:
        server, client_end = await websocket_pair(nursery)
        sender, receiver = (client_end, server) if client else (server, client_end)
        sender._stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        got: list[bytes] = []

        async def receive() -> None:
            for _ in messages:
                got.append(bytes(await receiver.get_message()))

        async with trio.open_nursery() as transfer:
            transfer.start_soon(receive)
            for pieces in messages:
                await send_pieces(sender, pieces)
        for end in (sender, receiver):
            await end.aclose()
            await end._stream.aclose()  # the closing handshake may leave it to the GC
    assert got == [b"".join(pieces) for pieces in messages]
