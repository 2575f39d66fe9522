"""Small filesystem helpers: atomic replace with fsync, and reading a small file whole.

A node is trusted with people's only copy of their data, so no file it owns may ever be
seen half-written: write a temporary file in the same directory, fsync it, rename it
over the target, fsync the directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Final

__all__ = ["atomic_write", "fsync_dir", "read_small_regular"]

#: As ``gridnode.logic.chunking.open_regular``: a name swapped for a symlink is not
#: followed, one swapped for a FIFO is not waited for.
_READ_FLAGS: Final = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def read_small_regular(path: bytes, expected: int, limit: int) -> bytes:
    """A regular file's bytes, or ``limit`` + 1 of them when it holds more than ``limit``
    (so the caller sees it grew past what it reads whole).

    The guards of ``open_regular`` (no symlink followed, no FIFO or device waited for or
    read) in as few system calls as a backup of many small files can afford: open,
    fstat, read, close.  No file object (it adds an fstat, an ioctl and two
    allocations), and ``O_NONBLOCK`` stays set (it changes nothing for a regular file;
    should a read still say it would block, the descriptor is made blocking and read
    again).  ``expected`` is the size the walk saw: a first read returning exactly that
    is the whole file, without the read that would confirm the end.
    """
    fd = os.open(path, _READ_FLAGS)
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
