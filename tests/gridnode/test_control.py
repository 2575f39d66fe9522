"""The control channel: the CLI hands its token only to its own node, and a local
stranger can cost the node little before presenting one (issue 8)."""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketRequest,
    serve_websocket,
    wrap_client_stream,
    wrap_server_stream,
)

from gridnode.control import (
    ControlError,
    ControlServer,
    Emit,
    NodeNotRunning,
    call_node,
    ensure_token,
    read_token,
    run_info_path,
    socket_path,
    token_path,
)
from gridnode.errors import GridError
from gridnode.log import configure_logging


def make_home(path: Path) -> Path:
    path.mkdir(parents=True)
    path.chmod(0o700)
    ensure_token(path)
    return path


class Recorder:
    """The node's request actor, reduced to what these tests look at."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, method: str, params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        self.calls.append((method, params))
        await emit({"event": "progress", "files": 1})
        return {"method": method, "params": params}


@asynccontextmanager
async def serving(home: Path, handler: Any = None, **limits: Any) -> AsyncIterator[ControlServer]:
    async with trio.open_nursery() as nursery:
        server = ControlServer(home=home, handler=handler or Recorder(), node_id="n-test", **limits)
        await nursery.start(server.run)
        yield server
        server.stop()


def leave_stale_socket(path: Path) -> None:
    """What a crashed node leaves behind: its socket file, with nobody listening."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:  # by its directory's descriptor, so a deep tmp_path fits in sun_path
        sock.bind(f"/proc/self/fd/{directory}/{path.name}")
    finally:
        os.close(directory)
        sock.close()
    assert stat.S_ISSOCK(path.lstat().st_mode)


async def wait_for(condition: Callable[[], bool]) -> None:
    with trio.fail_after(2):
        for _ in range(200):
            if condition():
                return
            await trio.sleep(0.01)
    raise AssertionError("condition not met within 2 s")


async def wait_pending(server: ControlServer, count: int) -> None:
    await wait_for(lambda: server.pending_auth == count)


# --- the stale-port token capture ------------------------------------------------------------


async def test_the_cli_never_sends_its_token_to_a_stranger_where_a_dead_node_was(
    tmp_path: Path,
) -> None:
    """The attack on the old channel: the node crashed, its control.json still names
    127.0.0.1:PORT, a local stranger listens there and speaks websocket; the CLI handed it
    the token.  Now the CLI connects only to its home's socket, so the stranger (on that
    port, or on a Unix socket a doctored control.json names) hears nothing."""
    home = make_home(tmp_path / "home")
    token = read_token(home)
    heard: list[bytes | str] = []
    connections = 0

    async def stranger(request: WebSocketRequest) -> None:
        nonlocal connections
        connections += 1
        ws = await request.accept()
        with trio.move_on_after(2):
            for _ in range(2):
                heard.append(await ws.get_message())
        await ws.aclose()

    async def unix_stranger(stream: trio.SocketStream) -> None:
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, stream)
            await stranger(request)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        tcp = await nursery.start(
            partial(serve_websocket, stranger, "127.0.0.1", 0, ssl_context=None)
        )
        squat = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await squat.bind(str(tmp_path / "squat.sock"))
        squat.listen(4)
        nursery.start_soon(trio.serve_listeners, unix_stranger, [trio.SocketListener(squat)])
        leave_stale_socket(socket_path(home))
        run_info_path(home).write_text(
            json.dumps(
                {
                    "address": f"127.0.0.1:{tcp.port}",
                    "socket": str(tmp_path / "squat.sock"),
                    "pid": 2**22 + 1,
                    "node_id": "dead",
                }
            )
        )
        with trio.fail_after(10), pytest.raises(NodeNotRunning) as info:
            await call_node(home, "status")
        nursery.cancel_scope.cancel()
    assert token not in b"".join(m if isinstance(m, bytes) else m.encode() for m in heard)
    assert heard == []
    assert connections == 0
    assert "not running" in str(info.value)


# --- the live channel --------------------------------------------------------------------------


async def test_a_node_answers_on_an_owner_only_socket_even_from_a_deep_home(
    tmp_path: Path,
) -> None:
    """A home deeper than a Unix socket name can be (108 bytes) still works."""
    home = make_home(tmp_path / ("d" * 60) / ("e" * 60))
    assert len(os.fsencode(socket_path(home))) > 108
    recorder = Recorder()
    events: list[dict[str, Any]] = []
    async with serving(home, recorder) as server:
        result = await call_node(home, "status", {"x": 1}, on_event=events.append)
        assert result == {"method": "status", "params": {"x": 1}}
        assert events == [{"event": "progress", "files": 1}]
        path = socket_path(home)
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert path.parent.stat().st_uid == os.geteuid()
        info = json.loads(run_info_path(home).read_text())
        assert info["pid"] == os.getpid() and "address" not in info
        assert server.socket_path == path
    assert not socket_path(home).exists()
    assert not run_info_path(home).exists()


async def test_the_token_changes_every_run(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    seen = {read_token(home)}
    for _ in range(2):
        async with serving(home):
            token = read_token(home)
            assert token not in seen
            seen.add(token)
            assert stat.S_IMODE(token_path(home).stat().st_mode) == 0o600
            await call_node(home, "status")


async def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    recorder = Recorder()
    async with serving(home, recorder):
        token_path(home).chmod(0o644)
        with pytest.raises(ControlError, match=r"control\.token.*0644") as info:
            await call_node(home, "status")
        assert info.value.code == "unsafe_token"
        assert recorder.calls == []
        token_path(home).chmod(0o600)
        await call_node(home, "status")
        assert [method for method, _ in recorder.calls] == ["status"]


def test_a_token_file_owned_by_someone_else_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_home(tmp_path / "h")
    assert len(read_token(home)) == 64
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)
    with pytest.raises(ControlError, match="owned by"):
        read_token(home)


async def test_a_listener_of_another_user_gets_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if another uid held the socket (the kernel's answer is faked: the tests run as one
    user): the CLI stops before reading the token, and the node drops such a caller too."""
    import gridnode.control
    import gridnode.control_client

    home = make_home(tmp_path / "h")
    recorder = Recorder()
    async with serving(home, recorder) as server:
        monkeypatch.setattr(gridnode.control, "_peer_uid", lambda sock: os.geteuid() + 1)
        monkeypatch.setattr(gridnode.control_client, "peer_uid", lambda sock: os.geteuid() + 1)
        with pytest.raises(ControlError, match="not by the node's owner") as info:
            await call_node(home, "status")
        assert info.value.code == "foreign_socket"
        await wait_for(lambda: server.refused["peer"] == 1)
        assert recorder.calls == []


async def test_a_live_socket_is_never_replaced_and_a_stale_one_is(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    async with serving(home):
        token = read_token(home)
        second = ControlServer(home=home, handler=Recorder(), node_id="n-two")
        with pytest.raises(GridError, match="already running"):
            await second.run()
        assert read_token(home) == token  # the live node's token still holds
        assert await call_node(home, "status") == {"method": "status", "params": {}}
    leave_stale_socket(socket_path(home))
    async with serving(home):
        assert await call_node(home, "status") == {"method": "status", "params": {}}


# --- what a stranger costs before it shows a token ---------------------------------------------


async def test_a_connection_without_a_token_is_closed_at_the_deadline(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    async with serving(home, preauth_deadline_s=0.4) as server:
        silent = await trio.open_unix_socket(str(socket_path(home)))
        raw = await trio.open_unix_socket(str(socket_path(home)))
        async with trio.open_nursery() as nursery:
            upgraded = await wrap_client_stream(nursery, raw, "localhost", "/")
            await wait_pending(server, 2)
            started = trio.current_time()
            with trio.fail_after(3):
                assert await silent.receive_some(1024) == b""
                with pytest.raises(ConnectionClosed):
                    await upgraded.get_message()
            assert 0.3 < trio.current_time() - started < 2.5
            nursery.cancel_scope.cancel()
        await raw.aclose()
        await silent.aclose()
        await wait_pending(server, 0)
        assert server.refused["deadline"] == 2
        assert await call_node(home, "status") == {"method": "status", "params": {}}


async def test_connections_over_the_cap_are_refused_and_the_node_still_answers(
    tmp_path: Path,
) -> None:
    home = make_home(tmp_path / "h")
    async with serving(home, max_pending=3, preauth_deadline_s=10) as server:
        idle = [await trio.open_unix_socket(str(socket_path(home))) for _ in range(3)]
        await wait_pending(server, 3)
        extra = await trio.open_unix_socket(str(socket_path(home)))
        with trio.fail_after(1):
            assert await extra.receive_some(1024) == b""
        assert server.pending_auth == 3
        assert server.refused["cap"] == 1
        for stream in idle:
            await stream.aclose()
        await extra.aclose()
        await wait_pending(server, 0)
        assert await call_node(home, "status") == {"method": "status", "params": {}}


async def test_a_job_that_crashes_holding_a_key_logs_no_key_bytes(tmp_path: Path) -> None:
    """The node logs a crashed control call with its traceback (``control_call_crashed``);
    the frames of that traceback held a key."""
    home = make_home(tmp_path / "h")
    key = secrets.token_bytes(32)

    async def crashing(method: str, params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        record_key = key
        raise RuntimeError(f"cannot open the record ({len(record_key)}-byte key)")

    out = io.StringIO()
    configure_logging("info", json=True, stream=out)
    try:
        async with serving(home, crashing):
            with pytest.raises(ControlError, match="cannot open the record"):
                await call_node(home, "restore")
    finally:
        configure_logging("warning", json=False)
    text = out.getvalue()
    assert "control_call_crashed" in text and "cannot open the record" in text
    fragment = repr(key)[2:26]
    for form in (key.hex(), fragment, fragment.replace("\\", "\\\\")):
        assert form not in text


async def test_an_answer_larger_than_one_message_arrives_in_parts(tmp_path: Path) -> None:
    """An answer past the control protocol's 4 MiB (every snapshot of years of hourly
    backups) used to close the connection; it now arrives in ``answer_part`` events that
    the client joins, escaping at its worst (quotes, backslashes, non-ASCII) included."""
    home = make_home(tmp_path / "h")
    big = {"rows": [f'"\\é {index}' * 700 for index in range(900)]}

    async def answering(method: str, params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        assert "answer_parts" not in params  # the server's word, not the method's
        await emit({"event": "progress", "files": 1})
        return big

    events: list[dict[str, Any]] = []
    async with serving(home, answering):
        assert len(json.dumps(big)) > 4 * 1024 * 1024
        assert await call_node(home, "snapshots", on_event=events.append) == big
        with pytest.raises(ControlError, match="too large to send") as refused:
            await call_node(home, "snapshots", join_parts=False)
        assert refused.value.code == "too_large"
        assert await call_node(home, "snapshots") == big  # and it goes on answering
    assert events == [{"event": "progress", "files": 1}]  # parts are not the caller's events
