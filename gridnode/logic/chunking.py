"""Content-defined chunking of file contents (FastCDC).

Chunk boundaries depend on the bytes around them, not on their offset, so an
insertion or deletion in the middle of a file changes only the chunk or two
around the edit; every later chunk keeps its content, its unique data
identifier, and therefore its packets already stored on the grid. That is what
makes an incremental backup of a slightly changed large file upload a small
multiple of the change rather than the whole file.

The cutting itself is pyfastcdc's Cython FastCDC 2020 implementation, which
releases the GIL while it scans a buffer. Note that with cut-point skipping the
observed mean chunk length is a little above ``avg_size`` (about 1.25 MiB for
the defaults on random data), and every chunk except a file's last is between
``min_size`` and ``max_size``.

Everything here is synchronous and keeps no shared state: each call builds its
own FastCDC instance (pyfastcdc's objects are not safe to share between
threads), so callers may run several iterators in worker threads at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final, Literal, cast

import attrs
from pyfastcdc import FastCDC

__all__ = [
    "CHUNK_AVG",
    "CHUNK_MAX",
    "CHUNK_MIN",
    "ChunkingParams",
    "iter_buffer_chunks",
    "iter_file_chunks",
]

KiB: Final = 1024
MiB: Final = 1024 * KiB

CHUNK_MIN: Final = 256 * KiB
CHUNK_AVG: Final = 1 * MiB
#: 2 MiB, not the 4-8 MiB of some tools: pyfastcdc's reader keeps a window of twice the
#: maximum, and every chunk in flight may be that large, so the maximum sets the source's
#: memory (measured: peak RSS of a 256 MiB backup 112 MB with 4 MiB, 92 MB with 2 MiB).
#: With normalized chunking few chunks reach it, so dedup hardly changes.
CHUNK_MAX: Final = 2 * MiB

# pyfastcdc's accepted ranges; checked here so a bad value fails when the
# parameters are built (e.g. from a config file), not deep inside a backup.
_MIN_RANGE: Final = (64, 1 * MiB)
_AVG_RANGE: Final = (256, 4 * MiB)
_MAX_RANGE: Final = (1 * KiB, 16 * MiB)


def _check_range(name: str, value: int, bounds: tuple[int, int]) -> None:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be within [{low}, {high}], got {value}")


@attrs.frozen
class ChunkingParams:
    """Bounds of the content-defined chunker.

    These are part of the dedup contract: two backups only share chunks if
    they were cut with the same parameters (and the same ``normalization``),
    so changing them re-uploads everything once.
    """

    min_size: int = CHUNK_MIN
    avg_size: int = CHUNK_AVG
    max_size: int = CHUNK_MAX
    normalization: int = 1

    def __attrs_post_init__(self) -> None:
        _check_range("min_size", self.min_size, _MIN_RANGE)
        _check_range("avg_size", self.avg_size, _AVG_RANGE)
        _check_range("max_size", self.max_size, _MAX_RANGE)
        _check_range("normalization", self.normalization, (0, 3))
        if not self.min_size <= self.avg_size <= self.max_size:
            raise ValueError(
                "chunk sizes must satisfy min_size <= avg_size <= max_size, got "
                f"{self.min_size} / {self.avg_size} / {self.max_size}"
            )

    def make_chunker(self) -> FastCDC:
        """A fresh FastCDC instance; never share one between threads."""
        return FastCDC(
            self.avg_size,
            min_size=self.min_size,
            max_size=self.max_size,
            normalized_chunking=cast(Literal[0, 1, 2, 3], self.normalization),
        )


DEFAULT_PARAMS: Final = ChunkingParams()


def iter_file_chunks(path: Path, params: ChunkingParams = DEFAULT_PARAMS) -> Iterator[bytes]:
    """Cut a file into content-defined chunks with bounded memory.

    The file is streamed through pyfastcdc's reader, which keeps a single
    window of ``2 * max_size`` bytes and fills it with ``readinto`` straight
    from an unbuffered file, so a 2 GiB file costs the same memory as a 20 MiB
    one: the window plus the chunk being handed out. Each chunk is copied out
    of the window as ``bytes`` because the window is overwritten by the next
    read, and callers hand chunks to other threads.

    The file stays open until the iterator is exhausted or closed; wrap it in
    ``contextlib.closing`` when a caller may stop early.

    Args:
        path: a regular file.
        params: chunker bounds.

    Yields:
        The chunks in file order; their concatenation is the file's content.
        An empty file yields nothing.
    """
    chunker = params.make_chunker()
    with open(path, "rb", buffering=0) as stream:
        for chunk in chunker.cut_stream(stream):
            yield bytes(chunk.data)


def iter_buffer_chunks(
    data: bytes | bytearray | memoryview, params: ChunkingParams = DEFAULT_PARAMS
) -> Iterator[memoryview]:
    """Cut an in-memory buffer into content-defined chunks without copying.

    The chunks are read-only views into ``data``: they stay valid as long as
    the caller keeps ``data`` alive, and see any later mutation of a
    ``bytearray`` source, so pass ``bytes`` when the views outlive the call.
    Boundaries are identical to those of :func:`iter_file_chunks` on the same
    content.

    Yields:
        Views whose concatenation is ``data``; an empty buffer yields nothing.
    """
    view = memoryview(data).toreadonly()
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    chunker = params.make_chunker()
    for chunk in chunker.cut_buf(view):
        yield chunk.data
