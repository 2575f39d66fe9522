"""Decoding opens chunks in pooled scratch buffers: reuse never shows in a plaintext.

The risk of reusing a buffer is a chunk's bytes overwritten by the next chunk while
something still reads them; these tests decode chunks in a row and at once, keep every
plaintext, and check each against its original afterwards.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridnode.logic import packing
from gridnode.logic.packing import (
    ChunkIntegrityError,
    EncodedChunk,
    ErasureParams,
    decode_chunk,
    encode_chunk,
)

SECRET = bytes(range(32))
TEXT = b"Packets come back, chunks are opened and the files are written again. " * 3000


def _random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _decode(encoded: EncodedChunk, shares: dict[int, bytes | memoryview]) -> bytes:
    return decode_chunk(
        shares,
        chunk_id=encoded.chunk_id,
        dedup_secret=SECRET,
        params=encoded.params,
        cipher_size=encoded.cipher_size,
        compressed=encoded.compressed,
        plain_size=encoded.plain_size,
    )


def _data_shares(encoded: EncodedChunk) -> dict[int, bytes | memoryview]:
    return {i: bytes(encoded.packets[i]) for i in range(encoded.params.k)}


def test_chunks_decoded_in_a_row_keep_their_own_bytes() -> None:
    """A big raw chunk, a small compressed one, a big compressed one, a small raw one:
    each plaintext still equals its original once all have been decoded (each decode
    reuses the buffer the one before it used)."""
    params = ErasureParams(4, 6)
    plaintexts = [
        _random_bytes(1_500_000, seed=1),
        TEXT[:50_000],
        TEXT,
        _random_bytes(30_000, seed=2),
        TEXT[7:100_007],
    ]
    encoded = [encode_chunk(p, dedup_secret=SECRET, params=params) for p in plaintexts]
    assert [e.compressed for e in encoded] == [False, True, True, False, True]
    decoded = [_decode(e, _data_shares(e)) for e in encoded]
    for got, want in zip(decoded, plaintexts, strict=True):
        assert got == want
    # A redundant share among the k goes through zfec first, then the same scratch path.
    first = encoded[0]
    shares: dict[int, bytes | memoryview] = {i: bytes(first.packets[i]) for i in (0, 2, 4, 5)}
    assert _decode(first, shares) == plaintexts[0]
    assert decoded[0] == plaintexts[0]


def test_decoding_reuses_one_scratch_buffer() -> None:
    """Decoding one chunk after another maps no new buffer: the pooled one is taken
    again (that is the point of the pool: pages the kernel need not fault in again)."""
    pool = packing._ScratchPool(keep=1)
    original = packing._scratch_pool
    packing._scratch_pool = pool
    try:
        encoded = encode_chunk(TEXT, dedup_secret=SECRET, params=ErasureParams(3, 5))
        assert _decode(encoded, _data_shares(encoded)) == TEXT
        buffer = pool.take(1)
        pool.give(buffer)
        assert _decode(encoded, _data_shares(encoded)) == TEXT
        assert pool.take(1) is buffer
    finally:
        packing._scratch_pool = original


def test_a_buffer_still_viewed_is_never_pooled() -> None:
    """Handing back a buffer something still reads is refused, so the next chunk can
    never be opened in bytes another reader holds."""
    pool = packing._ScratchPool(keep=2)
    buffer = pool.take(100)
    view = memoryview(buffer)[:10]
    with pytest.raises(BufferError):
        pool.give(buffer)
    view.release()
    pool.give(buffer)
    assert pool.take(100) is buffer


def test_a_failed_decode_leaves_the_pool_sound() -> None:
    """Corrupt shares, bad padding and a bad frame fail inside the scratch buffer; the
    buffer goes back with no view left (``give`` would raise), and the next chunk opens
    right in it."""
    params = ErasureParams(4, 6)
    encoded = encode_chunk(TEXT, dedup_secret=SECRET, params=params)
    corrupt = _data_shares(encoded)
    flipped = bytearray(corrupt[1])
    flipped[10] ^= 1
    corrupt[1] = bytes(flipped)
    with pytest.raises(ChunkIntegrityError, match="authentication failed"):
        _decode(encoded, corrupt)
    odd = encode_chunk(TEXT[:1001], dedup_secret=SECRET, params=ErasureParams(4, 4))
    assert odd.cipher_size % 4, "this chunk needs padding"
    padded = _data_shares(odd)
    last = bytearray(padded[3])
    last[-1] = 1
    padded[3] = bytes(last)
    with pytest.raises(ChunkIntegrityError, match="padding"):
        _decode(odd, padded)
    with pytest.raises(ChunkIntegrityError, match="authentication failed"):
        decode_chunk(
            _data_shares(encoded),
            chunk_id=encoded.chunk_id,
            dedup_secret=SECRET,
            params=params,
            cipher_size=encoded.cipher_size,
            compressed=True,
            plain_size=encoded.plain_size + 1,
        )
    assert _decode(encoded, _data_shares(encoded)) == TEXT
    assert _decode(odd, _data_shares(odd)) == TEXT[:1001]


def test_memoryview_shares_decode_as_bytes_do() -> None:
    """Shares may be read-only views of a larger buffer (a batch of packets as it came)."""
    encoded = encode_chunk(TEXT, dedup_secret=SECRET, params=ErasureParams(4, 6))
    joined = b"".join(bytes(p) for p in encoded.packets)
    size = encoded.packet_size
    with memoryview(joined) as whole:
        shares: dict[int, bytes | memoryview] = {
            i: whole[i * size : (i + 1) * size] for i in (1, 2, 3, 5)
        }
        assert _decode(encoded, shares) == TEXT


def test_threads_decoding_at_once_each_get_their_own_chunk() -> None:
    """More threads than the pool keeps, many chunks of different sizes: every plaintext
    is its own (a buffer shared by two threads at once would mix them)."""
    params = ErasureParams(3, 5)
    plaintexts = [
        _random_bytes(20_000 + 37_000 * i, seed=i) if i % 2 else TEXT[: 10_000 + 20_000 * i]
        for i in range(24)
    ]
    encoded = [encode_chunk(p, dedup_secret=SECRET, params=params) for p in plaintexts]
    with ThreadPoolExecutor(max_workers=6) as pool:
        for _ in range(3):
            decoded = list(pool.map(lambda e: _decode(e, _data_shares(e)), encoded))
            assert decoded == plaintexts


@settings(max_examples=40, deadline=None)
@given(
    plaintext=st.binary(max_size=5000) | st.integers(0, 4000).map(lambda n: TEXT[n : n + 3000]),
    k=st.integers(1, 8),
    extra=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_scratch_path_matches_the_copying_path(
    plaintext: bytes, k: int, extra: int, seed: int
) -> None:
    """Opening in place gives the bytes pynacl's copying binding gives, for any k of n."""
    params = ErasureParams(k, k + extra)
    encoded = encode_chunk(plaintext, dedup_secret=SECRET, params=params)
    chosen = sorted(random.Random(seed).sample(range(params.n), k))
    shares = {i: bytes(encoded.packets[i]) for i in chosen}
    if chosen == list(range(k)):
        blocks: list[bytes] = [shares[i] for i in chosen]
    else:
        blocks = packing._codecs.decoder(params).decode([shares[i] for i in chosen], chosen)
    size = encoded.packet_size
    in_place, copied = (
        decode(
            blocks,
            size,
            chunk_id=encoded.chunk_id,
            dedup_secret=SECRET,
            cipher_size=encoded.cipher_size,
            compressed=encoded.compressed,
            plain_size=encoded.plain_size,
            chunk_hex="00",
        )
        for decode in (packing._decode_in_scratch, packing._decode_copying)
    )
    assert in_place == copied == plaintext


def test_released_buffers_are_unmapped_and_the_next_decode_maps_anew() -> None:
    """Once a restore is over its scratch memory goes back (``release_scratch``); a
    buffer in use when that happens is pooled again when given back."""
    pool = packing._ScratchPool(keep=2)
    kept, in_use = pool.take(10), pool.take(10)
    pool.give(kept)
    pool.release()
    assert kept.closed
    pool.give(in_use)
    assert not in_use.closed
    assert pool.take(10) is in_use
    assert pool.take(10) is not kept


def test_a_full_pool_keeps_its_largest_buffers() -> None:
    """Chunks of varying sizes: the pool keeps the buffers any of them fits in, so a big
    chunk after small ones does not map a buffer of its own every time."""
    pool = packing._ScratchPool(keep=1)
    small, big = pool.take(1000), pool.take(packing._SCRATCH_GRAIN + 1)
    pool.give(big)
    pool.give(small)
    assert small.closed and not big.closed
    assert pool.take(10) is big
