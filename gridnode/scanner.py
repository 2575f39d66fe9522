"""Walking the paths a user asked to back up.

What is backed up: regular files, directories and symbolic links (as links: a link is
never followed, so nothing outside the tree is read through it).  Sockets, devices and
FIFOs are skipped with a note, since their "contents" are not data.  Files that vanish
or cannot be read between the walk and the read are reported, not fatal: a backup of a
live system must not die because one temp file went away.

Each root is stored under its own base name (``/home/ann/docs`` -> ``docs/...``), so a
restore writes ``DEST/docs/...``; two roots with the same base name are refused rather
than silently merged.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

__all__ = ["ScanEntry", "ScanError", "iter_tree", "root_names"]


class ScanError(ValueError):
    pass


@attrs.frozen
class ScanEntry:
    path: str  # snapshot-relative, "/"-separated, starts with the root's name
    source: str  # absolute path on this machine
    kind: str  # file | dir | symlink
    mode: int
    mtime_ns: int
    size: int
    inode: int
    device: int
    link_target: str | None = None


def root_names(roots: Sequence[str]) -> list[tuple[str, str]]:
    """(absolute root, name in the snapshot) pairs; refuses missing or clashing roots."""
    out: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for root in roots:
        absolute = os.path.abspath(root)
        if not os.path.lexists(absolute):
            raise ScanError(f"no such file or directory: {root}")
        name = os.path.basename(absolute.rstrip("/")) or "root"
        if name in seen:
            raise ScanError(
                f"{seen[name]} and {absolute} have the same name {name!r}; back them up separately"
            )
        seen[name] = absolute
        out.append((absolute, name))
    return out


def _excluded(rel: str, name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(rel, p) for p in patterns)


def _entry(rel: str, source: str, st: os.stat_result) -> ScanEntry | None:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        kind = "file"
        size = st.st_size
    elif stat.S_ISDIR(mode):
        kind, size = "dir", 0
    elif stat.S_ISLNK(mode):
        return ScanEntry(
            rel,
            source,
            "symlink",
            stat.S_IMODE(mode),
            st.st_mtime_ns,
            0,
            st.st_ino,
            st.st_dev,
            os.readlink(source),
        )
    else:
        return None
    return ScanEntry(
        rel, source, kind, stat.S_IMODE(mode), st.st_mtime_ns, size, st.st_ino, st.st_dev
    )


def iter_tree(
    roots: Sequence[str], excludes: Sequence[str] = (), notes: list[str] | None = None
) -> Iterator[ScanEntry]:
    """Yield entries depth-first in sorted order (deterministic, so snapshots diff cleanly).

    ``notes`` collects what was skipped and why.
    """
    notes = notes if notes is not None else []
    for absolute, name in root_names(roots):
        stack: list[tuple[str, str]] = [(absolute, name)]
        while stack:
            source, rel = stack.pop()
            try:
                st = os.lstat(source)
            except OSError as exc:
                notes.append(f"skipped {rel}: {exc.strerror}")
                continue
            entry = _entry(rel, source, st)
            if entry is None:
                notes.append(f"skipped {rel}: not a regular file, directory or symlink")
                continue
            yield entry
            if entry.kind != "dir":
                continue
            try:
                names = sorted(os.listdir(source))
            except OSError as exc:
                notes.append(f"could not list {rel}: {exc.strerror}")
                continue
            for child in reversed(names):
                child_rel = f"{rel}/{child}"
                if excludes and _excluded(child_rel, child, excludes):
                    continue
                stack.append((os.path.join(source, child), child_rel))


def safe_join(dest: Path, rel: str) -> Path:
    """Where ``rel`` lands under ``dest``; refuses anything that would escape it.

    Snapshot paths come from our own catalog or a record fetched from the grid; both are
    checked anyway, because a restore that writes outside its destination is a disaster
    whatever the cause.
    """
    if not rel or rel.startswith("/") or "\x00" in rel:
        raise ScanError(f"refusing unsafe path {rel!r}")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ScanError(f"refusing unsafe path {rel!r}")
    return dest.joinpath(*parts)
