"""Transport: the websocket server, the dialer and the table of live PeerLinks.

One authenticated session per peer pair, reused by every actor.  When two nodes dial
each other at the same moment, both end up with two links; each side keeps the one
whose dialer has the smaller node id, so both keep the same link without talking
about it.  Connection tasks live in the transport's own nursery (trio-websocket's
``handler_nursery`` pattern), so peer churn never touches the actors.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
    wrap_server_stream,
)

from protocol import (
    HANDSHAKE_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Limits,
    ProtocolError,
    Role,
    Session,
    short_node_id,
)

from ..admission import Admission
from ..byte_budget import ByteBudget
from ..config import parse_address
from ..errors import HandshakeFailed, PeerGone
from ..identity import NodeIdentity
from ..log import get_logger
from .link import CLOSE_POLICY, PeerLink, RequestHandler
from .masking import install as install_fast_masking
from .masking import receive_whole_frames
from .metered import INBOUND_BUDGET_BYTES, MeteredStream

__all__ = ["Transport", "TransportSettings"]

install_fast_masking()

_log = get_logger(actor="transport")

#: Measured (benchmarks/bench_transport.py): trio-websocket's default 4 KiB read size
#: caps a session near 70 MB/s; 256 KiB reads reach the CPU limit of the session.  Reads
#: of up to 1 MiB take a packet frame in one or two wakeups of the websocket's reader
#: instead of four or five (issue 11: each costs the event loop more than the bytes'
#: copy).  A read returns what the socket holds: short messages still take one read.
RECEIVE_BUFFER_BYTES: Final = 1024 * 1024
#: Slack above the protocol's frame limit for the session header and websocket framing.
FRAME_SLACK_BYTES: Final = 64 * 1024
SOFTWARE: Final = "gridnode/0.1"
#: Connections still in the websocket upgrade or the session handshake, in all and from
#: one address.  Each costs at most a few KiB (handshake messages are capped at
#: ``HANDSHAKE_MAX_FRAME_BYTES``) and ends by ``handshake_timeout_s``; over the caps a new
#: connection is closed at once and the ones already there go on.
MAX_PREAUTH: Final = 64
MAX_PREAUTH_PER_IP: Final = 8
#: Authenticated sessions; a grid larger than this still works (sessions are opened on
#: demand and idle ones dropped), this only stops one host from holding every slot.
MAX_SESSIONS: Final = 512
#: A session that carried nothing either way for this long is closed: at 10,000 members
#: a node probes and gossips with thousands of others an hour, each once in a while.
SESSION_IDLE_S: Final = 120.0
#: At the session cap, a new authenticated session replaces the one quiet longest, but
#: only one quiet for at least this long (a busy node refuses rather than thrashes).
EVICTABLE_AFTER_S: Final = 5.0
#: How often idle sessions are looked for (at most; shorter for a short idle time).
IDLE_SWEEP_S: Final = 15.0
#: Websocket messages before authentication: a session handshake frame plus framing.
PREAUTH_MESSAGE_BYTES: Final = HANDSHAKE_MAX_FRAME_BYTES + 256


class TransportSettings:
    def __init__(
        self,
        *,
        grid_id: bytes,
        listen_host: str,
        listen_port: int,
        max_frame_bytes: int,
        seal_payloads: bool,
        request_timeout_s: float,
        handshake_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        max_in_flight: int = 32,
        max_serving: int = 16,
        max_preauth: int = MAX_PREAUTH,
        max_preauth_per_ip: int = MAX_PREAUTH_PER_IP,
        max_sessions: int = MAX_SESSIONS,
        inbound_budget_bytes: int = INBOUND_BUDGET_BYTES,
        session_idle_s: float = SESSION_IDLE_S,
        max_protocol_version: int = PROTOCOL_VERSION,
    ) -> None:
        self.grid_id = grid_id
        self.listen_host = listen_host
        self.listen_port = listen_port
        # time.sleep(0) releases the GIL: see Limits.pause.
        self.limits = Limits(
            max_frame_bytes=max_frame_bytes, pause=functools.partial(time.sleep, 0)
        )
        self.seal_payloads = seal_payloads
        self.request_timeout_s = request_timeout_s
        self.handshake_timeout_s = handshake_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_in_flight = max_in_flight
        self.max_serving = max_serving
        self.max_preauth = max_preauth
        self.max_preauth_per_ip = max_preauth_per_ip
        self.max_sessions = max_sessions
        self.inbound_budget_bytes = inbound_budget_bytes
        self.session_idle_s = session_idle_s
        #: The newest protocol version this node offers (``protocol`` Rule 2a).  Below
        #: ``PROTOCOL_VERSION`` only to test a grid half upgraded: a node of the previous
        #: release is this one with the previous maximum.
        self.max_protocol_version = max_protocol_version


def _peer_host(ws: WebSocketConnection) -> str:
    """The peer's IP address; the stream under ``ws`` is a MeteredStream, which
    trio-websocket cannot ask for its addresses, so ask its socket."""
    sock = getattr(ws._stream, "socket", None)
    if sock is None:
        return ""
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return ""


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a Unix socket path or a name: not an address on the network
        return host in ("localhost", "")


class Transport:
    """Serve and dial authenticated sessions; hand each READY link to ``handler``."""

    def __init__(
        self,
        *,
        identity: NodeIdentity,
        settings: TransportSettings,
        handler: RequestHandler,
        advertised_address: str | None = None,
        admit: Callable[[bytes, str], Awaitable[str | None]] | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.identity = identity
        self.settings = settings
        self.handler = handler
        self.port = settings.listen_port
        self._advertised = advertised_address
        self._admit = admit
        #: The grid's subscription rules (None: everyone is admitted, as in tests).
        self.admission = admission
        self._links: dict[bytes, PeerLink] = {}
        self._dialing: dict[str, trio.Event] = {}
        self._by_address: dict[str, bytes] = {}
        self._nursery: trio.Nursery | None = None
        self._server_scope: trio.CancelScope | None = None
        self.link_added: Callable[[PeerLink], None] | None = None
        self.link_removed: Callable[[PeerLink], None] | None = None
        self.refused_handshakes = 0
        self.refused_connections = 0
        #: Bytes read from all peers and not yet handled, beyond each link's free share.
        self.inbound = ByteBudget(settings.inbound_budget_bytes)
        self._preauth = 0
        self._preauth_by_ip: dict[str, int] = {}
        #: Idle eviction: per link, its traffic counters when last seen and since when
        #: they have not moved (links are sampled, so link.py needs no hook).
        self._activity: dict[PeerLink, tuple[tuple[int, int, int], float]] = {}
        self.sessions_evicted = 0
        self.log = _log.bind(node=identity.short_id)

    @property
    def address(self) -> str:
        if self._advertised:
            return self._advertised
        return f"{self.settings.listen_host}:{self.port}"

    def links(self) -> list[PeerLink]:
        return [link for link in self._links.values() if link.is_open]

    def link(self, node_id: bytes) -> PeerLink | None:
        link = self._links.get(node_id)
        return link if link is not None and link.is_open else None

    # --- lifetime -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled.  Reports started once the port is bound."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._server_scope = trio.CancelScope()
            listeners = await nursery.start(self._serve)
            self.port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(self._evict_idle)
            task_status.started()
            await trio.sleep_forever()

    async def _serve(self, *, task_status: trio.TaskStatus[Any]) -> None:
        assert self._nursery is not None and self._server_scope is not None
        listeners = await trio.open_tcp_listeners(
            self.settings.listen_port, host=self.settings.listen_host
        )
        with self._server_scope:
            await trio.serve_listeners(
                self._on_connection,
                listeners,
                handler_nursery=self._nursery,
                task_status=task_status,
            )

    # --- idle sessions ---------------------------------------------------------------------------

    def _quiet_since(self, now: float) -> dict[PeerLink, float]:
        """When each open link last carried anything (in flight counts as active)."""
        seen: dict[PeerLink, tuple[tuple[int, int, int], float]] = {}
        for link in self._links.values():
            if not link.is_open:
                continue
            stats = link.statistics()
            counters = (stats.bytes_sent, stats.bytes_received, stats.in_flight)
            before = self._activity.get(link)
            if before is None or before[0] != counters or stats.in_flight:
                seen[link] = (counters, now)
            else:
                seen[link] = before
        self._activity = seen
        return {link: since for link, (_, since) in seen.items()}

    async def _evict_idle(self) -> None:
        """Close sessions idle for ``session_idle_s`` (graceful: ``retire`` waits for
        anything under way), so a node of a large grid does not keep a session to
        every member it ever probed."""
        idle_s = self.settings.session_idle_s
        while True:  # runs for the transport's lifetime; each pass is bounded
            await trio.sleep(max(0.05, min(IDLE_SWEEP_S, idle_s / 4)))
            now = trio.current_time()
            for link, since in self._quiet_since(now).items():
                if now - since >= idle_s:
                    self._retire_idle(link, "idle")

    def _retire_idle(self, link: PeerLink, why: str) -> None:
        self._activity.pop(link, None)
        if self._links.get(link.peer_id) is link:
            del self._links[link.peer_id]
            if self.link_removed is not None:
                self.link_removed(link)
        self.sessions_evicted += 1
        self.log.debug("session_evicted", peer=link.short_id, reason=why)
        self._nursery_spawn(link.retire, "idle", f"session {why}", self.settings.request_timeout_s)

    def _evictable(self, now: float) -> PeerLink | None:
        """The session quiet longest, if quiet for ``EVICTABLE_AFTER_S`` at least."""
        quiet = self._quiet_since(now)
        if not quiet:
            return None
        link, since = min(quiet.items(), key=lambda item: item[1])
        return link if now - since >= EVICTABLE_AFTER_S else None

    def _at_capacity(self) -> bool:
        """Full, with no session quiet enough to give way to a new one."""
        if len(self._links) < self.settings.max_sessions:
            return False
        return self._evictable(trio.current_time()) is None

    def _make_room(self) -> None:
        """Before a new session is kept: at the cap, the quietest one gives way."""
        for _ in range(len(self._links)):  # bounded by the sessions there are
            if len(self._links) < self.settings.max_sessions:
                return
            link = self._evictable(trio.current_time())
            if link is None:
                return
            self._retire_idle(link, "evicted for a new session")

    def stop_accepting(self) -> None:
        """First step of shutdown: take no new connections; existing links keep working."""
        if self._server_scope is not None:
            self._server_scope.cancel()

    async def close_all(self, reason: str = "shutting down") -> None:
        async with trio.open_nursery() as nursery:
            for link in list(self._links.values()):
                nursery.start_soon(link.aclose, "shutdown", reason)

    # --- handshake ----------------------------------------------------------------------------

    def _new_session(self, role: Role, *, loopback: bool) -> Session:
        """Payloads are sealed on every link that leaves the machine (and on loopback too
        with ``seal_payloads``): both ends of a connection see the same addresses, so
        both ask for sealing, and each refuses a payload that arrives detached."""
        return Session(
            role=role,
            grid_id=self.settings.grid_id,
            signing_key=self.identity.signing_key,
            listen_address=self.address,
            software=SOFTWARE,
            limits=self.settings.limits,
            seal_payloads=self.settings.seal_payloads,
            require_sealed=self.settings.seal_payloads or not loopback,
            certificate=self.admission.own_certificate() if self.admission else b"",
            check_peer=self.admission.check if self.admission else None,
            max_version=self.settings.max_protocol_version,
        )

    async def _handshake(self, ws: WebSocketConnection, role: Role, where: str) -> Session:
        session = self._new_session(role, loopback=_is_loopback(_peer_host(ws)))
        session.start()
        try:
            with trio.fail_after(self.settings.handshake_timeout_s):
                for frame in session.data_to_send():
                    await ws.send_message(frame)
                while not session.is_ready:
                    received = await ws.get_message()
                    if isinstance(received, str):
                        raise HandshakeFailed("text frame during handshake", peer=where)
                    session.receive(received)
                    for out in session.data_to_send():
                        await ws.send_message(out)
        except ProtocolError as exc:
            self.refused_handshakes += 1
            self.log.warning("handshake_refused", peer=where, code=exc.code, reason=exc.message)
            with trio.move_on_after(1):
                await ws.aclose(code=CLOSE_POLICY, reason=f"{exc.code}: {exc.message}"[:120])
            raise HandshakeFailed(
                f"handshake with {where} refused: {exc.message}", peer=where, code=exc.code
            ) from None
        except trio.TooSlowError:
            with trio.move_on_after(1):
                await ws.aclose(code=CLOSE_POLICY, reason="handshake timeout")
            raise HandshakeFailed(f"handshake with {where} timed out", peer=where) from None
        except ConnectionClosed as exc:
            reason = exc.reason.reason if exc.reason is not None else ""
            raise HandshakeFailed(
                f"{where} closed the connection during the handshake: {reason}",
                peer=where,
                code=reason.split(":", 1)[0] if reason else "closed",
            ) from None
        assert session.peer_id is not None
        if self._admit is not None:
            refusal = await self._admit(session.peer_id, where)
            if refusal:
                goodbye = session.close("not_admitted", refusal)
                with trio.move_on_after(1):
                    if goodbye is not None:
                        await ws.send_message(goodbye)
                    await ws.aclose(code=CLOSE_POLICY, reason=refusal[:120])
                raise HandshakeFailed(refusal, peer=where, code="not_admitted")
        return session

    def _make_link(
        self,
        ws: WebSocketConnection,
        session: Session,
        *,
        dialed: bool,
        address: str,
        metered: MeteredStream | None = None,
    ) -> PeerLink:
        # Authenticated, and ``ws`` has its full message size: large frames may now be
        # received whole, copied once (masking.py; issue 11).
        receive_whole_frames(ws)
        return PeerLink(
            metered=metered,
            ws=ws,
            session=session,
            peer_address=address,
            dialed=dialed,
            max_in_flight=self.settings.max_in_flight,
            max_serving=self.settings.max_serving,
            default_timeout_s=self.settings.request_timeout_s,
        )

    def _register(self, link: PeerLink) -> bool:
        """Keep at most one link per peer; returns False if ``link`` lost the tie-break."""
        current = self._links.get(link.peer_id)
        if current is not None and current.is_open:
            keep_new = link.dialer_id < current.dialer_id
            if not keep_new:
                return False
            self._nursery_spawn(
                current.retire,
                "duplicate",
                "a newer session replaced this one",
                self.settings.request_timeout_s,
            )
        if current is None or not current.is_open:
            self._make_room()
        self._links[link.peer_id] = link
        stats = link.statistics()
        self._activity[link] = (
            (stats.bytes_sent, stats.bytes_received, stats.in_flight),
            trio.current_time(),
        )
        if self.link_added is not None:
            self.link_added(link)
        self.log.info(
            "peer_connected", peer=link.short_id, address=link.peer_address, dialed=link.dialed
        )
        return True

    def _nursery_spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    async def _run_link(self, link: PeerLink) -> None:
        """One link's lifetime.  A bug in one connection's handling must not take the node
        down with it: it is logged with its traceback and the link is closed."""
        try:
            await link.run(self.handler)
        except Exception:
            self.log.error("link_crashed", peer=link.short_id, exc_info=True)
            with trio.CancelScope(shield=True):
                await link.aclose("internal_error", "internal error")
        finally:
            if self._links.get(link.peer_id) is link:
                del self._links[link.peer_id]
                if self.link_removed is not None:
                    self.link_removed(link)
            self.log.info("peer_disconnected", peer=link.short_id, reason=link.close_reason)

    async def _on_connection(self, stream: trio.SocketStream) -> None:
        """One inbound TCP connection, from the first byte to the end of its link.

        Until the peer has proven itself it may cost only a slot under the caps, a few KiB
        of buffers and ``handshake_timeout_s`` of time for the websocket upgrade and the
        session handshake together (a slow drip or an idle socket simply times out)."""
        try:
            ip = str(stream.socket.getpeername()[0])
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        settings = self.settings
        if (
            self._preauth >= settings.max_preauth
            or self._preauth_by_ip.get(ip, 0) >= settings.max_preauth_per_ip
            or self._at_capacity()
        ):
            self.refused_connections += 1
            await trio.aclose_forcefully(stream)
            return
        self._preauth += 1
        self._preauth_by_ip[ip] = self._preauth_by_ip.get(ip, 0) + 1
        try:
            accepted = await self._authenticate(stream, ip)
        finally:
            self._preauth -= 1
            left = self._preauth_by_ip[ip] - 1
            if left:
                self._preauth_by_ip[ip] = left
            else:
                del self._preauth_by_ip[ip]
        if accepted is None:
            await trio.aclose_forcefully(stream)
            return
        ws, session, where, metered = accepted
        # Authenticated: now, and only now, frames may be full size and reads large.
        ws._max_message_size = settings.limits.max_frame_bytes + FRAME_SLACK_BYTES
        ws._receive_buffer_size = RECEIVE_BUFFER_BYTES
        # The peer's advertised listen address, not its ephemeral source port, is how we
        # (and gossip) reach it later.
        address = session.peer_address or where
        link = self._make_link(ws, session, dialed=False, address=address, metered=metered)
        if not self._register(link):
            await link.aclose("duplicate", "an older session to this peer is kept")
            return
        await self._run_link(link)

    async def _authenticate(
        self, stream: trio.SocketStream, ip: str
    ) -> tuple[WebSocketConnection, Session, str, MeteredStream] | None:
        """The websocket upgrade and the session handshake, under one deadline."""
        assert self._nursery is not None
        where = ip
        metered = MeteredStream(stream, self.inbound)
        with trio.move_on_after(self.settings.handshake_timeout_s):
            try:
                request = await wrap_server_stream(
                    self._nursery,
                    metered,
                    message_queue_size=1,
                    max_message_size=PREAUTH_MESSAGE_BYTES,
                    receive_buffer_size=4096,
                )
                ws = await request.accept()
            except (ConnectionClosed, HandshakeError, trio.BrokenResourceError, OSError):
                return None
            with contextlib.suppress(OSError):
                where = "{}:{}".format(*stream.socket.getpeername()[:2])
            try:
                session = await self._handshake(ws, Role.RESPONDER, where)
            except HandshakeFailed:
                return None
            return ws, session, where, metered
        self.refused_handshakes += 1
        self.log.info("handshake_timeout", peer=where)
        return None

    # --- dialing ------------------------------------------------------------------------------

    async def connect(self, address: str, *, expect: bytes | None = None) -> PeerLink:
        """The live link to the node at ``address``, dialing it if needed.

        Concurrent callers for one address share one dial.  ``expect`` refuses a node whose
        id differs (an address reused by another node).  Without it (a seed) the address
        stands for the node this transport met there when it last dialled it: a link is
        reused, and a new dial accepted, only for that node.  The listen address a peer
        claims in its own Hello is never taken for where it is: anyone may claim a seed's
        address, and our dials to the seed would go to it.
        """
        for _ in range(3):  # bounded: a dial that loses a tie-break is retried once or twice
            want = expect if expect is not None else self._by_address.get(address)
            if want is not None and (link := self.link(want)) is not None:
                return link
            pending = self._dialing.get(address)
            if pending is not None:
                await pending.wait()
                continue
            done = trio.Event()
            self._dialing[address] = done
            try:
                return await self._dial(address, want)
            except _LostTieBreak:
                continue
            finally:
                del self._dialing[address]
                done.set()
        raise PeerGone(f"could not settle one session with {address}", peer=address)

    async def _dial(self, address: str, expect: bytes | None) -> PeerLink:
        assert self._nursery is not None, "Transport.run() must be started first"
        host, port = parse_address(address, key="peer address")
        stream: trio.SocketStream | None = None
        try:
            with trio.fail_after(self.settings.connect_timeout_s):
                stream = await trio.open_tcp_stream(host, port)
                metered = MeteredStream(stream, self.inbound)
                ws = await wrap_client_stream(
                    self._nursery,
                    metered,  # type: ignore[arg-type]  # any trio Stream works at run time
                    host,
                    "/gridnode",
                    message_queue_size=1,
                    max_message_size=self.settings.limits.max_frame_bytes + FRAME_SLACK_BYTES,
                    receive_buffer_size=RECEIVE_BUFFER_BYTES,
                )
        except BaseException as exc:
            # trio-websocket does not close the stream when its handshake fails or is
            # cancelled; we own the stream, so we do.
            if stream is not None:
                await trio.aclose_forcefully(stream)
            if isinstance(exc, OSError | HandshakeError | ConnectionClosed | trio.TooSlowError):
                raise PeerGone(
                    f"cannot connect to {address}: {exc!r}"[:200], peer=address
                ) from None
            raise
        try:
            session = await self._handshake(ws, Role.INITIATOR, address)
        except BaseException:
            await trio.aclose_forcefully(stream)  # cancelled or refused mid-handshake
            raise
        assert session.peer_id is not None
        if expect is not None and session.peer_id != expect:
            with trio.move_on_after(1):
                await ws.aclose(code=CLOSE_POLICY, reason="unexpected node id")
            await trio.aclose_forcefully(stream)  # the close handshake may have timed out
            raise PeerGone(
                f"{address} is node {short_node_id(session.peer_id)}, not {short_node_id(expect)}",
                peer=address,
            )
        self._bind_address(address, session.peer_id)
        link = self._make_link(ws, session, dialed=True, address=address, metered=metered)
        link.stream = stream
        if not self._register(link):
            await link.aclose("duplicate", "an older session to this peer is kept")
            raise _LostTieBreak
        self._nursery.start_soon(self._run_link, link)
        return link

    def _bind_address(self, address: str, node_id: bytes) -> None:
        """Remember who answered our own dial to ``address``: the handshake proved it.

        Kept for the run (the seed list is the configuration's; nothing is written), most
        recently dialled last, at most ``_MAX_ADDRESS_BINDINGS`` addresses.
        """
        bindings = self._by_address
        bindings.pop(address, None)
        while len(bindings) >= _MAX_ADDRESS_BINDINGS:
            del bindings[next(iter(bindings))]
        bindings[address] = node_id


#: Addresses whose node this transport has met by dialling them (members come and go;
#: one entry is ~150 bytes).
_MAX_ADDRESS_BINDINGS: Final = 65536


class _LostTieBreak(Exception):
    pass
