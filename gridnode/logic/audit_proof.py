"""Proofs of possession for storage audits: one 1 KiB chunk of a packet and its BLAKE3 path.

A packet's id is the BLAKE3 hash of its bytes (``logic.packing.packet_id_for``), and
BLAKE3 is a Merkle tree over 1 KiB chunks.  So a source that knows a packet's id and
size can check any one chunk of the packet without keeping anything else: the holder
answers a challenge (a packet id and a chunk index the source draws afresh for each
audit) with that chunk and the chaining values of the sibling subtrees on the way to
the root; the source recomputes the root and compares it with the id.  No per-packet
state, nothing a holder can precompute from a small subset, and a forged answer needs
a BLAKE3 collision.

The ``blake3`` package hashes fast but does not expose chaining values, so the tree is
computed here, after the public-domain reference implementation (github.com/BLAKE3-team/
BLAKE3, ``reference_impl/reference_impl.py``).  Verifying touches one chunk and one
parent per level (some 30 compressions), cheap in pure Python.  Proving needs the
chaining value of every other chunk: the full chunks are compressed side by side with
numpy (one vector operation per step for all chunks), so a large packet costs
milliseconds, not seconds.  Pure: no I/O, no clock.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence
from typing import Final

import attrs
import numpy as np
import numpy.typing as npt

__all__ = [
    "CHUNK_LEN",
    "MAX_PATH_LEN",
    "Proof",
    "chunk_count",
    "chunk_span",
    "path_length",
    "prove",
    "root_hash",
    "verify",
]

#: BLAKE3's chunk: the unit a proof reveals.
CHUNK_LEN: Final = 1024
BLOCK_LEN: Final = 64
#: The longest path a proof can carry: 2**40 chunks (1 PiB) is far beyond any packet.
MAX_PATH_LEN: Final = 40

_CHUNK_START: Final = 1 << 0
_CHUNK_END: Final = 1 << 1
_PARENT: Final = 1 << 2
_ROOT: Final = 1 << 3
_MASK: Final = 0xFFFFFFFF
_IV: Final = (
    0x6A09E667,
    0xBB67AE85,
    0x3C6EF372,
    0xA54FF53A,
    0x510E527F,
    0x9B05688C,
    0x1F83D9AB,
    0x5BE0CD19,
)
_PERMUTATION: Final = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
#: One round's quarter-rounds: the state words each mixes, and which message words.
_QUARTERS: Final = (
    (0, 4, 8, 12, 0, 1),
    (1, 5, 9, 13, 2, 3),
    (2, 6, 10, 14, 4, 5),
    (3, 7, 11, 15, 6, 7),
    (0, 5, 10, 15, 8, 9),
    (1, 6, 11, 12, 10, 11),
    (2, 7, 8, 13, 12, 13),
    (3, 4, 9, 14, 14, 15),
)


def _schedule() -> tuple[tuple[int, int, int, int, int, int], ...]:
    """All 56 quarter-rounds of the 7 rounds, the message permutation folded into the
    word indices (round r reads word ``order[i]`` where the reference permutes in place)."""
    steps: list[tuple[int, int, int, int, int, int]] = []
    order = list(range(16))
    for _ in range(7):
        for a, b, c, d, x, y in _QUARTERS:
            steps.append((a, b, c, d, order[x], order[y]))
        order = [order[p] for p in _PERMUTATION]
    return tuple(steps)


_STEPS: Final = _schedule()


@attrs.frozen
class Proof:
    """One chunk of a packet and the sibling chaining values from it up to the root
    (nearest first), each 32 bytes."""

    chunk: bytes
    path: tuple[bytes, ...]


# --- the compression function -----------------------------------------------------------


def _compress(
    cv: Sequence[int], m: Sequence[int], counter: int, block_len: int, flags: int
) -> list[int]:
    """The first 8 output words: all a chaining value or a 32-byte root needs."""
    s = [
        *cv,
        _IV[0],
        _IV[1],
        _IV[2],
        _IV[3],
        counter & _MASK,
        (counter >> 32) & _MASK,
        block_len,
        flags,
    ]
    for a, b, c, d, x, y in _STEPS:
        va = (s[a] + s[b] + m[x]) & _MASK
        vd = s[d] ^ va
        vd = ((vd >> 16) | (vd << 16)) & _MASK
        vc = (s[c] + vd) & _MASK
        vb = s[b] ^ vc
        vb = ((vb >> 12) | (vb << 20)) & _MASK
        va = (va + vb + m[y]) & _MASK
        vd ^= va
        vd = ((vd >> 8) | (vd << 24)) & _MASK
        vc = (vc + vd) & _MASK
        vb ^= vc
        vb = ((vb >> 7) | (vb << 25)) & _MASK
        s[a], s[b], s[c], s[d] = va, vb, vc, vd
    return [s[i] ^ s[i + 8] for i in range(8)]


def _chunk_cv(chunk: bytes | memoryview, counter: int, *, root: bool) -> list[int]:
    """The chaining value of one chunk (at most 1 KiB) numbered ``counter``; with
    ``root``, the root output of a one-chunk input instead."""
    nblocks = max(1, -(-len(chunk) // BLOCK_LEN))
    cv: list[int] = list(_IV)
    for i in range(nblocks):
        block = bytes(chunk[i * BLOCK_LEN : (i + 1) * BLOCK_LEN])
        flags = _CHUNK_START if i == 0 else 0
        if i == nblocks - 1:
            flags |= _CHUNK_END | (_ROOT if root else 0)
        words = struct.unpack("<16I", block.ljust(BLOCK_LEN, b"\0"))
        cv = _compress(cv, words, counter, len(block), flags)
    return cv


def _parent_cv(left: Sequence[int], right: Sequence[int], *, root: bool) -> list[int]:
    return _compress(_IV, [*left, *right], 0, BLOCK_LEN, _PARENT | (_ROOT if root else 0))


def _cv_bytes(cv: Sequence[int]) -> bytes:
    return struct.pack("<8I", *cv)


def _cv_words(raw: bytes) -> list[int]:
    return list(struct.unpack("<8I", raw))


_Lanes = list[npt.NDArray[np.uint32]]
#: Rotation amounts as uint32, so numpy keeps every lane unsigned 32-bit.
_U7, _U8, _U12, _U16 = np.uint32(7), np.uint32(8), np.uint32(12), np.uint32(16)
_U20, _U24, _U25 = np.uint32(20), np.uint32(24), np.uint32(25)


def _compress_many(
    cv: _Lanes,
    m: _Lanes,
    low: npt.NDArray[np.uint32],
    high: npt.NDArray[np.uint32],
    block_len: int,
    flags: int,
) -> _Lanes:
    """``_compress`` on many inputs at once: each argument word is a vector over lanes."""
    count = len(low)
    s: _Lanes = [
        *cv,
        *(np.full(count, w, dtype=np.uint32) for w in _IV[:4]),
        low,
        high,
        np.full(count, block_len, dtype=np.uint32),
        np.full(count, flags, dtype=np.uint32),
    ]
    with np.errstate(over="ignore"):
        for a, b, c, d, x, y in _STEPS:
            va = s[a] + s[b] + m[x]
            vd = s[d] ^ va
            vd = (vd >> _U16) | (vd << _U16)
            vc = s[c] + vd
            vb = s[b] ^ vc
            vb = (vb >> _U12) | (vb << _U20)
            va = va + vb + m[y]
            vd = vd ^ va
            vd = (vd >> _U8) | (vd << _U24)
            vc = vc + vd
            vb = vb ^ vc
            vb = (vb >> _U7) | (vb << _U25)
            s[a], s[b], s[c], s[d] = va, vb, vc, vd
    return [s[j] ^ s[j + 8] for j in range(8)]


def _full_chunk_cvs(data: bytes | memoryview, count: int) -> npt.NDArray[np.uint32]:
    """Chaining values (``count`` x 8 words) of the first ``count`` full chunks, all
    compressed side by side."""
    if count == 0:
        return np.zeros((0, 8), dtype=np.uint32)
    words = np.frombuffer(data, dtype="<u4", count=count * CHUNK_LEN // 4)
    blocks = words.reshape(count, CHUNK_LEN // BLOCK_LEN, 16).astype(np.uint32)
    counters = np.arange(count, dtype=np.uint64)
    low = (counters & np.uint64(_MASK)).astype(np.uint32)
    high = (counters >> np.uint64(32)).astype(np.uint32)
    cv: _Lanes = [np.full(count, w, dtype=np.uint32) for w in _IV]
    last = CHUNK_LEN // BLOCK_LEN - 1
    for i in range(last + 1):
        flags = (_CHUNK_START if i == 0 else 0) | (_CHUNK_END if i == last else 0)
        m = [np.ascontiguousarray(blocks[:, i, j]) for j in range(16)]
        cv = _compress_many(cv, m, low, high, BLOCK_LEN, flags)
    return np.stack(cv, axis=1)


def _parents_many(level: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """The next level of complete subtrees: each adjacent pair of ``level`` merged (an
    odd last one is dropped: it is not the root of a complete subtree)."""
    pairs = len(level) // 2
    left, right = level[0 : 2 * pairs : 2], level[1 : 2 * pairs : 2]
    m = [np.ascontiguousarray(left[:, j]) for j in range(8)]
    m += [np.ascontiguousarray(right[:, j]) for j in range(8)]
    iv: _Lanes = [np.full(pairs, w, dtype=np.uint32) for w in _IV]
    zero = np.zeros(pairs, dtype=np.uint32)
    return np.stack(_compress_many(iv, m, zero, zero, BLOCK_LEN, _PARENT), axis=1)


# --- the tree -----------------------------------------------------------------------------


def chunk_count(size: int) -> int:
    """Chunks of a packet of ``size`` bytes (an empty packet is one empty chunk)."""
    return max(1, -(-size // CHUNK_LEN))


def chunk_span(size: int, index: int) -> tuple[int, int]:
    """Byte range of chunk ``index`` of a packet of ``size`` bytes."""
    start = index * CHUNK_LEN
    return start, min(size, start + CHUNK_LEN)


def _left_chunks(chunks: int) -> int:
    """Chunks in the left subtree of a node over ``chunks`` (> 1) chunks: the largest
    power of two that leaves at least one chunk on the right."""
    return 1 << ((chunks - 1).bit_length() - 1)


def _descent(chunks: int, index: int) -> list[tuple[bool, int, int]]:
    """From the root down to chunk ``index``: (went left, sibling's first chunk, sibling's
    chunk count) at each parent."""
    steps: list[tuple[bool, int, int]] = []
    start, count = 0, chunks
    while count > 1:
        left = _left_chunks(count)
        if index < start + left:
            steps.append((True, start + left, count - left))
            count = left
        else:
            steps.append((False, start, left))
            start, count = start + left, count - left
    return steps


def path_length(size: int, index: int) -> int:
    """The number of sibling chaining values in a proof of chunk ``index``."""
    return len(_descent(chunk_count(size), index))


def _levels(data: bytes | memoryview) -> list[npt.NDArray[np.uint32]]:
    """Chaining values of every complete subtree, by height: level ``h`` holds the
    subtrees over chunks ``j * 2**h .. (j+1) * 2**h`` (the last chunk may be short)."""
    size = len(data)
    full = size // CHUNK_LEN
    level = _full_chunk_cvs(data, full)
    if full < chunk_count(size):
        start, stop = chunk_span(size, full)
        last = _chunk_cv(memoryview(data)[start:stop], full, root=False)
        level = np.concatenate([level, np.array([last], dtype=np.uint32)])
    levels = [level]
    while len(levels[-1]) > 1:
        levels.append(_parents_many(levels[-1]))
    return levels


def _subtree_cv(levels: list[npt.NDArray[np.uint32]], start: int, count: int) -> list[int]:
    """The (non-root) chaining value of the subtree over chunks ``start .. start+count``."""
    if count & (count - 1) == 0:  # complete, and aligned: every left subtree is
        height = count.bit_length() - 1
        return [int(w) for w in levels[height][start >> height]]
    left = _left_chunks(count)
    return _parent_cv(
        _subtree_cv(levels, start, left),
        _subtree_cv(levels, start + left, count - left),
        root=False,
    )


def root_hash(data: bytes) -> bytes:
    """BLAKE3 of ``data`` computed through this module's tree (for known-answer tests)."""
    chunks = chunk_count(len(data))
    if chunks == 1:
        return _cv_bytes(_chunk_cv(data, 0, root=True))
    levels = _levels(data)
    left = _left_chunks(chunks)
    return _cv_bytes(
        _parent_cv(
            _subtree_cv(levels, 0, left), _subtree_cv(levels, left, chunks - left), root=True
        )
    )


def prove(packet: bytes | memoryview, index: int) -> Proof:
    """The proof that ``packet`` holds chunk ``index`` under its BLAKE3 root."""
    size = len(packet)
    chunks = chunk_count(size)
    if not 0 <= index < chunks:
        raise ValueError(f"chunk {index} out of range: the packet has {chunks}")
    start, stop = chunk_span(size, index)
    chunk = bytes(memoryview(packet)[start:stop])
    if chunks == 1:
        return Proof(chunk=chunk, path=())
    levels = _levels(packet)
    siblings = [_cv_bytes(_subtree_cv(levels, s, n)) for _, s, n in _descent(chunks, index)]
    return Proof(chunk=chunk, path=tuple(reversed(siblings)))


def verify(packet_id: bytes, size: int, index: int, proof: Proof) -> bool:
    """Whether ``proof`` shows chunk ``index`` of the ``size``-byte packet ``packet_id``."""
    if size < 0 or len(packet_id) != 32:
        return False
    chunks = chunk_count(size)
    if not 0 <= index < chunks:
        return False
    start, stop = chunk_span(size, index)
    if len(proof.chunk) != stop - start:
        return False
    steps = _descent(chunks, index)
    if len(proof.path) != len(steps) or any(len(p) != 32 for p in proof.path):
        return False
    if not steps:
        root = _chunk_cv(proof.chunk, index, root=True)
        return hmac.compare_digest(_cv_bytes(root), packet_id)
    cv = _chunk_cv(proof.chunk, index, root=False)
    for level, ((went_left, _, _), sibling) in enumerate(
        zip(reversed(steps), proof.path, strict=True)
    ):
        other = _cv_words(sibling)
        is_root = level == len(steps) - 1
        cv = (
            _parent_cv(cv, other, root=is_root)
            if went_left
            else _parent_cv(other, cv, root=is_root)
        )
    return hmac.compare_digest(_cv_bytes(cv), packet_id)
