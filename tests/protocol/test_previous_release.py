"""This release against the previous one, byte for byte: the ``protocol`` package of the
last commit whose wire was version 2 is loaded from git history beside this one, and
the two handshake and exchange packets in both roles (``_session`` Rule 2a).  A node of
the previous release compares the Hello's version with its own and refuses unknown
fields, so this is the test that the range travels where it reads past it.  Skipped
where the history is not at hand (a shallow clone, an unpacked sdist)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import blake3
import pytest
from nacl.signing import SigningKey

from protocol import (
    MIN_PROTOCOL_VERSION,
    MessageReceived,
    PacketPart,
    Ping,
    Role,
    Session,
    StorePackets,
)

from .sessions import GRID

#: The last commit before version 3's wire changes (``GrantRepairPart``, the "C" frame,
#: storage audits): its protocol package is the previous release's.
PREVIOUS_RELEASE = "95eb151"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("previous")
    package = root / "protocol_v2"
    package.mkdir()
    for name in ("__init__", "_authority", "_codec", "_errors", "_gossip", "_identity",
                 "_messages", "_schema", "_session"):  # fmt: skip
        shown = subprocess.run(
            [git, "-C", str(REPO), "show", f"{PREVIOUS_RELEASE}:protocol/{name}.py"],
            capture_output=True,
            check=False,
        )
        if shown.returncode != 0:
            pytest.skip(f"commit {PREVIOUS_RELEASE} is not in this checkout's history")
        (package / f"{name}.py").write_bytes(shown.stdout)
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("protocol_v2")
        assert module.PROTOCOL_VERSION == MIN_PROTOCOL_VERSION
        yield module
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.startswith("protocol_v2")]:
            del sys.modules[name]


def _old(v2: ModuleType, role: Any) -> Any:
    return v2.Session(
        role=role,
        grid_id=GRID,
        signing_key=SigningKey.generate(),
        listen_address="127.0.0.1:1",
        software="gridnode/0.1",
    )


def _new(role: Role) -> Session:
    return Session(
        role=role,
        grid_id=GRID,
        signing_key=SigningKey.generate(),
        listen_address="127.0.0.1:2",
        software="gridnode/0.2",
    )


def _pump(src: Any, dst: Any) -> list[Any]:
    events: list[Any] = []
    for frame in src.data_to_send():
        events += dst.receive(frame)
    return events


def _handshake(a: Any, b: Any) -> None:
    a.start()
    b.start()
    _pump(a, b)
    _pump(b, a)
    _pump(a, b)
    _pump(b, a)
    assert a.is_ready and b.is_ready


@pytest.mark.parametrize("new_dials", [True, False])
def test_a_node_of_the_previous_release_meshes_with_this_one(
    v2: ModuleType, new_dials: bool
) -> None:
    if new_dials:
        new, old = _new(Role.INITIATOR), _old(v2, v2.Role.RESPONDER)
        _handshake(new, old)
    else:
        old, new = _old(v2, v2.Role.INITIATOR), _new(Role.RESPONDER)
        _handshake(old, new)
    assert new.version == MIN_PROTOCOL_VERSION and new.peer_versions == (2, 2)
    assert new.peer_software == "gridnode/0.1"
    # Packets both ways: a batch from this release (no "C" frame for the old node) ...
    packets = [b"first packet", b"second packet"]
    parts = tuple(
        PacketPart(packet_id=blake3.blake3(p).digest(), owner_tag=b"o" * 32, size_bytes=len(p))
        for p in packets
    )
    frame = new.send(StorePackets(request_id=1, parts=parts, data=b""), payload=packets)
    (event,) = old.receive(frame)
    assert event.message.data == b"".join(packets)
    assert [p.packet_id for p in event.message.parts] == [p.packet_id for p in parts]
    # ... and the old node's batch and requests, read here.
    old_parts = tuple(v2.PacketPart(**{f: getattr(p, f) for f in ("packet_id", "owner_tag",
                      "size_bytes")}) for p in parts)  # fmt: skip
    frame = old.send(v2.StorePackets(request_id=2, parts=old_parts, data=b"".join(packets)))
    (received,) = new.receive(frame)
    assert isinstance(received, MessageReceived)
    assert received.message == StorePackets(request_id=2, parts=parts, data=b"".join(packets))
    assert new.receive(old.send(v2.Ping(request_id=3))) == [MessageReceived(Ping(request_id=3))]
    (pong,) = old.receive(new.send(Ping(request_id=4)))
    assert pong.message == v2.Ping(request_id=4)
