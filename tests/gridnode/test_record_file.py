"""The data assembly record file: the map from a snapshot to its chunks and packets.

Restore and key-only recovery read it back; a format change that cannot read what an
earlier version wrote would strand every snapshot taken before an upgrade.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest

from gridnode.record_store import BackupFailed, read_record, write_record
from gridnode.storage.records import HOLE, ChunkRecord, EntryRecord, PacketRecord


def _entries(n: int) -> list[EntryRecord]:
    return [
        EntryRecord(
            f"dir/file-{i}".encode(),
            "file",
            0o644,
            1_700_000_000_000_000_000 + i,
            i * 10,
            extents=((bytes([i % 256]) * 32, 0, i * 10),),
        )
        for i in range(n)
    ]


def _chunks(n: int) -> list[ChunkRecord]:
    return [
        ChunkRecord(
            chunk_id=bytes([i % 256, i // 256]) * 16,
            plain_size=1000 + i,
            cipher_size=1100 + i,
            compressed=bool(i % 2),
            k=2,
            n=3,
            packets=tuple(
                PacketRecord(share, bytes([share, i % 256]) * 16, b"T" * 32, b"R" * 64)
                for share in range(3)
            ),
            rules={"min_packet_km": 10.0},
        )
        for i in range(n)
    ]


def _every_kind() -> list[EntryRecord]:
    """One entry of each kind with every field set, names that are not UTF-8 included."""
    owner = {"uid": 1000, "gid": 100, "user": "ann", "group": "users"}
    return [
        EntryRecord(b"t/bad-\xff-name", "dir", 0o2755, 1, 0, **owner),
        EntryRecord(
            b"t/bad-\xff-name/f\n\x80",
            "file",
            0o4755,
            2,
            1 << 30,
            inode=7,
            device=9,
            extents=((HOLE, 0, 1 << 29), (b"C" * 32, 0, 1 << 29)),
            xattrs=((b"user.k\xfe", b"\x00\x01"), (b"system.posix_acl_access", b"\x02" * 28)),
            **owner,
        ),
        EntryRecord(
            b"t/second-name",
            "file",
            0o644,
            2,
            1 << 30,
            extents=((HOLE, 0, 1 << 30),),
            hardlink=b"t/bad-\xff-name/f\n\x80",
            **owner,
        ),
        EntryRecord(b"t/l", "symlink", 0o777, 3, 0, link_target=b"../\xff", **owner),
        EntryRecord(b"t/null", "chardev", 0o666, 4, 0, rdev=os.makedev(1, 3)),
        EntryRecord(b"t/loop", "blockdev", 0o660, 4, 0, rdev=os.makedev(7, 0)),
        EntryRecord(b"t/pipe", "fifo", 0o600, 5, 0, uid=0, gid=0),
        EntryRecord(b"t/sock", "socket", 0o755, 6, 0, uid=0, gid=0),
    ]


def test_stream_round_trip_keeps_order_and_every_field(tmp_path: Path) -> None:
    entries, chunks = _every_kind() + _entries(300), _chunks(200)
    path = tmp_path / "record.msgpack"
    write_record(path, iter(entries), iter(chunks))
    items = list(read_record(path))
    assert items == [*entries, *chunks]


def _v2_wire(e: EntryRecord) -> list[object]:
    """An entry as versions 1 and 2 wrote it: nine fields, names as text."""
    return [
        e.path.decode(),
        e.kind,
        e.mode,
        e.mtime_ns,
        e.size,
        e.inode,
        e.device,
        None,
        [list(x) for x in e.extents],
    ]


def test_reads_the_version_one_layout(tmp_path: Path) -> None:
    entries, chunks = _entries(5), _chunks(4)
    path = tmp_path / "v1.msgpack"
    path.write_bytes(
        msgpack.packb(
            {
                "v": 1,
                "entries": [_v2_wire(e) for e in entries],
                "chunks": [c.to_wire() for c in chunks],
            },
            use_bin_type=True,
        )
    )
    assert list(read_record(path)) == [*entries, *chunks]


def test_reads_the_version_two_layout_with_text_names(tmp_path: Path) -> None:
    entries = [*_entries(3), EntryRecord("t/café".encode(), "symlink", 0o777, 1, 0)]
    old = [*_v2_wire(entries[-1])[:7], "../naïve", []]
    path = tmp_path / "v2.msgpack"
    packer = msgpack.Packer(use_bin_type=True)
    path.write_bytes(
        packer.pack({"v": 2})
        + b"".join(packer.pack(["e", _v2_wire(e)]) for e in entries[:-1])
        + packer.pack(["e", old])
    )
    items = list(read_record(path))
    assert items[:-1] == entries[:-1]
    assert items[-1].path == "t/café".encode()
    assert items[-1].link_target == "../naïve".encode()
    assert items[-1].uid is None  # owners were not recorded then: restore leaves them


@pytest.mark.parametrize(
    "content",
    [
        msgpack.packb({"v": 99}),
        msgpack.packb(["not", "a", "header"]),
        msgpack.packb({"v": 2}) + msgpack.packb(["x", [1, 2]]),
        msgpack.packb({"v": 2}) + msgpack.packb(["e", ["too", "short"]]),
        msgpack.packb({"v": 2}) + msgpack.packb(["c", [1]]),
        msgpack.packb({"v": 2}) + b"\xc1",  # msgpack's never-used byte
    ],
    ids=["future-version", "no-header", "unknown-item", "short-entry", "short-chunk", "garbage"],
)
def test_damaged_or_unknown_records_are_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.msgpack"
    path.write_bytes(content)
    with pytest.raises(BackupFailed):
        list(read_record(path))
