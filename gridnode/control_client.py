"""The CLI's side of the control channel: one call to the home's running node, blocking,
on the standard library and msgpack alone.

Why not trio and trio-websocket, as the node uses: importing them, structlog and the
protocol package took the CLI about 0.7 s before it did anything, so every ``gridnode
status`` felt slow (restic answers in milliseconds).  A control call is one short
conversation over a Unix socket to a process of the same user, so a blocking socket and
the few parts of RFC 6455 it needs (the upgrade, masked client frames, unmasked server
frames, ping, close) are enough, and start in a few milliseconds.

The frames are exactly the protocol codec's ``Control*`` messages (msgpack of
``{"v": version, "k": kind, "b": body}``); ``tests/gridnode/test_control_client.py``
checks them byte for byte against ``protocol.encode``, so the two cannot drift apart.
Every check of ``gridnode.control`` is kept, in the same order: the socket is a socket,
the process listening is the node owner's (``SO_PEERCRED``), and only then is the token
read (from a file nobody else could have read or planted) and sent.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgpack

from .control_files import (
    ANSWER_PARTS_PARAM,
    ControlError,
    NodeNotRunning,
    node_owner,
    peer_uid,
    read_token,
    socket_name,
    socket_path,
)

__all__ = ["PROTOCOL_VERSION", "call"]

#: The grid protocol's version (``protocol.PROTOCOL_VERSION``; a test keeps them equal:
#: importing the protocol package is what this module exists to avoid).
PROTOCOL_VERSION: Final = 5
#: Seconds for the socket to accept and the websocket upgrade to finish.
CONNECT_TIMEOUT_S: Final = 5.0
#: The largest message accepted from the node (the server's limit is 8 MiB of frame).
MAX_MESSAGE_BYTES: Final = 9 * 1024 * 1024
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA


class _Closed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _mask(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 masking, a word at a time (control frames are small)."""
    repeat = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeat, "big")).to_bytes(
        len(payload), "big"
    )


class _WebSocket:
    """The client end of one websocket on a connected, blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:  # bounded: each pass reads or raises
            data = self.sock.recv(max(65536, count - len(self.buffer)))
            if not data:
                raise _Closed("connection closed")
            self.buffer += data
        out = bytes(self.buffer[:count])
        del self.buffer[:count]
        return out

    def handshake(self) -> None:
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            b"GET /control HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        while b"\r\n\r\n" not in self.buffer:  # bounded by the size check
            if len(self.buffer) > 16384:
                raise _Closed("the node's upgrade answer is too long")
            data = self.sock.recv(4096)
            if not data:
                raise _Closed("connection closed during the upgrade")
            self.buffer += data
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 101"):
            raise _Closed(f"the node refused the upgrade: {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        if headers.get(b"sec-websocket-accept") != expected:
            raise _Closed("the node's upgrade answer does not match the key")

    def send(self, payload: bytes, opcode: int = _OP_BINARY) -> None:
        size = len(payload)
        head = bytes([0x80 | opcode])
        if size < 126:
            head += bytes([0x80 | size])
        elif size < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", size)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", size)
        key = os.urandom(4)
        self.sock.sendall(head + key + _mask(payload, key))

    def receive(self) -> bytes:
        """The next whole binary message; answers pings; raises ``_Closed``."""
        message = bytearray()
        for _ in range(1_000_000):  # bounded: a message of 9 MiB is at most this many frames
            first, second = self._read(2)
            opcode, final = first & 0x0F, bool(first & 0x80)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack("!H", self._read(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", self._read(8))[0]
            if second & 0x80:
                raise _Closed("the node sent a masked frame")
            if len(message) + size > MAX_MESSAGE_BYTES:
                raise _Closed(f"the node sent a message over {MAX_MESSAGE_BYTES} bytes")
            payload = self._read(size)
            if opcode == _OP_PING:
                self.send(payload, _OP_PONG)
                continue
            if opcode == _OP_PONG:
                continue
            if opcode == _OP_CLOSE:
                reason = payload[2:].decode("utf-8", "replace") if len(payload) > 2 else ""
                raise _Closed(reason or "connection closed")
            if opcode not in (_OP_BINARY, _OP_CONTINUATION, _OP_TEXT):
                raise _Closed(f"unknown websocket opcode {opcode}")
            message += payload
            if final:
                return bytes(message)
        raise _Closed("a message in too many pieces")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send(struct.pack("!H", 1000), _OP_CLOSE)


def _envelope(kind: str, body: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb({"v": PROTOCOL_VERSION, "k": kind, "b": body}, use_bin_type=True)
    return packed


def _open(raw: bytes) -> tuple[str, dict[str, Any]]:
    try:
        frame = msgpack.unpackb(
            raw,
            raw=False,
            max_bin_len=MAX_MESSAGE_BYTES,
            max_str_len=MAX_MESSAGE_BYTES,
            max_array_len=1024,
            max_map_len=1024,
        )
    except Exception as exc:  # msgpack's many error types: all "malformed" here
        raise ControlError("malformed", f"the node sent a malformed frame: {exc}") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("b"), dict):
        raise ControlError("malformed", "the node sent a frame that is not a message")
    if frame.get("v") != PROTOCOL_VERSION:
        raise ControlError(
            "unsupported_version",
            f"the node speaks protocol {frame.get('v')}, this CLI {PROTOCOL_VERSION}: "
            "run the gridnode that runs the node",
        )
    return str(frame.get("k")), frame["b"]


def _connect(path: Path, home: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        with socket_name(path) as name:
            sock.connect(name)
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        raise NodeNotRunning(
            f"the node of {home} is not running (nobody listens on {path})"
        ) from None
    except TimeoutError:
        sock.close()
        raise NodeNotRunning(f"the node of {home} does not accept connections") from None
    except OSError as exc:
        sock.close()
        raise NodeNotRunning(f"cannot reach the node of {home}: {exc}"[:300]) from None
    return sock


def _joined(result: Any, parts: list[str]) -> Any:
    """The answer: as sent, or joined from its parts when it stands for them."""
    if not parts:
        return result
    count = result.get(ANSWER_PARTS_PARAM) if isinstance(result, dict) else None
    if count != len(parts):
        raise ControlError("malformed", f"the node sent {len(parts)} of {count} answer parts")
    try:
        return json.loads("".join(parts))
    except ValueError as exc:
        raise ControlError("malformed", f"the answer's parts do not join: {exc}") from None


def call(
    home: Path,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    timeout_s: float | None = None,
    join_parts: bool = True,
) -> Any:
    """Run one control call against the node of ``home``; returns its JSON result.

    ``join_parts=False`` asks as clients from before answer parts did: an answer past
    one control message is then refused (``too_large``) instead of sent in parts.

    Raises ``NodeNotRunning`` (nothing answers, or the node hung up) and
    ``ControlError`` (the node answered with an error, or a check refused to send the
    token).  ``timeout_s``: for the whole call once connected (None: as long as the job
    takes; long jobs stream ``on_event`` meanwhile)."""
    path = socket_path(home)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise NodeNotRunning(f"no node is running for {home}") from None
    if not stat.S_ISSOCK(mode):
        raise NodeNotRunning(f"no node is running for {home} ({path} is not a socket)")
    sock = _connect(path, home)
    try:
        uid = peer_uid(sock)
        owner = node_owner(home)
        if uid is not None and uid != owner:
            raise ControlError(
                "foreign_socket",
                f"{path} is served by uid {uid}, not by the node's owner (uid {owner}); "
                "the control token was not sent",
            )
        token = read_token(home)
        ws = _WebSocket(sock)
        try:
            ws.handshake()
        except (TimeoutError, OSError, _Closed) as exc:
            raise NodeNotRunning(f"the node of {home} refused the control channel: {exc}") from None
        sock.settimeout(timeout_s)
        try:
            ws.send(_envelope("control_hello", {"token": token, "version": PROTOCOL_VERSION}))
            # This client joins an answer sent in parts (``ANSWER_PARTS_PARAM``): a node
            # that knows the word sends past one control message; an older one ignores it.
            sent = {**(params or {}), ANSWER_PARTS_PARAM: True} if join_parts else params or {}
            ws.send(
                _envelope(
                    "control_call",
                    {"request_id": 1, "method": method, "params": json.dumps(sent)},
                )
            )
            parts: list[str] = []
            while True:  # bounded by the node: it ends every call with a result or an error
                kind, body = _open(ws.receive())
                if kind == "control_event":
                    event = json.loads(body["event"])
                    if isinstance(event, dict) and event.get("event") == "answer_part":
                        parts.append(str(event.get("text", "")))
                    elif on_event is not None:
                        on_event(event)
                elif kind == "control_result":
                    ws.close()
                    return _joined(json.loads(body["result"]), parts)
                elif kind == "error":
                    ws.close()
                    raise ControlError(str(body.get("code")), str(body.get("message")))
                else:
                    raise ControlError("malformed", f"the node answered with {kind!r}")
        except TimeoutError:
            raise ControlError("timeout", f"{method} did not finish within {timeout_s} s") from None
        except _Closed as exc:
            raise NodeNotRunning(f"the node closed the control connection: {exc.reason}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ControlError("malformed", f"the node sent an unreadable answer: {exc}") from None
        except OSError as exc:
            raise NodeNotRunning(f"the control connection broke: {exc}"[:300]) from None
    finally:
        sock.close()
