"""Content-defined chunking: exact reassembly, bounds, locality, bounded memory."""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from gridnode.logic.chunking import (
    CHUNK_AVG,
    CHUNK_MAX,
    CHUNK_MIN,
    ChunkingParams,
    iter_buffer_chunks,
    iter_file_chunks,
)

KiB = 1024
MiB = 1024 * KiB
SMALL = ChunkingParams(min_size=1 * KiB, avg_size=4 * KiB, max_size=16 * KiB)


def _random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_default_params_are_the_documented_bounds() -> None:
    params = ChunkingParams()
    assert (params.min_size, params.avg_size, params.max_size) == (CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
    assert params == ChunkingParams(256 * KiB, 1 * MiB, 2 * MiB)


@pytest.mark.parametrize(
    ("min_size", "avg_size", "max_size", "normalization"),
    [
        (2 * MiB, 2 * MiB, 4 * MiB, 1),  # min above pyfastcdc's range
        (64 * KiB, 32 * KiB, 4 * MiB, 1),  # min > avg
        (64 * KiB, 1 * MiB, 512 * KiB, 1),  # avg > max
        (64 * KiB, 1 * MiB, 32 * MiB, 1),  # max above range
        (256 * KiB, 1 * MiB, 4 * MiB, 4),  # normalization out of range
    ],
)
def test_invalid_params_are_refused(
    min_size: int, avg_size: int, max_size: int, normalization: int
) -> None:
    with pytest.raises(ValueError):
        ChunkingParams(min_size, avg_size, max_size, normalization)


def test_buffer_chunks_reassemble_within_bounds() -> None:
    data = _random_bytes(400 * KiB, seed=1)
    chunks = list(iter_buffer_chunks(data, SMALL))
    assert b"".join(chunks) == data
    assert len(chunks) > 20
    assert all(SMALL.min_size <= len(chunk) <= SMALL.max_size for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= SMALL.max_size


def test_buffer_chunks_are_read_only_views() -> None:
    data = bytearray(_random_bytes(64 * KiB, seed=2))
    chunk = next(iter_buffer_chunks(data, SMALL))
    assert isinstance(chunk, memoryview)
    assert chunk.readonly
    with pytest.raises(TypeError):
        chunk[0] = 0


def test_empty_inputs_yield_no_chunks(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert list(iter_buffer_chunks(b"")) == []
    assert list(iter_file_chunks(empty)) == []


def test_constant_data_is_cut_at_max_size() -> None:
    data = bytes(5 * SMALL.max_size + 123)
    lengths = [len(chunk) for chunk in iter_buffer_chunks(data, SMALL)]
    assert lengths == [SMALL.max_size] * 5 + [123]


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=80 * KiB), seed=st.integers(0, 2**16))
def test_buffer_chunking_reassembles_any_input(data: bytes, seed: int) -> None:
    data = data + _random_bytes(seed % (40 * KiB), seed)
    chunks = [bytes(chunk) for chunk in iter_buffer_chunks(data, SMALL)]
    assert b"".join(chunks) == data
    assert all(len(chunk) <= SMALL.max_size for chunk in chunks)
    assert all(len(chunk) >= SMALL.min_size for chunk in chunks[:-1])


def test_file_chunks_match_buffer_chunks(tmp_path: Path) -> None:
    # Mixed content: random stretches and long runs, so both the hash cuts and
    # the max-size cuts happen across the stream reader's window refills.
    data = b"".join(
        _random_bytes(300 * KiB, seed) if seed % 2 else bytes(70 * KiB) for seed in range(8)
    )
    path = tmp_path / "mixed"
    path.write_bytes(data)
    from_file = list(iter_file_chunks(path, SMALL))
    from_buffer = [bytes(chunk) for chunk in iter_buffer_chunks(data, SMALL)]
    assert all(isinstance(chunk, bytes) for chunk in from_file)
    assert from_file == from_buffer
    assert b"".join(from_file) == data


def test_insertion_changes_only_nearby_chunks() -> None:
    original = _random_bytes(24 * MiB, seed=3)
    middle = len(original) // 2
    edited = original[:middle] + b"INSERTED" + original[middle:]

    def digests(data: bytes) -> list[bytes]:
        return [blake3(chunk).digest() for chunk in iter_buffer_chunks(data)]

    before, after = digests(original), digests(edited)
    assert len(before) >= 16
    new_chunks = set(after) - set(before)
    assert 1 <= len(new_chunks) <= 2
    # Everything before and after the edit lines up chunk for chunk.
    assert len(set(before) & set(after)) >= len(before) - 2


def test_file_chunking_memory_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "big"
    size = 64 * MiB
    with open(path, "wb") as handle:
        for _ in range(size // MiB):
            handle.write(os.urandom(MiB))
    hasher = blake3()
    tracemalloc.start()
    try:
        total = count = 0
        for chunk in iter_file_chunks(path):
            hasher.update(chunk)
            total += len(chunk)
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert count >= 16
    # The reader's window (2 x max) plus the chunk handed out and the one
    # still held by the loop: a few CHUNK_MAX, nowhere near the 64 MiB file.
    assert peak <= 5 * CHUNK_MAX, f"peak traced memory {peak} bytes"
    expected = blake3()
    with open(path, "rb") as handle:
        for _ in range(size // MiB):
            expected.update(handle.read(MiB))
    assert hasher.digest() == expected.digest()
