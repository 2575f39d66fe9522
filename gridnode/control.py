"""The local control channel: how the ``gridnode`` CLI talks to its own running node.

A websocket on 127.0.0.1 (never another interface), guarded by a random token in
``HOME/control.token`` that only the node's owner can read (mode 0600): being able to
read the token is the proof of being the owner.  The running node writes
``HOME/run/control.json`` (address, pid, node id) so the CLI can find it; a stale file
from a killed node is detected by a failed connection and reported as "not running".

Frames are the protocol codec's ``Control*`` messages; parameters and results are JSON
objects so the CLI's ``--json`` output is the node's answer verbatim.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketRequest,
    open_websocket,
    serve_websocket,
)

from protocol import (
    PROTOCOL_VERSION,
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

from .errors import GridError
from .fsutil import atomic_write
from .log import get_logger

__all__ = ["ControlServer", "JobHandler", "NodeNotRunning", "call_node", "read_token"]

_log = get_logger(actor="control")
_LIMITS: Final = Limits(max_frame_bytes=8 * 1024 * 1024)
_MAX_WS: Final = 9 * 1024 * 1024

#: An event sink handed to a job: ``await emit({"event": "progress", ...})``.
Emit = Callable[[dict[str, Any]], Awaitable[None]]
#: The request actor's entry: run ``method`` with ``params``, stream events, return a result.
JobHandler = Callable[[str, dict[str, Any], Emit], Awaitable[dict[str, Any] | list[Any]]]


class NodeNotRunning(GridError):
    pass


class ControlError(GridError):
    """The node answered a control call with an error; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def token_path(home: Path) -> Path:
    return home / "control.token"


def run_info_path(home: Path) -> Path:
    return home / "run" / "control.json"


def ensure_token(home: Path) -> bytes:
    path = token_path(home)
    if not path.exists():
        atomic_write(path, secrets.token_hex(32).encode("ascii"), mode=0o600)
    return read_token(home)


def read_token(home: Path) -> bytes:
    try:
        return token_path(home).read_bytes().strip()
    except FileNotFoundError:
        raise NodeNotRunning(f"no control token in {home} (is this a node home?)") from None
    except PermissionError:
        raise NodeNotRunning(f"cannot read {token_path(home)}: only the node's owner may") from None


class ControlServer:
    """Accepts CLI connections and runs their calls through ``handler`` (the request actor)."""

    def __init__(self, *, home: Path, port: int, handler: JobHandler, node_id: str) -> None:
        self.home = home
        self.port = port
        self.handler = handler
        self.node_id = node_id
        self._token = ensure_token(home)
        self._scope = trio.CancelScope()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(
                    lambda task_status: serve_websocket(
                        self._accept,
                        "127.0.0.1",
                        self.port,
                        ssl_context=None,
                        handler_nursery=nursery,
                        max_message_size=_MAX_WS,
                        task_status=task_status,
                    )
                )
                self.port = server.port
                info = {
                    "address": f"127.0.0.1:{self.port}",
                    "pid": os.getpid(),
                    "node_id": self.node_id,
                }
                atomic_write(run_info_path(self.home), json.dumps(info).encode(), mode=0o600)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    run_info_path(self.home).unlink(missing_ok=True)

    def stop(self) -> None:
        self._scope.cancel()

    async def _accept(self, request: WebSocketRequest) -> None:
        try:
            ws = await request.accept()
        except (ConnectionClosed, trio.BrokenResourceError):
            return
        try:
            hello = decode(await ws.get_message(), limits=_LIMITS)  # type: ignore[arg-type]
            if not isinstance(hello, ControlHello) or not hmac.compare_digest(
                hello.token, self._token
            ):
                await ws.aclose(code=1008, reason="bad control token")
                return
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
            try:
                result = await self.handler(msg.method, params, emit)
                reply = ControlResult(request_id=msg.request_id, result=json.dumps(result))
            except ControlError as exc:
                reply = Error(request_id=msg.request_id, code=exc.code, message=str(exc)[:2000])
            except Exception as exc:  # never let one call take the node down
                _log.error("control_call_crashed", method=msg.method, exc_info=exc)
                reply = Error(
                    request_id=msg.request_id,
                    code="internal_error",
                    message=f"{type(exc).__name__}: {exc}"[:2000],
                )
        await ws.send_message(encode(reply))


def read_run_info(home: Path) -> dict[str, Any]:
    try:
        info = json.loads(run_info_path(home).read_text())
    except (FileNotFoundError, ValueError):
        raise NodeNotRunning(f"no node is running for {home}") from None
    if not isinstance(info, dict) or "address" not in info:
        raise NodeNotRunning(f"{run_info_path(home)} is damaged; restart the node")
    return info


async def call_node(
    home: Path,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    timeout_s: float | None = None,
) -> Any:
    """Run one control call against the node of ``home``; returns its JSON result."""
    info = read_run_info(home)
    token = read_token(home)
    host, _, port = str(info["address"]).rpartition(":")
    try:
        async with open_websocket(
            host, int(port), "/control", use_ssl=False, max_message_size=_MAX_WS
        ) as ws:
            await ws.send_message(encode(ControlHello(token=token, version=PROTOCOL_VERSION)))
            await ws.send_message(
                encode(ControlCall(request_id=1, method=method, params=json.dumps(params or {})))
            )
            with trio.fail_after(timeout_s) if timeout_s else _null_scope():
                while True:
                    msg = decode(await ws.get_message(), limits=_LIMITS)  # type: ignore[arg-type]
                    if isinstance(msg, ControlEvent):
                        if on_event is not None:
                            on_event(json.loads(msg.event))
                    elif isinstance(msg, ControlResult):
                        return json.loads(msg.result)
                    elif isinstance(msg, Error):
                        raise ControlError(msg.code, msg.message)
    except (OSError, HandshakeError) as exc:
        raise NodeNotRunning(
            f"the node of {home} is not running (cannot reach {info['address']}: {exc})"[:300]
        ) from None
    except ConnectionClosed as exc:
        reason = exc.reason.reason if exc.reason is not None else "connection closed"
        raise NodeNotRunning(f"the node closed the control connection: {reason}") from None
    except trio.TooSlowError:
        raise ControlError("timeout", f"{method} did not finish within {timeout_s} s") from None


class _null_scope:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
