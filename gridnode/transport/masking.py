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
"""

from __future__ import annotations

import os
import struct
from typing import Any, Final

import numpy as np
import wsproto.frame_protocol as _frame_protocol

__all__ = ["ORIGINAL_MASKER", "ORIGINAL_SERIALIZE", "FastXorMasker", "install", "serialize_frame"]

ORIGINAL_MASKER: Final = _frame_protocol.XorMaskerSimple
ORIGINAL_SERIALIZE: Final = _frame_protocol.FrameProtocol._serialize_frame
#: Below this, numpy's per-call overhead costs more than the pure-Python path.
_NUMPY_MIN_BYTES: Final = 512


class FastXorMasker:
    """Same interface as wsproto's ``XorMaskerSimple``."""

    __slots__ = ("_key",)

    def __init__(self, masking_key: bytes | bytearray) -> None:
        self._key = bytes(masking_key)

    def process(self, data: bytes | bytearray) -> bytearray:
        out = bytearray(data)
        size = len(out)
        if not size:
            return out
        key = self._key
        words = size // 4 if size >= _NUMPY_MIN_BYTES else 0
        if words:
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
    words = size // 4 if size >= _NUMPY_MIN_BYTES else 0
    if words:
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


def install() -> None:
    """Idempotent; called when gridnode.transport is imported."""
    _frame_protocol.XorMaskerSimple = FastXorMasker  # type: ignore[misc,assignment]
    _frame_protocol.FrameProtocol._serialize_frame = serialize_frame  # type: ignore[method-assign]
