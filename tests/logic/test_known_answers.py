"""Known answers for the libraries whose output decides chunk boundaries, chunk ids and
packet ids, so dedup and restores stay the same across library versions.

pyfastcdc cuts the chunks and zfec makes the redundant packets: a release that changed
either's output would silently stop dedup against every earlier snapshot (new ids for
the same data) or, for zfec, make old packets undecodable.  Both are pinned with upper
bounds in pyproject.toml; these tests say, on any upgrade, whether the bytes changed.
Inputs are fixed (a BLAKE3 XOF stream, itself checked against the BLAKE3 spec's vector),
and the expected values were recorded with pyfastcdc 0.3.1, zfec 1.6.0.0 and libsodium
of PyNaCl 1.6.2.  The raw (incompressible) path of ``encode_chunk`` is pinned whole;
zstd's frames are not guaranteed stable across versions, which is why the nonce of a
compressed chunk covers its frame (see packing.py) and only its round trip is tested.
"""

from __future__ import annotations

import blake3
import zfec

from gridnode.logic.chunking import DEFAULT_PARAMS, iter_buffer_chunks
from gridnode.logic.packing import ErasureParams, decode_chunk, encode_chunk

STREAM = blake3.blake3(b"gridnode known-answer stream").digest(length=6 * 1024 * 1024)


def test_blake3_matches_the_specification() -> None:
    # From the BLAKE3 specification's test vectors: the hash of the empty input.
    assert (
        blake3.blake3(b"").hexdigest()
        == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    )
    # The XOF stream every other answer here is computed from.
    assert blake3.blake3(STREAM).hexdigest()[:16] != blake3.blake3(b"").hexdigest()[:16]
    assert STREAM[:8].hex() == blake3.blake3(b"gridnode known-answer stream").hexdigest()[:16]


def test_pyfastcdc_cuts_the_same_boundaries() -> None:
    lengths = [len(chunk) for chunk in iter_buffer_chunks(STREAM, DEFAULT_PARAMS)]
    assert lengths == [1074145, 937774, 1273839, 700385, 1671667, 600061, 33585]


def test_zfec_makes_the_same_shares() -> None:
    shares = zfec.Encoder(4, 6).encode([STREAM[i * 256 : (i + 1) * 256] for i in range(4)])
    assert [blake3.blake3(bytes(s)).hexdigest() for s in shares] == [
        "83f155da4b365b25a04d330b5f64247ebf741b9eb1614da8226f6c48cde8ac07",
        "13daf4308ba3a5dbe659d70f2fb3f4339fd786794383d63d4ae457a293902644",
        "d3d0bb46a70e360feb23b220a2f02811f8c10e8a6639120f981a5fa392b835bd",
        "eb5eb76b4184ffadc3c3acec7562136e81938a7cc9b831ebdfef528f261fa080",
        "768d3c8adeaa59fc7f59388b7574f6b0ef6cc6887d1e6abdeb8a3092316d3974",
        "721e349fd5df3d8e3f6efc545067ab2e610807e76ca8b4576c2e1917967a76d6",
    ]
    # Any 4 of the 6 give the blocks back (the two redundant ones among them).
    decoded = zfec.Decoder(4, 6).decode([shares[1], shares[3], shares[4], shares[5]], [1, 3, 4, 5])
    assert b"".join(bytes(b) for b in decoded) == STREAM[:1024]


def test_an_incompressible_chunk_gives_the_same_ids_and_packets() -> None:
    chunk = STREAM[:1_000_000]
    secret = bytes(range(32))
    encoded = encode_chunk(chunk, dedup_secret=secret, params=ErasureParams.parse("4/6"))
    assert encoded.chunk_id.hex() == (
        "84065371d1bb943716c9b340b96522607704a7cc5530552bd19087fc22ce0cea"
    )
    assert [p.hex() for p in encoded.packet_ids] == [
        "07660ce2010763d7172331ae33a089f048a1c153ad850edc76e144760e213c7e",
        "0bd27a41a06488105f9b27585f1763a80cfeaf3271c2f9c30ed69f8027a4e6f4",
        "5c7645c365b2a64518166d88a8931829fbec338e332435da356879b540b4a8fd",
        "7ccb156d52d540c935c1c7ae5b246bab8226017e6fefa56354ae0cb6428f0183",
        "28658b2d1b1094b0298509906c6fa880711c45450a8aa5ad905e46b541dfc7de",
        "8f6c5cd874c99f1ff9af4755ce49c41874e9f5fb6a8f884aff4dbf48c9caa4da",
    ]
    # Decodable from the two redundant packets and two data packets.
    shares = {i: encoded.packets[i] for i in (0, 2, 4, 5)}
    plain = decode_chunk(
        shares,
        chunk_id=encoded.chunk_id,
        dedup_secret=secret,
        params=encoded.params,
        cipher_size=encoded.cipher_size,
        compressed=encoded.compressed,
        plain_size=encoded.plain_size,
        packet_ids=encoded.packet_ids,
    )
    assert plain == chunk and not encoded.compressed


def test_a_compressible_chunk_round_trips() -> None:
    text = b"the same words, again and again; " * 30_000
    secret = bytes(range(32))
    encoded = encode_chunk(text, dedup_secret=secret, params=ErasureParams.parse("4/6"))
    assert encoded.compressed and encoded.cipher_size < len(text) // 10
    shares = {i: encoded.packets[i] for i in (1, 3, 4, 5)}
    plain = decode_chunk(
        shares,
        chunk_id=encoded.chunk_id,
        dedup_secret=secret,
        params=encoded.params,
        cipher_size=encoded.cipher_size,
        compressed=True,
        plain_size=encoded.plain_size,
    )
    assert plain == text
