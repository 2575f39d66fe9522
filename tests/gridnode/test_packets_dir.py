"""The target side's packet directory: content addressing, allocation, crash safety."""

from __future__ import annotations

import os
import random
import resource
import signal
import threading
from pathlib import Path

import pytest
from blake3 import blake3

from gridnode.storage.packets import (
    FORMAT_NAME,
    STORAGE_FORMAT,
    AllocationFull,
    PacketDirectory,
    PacketIdMismatch,
    PacketStoreError,
    StorageFormatError,
)


def _packet(size: int, seed: int) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(size)
    return blake3(data).digest(), data


def _files_under(directory: Path) -> list[Path]:
    """Files a store keeps for packets (its FORMAT file is not one)."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "FORMAT")


def test_put_get_round_trip_and_layout(tmp_path: Path) -> None:
    store = PacketDirectory(tmp_path / "store", allocation_bytes=1_000_000)
    packet_id, data = _packet(5000, seed=1)
    assert store.put(packet_id, data) is True
    assert store.get(packet_id) == data
    assert store.has(packet_id)
    name = packet_id.hex()
    expected_path = tmp_path / "store" / "packets" / name[:2] / name[2:4] / name
    assert store.path_for(packet_id) == expected_path
    assert expected_path.read_bytes() == data
    assert (store.used_bytes, store.packet_count, store.free_bytes) == (5000, 1, 995_000)
    assert _files_under(tmp_path / "store" / "incoming") == []


def test_absent_packet(tmp_path: Path) -> None:
    store = PacketDirectory(tmp_path, allocation_bytes=1000)
    packet_id, _ = _packet(10, seed=2)
    assert store.get(packet_id) is None
    assert not store.has(packet_id)
    assert store.delete(packet_id) is False


def test_put_is_idempotent(tmp_path: Path) -> None:
    store = PacketDirectory(tmp_path, allocation_bytes=100_000)
    packet_id, data = _packet(3000, seed=3)
    assert store.put(packet_id, data) is True
    assert store.put(packet_id, memoryview(data)) is False
    assert (store.used_bytes, store.packet_count) == (3000, 1)


def test_mismatched_bytes_are_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    store = PacketDirectory(tmp_path, allocation_bytes=100_000)
    packet_id, data = _packet(3000, seed=4)
    with pytest.raises(PacketIdMismatch, match=packet_id.hex()):
        store.put(packet_id, data + b"!")
    with pytest.raises(PacketIdMismatch, match="32 bytes"):
        store.put(packet_id[:16], data)
    with pytest.raises(PacketIdMismatch):
        store.put_many([_packet(10, seed=5), (packet_id, b"forged")])
    assert _files_under(tmp_path) == []
    assert (store.used_bytes, store.packet_count, store.free_bytes) == (0, 0, 100_000)


def test_allocation_is_enforced_exactly_at_the_boundary(tmp_path: Path) -> None:
    packets = [_packet(1000, seed=10 + i) for i in range(4)]
    store = PacketDirectory(tmp_path, allocation_bytes=3000)
    for packet_id, data in packets[:3]:
        assert store.put(packet_id, data)
    assert (store.used_bytes, store.free_bytes) == (3000, 0)
    with pytest.raises(AllocationFull, match=r"need 1000 bytes but only 0 of 3000 are free"):
        store.put(*packets[3])
    assert not store.has(packets[3][0])
    # Already-held packets are still accepted (idempotently) when full.
    assert store.put(*packets[0]) is False
    assert store.delete(packets[2][0])
    assert store.free_bytes == 1000
    one_byte_over = _packet(1001, seed=20)
    with pytest.raises(AllocationFull):
        store.put(*one_byte_over)
    assert store.put(*packets[3]) is True
    assert store.free_bytes == 0
    assert _files_under(tmp_path / "incoming") == []


def test_put_many_reserves_for_the_whole_batch(tmp_path: Path) -> None:
    store = PacketDirectory(tmp_path, allocation_bytes=2500)
    batch = [_packet(1000, seed=30 + i) for i in range(3)]
    with pytest.raises(AllocationFull):
        store.put_many(batch)
    assert store.packet_count == 0
    assert _files_under(tmp_path) == []
    assert store.put_many([*batch[:2], batch[0]]) == [True, True, False]
    assert store.put_many(batch[:2]) == [False, False]
    assert (store.used_bytes, store.packet_count) == (2000, 2)
    assert [store.get(packet_id) for packet_id, _ in batch[:2]] == [data for _, data in batch[:2]]


def test_leftovers_in_incoming_are_removed_at_startup_and_never_served(tmp_path: Path) -> None:
    store = PacketDirectory(tmp_path, allocation_bytes=100_000)
    stored_id, stored = _packet(2000, seed=40)
    store.put(stored_id, stored)
    # What a target killed mid-write leaves: part of a packet in incoming/.
    half_id, half_data = _packet(4000, seed=41)
    (tmp_path / "incoming" / "0123abcd.tmp").write_bytes(half_data[:1500])
    (tmp_path / "incoming" / "stray-dir").mkdir()
    (tmp_path / "incoming" / "stray-dir" / "x").write_bytes(b"x")
    assert store.get(half_id) is None

    reopened = PacketDirectory(tmp_path, allocation_bytes=100_000)
    assert list((tmp_path / "incoming").iterdir()) == []
    assert reopened.get(half_id) is None
    assert not reopened.has(half_id)
    assert list(reopened.iter_ids()) == [stored_id]
    assert (reopened.used_bytes, reopened.packet_count) == (2000, 1)


def test_corrupted_packet_is_quarantined_not_served(tmp_path: Path) -> None:
    store = PacketDirectory(tmp_path, allocation_bytes=100_000)
    good_id, good = _packet(2000, seed=50)
    bad_id, bad = _packet(3000, seed=51)
    store.put_many([(good_id, good), (bad_id, bad)])
    path = store.path_for(bad_id)
    corrupted = bytearray(path.read_bytes())
    corrupted[1234] ^= 0x01
    path.write_bytes(corrupted)

    assert store.get(bad_id, verify=False) == bytes(corrupted)  # the caller opted out
    assert store.get(bad_id) is None
    assert not path.exists()
    assert not store.has(bad_id)
    quarantined = list((tmp_path / "quarantine").iterdir())
    assert len(quarantined) == 1
    assert quarantined[0].name.startswith(bad_id.hex())
    assert quarantined[0].read_bytes() == bytes(corrupted)
    assert (store.used_bytes, store.packet_count) == (2000, 1)
    assert store.statistics().quarantined_count == 1
    assert store.get(good_id) == good
    # The packet can be stored again, e.g. when its owner repairs it.
    assert store.put(bad_id, bad) is True
    reopened = PacketDirectory(tmp_path, allocation_bytes=100_000)
    assert (reopened.used_bytes, reopened.packet_count) == (5000, 2)


def test_usage_is_recomputed_on_reopen(tmp_path: Path) -> None:
    store = PacketDirectory(tmp_path, allocation_bytes=1_000_000)
    packets = [_packet(100 * (i + 1), seed=60 + i) for i in range(12)]
    store.put_many(packets)
    store.delete(packets[0][0])
    # Files that are not packets are neither counted nor listed.
    (tmp_path / "packets" / "zz").mkdir()
    (tmp_path / "packets" / "notes.txt").write_bytes(b"hello")
    reopened = PacketDirectory(tmp_path, allocation_bytes=5_000)
    expected = sum(len(data) for _, data in packets[1:])
    assert (reopened.used_bytes, reopened.packet_count) == (expected, 11)
    assert reopened.free_bytes == 0  # over a shrunk allocation: no room, no crash
    assert list(reopened.iter_ids()) == sorted(packet_id for packet_id, _ in packets[1:])


def test_concurrent_puts_and_deletes_keep_accounting_exact(tmp_path: Path) -> None:
    store = PacketDirectory(tmp_path, allocation_bytes=10_000_000)
    pool = [_packet(500 + 37 * i, seed=70 + i) for i in range(40)]
    stored_now: list[bytes] = []
    results_lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        order = list(pool)
        random.Random(seed).shuffle(order)
        try:
            for start in range(0, len(order), 8):
                batch = order[start : start + 8]
                outcomes = store.put_many(batch) if seed % 2 else [store.put(*p) for p in batch]
                with results_lock:
                    stored_now.extend(p[0] for p, new in zip(batch, outcomes, strict=True) if new)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    # Exactly one put reported each packet as newly stored.
    assert sorted(stored_now) == sorted(packet_id for packet_id, _ in pool)
    assert store.used_bytes == sum(len(data) for _, data in pool)
    assert store.packet_count == len(pool)

    deleters = [
        threading.Thread(target=lambda: [store.delete(p[0]) for p in pool[::2]]) for _ in range(4)
    ]
    for thread in deleters:
        thread.start()
    for thread in deleters:
        thread.join(timeout=60)
    remaining = pool[1::2]
    assert store.used_bytes == sum(len(data) for _, data in remaining)
    assert store.packet_count == len(remaining)
    assert store.statistics().reserved_bytes == 0
    reopened = PacketDirectory(tmp_path, allocation_bytes=10_000_000)
    assert (reopened.used_bytes, reopened.packet_count) == (store.used_bytes, len(remaining))
    assert _files_under(tmp_path / "incoming") == []


def test_write_failing_midway_leaves_no_temp_file_efbig_via_rlimit_fsize(tmp_path: Path) -> None:
    """A write that fails after part of the packet hit the disk.

    Not a real ENOSPC (that needs a small file system, which needs root to
    mount): RLIMIT_FSIZE makes the kernel fail the write with EFBIG after the
    first 4 KiB, which exercises the same cleanup path.
    """
    store = PacketDirectory(tmp_path, allocation_bytes=1_000_000)
    packet_id, data = _packet(50_000, seed=80)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(PacketStoreError, match="EFBIG") as info:
            store.put(packet_id, data)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert isinstance(info.value.__cause__, OSError)
    assert list((tmp_path / "incoming").iterdir()) == []
    assert not store.has(packet_id)
    assert store.statistics().reserved_bytes == 0
    assert (store.used_bytes, store.free_bytes) == (0, 1_000_000)
    # The same packet stores fine once writes work again.
    assert store.put(packet_id, data) is True
    assert store.get(packet_id) == data


def test_bad_ids_and_allocations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        PacketDirectory(tmp_path, allocation_bytes=-1)
    store = PacketDirectory(tmp_path, allocation_bytes=10)
    with pytest.raises(ValueError):
        store.path_for(b"\x00" * 31)
    with pytest.raises(ValueError):
        store.get(b"")
    assert os.listdir(tmp_path / "packets") == []


# --- from the mutation run (docs/MUTATION.md) -------------------------------------------------


def test_reservations_add_up_and_the_last_free_byte_can_be_reserved(tmp_path: Path) -> None:
    store = PacketDirectory(tmp_path / "store", allocation_bytes=1000)
    store.reserve(0)
    store.reserve(300)
    store.reserve(200)
    assert store.free_bytes == 500
    store.reserve(500)  # exactly what is free
    assert store.free_bytes == 0
    with pytest.raises(AllocationFull):
        store.reserve(1)
    with pytest.raises(ValueError):
        store.reserve(-1)


def test_allocation_bounds_are_checked(tmp_path: Path) -> None:
    assert PacketDirectory(tmp_path / "a", allocation_bytes=0).free_bytes == 0
    with pytest.raises(ValueError):
        PacketDirectory(tmp_path / "b", allocation_bytes=-1)
    with pytest.raises(ValueError):
        PacketDirectory(tmp_path / "c", allocation_bytes=100, other_bytes=-1)
    with pytest.raises(ValueError):
        PacketDirectory(tmp_path / "d", allocation_bytes=100, other_bytes=True)


def test_statistics_report_the_directory(tmp_path: Path) -> None:
    store = PacketDirectory(tmp_path / "store", allocation_bytes=100_000)
    for seed in range(3):
        store.put(*_packet(1000, seed))
    store.reserve(50)
    stats = store.statistics()
    assert (stats.allocation_bytes, stats.used_bytes, stats.reserved_bytes) == (100_000, 3000, 50)
    assert (stats.free_bytes, stats.packet_count, stats.quarantined_count) == (96_950, 3, 0)


def test_only_well_named_regular_files_count_as_packets(tmp_path: Path) -> None:
    """A restart rescans packets/: stray names, misplaced files and symlinks are not
    packets and use no allocation."""
    store = PacketDirectory(tmp_path / "store", allocation_bytes=1_000_000)
    packet_id, data = _packet(1000, 1)
    store.put(packet_id, data)
    home = store.path_for(packet_id).parent
    (home / ("zz" * 32)).write_bytes(b"x" * 10)  # right length, not hex
    (home / "abcd").write_bytes(b"x" * 10)  # hex, wrong length
    other_id, _ = _packet(5, 2)
    while other_id.hex()[:4] == packet_id.hex()[:4]:
        other_id = bytes([other_id[0] ^ 0xFF]) + other_id[1:]
    (home / other_id.hex()).write_bytes(b"x" * 10)  # a packet name in the wrong directory
    (home.parent / "zz").mkdir()  # not a fan-out directory
    (home.parent / "zz" / ("ab" * 32)).write_bytes(b"x" * 10)
    assert list(store.iter_ids()) == [packet_id]
    outside = tmp_path / "outside"
    outside.write_bytes(b"y" * 50_000)
    link_id = bytes([packet_id[0], packet_id[1]]) + b"\x01" * 30
    os.symlink(outside, home / link_id.hex())  # a link is never a packet
    reopened = PacketDirectory(tmp_path / "store", allocation_bytes=1_000_000)
    assert (reopened.packet_count, reopened.used_bytes) == (1, 1000)
    assert list(reopened.iter_ids()) == [packet_id]


def test_the_store_names_its_format_and_refuses_a_newer_one(tmp_path: Path) -> None:
    """A store carries its layout's version, so a later version can migrate it and this
    one never takes another layout's files for corrupt packets."""
    store = PacketDirectory(tmp_path / "s", allocation_bytes=1_000_000)
    fmt = store.root / FORMAT_NAME
    assert fmt.read_text() == f"gridnode-packet-store {STORAGE_FORMAT}\n"
    packet_id, data = _packet(100, 1)
    store.put(packet_id, data)
    # A store from before the file existed is layout 1: it gets the file and opens.
    fmt.unlink()
    assert PacketDirectory(tmp_path / "s", allocation_bytes=1_000_000).packet_count == 1
    assert fmt.exists()
    fmt.write_text(f"gridnode-packet-store {STORAGE_FORMAT + 1}\n")
    with pytest.raises(StorageFormatError, match="newer than this gridnode reads"):
        PacketDirectory(tmp_path / "s", allocation_bytes=1_000_000)
    fmt.write_text("something else\n")
    with pytest.raises(StorageFormatError, match="does not name a gridnode packet store"):
        PacketDirectory(tmp_path / "s", allocation_bytes=1_000_000)
