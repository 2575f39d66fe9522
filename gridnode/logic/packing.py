"""One chunk to ``n`` packets and back: id, compress, encrypt, erasure-code.

Encoding a chunk, in order:

1. **Unique data identifier.** ``chunk_id = BLAKE3-keyed(dedup_secret, plaintext)``.
   Only holders of the dedup secret can compute it, so the id says nothing to
   anybody else about the content, while every node of the dedup domain gets
   the same id for the same chunk and stores it once.
2. **Compression.** zstandard at the given level, kept only when the frame is
   strictly shorter than the plaintext; otherwise the plaintext is stored raw
   (already-compressed media would only grow).
3. **Convergent encryption.** XChaCha20-Poly1305 (IETF) under
   ``key = BLAKE3-derive_key("gridnode 2026 chunk key v1", dedup_secret || chunk_id)``.
   The 24-byte nonce is derived from the same inputs under a second context
   (``"gridnode 2026 chunk nonce v1"``) and, for a compressed chunk, also from
   the exact compressed bytes (a synthetic nonce, as in SIV). The reason: the
   compressed bytes of one plaintext are not a function of the chunk id alone
   (another zstd level or library version gives another frame), and two
   different messages under one key and one nonce would leak their XOR and
   break Poly1305. A raw chunk's message *is* a function of its id, so it
   costs no extra hash. The nonce travels in front of the AEAD output, so the
   decoder never needs to know how it was made. Associated data binds the
   chunk id, the compressed flag and the plaintext size, so a share set of
   another chunk (or wrong catalog metadata) cannot be decoded as this one.
4. **Redundancy.** The sealed bytes ``nonce || ciphertext || tag``
   (``cipher_size`` bytes) are zero-padded to a multiple of ``k``, split into
   ``k`` equal data packets, and zfec adds ``n - k`` redundant packets; any
   ``k`` of the ``n`` rebuild the chunk. A packet's id is the unkeyed BLAKE3
   of its bytes, so any holder can check what it keeps without learning
   anything.

Same chunk, same dedup secret, same zstd level and library: same packets,
bit for bit (so dedup works across snapshots and nodes of a domain). Another
secret gives unrelated ids, keys and packets.

Threading: everything here is synchronous and safe to call from several
threads at once. zstd and zfec codec objects are cached per thread (zstd
contexts must not be shared); the heavy calls (BLAKE3, zstd, libsodium, zfec)
release the GIL, so two worker threads encode about twice as fast as one.
Copies are kept to what the libraries force: the chunk is sealed by libsodium
straight into the buffer that holds its ``k`` data packets (pynacl's cffi module,
``_encode_in_place``), so a data packet is a read-only view of it and no sealed byte
is copied; zfec reads the views in place.  Decoding gathers the packets once into a
pooled scratch buffer and opens them there, in place (``_decode_in_scratch``): the
plaintext is the one buffer a decoded chunk gets.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Final

import attrs
import zfec
import zstandard
from blake3 import blake3
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_ABYTES,
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
)
from nacl.exceptions import CryptoError

try:  # pynacl's cffi module: lets a chunk be sealed into a buffer of ours (_encode_in_place)
    from nacl._sodium import ffi as _sodium_ffi
    from nacl._sodium import lib as _sodium_lib
except ImportError:  # pragma: no cover - a pynacl built otherwise: the copying path
    _sodium_ffi = _sodium_lib = None

__all__ = [
    "CIPHER_OVERHEAD",
    "DEDUP_SECRET_SIZE",
    "DEFAULT_ERASURE",
    "ID_SIZE",
    "ChunkIntegrityError",
    "EncodedChunk",
    "ErasureParams",
    "chunk_id_for",
    "decode_chunk",
    "encode_chunk",
    "packet_id_for",
    "packet_size_for",
    "rebuild_shares",
    "release_scratch",
]

Buffer = bytes | bytearray | memoryview

ID_SIZE: Final = 32
DEDUP_SECRET_SIZE: Final = 32
NONCE_SIZE: Final[int] = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
TAG_SIZE: Final[int] = crypto_aead_xchacha20poly1305_ietf_ABYTES
CIPHER_OVERHEAD: Final = NONCE_SIZE + TAG_SIZE
"""Bytes that sealing adds to the (possibly compressed) message."""

MAX_SHARES: Final = 256
"""zfec's limit on ``n`` (share numbers are one byte)."""

_KEY_CONTEXT: Final = "gridnode 2026 chunk key v1"
_NONCE_CONTEXT: Final = "gridnode 2026 chunk nonce v1"
_AAD_PREFIX: Final = b"gridnode chunk aad v1\x00"
_NONCE_RAW: Final = b"\x00"
_NONCE_COMPRESSED: Final = b"\x01"

_ERASURE_RE: Final = re.compile(r"\s*([0-9]{1,3})\s*/\s*([0-9]{1,3})\s*", re.ASCII)


class ChunkIntegrityError(Exception):
    """The supplied shares do not rebuild the chunk they claim to be.

    Raised for a share of the wrong size or index, a share whose id does not
    match, too few shares, failed authentication, a bad compressed frame, or a
    plaintext whose id differs from the expected one. The retriever's cue to
    fetch other shares; never a reason to return data.
    """


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not 1 <= value <= MAX_SHARES:
        raise ValueError(f"{name} must be within [1, {MAX_SHARES}], got {value}")


@attrs.frozen
class ErasureParams:
    """``k``-of-``n`` redundancy: any ``k`` of the ``n`` packets rebuild a chunk."""

    k: int
    n: int

    def __attrs_post_init__(self) -> None:
        _check_count("k", self.k)
        _check_count("n", self.n)
        if self.k > self.n:
            raise ValueError(f"erasure parameters need k <= n, got {self.k}/{self.n}")

    @classmethod
    def parse(cls, text: str) -> ErasureParams:
        """Parse the CLI and config form ``"K/N"``, e.g. ``"4/6"``.

        Raises:
            ValueError: naming the offending text.
        """
        match = _ERASURE_RE.fullmatch(text)
        if match is None:
            raise ValueError(f"invalid erasure parameters {text!r}: expected K/N, e.g. 4/6")
        k, n = int(match.group(1)), int(match.group(2))
        try:
            return cls(k, n)
        except ValueError as exc:
            raise ValueError(f"invalid erasure parameters {text!r}: {exc}") from None

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"


DEFAULT_ERASURE: Final = ErasureParams(4, 6)


@attrs.frozen
class EncodedChunk:
    """A chunk ready for placement, with what the catalog must keep to rebuild it.

    ``chunk_id``, ``plain_size``, ``compressed``, ``cipher_size`` and ``params``
    go in the source's records; ``packets[i]`` is zfec share ``i`` (``0..k-1``
    data, ``k..n-1`` redundant) and ``packet_ids[i]`` its BLAKE3-256.
    """

    chunk_id: bytes
    plain_size: int
    compressed: bool
    cipher_size: int
    params: ErasureParams
    #: ``bytes``, or read-only views of one buffer (``_encode_in_place``): whatever
    #: holds a packet keeps the chunk's data packets alive together.
    packets: tuple[Buffer, ...] = attrs.field(repr=False)
    packet_ids: tuple[bytes, ...] = attrs.field(repr=False)

    @property
    def packet_size(self) -> int:
        """Every packet of a chunk has this length (``ceil(cipher_size / k)``)."""
        return packet_size_for(self.cipher_size, self.params.k)


class _ThreadCodecs(threading.local):
    """Per-thread codec objects: zstd contexts are not thread-safe, and
    building a zfec matrix per call would waste time for large ``n``."""

    def __init__(self) -> None:
        self.compressors: dict[int, zstandard.ZstdCompressor] = {}
        self.decompressor = zstandard.ZstdDecompressor()
        self.encoders: dict[tuple[int, int], zfec.Encoder] = {}
        self.decoders: dict[tuple[int, int], zfec.Decoder] = {}

    def compressor(self, level: int) -> zstandard.ZstdCompressor:
        compressor = self.compressors.get(level)
        if compressor is None:
            # No zstd checksum: the AEAD tag and the chunk id already cover it.
            compressor = zstandard.ZstdCompressor(
                level=level, write_checksum=False, write_content_size=True, write_dict_id=False
            )
            self.compressors[level] = compressor
        return compressor

    def encoder(self, params: ErasureParams) -> zfec.Encoder:
        key = (params.k, params.n)
        encoder = self.encoders.get(key)
        if encoder is None:
            encoder = self.encoders[key] = zfec.Encoder(params.k, params.n)
        return encoder

    def decoder(self, params: ErasureParams) -> zfec.Decoder:
        key = (params.k, params.n)
        decoder = self.decoders.get(key)
        if decoder is None:
            decoder = self.decoders[key] = zfec.Decoder(params.k, params.n)
        return decoder


_codecs = _ThreadCodecs()


class _ScratchPool:
    """Buffers that decoding gathers and opens a chunk's sealed bytes in, reused.

    Anonymous mappings (``mmap``), not heap: their pages stay resident while pooled, so
    a chunk is opened in memory the kernel need not fault in and clear again, and they
    leave no holes in the malloc heap when dropped.  At most ``keep`` are kept (one per
    decoding thread: the node's CPU limiter runs one per core); a thread that finds none
    free maps its own.  ``release`` unmaps them once a restore is over."""

    def __init__(self, keep: int = 2) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._free: list[mmap.mmap] = []

    def take(self, size: int) -> mmap.mmap:
        """A buffer of at least ``size`` bytes, for the caller alone until ``give``."""
        with self._lock:
            for index, buffer in enumerate(self._free):
                if len(buffer) >= size:
                    return self._free.pop(index)
        return mmap.mmap(-1, -(-size // _SCRATCH_GRAIN) * _SCRATCH_GRAIN)

    def give(self, buffer: mmap.mmap) -> None:
        """Hand ``buffer`` back once its caller is done with it.

        Raises:
            BufferError: a view of it is still exported (a caller would read bytes the
                next chunk overwrites); the buffer is then neither pooled nor unmapped.
        """
        buffer.resize(len(buffer))  # the export check alone: mmap refuses with views out
        with self._lock:
            self._free.append(buffer)
            self._free.sort(key=len)
            # Full: the smallest goes, so the pool settles on buffers that fit any chunk.
            dropped = self._free.pop(0) if len(self._free) > self._keep else None
        if dropped is not None:
            dropped.close()

    def release(self) -> None:
        """Unmap the pooled buffers (those in use go when they are given back)."""
        with self._lock:
            free, self._free = self._free, []
        for buffer in free:
            buffer.close()


#: Scratch buffers are mapped in steps of 256 KiB: a chunk a little larger than the last
#: one still fits, and a pool of small chunks' buffers stays small.
_SCRATCH_GRAIN: Final = 256 << 10
_scratch_pool = _ScratchPool(keep=max(2, min(16, os.cpu_count() or 2)))


def release_scratch() -> None:
    """Give back the memory decoding keeps between chunks (a restore has ended)."""
    _scratch_pool.release()


_ZERO_PADDING: Final = bytes(MAX_SHARES)


def _check_secret(dedup_secret: bytes) -> None:
    if len(dedup_secret) != DEDUP_SECRET_SIZE:
        raise ValueError(f"dedup secret must be {DEDUP_SECRET_SIZE} bytes, got {len(dedup_secret)}")


def chunk_id_for(plaintext: Buffer, dedup_secret: bytes) -> bytes:
    """The chunk's unique data identifier inside the dedup domain of ``dedup_secret``."""
    _check_secret(dedup_secret)
    return blake3(plaintext, key=dedup_secret).digest()


def packet_id_for(data: Buffer) -> bytes:
    """A packet's id: unkeyed, so any holder can verify the bytes it keeps."""
    return blake3(data).digest()


def packet_size_for(cipher_size: int, k: int) -> int:
    """The length of every packet of a chunk sealed to ``cipher_size`` bytes and split
    into ``k`` data blocks (``ceil(cipher_size / k)``)."""
    return -(-cipher_size // k)


def _chunk_key(dedup_secret: bytes, chunk_id: bytes) -> bytes:
    hasher = blake3(derive_key_context=_KEY_CONTEXT)
    hasher.update(dedup_secret)
    hasher.update(chunk_id)
    return hasher.digest()


def _nonce_key(dedup_secret: bytes, chunk_id: bytes) -> bytes:
    hasher = blake3(derive_key_context=_NONCE_CONTEXT)
    hasher.update(dedup_secret)
    hasher.update(chunk_id)
    return hasher.digest()


def _nonce(dedup_secret: bytes, chunk_id: bytes, message: Buffer, compressed: bool) -> bytes:
    hasher = blake3(key=_nonce_key(dedup_secret, chunk_id))
    if compressed:
        hasher.update(_NONCE_COMPRESSED)
        hasher.update(message)
    else:
        hasher.update(_NONCE_RAW)
    return hasher.digest(NONCE_SIZE)


def _aad(chunk_id: bytes, compressed: bool, plain_size: int) -> bytes:
    return b"".join(
        (_AAD_PREFIX, chunk_id, b"\x01" if compressed else b"\x00", plain_size.to_bytes(8, "big"))
    )


#: Chunks above this size are first probed with a sample: compressing a whole chunk of
#: incompressible data (media, archives, encrypted files: most of a typical backup by
#: bytes) costs about as much CPU as encrypting it, for nothing.
_SAMPLE_BYTES: Final = 64 * 1024
_SAMPLE_MIN_SAVING: Final = 0.03


def _compress(plaintext: Buffer, level: int) -> tuple[Buffer, bool]:
    """zstd frame if it is strictly shorter, else the plaintext itself.

    Deterministic (the sample is the chunk's first bytes), so the same chunk always gets
    the same packets: convergence within the dedup domain is kept.
    """
    if len(plaintext) == 0:
        return plaintext, False
    compressor = _codecs.compressor(level)
    if len(plaintext) > 4 * _SAMPLE_BYTES:
        sample = memoryview(plaintext)[:_SAMPLE_BYTES]
        if len(compressor.compress(sample)) > _SAMPLE_BYTES * (1 - _SAMPLE_MIN_SAVING):
            return plaintext, False
    frame = compressor.compress(plaintext)
    if len(frame) < len(plaintext):
        return frame, True
    return plaintext, False


def _seal(
    message: bytes, *, chunk_id: bytes, dedup_secret: bytes, compressed: bool, plain_size: int
) -> tuple[bytes, bytes]:
    """Return ``(nonce, ciphertext_with_tag)``; their concatenation is the sealed chunk."""
    nonce = _nonce(dedup_secret, chunk_id, message, compressed)
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
        message, _aad(chunk_id, compressed, plain_size), nonce, _chunk_key(dedup_secret, chunk_id)
    )
    return nonce, sealed


def _split_blocks(prefix: bytes, body: bytes, k: int) -> list[bytes]:
    """Cut ``prefix || body || zero padding`` into ``k`` equal blocks, copying each byte once."""
    prefix_len, body_len = len(prefix), len(body)
    total = prefix_len + body_len
    size = packet_size_for(total, k)
    prefix_view, body_view = memoryview(prefix), memoryview(body)
    blocks: list[bytes] = []
    for index in range(k):
        start, stop = index * size, (index + 1) * size
        pieces: list[Buffer] = []
        if start < prefix_len:
            pieces.append(prefix_view[start : min(stop, prefix_len)])
        body_start, body_stop = max(start, prefix_len) - prefix_len, min(stop, total) - prefix_len
        if body_stop > body_start:
            pieces.append(body_view[body_start:body_stop])
        padding = stop - max(start, total)
        if padding > 0:
            pieces.append(bytes(padding))
        blocks.append(b"".join(pieces))
    return blocks


def _erasure_encode(prefix: bytes, body: bytes, params: ErasureParams) -> list[bytes]:
    blocks = _split_blocks(prefix, body, params.k)
    if params.n > params.k:
        redundant: list[bytes] = _codecs.encoder(params).encode(
            blocks, tuple(range(params.k, params.n))
        )
        blocks.extend(redundant)
    return blocks


def encode_chunk(
    plaintext: Buffer,
    *,
    dedup_secret: bytes,
    params: ErasureParams,
    zstd_level: int = 3,
    chunk_id: bytes | None = None,
) -> EncodedChunk:
    """Turn one chunk's plaintext into ``n`` packets (see the module docstring).

    Args:
        plaintext: the chunk; a ``memoryview`` from the chunker is not copied
            unless it is stored raw (pynacl needs ``bytes``).
        dedup_secret: the 32-byte secret of the dedup domain.
        params: ``k``-of-``n`` redundancy.
        zstd_level: 1 to 22; part of the convergence contract, since another
            level gives other packets for the same chunk.
        chunk_id: ``chunk_id_for(plaintext, dedup_secret)`` when the caller has it
            already (a backup computes it to deduplicate before encoding), so the
            plaintext is not hashed a second time.  The caller vouches for it.

    Raises:
        ValueError: a secret of the wrong size or a bad level.
    """
    if isinstance(zstd_level, bool) or not 1 <= zstd_level <= zstandard.MAX_COMPRESSION_LEVEL:
        raise ValueError(
            f"zstd_level must be within [1, {zstandard.MAX_COMPRESSION_LEVEL}], got {zstd_level}"
        )
    if isinstance(plaintext, memoryview) and (plaintext.ndim != 1 or plaintext.itemsize != 1):
        plaintext = plaintext.cast("B")  # so len() counts bytes, not items
    if chunk_id is None:
        chunk_id = chunk_id_for(plaintext, dedup_secret)
    plain_size = len(plaintext)
    message, compressed = _compress(plaintext, zstd_level)
    cipher_size = NONCE_SIZE + len(message) + TAG_SIZE
    packets: list[Buffer]
    if _sodium_lib is not None:
        packets = _encode_in_place(
            message, chunk_id, dedup_secret, compressed, plain_size, cipher_size, params
        )
    else:  # pragma: no cover - pynacl without its cffi module
        sealable = message if isinstance(message, bytes) else bytes(message)
        nonce, sealed = _seal(
            sealable,
            chunk_id=chunk_id,
            dedup_secret=dedup_secret,
            compressed=compressed,
            plain_size=plain_size,
        )
        del sealable
        packets = list(_erasure_encode(nonce, sealed, params))
    del message
    return EncodedChunk(
        chunk_id=chunk_id,
        plain_size=plain_size,
        compressed=compressed,
        cipher_size=cipher_size,
        params=params,
        packets=tuple(packets),
        packet_ids=tuple(packet_id_for(packet) for packet in packets),
    )


def _encode_in_place(
    message: Buffer,
    chunk_id: bytes,
    dedup_secret: bytes,
    compressed: bool,
    plain_size: int,
    cipher_size: int,
    params: ErasureParams,
) -> list[Buffer]:
    """The chunk's packets, sealed straight into the buffer that holds its data packets.

    ``nonce || ciphertext || tag || zero padding`` is written into one zeroed buffer of
    ``k`` blocks (libsodium writes the ciphertext where it belongs), and the data packets
    are read-only views of it; zfec reads them in place.  pynacl's binding took ``bytes``
    only and returned a fresh ``bytes`` copied out of a zeroed cffi buffer, and the
    blocks were then copied out of that: three copies of every sealed byte and three
    chunk-sized buffers per chunk on the encoder threads (issue 11).  The bytes are the
    same as ``_seal`` and ``_erasure_encode``'s (tests/logic/test_packing.py)."""
    assert _sodium_lib is not None and _sodium_ffi is not None
    size = packet_size_for(cipher_size, params.k)
    frame = bytearray(size * params.k)
    nonce = _nonce(dedup_secret, chunk_id, message, compressed)
    frame[:NONCE_SIZE] = nonce
    aad = _aad(chunk_id, compressed, plain_size)
    key = _chunk_key(dedup_secret, chunk_id)
    out = _sodium_ffi.from_buffer("unsigned char[]", frame, require_writable=True)
    source = _sodium_ffi.from_buffer("unsigned char[]", message)
    result = _sodium_lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out + NONCE_SIZE,
        _sodium_ffi.NULL,
        source,
        len(message),
        aad,
        len(aad),
        _sodium_ffi.NULL,
        nonce,
        key,
    )
    del out, source
    if result != 0:  # pragma: no cover - libsodium fails only on a message over 256 GiB
        raise CryptoError("Encryption failed.")
    whole = memoryview(frame).toreadonly()
    packets: list[Buffer] = [whole[i * size : (i + 1) * size] for i in range(params.k)]
    if params.n > params.k:
        packets.extend(_codecs.encoder(params).encode(packets, tuple(range(params.k, params.n))))
    return packets


def _gather(blocks: Sequence[Buffer], block_size: int, start: int, stop: int) -> bytes:
    """Bytes ``[start, stop)`` of the concatenated blocks, copied once."""
    pieces: list[Buffer] = []
    for index in range(start // block_size, len(blocks)):
        block_start = index * block_size
        if block_start >= stop:
            break
        view = memoryview(blocks[index])
        pieces.append(view[max(start - block_start, 0) : min(stop - block_start, block_size)])
    return b"".join(pieces)


def _select_shares(
    shares: Mapping[int, Buffer], params: ErasureParams, chunk_hex: str
) -> tuple[list[int], list[Buffer]]:
    """Pick ``k`` shares, data shares first: with all ``k`` of them zfec has
    nothing to compute."""
    if len(shares) < params.k:
        raise ChunkIntegrityError(
            f"chunk {chunk_hex}: need {params.k} shares to decode {params}, got {len(shares)}"
        )
    chosen = sorted(shares, key=lambda index: (index >= params.k, index))[: params.k]
    return chosen, [shares[index] for index in chosen]


def decode_chunk(
    shares: Mapping[int, Buffer],
    *,
    chunk_id: bytes,
    dedup_secret: bytes,
    params: ErasureParams,
    cipher_size: int,
    compressed: bool,
    plain_size: int,
    packet_ids: Sequence[bytes] | None = None,
) -> bytes:
    """Rebuild and verify a chunk's plaintext from any ``k`` of its shares.

    Args:
        shares: share number -> packet bytes; at least ``k`` of them.
        chunk_id, dedup_secret, params, cipher_size, compressed, plain_size:
            as recorded from :class:`EncodedChunk` at backup time.
        packet_ids: the chunk's ``n`` packet ids; when given, every supplied
            share is checked against its id first, so a bad holder is named.

    Returns:
        The plaintext, whose keyed id has been checked against ``chunk_id``.

    Raises:
        ChunkIntegrityError: bad, foreign or too few shares, or a failed check.
        ValueError: arguments that cannot describe any chunk.
    """
    if len(chunk_id) != ID_SIZE:
        raise ValueError(f"chunk id must be {ID_SIZE} bytes, got {len(chunk_id)}")
    _check_secret(dedup_secret)
    if cipher_size < CIPHER_OVERHEAD:
        raise ValueError(f"cipher_size must be at least {CIPHER_OVERHEAD}, got {cipher_size}")
    if plain_size < 0:
        raise ValueError(f"plain_size must be >= 0, got {plain_size}")
    if packet_ids is not None and len(packet_ids) != params.n:
        raise ValueError(f"expected {params.n} packet ids for {params}, got {len(packet_ids)}")
    chunk_hex = chunk_id.hex()
    block_size = packet_size_for(cipher_size, params.k)
    for index, share in shares.items():
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < params.n:
            raise ChunkIntegrityError(
                f"chunk {chunk_hex}: share index {index!r} is out of range for {params}"
            )
        if len(share) != block_size:
            raise ChunkIntegrityError(
                f"chunk {chunk_hex}: share {index} is {len(share)} bytes, expected {block_size}"
            )
        if packet_ids is not None and packet_id_for(share) != packet_ids[index]:
            raise ChunkIntegrityError(
                f"chunk {chunk_hex}: share {index} does not match its packet id "
                f"{packet_ids[index].hex()}"
            )

    chosen, chosen_blocks = _select_shares(shares, params, chunk_hex)
    if chosen == list(range(params.k)):
        blocks: Sequence[Buffer] = chosen_blocks
    else:
        # zfec reorders the lists it is given in place; hand it fresh ones.
        blocks = _codecs.decoder(params).decode(chosen_blocks, chosen)

    # In place through libsodium's cffi binding; pynacl's copying route without it.
    decode = _decode_in_scratch if _sodium_lib is not None else _decode_copying
    plaintext = decode(
        blocks,
        block_size,
        chunk_id=chunk_id,
        dedup_secret=dedup_secret,
        cipher_size=cipher_size,
        compressed=compressed,
        plain_size=plain_size,
        chunk_hex=chunk_hex,
    )
    if len(plaintext) != plain_size:
        raise ChunkIntegrityError(
            f"chunk {chunk_hex}: rebuilt {len(plaintext)} bytes, expected {plain_size}"
        )
    if chunk_id_for(plaintext, dedup_secret) != chunk_id:
        raise ChunkIntegrityError(f"chunk {chunk_hex}: rebuilt plaintext has another chunk id")
    return plaintext


def _auth_failed(chunk_hex: str) -> ChunkIntegrityError:
    return ChunkIntegrityError(
        f"chunk {chunk_hex}: authentication failed (corrupt or foreign shares, "
        "or wrong dedup secret or metadata)"
    )


def _decode_in_scratch(
    blocks: Sequence[Buffer],
    block_size: int,
    *,
    chunk_id: bytes,
    dedup_secret: bytes,
    cipher_size: int,
    compressed: bool,
    plain_size: int,
    chunk_hex: str,
) -> bytes:
    """The chunk's plaintext, with the sealed bytes gathered into a pooled scratch buffer
    and opened there, in place (libsodium checks the tag over the ciphertext before it
    writes a byte, and writes the message over the ciphertext).

    The plaintext is the only buffer made per chunk.  pynacl's binding made three more:
    the joined ciphertext, a zeroed cffi buffer for the message and a ``bytes`` copy of
    it; they were fresh pages each time, faulted in and cleared by the kernel, about 5%
    of the source's CPU in a restore (issue 11).  Nothing that refers to the scratch
    buffer leaves this function: the pool takes it back only once every view of it is
    released (``_ScratchPool.give``)."""
    assert _sodium_lib is not None and _sodium_ffi is not None
    total = block_size * len(blocks)
    scratch = _scratch_pool.take(total)
    try:
        with memoryview(scratch)[:total] as frame:
            for index, block in enumerate(blocks):
                frame[index * block_size : (index + 1) * block_size] = block
            with frame[cipher_size:] as padding:
                if padding != _ZERO_PADDING[: len(padding)]:
                    raise ChunkIntegrityError(
                        f"chunk {chunk_hex}: non-zero padding after the ciphertext"
                    )
            nonce = bytes(frame[:NONCE_SIZE])
            aad = _aad(chunk_id, compressed, plain_size)
            key = _chunk_key(dedup_secret, chunk_id)
            sealed = _sodium_ffi.from_buffer("unsigned char[]", frame, require_writable=True)
            try:
                at = sealed + NONCE_SIZE
                result = _sodium_lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
                    at, _sodium_ffi.NULL, _sodium_ffi.NULL, at, cipher_size - NONCE_SIZE,
                    aad, len(aad), nonce, key,
                )  # fmt: skip
            finally:
                _sodium_ffi.release(sealed)
            if result != 0:
                raise _auth_failed(chunk_hex)
            with frame[NONCE_SIZE : cipher_size - TAG_SIZE] as message:
                if compressed:
                    return _decompress(message, plain_size, chunk_hex)
                return bytes(message)
    finally:
        _scratch_pool.give(scratch)


def _decode_copying(
    blocks: Sequence[Buffer],
    block_size: int,
    *,
    chunk_id: bytes,
    dedup_secret: bytes,
    cipher_size: int,
    compressed: bool,
    plain_size: int,
    chunk_hex: str,
) -> bytes:  # pragma: no cover - pynacl without its cffi module
    """``_decode_in_scratch`` through pynacl's binding, which copies."""
    padding = _gather(blocks, block_size, cipher_size, block_size * len(blocks))
    if padding.count(0) != len(padding):
        raise ChunkIntegrityError(f"chunk {chunk_hex}: non-zero padding after the ciphertext")
    nonce = _gather(blocks, block_size, 0, NONCE_SIZE)
    sealed = _gather(blocks, block_size, NONCE_SIZE, cipher_size)
    try:
        message = crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed,
            _aad(chunk_id, compressed, plain_size),
            nonce,
            _chunk_key(dedup_secret, chunk_id),
        )
    except CryptoError:
        raise _auth_failed(chunk_hex) from None
    del sealed
    return _decompress(message, plain_size, chunk_hex) if compressed else message


def rebuild_shares(
    shares: Mapping[int, Buffer],
    *,
    params: ErasureParams,
    cipher_size: int,
    packet_ids: Sequence[bytes],
    wanted: Sequence[int],
) -> dict[int, bytes]:
    """Recreate lost packets of a chunk from any ``k`` surviving ones (repair).

    Works on ciphertext blocks only: no key is needed, nothing is decrypted, so repair
    never holds a chunk's plaintext.  zfec is deterministic, so a rebuilt share is
    byte-identical to the lost one and must hash to the packet id recorded at backup;
    that check is what proves the rebuild right (every given share is checked first).

    Raises:
        ChunkIntegrityError: too few or bad shares, or a rebuilt share whose id differs.
        ValueError: a wanted share number outside ``range(n)`` or wrong ``packet_ids``.
    """
    if len(packet_ids) != params.n:
        raise ValueError(f"expected {params.n} packet ids for {params}, got {len(packet_ids)}")
    for index in wanted:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < params.n:
            raise ValueError(f"share {index!r} is out of range for {params}")
    chunk_hex = "(repair)"
    block_size = packet_size_for(cipher_size, params.k)
    for index, share in shares.items():
        if not isinstance(index, int) or not 0 <= index < params.n or len(share) != block_size:
            raise ChunkIntegrityError(f"share {index!r} does not fit a {params} chunk")
        if packet_id_for(share) != packet_ids[index]:
            raise ChunkIntegrityError(f"share {index} does not match its packet id")
    chosen, chosen_blocks = _select_shares(shares, params, chunk_hex)
    if chosen == list(range(params.k)):
        data_blocks = [bytes(b) for b in chosen_blocks]
    else:
        data_blocks = [bytes(b) for b in _codecs.decoder(params).decode(chosen_blocks, chosen)]
    rebuilt: dict[int, bytes] = {}
    redundant = tuple(i for i in wanted if i >= params.k)
    if redundant:
        made = _codecs.encoder(params).encode(data_blocks, redundant)
        rebuilt.update(zip(redundant, (bytes(b) for b in made), strict=True))
    rebuilt.update((i, data_blocks[i]) for i in wanted if i < params.k)
    for index, block in rebuilt.items():
        if packet_id_for(block) != packet_ids[index]:
            raise ChunkIntegrityError(
                f"rebuilt share {index} does not match its packet id {packet_ids[index].hex()}"
            )
    return rebuilt


def _decompress(frame: Buffer, plain_size: int, chunk_hex: str) -> bytes:
    """Decompress with the output bounded by ``plain_size``.

    python-zstandard trusts a frame's declared content size over
    ``max_output_size``, so the declared size is checked first: a frame must
    never make us allocate more than the chunk we expect.
    """
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise ChunkIntegrityError(f"chunk {chunk_hex}: bad zstd frame: {exc}") from None
    if plain_size == 0 or declared not in (plain_size, -1):
        raise ChunkIntegrityError(
            f"chunk {chunk_hex}: zstd frame declares {declared} bytes, expected {plain_size}"
        )
    try:
        return _codecs.decompressor.decompress(frame, max_output_size=plain_size)
    except zstandard.ZstdError as exc:
        raise ChunkIntegrityError(f"chunk {chunk_hex}: zstd decompression failed: {exc}") from None
