"""Issue 2's transport benchmark: 1 MiB messages between two processes on 127.0.0.1.

The receiving side is a child process (:func:`serve`, one per masking kind, with every
receiver below on its own port), so every figure crosses a real process boundary and
the two sides can use two cores.  The sender is the dialer, as a source is when it
uploads: its websocket frames are masked (RFC 6455), which is what made masking
matter.  Measured in the same run:

- raw trio TCP: ``send_all`` of 1 MiB buffers, the receiver reads 256 KiB at a time:
  the baseline of every ratio;
- a bare trio-websocket connection with the project's settings
  (``gridnode.transport.pool``: ``RECEIVE_BUFFER_BYTES``, ``max_message_size``,
  ``message_queue_size``) and the project's numpy masking installed; the same with
  wsproto's pure-Python masking (the masking effect); the same with trio-websocket's
  default 4 KiB receive buffer (the buffer effect);
- the authenticated session as the node uses it: two ``Transport`` processes with
  their own identities in one grid, a ``PeerLink`` dialed by the sender:

  - one-way bulk transfer through ``PeerLink.send``: ``PacketData`` frames (the
    detached-payload packet frame that downloads carry) whose ``request_id`` has no
    waiter, so the receiver verifies each frame (AEAD header, BLAKE3 of the payload)
    and drops it; a final ``Ping`` is answered only after every earlier frame has been
    processed, so the clock stops when the last byte is verified;
  - request/response: ``PeerLink.request(StorePacket)`` with several requests in
    flight, the receiver checking the packet id against the payload digest and
    answering a ``PacketStored`` with a signed receipt that the sender verifies (as a
    source and a target do, without the disk); with 1 MiB payloads and with 256 KiB
    ones (a 1 MiB chunk at k=4 gives 256 KiB packets: what uploads really send);
  - both again with ``seal_payloads=True`` (the payload inside the AEAD as well).

Also measured, in this process: how long the node's event loop stalls while it refuses a
hostile frame (1.9 MiB of nested empty msgpack arrays from an authenticated member, the
issue-8 attack): the worst round trip of pings another member sends meanwhile, against
the time the same frame takes to decode (and be refused at the object budget) inline,
which is what the stall would be if the node decoded it on the loop.

Each figure is the best of 2 (quick) or 3 rounds of 64 MiB (quick) or 256 MiB over one
connection.  CPU seconds per GB of each side (all rounds) show which side is the limit.
Issue 2's target: the session at 0.2x raw TCP or better.  Run
``python -m benchmarks.bench_transport [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import attrs
import blake3
import trio
import wsproto.frame_protocol as frame_protocol
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    connect_websocket,
    serve_websocket,
)

from gridnode.identity import NodeIdentity
from gridnode.transport import PeerLink, Transport, TransportSettings, masking
from gridnode.transport.pool import FRAME_SLACK_BYTES, RECEIVE_BUFFER_BYTES
from protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Error,
    Message,
    PacketData,
    PacketStored,
    RemoteProtocolError,
    StorePacket,
    receipt_payload,
    sign,
    verify,
)
from protocol._codec import decode_envelope

from .common import MB, REPO_ROOT, Figure, MiB, proc_cpu_seconds, rate_mb_s

__all__ = ["format_table", "main", "measure_raw_tcp", "run"]

MESSAGE_BYTES: Final = MiB
SMALL_PACKET_BYTES: Final = 256 * 1024
FULL_BYTES: Final = 256 * MiB
QUICK_BYTES: Final = 64 * MiB
IN_FLIGHT: Final = 8
#: trio-websocket's own default read size, for the buffer-effect row.
DEFAULT_RECEIVE_BYTES: Final = 4 * 1024
MAX_MESSAGE: Final = DEFAULT_MAX_FRAME_BYTES + FRAME_SLACK_BYTES
#: A child serves at most this long, whatever happens to its parent.
CHILD_LIFETIME_S: Final = 900.0
CHILD_START_S: Final = 60.0
ROUND_TIMEOUT_S: Final = 300.0
_ACK: Final = b"k"
_DISTINCT_PAYLOADS: Final = 4


# --- the receiving child ---------------------------------------------------------------------


def _use_masking(kind: str) -> None:
    """Process-wide, like ``masking.install``: both ends of a variant must agree."""
    if kind == "python":
        frame_protocol.XorMaskerSimple = masking.ORIGINAL_MASKER  # type: ignore[misc]
    else:
        masking.install()


async def _serve_tcp(round_bytes: int, *, task_status: trio.TaskStatus[int]) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            for _ in range(10_000):  # rounds; the sender closes long before
                left = round_bytes
                for _ in range(round_bytes):  # receive_some returns >= 1 byte
                    if left <= 0:
                        break
                    data = await stream.receive_some(RECEIVE_BUFFER_BYTES)
                    if not data:
                        return
                    left -= len(data)
                await stream.send_all(_ACK)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


async def _serve_ws(
    messages: int, receive_buffer: int, *, task_status: trio.TaskStatus[int]
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            for _ in range(10_000):
                for _ in range(messages):
                    await ws.get_message()
                await ws.send_message(_ACK)
        except ConnectionClosed:
            return

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(
                serve_websocket,
                handler,
                "127.0.0.1",
                0,
                ssl_context=None,
                max_message_size=MAX_MESSAGE,
                message_queue_size=4,
                receive_buffer_size=receive_buffer,
            )
        )
        task_status.started(server.port)


@attrs.define
class _Target:
    """The target side of a packet upload, minus the disk: check the id, sign a receipt."""

    identity: NodeIdentity

    async def handle_request(
        self, link: PeerLink, msg: Message, payload_digest: bytes | None
    ) -> Message:
        if not isinstance(msg, StorePacket):
            return Error(request_id=getattr(msg, "request_id", 0), code="unsupported")
        digest = payload_digest or blake3.blake3(msg.data).digest()
        if digest != msg.packet_id:
            return Error(request_id=msg.request_id, code="id_mismatch")
        receipt = sign(self.identity.signing_key, receipt_payload(msg.packet_id, len(msg.data)))
        return PacketStored(
            request_id=msg.request_id,
            packet_id=msg.packet_id,
            size_bytes=len(msg.data),
            receipt=receipt,
            free_bytes=1 << 40,
        )

    def handle_oneway(self, link: PeerLink, msg: Message) -> None:
        pass


def _transport(
    identity: NodeIdentity, grid_id: bytes, seal_payloads: bool, handler: Any
) -> Transport:
    """Both ends as a node builds its transport (gridnode.node), with a stand-in handler."""
    return Transport(
        identity=identity,
        settings=TransportSettings(
            grid_id=grid_id,
            listen_host="127.0.0.1",
            listen_port=0,
            max_frame_bytes=DEFAULT_MAX_FRAME_BYTES,
            seal_payloads=seal_payloads,
            request_timeout_s=ROUND_TIMEOUT_S,
        ),
        handler=handler,
    )


async def _serve_session(
    grid_id: bytes, seal_payloads: bool, *, task_status: trio.TaskStatus[int]
) -> None:
    identity = NodeIdentity.generate()
    transport = _transport(identity, grid_id, seal_payloads, _Target(identity))
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        task_status.started(transport.port)


def serve(*, masking_kind: str, round_bytes: int, message_bytes: int, grid_id: bytes) -> None:
    """The child's main: every kind of receiver on its own port, until killed.

    One child serves all variants of one masking kind (masking is process-wide), so
    the run pays for few process starts; idle listeners cost nothing.  The ports go to
    the parent as one JSON line on standard output.
    """
    _use_masking(masking_kind)

    async def main() -> None:
        with trio.move_on_after(CHILD_LIFETIME_S):
            async with trio.open_nursery() as nursery:
                ports = {
                    "tcp": await nursery.start(_serve_tcp, round_bytes),
                    "ws": await nursery.start(
                        _serve_ws, round_bytes // message_bytes, RECEIVE_BUFFER_BYTES
                    ),
                    "ws_default": await nursery.start(
                        _serve_ws, round_bytes // message_bytes, DEFAULT_RECEIVE_BYTES
                    ),
                    "session": await nursery.start(_serve_session, grid_id, False),
                    "session_sealed": await nursery.start(_serve_session, grid_id, True),
                }
                sys.stdout.write(json.dumps(ports) + "\n")
                sys.stdout.flush()

    trio.run(main)


# --- the sending parent ----------------------------------------------------------------------


_CHILD_MAIN: Final = (
    "from gridnode.log import configure_logging; configure_logging('warning'); "
    "from benchmarks.bench_transport import main; main({argv!r})"
)


class _ChildProcess:
    """The receiving process of one masking kind; always stopped when the block ends."""

    def __init__(self, masking_kind: str, *, round_bytes: int, grid_id: bytes) -> None:
        argv = [
            "--serve",
            "--masking",
            masking_kind,
            "--round-bytes",
            str(round_bytes),
            "--message-bytes",
            str(MESSAGE_BYTES),
            "--grid-id",
            grid_id.hex(),
        ]
        # Logging is configured before gridnode is imported: its module-level loggers
        # keep the configuration they were bound under.
        self.args = [sys.executable, "-c", _CHILD_MAIN.format(argv=argv)]
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        # A file, not a pipe: a pipe nobody reads could block the child.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__

    def __enter__(self) -> _ChildProcess:
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=self._stderr, cwd=REPO_ROOT
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], CHILD_START_S)
        line = self.process.stdout.readline() if ready else b""  # the ports come first
        if not line:
            self.__exit__()
            self._stderr.seek(0)
            error = self._stderr.read().decode(errors="replace")[-1000:]
            raise RuntimeError(f"benchmark receiver did not start: {error}")
        self.ports = {str(k): int(v) for k, v in json.loads(line).items()}
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __exit__(self, *exc: object) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        self._stderr.close()
        self.process = None


@attrs.define
class _Rounds:
    """Best-of-rounds timing of one variant plus both sides' CPU time over all rounds."""

    nbytes: int
    seconds: list[float] = attrs.field(factory=list)
    sender_cpu_s: float = 0.0
    receiver_cpu_s: float = 0.0

    async def measure(
        self, rounds: int, child_pid: int, one_round: Callable[[], Awaitable[None]]
    ) -> None:
        for _ in range(rounds):
            cpu0, child0 = time.process_time(), proc_cpu_seconds(child_pid)
            started = time.perf_counter()
            with trio.fail_after(ROUND_TIMEOUT_S):
                await one_round()
            self.seconds.append(time.perf_counter() - started)
            self.sender_cpu_s += time.process_time() - cpu0
            self.receiver_cpu_s += proc_cpu_seconds(child_pid) - child0

    def to_dict(self) -> dict[str, Any]:
        """Rates, and CPU per GB of each side.  ``cpu_bound_mb_s`` is the rate if each side
        had a core to itself (1 GB over the busier side's CPU seconds): on a machine
        shared with other work it drifts much less than the measured rate."""
        total_gb = self.nbytes * len(self.seconds) / 1e9
        sender, receiver = self.sender_cpu_s / total_gb, self.receiver_cpu_s / total_gb
        return {
            "mb_s": round(rate_mb_s(self.nbytes, min(self.seconds)), 1),
            "round_mb_s": [round(rate_mb_s(self.nbytes, s), 1) for s in self.seconds],
            "sender_cpu_s_per_gb": round(sender, 3),
            "receiver_cpu_s_per_gb": round(receiver, 3),
            "cpu_bound_mb_s": round(1000 / max(sender, receiver, 1e-3), 1),
        }


async def _bench_tcp(port: int, total: int, rounds: int, pid: int) -> _Rounds:
    payload = os.urandom(MESSAGE_BYTES)
    result = _Rounds(total)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:

        async def one_round() -> None:
            for _ in range(total // MESSAGE_BYTES):
                await stream.send_all(payload)
            if await stream.receive_some(1) != _ACK:
                raise RuntimeError("raw TCP receiver did not acknowledge")

        await result.measure(rounds, pid, one_round)
    return result


async def _bench_ws(port: int, total: int, rounds: int, pid: int, receive_buffer: int) -> _Rounds:
    payload = os.urandom(MESSAGE_BYTES)
    result = _Rounds(total)
    async with trio.open_nursery() as nursery:
        ws: WebSocketConnection = await connect_websocket(
            nursery,
            "127.0.0.1",
            port,
            "/bench",
            use_ssl=False,
            message_queue_size=4,
            max_message_size=MAX_MESSAGE,
            receive_buffer_size=receive_buffer,
        )

        async def one_round() -> None:
            for _ in range(total // MESSAGE_BYTES):
                await ws.send_message(payload)
            if await ws.get_message() != _ACK:
                raise RuntimeError("websocket receiver did not acknowledge")

        await result.measure(rounds, pid, one_round)
        await ws.aclose()
    return result


@attrs.define
class _NoRequests:
    async def handle_request(
        self, link: PeerLink, msg: Message, payload_digest: bytes | None
    ) -> Message:
        return Error(request_id=getattr(msg, "request_id", 0), code="unsupported")

    def handle_oneway(self, link: PeerLink, msg: Message) -> None:
        pass


def _store_packet(request_id: int, *, packet_id: bytes, owner_tag: bytes, data: bytes) -> Message:
    return StorePacket(request_id=request_id, packet_id=packet_id, owner_tag=owner_tag, data=data)


def _packets(size: int) -> list[tuple[bytes, bytes]]:
    """A few distinct payloads with their ids (the BLAKE3 of the bytes, as packet ids are)."""
    out = []
    for _ in range(_DISTINCT_PAYLOADS):
        data = os.urandom(size)
        out.append((data, blake3.blake3(data).digest()))
    return out


async def _bench_session(
    port: int,
    total: int,
    rounds: int,
    pid: int,
    grid_id: bytes,
    *,
    seal_payloads: bool,
    small: bool,
) -> dict[str, _Rounds]:
    transport = _transport(NodeIdentity.generate(), grid_id, seal_payloads, _NoRequests())
    results: dict[str, _Rounds] = {}
    big = _packets(MESSAGE_BYTES)
    owner_tag = bytes(32)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        link = await transport.connect(f"127.0.0.1:{port}")

        async def one_way() -> None:
            for i in range(total // MESSAGE_BYTES):
                data, packet_id = big[i % len(big)]
                await link.send(PacketData(request_id=0, packet_id=packet_id, data=data))
            await link.ping(timeout_s=ROUND_TIMEOUT_S)

        def requests(packets: list[tuple[bytes, bytes]]) -> Callable[[], Awaitable[None]]:
            count = total // len(packets[0][0])

            async def requester(first: int) -> None:
                for i in range(first, count, IN_FLIGHT):
                    data, packet_id = packets[i % len(packets)]
                    build = functools.partial(
                        _store_packet, packet_id=packet_id, owner_tag=owner_tag, data=data
                    )
                    answer = await link.request(build)
                    if not isinstance(answer, PacketStored) or not verify(
                        link.peer_id, receipt_payload(packet_id, len(data)), answer.receipt
                    ):
                        raise RuntimeError(f"bad answer to store_packet: {answer!r}"[:200])

            async def one_round() -> None:
                async with trio.open_nursery() as inner:
                    for first in range(IN_FLIGHT):
                        inner.start_soon(requester, first)

            return one_round

        results["one_way"] = _Rounds(total)
        await results["one_way"].measure(rounds, pid, one_way)
        results["request"] = _Rounds(total)
        await results["request"].measure(rounds, pid, requests(big))
        if small:
            results["request_256k"] = _Rounds(total)
            await results["request_256k"].measure(
                rounds, pid, requests(_packets(SMALL_PACKET_BYTES))
            )
        await transport.close_all("benchmark done")
        nursery.cancel_scope.cancel()
    return results


@attrs.frozen
class _Variant:
    listener: str  # a key of the child's ports
    masking: str = "fast"
    measurement: str = ""  # for sessions: one_way, request or request_256k


async def _measure_child(
    child: _ChildProcess, masking_kind: str, total: int, rounds: int, grid_id: bytes
) -> dict[str, dict[str, _Rounds]]:
    """Every variant the child of one masking kind serves; listener -> measurements."""
    ports, pid = child.ports, child.pid
    out: dict[str, dict[str, _Rounds]] = {
        "ws": {"": await _bench_ws(ports["ws"], total, rounds, pid, RECEIVE_BUFFER_BYTES)}
    }
    if masking_kind == "python":
        return out
    out["tcp"] = {"": await _bench_tcp(ports["tcp"], total, rounds, pid)}
    out["ws_default"] = {
        "": await _bench_ws(ports["ws_default"], total, rounds, pid, DEFAULT_RECEIVE_BYTES)
    }
    out["session"] = await _bench_session(
        ports["session"], total, rounds, pid, grid_id, seal_payloads=False, small=True
    )
    out["session_sealed"] = await _bench_session(
        ports["session_sealed"], total, rounds, pid, grid_id, seal_payloads=True, small=False
    )
    return out


async def _raw_tcp_only(child: _ChildProcess, total: int, rounds: int) -> _Rounds:
    return await _bench_tcp(child.ports["tcp"], total, rounds, child.pid)


def measure_raw_tcp(total: int, rounds: int = 2) -> dict[str, Any]:
    """Only the raw trio TCP row (the same child, the same code as :func:`run`'s).

    For benchmarks that put their rates beside what the loopback itself carries, in
    their own run, without paying for every transport variant.  ``cpu_s_per_gb`` is
    both sides together: what moving the bytes costs at the very least.
    """
    with _ChildProcess("fast", round_bytes=total, grid_id=os.urandom(16)) as child:
        row = trio.run(_raw_tcp_only, child, total, rounds).to_dict()
    row["cpu_s_per_gb"] = round(row["sender_cpu_s_per_gb"] + row["receiver_cpu_s_per_gb"], 3)
    row["bytes_per_round"] = total
    row["rounds"] = rounds
    return row


#: Row name -> the variant that produces it.
_ROWS: Final[dict[str, _Variant]] = {
    "raw trio TCP": _Variant("tcp"),
    "websocket, project settings": _Variant("ws"),
    "websocket, pure-Python masking": _Variant("ws", masking="python"),
    "websocket, default 4 KiB reads": _Variant("ws_default"),
    "session one-way send": _Variant("session", measurement="one_way"),
    f"session request/response ({IN_FLIGHT} in flight)": _Variant("session", measurement="request"),
    "session request/response, 256 KiB packets": _Variant("session", measurement="request_256k"),
    "session one-way send, sealed payloads": _Variant("session_sealed", measurement="one_way"),
    "session request/response, sealed payloads": _Variant("session_sealed", measurement="request"),
}


# --- the event loop while a hostile frame is refused ------------------------------------------

STALL_ROUNDS: Final = 5


def _nested_arrays_body(n_outer: int = 60_000, n_inner: int = 30) -> bytes:
    """A valid envelope whose body is 1.9 MiB of nested empty arrays (1.8 M objects)."""
    inner = b"\xdc" + n_inner.to_bytes(2, "big") + b"\x90" * n_inner
    return (
        b"\x83\xa1v"
        + bytes([PROTOCOL_VERSION])
        + b"\xa1k\xa4ping\xa1b\xdc"
        + n_outer.to_bytes(2, "big")
        + inner * n_outer
    )


def _sealed(link: PeerLink, body: bytes) -> bytes:
    """What an authenticated member can put on its own link: any body, correctly sealed."""
    import nacl.bindings as sodium

    session = link.session
    counter = session._tx_counter
    session._tx_counter += 1
    prefix = bytes([0x53, session._tx_dir]) + counter.to_bytes(8, "big")
    assert session._tx_key is not None
    return prefix + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        body, prefix, b"\x00" * 16 + counter.to_bytes(8, "big"), session._tx_key
    )


class _Quiet:
    async def handle_request(self, link: PeerLink, msg: Message) -> Message:
        return Error(request_id=getattr(msg, "request_id", 0), code="unsupported", message="")

    def handle_oneway(self, link: PeerLink, msg: Message) -> None:
        pass


async def _stall_round(grid_id: bytes) -> tuple[float, float]:
    """(worst ping ms while the frame is refused, median ping ms before it)."""

    def make() -> Transport:
        return _transport(NodeIdentity.generate(), grid_id, False, _Quiet())

    node, attacker, friend = make(), make(), make()
    async with trio.open_nursery() as nursery:
        for t in (node, attacker, friend):
            await nursery.start(t.run)
        bad = await attacker.connect(f"127.0.0.1:{node.port}")
        good = await friend.connect(f"127.0.0.1:{node.port}")
        quiet = sorted([await good.ping() for _ in range(20)])
        worst = 0.0
        done = trio.Event()

        async def keep_pinging() -> None:
            nonlocal worst
            for _ in range(1000):  # bounded: at most 1000 pings 2 ms apart
                worst = max(worst, await good.ping(timeout_s=10))
                if done.is_set():
                    return
                await trio.sleep(0.002)

        frame = _sealed(bad, _nested_arrays_body())
        async with trio.open_nursery() as pinging:
            pinging.start_soon(keep_pinging)
            await trio.sleep(0.02)
            await bad.ws.send_message(frame)
            with trio.fail_after(30):
                await bad.closed.wait()
            done.set()
        for t in (attacker, friend):
            await t.close_all()
        nursery.cancel_scope.cancel()
    return worst, quiet[len(quiet) // 2]


def measure_hostile_stall(grid_id: bytes) -> dict[str, Any]:
    """The median over rounds of the worst ping, and the inline decode it replaces."""
    body = _nested_arrays_body()
    inline: list[float] = []
    for _ in range(STALL_ROUNDS):
        started = time.perf_counter()
        with contextlib.suppress(RemoteProtocolError):
            decode_envelope(body)
        inline.append((time.perf_counter() - started) * 1000)
    rounds = [trio.run(_stall_round, grid_id) for _ in range(STALL_ROUNDS)]
    worst = sorted(r[0] for r in rounds)[len(rounds) // 2]
    quiet = sorted(r[1] for r in rounds)[len(rounds) // 2]
    return {
        "frame_bytes": len(body),
        "worst_ping_ms": round(worst, 2),
        "quiet_ping_ms": round(quiet, 3),
        "inline_decode_ms": round(sorted(inline)[len(inline) // 2], 2),
        "rounds": STALL_ROUNDS,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Measure every variant (see the module docstring); returns the figures as a dict."""
    total = QUICK_BYTES if quick else FULL_BYTES
    rounds = 2 if quick else 3
    grid_id = os.urandom(16)
    measured: dict[str, dict[str, dict[str, _Rounds]]] = {}
    for masking_kind in ("fast", "python"):
        with _ChildProcess(masking_kind, round_bytes=total, grid_id=grid_id) as child:
            _use_masking(masking_kind)
            try:
                measured[masking_kind] = trio.run(
                    _measure_child, child, masking_kind, total, rounds, grid_id
                )
            finally:
                _use_masking("fast")
    rows = {
        name: measured[v.masking][v.listener][v.measurement].to_dict() for name, v in _ROWS.items()
    }

    raw = rows["raw trio TCP"]["mb_s"]
    ws = rows["websocket, project settings"]["mb_s"]
    figures = [
        Figure(name, row["mb_s"], "MB/s", "raw trio TCP", raw).to_dict()
        for name, row in rows.items()
        if name != "raw trio TCP"
    ]
    figures += [
        Figure(
            "websocket: pure-Python vs numpy masking",
            rows["websocket, pure-Python masking"]["mb_s"],
            "MB/s",
            "websocket, project settings",
            ws,
        ).to_dict(),
        Figure(
            "session one-way vs bare websocket",
            rows["session one-way send"]["mb_s"],
            "MB/s",
            "websocket, project settings",
            ws,
        ).to_dict(),
    ]
    stall = measure_hostile_stall(grid_id)
    figures.append(
        Figure(
            "worst ping while a hostile 1.9 MiB frame is refused",
            stall["worst_ping_ms"],
            "ms",
            "the same frame decoded inline (the stall without the worker thread)",
            stall["inline_decode_ms"],
        ).to_dict()
    )
    session = rows["session one-way send"]["mb_s"]
    session_cpu = rows["session one-way send"]["cpu_bound_mb_s"]
    raw_cpu = rows["raw trio TCP"]["cpu_bound_mb_s"]
    figures.append(
        Figure(
            "session one-way, CPU-bound estimate",
            session_cpu,
            "MB/s",
            "raw trio TCP, CPU-bound estimate",
            raw_cpu,
        ).to_dict()
    )
    return {
        "benchmark": "transport",
        "quick": quick,
        "bytes_per_round": total,
        "message_bytes": MESSAGE_BYTES,
        "rounds": rounds,
        "in_flight": IN_FLIGHT,
        "receive_buffer_bytes": RECEIVE_BUFFER_BYTES,
        "max_message_size": MAX_MESSAGE,
        "rows": rows,
        "hostile_frame_stall": stall,
        "target": {
            "session_over_raw_tcp_at_least": 0.2,
            "session_over_raw_tcp": round(session / raw, 3),
            "met": session / raw >= 0.2,
            "cpu_bound_estimate_ratio": round(session_cpu / raw_cpu, 3),
        },
        "figures": figures,
    }


def format_table(results: dict[str, Any]) -> str:
    raw = results["rows"]["raw trio TCP"]["mb_s"]
    lines = [
        f"bench_transport: {results['bytes_per_round'] // MiB} MiB of "
        f"{results['message_bytes'] // 1024} KiB messages per round, best of "
        f"{results['rounds']}, sender dials a child process; MB = {MB} bytes",
        f"{'variant':<46} {'MB/s':>8} {'x raw TCP':>10} {'send CPU s/GB':>14} "
        f"{'recv CPU s/GB':>14} {'CPU-bound MB/s':>15}",
    ]
    for name, row in results["rows"].items():
        lines.append(
            f"{name:<46} {row['mb_s']:>8.1f} {row['mb_s'] / raw:>10.3f} "
            f"{row['sender_cpu_s_per_gb']:>14.2f} {row['receiver_cpu_s_per_gb']:>14.2f} "
            f"{row['cpu_bound_mb_s']:>15.1f}"
        )
    stall = results["hostile_frame_stall"]
    lines.append(
        f"hostile {stall['frame_bytes'] / MiB:.1f} MiB frame of nested arrays: worst ping "
        f"{stall['worst_ping_ms']:.1f} ms while it is refused (quiet: "
        f"{stall['quiet_ping_ms']:.2f} ms); decoding it inline would stall the loop "
        f"{stall['inline_decode_ms']:.1f} ms"
    )
    target = results["target"]
    lines.append(
        f"target: session >= {target['session_over_raw_tcp_at_least']}x raw TCP: "
        f"{target['session_over_raw_tcp']}x ({'met' if target['met'] else 'NOT met'}); "
        f"CPU-bound estimates: {target['cpu_bound_estimate_ratio']}x"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from gridnode.log import configure_logging

    configure_logging("warning")
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB rounds, best of 2")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--masking", choices=["fast", "python"], default="fast", help=argparse.SUPPRESS
    )
    parser.add_argument("--round-bytes", type=int, default=QUICK_BYTES, help=argparse.SUPPRESS)
    parser.add_argument("--message-bytes", type=int, default=MESSAGE_BYTES, help=argparse.SUPPRESS)
    parser.add_argument("--grid-id", default="00" * 16, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(
            masking_kind=args.masking,
            round_bytes=args.round_bytes,
            message_bytes=args.message_bytes,
            grid_id=bytes.fromhex(args.grid_id),
        )
        return 0
    started = time.perf_counter()
    results = run(quick=args.quick)
    results["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results))
        print(f"\n(total {results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
