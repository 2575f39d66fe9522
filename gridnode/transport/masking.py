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
  byte by byte;
- an authenticated link's websocket receives each large binary frame whole
  (``receive_whole_frames``): the bytes read from the socket are kept as read, not
  appended to wsproto's buffer, and copied once, when the frame is complete, into the
  bytearray the link is handed (and unmasked there); trio-websocket passes that one
  buffer on instead of joining the frame's pieces into bytes.  A packet frame's payload
  was copied three times on the receiving node's event loop (into wsproto's buffer, out
  of it, the join), and its pieces went through wsproto and trio-websocket one read at
  a time; now it is copied once (into a zeroed buffer), and the frame is one event.
  Frames over the message size limit, control frames, short frames and links that did
  not ask keep the path above, so every limit is enforced where it was.
"""

from __future__ import annotations

import contextlib
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
    "ORIGINAL_HANDLE_MESSAGE",
    "ORIGINAL_MASKER",
    "ORIGINAL_PROCESS_BUFFER",
    "ORIGINAL_RECEIVE_BYTES",
    "ORIGINAL_SERIALIZE",
    "WHOLE_FRAME_MIN_BYTES",
    "FastXorMasker",
    "WholeFrame",
    "frame_buffers",
    "frame_from_pieces",
    "gathered_bytes",
    "handle_message_event",
    "install",
    "process_buffer",
    "receive_bytes",
    "receive_whole_frames",
    "send_pieces",
    "serialize_frame",
]

ORIGINAL_MASKER: Final = _frame_protocol.XorMaskerSimple
ORIGINAL_SERIALIZE: Final = _frame_protocol.FrameProtocol._serialize_frame
ORIGINAL_PROCESS_BUFFER: Final = _frame_protocol.FrameDecoder.process_buffer
ORIGINAL_RECEIVE_BYTES: Final = _frame_protocol.FrameDecoder.receive_bytes
ORIGINAL_HANDLE_MESSAGE: Final = WebSocketConnection._handle_message_event
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
    if getattr(self, "_gridnode_chunks", None) is not None:
        return _whole_frame(self)
    pending = getattr(self, "_gridnode_pending", None)
    if pending and _resume(self, pending):
        return _whole_frame(self)
    if not self.header and not self.parse_header():
        return None
    header, buffer, masker = self.header, self.buffer, self.masker
    if _wants_whole(self):
        _start_whole_frame(self)
        return _whole_frame(self)
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


#: A binary frame with at least this much payload is received whole on a link that
#: asked for it (``receive_whole_frames``); a smaller one costs little either way.
WHOLE_FRAME_MIN_BYTES: Final = 64 * 1024


#: A read at least this long is kept as it is; shorter ones are appended to a buffer
#: of about this size, so a frame is at most a few chunks per this many bytes.
_CHUNK_BYTES: Final = 64 * 1024


class WholeFrame(bytearray):
    """The payload of one whole binary frame received by ``receive_bytes`` and
    ``process_buffer`` on a link's websocket: a buffer of its own, made once per frame
    and never written after it is handed on, so the link may keep views of it.  Its
    type tells ``handle_message_event`` that the frame needs no join."""

    __slots__ = ()


def receive_whole_frames(ws: WebSocketConnection) -> bool:
    """From now on, hand ``ws``'s binary frames of ``WHOLE_FRAME_MIN_BYTES`` up to its
    ``max_message_size`` (trio-websocket's limit, which ``ws`` must already have) to
    the reader as one ``WholeFrame`` each.  A larger frame is received in pieces as
    before, so trio-websocket still refuses it when its bytes pass the limit; a whole
    frame holds in memory what the pieces held (the bytes read so far), and the frame
    itself once complete.  False, and nothing changed, when ``ws`` is not the
    trio-websocket / wsproto this module knows or negotiated an extension."""
    connection = getattr(getattr(ws, "_wsproto", None), "connection", None)
    proto = getattr(connection, "_proto", None)
    decoder = getattr(proto, "_frame_decoder", None)
    limit = getattr(ws, "_max_message_size", None)
    if (
        not isinstance(decoder, _frame_protocol.FrameDecoder)
        or decoder.extensions
        or not isinstance(limit, int)
        or _frame_protocol.FrameDecoder.process_buffer is not process_buffer
        or WebSocketConnection._handle_message_event is not handle_message_event
    ):
        return False
    decoder._gridnode_whole_max = limit  # type: ignore[attr-defined]
    return True


def gathered_bytes(ws: WebSocketConnection) -> int:
    """Bytes ``ws`` has read towards a frame it receives whole and not yet handed on:
    still held, for the link's read budget (metered.py), as a message's pieces are."""
    connection = ws._wsproto.connection
    decoder = getattr(getattr(connection, "_proto", None), "_frame_decoder", None)
    held = getattr(decoder, "_gridnode_held", 0)
    held = held if getattr(decoder, "_gridnode_chunks", None) is not None else 0
    pending = getattr(decoder, "_gridnode_pending", None) or ()
    return held + sum(memoryview(piece).nbytes for piece in pending)


def receive_bytes(self: Any, data: bytes) -> None:
    """wsproto's ``FrameDecoder.receive_bytes``, but while a whole frame is being
    received (``receive_whole_frames``) the bytes read are kept as they are, not
    appended to the receive buffer: ``_whole_frame`` copies them once, into the frame."""
    chunks: list[Buffer] | None = getattr(self, "_gridnode_chunks", None)
    size = len(data)
    if chunks is not None:
        self._gridnode_held += size
    else:
        chunks = getattr(self, "_gridnode_pending", None)
        if not chunks:
            if not hasattr(self, "_gridnode_whole_max") or len(self.buffer) or not size:
                ORIGINAL_RECEIVE_BYTES(self, data)
                return
            # Nothing buffered: the read may start a large frame; ``_resume`` looks.
            chunks = self._gridnode_pending = []
    if not size:
        return
    if size >= _CHUNK_BYTES and type(data) is bytes:
        chunks.append(data)  # kept as read: bytes, never a buffer its reader reuses
    elif chunks and type(chunks[-1]) is bytearray and len(chunks[-1]) < _CHUNK_BYTES:
        chunks[-1] += data
    else:
        # Short reads are gathered into buffers of their own: a peer that trickles a
        # frame a byte per read must not cost an object per byte.
        chunks.append(bytearray(data))


#: The longest websocket frame header: 2 bytes, 8 of length, 4 of masking key.
_MAX_HEADER_BYTES: Final = 14


def _wants_whole(self: Any) -> bool:
    """Whether the frame whose header was just parsed is received whole."""
    header = self.header
    return bool(
        header.opcode is _frame_protocol.Opcode.BINARY
        and self.payload_consumed == 0
        and WHOLE_FRAME_MIN_BYTES <= header.payload_len <= getattr(self, "_gridnode_whole_max", -1)
    )


def _resume(self: Any, pending: list[Buffer]) -> bool:
    """Parse the next header from bytes read while wsproto's buffer was empty (also the
    bytes that followed a whole frame in its last read); True when that frame is
    received whole too, its payload's bytes moved to its chunks without a copy.
    Otherwise every pending byte goes to wsproto's buffer, as it came."""
    self._gridnode_pending = None
    buffer = self.buffer
    index, fed = 0, 0
    while index < len(pending) and fed < _MAX_HEADER_BYTES:
        piece = memoryview(pending[index])
        take = min(piece.nbytes, _MAX_HEADER_BYTES - fed)
        buffer.feed(piece[:take])
        fed += take
        pending[index] = piece[take:]
        if take == piece.nbytes:
            index += 1
    rest = [chunk for chunk in pending[index:] if memoryview(chunk).nbytes]
    if not self.header and self.parse_header() and _wants_whole(self):
        _start_whole_frame(self)
        self._gridnode_chunks.extend(rest)
        self._gridnode_held += sum(memoryview(chunk).nbytes for chunk in rest)
        return True
    for chunk in rest:
        buffer.feed(chunk)
    return False


def _start_whole_frame(self: Any) -> None:
    """Move what the receive buffer holds past the header into the frame's chunks."""
    buffer = self.buffer
    rest, buffer.buffer = buffer.buffer, bytearray()  # taken over, not copied
    del rest[: buffer.bytes_used]
    buffer.bytes_used = 0
    self._gridnode_chunks = [rest] if rest else []
    self._gridnode_held = len(rest)


def _whole_frame(self: Any) -> Any:
    """The frame whose header ``self`` holds, once all its payload has arrived: its
    chunks copied once into a ``WholeFrame`` and unmasked there; what follows it goes
    back to the receive buffer.  None while bytes are missing."""
    header = self.header
    size = header.payload_len
    if self._gridnode_held < size:
        return None
    out = WholeFrame(size)
    offset = 0
    rest: list[memoryview] = []
    for chunk in self._gridnode_chunks:
        whole = memoryview(chunk)
        take = min(whole.nbytes, size - offset)
        if take:
            # Not ``out[a:b] = piece``: bytearray copies a memoryview before storing it.
            target = np.frombuffer(out, dtype=np.uint8, count=take, offset=offset)
            target[:] = np.frombuffer(whole, dtype=np.uint8, count=take)
        if take < whole.nbytes:
            rest.append(whole[take:])
        offset += take
    # Unmasked in place, in one pass over aligned words: faster than unmasking each
    # chunk as it is copied, whose words straddle the chunks' odd offsets.
    masker = self.masker
    if isinstance(masker, FastXorMasker):
        _xor_in_place(out, 0, masker._key)
    elif not isinstance(masker, _frame_protocol.XorMaskerNull):
        out[:] = masker.process(out)
    self._gridnode_chunks = None
    self._gridnode_held = 0
    # What followed the frame in its last read (more frames, often large ones): not
    # copied into wsproto's buffer here, but kept for ``_resume``.
    self._gridnode_pending = rest or None
    self.payload_consumed = size
    frame = _frame_protocol.Frame(self.effective_opcode, out, True, header.fin)  # type: ignore[arg-type]
    self.header = None
    self.effective_opcode = None
    self.masker = None
    return frame


async def handle_message_event(self: Any, event: Any) -> None:
    """trio-websocket's ``_handle_message_event``, but a message that is one
    ``WholeFrame`` within the size limit goes to the reader as it is: the original
    would copy it into bytes (``b"".join``).  Anything else takes the original, which
    also enforces ``max_message_size`` on every other message exactly as before."""
    data = event.data
    if (
        type(data) is WholeFrame
        and event.message_finished
        and not self._message_parts
        and self._message_size == 0
        and len(data) <= self._max_message_size
    ):
        # As the original: a closed receiving end is no reason to stop reading.
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await self._send_channel.send(data)
        return
    await ORIGINAL_HANDLE_MESSAGE(self, event)


def install() -> None:
    """Idempotent; called when gridnode.transport is imported."""
    _frame_protocol.XorMaskerSimple = FastXorMasker  # type: ignore[misc,assignment]
    _frame_protocol.FrameProtocol._serialize_frame = serialize_frame  # type: ignore[method-assign]
    _frame_protocol.FrameDecoder.process_buffer = process_buffer  # type: ignore[method-assign]
    _frame_protocol.FrameDecoder.receive_bytes = receive_bytes  # type: ignore[method-assign]
    WebSocketConnection._handle_message_event = handle_message_event  # type: ignore[method-assign]
