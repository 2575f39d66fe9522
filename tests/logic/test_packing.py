"""One chunk to n packets and back: round trips, convergence, integrity checks."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from gridnode.logic import packing
from gridnode.logic.packing import (
    CIPHER_OVERHEAD,
    ChunkIntegrityError,
    EncodedChunk,
    ErasureParams,
    chunk_id_for,
    decode_chunk,
    encode_chunk,
    packet_id_for,
    rebuild_shares,
)

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
TEXT = b"The quick brown fox jumps over the lazy dog while the packets travel. " * 800


def _random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _decode(
    encoded: EncodedChunk,
    shares: Mapping[int, bytes],
    *,
    secret: bytes = SECRET,
    with_ids: bool = False,
) -> bytes:
    return decode_chunk(
        shares,
        chunk_id=encoded.chunk_id,
        dedup_secret=secret,
        params=encoded.params,
        cipher_size=encoded.cipher_size,
        compressed=encoded.compressed,
        plain_size=encoded.plain_size,
        packet_ids=encoded.packet_ids if with_ids else None,
    )


# -- ErasureParams ----------------------------------------------------------


@pytest.mark.parametrize(("text", "k", "n"), [("4/6", 4, 6), ("1/1", 1, 1), (" 10 / 16 ", 10, 16)])
def test_erasure_params_parse(text: str, k: int, n: int) -> None:
    params = ErasureParams.parse(text)
    assert (params.k, params.n) == (k, n)
    assert str(params) == f"{k}/{n}"


@pytest.mark.parametrize(
    "text", ["", "4", "4/", "/6", "6/4", "0/3", "4/257", "a/b", "4/6/8", "-1/3", "٤/٦"]
)
def test_erasure_params_parse_refuses_bad_text_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="invalid erasure parameters") as info:
        ErasureParams.parse(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (2, 1), (1, 257), (300, 300)])
def test_erasure_params_validated(k: int, n: int) -> None:
    with pytest.raises(ValueError):
        ErasureParams(k, n)


@settings(max_examples=50, deadline=None)
@given(k=st.integers(1, 256), extra=st.integers(0, 255))
def test_erasure_params_str_parse_round_trip(k: int, extra: int) -> None:
    params = ErasureParams(k, min(k + extra, 256))
    assert ErasureParams.parse(str(params)) == params


# -- round trips --------------------------------------------------------------


@pytest.mark.parametrize(("k", "n"), [(1, 1), (1, 3), (3, 3), (2, 5), (4, 6), (10, 16)])
@pytest.mark.parametrize("plaintext", [b"", b"x", _random_bytes(3001, seed=5), TEXT[:3001]])
def test_every_k_subset_rebuilds_the_chunk(k: int, n: int, plaintext: bytes) -> None:
    params = ErasureParams(k, n)
    encoded = encode_chunk(plaintext, dedup_secret=SECRET, params=params)
    assert len(encoded.packets) == len(encoded.packet_ids) == n
    assert {len(packet) for packet in encoded.packets} == {encoded.packet_size}
    for subset in itertools.combinations(range(n), k):
        shares = {index: encoded.packets[index] for index in subset}
        assert _decode(encoded, shares) == plaintext


def test_decode_ignores_extra_shares_and_uses_any_k() -> None:
    encoded = encode_chunk(TEXT, dedup_secret=SECRET, params=ErasureParams(4, 6))
    assert _decode(encoded, dict(enumerate(encoded.packets)), with_ids=True) == TEXT
    assert (
        _decode(
            encoded,
            {
                5: encoded.packets[5],
                0: encoded.packets[0],
                4: encoded.packets[4],
                2: encoded.packets[2],
            },
        )
        == TEXT
    )


def test_incompressible_chunk_is_stored_raw() -> None:
    plaintext = _random_bytes(200_000, seed=6)
    encoded = encode_chunk(plaintext, dedup_secret=SECRET, params=ErasureParams(4, 6))
    assert not encoded.compressed
    assert encoded.cipher_size == len(plaintext) + CIPHER_OVERHEAD
    assert encoded.packet_size == -(-encoded.cipher_size // 4)
    assert _decode(encoded, {i: encoded.packets[i] for i in (1, 3, 4, 5)}) == plaintext


def test_compressible_chunk_is_compressed() -> None:
    encoded = encode_chunk(TEXT, dedup_secret=SECRET, params=ErasureParams(4, 6))
    assert encoded.compressed
    assert encoded.cipher_size < len(TEXT) // 10
    assert _decode(encoded, {i: encoded.packets[i] for i in (2, 3, 4, 5)}) == TEXT


def test_tiny_chunks_are_stored_raw() -> None:
    for plaintext in (b"", b"x", b"ab"):
        encoded = encode_chunk(plaintext, dedup_secret=SECRET, params=ErasureParams(4, 6))
        assert not encoded.compressed
        assert encoded.plain_size == len(plaintext)
        assert encoded.cipher_size == len(plaintext) + CIPHER_OVERHEAD


def test_memoryview_input_gives_the_same_packets_as_bytes() -> None:
    data = bytearray(_random_bytes(50_000, seed=7)) + bytearray(TEXT)
    params = ErasureParams(4, 6)
    from_bytes = encode_chunk(bytes(data), dedup_secret=SECRET, params=params)
    from_view = encode_chunk(memoryview(data)[0:], dedup_secret=SECRET, params=params)
    assert from_view == from_bytes
    wide = memoryview(bytes(data[:40_000])).cast("I")
    assert encode_chunk(wide, dedup_secret=SECRET, params=params).plain_size == 40_000


@settings(max_examples=40, deadline=None)
@given(
    plaintext=st.one_of(st.binary(max_size=5000), st.text(max_size=3000).map(str.encode)),
    k=st.integers(1, 8),
    extra=st.integers(0, 5),
    seed=st.integers(0, 2**32),
)
def test_round_trip_property(plaintext: bytes, k: int, extra: int, seed: int) -> None:
    params = ErasureParams(k, k + extra)
    encoded = encode_chunk(plaintext, dedup_secret=SECRET, params=params)
    indices = random.Random(seed).sample(range(params.n), k)
    assert _decode(encoded, {i: encoded.packets[i] for i in indices}, with_ids=True) == plaintext


def _packets_by_copying(plaintext: bytes, params: ErasureParams) -> tuple[bytes, ...]:
    """The packets as sealed by pynacl's ``bytes`` binding and split by copying (what
    ``encode_chunk`` did before it sealed in place)."""
    chunk_id = chunk_id_for(plaintext, SECRET)
    message, compressed = packing._compress(plaintext, 3)
    nonce, sealed = packing._seal(
        bytes(message),
        chunk_id=chunk_id,
        dedup_secret=SECRET,
        compressed=compressed,
        plain_size=len(plaintext),
    )
    return tuple(packing._erasure_encode(nonce, sealed, params))


@settings(max_examples=40, deadline=None)
@given(
    size=st.sampled_from([0, 1, 23, 24, 1000, 4099, 70_001, 300_000]),
    compressible=st.booleans(),
    k=st.integers(1, 8),
    extra=st.integers(0, 4),
    seed=st.integers(0, 2**32),
)
def test_sealing_in_place_gives_the_packets_of_the_copying_path(
    size: int, compressible: bool, k: int, extra: int, seed: int
) -> None:
    """Issue 11: the packets, sealed straight into the data packets' buffer, are the
    bytes that sealing into ``bytes`` and copying the blocks out gave (the stored format,
    and so convergence, is unchanged); and they are views of one buffer, not copies."""
    params = ErasureParams(k, k + extra)
    plaintext = (
        (TEXT * (size // len(TEXT) + 1))[:size] if compressible else _random_bytes(size, seed)
    )
    encoded = encode_chunk(memoryview(plaintext), dedup_secret=SECRET, params=params)
    assert encoded.packets == _packets_by_copying(plaintext, params)
    data = encoded.packets[: params.k]
    assert all(isinstance(p, memoryview) and p.readonly for p in data)
    assert len({id(p.obj) for p in data if isinstance(p, memoryview)}) == 1


# -- identifiers and convergence ----------------------------------------------


def test_ids_are_keyed_and_unkeyed_blake3() -> None:
    encoded = encode_chunk(TEXT, dedup_secret=SECRET, params=ErasureParams(4, 6))
    assert encoded.chunk_id == chunk_id_for(TEXT, SECRET) == blake3(TEXT, key=SECRET).digest()
    assert encoded.packet_ids == tuple(blake3(p).digest() for p in encoded.packets)
    assert encoded.packet_ids == tuple(packet_id_for(p) for p in encoded.packets)


def test_encoding_is_deterministic_within_a_dedup_domain() -> None:
    params = ErasureParams(4, 6)
    for plaintext in (TEXT, _random_bytes(10_000, seed=8)):
        first = encode_chunk(plaintext, dedup_secret=SECRET, params=params)
        again = encode_chunk(bytes(plaintext), dedup_secret=SECRET, params=params)
        assert again == first


def test_different_secrets_give_unrelated_ids_and_packets() -> None:
    params = ErasureParams(4, 6)
    for plaintext in (TEXT, _random_bytes(10_000, seed=9), b""):
        mine = encode_chunk(plaintext, dedup_secret=SECRET, params=params)
        theirs = encode_chunk(plaintext, dedup_secret=OTHER_SECRET, params=params)
        assert mine.chunk_id != theirs.chunk_id
        assert not set(map(bytes, mine.packets)) & set(map(bytes, theirs.packets))
        assert not set(mine.packet_ids) & set(theirs.packet_ids)


def test_another_zstd_level_never_reuses_a_nonce_for_other_bytes() -> None:
    # Same chunk, another compressed frame: the synthetic nonce must differ,
    # otherwise two messages would share key and nonce.
    params = ErasureParams(1, 1)
    fast = encode_chunk(TEXT, dedup_secret=SECRET, params=params, zstd_level=1)
    strong = encode_chunk(TEXT, dedup_secret=SECRET, params=params, zstd_level=19)
    assert fast.chunk_id == strong.chunk_id
    assert fast.compressed and strong.compressed
    assert fast.packets[0][:24] != strong.packets[0][:24]
    assert _decode(fast, {0: fast.packets[0]}) == _decode(strong, {0: strong.packets[0]}) == TEXT


def test_bad_arguments_are_refused() -> None:
    params = ErasureParams(4, 6)
    with pytest.raises(ValueError, match="dedup secret"):
        encode_chunk(TEXT, dedup_secret=b"short", params=params)
    with pytest.raises(ValueError, match="zstd_level"):
        encode_chunk(TEXT, dedup_secret=SECRET, params=params, zstd_level=0)
    encoded = encode_chunk(TEXT, dedup_secret=SECRET, params=params)
    with pytest.raises(ValueError, match="packet ids"):
        decode_chunk(
            dict(enumerate(encoded.packets)),
            chunk_id=encoded.chunk_id,
            dedup_secret=SECRET,
            params=params,
            cipher_size=encoded.cipher_size,
            compressed=encoded.compressed,
            plain_size=encoded.plain_size,
            packet_ids=encoded.packet_ids[:3],
        )


# -- integrity ----------------------------------------------------------------


def _flip(data: bytes, position: int) -> bytes:
    corrupted = bytearray(data)
    corrupted[position] ^= 0x40
    return bytes(corrupted)


@pytest.mark.parametrize("plaintext", [TEXT, _random_bytes(40_000, seed=10)])
@pytest.mark.parametrize("index", [0, 3, 5])
def test_corrupted_share_is_detected(plaintext: bytes, index: int) -> None:
    encoded = encode_chunk(plaintext, dedup_secret=SECRET, params=ErasureParams(4, 6))
    shares = {i: encoded.packets[i] for i in (0, 2, 3, 5)}
    shares[index] = _flip(shares[index], len(shares[index]) // 3)
    with pytest.raises(ChunkIntegrityError, match="authentication failed"):
        _decode(encoded, shares)
    with pytest.raises(ChunkIntegrityError, match=f"share {index} does not match its packet id"):
        _decode(encoded, shares, with_ids=True)


def test_corrupted_padding_is_detected() -> None:
    encoded = encode_chunk(b"0123456789" * 3, dedup_secret=SECRET, params=ErasureParams(4, 6))
    assert encoded.cipher_size % 4 != 0  # so the last data packet ends in padding
    shares = {i: encoded.packets[i] for i in range(4)}
    shares[3] = _flip(shares[3], len(shares[3]) - 1)
    with pytest.raises(ChunkIntegrityError, match="padding"):
        _decode(encoded, shares)


def test_too_few_shares_are_refused() -> None:
    encoded = encode_chunk(TEXT, dedup_secret=SECRET, params=ErasureParams(4, 6))
    with pytest.raises(ChunkIntegrityError, match="need 4 shares"):
        _decode(encoded, {i: encoded.packets[i] for i in (0, 4, 5)})
    with pytest.raises(ChunkIntegrityError, match="need 4 shares"):
        _decode(encoded, {})


def test_share_of_wrong_size_or_index_is_refused() -> None:
    encoded = encode_chunk(TEXT, dedup_secret=SECRET, params=ErasureParams(4, 6))
    shares = {i: encoded.packets[i] for i in range(4)}
    with pytest.raises(ChunkIntegrityError, match="share 2 is"):
        _decode(encoded, {**shares, 2: encoded.packets[2][:-1]})
    with pytest.raises(ChunkIntegrityError, match="share index 6"):
        _decode(encoded, {**shares, 6: encoded.packets[0]})


def test_shares_of_another_chunk_are_refused() -> None:
    params = ErasureParams(4, 6)
    mine = encode_chunk(_random_bytes(20_000, seed=11), dedup_secret=SECRET, params=params)
    other = encode_chunk(_random_bytes(20_000, seed=12), dedup_secret=SECRET, params=params)
    assert mine.cipher_size == other.cipher_size
    with pytest.raises(ChunkIntegrityError):
        _decode(mine, {i: other.packets[i] for i in range(4)})
    # Mixing one foreign share in is caught too.
    mixed = {i: mine.packets[i] for i in (0, 1, 2)} | {5: other.packets[5]}
    with pytest.raises(ChunkIntegrityError):
        _decode(mine, mixed)


def test_wrong_secret_or_metadata_is_refused() -> None:
    encoded = encode_chunk(TEXT, dedup_secret=SECRET, params=ErasureParams(4, 6))
    shares = {i: encoded.packets[i] for i in range(4)}
    with pytest.raises(ChunkIntegrityError):
        _decode(encoded, shares, secret=OTHER_SECRET)
    good = {
        "chunk_id": encoded.chunk_id,
        "compressed": encoded.compressed,
        "plain_size": encoded.plain_size,
    }
    for field, bad in (
        ("chunk_id", chunk_id_for(b"other", SECRET)),
        ("compressed", not encoded.compressed),
        ("plain_size", encoded.plain_size + 1),
    ):
        arguments = {**good, field: bad}
        with pytest.raises(ChunkIntegrityError):
            decode_chunk(
                shares,
                chunk_id=arguments["chunk_id"],  # type: ignore[arg-type]
                dedup_secret=SECRET,
                params=encoded.params,
                cipher_size=encoded.cipher_size,
                compressed=arguments["compressed"],  # type: ignore[arg-type]
                plain_size=arguments["plain_size"],  # type: ignore[arg-type]
            )


def test_frame_declaring_more_than_the_chunk_is_refused_before_allocating() -> None:
    frame = zstandard.ZstdCompressor(level=1).compress(bytes(10_000_000))
    with pytest.raises(ChunkIntegrityError, match="declares 10000000 bytes"):
        packing._decompress(frame, 1000, "00")


# -- threads ------------------------------------------------------------------


def test_concurrent_encoding_and_decoding_match_sequential() -> None:
    params = ErasureParams(4, 6)
    plaintexts = [
        _random_bytes(30_000 + i, seed=i) if i % 2 else TEXT[: 20_000 + i] for i in range(24)
    ]
    sequential = [encode_chunk(p, dedup_secret=SECRET, params=params) for p in plaintexts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(
            pool.map(lambda p: encode_chunk(p, dedup_secret=SECRET, params=params), plaintexts)
        )
        decoded = list(
            pool.map(lambda e: _decode(e, {i: e.packets[i] for i in (1, 2, 4, 5)}), concurrent)
        )
    assert concurrent == sequential
    assert decoded == plaintexts


# --- repair: rebuilding lost packets without the key ---------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    plaintext=st.binary(min_size=0, max_size=20_000),
    k=st.integers(1, 6),
    extra=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_any_k_survivors_rebuild_every_lost_packet_byte_for_byte(
    plaintext: bytes, k: int, extra: int, seed: int
) -> None:
    params = ErasureParams(k, k + extra)
    encoded = encode_chunk(plaintext, dedup_secret=SECRET, params=params)
    rng = random.Random(seed)
    survivors = sorted(rng.sample(range(params.n), k))
    lost = [i for i in range(params.n) if i not in survivors]
    rebuilt = rebuild_shares(
        {i: encoded.packets[i] for i in survivors},
        params=params,
        cipher_size=encoded.cipher_size,
        packet_ids=encoded.packet_ids,
        wanted=lost,
    )
    assert sorted(rebuilt) == lost
    for index in lost:
        assert rebuilt[index] == encoded.packets[index]


def test_rebuild_refuses_a_corrupt_survivor_and_too_few_survivors() -> None:
    params = ErasureParams(2, 4)
    encoded = encode_chunk(TEXT, dedup_secret=SECRET, params=params)
    corrupt = bytearray(encoded.packets[1])
    corrupt[5] ^= 1
    with pytest.raises(ChunkIntegrityError, match="packet id"):
        rebuild_shares(
            {0: encoded.packets[0], 1: bytes(corrupt)},
            params=params,
            cipher_size=encoded.cipher_size,
            packet_ids=encoded.packet_ids,
            wanted=[2, 3],
        )
    with pytest.raises(ChunkIntegrityError, match="need 2"):
        rebuild_shares(
            {3: encoded.packets[3]},
            params=params,
            cipher_size=encoded.cipher_size,
            packet_ids=encoded.packet_ids,
            wanted=[0],
        )
    with pytest.raises(ValueError, match="out of range"):
        rebuild_shares(
            {0: encoded.packets[0], 1: encoded.packets[1]},
            params=params,
            cipher_size=encoded.cipher_size,
            packet_ids=encoded.packet_ids,
            wanted=[4],
        )


def test_rebuild_checks_the_result_against_the_recorded_ids() -> None:
    """Survivors of *another* chunk with matching ids cannot pass for this one's lost share."""
    params = ErasureParams(2, 3)
    encoded = encode_chunk(TEXT, dedup_secret=SECRET, params=params)
    ids = list(encoded.packet_ids)
    ids[2] = bytes(32)  # a record whose id for share 2 is not what these survivors make
    with pytest.raises(ChunkIntegrityError, match="rebuilt share 2"):
        rebuild_shares(
            {0: encoded.packets[0], 1: encoded.packets[1]},
            params=params,
            cipher_size=encoded.cipher_size,
            packet_ids=ids,
            wanted=[2],
        )


# --- from the mutation run (docs/MUTATION.md) -------------------------------------------------


def test_encoding_is_pinned_by_a_golden_vector() -> None:
    """Chunk ids, keys, nonces and the AAD are a storage format: a change that is made the
    same way on the encoding and the decoding side still round-trips, but it orphans every
    backup already on the grid.  Raw (incompressible) data keeps zstd out of the vector."""
    import hashlib

    secret = bytes(range(32))
    text = random.Random(7).randbytes(3000)
    encoded = encode_chunk(text, dedup_secret=secret, params=ErasureParams(2, 3))
    assert encoded.chunk_id.hex() == (
        "0e6393bf130faa248daf7d79d6c0cf3b3936911817a906d38a2acfeaed15edea"
    )
    assert (encoded.compressed, encoded.cipher_size) == (False, 3040)
    packets = hashlib.blake2b(b"".join(encoded.packets), digest_size=16).hexdigest()
    assert packets == "8a84afa766cab70bf602304029d43510"
