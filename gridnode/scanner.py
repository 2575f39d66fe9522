"""Walking the paths a user asked to back up.

What is backed up: every kind of entry a POSIX file system has.  Regular files,
directories and symbolic links (as links: a link is never followed, so nothing outside the
tree is read through it); FIFOs and character and block devices (type, mode and device
numbers: restic and borg recreate them, and a restored ``/dev``-like tree or a container
root needs them); sockets are recorded so the tree is complete, though a socket cannot be
recreated.  With each entry: its owner (numbers and names), its hard-link identity and its
extended attributes (which is where POSIX ACLs and SELinux labels live).

Names are bytes (see :mod:`gridnode.names`): the walk runs on ``bytes`` paths, so a name
that is not UTF-8 is just a name.  Files that vanish or cannot be read between the walk
and the read are reported, not fatal: a backup of a live system must not die because one
temp file went away, and no single entry can fail a whole backup.

Each root is stored under its own base name (``/home/ann/docs`` -> ``docs/...``), so a
restore writes ``DEST/docs/...``; two roots with the same base name are refused rather
than silently merged.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import grp
import os
import pwd
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import attrs

from .names import escape

__all__ = [
    "KINDS",
    "ScanEntry",
    "ScanError",
    "group_name",
    "iter_tree",
    "read_xattrs",
    "root_names",
    "safe_join",
    "user_name",
]

#: Every kind of entry a snapshot can hold.
KINDS: Final = ("file", "dir", "symlink", "fifo", "chardev", "blockdev", "socket")

_KIND_OF_FORMAT: Final = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFSOCK: "socket",
}

#: Extended attributes larger than this (all of them together, per entry) are not kept:
#: Linux caps one value at 64 KiB, and an entry that carries megabytes of attributes is
#: more likely an attack on the catalog than data.
XATTR_BYTES_MAX: Final = 1024 * 1024


class ScanError(ValueError):
    pass


@attrs.frozen
class ScanEntry:
    path: bytes  # snapshot-relative, "/"-separated, starts with the root's name
    source: bytes  # absolute path on this machine
    kind: str  # one of KINDS
    mode: int
    mtime_ns: int
    size: int
    inode: int
    device: int
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    rdev: int = 0  # device number of a character or block device
    link_target: bytes | None = None


def root_names(roots: Sequence[str]) -> list[tuple[str, bytes]]:
    """(absolute root, name in the snapshot) pairs; refuses missing or clashing roots."""
    out: list[tuple[str, bytes]] = []
    seen: dict[bytes, str] = {}
    for root in roots:
        absolute = os.path.abspath(root)
        if not os.path.lexists(absolute):
            raise ScanError(f"no such file or directory: {escape(os.fsencode(root))}")
        name = os.path.basename(os.fsencode(absolute).rstrip(b"/")) or b"root"
        if name in seen:
            raise ScanError(
                f"{escape(os.fsencode(seen[name]))} and {escape(os.fsencode(absolute))} have "
                f"the same name {escape(name)!r}; back them up separately"
            )
        seen[name] = absolute
        out.append((absolute, name))
    return out


def _excluded(rel: bytes, name: bytes, patterns: Sequence[bytes]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(rel, p) for p in patterns)


def _entry(rel: bytes, source: bytes, st: os.stat_result) -> ScanEntry:
    kind = _KIND_OF_FORMAT.get(stat.S_IFMT(st.st_mode))
    if kind is None:  # door, whiteout, ...: nothing a POSIX restore could make
        raise ScanError("an entry of a kind this system cannot back up")
    return ScanEntry(
        rel,
        source,
        kind,
        stat.S_IMODE(st.st_mode),
        st.st_mtime_ns,
        st.st_size if kind == "file" else 0,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_rdev if kind in ("chardev", "blockdev") else 0,
        os.readlink(source) if kind == "symlink" else None,
    )


def iter_tree(
    roots: Sequence[str],
    excludes: Sequence[str] = (),
    notes: list[str] | None = None,
    *,
    one_file_system: bool = False,
) -> Iterator[ScanEntry]:
    """Yield entries depth-first in sorted byte order (deterministic, so snapshots diff
    cleanly).  ``notes`` collects what was skipped and why.

    ``one_file_system``: a directory on another file system than its root (a mount
    point: ``/proc`` under ``/``, a USB disk under ``/media``) is recorded, as restic
    and tar do, but not entered."""
    notes = notes if notes is not None else []
    patterns = [os.fsencode(p) for p in excludes]
    for absolute, name in root_names(roots):
        stack: list[tuple[bytes, bytes]] = [(os.fsencode(absolute), name)]
        root_device: int | None = None
        while stack:
            source, rel = stack.pop()
            try:
                entry = _entry(rel, source, os.lstat(source))
            except OSError as exc:
                notes.append(f"skipped {escape(rel)}: {exc.strerror}")
                continue
            except ScanError as exc:
                notes.append(f"skipped {escape(rel)}: {exc}")
                continue
            yield entry
            if entry.kind != "dir":
                continue
            if root_device is None:
                root_device = entry.device
            elif one_file_system and entry.device != root_device:
                notes.append(f"did not enter {escape(rel)}: another file system")
                continue
            try:
                names = sorted(os.listdir(source))
            except OSError as exc:
                notes.append(f"could not list {escape(rel)}: {exc.strerror}")
                continue
            for child in reversed(names):
                child_rel = rel + b"/" + child
                if patterns and _excluded(child_rel, child, patterns):
                    continue
                stack.append((os.path.join(source, child), child_rel))


def read_xattrs(source: bytes) -> tuple[tuple[tuple[bytes, bytes], ...], str | None]:
    """The extended attributes this process can read, sorted by name, and what went wrong.

    A file system without xattrs is not a problem (nothing to keep); an attribute that
    cannot be read (``trusted.*`` as a normal user, say) is left out and said.
    """
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA):
            return (), None
        return (), f"extended attributes not read: {exc.strerror}"
    out: list[tuple[bytes, bytes]] = []
    total = 0
    problem: str | None = None
    for attr in sorted(names):
        try:
            value = os.getxattr(source, attr, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # removed since it was listed: nothing to keep
                problem = f"extended attribute {attr} not read: {exc.strerror}"
            continue
        total += len(attr) + len(value)
        if total > XATTR_BYTES_MAX:
            problem = f"extended attributes over {XATTR_BYTES_MAX} bytes not kept"
            break
        out.append((os.fsencode(attr), value))
    return tuple(out), problem


@functools.lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@functools.lru_cache(maxsize=4096)
def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def safe_join(dest: Path, rel: bytes) -> Path:
    """Where ``rel`` lands under ``dest``; refuses anything that would escape it.

    Snapshot paths come from our own catalog or a record fetched from the grid; both are
    checked anyway, because a restore that writes outside its destination is a disaster
    whatever the cause.
    """
    if not rel or rel.startswith(b"/") or b"\x00" in rel:
        raise ScanError(f"refusing unsafe path {escape(rel)!r}")
    parts = rel.split(b"/")
    if any(p in (b"", b".", b"..") for p in parts):
        raise ScanError(f"refusing unsafe path {escape(rel)!r}")
    return dest.joinpath(*(os.fsdecode(p) for p in parts))
