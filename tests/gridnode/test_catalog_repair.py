"""Catalog bookkeeping of repair, on a real SQLite file.

A repaired chunk changes holders; every complete snapshot using it then has a record on
the grid that names the old holders until it is rewritten.  Those marks must be taken in
the same transaction as the new holders and survive a reopen (a crash), or a key-only
recovery after the crash would point at holders that are gone.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from nacl.signing import SigningKey

from gridnode.storage.catalog import Catalog
from gridnode.storage.records import ChunkRecord, PacketRecord, policy_key

POLICY = policy_key(2, 3, {})


def _chunk(tag: int, targets: tuple[bytes, ...]) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=bytes([tag]) * 32,
        plain_size=100,
        cipher_size=140,
        compressed=False,
        k=2,
        n=3,
        packets=tuple(
            PacketRecord(i, bytes([tag, i]) * 16, t, b"r" * 64) for i, t in enumerate(targets)
        ),
        rules={},
    )


def _snapshot(catalog: Catalog, sid: str, chunks: list[ChunkRecord], *, complete: bool) -> None:
    catalog.begin_snapshot(sid, roots=["/x"], parent=None, params="2/3", rules={})
    catalog.add_chunks(chunks, snapshot_id=sid)
    if complete:
        catalog.complete_snapshot(sid, files=1, size_bytes=100, record=b"ref")


def test_repair_marks_every_complete_snapshot_using_the_chunk(tmp_path: Path) -> None:
    key = SigningKey.generate()
    a, b, c = b"A" * 32, b"B" * 32, b"C" * 32
    catalog = Catalog(tmp_path / "catalog.sqlite", signing_key=key)
    shared, alone = _chunk(1, (a, b, c)), _chunk(2, (a, b, c))
    _snapshot(catalog, "s1", [shared], complete=True)
    _snapshot(catalog, "s2", [shared, alone], complete=True)
    _snapshot(catalog, "s3", [shared], complete=False)  # still running: no record yet
    assert catalog.holders() == {a, b, c}
    assert [x.chunk_id for x in catalog.chunks_on_page([c])] == [shared.chunk_id, alone.chunk_id]

    moved = attrs.evolve(
        shared, packets=(*shared.packets[:2], attrs.evolve(shared.packets[2], target=b"D" * 32))
    )
    catalog.repair_chunk(moved)
    assert catalog.stale_records() == ["s1", "s2"]
    assert catalog.chunk(shared.chunk_id, POLICY) == moved
    assert [x.chunk_id for x in catalog.chunks_on_page([c])] == [alone.chunk_id]
    catalog.close()

    # A crash here: the marks are in the file with the new holders.
    reopened = Catalog(tmp_path / "catalog.sqlite", signing_key=key)
    assert reopened.stale_records() == ["s1", "s2"]
    reopened.record_rewritten("s1")
    assert reopened.stale_records() == ["s2"]
    reopened.repair_chunk(attrs.evolve(alone, packets=moved.packets))
    assert reopened.stale_records() == ["s2"]
    reopened.record_rewritten("s2")
    assert reopened.stale_records() == []


def test_holder_sightings_survive_a_reopen_and_only_move_forward(tmp_path: Path) -> None:
    """The repair delay counts from a holder's last sighting: kept in the catalog, so a
    restart of the node does not start the clock again."""
    key = SigningKey.generate()
    a, b, c = b"A" * 32, b"B" * 32, b"C" * 32
    catalog = Catalog(tmp_path / "catalog.sqlite", signing_key=key)
    assert catalog.holders_seen() == {}
    catalog.note_holders_seen({a: 100.0, b: 200.0})
    catalog.note_holders_seen({a: 50.0, c: 300.0})  # an older sighting never wins
    assert catalog.holders_seen() == {a: 100.0, b: 200.0, c: 300.0}
    catalog.close()

    reopened = Catalog(tmp_path / "catalog.sqlite", signing_key=key)
    assert reopened.holders_seen() == {a: 100.0, b: 200.0, c: 300.0}
    reopened.note_holders_seen({b: 250.0}, keep=[a, b])  # c holds nothing any more
    assert reopened.holders_seen() == {a: 100.0, b: 250.0}
