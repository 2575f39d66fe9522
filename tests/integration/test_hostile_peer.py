"""A stranger on the port of a real node process (issue 8): garbage before and after the
websocket upgrade, an oversized frame header, malformed msgpack, hundreds of idle
sockets and a slow drip.  The node stays up, keeps its peers meshed, answers ``status``
and its memory stays bounded.  All traffic goes to 127.0.0.0/8, every loop is bounded."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from simulations.harness import LocalGrid

pytestmark = pytest.mark.slow


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _connect(port: int, source: str = "127.0.0.2") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def _upgrade(port: int, source: str) -> socket.socket:
    sock = _connect(port, source)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    sock.sendall(
        (
            "GET /gridnode HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response and len(response) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response[:100]
    return sock


def _frame(payload: bytes, *, opcode: int = 2, claimed_len: int | None = None) -> bytes:
    """A masked client frame; ``claimed_len`` lies about the payload length."""
    length = len(payload) if claimed_len is None else claimed_len
    if length < 126:
        header = bytes([0x80 | opcode, 0x80 | length])
    elif length < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack(">H", length)
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", length)
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


def _closes(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


def test_a_node_survives_what_a_stranger_throws_at_its_port(make_grid: Any) -> None:
    grid: LocalGrid = make_grid(3, extra=("handshake_timeout_s=2",))
    victim = grid.nodes["n0"]
    assert victim.process is not None
    pid, port = victim.process.pid, victim.port
    before = _rss_kib(pid)

    # Garbage before the upgrade: not HTTP at all, and an HTTP request that never ends.
    sock = _connect(port)
    sock.sendall(os.urandom(8192))
    assert _closes(sock, 4)
    sock.close()
    # Garbage after the upgrade: malformed msgpack, unknown kinds, a text frame, a
    # frame header that claims 2**62 bytes.
    for payload in (
        b"P" + os.urandom(512),
        b"P\x83\xa1v\x02\xa1k\xa7no_kind\xa1b\x80",
        b"S" + os.urandom(200),
        b"\xc1" * 100,
    ):
        sock = _upgrade(port, "127.0.0.3")
        sock.sendall(_frame(payload))
        assert _closes(sock, 4)
        sock.close()
    sock = _upgrade(port, "127.0.0.3")
    sock.sendall(_frame(b"x" * 16, claimed_len=1 << 62))
    assert _closes(sock, 4)
    sock.close()
    sock = _upgrade(port, "127.0.0.3")
    sock.sendall(_frame(b"not binary", opcode=1))
    assert _closes(sock, 4)
    sock.close()

    # Hundreds of idle sockets from many loopback addresses, and a slow drip.
    idle: list[socket.socket] = []
    for i in range(300):
        try:
            idle.append(_connect(port, f"127.0.{1 + i // 250}.{2 + i % 250}"))
        except OSError:
            break  # refused at accept is fine too
    drip = _connect(port, "127.0.9.9")
    drip.settimeout(0.2)
    started = time.monotonic()
    try:
        for byte in b"GET /gridnode HTTP/1.1\r\nHost: 127.0.0.1\r\n" * 20:
            drip.sendall(bytes([byte]))
            time.sleep(0.05)
            if time.monotonic() - started > 6:
                break
    except OSError:
        pass
    assert time.monotonic() - started < 6, "the slow drip was never cut off"
    drip.close()

    # Still up, still answering, still meshed with its peers, memory bounded.
    status = grid.cli("n0", "status", timeout=20)
    assert victim.process.poll() is None
    alive = {m["node_id"] for m in status["members"] if m["state"] == "alive"}
    assert len(alive) >= 2
    assert status["counters"]["refused_connections"] > 0
    for sock in idle:
        sock.close()
    grid.wait_converged(timeout=30)
    after = _rss_kib(pid)
    assert after - before < 64 * 1024, f"RSS grew from {before} to {after} KiB"
