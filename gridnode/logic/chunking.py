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

import errno
import os
import stat
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
    "iter_file_pieces",
    "open_regular",
    "read_small_regular",
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


#: Compared against with ``startswith`` (a memcmp); chunks are at most 16 MiB.
_ZEROS: Final = bytes(_MAX_RANGE[1])


class _Region:
    """A readable window ``[start, start + length)`` of an open file, for ``cut_stream``."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        self._fd = fd
        self._pos = start
        self._left = length

    def readinto(self, buffer: memoryview | bytearray) -> int:
        want = min(len(buffer), self._left)
        if want <= 0:
            return 0
        view = memoryview(buffer)[:want]
        got = os.preadv(self._fd, [view], self._pos)
        self._pos += got
        self._left -= got
        return got


def _data_regions(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, length) of the parts of a file that hold data; the gaps are holes.

    Uses ``SEEK_DATA``/``SEEK_HOLE``; where the file system or the platform cannot say,
    the whole file is one region (and runs of zeros are still found by content).
    """
    seek_data = getattr(os, "SEEK_DATA", None)
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        yield 0, size
        return
    position = 0
    while position < size:
        try:
            start = os.lseek(fd, position, seek_data)
        except OSError:  # ENXIO: only a hole is left (or the call is not supported)
            if position == 0 and not _is_sparse(fd, size):
                yield 0, size
            return
        end = min(os.lseek(fd, start, seek_hole), size)
        if end <= start:
            return
        yield start, end - start
        position = end


def _is_sparse(fd: int, size: int) -> bool:
    return os.fstat(fd).st_blocks * 512 < size


#: Opening a name the walk saw as a regular file: one swapped for a symlink meanwhile is
#: not followed, one swapped for a FIFO is not waited for.
_REGULAR_FLAGS: Final = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def open_regular(path: Path | bytes) -> int:
    """Open a file for reading only if it is (still) a regular file; returns the fd.

    Between the walk and the read, a name can be swapped for a symlink (which would read
    something outside the tree) or a FIFO (whose ``open`` blocks forever and would hang
    the backup): neither is followed or waited for.
    """
    fd = os.open(path, _REGULAR_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "no longer a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small_regular(path: bytes, expected: int, limit: int) -> bytes:
    """A regular file's bytes, or ``limit`` + 1 of them when it holds more than ``limit``
    (so the caller sees it grew past what it reads whole).

    ``open_regular``'s guards (no symlink followed, no FIFO or device waited for or
    read) in as few system calls as a backup of many small files can afford: open,
    fstat, read, close.  No file object (it adds an fstat, an ioctl and two
    allocations), and ``O_NONBLOCK`` stays set (it changes nothing for a regular file;
    should a read still say it would block, the descriptor is made blocking and read
    again).  ``expected`` is the size the walk saw: a first read returning exactly that
    is the whole file, without the read that would confirm the end.
    """
    fd = os.open(path, _REGULAR_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "no longer a regular file")
        parts: list[bytes] = []
        total = 0
        while total <= limit:
            try:
                more = os.read(fd, limit + 1 - total)
            except BlockingIOError:
                os.set_blocking(fd, True)
                continue
            if not more:
                break
            if not parts and len(more) == expected:
                return more
            parts.append(more)
            total += len(more)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


def iter_file_pieces(
    path: Path | bytes, params: ChunkingParams = DEFAULT_PARAMS
) -> Iterator[bytes | int]:
    """A file's content as content-defined chunks (``bytes``) and holes (``int``: a length
    of zero bytes), in file order, up to the size it has when opened.

    Holes of a sparse file are never read, and a chunk that is all zero bytes is given as
    a hole too, so zeros cost nothing to store and restore as holes.  Adjacent holes are
    merged.  Chunk boundaries restart at each data region, which keeps them a function of
    the file's content and layout alone.
    """
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        hole = 0
        position = 0
        for start, length in _data_regions(fd, size):
            hole += start - position
            chunker = params.make_chunker()
            for chunk in chunker.cut_stream(_Region(fd, start, length)):
                data = bytes(chunk.data)
                if _ZEROS.startswith(data):  # a memcmp, no copy: all zero bytes
                    hole += len(data)
                    continue
                if hole:
                    yield hole
                    hole = 0
                yield data
            position = start + length
        hole += max(size - position, 0)
        if hole:
            yield hole
    finally:
        os.close(fd)


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
