"""Version negotiation (``_session`` Rule 2a): each side announces the range it speaks,
the session takes the highest version both hold, and nothing newer than that version is
sent or accepted, so a grid upgrades node by node."""

from __future__ import annotations

import blake3
import pytest

from protocol import (
    CERTIFIED_FRAMES_SINCE,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    AuditPacket,
    HandshakeComplete,
    LocalProtocolError,
    MessageReceived,
    PacketPart,
    Ping,
    RemoteProtocolError,
    Role,
    Session,
    StorePackets,
    decode,
    encode,
)
from protocol._codec import decode_versioned
from protocol._messages import RepairGranted

from .sessions import handshake, make

OLD = MIN_PROTOCOL_VERSION
NEW = PROTOCOL_VERSION


def _pair(a_range: tuple[int, int], b_range: tuple[int, int]) -> tuple[Session, Session]:
    a = make(Role.INITIATOR, min_version=a_range[0], max_version=a_range[1])
    b = make(Role.RESPONDER, min_version=b_range[0], max_version=b_range[1])
    return a, b


def test_this_release_speaks_the_previous_version_too() -> None:
    assert (OLD, NEW) == (2, 5)
    assert OLD < CERTIFIED_FRAMES_SINCE == 3 <= NEW


@pytest.mark.parametrize(
    ("a_range", "b_range", "agreed"),
    [
        ((OLD, NEW), (OLD, NEW), NEW),
        ((OLD, NEW), (OLD, OLD), OLD),
        ((OLD, OLD), (OLD, NEW), OLD),
        ((NEW, NEW), (OLD, NEW), NEW),
        ((OLD, NEW), (NEW, NEW), NEW),
    ],
)
def test_overlapping_ranges_agree_on_the_highest_common_version(
    a_range: tuple[int, int], b_range: tuple[int, int], agreed: int
) -> None:
    a, b = _pair(a_range, b_range)
    ev_a, ev_b = handshake(a, b)
    assert a.is_ready and b.is_ready
    assert a.version == b.version == agreed
    assert a.peer_versions == b_range and b.peer_versions == a_range
    assert isinstance(ev_a[0], HandshakeComplete) and ev_a[0].version == agreed
    assert isinstance(ev_b[0], HandshakeComplete) and ev_b[0].version == agreed
    # Every sealed frame after the handshake is written in the agreed version.
    frame = a.send(Ping(request_id=1))
    assert b.receive(frame) == [MessageReceived(Ping(request_id=1))]


@pytest.mark.parametrize("initiator_is_newer", [True, False])
def test_disjoint_ranges_are_refused_naming_both(initiator_is_newer: bool) -> None:
    new, old = (NEW, NEW), (OLD, OLD)
    a, b = _pair(new, old) if initiator_is_newer else _pair(old, new)
    with pytest.raises(RemoteProtocolError) as info:
        handshake(a, b)
    assert info.value.code == "unsupported_version"
    assert f"{NEW}-{NEW}" in info.value.message and f"{OLD}-{OLD}" in info.value.message
    assert not (a.is_ready or b.is_ready)


def test_a_peer_announcing_the_old_single_version_is_understood() -> None:
    """A version-2 node's Hello: version 2, a software name without the range word."""
    a, b = _pair((OLD, OLD), (OLD, NEW))
    a._software = "gridnode/0.1"  # exactly what a version-2 node sends
    handshake(a, b)
    assert b.is_ready and b.version == OLD
    assert b.peer_versions == (OLD, OLD) and b.peer_software == "gridnode/0.1"
    # And the newer side's Hello reads as version 2 to it: it names 2 and no new field.
    assert a.is_ready and a.version == OLD and a.peer_software == ""


def test_a_hello_whose_range_contradicts_its_version_is_refused() -> None:
    a, b = _pair((OLD, NEW), (OLD, NEW))
    a._software = f"x protocol/{NEW}-{NEW}"  # but its version field says OLD
    with pytest.raises(RemoteProtocolError) as info:
        handshake(a, b)
    assert info.value.code == "bad_field"


def test_handshake_frames_are_written_in_the_lowest_version() -> None:
    a = make(Role.INITIATOR)
    a.start()
    (offer,) = a.data_to_send()
    assert decode_versioned(offer[1:])[0] == OLD


def _old_pair() -> tuple[Session, Session]:
    a, b = _pair((OLD, NEW), (OLD, OLD))
    handshake(a, b)
    assert a.version == b.version == OLD
    return a, b


def _batch() -> StorePackets:
    data = b"packet-one"
    part = PacketPart(packet_id=blake3.blake3(data).digest(), owner_tag=b"o" * 32, size_bytes=10)
    return StorePackets(request_id=1, parts=(part,), data=data)


def test_below_version_3_a_batch_travels_with_its_digest() -> None:
    a, b = _old_pair()
    frame = a.send(_batch())
    assert frame[:1] == b"D"  # not "C": a version-2 peer has no such frame
    (event,) = b.receive(frame)
    assert isinstance(event, MessageReceived) and event.message == _batch()
    assert event.payload_digest == blake3.blake3(b"packet-one").digest()
    a3, b3 = _pair((OLD, NEW), (OLD, NEW))
    handshake(a3, b3)
    assert a3.send(_batch())[:1] == b"C"


def test_a_certified_frame_in_an_old_session_is_refused() -> None:
    a, b = _old_pair()
    a.version = NEW  # a peer that sends what it negotiated away
    with pytest.raises(RemoteProtocolError) as info:
        b.receive(a.send(_batch()))
    assert info.value.code == "malformed"


def test_messages_newer_than_the_session_are_neither_sent_nor_accepted() -> None:
    a, b = _old_pair()
    audit = AuditPacket(request_id=1, packet_id=b"p" * 32, index=0)
    assert not a.speaks(audit) and a.speaks(Ping(request_id=1))
    with pytest.raises(LocalProtocolError) as info:
        a.send(audit)
    assert info.value.code == "unsupported_version"
    # A peer that sends one anyway (in a version-2 frame) is refused.
    with pytest.raises(RemoteProtocolError) as remote:
        decode(encode(audit).replace(bytes([0xA1, 0x76, NEW]), b"\xa1v\x02"))
    assert remote.value.code == "unknown_kind"
    # A frame of another version than the session's is refused too.
    a.version = NEW
    with pytest.raises(RemoteProtocolError) as other:
        b.receive(a.send(Ping(request_id=2)))
    assert other.value.code == "unsupported_version"


def test_a_field_newer_than_the_frame_is_left_out_or_refused() -> None:
    granted = RepairGranted(request_id=1, version=1, expires=2.0)
    assert b"missing" not in encode(granted, version=OLD)
    assert b"missing" in encode(granted, version=NEW)
    assert decode(encode(granted, version=OLD)) == granted
    lacking = RepairGranted(request_id=1, version=1, expires=2.0, missing=(b"d" * 32,))
    with pytest.raises(LocalProtocolError) as info:
        encode(lacking, version=OLD)
    assert info.value.code == "unsupported_version"
    with pytest.raises(RemoteProtocolError) as remote:
        decode(encode(lacking).replace(bytes([0xA1, 0x76, NEW]), b"\xa1v\x02"))
    assert remote.value.code == "bad_field"


def test_older_messages_encode_alike_in_both_versions_but_for_the_version() -> None:
    ping = Ping(request_id=7)
    assert encode(ping, version=OLD) == encode(ping).replace(bytes([0xA1, 0x76, NEW]), b"\xa1v\x02")


def test_a_range_outside_this_software_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        make(Role.INITIATOR, min_version=OLD - 1)
    with pytest.raises(LocalProtocolError):
        make(Role.INITIATOR, max_version=NEW + 1)
    with pytest.raises(LocalProtocolError):
        make(Role.INITIATOR, min_version=NEW, max_version=OLD)
