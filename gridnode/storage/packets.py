"""The target side's allocated storage: a content-addressed packet directory.

I keep the packets other nodes send this node, within the byte allocation the
node's owner granted. A packet's id is the BLAKE3-256 of its bytes, so I can
check everything I accept and everything I serve, and I learn nothing from an
id: I do not know whose packet it is or which other packets belong with it.

On-disk layout, under the ``root`` I am given::

    root/
      packets/                 committed packets, and nothing else
        ab/                    first two hex digits of the packet id
          cd/                  next two hex digits
            abcd...(64 hex)    the packet's bytes, exactly; no header
      incoming/                temp files being written; emptied at startup
        <random>.tmp
      quarantine/              packets that failed verification when read
        <64 hex>.<random>      kept for inspection, never served or counted

Two levels of 256-way fan-out keep directories small (a 1 TB allocation of
256 KiB packets spreads about 60 files per leaf directory).

Writing a packet: its bytes are hashed and compared with its id, the
allocation is checked and the size reserved, the bytes go to a new file in
``incoming/``, which is fsynced, then renamed into ``packets/`` (atomic on
POSIX), and the target directory is fsynced so the rename survives a power
loss. A target killed at any point leaves either no packet or a complete one;
a half-written temp file sits in ``incoming/``, which I empty when I start, so
it is never served. A write that fails (disk full, quota, I/O error) removes
its temp file and raises :class:`PacketStoreError`.

Accounting: ``used_bytes`` is the sum of the committed packet files' lengths
(file-system block overhead is not counted). I compute it by scanning
``packets/`` when I open, and then keep it exact under a lock, including
across concurrent puts of the same packet, deletes and quarantines. A file
truncated or extended behind my back skews the counter by the difference until
the next open.  The allocation also covers what the node keeps for others
outside ``packets/`` (recovery roots in ``holdings.sqlite``): ``other_bytes``,
given when I open and changed by :meth:`reserve`/:meth:`settle`, so that a
peer cannot fill the disk past the allocation by another door.  Free space is
the allocation minus used, other and *reserved* bytes: bytes still being
written are reserved before the first byte hits the disk, so two writes that
each fit but not together can never both be accepted.

Threading: every method is synchronous, blocking, and safe to call from
several threads at once (the node calls them through ``trio.to_thread``).
File data is written and fsynced outside the lock; renames, unlinks and the
counters change together under it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import attrs
from blake3 import blake3

from ..errors import GridError
from ..fsutil import atomic_write

__all__ = [
    "AllocationFull",
    "OverQuota",
    "PacketDirectory",
    "PacketDirectoryStatistics",
    "PacketIdMismatch",
    "PacketStoreError",
    "StorageFormatError",
]

PACKET_ID_SIZE: Final = 32
_HEX_DIGITS: Final = frozenset("0123456789abcdef")
_WAIT_FOR_OTHER_WRITER_S: Final = 120.0
_MAX_PUT_ATTEMPTS: Final = 3

Buffer = bytes | bytearray | memoryview


class PacketStoreError(Exception):
    """A packet could not be stored; nothing half-written remains."""


class StorageFormatError(PacketStoreError, GridError):
    """The packet store on disk is of a layout this version does not read."""


#: The packet store's layout, in ``ROOT/FORMAT`` (see ``PacketDirectory._check_format``).
FORMAT_NAME: Final = "FORMAT"
FORMAT_TAG: Final = "gridnode-packet-store"
STORAGE_FORMAT: Final = 1


class AllocationFull(PacketStoreError):
    """Storing the packet(s) would exceed this node's allocated storage."""


class OverQuota(PacketStoreError):
    """The source already keeps what its subscription allows here."""


class PacketIdMismatch(PacketStoreError):
    """The bytes offered do not hash to the packet id they were offered under."""


@attrs.frozen
class PacketDirectoryStatistics:
    allocation_bytes: int
    used_bytes: int
    reserved_bytes: int
    free_bytes: int
    packet_count: int
    quarantined_count: int
    #: Allocated bytes held outside ``packets/`` (recovery roots).
    other_bytes: int = 0


def _is_packet_name(name: str) -> bool:
    return len(name) == 2 * PACKET_ID_SIZE and set(name) <= _HEX_DIGITS


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview) -> None:
    remaining = data
    # Each os.write moves at least one byte or raises, so len+1 rounds suffice.
    for _ in range(len(data) + 1):
        if not remaining:
            return
        written = os.write(fd, remaining)
        if written <= 0:
            raise OSError(errno.EIO, "write returned no progress")
        remaining = remaining[written:]
    raise OSError(errno.EIO, "write did not complete")


def _describe_os_error(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "?")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full ({name}: {exc.strerror})"
    return f"{name}: {exc.strerror}"


class PacketDirectory:
    """A quota-bounded, content-addressed directory of packets (see the module docstring)."""

    def __init__(self, root: Path, allocation_bytes: int, *, other_bytes: int = 0) -> None:
        """Open (creating if needed) the packet directory at ``root``.

        ``other_bytes`` is what the node already keeps for others outside
        ``packets/`` (the recovery roots it holds): it counts against the
        allocation like packets do.

        Startup deletes everything left in ``incoming/`` by a previous run and
        scans ``packets/`` for the used bytes, so it takes time proportional
        to the number of stored packets.

        Raises:
            ValueError: a negative allocation or ``other_bytes``.
        """
        if isinstance(allocation_bytes, bool) or allocation_bytes < 0:
            raise ValueError(f"allocation_bytes must be >= 0, got {allocation_bytes!r}")
        if isinstance(other_bytes, bool) or other_bytes < 0:
            raise ValueError(f"other_bytes must be >= 0, got {other_bytes!r}")
        self._root = Path(root)
        self._packets = self._root / "packets"
        self._incoming = self._root / "incoming"
        # The write path works on str paths: a packet costs a handful of path operations,
        # and pathlib's were a tenth of a busy target's interpreter time.
        self._packets_str = os.fspath(self._packets)
        self._incoming_str = os.fspath(self._incoming)
        self._quarantine = self._root / "quarantine"
        for directory in (self._packets, self._incoming, self._quarantine):
            directory.mkdir(parents=True, exist_ok=True)
        self._check_format()
        self._allocation_bytes = allocation_bytes
        self._lock = threading.Lock()
        self._reserved_bytes = 0
        self._other_bytes = other_bytes
        self._in_flight: dict[bytes, threading.Event] = {}
        self._clear_incoming()
        self._used_bytes, self._packet_count = self._scan()
        self._quarantined_count = sum(1 for _ in self._quarantine.iterdir())

    def _check_format(self) -> None:
        """``FORMAT`` names the layout (fan-out, file names, what a file holds), so a
        future version can migrate it, and this one refuses a layout it does not know
        instead of taking another version's files for corrupt packets.  A directory
        from before the file existed has layout 1."""
        path = self._root / FORMAT_NAME
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            atomic_write(path, f"{FORMAT_TAG} {STORAGE_FORMAT}\n".encode("ascii"))
            return
        except (OSError, UnicodeDecodeError) as exc:
            raise StorageFormatError(f"cannot read {path}: {exc}") from None
        tag, _, number = text.partition(" ")
        if tag != FORMAT_TAG or not number.isdigit():
            raise StorageFormatError(f"{path} does not name a gridnode packet store: {text!r}")
        if int(number) > STORAGE_FORMAT:
            raise StorageFormatError(
                f"{self._root} holds packet store format {number}, newer than this gridnode "
                f"reads ({STORAGE_FORMAT}): run the gridnode version that wrote it"
            )

    # -- accounting -------------------------------------------------------

    @property
    def root(self) -> Path:
        return self._root

    @property
    def allocation_bytes(self) -> int:
        return self._allocation_bytes

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used_bytes

    @property
    def free_bytes(self) -> int:
        """Room left: the allocation minus committed, other and in-flight bytes."""
        with self._lock:
            return self._free_locked()

    @property
    def packet_count(self) -> int:
        with self._lock:
            return self._packet_count

    def statistics(self) -> PacketDirectoryStatistics:
        with self._lock:
            return PacketDirectoryStatistics(
                allocation_bytes=self._allocation_bytes,
                used_bytes=self._used_bytes,
                reserved_bytes=self._reserved_bytes,
                free_bytes=self._free_locked(),
                packet_count=self._packet_count,
                quarantined_count=self._quarantined_count,
                other_bytes=self._other_bytes,
            )

    def _free_locked(self) -> int:
        taken = self._used_bytes + self._other_bytes + self._reserved_bytes
        return max(self._allocation_bytes - taken, 0)

    def reserve(self, nbytes: int) -> None:
        """Set aside ``nbytes`` of the allocation for a write outside ``packets/``.

        The caller (the packet store, for a recovery root) reserves before it writes and
        calls :meth:`settle` afterwards whatever happened, so the room is held while the
        write runs and packets being written at the same time see it taken.

        Raises:
            AllocationFull: fewer than ``nbytes`` are free (counting bytes in flight).
            ValueError: a negative size.
        """
        if nbytes < 0:
            raise ValueError(f"cannot reserve a negative size ({nbytes})")
        with self._lock:
            free = self._free_locked()
            if nbytes > free:
                raise AllocationFull(
                    f"allocation full: {nbytes} bytes needed but only {free} of "
                    f"{self._allocation_bytes} are free ({self._used_bytes} in packets, "
                    f"{self._other_bytes} in recovery roots, {self._reserved_bytes} being written)"
                )
            self._reserved_bytes += nbytes

    def settle(self, reserved: int, other_delta: int) -> None:
        """End a :meth:`reserve` of ``reserved`` bytes (0 if none): the write it was for
        changed the bytes kept outside ``packets/`` by ``other_delta`` (0 if it failed,
        negative if it replaced something larger)."""
        with self._lock:
            self._reserved_bytes -= reserved
            self._other_bytes = max(self._other_bytes + other_delta, 0)

    # -- paths --------------------------------------------------------------

    def path_for(self, packet_id: bytes) -> Path:
        """Where the packet lives (or would live); for tests and the harness."""
        return Path(self._path_str(packet_id))

    def _path_str(self, packet_id: bytes) -> str:
        if len(packet_id) != PACKET_ID_SIZE:
            raise ValueError(f"packet id must be {PACKET_ID_SIZE} bytes, got {len(packet_id)}")
        name = packet_id.hex()
        return f"{self._packets_str}/{name[0:2]}/{name[2:4]}/{name}"

    # -- queries ------------------------------------------------------------

    def has(self, packet_id: bytes) -> bool:
        return self.path_for(packet_id).is_file()

    def get(self, packet_id: bytes, *, verify: bool = True) -> bytes | None:
        """The packet's bytes, or ``None`` if I do not hold it intact.

        With ``verify`` (the default), bytes that no longer hash to the id are
        moved to ``quarantine/`` and uncounted, and ``None`` is returned: I
        never serve corrupt data, and the packet's owner repairs it elsewhere.
        """
        path = self.path_for(packet_id)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None
        if verify and blake3(data).digest() != packet_id:
            self._quarantine_file(path, packet_id, len(data))
            return None
        return data

    def iter_ids(self) -> Iterator[bytes]:
        """Ids of the committed packets, in id order; reads the directory lazily."""
        for first in self._sorted_subdirs(self._packets):
            for second in self._sorted_subdirs(first):
                with os.scandir(second) as entries:
                    names = sorted(
                        entry.name
                        for entry in entries
                        # A link is never a packet (as in ``_scan``): listing one would
                        # offer an audit or a sync a file ``get`` then refuses.
                        if _is_packet_name(entry.name)
                        and entry.name.startswith(first.name + second.name)
                        and entry.is_file(follow_symlinks=False)
                    )
                for name in names:
                    yield bytes.fromhex(name)

    # -- mutations ----------------------------------------------------------

    def put(self, packet_id: bytes, data: Buffer, *, verified_digest: bytes | None = None) -> bool:
        """Store one packet durably.

        ``verified_digest`` is the BLAKE3 of ``data`` when the caller already computed it
        (the session checks every detached payload against its sealed digest): when it
        equals ``packet_id`` the bytes are not hashed a second time.

        Returns:
            True if I stored it now, False if I already held it (idempotent;
            a concurrent put of the same packet waits for the first one).

        Raises:
            PacketIdMismatch: the bytes do not hash to ``packet_id``.
            AllocationFull: not enough room left; the message gives the numbers.
            PacketStoreError: the write failed (e.g. disk full); nothing remains.
        """
        return self.put_many([(packet_id, data)], verified=verified_digest == packet_id)[0]

    def put_many(
        self, items: Sequence[tuple[bytes, Buffer]], *, verified: bool = False
    ) -> list[bool]:
        """Store several packets with one round of directory fsyncs.

        All ids are checked and the room for all new packets is reserved before
        anything is written, so a mismatch or a full allocation stores none of
        them. Then every temp file is written and fsynced, all are renamed into
        place, and each touched directory is fsynced once. If a write fails
        part-way, the packets already renamed stay stored (they are complete)
        and the error is raised.

        Returns:
            For each item, as :meth:`put`.
        """
        views: list[memoryview] = []
        for packet_id, data in items:
            view = memoryview(data)
            if view.ndim != 1 or view.format != "B":
                view = view.cast("B")
            if verified and len(packet_id) == PACKET_ID_SIZE:
                pass  # the caller hashed these very bytes already
            else:
                self._verify_id(packet_id, view)
            views.append(view)
        results = [False] * len(views)
        pending = list(range(len(views)))
        for _attempt in range(_MAX_PUT_ATTEMPTS):
            waits = self._store_batch([items[i][0] for i in pending], [views[i] for i in pending])
            still_pending: list[int] = []
            for position, outcome in zip(pending, waits, strict=True):
                if isinstance(outcome, bool):
                    results[position] = outcome
                else:
                    # Another thread was writing this packet; wait for it, then
                    # look again: it may have failed and left the job to us.
                    outcome.wait(_WAIT_FOR_OTHER_WRITER_S)
                    if not self.has(items[position][0]):
                        still_pending.append(position)
            pending = still_pending
            if not pending:
                return results
        raise PacketStoreError(
            f"could not store {len(pending)} packet(s): concurrent writers kept failing"
        )

    def put_each(
        self, items: Sequence[tuple[bytes, Buffer, bytes | None]]
    ) -> list[bool | PacketStoreError]:
        """Store independent packets together (group commit), each with its own outcome.

        ``items`` are (packet id, bytes, verified digest or None).  A packet whose bytes do
        not match its id fails alone; the others share one round of temp-file writes,
        renames and directory fsyncs, which is what makes a busy target cheap: the
        journal commit behind a directory fsync then covers every packet of the batch.
        When the batch does not fit the allocation as a whole, each packet is tried on
        its own so that those that fit are kept.
        """
        results: list[bool | PacketStoreError | None] = [None] * len(items)
        good: list[int] = []
        for position, (packet_id, data, digest) in enumerate(items):
            if digest is None or digest != packet_id:
                view = memoryview(data)
                try:
                    self._verify_id(packet_id, view if view.format == "B" else view.cast("B"))
                except PacketIdMismatch as exc:
                    results[position] = exc
                    continue
            good.append(position)
        if good:
            try:
                stored = self.put_many([(items[i][0], items[i][1]) for i in good], verified=True)
                for position, outcome in zip(good, stored, strict=True):
                    results[position] = outcome
            except AllocationFull:
                for position in good:
                    packet_id, data, _ = items[position]
                    try:
                        results[position] = self.put(packet_id, data, verified_digest=packet_id)
                    except PacketStoreError as exc:
                        results[position] = exc
            except PacketStoreError as exc:
                for position in good:
                    results[position] = exc
        return [r if r is not None else PacketStoreError("not stored") for r in results]

    def delete(self, packet_id: bytes) -> bool:
        """Drop a packet; True if I held it."""
        path = self.path_for(packet_id)
        with self._lock:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                return False
            self._used_bytes -= size
            self._packet_count -= 1
        return True

    # -- internals ----------------------------------------------------------

    @staticmethod
    def _verify_id(packet_id: bytes, view: memoryview) -> None:
        if len(packet_id) != PACKET_ID_SIZE:
            raise PacketIdMismatch(
                f"packet id must be {PACKET_ID_SIZE} bytes, got {len(packet_id)}"
            )
        actual = blake3(view).digest()
        if actual != packet_id:
            raise PacketIdMismatch(
                f"packet bytes hash to {actual.hex()}, not to the offered id {packet_id.hex()}"
            )

    def _store_batch(
        self, packet_ids: list[bytes], views: list[memoryview]
    ) -> list[bool | threading.Event]:
        """Store what is new; per item: True = stored now, False = already
        held, an Event = another thread is writing it."""
        outcomes: list[bool | threading.Event] = [False] * len(packet_ids)
        mine: list[int] = []
        with self._lock:
            seen: set[bytes] = set()
            needed = 0
            for position, packet_id in enumerate(packet_ids):
                if packet_id in seen:
                    continue
                seen.add(packet_id)
                other_writer = self._in_flight.get(packet_id)
                if other_writer is not None:
                    outcomes[position] = other_writer
                elif not os.path.isfile(self._path_str(packet_id)):
                    mine.append(position)
                    needed += len(views[position])
            free = self._free_locked()
            if needed > free:
                raise AllocationFull(
                    f"allocation full: {len(mine)} new packet(s) need {needed} bytes but only "
                    f"{free} of {self._allocation_bytes} are free ({self._used_bytes} used, "
                    f"{self._other_bytes} in recovery roots, {self._reserved_bytes} being written)"
                )
            self._reserved_bytes += needed
            for position in mine:
                self._in_flight[packet_ids[position]] = threading.Event()

        temps: dict[int, str] = {}
        committed: list[int] = []
        try:
            for position in mine:
                temps[position] = self._write_temp(packet_ids[position], views[position])
            touched: set[str] = set()
            for position in mine:
                touched.update(self._prepare_dirs(self._path_str(packet_ids[position])))
            with self._lock:
                for position in mine:
                    os.replace(temps.pop(position), self._path_str(packet_ids[position]))
                    committed.append(position)
                    self._used_bytes += len(views[position])
                    self._packet_count += 1
            for directory in sorted(touched, key=lambda path: path.count("/"), reverse=True):
                _fsync_dir(directory)
        except OSError as exc:
            raise PacketStoreError(
                f"cannot store packet(s) in {self._packets}: {_describe_os_error(exc)}"
            ) from exc
        finally:
            for temp in temps.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            with self._lock:
                self._reserved_bytes -= sum(len(views[position]) for position in mine)
                for position in mine:
                    self._in_flight.pop(packet_ids[position]).set()
        for position in committed:
            outcomes[position] = True
        return outcomes

    def _write_temp(self, packet_id: bytes, view: memoryview) -> str:
        temp = f"{self._incoming_str}/{secrets.token_hex(8)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, view)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        os.close(fd)
        return temp

    def _prepare_dirs(self, final: str) -> list[str]:
        """Make the fan-out directories; return those whose entries changed
        (the leaf always, plus parents of newly made directories)."""
        leaf = os.path.dirname(final)
        touched = [leaf]
        if os.path.isdir(leaf):  # the common case: one stat, no failing mkdirs
            return touched
        for directory in (os.path.dirname(leaf), leaf):
            try:
                os.mkdir(directory)
            except FileExistsError:
                continue
            touched.append(os.path.dirname(directory))
        return touched

    def _quarantine_file(self, path: Path, packet_id: bytes, size: int) -> None:
        target = self._quarantine / f"{packet_id.hex()}.{secrets.token_hex(4)}"
        with self._lock:
            try:
                os.replace(path, target)
            except FileNotFoundError:
                return  # already deleted or quarantined by another thread
            self._used_bytes -= size
            self._packet_count -= 1
            self._quarantined_count += 1

    def _clear_incoming(self) -> None:
        for entry in os.scandir(self._incoming):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)

    @staticmethod
    def _sorted_subdirs(directory: Path) -> list[Path]:
        return [
            directory / name
            for name in sorted(os.listdir(directory))
            if len(name) == 2 and set(name) <= _HEX_DIGITS and (directory / name).is_dir()
        ]

    def _scan(self) -> tuple[int, int]:
        used = count = 0
        for first in self._sorted_subdirs(self._packets):
            for second in self._sorted_subdirs(first):
                with os.scandir(second) as entries:
                    for entry in entries:
                        if (
                            _is_packet_name(entry.name)
                            and entry.name.startswith(first.name + second.name)
                            and entry.is_file(follow_symlinks=False)
                        ):
                            used += entry.stat(follow_symlinks=False).st_size
                            count += 1
        return used, count
