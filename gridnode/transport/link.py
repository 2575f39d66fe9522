"""PeerLink: one authenticated session with one peer over one websocket.

The only place where trio-websocket meets ``protocol.Session`` (style.md 8.3).  A link
owns a reader task that feeds every received frame to the session and dispatches the
resulting messages: responses to the request waiting on their ``request_id``, requests
to the node's handler (each in its own task, bounded), one-way messages (gossip) to the
handler's non-blocking entry.

Backpressure: outgoing requests hold a slot of a per-link window (``max_in_flight``),
so a slow peer makes its callers wait instead of queueing without bound; incoming
requests hold a slot of the receive window, and when it is full the reader stops
reading, TCP fills up and the peer's sends block.

Cancellation: a request cancelled or timed out removes its waiter; a late answer is
dropped.  When the connection ends, every waiter fails at once with ``PeerGone``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from protocol import (
    Error,
    LocalProtocolError,
    Message,
    MessageReceived,
    Ping,
    Pong,
    RemoteProtocolError,
    Session,
    SessionClosed,
    short_node_id,
)

from ..errors import PeerGone, RemoteError, RequestTimeout
from ..log import get_logger
from .masking import Buffer, gathered_bytes, send_pieces
from .metered import MeteredStream

__all__ = ["UNSUPPORTED", "LinkStatistics", "PeerLink", "RequestHandler"]

_log = get_logger()

#: RFC 6455 close code for "policy violation": we use it for protocol refusals.
CLOSE_POLICY = 1008
#: A retired duplicate link closes after this long without a frame (see ``retire``).
RETIRE_QUIET_S: Final = 0.2
RETIRE_POLL_S: Final = 0.02
#: ``RemoteError`` code of a message the peer's protocol version has no word for.
UNSUPPORTED: Final = "unsupported"

#: Frames larger than this are opened in a worker thread (see ``_read_loop``).
THREAD_DECODE_BYTES = 64 * 1024
#: ... or whose detached payload, which the session only hashes, is larger than this:
#: a packet's hash (0.1-0.3 ms) costs less CPU on the loop than a thread hop (issue 11).
THREAD_HASH_BYTES = 1024 * 1024
#: A link holding shared read budget with no message finished for this long is closed.
STALL_TIMEOUT_S = 60.0


class RequestHandler(Protocol):
    """What a link needs from the node: answer requests, take one-way messages."""

    async def handle_request(
        self, link: PeerLink, msg: Message, payload_digest: bytes | None
    ) -> Message: ...

    def handle_oneway(self, link: PeerLink, msg: Message) -> None: ...


@attrs.frozen
class LinkStatistics:
    requests_sent: int
    requests_served: int
    in_flight: int
    bytes_sent: int
    bytes_received: int
    rtt_ms: float | None


class PeerLink:
    """An authenticated, READY session; constructed by the Transport after the handshake."""

    def __init__(
        self,
        *,
        ws: WebSocketConnection,
        session: Session,
        peer_address: str,
        dialed: bool,
        max_in_flight: int = 32,
        max_serving: int = 16,
        default_timeout_s: float = 30.0,
        metered: MeteredStream | None = None,
    ) -> None:
        assert session.peer_id is not None and session.is_ready
        self.ws = ws
        self.session = session
        self.peer_id: bytes = session.peer_id
        self.peer_address = peer_address
        self.dialed = dialed
        self.dialer_id = session.node_id if dialed else session.peer_id
        self.default_timeout_s = default_timeout_s
        self.rtt_ms: float | None = None
        self.opened_at = trio.current_time()
        #: The TCP stream under a dialed websocket: trio-websocket closes a server-side
        #: stream itself, but a client stream is ours to close, also when the graceful
        #: websocket close times out.
        self.stream: trio.abc.Stream | None = None
        #: The budgeted stream under ``ws`` (see metered.py): told when bytes are handled.
        self.metered = metered
        self.stall_timeout_s = STALL_TIMEOUT_S
        self._serving_bytes = 0
        self._last_message_at = trio.current_time()
        self.closed = trio.Event()
        self.close_reason = ""
        self._send_lock = trio.StrictFIFOLock()
        self._window = trio.Semaphore(max_in_flight)
        self._serving = trio.Semaphore(max_serving)
        self._max_serving = max_serving
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[MessageReceived | BaseException]] = {}
        self._requests_sent = 0
        self._requests_served = 0
        self._bytes_sent = 0
        self._bytes_received = 0
        self.log = _log.bind(peer=short_node_id(self.peer_id))

    @property
    def short_id(self) -> str:
        return short_node_id(self.peer_id)

    @property
    def is_open(self) -> bool:
        return not self.closed.is_set()

    @property
    def peer_version(self) -> int:
        """The protocol version negotiated with the peer (``protocol`` Rule 2a): what an
        older peer cannot read is not sent to it (``send`` refuses it as "unsupported")."""
        return self.session.version or self.session.min_version

    def speaks(self, msg: Message | type[Message]) -> bool:
        """Whether the peer's negotiated version has this kind of message."""
        return self.session.speaks(msg)

    def statistics(self) -> LinkStatistics:
        return LinkStatistics(
            requests_sent=self._requests_sent,
            requests_served=self._requests_served,
            in_flight=len(self._pending),
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            rtt_ms=self.rtt_ms,
        )

    # --- sending ----------------------------------------------------------------------------

    async def send(
        self,
        msg: Message,
        *,
        payload_digest: bytes | None = None,
        payload: Sequence[Buffer] | None = None,
    ) -> None:
        """Send one message; frames leave in the order their counters were assigned.

        ``payload``: the message's detached bytes in pieces (``Session.send``), copied
        once, into the websocket frame (``masking.send_pieces``)."""
        if self.session.is_ready and not self.session.speaks(msg):
            # What an older peer would answer had it a word for it: callers count it as
            # a refusal (an audit as a miss), never as a broken link.
            raise RemoteError(
                UNSUPPORTED,
                f"{self.short_id} speaks protocol {self.peer_version}; "
                f"{msg.KIND} is new in {msg.SINCE_VERSION}",
                peer=self.short_id,
            )
        async with self._send_lock:
            if self.closed.is_set() or not self.session.is_ready:
                raise PeerGone(
                    f"connection to {self.short_id} is closed: {self.close_reason or 'closing'}",
                    peer=self.short_id,
                )
            pieces = self.session.send_pieces(msg, payload_digest=payload_digest, payload=payload)
            try:
                await send_pieces(self.ws, pieces)
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._mark_closed(f"send failed: {exc!r}")
                raise PeerGone(
                    f"connection to {self.short_id} closed while sending", peer=self.short_id
                ) from None
            self._bytes_sent += sum(memoryview(piece).nbytes for piece in pieces)

    async def request(
        self,
        build: Callable[[int], Message],
        *,
        timeout_s: float | None = None,
        payload_digest: bytes | None = None,
        payload: Sequence[Buffer] | None = None,
    ) -> Message:
        """Send ``build(request_id)`` and wait for its answer.

        Raises:
            PeerGone: the connection closed before the answer.
            RequestTimeout: no answer within ``timeout_s``.
            RemoteError: the peer answered with an ``Error``.
        """
        answer, _ = await self.request_with_digest(
            build, timeout_s=timeout_s, payload_digest=payload_digest, payload=payload
        )
        return answer

    async def request_with_digest(
        self,
        build: Callable[[int], Message],
        *,
        timeout_s: float | None = None,
        payload_digest: bytes | None = None,
        payload: Sequence[Buffer] | None = None,
    ) -> tuple[Message, bytes | None]:
        """Like ``request``, also returning the BLAKE3 of the answer's detached payload as
        the session verified it (None when the answer had none), so the caller need not
        hash the payload again."""
        timeout = self.default_timeout_s if timeout_s is None else timeout_s
        async with self._window:
            request_id = next(self._ids)
            send_ch, recv_ch = trio.open_memory_channel[MessageReceived | BaseException](1)
            self._pending[request_id] = send_ch
            try:
                with trio.move_on_after(timeout) as scope:
                    await self.send(
                        build(request_id), payload_digest=payload_digest, payload=payload
                    )
                    self._requests_sent += 1
                    answer = await recv_ch.receive()
            finally:
                self._pending.pop(request_id, None)
            if scope.cancelled_caught:
                raise RequestTimeout(
                    f"{self.short_id} did not answer within {timeout:g} s", peer=self.short_id
                )
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer.message, Error):
            raise RemoteError(answer.message.code, answer.message.message, peer=self.short_id)
        return answer.message, answer.payload_digest

    async def ping(self, timeout_s: float = 5.0) -> float:
        """Round trip of a sealed ping through the whole stack, in ms; also kept as ``rtt_ms``."""
        start = trio.current_time()
        answer = await self.request(lambda rid: Ping(request_id=rid), timeout_s=timeout_s)
        if not isinstance(answer, Pong):
            raise RemoteError("unexpected", f"ping answered with {answer.KIND}", peer=self.short_id)
        self.rtt_ms = (trio.current_time() - start) * 1000.0
        return self.rtt_ms

    # --- receiving --------------------------------------------------------------------------

    async def run(self, handler: RequestHandler) -> None:
        """Read until the connection ends; serve requests in child tasks.  Never raises for a
        peer's misbehaviour: that closes the link with a reason instead."""
        try:
            async with trio.open_nursery() as serving:
                if self.metered is not None:
                    serving.start_soon(self._watch_stalls)
                await self._read_loop(handler, serving)
                serving.cancel_scope.cancel()
        finally:
            self._mark_closed(self.close_reason or "connection ended")
            if self.metered is not None:
                self.metered.release_all()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await self.ws.aclose()
                if self.stream is not None:
                    await trio.aclose_forcefully(self.stream)

    async def _read_loop(self, handler: RequestHandler, serving: trio.Nursery) -> None:
        while True:
            try:
                frame = await self.ws.get_message()
            except ConnectionClosed as exc:
                reason = exc.reason
                self.close_reason = self.close_reason or (
                    f"connection closed ({reason.code} {reason.reason or reason.name})"
                    if reason is not None
                    else "connection closed"
                )
                return
            if isinstance(frame, str):
                await self._refuse("text frames are not part of the protocol")
                return
            self._bytes_received += len(frame)
            self._last_message_at = trio.current_time()
            try:
                decoded, hashed = self.session.frame_work(frame)
                if decoded > THREAD_DECODE_BYTES or hashed > THREAD_HASH_BYTES:
                    # Decrypting, hashing and decoding a large frame takes milliseconds
                    # (a hostile one up to the object budget): off the event loop, so
                    # probes and other links are answered meanwhile.  The reader waits,
                    # so frames are still processed in order, one at a time.  A batch of
                    # packets whose header certifies them (Rule 6a) is only copied, and a
                    # packet's digest is checked in a fraction of a millisecond: the
                    # thread hop would cost more than the work.
                    events = await trio.to_thread.run_sync(self.session.receive, frame)
                else:
                    events = self.session.receive(frame)
            except RemoteProtocolError as exc:
                await self._refuse(f"{exc.code}: {exc.message}")
                return
            except LocalProtocolError:
                return  # we are in the error state already; the close is under way
            for event in events:
                if isinstance(event, SessionClosed):
                    self.close_reason = f"peer closed the session ({event.code} {event.reason})"
                    return
                if isinstance(event, MessageReceived):
                    await self._dispatch(handler, serving, event, len(frame))
            if self.metered is not None:
                self._settle_reads()

    async def _watch_stalls(self) -> None:
        """Close a link that holds part of the shared read budget (see metered.py) for a
        message it never finishes: a member that starts frames and stalls would otherwise
        keep that budget from everyone else for as long as its TCP connection lives."""
        assert self.metered is not None
        while True:
            await trio.sleep(min(5.0, self.stall_timeout_s / 4))
            idle = trio.current_time() - self._last_message_at
            if self.metered.granted > 0 and idle > self.stall_timeout_s and not self._serving_bytes:
                await self._refuse(
                    f"stalled: {self.metered.held} bytes of an unfinished message held for "
                    f"{idle:.0f} s"
                )
                return

    def _settle_reads(self) -> None:
        """Hand read bytes back to the budget: exactly when the websocket buffers nothing
        (framing and control frames included), else what has been handled so far."""
        assert self.metered is not None
        ws = self.ws
        if not ws._message_parts and ws._recv_channel.statistics().current_buffer_used == 0:
            # A frame being received whole is held as its pieces were (masking.py).
            self.metered.all_consumed(self._serving_bytes + gathered_bytes(ws))

    async def _dispatch(
        self,
        handler: RequestHandler,
        serving: trio.Nursery,
        event: MessageReceived,
        size: int = 0,
    ) -> None:
        msg = event.message
        request_id: Any = getattr(msg, "request_id", None)
        served = not msg.RESPONSE and request_id is not None and not isinstance(msg, Ping)
        if not served and self.metered is not None:
            # An answer goes to a request of ours (bounded by our own windows), a one-way
            # message to a lossy queue: the read bytes are handled.
            self.metered.consumed(size)
        if msg.RESPONSE:
            waiter = self._pending.get(request_id)
            if waiter is not None:
                # The waiter may have timed out in the meantime: a late answer is dropped.
                with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                    waiter.send_nowait(event)
            return
        if request_id is None:
            handler.handle_oneway(self, msg)
            return
        if isinstance(msg, Ping):
            await self.send(Pong(request_id=msg.request_id))
            return
        await self._serving.acquire()  # blocks the reader when the receive window is full
        self._serving_bytes += size  # held until served, in the budget's count too
        serving.start_soon(self._serve, handler, msg, event.payload_digest, request_id, size)

    async def _serve(
        self,
        handler: RequestHandler,
        msg: Message,
        digest: bytes | None,
        request_id: int,
        size: int = 0,
    ) -> None:
        try:
            try:
                answer = await handler.handle_request(self, msg, digest)
            except RemoteError as exc:
                answer = Error(request_id=request_id, code=exc.code, message=exc.remote_message)
            except Exception as exc:  # a bug serving one request must not kill the link
                self.log.error("request_handler_crashed", kind=msg.KIND, exc_info=exc)
                answer = Error(
                    request_id=request_id,
                    code="internal_error",
                    message=f"{type(exc).__name__} while serving {msg.KIND}",
                )
            self._requests_served += 1
            try:
                await self.send(answer)
            except LocalProtocolError as exc:  # e.g. an answer over the frame limit
                await self.send(
                    Error(request_id=request_id, code=exc.code, message=exc.message[:500])
                )
        except PeerGone:
            pass  # the requester went away; nobody is left to answer
        finally:
            self._serving.release()
            self._serving_bytes -= size
            if self.metered is not None:
                self.metered.consumed(size)

    async def _refuse(self, reason: str) -> None:
        self.close_reason = f"refused: {reason}"
        self.log.warning("peer_refused", reason=reason)
        with trio.move_on_after(1):
            await self.ws.aclose(code=CLOSE_POLICY, reason=reason[:120])

    def _mark_closed(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = self.close_reason or reason
        self.closed.set()
        gone = PeerGone(
            f"connection to {self.short_id} closed: {self.close_reason}", peer=self.short_id
        )
        for waiter in list(self._pending.values()):
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                waiter.send_nowait(gone)

    async def retire(self, code: str, reason: str, grace_s: float) -> None:
        """Close once the requests under way both ways are answered, within ``grace_s``.

        When both members dial each other at once, both ends keep the same one of the
        two sessions (the tie-break is symmetric) and retire the other.  Closing it at
        once failed whatever was in flight on it with ``PeerGone`` (seen in CI: a request
        sent just before the other session won).  The retired link is no longer handed
        out; it closes when it has nothing pending, serves nothing and has heard nothing
        for ``RETIRE_QUIET_S`` (a request already on the wire lands inside that window).
        """
        with trio.move_on_after(grace_s):
            for _ in range(int(grace_s / RETIRE_POLL_S) + 1):  # bounded by the grace, too
                busy = bool(self._pending) or self._serving.value < self._max_serving
                heard = trio.current_time() - self._last_message_at
                if self.closed.is_set() or (not busy and heard >= RETIRE_QUIET_S):
                    break
                await trio.sleep(RETIRE_POLL_S)
        await self.aclose(code, reason)

    async def aclose(self, code: str = "normal", reason: str = "") -> None:
        """Say goodbye (sealed) and close; idempotent."""
        if self.closed.is_set():
            return
        with trio.move_on_after(2):
            async with self._send_lock:
                frame = self.session.close(code, reason)
                if frame is not None:
                    with contextlib.suppress(
                        ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError
                    ):
                        await self.ws.send_message(frame)
        self.close_reason = self.close_reason or f"closed by us: {code} {reason}".strip()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(1):
                await self.ws.aclose()
            if self.stream is not None:
                await trio.aclose_forcefully(self.stream)
        self._mark_closed(self.close_reason)


def rtt_or_nan(link: PeerLink) -> float:
    return link.rtt_ms if link.rtt_ms is not None else math.nan
