"""A link's websocket receives large binary frames whole, copied once (masking.py,
``receive_whole_frames``): the same messages as trio-websocket's pieces-and-join, the
same limits, and buffers that are never written once handed on."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio_websocket
import wsproto.frame_protocol as fp
from hypothesis import given, settings
from hypothesis import strategies as st

from gridnode.transport import masking
from gridnode.transport.masking import (
    WHOLE_FRAME_MIN_BYTES,
    WholeFrame,
    frame_from_pieces,
    gathered_bytes,
    install,
    receive_whole_frames,
    send_pieces,
)
from protocol import MessageReceived, RemoteProtocolError, StorePacket

from ..protocol.sessions import pair
from .wspair import websocket_pair

_BIG = WHOLE_FRAME_MIN_BYTES + 4099  # not a multiple of 4: the unmasking's tail is used


def _decoder(*, client: bool, whole_max: int | None) -> fp.FrameProtocol:
    install()
    proto = fp.FrameProtocol(client=client, extensions=[])
    if whole_max is not None:
        proto._frame_decoder._gridnode_whole_max = whole_max  # type: ignore[attr-defined]
    return proto


def _wire(payloads: Sequence[bytes], *, masked: bool) -> bytes:
    """Whole binary messages, a ping between the first two, then a close."""
    sender = fp.FrameProtocol(client=masked, extensions=[])
    out = bytearray()
    for index, payload in enumerate(payloads):
        out += frame_from_pieces([payload], client=masked)
        if index == 0:
            out += sender.ping(b"ping!")
    out += sender.close(fp.CloseReason.NORMAL_CLOSURE, "bye")
    return bytes(out)


def _p(frame: fp.Frame) -> Any:
    """A frame's payload: wsproto types it as text or a close reason too."""
    return frame.payload


def _feed(proto: fp.FrameProtocol, chunks: Sequence[bytes]) -> list[fp.Frame]:
    frames: list[fp.Frame] = []
    for chunk in chunks:
        proto.receive_bytes(chunk)
        frames += proto.received_frames()
    return frames


def _payloads() -> list[bytes]:
    return [os.urandom(_BIG), os.urandom(300), os.urandom(_BIG + 1), os.urandom(_BIG + 2)]


@pytest.mark.parametrize("masked", [True, False])
def test_a_frame_arriving_one_byte_at_a_time_comes_out_whole_and_intact(masked: bool) -> None:
    """Every byte boundary is a cut: the header's, the payload's, the next frame's."""
    payloads = _payloads()
    wire = _wire(payloads, masked=masked)
    frames = _feed(
        _decoder(client=not masked, whole_max=1 << 20),
        [wire[i : i + 1] for i in range(len(wire))],
    )
    data = [f for f in frames if not f.opcode.iscontrol()]
    large = [f for f in data if type(_p(f)) is WholeFrame]
    assert [bytes(_p(f)) for f in large] == [p for p in payloads if len(p) > 300]
    assert all(f.message_finished and f.frame_finished for f in large)  # each in one
    assert b"".join(bytes(_p(f)) for f in data) == b"".join(payloads)
    assert [f.opcode for f in frames if f.opcode.iscontrol()] == [fp.Opcode.PING, fp.Opcode.CLOSE]


@settings(max_examples=60, deadline=None)
@given(
    masked=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=4 * _BIG), max_size=12),
)
def test_frames_cut_anywhere_decode_as_wsproto_decodes_them(masked: bool, cuts: list[int]) -> None:
    payloads = _payloads()
    wire = _wire(payloads, masked=masked)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    chunks = [wire[a:b] for a, b in itertools.pairwise(points)]
    whole = _feed(_decoder(client=not masked, whole_max=1 << 20), chunks)
    pieces = _feed(_decoder(client=not masked, whole_max=None), chunks)

    def messages(frames: list[fp.Frame]) -> list[Any]:
        out: list[Any] = []
        joined = b""
        for f in frames:
            if f.opcode.iscontrol():
                out.append((f.opcode, bytes(_p(f)) if f.opcode is fp.Opcode.PING else None))
                continue
            joined += bytes(_p(f))
            if f.message_finished:
                out.append(joined)
                joined = b""
        return out

    assert (
        messages(whole)
        == messages(pieces)
        == [
            payloads[0],
            (fp.Opcode.PING, b"ping!"),
            *payloads[1:],
            (fp.Opcode.CLOSE, None),
        ]
    )


def test_a_handed_on_frame_is_never_written_again() -> None:
    """The decoder makes a buffer per frame: the link keeps views of one frame (the
    session's payload) while the next arrives, masked with another key."""
    payloads = [os.urandom(_BIG) for _ in range(3)]
    wire = _wire(payloads, masked=True)
    proto = _decoder(client=False, whole_max=1 << 20)
    proto.receive_bytes(wire[: len(wire) // 3])
    first = next(f for f in proto.received_frames() if f.opcode is fp.Opcode.BINARY)
    kept = memoryview(_p(first))[10:]  # as the session slices a detached payload
    snapshot = bytes(kept)
    rest = _feed(proto, [wire[len(wire) // 3 :]])
    assert kept.tobytes() == snapshot == payloads[0][10:]
    assert all(_p(f) is not _p(first) for f in rest)
    assert [bytes(_p(f)) for f in rest if f.opcode is fp.Opcode.BINARY] == payloads[1:]


def test_frames_over_the_limit_or_under_the_threshold_come_in_pieces() -> None:
    """A frame over the limit is not gathered: trio-websocket counts its pieces and
    refuses it as it always did."""
    payload = os.urandom(3 * WHOLE_FRAME_MIN_BYTES)
    wire = frame_from_pieces([payload], client=True)
    proto = _decoder(client=False, whole_max=2 * WHOLE_FRAME_MIN_BYTES)
    frames = _feed(proto, [bytes(wire[:70_000]), bytes(wire[70_000:])])
    assert len(frames) == 2 and not any(type(_p(f)) is WholeFrame for f in frames)
    assert b"".join(bytes(_p(f)) for f in frames) == payload
    small = frame_from_pieces([b"s" * (WHOLE_FRAME_MIN_BYTES - 1)], client=True)
    proto = _decoder(client=False, whole_max=1 << 20)
    (frame,) = _feed(proto, [bytes(small)])
    assert type(_p(frame)) is not WholeFrame


async def _serve_and_dial(
    limit: int, send: list[bytes]
) -> tuple[list[bytes], list[WholeFrame], int | None, bool]:
    """A real websocket on 127.0.0.1 whose server end receives whole frames (as
    ``Transport._make_link`` asks) of at most ``limit`` bytes; its client sends ``send``.
    Returns what the server got, the ``WholeFrame`` buffers among it, the close code if
    the server's end was closed, and whether ``receive_whole_frames`` took."""
    got: list[bytes] = []
    kept: list[WholeFrame] = []
    closed: list[int | None] = []
    async with trio.open_nursery() as nursery:
        server, client = await websocket_pair(nursery)
        server._max_message_size = limit
        enabled = receive_whole_frames(server)

        async def receive() -> None:
            try:
                for _ in send:
                    message = await server.get_message()
                    assert isinstance(message, bytes | bytearray)
                    got.append(bytes(message))
                    if isinstance(message, WholeFrame):
                        kept.append(message)
            except trio_websocket.ConnectionClosed as exc:
                closed.append(exc.reason.code if exc.reason else None)
                await server._stream.aclose()  # as a link does: the sender stops blocking

        with trio.fail_after(30):
            async with trio.open_nursery() as transfer:
                transfer.start_soon(receive)
                for message in send:
                    try:
                        await send_pieces(client, [message[:1000], message[1000:]])
                    except (trio_websocket.ConnectionClosed, trio.BrokenResourceError):
                        break
            for end in (client, server):
                with trio.move_on_after(2):  # a refusing server stopped reading: no reply
                    await end.aclose()
                await end._stream.aclose()  # the closing handshake may leave it to the GC
    return got, kept, closed[0] if closed else None, enabled


async def test_a_real_websocket_hands_the_link_each_frame_once() -> None:
    """Also pins the trio-websocket and wsproto internals the module patches: if they
    change, ``receive_whole_frames`` says no and this fails."""
    sent = [os.urandom(_BIG) for _ in range(4)]  # alike: a reused buffer would show
    got, kept, closed, enabled = await _serve_and_dial(1 << 20, sent)
    assert enabled and closed is None
    assert got == sent
    assert len(kept) == 4 and len({id(k) for k in kept}) == 4
    assert [bytes(k) for k in kept] == sent  # none written after it was handed on


async def test_a_real_websocket_still_refuses_a_message_over_its_limit() -> None:
    sent = [os.urandom(_BIG), os.urandom(4 * _BIG)]
    got, _kept, closed, enabled = await _serve_and_dial(2 * _BIG, sent)
    assert enabled
    assert got == sent[:1]
    assert closed == 1009  # trio-websocket's "message too big"


def test_a_whole_frame_with_a_wrong_payload_digest_is_still_refused() -> None:
    """The session hashes the detached payload in the link's buffer and copies it out
    only once it matches its sealed digest."""
    a, b = pair()
    data = os.urandom(_BIG)
    msg = StorePacket(request_id=1, packet_id=b"p" * 32, owner_tag=b"o" * 32, data=data)
    frame = WholeFrame(a.send(msg))
    (event,) = b.receive(frame)
    assert isinstance(event, MessageReceived) and event.message == msg
    assert type(event.message.data) is bytes
    frame[:] = b"\0" * len(frame)  # the link's buffer is gone: the message is not
    assert event.message.data == data
    tampered = WholeFrame(a.send(msg))
    tampered[-1] ^= 1
    with pytest.raises(RemoteProtocolError) as info:
        b.receive(tampered)
    assert info.value.code == "tampered"


def test_install_patches_what_receive_whole_frames_needs() -> None:
    install()
    assert fp.FrameDecoder.receive_bytes is masking.receive_bytes
    assert trio_websocket.WebSocketConnection._handle_message_event is (
        masking.handle_message_event
    )


def test_bytes_gathered_for_a_whole_frame_stay_in_the_read_budget() -> None:
    """The link settles its read budget (metered.py) when trio-websocket holds no piece
    of a message: the bytes of a frame being gathered whole must still count."""
    proto = _decoder(client=False, whole_max=1 << 20)
    ws: Any = SimpleNamespace(_wsproto=SimpleNamespace(connection=SimpleNamespace(_proto=proto)))
    wire = bytes(frame_from_pieces([os.urandom(_BIG)], client=True))
    header = len(wire) - _BIG
    assert _feed(proto, [wire[: header + 1000]]) == []
    assert gathered_bytes(ws) == 1000
    assert _feed(proto, [wire[header + 1000 : -1]]) == []
    assert gathered_bytes(ws) == _BIG - 1
    (frame,) = _feed(proto, [wire[-1:]])
    assert len(_p(frame)) == _BIG and gathered_bytes(ws) == 0


def test_a_frame_trickled_a_byte_per_read_is_not_an_object_per_byte() -> None:
    """Memory held for a frame in gathering is its bytes, not millions of objects."""
    proto = _decoder(client=False, whole_max=1 << 20)
    payload = os.urandom(_BIG)
    wire = bytes(frame_from_pieces([payload], client=True))
    header = len(wire) - _BIG
    _feed(proto, [wire[:header]] + [wire[i : i + 1] for i in range(header, len(wire) - 1)])
    chunks = proto._frame_decoder._gridnode_chunks  # type: ignore[attr-defined]
    assert 1 <= len(chunks) <= 3
    (frame,) = _feed(proto, [wire[-1:]])
    assert _p(frame) == payload


def test_frames_after_a_whole_frame_in_the_same_read_are_copied_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 1 MiB read holds several 256 KiB packet frames: the bytes after the first are
    not appended to wsproto's buffer (and copied again for each frame after it), but
    go to the next frame's chunks; only its header passes through the buffer."""
    fed: list[int] = []
    feed = fp.Buffer.feed

    def counted(self: fp.Buffer, data: bytes) -> None:
        fed.append(len(data))
        feed(self, data)

    monkeypatch.setattr(fp.Buffer, "feed", counted)
    payloads = [os.urandom(_BIG + i) for i in range(4)]
    wire = b"".join(bytes(frame_from_pieces([p], client=True)) for p in payloads)
    proto = _decoder(client=False, whole_max=1 << 20)
    ws: Any = SimpleNamespace(_wsproto=SimpleNamespace(connection=SimpleNamespace(_proto=proto)))
    cut = len(wire) - 5000
    frames = _feed(proto, [wire[:cut]])
    assert [bytes(_p(f)) for f in frames] == payloads[:3]
    assert gathered_bytes(ws) == _BIG + 3 - 5000  # the fourth frame's bytes so far
    frames = _feed(proto, [wire[cut:]])
    assert [bytes(_p(f)) for f in frames] == payloads[3:]
    assert sum(fed) <= 4 * 14
