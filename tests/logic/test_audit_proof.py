"""Proofs of possession: the tree agrees with BLAKE3, honest proofs verify, any change fails."""

from __future__ import annotations

import random

import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from gridnode.logic.audit_proof import (
    CHUNK_LEN,
    Proof,
    chunk_count,
    path_length,
    prove,
    root_hash,
    verify,
)

SIZES = [0, 1, 63, 64, 65, 1023, 1024, 1025, 2047, 2048, 2049, 3 * 1024, 5000, 7 * 1024 + 1]
LARGE = [100 * 1024, 128 * 1024 + 7, 8 * 1024 * 1024 // 7]


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + size).randbytes(size)


def _flip(raw: bytes, bit: int) -> bytes:
    out = bytearray(raw)
    out[(bit // 8) % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize("size", SIZES + LARGE)
def test_root_is_blake3(size: int) -> None:
    data = _data(size)
    assert root_hash(data) == blake3(data).digest()


@pytest.mark.parametrize("size", SIZES)
def test_every_chunk_proves_and_any_flip_fails(size: int) -> None:
    data = _data(size, 1)
    packet_id = blake3(data).digest()
    for index in range(chunk_count(size)):
        proof = prove(data, index)
        assert len(proof.path) == path_length(size, index)
        assert verify(packet_id, size, index, proof)
        if proof.chunk:
            bad_chunk = Proof(chunk=_flip(proof.chunk, index * 7 + 3), path=proof.path)
            assert not verify(packet_id, size, index, bad_chunk)
        for level in range(len(proof.path)):
            path = list(proof.path)
            path[level] = _flip(path[level], level * 13 + 5)
            assert not verify(packet_id, size, index, Proof(chunk=proof.chunk, path=tuple(path)))


@pytest.mark.parametrize("size", LARGE)
def test_large_packets_sampled_chunks(size: int) -> None:
    data = _data(size, 2)
    packet_id = blake3(data).digest()
    chunks = chunk_count(size)
    for index in {0, 1, chunks // 2, chunks - 2, chunks - 1}:
        proof = prove(data, index)
        assert len(proof.chunk) <= CHUNK_LEN
        assert verify(packet_id, size, index, proof)
        assert not verify(packet_id, size, (index + 1) % chunks, proof)


def test_wrong_size_id_or_shape_fails() -> None:
    data = _data(10 * 1024 + 5, 3)
    packet_id = blake3(data).digest()
    proof = prove(data, 4)
    assert verify(packet_id, len(data), 4, proof)
    assert not verify(packet_id, 2 * len(data), 4, proof)  # another tree shape
    assert not verify(blake3(b"other").digest(), len(data), 4, proof)
    assert not verify(packet_id, len(data), 4, Proof(chunk=proof.chunk, path=proof.path[:-1]))
    assert not verify(packet_id, len(data), 4, Proof(chunk=proof.chunk[:-1], path=proof.path))
    assert not verify(packet_id, len(data), 99, proof)
    assert not verify(packet_id, len(data), -1, proof)
    assert not verify(packet_id[:31], len(data), 4, proof)
    short_path = (*proof.path[:-1], proof.path[-1][:31])
    assert not verify(packet_id, len(data), 4, Proof(chunk=proof.chunk, path=short_path))


def test_out_of_range_index_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        prove(b"x" * 2048, 2)
    with pytest.raises(ValueError, match="out of range"):
        prove(b"", 1)


def test_chunk_from_another_packet_fails() -> None:
    """A holder that keeps only some packets cannot answer for another one's chunk."""
    first, second = _data(4096, 4), _data(4096, 5)
    proof = prove(second, 2)
    assert not verify(blake3(first).digest(), 4096, 2, proof)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=0, max_size=9 * 1024), pick=st.integers(min_value=0))
def test_any_packet_any_chunk(data: bytes, pick: int) -> None:
    index = pick % chunk_count(len(data))
    packet_id = blake3(data).digest()
    assert root_hash(data) == packet_id
    proof = prove(data, index)
    assert verify(packet_id, len(data), index, proof)
    if proof.chunk:
        tampered = Proof(chunk=_flip(proof.chunk, pick), path=proof.path)
        assert not verify(packet_id, len(data), index, tampered)
