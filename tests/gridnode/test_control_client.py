"""The CLI's standard-library control client speaks exactly the protocol codec's frames,
and starts without the heavy imports it exists to avoid."""

from __future__ import annotations

import json
import subprocess
import sys

import msgpack

import protocol
from gridnode import control_client
from protocol import ControlCall, ControlEvent, ControlHello, ControlResult, Error, decode, encode


def test_its_protocol_version_is_the_protocols() -> None:
    assert control_client.PROTOCOL_VERSION == protocol.PROTOCOL_VERSION


def test_its_frames_are_the_codecs_byte_for_byte() -> None:
    token = b"ab" * 32
    assert control_client._envelope(
        "control_hello", {"token": token, "version": control_client.PROTOCOL_VERSION}
    ) == encode(ControlHello(token=token, version=protocol.PROTOCOL_VERSION))
    params = json.dumps({"snapshot": "latest", "path": "a/b"})
    built = control_client._envelope(
        "control_call", {"request_id": 1, "method": "ls", "params": params}
    )
    assert built == encode(ControlCall(request_id=1, method="ls", params=params))
    assert decode(built) == ControlCall(request_id=1, method="ls", params=params)
    # And it reads what the node sends.
    for msg in (
        ControlEvent(request_id=1, event='{"event": "progress"}'),
        ControlResult(request_id=1, result="[1, 2]"),
        Error(request_id=1, code="no_such_snapshot", message="no snapshot x"),
    ):
        kind, body = control_client._open(encode(msg))
        assert kind == msg.KIND
        assert body == {k: v for k, v in msgpack.unpackb(encode(msg))["b"].items()}


def test_a_frame_of_another_version_or_shape_is_refused_clearly() -> None:
    for raw, code in (
        (msgpack.packb({"v": 1, "k": "control_result", "b": {}}), "unsupported_version"),
        (msgpack.packb([1, 2, 3]), "malformed"),
        (b"\xc1", "malformed"),
    ):
        try:
            control_client._open(raw)
        except control_client.ControlError as exc:
            assert exc.code == code
        else:
            raise AssertionError(f"{raw!r} was accepted")


def test_the_client_imports_no_trio_protocol_or_structlog() -> None:
    code = (
        "import sys, gridnode.control_client, gridnode.cli; "
        "heavy = {'trio', 'trio_websocket', 'structlog', 'protocol', 'nacl', 'attrs'}; "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
