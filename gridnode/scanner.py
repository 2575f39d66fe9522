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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final, NamedTuple

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


class ScanEntry(NamedTuple):
    """One entry as the walk found it.  A named tuple, not an attrs class: the walk makes
    one per entry of the tree (twice per backup), and a tuple is built about four times
    faster than a frozen attrs instance."""

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
    fmt = st.st_mode & 0o170000  # stat.S_IFMT, without the call
    kind = _KIND_OF_FORMAT.get(fmt)
    if kind is None:  # door, whiteout, ...: nothing a POSIX restore could make
        raise ScanError("an entry of a kind this system cannot back up")
    if fmt == stat.S_IFREG:  # the common case first, with the fewest branches
        return ScanEntry(
            rel, source, kind, st.st_mode & 0o7777, st.st_mtime_ns, st.st_size, st.st_ino,
            st.st_dev, st.st_nlink, st.st_uid, st.st_gid,
        )  # fmt: skip
    return ScanEntry(
        rel,
        source,
        kind,
        st.st_mode & 0o7777,
        st.st_mtime_ns,
        0,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_rdev if kind in ("chardev", "blockdev") else 0,
        os.readlink(source) if kind == "symlink" else None,
    )


#: What an item of the walk's stack asks: visit an entry (lstat and yield it), the same
#: when the listing said it is a directory (its descent is scheduled already), or descend
#: into a directory visited before (list it).
_VISIT, _VISIT_DIR, _DESCEND = 0, 1, 2

#: (source path, snapshot path, its root's device (None below no root yet), what to do)
_Item = tuple[bytes, bytes, int | None, int]


def _items(children: Iterable[tuple[bytes, bytes, bytes, bool]], root: int | None) -> list[_Item]:
    """Stack items for ``children`` ((name, source, snapshot path, is a directory)), in
    reverse walk order: each entry at its name, a directory's descent at its name with
    ``/`` after it."""
    keyed: list[tuple[bytes, _Item]] = []
    for name, source, rel, is_dir in children:
        if is_dir:
            keyed.append((name, (source, rel, root, _VISIT_DIR)))
            keyed.append((name + b"/", (source, rel, root, _DESCEND)))
        else:
            keyed.append((name, (source, rel, root, _VISIT)))
    keyed.sort(key=_key, reverse=True)
    return [item for _, item in keyed]


def _key(pair: tuple[bytes, _Item]) -> bytes:
    return pair[0]


def _is_dir(path: bytes) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def iter_tree(
    roots: Sequence[str],
    excludes: Sequence[str] = (),
    notes: list[str] | None = None,
    *,
    one_file_system: bool = False,
) -> Iterator[ScanEntry]:
    """Yield entries in the byte order of their paths (deterministic, so snapshots diff
    cleanly), which is also the catalog's order: a backup reads its parent snapshot's
    entries beside the walk, a page at a time, instead of holding them all.  ``notes``
    collects what was skipped and why.

    A directory ``a`` sorts before ``a.txt`` but what lies below it (``a/...``) after
    (``.`` is below ``/``), so a directory is visited at its name and entered at its
    name with ``/`` after it.  Whether a name is a directory comes from the listing (no
    ``stat``); should one change kind meanwhile, only that entry is out of order (a
    backup then reads that file again rather than trusting the parent's copy).

    ``one_file_system``: a directory on another file system than its root (a mount
    point: ``/proc`` under ``/``, a USB disk under ``/media``) is recorded, as restic
    and tar do, but not entered."""
    notes = notes if notes is not None else []
    patterns = [os.fsencode(p) for p in excludes]
    # The roots are walked as the children of one directory: each by its own name.
    stack = _items(
        (
            (name, source, name, _is_dir(source))
            for absolute, name in root_names(roots)
            for source in (os.fsencode(absolute),)
        ),
        None,
    )
    # A directory visited and not entered yet: its device and its root's device.
    devices: dict[bytes, tuple[int, int]] = {}
    while stack:
        source, rel, root_device, action = stack.pop()
        if action == _DESCEND:
            found = devices.pop(rel, None)
            if found is None:  # skipped, or not a directory after all
                continue
            device, root_device = found
            if one_file_system and device != root_device:
                notes.append(f"did not enter {escape(rel)}: another file system")
                continue
            # Plain concatenation, not os.path.join: this runs once per entry of the tree.
            prefix = source if source.endswith(b"/") else source + b"/"
            rel_prefix = rel + b"/"
            try:
                with os.scandir(source) as listing:
                    children = [
                        (
                            e.name,
                            prefix + e.name,
                            rel_prefix + e.name,
                            e.is_dir(follow_symlinks=False),
                        )
                        for e in listing
                    ]
            except OSError as exc:
                notes.append(f"could not list {escape(rel)}: {exc.strerror}")
                continue
            if patterns:
                children = [c for c in children if not _excluded(c[2], c[0], patterns)]
            stack += _items(children, root_device)
            continue
        try:
            entry = _entry(rel, source, os.lstat(source))
        except OSError as exc:
            notes.append(f"skipped {escape(rel)}: {exc.strerror}")
            continue
        except ScanError as exc:
            notes.append(f"skipped {escape(rel)}: {exc}")
            continue
        yield entry
        if entry.kind == "dir":
            devices[rel] = (entry.device, entry.device if root_device is None else root_device)
            if action == _VISIT:  # the listing did not say directory: enter it now
                stack.append((source, rel, root_device, _DESCEND))


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
    if not names:  # nearly every entry
        return (), None
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
