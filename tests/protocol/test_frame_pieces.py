"""``Session.send_pieces`` and ``Session.frame_work`` (issue 11: the data path's costs).

The I/O layer writes a frame from its pieces without joining them, and decides from
``frame_work`` whether opening a frame is worth a worker-thread hop: the pieces must be
exactly the frame ``send`` gives, and the split must name the bytes each kind of frame
decrypts and decodes apart from a "D" frame's payload, which is only hashed.
"""

from __future__ import annotations

import blake3

from protocol import (
    FetchPacket,
    MessageReceived,
    PacketData,
    PacketPart,
    Session,
    StorePackets,
)

from .sessions import pair


def _batch(packets: list[bytes]) -> StorePackets:
    parts = tuple(
        PacketPart(packet_id=blake3.blake3(p).digest(), owner_tag=b"o" * 32, size_bytes=len(p))
        for p in packets
    )
    return StorePackets(request_id=7, parts=parts, data=b"")


def test_pieces_are_the_frame_and_keep_the_callers_buffers() -> None:
    packets = [b"a" * 1000, b"b" * 3000]
    a1, _ = pair()
    a2, b2 = pair()
    whole = a1.send(_batch(packets), payload=packets)
    pieces = a2.send_pieces(_batch(packets), payload=packets)
    joined = b"".join(pieces)
    # The same layout (two sessions, two keys: the sealed bytes differ, nothing else).
    assert joined[:14] == whole[:14] and len(joined) == len(whole)
    assert joined.endswith(b"".join(packets)) and whole.endswith(b"".join(packets))
    assert pieces[1] is packets[0] and pieces[2] is packets[1]  # not copied
    (event,) = b2.receive(joined)
    assert isinstance(event, MessageReceived) and event.message.data == b"".join(packets)


def test_a_message_without_payload_is_one_piece() -> None:
    a, b = pair()
    pieces = a.send_pieces(FetchPacket(request_id=3, packet_id=b"p" * 32))
    assert len(pieces) == 1
    (event,) = b.receive(pieces[0])
    assert isinstance(event, MessageReceived) and isinstance(event.message, FetchPacket)


def test_frame_work_splits_decoding_from_hashing() -> None:
    a, b = pair()
    data = b"d" * 200_000
    detached = a.send(PacketData(request_id=1, packet_id=blake3.blake3(data).digest(), data=data))
    sealed_len = int.from_bytes(detached[10:14], "big")
    assert Session.frame_work(detached) == (sealed_len, len(data))
    assert Session.work_bytes(detached) == len(detached)  # the old figure: everything
    packets = [b"x" * 150_000]
    certified = a.send(_batch(packets), payload=packets)
    sealed_len = int.from_bytes(certified[10:14], "big")
    assert Session.frame_work(certified) == (sealed_len, 0)  # only copied: no work
    small = a.send(FetchPacket(request_id=2, packet_id=b"p" * 32))
    assert Session.frame_work(small) == (len(small), 0)
    for frame in (detached, certified, small):
        (event,) = b.receive(frame)
        assert isinstance(event, MessageReceived)


def test_frame_work_of_a_lying_header_stays_within_the_frame() -> None:
    a, _ = pair()
    data = b"e" * 5000
    frame = bytearray(
        a.send(PacketData(request_id=1, packet_id=blake3.blake3(data).digest(), data=data))
    )
    frame[10:14] = (10**9).to_bytes(4, "big")  # claims more sealed bytes than there are
    assert Session.frame_work(frame) == (len(frame), 0)
    assert Session.frame_work(b"D") == (1, 0)
