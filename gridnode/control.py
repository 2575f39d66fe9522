"""The local control channel: how the ``gridnode`` CLI talks to its own running node.

**Where.** A Unix domain socket, ``HOME/run/control.sock``, in a directory the node keeps
owner-only (0700).  It used to be a websocket on 127.0.0.1: any local user may listen on
a port, and after a crash the CLI, following the dead node's ``control.json``, handed the
token to whoever listened there.  A name in an owner-only directory can be bound only by
the owner (or root).  The CLI takes that name from the home, never from a file a node
wrote, and before sending anything asks the kernel who listens (``SO_PEERCRED``): a
listener of another user gets nothing.  A socket left by a crashed node refuses
connections and reads as "not running"; a starting node removes it only after such a
refusal shows nobody listens, and refuses to start while a live node answers there.

**Long homes.** ``sun_path`` holds 108 bytes, and a deep home (pytest's
``/tmp/pytest-of-USER/...``, a long home directory) passes that.  Both sides then name the
socket through a descriptor of its directory, ``/proc/self/fd/N/control.sock``: Linux
resolves that link to the directory itself, so the name is ~30 bytes whatever the home,
the socket stays inside the home under its permissions, and nothing else changes.  The
alternatives were worse: ``chdir`` is process-wide (the node runs worker threads, the
CLI's callers may not expect it), and a fallback socket under /tmp or $XDG_RUNTIME_DIR is
a second place to create, check, record and clean up.  Without /proc, a home too long for
a socket name is refused with a message saying so.

**The token.** ``HOME/control.token``: 32 random bytes in hex, written afresh (mode 0600)
every time a node starts, so a token read in the past opens nothing after a restart.
The CLI re-checks the file as it reads it (a regular file, not a link, owned by the
user, no group or other permission bits) and refuses a token anyone else could have
read or planted.  The socket's permissions and the peer check keep other users out;
the token is the second lock, and the one that would still hold if a socket became
reachable by mistake (a home made world-readable, a copy of the home).

**Before the token.** A connection that has not presented a valid ``ControlHello``
within ``PREAUTH_DEADLINE_S`` is closed, and at most ``MAX_PENDING`` such connections are
held at once (more are closed as they are accepted): a stuck or runaway client can
neither pile up connections nor hold one open for nothing.

Frames are the protocol codec's ``Control*`` messages over a websocket on that socket;
parameters and results are JSON objects so the CLI's ``--json`` output is the node's
answer verbatim.  ``HOME/run/control.json`` (socket, pid, node id) tells scripts that the
node is up; the CLI does not need it.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    wrap_server_stream,
)

from protocol import (
    ControlCall,
    ControlEvent,
    ControlHello,
    ControlResult,
    Error,
    Limits,
    ProtocolError,
    decode,
    encode,
)

from . import control_client
from .control_files import (
    ANSWER_PART_CHARS,
    ANSWER_PARTS_PARAM,
    ControlError,
    NodeNotRunning,
    ensure_token,
    read_token,
    rotate_token,
    run_info_path,
    socket_name,
    socket_path,
    token_path,
)
from .control_files import peer_uid as _peer_uid
from .errors import GridError
from .fsutil import atomic_write
from .log import get_logger

__all__ = [
    "MAX_PENDING",
    "PREAUTH_DEADLINE_S",
    "ControlError",
    "ControlServer",
    "JobHandler",
    "NodeNotRunning",
    "call_node",
    "ensure_token",
    "read_token",
    "rotate_token",
    "run_info_path",
    "socket_path",
    "token_path",
]

_log = get_logger(actor="control")
_LIMITS: Final = Limits(max_frame_bytes=8 * 1024 * 1024)
_MAX_WS: Final = 9 * 1024 * 1024

#: Seconds a connection may take, from accept, to present a valid token.  The CLI does it
#: in milliseconds; a few seconds leave room for a loaded two-core machine.
PREAUTH_DEADLINE_S: Final = 3.0
#: Connections held at once that have not yet presented a valid token.  CLI calls
#: authenticate at once, so even a script running many in parallel stays far below it.
MAX_PENDING: Final = 16
#: Seconds the CLI waits for the socket to accept and the websocket upgrade to finish.
_CONNECT_TIMEOUT_S: Final = 5.0

#: An event sink handed to a job: ``await emit({"event": "progress", ...})``.
Emit = Callable[[dict[str, Any]], Awaitable[None]]
#: The request actor's entry: run ``method`` with ``params``, stream events, return a result.
JobHandler = Callable[[str, dict[str, Any], Emit], Awaitable[dict[str, Any] | list[Any]]]


async def _connect(path: Path, *, timeout_s: float) -> trio.SocketStream:
    """Raises ``ConnectionRefusedError`` (nobody listens), ``FileNotFoundError``,
    ``trio.TooSlowError`` or another ``OSError``."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with socket_name(path) as name, trio.fail_after(timeout_s):
            await sock.connect(name)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


class _WatchedStream(trio.abc.Stream):
    """A socket stream that says when its peer has gone.

    trio-websocket's server side waits for the upgrade request without noticing a peer
    that hung up, so a departed client would hold its pre-authentication slot until the
    deadline; ``on_gone`` runs when a read finds the stream ended.  Not being a
    ``trio.SocketStream`` also keeps trio-websocket from describing the ends as
    (host, port) pairs, which a Unix socket's names are not."""

    def __init__(self, stream: trio.SocketStream, on_gone: Callable[[], None]) -> None:
        self._stream = stream
        self._on_gone = on_gone

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._on_gone()
            raise
        if not data:
            self._on_gone()
        return data

    async def aclose(self) -> None:
        await self._stream.aclose()


class ControlServer:
    """Accepts CLI connections on the home's socket and runs their calls through
    ``handler`` (the request actor)."""

    def __init__(
        self,
        *,
        home: Path,
        handler: JobHandler,
        node_id: str,
        preauth_deadline_s: float = PREAUTH_DEADLINE_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.home = home
        self.handler = handler
        self.node_id = node_id
        self.preauth_deadline_s = preauth_deadline_s
        self.max_pending = max_pending
        self.socket_path = socket_path(home)
        #: Connections closed before authenticating, by reason (``cap``, ``deadline``,
        #: ``token``, ``peer``, ``malformed``).
        self.refused: collections.Counter[str] = collections.Counter()
        self._pending = 0
        self._token = b""
        self._scope = trio.CancelScope()

    @property
    def pending_auth(self) -> int:
        """Connections accepted that have not yet presented a valid token."""
        return self._pending

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._prepare_run_dir()
        await self._clear_stale_socket()
        # Only now: a live node found above must keep its token.
        self._token = rotate_token(self.home)
        listener, inode = await self._listen()
        try:
            with self._scope:
                info = {
                    "socket": str(self.socket_path),
                    "pid": os.getpid(),
                    "node_id": self.node_id,
                }
                atomic_write(run_info_path(self.home), json.dumps(info).encode(), mode=0o600)
                async with trio.open_nursery() as nursery:
                    await nursery.start(partial(trio.serve_listeners, self._handle, [listener]))
                    task_status.started()
        finally:
            run_info_path(self.home).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                if self.socket_path.lstat().st_ino == inode:  # not a successor's socket
                    self.socket_path.unlink()
            with trio.CancelScope(shield=True):
                await listener.aclose()

    def stop(self, grace_s: float = 0.5) -> None:
        """Stop within ``grace_s``: the call that asked for the shutdown (``gridnode
        stop``) still gets its answer, instead of a closed connection read as an error."""
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + grace_s)

    def _prepare_run_dir(self) -> None:
        run_dir = self.socket_path.parent
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = run_dir.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise GridError(f"{run_dir} must be a directory owned by you; remove it and retry")
        if stat.S_IMODE(info.st_mode) != 0o700:
            run_dir.chmod(0o700)

    async def _clear_stale_socket(self) -> None:
        """Remove a socket a crashed node left, after checking nobody answers on it."""
        path = self.socket_path
        try:
            info = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise GridError(f"{path} is not a socket; remove it and retry")
        try:
            stream = await _connect(path, timeout_s=1.0)
        except ConnectionRefusedError:
            path.unlink(missing_ok=True)
            _log.info("control_stale_socket_removed", path=str(path))
            return
        except trio.TooSlowError:
            pass  # a live node too busy to accept: running all the same
        except FileNotFoundError:
            return
        else:
            await trio.aclose_forcefully(stream)
        raise GridError(f"another node is already running for {self.home} (it answers on {path})")

    async def _listen(self) -> tuple[trio.SocketListener, int]:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with socket_name(self.socket_path) as name:
                await sock.bind(name)
            os.chmod(self.socket_path, 0o600)
            sock.listen(2 * self.max_pending)
        except BaseException:
            sock.close()
            raise
        return trio.SocketListener(sock), self.socket_path.lstat().st_ino

    def _refuse(self, reason: str, detail: str) -> None:
        self.refused[reason] += 1
        _log.warning("control_refused", reason=reason, detail=detail)

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self._pending >= self.max_pending:
            self._refuse("cap", f"{self._pending} connections are waiting to authenticate")
            await trio.aclose_forcefully(stream)
            return
        self._pending += 1
        pending = True
        try:
            uid = _peer_uid(stream.socket)
            # This user's processes, and root (who can read the token anyway).
            if uid is not None and uid not in (os.geteuid(), 0):
                self._refuse("peer", f"a process of uid {uid} connected")
                await trio.aclose_forcefully(stream)
                return
            async with trio.open_nursery() as nursery:
                try:
                    ws = None
                    auth = trio.CancelScope(deadline=trio.current_time() + self.preauth_deadline_s)
                    with auth:
                        ws = await self._authenticate(nursery, _WatchedStream(stream, auth.cancel))
                    self._pending -= 1
                    pending = False
                    if ws is not None:
                        await self._serve(ws)
                    elif auth.cancelled_caught and trio.current_time() >= auth.deadline:
                        self._refuse("deadline", f"no token within {self.preauth_deadline_s:g} s")
                finally:
                    nursery.cancel_scope.cancel()
                    await trio.aclose_forcefully(stream)
        finally:
            if pending:
                self._pending -= 1

    async def _authenticate(
        self, nursery: trio.Nursery, stream: trio.abc.Stream
    ) -> WebSocketConnection | None:
        """The websocket, once its first frame carried this run's token; else None."""
        try:
            request = await wrap_server_stream(nursery, stream, max_message_size=_MAX_WS)
            ws = await request.accept()
            hello = decode(await ws.get_message(), limits=_LIMITS)  # type: ignore[arg-type]
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        except (ProtocolError, TypeError) as exc:
            self._refuse("malformed", str(exc)[:200])
            return None
        if not isinstance(hello, ControlHello) or not hmac.compare_digest(hello.token, self._token):
            self._refuse("token", "bad control token")
            with trio.move_on_after(1):
                await ws.aclose(code=1008, reason="bad control token")
            return None
        return ws

    async def _serve(self, ws: WebSocketConnection) -> None:
        try:
            while True:
                frame = await ws.get_message()
                msg = decode(frame, limits=_LIMITS)  # type: ignore[arg-type]
                if not isinstance(msg, ControlCall):
                    await ws.aclose(code=1008, reason="expected control_call")
                    return
                await self._serve_call(ws, msg)
        except ConnectionClosed:
            return
        except (ProtocolError, TypeError) as exc:
            _log.warning("control_refused", reason=str(exc))
            with trio.move_on_after(1):
                await ws.aclose(code=1008, reason=str(exc)[:120])

    @staticmethod
    async def _send_in_parts(ws: Any, request_id: int, text: str) -> str:
        """An answer longer than one control message, to a client that can join it:
        ``answer_part`` events of ``ANSWER_PART_CHARS`` each, then what stands in for
        the answer (how many parts).  ``json.dumps`` writes ASCII, and a part's quotes
        and backslashes at most double inside its event, so every event fits."""
        count = 0
        for start in range(0, len(text), ANSWER_PART_CHARS):
            part = {"event": "answer_part", "text": text[start : start + ANSWER_PART_CHARS]}
            await ws.send_message(
                encode(ControlEvent(request_id=request_id, event=json.dumps(part)))
            )
            count += 1
        return json.dumps({ANSWER_PARTS_PARAM: count})

    async def _serve_call(self, ws: Any, msg: ControlCall) -> None:
        async def emit(event: dict[str, Any]) -> None:
            await ws.send_message(
                encode(ControlEvent(request_id=msg.request_id, event=json.dumps(event)))
            )

        try:
            params = json.loads(msg.params)
            if not isinstance(params, dict):
                raise ValueError("params must be a JSON object")
        except ValueError as exc:
            reply: Any = Error(request_id=msg.request_id, code="bad_params", message=str(exc))
        else:
            parts_ok = params.pop(ANSWER_PARTS_PARAM, False) is True
            try:
                text = json.dumps(await self.handler(msg.method, params, emit))
                if parts_ok and len(text) > ANSWER_PART_CHARS:
                    text = await self._send_in_parts(ws, msg.request_id, text)
                reply = ControlResult(request_id=msg.request_id, result=text)
            except ControlError as exc:
                reply = Error(request_id=msg.request_id, code=exc.code, message=str(exc)[:2000])
            except Exception as exc:  # never let one call take the node down
                _log.error("control_call_crashed", method=msg.method, exc_info=exc)
                reply = Error(
                    request_id=msg.request_id,
                    code="internal_error",
                    message=f"{type(exc).__name__}: {exc}"[:2000],
                )
        try:
            frame = encode(reply)
        except ProtocolError as exc:
            # An answer past the control protocol's limits (a huge listing asked for by
            # an old client): the caller hears why, and the connection stays usable.
            _log.warning("control_answer_refused", method=msg.method, reason=str(exc))
            frame = encode(
                Error(
                    request_id=msg.request_id,
                    code="too_large",
                    message=f"the answer to {msg.method} is too large to send ({exc})"[:2000],
                )
            )
        await ws.send_message(frame)


async def call_node(
    home: Path,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    timeout_s: float | None = None,
    join_parts: bool = True,
) -> Any:
    """``gridnode.control_client.call`` for trio code (tests, tools): the one client, run
    in a worker thread.  Cancelling abandons the thread, which ends with its socket."""
    call = partial(
        control_client.call,
        home,
        method,
        params,
        on_event=on_event,
        timeout_s=timeout_s,
        join_parts=join_parts,
    )
    return await trio.to_thread.run_sync(call, abandon_on_cancel=True)
