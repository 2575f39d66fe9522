"""The data assembly record file: the map from a snapshot to its chunks and packets.

Restore and key-only recovery read it back; a format change that cannot read what an
earlier version wrote would strand every snapshot taken before an upgrade.
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from gridnode.backup import BackupFailed, read_record, write_record
from gridnode.storage.catalog import ChunkRecord, EntryRecord, PacketRecord


def _entries(n: int) -> list[EntryRecord]:
    return [
        EntryRecord(
            f"dir/file-{i}",
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


def test_stream_round_trip_keeps_order_and_every_field(tmp_path: Path) -> None:
    entries, chunks = _entries(300), _chunks(200)
    path = tmp_path / "record.msgpack"
    write_record(path, iter(entries), iter(chunks))
    items = list(read_record(path))
    assert items == [*entries, *chunks]


def test_reads_the_version_one_layout(tmp_path: Path) -> None:
    entries, chunks = _entries(5), _chunks(4)
    path = tmp_path / "v1.msgpack"
    path.write_bytes(
        msgpack.packb(
            {
                "v": 1,
                "entries": [e.to_wire() for e in entries],
                "chunks": [c.to_wire() for c in chunks],
            },
            use_bin_type=True,
        )
    )
    assert list(read_record(path)) == [*entries, *chunks]


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
