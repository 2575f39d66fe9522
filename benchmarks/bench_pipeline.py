"""Throughput of the backup data path, stage by stage, against the raw libraries.

Every figure is printed beside a baseline measured in the same run on the same
bytes, so the ratio shows what our code costs on top of the C library it
wraps (or, for the 2-thread rows, how well the GIL is released):

- chunking: ``iter_buffer_chunks`` vs a bare ``pyfastcdc`` ``cut_buf`` loop;
  ``iter_file_chunks`` (copies each chunk out of the reader's window) vs a
  bare ``cut_stream`` loop on the same page-cached file;
- hashing: ``chunk_id_for`` / ``packet_id_for`` vs bare ``blake3`` calls;
- compression: our keep-only-if-smaller step vs a bare ``ZstdCompressor``;
- encryption: our key/nonce derivation plus AEAD vs the bare pynacl call
  with a fixed key and nonce;
- erasure: our split-and-pad plus zfec vs zfec on pre-split blocks;
- ``encode_chunk`` / ``decode_chunk`` on one worker thread vs the same stages
  as bare library calls on one worker thread, and on two threads vs our own
  one-thread figure;
- a calibration row: GIL-free SHA-256 on two threads vs one, i.e. what the
  machine gave two threads during the run (other processes compete for it).

Each figure is the best of 2 (quick) or 3 runs, the compared jobs interleaved.
Two data sets: incompressible (``os.urandom``) and English-like text
(Zipf-distributed pseudo-words with punctuation, about 4x with zstd-3).
MB means 10**6 bytes. Run
``python -m benchmarks.bench_pipeline [--quick] [--json] [--tune-malloc]``.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import attrs
import numpy as np
import zfec
import zstandard
from blake3 import blake3
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from pyfastcdc import FastCDC

from gridnode.logic import packing
from gridnode.logic.chunking import ChunkingParams, iter_buffer_chunks, iter_file_chunks
from gridnode.logic.packing import (
    EncodedChunk,
    ErasureParams,
    chunk_id_for,
    decode_chunk,
    encode_chunk,
    packet_id_for,
)

MiB = 1024 * 1024
SECRET = bytes(range(32))
PARAMS = ErasureParams(4, 6)
ZSTD_LEVEL = 3
FULL_SIZE = 256 * MiB
QUICK_SIZE = 64 * MiB

T = TypeVar("T")


# -- data -----------------------------------------------------------------------

_SYLLABLE_TEXT = """
    the of and to in is it that was he for on are as with his they be at one have this
    from or had by word but what some we can out other were all there when up use your
    how said an each she which do their time if will way about many then them write
    would like so these her long make thing see him two has look more day could go come
    ta ri on en al er ing ly tion ment ous ness ble pro con dis pre sta tri ver
"""
_SEPARATORS = (b" ", b" ", b" ", b" ", b" ", b" ", b" ", b", ", b". ", b".\n")


def english_like_text(size: int, seed: int = 0) -> bytes:
    """Deterministic text with English-like statistics (about 3-4x with zstd-3).

    Zipf-distributed pseudo-words with punctuation, gathered with numpy in
    small blocks: a Python loop over words would dominate the run time.
    """
    rng = np.random.default_rng(seed)
    syllables = _SYLLABLE_TEXT.split()
    words: list[bytes] = []
    for _ in range(6000):
        picks = rng.integers(0, len(syllables), int(rng.integers(1, 4)))
        stem = "".join(syllables[int(i)] for i in picks)
        words.append(stem.encode() + _SEPARATORS[int(rng.integers(0, len(_SEPARATORS)))])
    vocabulary = np.frombuffer(b"".join(words), dtype=np.uint8)
    lengths = np.array([len(word) for word in words], dtype=np.int32)
    word_starts = (np.cumsum(lengths) - lengths).astype(np.int32)
    cdf = np.cumsum(1.0 / np.arange(1, len(words) + 1) ** 1.05)
    cdf /= cdf[-1]

    out = bytearray()
    block_words = 1 << 18
    # Each block yields at least block_words bytes, so this bound is never hit.
    for _ in range(size // block_words + 1):
        if len(out) >= size:
            break
        picks = np.minimum(np.searchsorted(cdf, rng.random(block_words)), len(words) - 1)
        pick_lengths = lengths[picks]
        out_starts = np.cumsum(pick_lengths, dtype=np.int32) - pick_lengths
        source = np.repeat(word_starts[picks] - out_starts, pick_lengths)
        source += np.arange(len(source), dtype=np.int32)
        out += vocabulary[source].tobytes()
    return bytes(out[:size])


# -- timing helpers -------------------------------------------------------------

Job = Callable[[], object]


@attrs.define
class _Timer:
    """Best of ``repeats`` runs, with the compared jobs interleaved.

    The machine may be shared: the fastest run is the one least disturbed by
    other work, and interleaving gives the jobs of one comparison the same
    chances when the load drifts.
    """

    repeats: int

    def best(self, nbytes: int, jobs: dict[str, Job]) -> dict[str, float]:
        """MB/s of each job over ``nbytes``."""
        seconds = dict.fromkeys(jobs, float("inf"))
        for _ in range(self.repeats):
            for name, job in jobs.items():
                started = time.perf_counter()
                job()
                seconds[name] = min(seconds[name], time.perf_counter() - started)
        return {name: nbytes / elapsed / 1e6 for name, elapsed in seconds.items()}

    def pair(self, nbytes: int, ours: Job, baseline: Job) -> tuple[float, float]:
        rates = self.best(nbytes, {"ours": ours, "baseline": baseline})
        return rates["ours"], rates["baseline"]


def _each(fn: Callable[[T], object], items: Sequence[T]) -> Job:
    """``fn`` over ``items`` on this thread, each result dropped at once (so
    neither side of a comparison pays for keeping outputs alive)."""

    def job() -> None:
        for item in items:
            fn(item)

    return job


def _pool(workers: int, fn: Callable[[T], object], items: Sequence[T]) -> Job:
    """``fn`` over ``items`` on a pool of ``workers`` threads, results dropped."""

    def job() -> None:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(fn, items):
                pass

    return job


def _consume(iterable: Iterable[object]) -> None:
    for _ in iterable:
        pass


def _row(ours: float, baseline: float, baseline_name: str) -> dict[str, Any]:
    return {
        "ours_mb_s": round(ours, 1),
        "baseline": baseline_name,
        "baseline_mb_s": round(baseline, 1),
        "ratio": round(ours / baseline, 3),
    }


def tune_malloc() -> bool:
    """Keep glibc from returning large buffers to the kernel after each chunk.

    By default every multi-MiB ``bytes`` is a fresh ``mmap`` (or heap top that
    gets trimmed), so each chunk pays page faults for every buffer, and the
    faults serialise threads on the address-space lock. Raising the mmap and
    trim thresholds keeps the few chunk-sized buffers in the heap. A
    process-wide setting, so it belongs to the node's entry point; here it is
    only an option, to show the effect. Returns False where it is unavailable.
    """
    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok_mmap = mallopt(m_mmap_threshold, 32 * MiB)
    ok_trim = mallopt(m_trim_threshold, 256 * MiB)
    return bool(ok_mmap and ok_trim)


# -- raw-library pipeline (the baseline for encode/decode) ----------------------


class _RawPipeline:
    """The same stages as bare library calls: fixed key and nonce, no checks."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self.decompressor = zstandard.ZstdDecompressor()
        self.encoder = zfec.Encoder(PARAMS.k, PARAMS.n)
        self.decoder = zfec.Decoder(PARAMS.k, PARAMS.n)
        self.key = bytes(32)
        self.nonce = bytes(24)
        self.redundant = tuple(range(PARAMS.k, PARAMS.n))

    def encode(self, chunk: memoryview) -> tuple[list[bytes], int, bool]:
        blake3(chunk, key=SECRET).digest()
        frame = self.compressor.compress(chunk)
        compressed = len(frame) < len(chunk)
        message = frame if compressed else bytes(chunk)
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(message, b"aad", self.nonce, self.key)
        padded = sealed + bytes(-len(sealed) % PARAMS.k)
        size = len(padded) // PARAMS.k
        blocks = [padded[i * size : (i + 1) * size] for i in range(PARAMS.k)]
        packets: list[bytes] = blocks + self.encoder.encode(blocks, self.redundant)
        for packet in packets:
            blake3(packet).digest()
        return packets, len(sealed), compressed

    def decode(self, encoded: tuple[list[bytes], int, bool], indices: Sequence[int]) -> bytes:
        packets, sealed_size, compressed = encoded
        blocks = [packets[i] for i in indices]
        if list(indices) != list(range(PARAMS.k)):
            blocks = self.decoder.decode(blocks, list(indices))
        sealed = b"".join(blocks)[:sealed_size]
        message = crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, b"aad", self.nonce, self.key)
        plain = self.decompressor.decompress(message) if compressed else message
        blake3(plain, key=SECRET).digest()
        return plain


# -- the benchmark --------------------------------------------------------------


def _decode_ours(encoded: EncodedChunk, indices: Sequence[int]) -> bytes:
    return decode_chunk(
        {i: encoded.packets[i] for i in indices},
        chunk_id=encoded.chunk_id,
        dedup_secret=SECRET,
        params=encoded.params,
        cipher_size=encoded.cipher_size,
        compressed=encoded.compressed,
        plain_size=encoded.plain_size,
    )


Stages = dict[str, dict[str, Any]]


def _bench_chunking(timer: _Timer, data: bytes, workdir: Path, stages: Stages) -> None:
    params = ChunkingParams()
    total = len(data)

    def raw_chunker() -> FastCDC:
        return FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size)

    stages["chunking (buffer)"] = _row(
        *timer.pair(
            total,
            lambda: _consume(iter_buffer_chunks(data, params)),
            lambda: _consume(raw_chunker().cut_buf(data)),
        ),
        "pyfastcdc cut_buf",
    )
    path = workdir / "data.bin"
    path.write_bytes(data)

    def raw_cut_stream() -> None:
        with open(path, "rb", buffering=0) as stream:
            _consume(raw_chunker().cut_stream(stream))

    try:
        _consume(iter_file_chunks(path, params))  # warm the page cache
        stages["chunking (file, page cache)"] = _row(
            *timer.pair(total, lambda: _consume(iter_file_chunks(path, params)), raw_cut_stream),
            "pyfastcdc cut_stream",
        )
    finally:
        path.unlink()


def _bench_stages(timer: _Timer, chunks: list[memoryview], stages: Stages) -> None:
    """Each encoding stage on its own, fed with the previous stage's output."""
    total = sum(len(c) for c in chunks)
    stages["chunk id (keyed BLAKE3)"] = _row(
        *timer.pair(
            total,
            _each(lambda c: chunk_id_for(c, SECRET), chunks),
            _each(lambda c: blake3(c, key=SECRET).digest(), chunks),
        ),
        "blake3 keyed",
    )

    raw_compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    stages[f"compression (zstd-{ZSTD_LEVEL}, keep if smaller)"] = _row(
        *timer.pair(
            total,
            _each(lambda c: packing._compress(c, ZSTD_LEVEL), chunks),
            _each(raw_compressor.compress, chunks),
        ),
        "zstandard compress",
    )

    sealing_inputs = []
    for chunk in chunks:
        message, compressed = packing._compress(chunk, ZSTD_LEVEL)
        sealing_inputs.append((bytes(message), compressed, chunk_id_for(chunk, SECRET), len(chunk)))
    message_bytes = sum(len(m) for m, _, _, _ in sealing_inputs)
    key, nonce = bytes(32), bytes(24)

    def seal(item: tuple[bytes, bool, bytes, int]) -> tuple[bytes, bytes]:
        message, compressed, chunk_id, plain_size = item
        return packing._seal(
            message,
            chunk_id=chunk_id,
            dedup_secret=SECRET,
            compressed=compressed,
            plain_size=plain_size,
        )

    stages["encryption (XChaCha20-Poly1305)"] = _row(
        *timer.pair(
            message_bytes,
            _each(seal, sealing_inputs),
            _each(
                lambda item: crypto_aead_xchacha20poly1305_ietf_encrypt(
                    item[0], b"aad", nonce, key
                ),
                sealing_inputs,
            ),
        ),
        "pynacl aead encrypt",
    )

    sealed = [seal(item) for item in sealing_inputs]
    del sealing_inputs
    sealed_bytes = sum(len(n) + len(s) for n, s in sealed)
    pre_split = [packing._split_blocks(n, s, PARAMS.k) for n, s in sealed]
    raw_encoder = zfec.Encoder(PARAMS.k, PARAMS.n)
    redundant = tuple(range(PARAMS.k, PARAMS.n))
    stages[f"erasure (zfec {PARAMS}, split + encode)"] = _row(
        *timer.pair(
            sealed_bytes,
            _each(lambda item: packing._erasure_encode(*item, PARAMS), sealed),
            _each(lambda blocks: raw_encoder.encode(blocks, redundant), pre_split),
        ),
        "zfec encode (pre-split)",
    )
    del pre_split

    packets = [p for n, s in sealed for p in packing._erasure_encode(n, s, PARAMS)]
    del sealed
    packet_bytes = sum(len(p) for p in packets)
    stages["packet ids (BLAKE3)"] = _row(
        *timer.pair(
            packet_bytes,
            _each(packet_id_for, packets),
            _each(lambda p: blake3(p).digest(), packets),
        ),
        "blake3",
    )


def _bench_pipeline(timer: _Timer, chunks: list[memoryview], stages: Stages) -> list[EncodedChunk]:
    total = sum(len(c) for c in chunks)
    raw = _RawPipeline()

    def ours_encode(chunk: memoryview) -> EncodedChunk:
        return encode_chunk(chunk, dedup_secret=SECRET, params=PARAMS, zstd_level=ZSTD_LEVEL)

    rates = timer.best(
        total,
        {
            "raw": _pool(1, raw.encode, chunks),
            "1": _pool(1, ours_encode, chunks),
            "2": _pool(2, ours_encode, chunks),
        },
    )
    stages["encode_chunk, 1 thread"] = _row(rates["1"], rates["raw"], "bare libraries, 1 thread")
    stages["encode_chunk, 2 threads"] = _row(rates["2"], rates["1"], "encode_chunk, 1 thread")

    raw_encoded = [raw.encode(c) for c in chunks]
    encoded = [ours_encode(c) for c in chunks]
    data_shares = tuple(range(PARAMS.k))
    rebuilt = tuple(range(PARAMS.n - PARAMS.k, PARAMS.n))  # two data + two redundant shares
    for label, indices in (("data shares", data_shares), ("2 lost, rebuilt", rebuilt)):

        def ours_decode(chunk: EncodedChunk, indices: tuple[int, ...] = indices) -> bytes:
            return _decode_ours(chunk, indices)

        def raw_decode(
            chunk: tuple[list[bytes], int, bool], indices: tuple[int, ...] = indices
        ) -> bytes:
            return raw.decode(chunk, indices)

        rates = timer.best(
            total,
            {
                "raw": _pool(1, raw_decode, raw_encoded),
                "1": _pool(1, ours_decode, encoded),
                "2": _pool(2, ours_decode, encoded),
            },
        )
        stages[f"decode_chunk ({label}), 1 thread"] = _row(
            rates["1"], rates["raw"], "bare libraries, 1 thread"
        )
        stages[f"decode_chunk ({label}), 2 threads"] = _row(
            rates["2"], rates["1"], "decode_chunk, 1 thread"
        )
    if _decode_ours(encoded[0], rebuilt) != bytes(chunks[0]):
        raise AssertionError("decode_chunk did not round-trip")
    return encoded


def _bench_machine(timer: _Timer, chunks: list[memoryview], stages: Stages) -> None:
    """What two threads get from this machine right now, for reading the
    2-thread rows: hashlib's SHA-256 releases the GIL and allocates nothing."""
    total = sum(len(c) for c in chunks)

    def sha256(chunk: memoryview) -> bytes:
        return hashlib.sha256(chunk).digest()

    stages["machine: SHA-256, 2 threads (calibration)"] = _row(
        *timer.pair(total, _pool(2, sha256, chunks), _pool(1, sha256, chunks)), "1 thread"
    )


def _bench_dataset(timer: _Timer, data: bytes, workdir: Path) -> dict[str, Any]:
    stages: Stages = {}
    _bench_chunking(timer, data, workdir, stages)
    chunks = list(iter_buffer_chunks(data))
    _bench_stages(timer, chunks, stages)
    encoded = _bench_pipeline(timer, chunks, stages)
    _bench_machine(timer, chunks, stages)
    total = len(data)
    return {
        "bytes": total,
        "chunks": len(chunks),
        "mean_chunk_bytes": total // max(len(chunks), 1),
        "compressed_chunks": sum(1 for e in encoded if e.compressed),
        "cipher_to_plain": round(sum(e.cipher_size for e in encoded) / total, 3),
        "stages": stages,
    }


def run(quick: bool = False, *, malloc_tuned: bool = False) -> dict[str, Any]:
    """Measure every stage on both data sets; return the figures as a dict.

    Args:
        quick: 64 MiB per data set and best of 2 (else 256 MiB, best of 3).
        malloc_tuned: only recorded in the results; :func:`tune_malloc` must
            have been called by the caller (it changes the whole process).
    """
    size = QUICK_SIZE if quick else FULL_SIZE
    timer = _Timer(repeats=2 if quick else 3)
    results: dict[str, Any] = {
        "quick": quick,
        "size_bytes": size,
        "repeats": timer.repeats,
        "malloc_tuned": malloc_tuned,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "python": platform.python_version(),
        "erasure": str(PARAMS),
        "zstd_level": ZSTD_LEVEL,
        "datasets": {},
    }
    generators: dict[str, Callable[[], bytes]] = {
        "incompressible": lambda: os.urandom(size),
        "text": lambda: english_like_text(size),
    }
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as workdir:
        for name, generate in generators.items():
            results["datasets"][name] = _bench_dataset(timer, generate(), Path(workdir))
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"bench_pipeline: {results['size_bytes'] // MiB} MiB per data set, best of "
        f"{results['repeats']}, {results['cpu_count']} CPUs (load {results['load_average']:.2f} "
        f"at start), Python {results['python']}, zfec {results['erasure']}, "
        f"zstd-{results['zstd_level']}, malloc tuned: {results['malloc_tuned']}; "
        "MB = 10^6 bytes",
    ]
    header = f"{'stage':<44} {'ours MB/s':>10} {'baseline MB/s':>14} {'ratio':>7}  baseline"
    for name, dataset in results["datasets"].items():
        lines += [
            "",
            f"[{name}] {dataset['chunks']} chunks, mean {dataset['mean_chunk_bytes'] / MiB:.2f} "
            f"MiB, {dataset['compressed_chunks']} compressed, "
            f"sealed/plain {dataset['cipher_to_plain']}",
            header,
            "-" * len(header),
        ]
        for stage, row in dataset["stages"].items():
            lines.append(
                f"{stage:<44} {row['ours_mb_s']:>10.1f} {row['baseline_mb_s']:>14.1f} "
                f"{row['ratio']:>7.2f}  {row['baseline']}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Throughput of the backup data path.")
    parser.add_argument("--quick", action="store_true", help="64 MiB per data set (< 30 s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--tune-malloc",
        action="store_true",
        help="raise glibc's mmap/trim thresholds first (see tune_malloc)",
    )
    args = parser.parse_args(argv)
    tuned = tune_malloc() if args.tune_malloc else False
    started = time.perf_counter()
    results = run(quick=args.quick, malloc_tuned=tuned)
    results["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results))
        print(f"\n(total {results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
