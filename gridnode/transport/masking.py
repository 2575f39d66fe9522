"""WebSocket frame masking in C (numpy) instead of wsproto's pure-Python loop.

Every client-to-server websocket frame is XOR-masked (RFC 6455 5.3) by the sender and
unmasked by the receiver.  wsproto does it with ``bytes.translate`` on strided slices,
about 0.5 GB/s per side on CI's machines: with 1 MiB packet frames that alone caps a
session near 300 MB/s and burns a core.  numpy's vectorised XOR over 32-bit words does
the same work at several GB/s.  numpy is already a dependency (placement), so this costs
no new package.

We replace ``wsproto.frame_protocol.XorMaskerSimple``, the one class wsproto uses for
both masking and unmasking, with a drop-in that keeps its contract: ``process()`` may be
called on consecutive pieces of one payload and continues the key rotation across them.
A differential test (tests/gridnode/test_masking.py) checks byte-equality against the
original on random splits, so a wsproto change that breaks the contract fails loudly.

Framing an outgoing message: wsproto's ``FrameProtocol._serialize_frame`` copies the
payload three times (five when it masks: into a bytearray, into the masker's bytearray,
the masked result, header + payload, and a final bytearray) before a byte is sent; a
packet frame is a megabyte.  ``serialize_frame`` builds the same bytes in one buffer:
the header, then the payload copied once and masked in place.  Frames under an
extension (none is negotiated by the node) keep wsproto's own path.  Checked byte for
byte against wsproto's (tests/gridnode/test_ws_framing.py).

Issue 11 (per-byte and per-frame costs of the data path):

- a link sends its messages with ``send_pieces``: the session's frame in pieces (its
  sealed header, then the packets' own buffers) is written under trio-websocket's own
  stream lock, with one gathering ``sendmsg`` of the websocket header and the pieces
  themselves (``frame_buffers``; a client masks each piece into a buffer of its own).
  An unmasked packet frame is never copied in user space.  ``send_message`` would join
  the pieces, copy them into the frame, and wsproto's ``send`` would copy the frame
  twice more; a stream that is not a socket's gets ``frame_from_pieces``, one copy;
- receiving, ``process_buffer`` takes each piece of payload out of wsproto's receive
  buffer in one copy (unmasking in the same pass on a server), where wsproto made two
  or three;
- short frames (requests, answers, acks) are masked as one big-integer XOR rather than
  byte by byte.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import trio
import wsproto.frame_protocol as _frame_protocol
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection
from wsproto.connection import ConnectionState

from .metered import MeteredStream

Buffer = bytes | bytearray | memoryview

__all__ = [
    "ORIGINAL_MASKER",
    "ORIGINAL_PROCESS_BUFFER",
    "ORIGINAL_SERIALIZE",
    "FastXorMasker",
    "frame_buffers",
    "frame_from_pieces",
    "install",
    "process_buffer",
    "send_pieces",
    "serialize_frame",
]

ORIGINAL_MASKER: Final = _frame_protocol.XorMaskerSimple
ORIGINAL_SERIALIZE: Final = _frame_protocol.FrameProtocol._serialize_frame
ORIGINAL_PROCESS_BUFFER: Final = _frame_protocol.FrameDecoder.process_buffer
#: Below this, masking is one XOR of two big integers (a few microseconds for a short
#: request frame): numpy's per-call overhead costs more, and a Python loop over the
#: bytes costs about 0.3 us a byte (issue 11: every request and answer is such a frame).
_NUMPY_MIN_BYTES: Final = 1024


def _small_xor(data: Buffer, key: bytes) -> bytes:
    """``data`` XOR ``key`` repeated from its first byte, for short data."""
    size = memoryview(data).nbytes
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")


class FastXorMasker:
    """Same interface as wsproto's ``XorMaskerSimple``."""

    __slots__ = ("_key",)

    def __init__(self, masking_key: bytes | bytearray) -> None:
        self._key = bytes(masking_key)

    def process(self, data: bytes | bytearray | memoryview) -> bytearray:
        key = self._key
        size = memoryview(data).nbytes
        if size < _NUMPY_MIN_BYTES:
            out = bytearray(_small_xor(data, key)) if size else bytearray()
        else:
            out = bytearray(data)
            words = size // 4
            view = np.frombuffer(out, dtype=np.uint32, count=words)
            np.bitwise_xor(view, np.frombuffer(key, dtype=np.uint32)[0], out=view)
            for i in range(words * 4, size):
                out[i] ^= key[i & 3]
        rotation = size & 3
        self._key = key[rotation:] + key[:rotation]
        return out


def _xor_in_place(out: bytearray, start: int, key: bytes) -> None:
    """XOR ``out[start:]`` with the 4-byte ``key`` repeated from ``start`` (RFC 6455 5.3)."""
    size = len(out) - start
    if size < _NUMPY_MIN_BYTES:
        if size:
            out[start:] = _small_xor(bytes(out[start:]), key)
        return
    words = size // 4
    view = np.frombuffer(out, dtype=np.uint32, count=words, offset=start)
    np.bitwise_xor(view, np.frombuffer(key, dtype=np.uint32)[0], out=view)
    for i in range(words * 4, size):
        out[start + i] ^= key[i & 3]


def serialize_frame(
    self: Any, opcode: Any, payload: bytes | bytearray = b"", fin: bool = True
) -> bytearray:
    """wsproto's ``FrameProtocol._serialize_frame`` with the payload copied once."""
    if self.extensions:
        return ORIGINAL_SERIALIZE(self, opcode, payload, fin)
    first = (int(fin) << 7) | int(opcode)
    length = len(payload)
    if length <= _frame_protocol.MAX_PAYLOAD_NORMAL:
        second, extended = length, b""
    else:
        if opcode.iscontrol():
            raise ValueError("payload too long for control frame")
        if length <= _frame_protocol.MAX_PAYLOAD_TWO_BYTE:
            second, extended = _frame_protocol.PAYLOAD_LENGTH_TWO_BYTE, struct.pack("!H", length)
        else:
            second, extended = _frame_protocol.PAYLOAD_LENGTH_EIGHT_BYTE, struct.pack("!Q", length)
    key = os.urandom(4) if self.client else b""  # a fresh key per frame (RFC 6455 5.3)
    if self.client:
        second |= 1 << 7
    header = bytes([first, second]) + extended + key
    out = bytearray(len(header) + length)
    out[: len(header)] = header
    out[len(header) :] = payload
    if key:
        _xor_in_place(out, len(header), key)
    return out


def _xor_into(
    out: bytearray | npt.NDArray[np.uint8], start: int, piece: Buffer, key: bytes
) -> None:
    """Write ``piece`` XOR ``key`` (4 bytes, repeated) into ``out[start:]``: one pass
    that copies and masks, where copying and then masking in place reads it twice."""
    size = memoryview(piece).nbytes
    if size < _NUMPY_MIN_BYTES:
        if size:
            out[start : start + size] = _small_xor(piece, key)
        return
    words = size // 4
    source = np.frombuffer(piece, dtype=np.uint32, count=words)
    target = np.frombuffer(out, dtype=np.uint32, count=words, offset=start)
    np.bitwise_xor(source, np.frombuffer(key, dtype=np.uint32)[0], out=target)
    tail = memoryview(piece).cast("B")
    for i in range(words * 4, size):
        out[start + i] = tail[i] ^ key[i & 3]


def _frame_header(length: int, *, client: bool) -> tuple[bytes, bytes]:
    """The header of a whole binary message (FIN set, no extension) of ``length``
    payload bytes, and its masking key: fresh for a client, empty for a server."""
    if length <= _frame_protocol.MAX_PAYLOAD_NORMAL:
        second, extended = length, b""
    elif length <= _frame_protocol.MAX_PAYLOAD_TWO_BYTE:
        second, extended = _frame_protocol.PAYLOAD_LENGTH_TWO_BYTE, struct.pack("!H", length)
    else:
        second, extended = _frame_protocol.PAYLOAD_LENGTH_EIGHT_BYTE, struct.pack("!Q", length)
    key = os.urandom(4) if client else b""
    if client:
        second |= 1 << 7
    return bytes([0x80 | int(_frame_protocol.Opcode.BINARY), second]) + extended + key, key


def frame_from_pieces(pieces: Sequence[Buffer], *, client: bool) -> bytearray:
    """One whole binary websocket message (FIN set, no extension) whose payload is the
    pieces joined, masked with a fresh key when ``client`` (RFC 6455 5.2-5.3).

    The same bytes as wsproto's ``send_data`` of the joined payload, built in one
    buffer: each piece is copied (and masked) once, straight into the frame, instead
    of joined, copied, masked and then copied twice more by wsproto's ``send``
    (issue 11).  Checked against wsproto's own framing (tests/gridnode/test_ws_framing.py).
    """
    length = sum(memoryview(piece).nbytes for piece in pieces)
    header, key = _frame_header(length, client=client)
    out = bytearray(len(header) + length)
    out[: len(header)] = header
    offset = len(header)
    for piece in pieces:
        size = memoryview(piece).nbytes
        if key:
            turn = (offset - len(header)) & 3
            _xor_into(out, offset, piece, key[turn:] + key[:turn])
        else:
            out[offset : offset + size] = piece
        offset += size
    return out


async def send_pieces(ws: WebSocketConnection, pieces: Sequence[Buffer]) -> None:
    """Send the pieces joined as one binary message on ``ws``, framed by
    ``frame_from_pieces``; what ``ws.send_message(b"".join(pieces))`` does, with one
    copy of the payload instead of five (two more when it masks).

    Raises ``ConnectionClosed`` like ``send_message`` when the websocket is closing or
    closed, also when the peer's close frame has arrived but ours has not left
    (wsproto would refuse the message then).  A connection that negotiated an
    extension (the node offers none) takes ``send_message``.
    """
    if ws._close_reason:
        raise ConnectionClosed(ws._close_reason)
    connection = ws._wsproto.connection
    if connection is None or connection.state is not ConnectionState.OPEN:
        raise ConnectionClosed(ws._close_reason or CloseReason(1006, "not open"))
    proto = connection._proto
    if proto.extensions or proto._outbound_opcode is not None:
        await ws.send_message(b"".join(pieces))
        return
    sock = _socket_under(ws._stream)
    if sock is None:
        frame: list[Buffer] = [frame_from_pieces(pieces, client=proto.client)]
    else:
        frame = frame_buffers(pieces, client=proto.client)
    async with ws._stream_lock:
        try:
            if sock is None:
                await ws._stream.send_all(frame[0])
            else:
                await _send_gathered(sock, frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise ConnectionClosed(ws._close_reason or CloseReason(1006, "stream closed")) from None


def frame_buffers(pieces: Sequence[Buffer], *, client: bool) -> list[Buffer]:
    """The bytes of ``frame_from_pieces(pieces, client=client)`` as a list of buffers, for
    a gathering write (``sendmsg``): the frame's header, then the pieces themselves when
    the frame is not masked (a server's), or each piece masked into a buffer of its own
    (a client's).  An unmasked packet frame is then never copied in user space: building
    the frame cost a zeroed megabyte and a copy of every packet byte on the sending
    node's event loop (issue 11).  Checked against ``frame_from_pieces`` byte for byte
    (tests/gridnode/test_ws_framing.py)."""
    header, key = _frame_header(sum(memoryview(piece).nbytes for piece in pieces), client=client)
    out: list[Buffer] = [header]
    if not key:
        out.extend(piece for piece in pieces if memoryview(piece).nbytes)
        return out
    offset = 0
    for piece in pieces:
        size = memoryview(piece).nbytes
        turn = offset & 3
        if size >= _NUMPY_MIN_BYTES:
            masked = np.empty(size, dtype=np.uint8)  # not zeroed: every byte is written
            _xor_into(masked, 0, piece, key[turn:] + key[:turn])
            out.append(masked.data)
        elif size:
            out.append(_small_xor(piece, key[turn:] + key[:turn]))
        offset += size
    return out


#: At most this many buffers per ``sendmsg`` (Linux's IOV_MAX is 1024).
_MAX_BUFFERS: Final = 512


def _socket_under(stream: Any) -> Any:
    """The trio socket under a websocket's stream, when it can write gathered buffers:
    a ``SocketStream``, or the node's ``MeteredStream`` around one (it meters reads only;
    its ``send_all`` is the socket stream's).  Any other stream (a test's, a wrapper
    whose writes do more): None, and the frame goes through its ``send_all``."""
    inner = stream.inner if isinstance(stream, MeteredStream) else stream
    if not isinstance(inner, trio.SocketStream):
        return None
    sock = inner.socket
    return sock if hasattr(sock, "sendmsg") else None


async def _send_gathered(sock: Any, buffers: Sequence[Buffer]) -> None:
    """``SocketStream.send_all`` of the buffers joined, without joining them: ``sendmsg``
    until every byte is written, socket errors translated as ``send_all`` does.  The
    caller holds the websocket's stream lock, so no other write interleaves."""
    views = [memoryview(b).cast("B") for b in buffers]
    try:
        while views:
            sent = await sock.sendmsg(views[:_MAX_BUFFERS])
            while sent and views:
                first = views[0]
                if sent >= first.nbytes:
                    sent -= first.nbytes
                    views.pop(0)
                else:
                    views[0] = first[sent:]
                    sent = 0
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.ENOTSOCK):
            raise trio.ClosedResourceError("this socket was already closed") from None
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


def process_buffer(self: Any) -> Any:
    """wsproto's ``FrameDecoder.process_buffer`` with each received piece of payload
    copied once out of the receive buffer (and unmasked in the same copy, a server's
    case), where wsproto slices it, copies it for the masker and copies it again into
    bytes: a whole copy or two of every byte a node receives (issue 11).  A data
    frame's payload may come as a bytearray (trio-websocket joins the pieces of a
    message into bytes); a control frame's is bytes, as wsproto's.  Checked against
    wsproto's own on random frames cut at random points (tests/gridnode/test_ws_framing.py).
    """
    if self.extensions:
        return ORIGINAL_PROCESS_BUFFER(self)
    if not self.header and not self.parse_header():
        return None
    header, buffer, masker = self.header, self.buffer, self.masker
    if len(buffer) < self.payload_required:
        return None
    start = buffer.bytes_used
    size = min(header.payload_len - self.payload_consumed, len(buffer.buffer) - start)
    if size <= 0 and header.payload_len > 0:
        return None
    with memoryview(buffer.buffer) as whole, whole[start : start + size] as piece:
        payload: bytes | bytearray
        if isinstance(masker, FastXorMasker):
            payload = masker.process(piece)
        elif isinstance(masker, _frame_protocol.XorMaskerNull):
            payload = bytes(piece)
        else:
            payload = masker.process(bytearray(piece))
    buffer.bytes_used = start + size
    buffer.commit()
    self.payload_consumed += size
    finished = self.payload_consumed == header.payload_len
    if header.opcode.iscontrol():
        payload = bytes(payload)
    # A bytearray where wsproto's annotation says bytes: every reader of a data frame's
    # payload (wsproto's message decoder, trio-websocket's join) takes either.
    frame = _frame_protocol.Frame(
        self.effective_opcode,
        payload,  # type: ignore[arg-type]
        finished,
        header.fin,
    )
    if finished:
        self.header = None
        self.effective_opcode = None
        self.masker = None
    else:
        self.effective_opcode = _frame_protocol.Opcode.CONTINUATION
    return frame


def install() -> None:
    """Idempotent; called when gridnode.transport is imported."""
    _frame_protocol.XorMaskerSimple = FastXorMasker  # type: ignore[misc,assignment]
    _frame_protocol.FrameProtocol._serialize_frame = serialize_frame  # type: ignore[method-assign]
    _frame_protocol.FrameDecoder.process_buffer = process_buffer  # type: ignore[method-assign]
