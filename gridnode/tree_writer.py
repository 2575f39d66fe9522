"""Writing a restored tree to disk: every kind of entry, with what it carried.

The assembler (an actor) decides *what* to write and in which order; this module does the
blocking file-system work, one call per worker-thread hop.  What a restore gives back:

- bytes, through a temporary file and a rename, so a file appears under its name only
  once it is complete; holes (``HOLE`` extents) are skipped with a seek, so a sparse file
  comes back sparse;
- hard links: the first name of a link group is written, later names are linked to it
  (a link group is only rebuilt among the entries being restored; a name whose first
  name is not among them gets its own copy of the bytes, which it carries);
- directories, symlinks, FIFOs and devices (devices need root; sockets are noted, never
  made: a socket belongs to the process that listens on it);
- owners: as root, by name where the name exists here, else by number
  (``numeric_owner`` forces numbers); as anyone else, files belong to the restoring user;
- extended attributes (so POSIX ACLs and SELinux labels): ``user.*`` always, the rest
  when the system lets this process; what cannot be set is noted, never fatal;
- modes, with one rule: setuid and setgid bits are kept only when the file ends up
  owned by the recorded user (and group), so a restore never hands out privileges;
- nanosecond mtimes, directories last and deepest first.

Safety: every path is checked before anything is written: absolute paths, ``..``, empty
components, and parents that resolve outside the destination (say, through a symlink
already there) are refused; directories are finished through a file descriptor opened
with ``O_NOFOLLOW``, so a symlink swapped in cannot redirect a chmod.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import grp
import itertools
import os
import pwd
import secrets
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Final

from .errors import GridError
from .names import escape
from .scanner import ScanError, safe_join
from .storage.records import EntryRecord

__all__ = ["Piece", "RestoreFailed", "TreeWriter"]

#: A piece of a file being written: bytes, or an int, the length of a hole.
Piece = memoryview | bytes | int

_SPECIAL_FORMAT: Final = {
    "fifo": stat.S_IFIFO,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
}
#: Whole blocks of zeros this large inside restored data become holes.
SPARSE_BLOCK: Final = 64 * 1024
_ZEROS: Final = bytes(SPARSE_BLOCK)
#: How a restored file's temporary name is opened: new, never through a link.
_TEMP_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class RestoreFailed(GridError):
    pass


class TreeWriter:
    """Blocking helpers; every method runs in a worker thread."""

    def __init__(self, dest: Path, *, numeric_owner: bool = False) -> None:
        self.dest = dest
        dest.mkdir(parents=True, exist_ok=True)
        self._real_dest = os.path.realpath(dest)
        self._checked: set[str] = set()
        #: Parent directories known to exist: one mkdir per directory, not per file.
        self._made: set[str] = set()
        #: Parent (as recorded) -> its checked, existing path here: a file in a directory
        #: already seen needs only its own name checked.
        self._parents: dict[bytes, str] = {}
        #: Owner names looked up once each (``getpwnam`` reads the user database per call).
        self._uids: dict[str, int | None] = {}
        self._gids: dict[str, int | None] = {}
        self.numeric_owner = numeric_owner
        self.as_root = os.geteuid() == 0
        self.uid = os.geteuid()
        self.gid = os.getegid()
        #: What was not restored as recorded (an xattr, a device as a normal user, ...).
        self.notes: list[str] = []
        #: Temporary names: a random prefix per restore (no other user can guess them),
        #: then a counter; drawing random bytes per file was 1.5% of a tree restore.
        self._temp_prefix = f".gridnode-{secrets.token_hex(6)}-"
        self._temp_numbers = itertools.count()

    def _temp_name(self) -> str:
        # next() on a count is atomic under the GIL: writer threads never share a number.
        return f"{self._temp_prefix}{next(self._temp_numbers)}.tmp"

    # --- paths ---------------------------------------------------------------------------

    def target(self, rel: bytes) -> Path:
        path = safe_join(self.dest, rel)
        parent = str(path.parent)
        if parent not in self._checked:
            real = os.path.realpath(parent)
            if real != self._real_dest and not real.startswith(self._real_dest + os.sep):
                raise ScanError(
                    f"refusing {escape(rel)!r}: its directory resolves outside {self.dest}"
                )
            self._checked.add(parent)
        return path

    def ensure_parent(self, rel: bytes) -> Path:
        path = self.target(rel)
        parent = str(path.parent)
        if parent in self._made:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._made.add(parent)
        return self.target(rel)  # re-check now that the parent exists

    def final_path(self, rel: bytes) -> str:
        """``ensure_parent`` as a string, with the checks of the parent done once per
        directory: the rest of ``rel`` (one name) is checked here."""
        head, _, name = rel.rpartition(b"/")
        parent = self._parents.get(head)
        if parent is None or rel.startswith(b"/") or name in (b"", b".", b"..") or b"\x00" in name:
            path = self.ensure_parent(rel)  # every check, and the error that names it
            self._parents[head] = str(path.parent)
            return str(path)
        return os.path.join(parent, os.fsdecode(name))

    def _clear(self, path: Path, rel: bytes) -> None:
        """Make room for a non-directory entry; a directory in the way is never removed."""
        if path.is_symlink() or path.exists():
            if path.is_dir() and not path.is_symlink():
                raise ScanError(f"refusing to replace directory {escape(rel)!r}")
            path.unlink()

    def note(self, rel: bytes, what: str) -> None:
        if len(self.notes) < 1000:
            self.notes.append(f"{escape(rel)}: {what}")

    # --- owners, attributes, modes ---------------------------------------------------------

    def owner_for(self, entry: EntryRecord) -> tuple[int, int] | None:
        """The (uid, gid) to give an entry, or None to leave it to the restoring user."""
        if not self.as_root or entry.uid is None or entry.gid is None:
            return None
        uid, gid = entry.uid, entry.gid
        if not self.numeric_owner:
            if entry.user and (found := _lookup(self._uids, entry.user, _uid_of)) is not None:
                uid = found
            if entry.group and (found := _lookup(self._gids, entry.group, _gid_of)) is not None:
                gid = found
        return uid, gid

    def _apply(self, entry: EntryRecord, target: int | Path, *, symlink: bool = False) -> None:
        """Owner, extended attributes, mode and mtime, in the order that keeps each: a
        chown clears setuid bits and file capabilities, so it comes first."""
        follow = not symlink
        owner = self.owner_for(entry)
        final_uid, final_gid = self.uid, self.gid
        if owner is not None:
            try:
                if isinstance(target, int):
                    os.fchown(target, *owner)
                else:
                    os.chown(target, *owner, follow_symlinks=follow)
                final_uid, final_gid = owner
            except OSError as exc:
                self.note(entry.path, f"owner not set: {exc.strerror}")
        for name, value in entry.xattrs:
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as exc:
                self.note(entry.path, f"extended attribute {escape(name)} not set: {exc.strerror}")
        if not symlink:
            mode = entry.mode & 0o7777
            if mode & stat.S_ISUID and final_uid != entry.uid:
                mode &= ~stat.S_ISUID
                self.note(entry.path, "setuid bit dropped: the recorded owner was not restored")
            # On a directory setgid only passes the group on to new entries: no privilege.
            if mode & stat.S_ISGID and final_gid != entry.gid and entry.kind != "dir":
                mode &= ~stat.S_ISGID
                self.note(entry.path, "setgid bit dropped: the recorded group was not restored")
            os.chmod(target, mode)
        with contextlib.suppress(OSError, NotImplementedError):
            os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=follow)

    # --- directories -------------------------------------------------------------------------

    def make_dirs(self, entries: Sequence[EntryRecord]) -> None:
        for entry in entries:
            path = self.target(entry.path)
            if path.is_symlink():
                raise ScanError(f"refusing {escape(entry.path)!r}: a symlink is in the way")
            path.mkdir(mode=0o700, exist_ok=True)

    def finish_dirs(self, entries: Sequence[EntryRecord]) -> None:
        """Modes and mtimes of directories last, deepest first: writing into a directory
        changes its mtime, and a read-only mode would stop the restore.  Each directory is
        opened with O_NOFOLLOW and changed through its descriptor: never through a link."""
        for entry in sorted(entries, key=lambda e: e.path.count(b"/"), reverse=True):
            path = self.target(entry.path)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError as exc:
                raise ScanError(
                    f"refusing {escape(entry.path)!r}: not a directory any more ({exc.strerror})"
                ) from None
            try:
                self._apply(entry, fd)
            finally:
                os.close(fd)

    # --- files ---------------------------------------------------------------------------------

    def open_temp(self, rel: bytes) -> tuple[Path, Path, BinaryIO]:
        final = self.ensure_parent(rel)
        temp = final.with_name(self._temp_name())
        fh = open(temp, "xb")  # noqa: SIM115 - closed in finish()
        return final, temp, fh

    @staticmethod
    def append(fh: BinaryIO, pieces: Sequence[Piece]) -> None:
        """Write pieces in order; holes, and whole blocks of zeros inside data, are skipped
        with a seek so they take no disk (as ``cp --sparse=always`` does): a chunk that
        straddles data and a run of zeros still restores the zeros as a hole."""
        for piece in pieces:
            if isinstance(piece, int):
                fh.seek(piece, os.SEEK_CUR)  # a hole: never written, never allocated
                continue
            view = memoryview(piece)
            written = 0
            for start in range(0, len(view) - SPARSE_BLOCK + 1, SPARSE_BLOCK):
                if _ZEROS.startswith(view[start : start + SPARSE_BLOCK]):  # memcmp
                    if start > written:
                        fh.write(view[written:start])
                    fh.seek(SPARSE_BLOCK, os.SEEK_CUR)
                    written = start + SPARSE_BLOCK
            if written < len(view):
                fh.write(view[written:])

    def finish(self, entry: EntryRecord, final: Path, temp: Path, fh: BinaryIO) -> None:
        try:
            if fh.tell() == entry.size:
                fh.truncate()  # a file that ends in a hole: the size, still unallocated
            fh.close()
            written = temp.stat().st_size
            if written != entry.size:
                raise RestoreFailed(
                    f"{escape(entry.path)}: assembled {written} bytes, expected {entry.size}"
                )
            self._apply(entry, temp)
            self._clear(final, entry.path)
            os.replace(temp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                fh.close()
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise

    def write_small(self, batch: Sequence[tuple[EntryRecord, list[Piece]]]) -> int:
        """Whole files, each through a temporary name: open, write, attributes through
        the descriptor, close, rename.  A small file costs its creation in the kernel
        and little else: no buffered file object, no stat or truncate of a file whose
        size is known, a parent made once, owners looked up once."""
        written = 0
        for entry, pieces in batch:
            final = self.final_path(entry.path)
            temp = os.path.join(os.path.dirname(final), self._temp_name())
            fd = os.open(temp, _TEMP_FLAGS, 0o600)
            try:
                try:
                    size, ends_in_hole = _write_pieces(fd, pieces)
                    if ends_in_hole:
                        os.ftruncate(fd, size)  # the size, still unallocated
                    if size != entry.size:
                        raise RestoreFailed(
                            f"{escape(entry.path)}: assembled {size} bytes, expected {entry.size}"
                        )
                    self._apply(entry, fd)
                finally:
                    os.close(fd)
                self._rename(temp, final, entry.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
            written += entry.size
        return written

    @staticmethod
    def _rename(temp: str, final: str, rel: bytes) -> None:
        """Put a finished file under its name; a file or symlink there is replaced (the
        rename does not follow it), a directory is refused as ``_clear`` refuses it."""
        try:
            os.replace(temp, final)
        except IsADirectoryError:
            raise ScanError(f"refusing to replace directory {escape(rel)!r}") from None

    def make_links(self, entries: Sequence[EntryRecord]) -> int:
        """Later names of hard-link groups, linked to the first name's restored file
        (the caller makes sure it was restored: it is where its path puts it).

        Where the file system refuses a link, the name gets a copy of the bytes instead:
        the data is the same, only the sharing is lost (and noted)."""
        copied = 0
        for entry in entries:
            assert entry.hardlink is not None
            first = self.target(entry.hardlink)
            path = self.ensure_parent(entry.path)
            self._clear(path, entry.path)
            try:
                os.link(first, path)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EMLINK, errno.EXDEV, errno.ENOTSUP):
                    raise
                self.note(entry.path, f"restored as a copy, not a hard link: {exc.strerror}")
                final, temp, fh = self.open_temp(entry.path)
                with open(first, "rb") as src:
                    while block := src.read(1 << 20):
                        fh.write(block)
                self.finish(entry, final, temp, fh)
                copied += entry.size
        return copied

    # --- symlinks and special files ----------------------------------------------------------

    def make_symlinks(self, entries: Sequence[EntryRecord]) -> None:
        for entry in entries:
            path = self.ensure_parent(entry.path)
            self._clear(path, entry.path)
            os.symlink(entry.link_target or b"", path)
            self._apply(entry, path, symlink=True)

    def make_specials(self, entries: Sequence[EntryRecord]) -> int:
        """FIFOs and devices; returns how many were made.  Sockets are noted."""
        made = 0
        for entry in entries:
            if entry.kind == "socket":
                self.note(entry.path, "a socket is not recreated (it belongs to its server)")
                continue
            fmt = _SPECIAL_FORMAT.get(entry.kind)
            if fmt is None:
                self.note(entry.path, f"unknown kind {entry.kind!r} not restored")
                continue
            path = self.ensure_parent(entry.path)
            self._clear(path, entry.path)
            try:
                if entry.kind == "fifo":
                    os.mkfifo(path, 0o600)
                else:
                    os.mknod(path, 0o600 | fmt, entry.rdev)
            except PermissionError as exc:
                self.note(
                    entry.path,
                    f"{entry.kind} {os.major(entry.rdev)},{os.minor(entry.rdev)} not made: "
                    f"{exc.strerror} (devices need root)",
                )
                continue
            self._apply(entry, path)
            made += 1
        return made

    def sync(self) -> None:
        """Flush the destination's file system (``syncfs``), not every file system of the
        machine: a busy neighbour's dirty pages are not this restore's to wait for."""
        if _syncfs is None:
            os.sync()
            return
        fd = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if _syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)


def _write_pieces(fd: int, pieces: Sequence[Piece]) -> tuple[int, bool]:
    """Write pieces at the descriptor's position as ``TreeWriter.append`` does (holes and
    whole blocks of zeros become seeks); returns the end offset and whether the file ends
    in a seek (then its size must be set with a truncate)."""
    end = 0
    seeked = False
    for piece in pieces:
        if isinstance(piece, int):
            if piece:
                os.lseek(fd, piece, os.SEEK_CUR)
                end += piece
                seeked = True
            continue
        view = memoryview(piece)
        written = 0
        for start in range(0, len(view) - SPARSE_BLOCK + 1, SPARSE_BLOCK):
            if _ZEROS.startswith(view[start : start + SPARSE_BLOCK]):  # memcmp
                if start > written:
                    _write_all(fd, view[written:start])
                os.lseek(fd, SPARSE_BLOCK, os.SEEK_CUR)
                written = start + SPARSE_BLOCK
                seeked = True
        if written < len(view):
            _write_all(fd, view[written:])
            seeked = False
        end += len(view)
    return end, seeked


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _lookup(cache: dict[str, int | None], name: str, find: Callable[[str], int]) -> int | None:
    """``find(name)``, or None where the name does not exist here; each name once."""
    if name not in cache:
        try:
            cache[name] = find(name)
        except KeyError:
            cache[name] = None
    return cache[name]


def _uid_of(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid_of(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def _find_syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs(2)`` (Linux), which the standard library does not wrap."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function: Callable[[int], int] = libc.syncfs
    except (OSError, AttributeError):
        return None
    return function


_syncfs: Final = _find_syncfs()
