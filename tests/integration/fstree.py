"""A tree with every case a file system can throw at a backup, and a full description of
a tree to compare a restore with, property by property.

Building it needs root (devices, other owners, ``trusted.*`` attributes).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import socket
import stat
import struct
from pathlib import Path
from typing import Any

#: A numeric owner that has no name on this machine, and a named one (Debian's daemon).
NO_NAME_UID, NO_NAME_GID = 1234, 5678
NAMED_USER = "daemon"

GiB = 1 << 30
MiB = 1 << 20
SPARSE_DATA = ((0, MiB), (300 * MiB, MiB), (GiB - MiB, MiB))  # 3 MiB of data in 1 GiB
BAD = b"bad-\xff-name"  # not UTF-8


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL in the kernel's xattr encoding (version 2, then tag/perm/id)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


_ANY = 0xFFFFFFFF
ACCESS_ACL = acl((1, 6, _ANY), (2, 4, 1000), (4, 4, _ANY), (0x10, 4, _ANY), (0x20, 4, _ANY))
DEFAULT_ACL = acl((1, 7, _ANY), (4, 5, _ANY), (0x20, 5, _ANY))


def _write(path: bytes, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def make_fidelity_tree(root: Path, *, unreadable: bool = True) -> Path:
    tree = root / "tree"
    tree.mkdir(parents=True)
    t = os.fsencode(tree)
    # Names: not UTF-8, a newline, a backslash, deep.
    os.mkdir(t + b"/" + BAD)
    _write(t + b"/" + BAD + b"/inner-\xfe.txt", b"inside a name that is not UTF-8\n")
    _write(t + b"/new\nline.txt", b"newline in the name\n")
    _write(t + b"/back\\slash \\x41.txt", b"a backslash and a fake escape\n")
    deep = t + b"/" + b"/".join(b"d%02d" % i for i in range(30))
    os.makedirs(deep)
    _write(deep + b"/bottom.txt", b"deep\n")
    os.mkdir(t + b"/empty-dir")
    _write(t + b"/empty.txt", b"")
    os.symlink(b"new\nline.txt", t + b"/relative-link")
    os.symlink(b"/nonexistent/dangling", t + b"/dangling-link")
    os.symlink(BAD + b"/inner-\xfe.txt", t + b"/link-into-bad")

    # Hard links: a small group packed with other small files, across directories, and a
    # large group read in chunks.
    os.mkdir(t + b"/links")
    os.mkdir(t + b"/links/other")
    _write(t + b"/links/a.txt", b"one inode, three names\n" * 10)
    os.link(t + b"/links/a.txt", t + b"/links/b.txt")
    os.link(t + b"/links/a.txt", t + b"/links/other/c.txt")
    _write(t + b"/links/big1.bin", os.urandom(3 * MiB))
    os.link(t + b"/links/big1.bin", t + b"/links/big2.bin")

    # Extended attributes and ACLs.
    os.mkdir(t + b"/attrs")
    _write(t + b"/attrs/inherited.txt", b"made before the default ACL was set\n")
    f = t + b"/attrs/tagged.txt"
    _write(f, b"tagged\n")
    os.setxattr(f, "user.comment", "précis \xff".encode("utf-8", "surrogateescape"))
    os.setxattr(f, "user.binary", bytes(range(256)))
    os.setxattr(f, "system.posix_acl_access", ACCESS_ACL)
    os.setxattr(f, "security.gridnode-test", b"label")
    os.setxattr(f, "trusted.gridnode-test", b"root only")
    os.setxattr(t + b"/attrs", "user.dir-note", b"on a directory")
    os.setxattr(t + b"/attrs", "system.posix_acl_default", DEFAULT_ACL)

    # Special files.
    os.mkdir(t + b"/dev")
    os.mkfifo(t + b"/dev/fifo", 0o640)
    os.mknod(t + b"/dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(t + b"/dev/loop9", 0o660 | stat.S_IFBLK, os.makedev(7, 9))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fsdecode(t + b"/dev/socket"))

    # Owners and privileges.
    os.mkdir(t + b"/owners")
    _write(t + b"/owners/numeric.txt", b"owned by a number without a name\n")
    os.chown(t + b"/owners/numeric.txt", NO_NAME_UID, NO_NAME_GID)
    _write(t + b"/owners/named.txt", b"owned by daemon\n")
    daemon = pwd.getpwnam(NAMED_USER)
    os.chown(t + b"/owners/named.txt", daemon.pw_uid, daemon.pw_gid)
    _write(t + b"/owners/setuid", b"#!/bin/sh\nid\n")
    os.chown(t + b"/owners/setuid", NO_NAME_UID, NO_NAME_GID)
    os.chmod(t + b"/owners/setuid", 0o4755)
    _write(t + b"/owners/setgid", b"#!/bin/sh\nid\n")
    os.chown(t + b"/owners/setgid", daemon.pw_uid, daemon.pw_gid)
    os.chmod(t + b"/owners/setgid", 0o2755)
    os.mkdir(t + b"/owners/shared-dir")
    os.chown(t + b"/owners/shared-dir", NO_NAME_UID, NO_NAME_GID)
    os.chmod(t + b"/owners/shared-dir", 0o2775)
    os.lchown(t + b"/relative-link", NO_NAME_UID, NO_NAME_GID)

    # Sparse: 1 GiB with 3 MiB of data; and 8 MiB of written zeros between data.
    with open(t + b"/sparse.img", "wb") as fh:
        fh.truncate(GiB)
        for offset, length in SPARSE_DATA:
            fh.seek(offset)
            fh.write(os.urandom(length))
    _write(t + b"/zeros.img", os.urandom(MiB) + bytes(8 * MiB) + os.urandom(MiB))

    if unreadable:
        _write(t + b"/unreadable.txt", b"nobody may read this\n")
        os.chown(t + b"/unreadable.txt", NO_NAME_UID, NO_NAME_GID)
        os.chmod(t + b"/unreadable.txt", 0)

    # Nanosecond mtimes on everything, links included.
    stamp = 1_600_000_000_123_456_789
    for i, path in enumerate(sorted(_walk(t))):
        os.utime(path, ns=(stamp + i * 1_000_000_007,) * 2, follow_symlinks=False)
    os.utime(t, ns=(stamp, stamp))
    return tree


def _walk(top: bytes) -> list[bytes]:
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        out += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return out


def xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {os.fsencode(n): os.getxattr(path, n, follow_symlinks=False) for n in names}


def describe(root: Path) -> dict[bytes, dict[str, Any]]:
    """Every property a restore must reproduce, per path (bytes, relative to ``root``)."""
    r = os.fsencode(root)
    out: dict[bytes, dict[str, Any]] = {}
    for path in [r, *_walk(r)]:
        st = os.lstat(path)
        rel = os.path.relpath(path, r)
        d: dict[str, Any] = {
            "type": stat.S_IFMT(st.st_mode),
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns,
            "xattrs": xattrs(path),
        }
        if stat.S_ISLNK(st.st_mode):
            d["target"] = os.readlink(path)
            del d["mode"]  # a symlink's mode means nothing on Linux
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as fh:
                d["bytes"] = fh.read() if st.st_size < 16 * MiB else _digest(fh)
            d["size"] = st.st_size
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            d["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        out[rel] = d
    return out


def _digest(fh: Any) -> str:
    h = hashlib.sha256()
    while block := fh.read(MiB):
        h.update(block)
    return h.hexdigest()


def link_groups(root: Path) -> set[frozenset[bytes]]:
    """The names of each inode with more than one name (relative paths)."""
    r = os.fsencode(root)
    groups: dict[int, set[bytes]] = {}
    for path in _walk(r):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            groups.setdefault(st.st_ino, set()).add(os.path.relpath(path, r))
    return {frozenset(g) for g in groups.values()}


def diff_trees(
    expected: dict[bytes, dict[str, Any]], actual: dict[bytes, dict[str, Any]]
) -> list[str]:
    """Every difference, as readable lines (empty when the trees match)."""
    problems = [f"missing {p!r}" for p in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected {p!r}" for p in sorted(actual.keys() - expected.keys())]
    for p in sorted(expected.keys() & actual.keys()):
        for key in expected[p].keys() | actual[p].keys():
            a, b = expected[p].get(key), actual[p].get(key)
            if a != b:
                problems.append(f"{p!r} {key}: {str(a)[:80]} != {str(b)[:80]}")
    return problems
