"""Where a node's packet store lives (``storage_dir``), and the check that the directory
opened is the store this node had.

The packets a node holds for others can be most of its disk use, so they may live on
another disk than the home (``gridnode init --storage DIR``, issue 12).  Only the
content-addressed packet store moves: ``FORMAT``, ``packets/``, ``incoming/`` and
``quarantine/`` (:mod:`gridnode.storage.packets`).  ``holdings.sqlite`` (delete tags,
recovery roots held for others) stays in ``HOME/storage`` beside the catalog, because:

- it is a small SQLite database written in many small transactions: it belongs on the
  disk of the node's other databases, not on a bulk disk that may be slower or spun down;
- it is the node's record of what it agreed to keep and for whom, so it stays with the
  node's key and config when the bulk disk is missing, and the node then refuses to
  start (below) rather than forget it;
- without it the store holds only immutable files named by their hash, which can be
  moved with ``mv`` or ``rsync`` while the node is stopped.

The recovery roots in it count against the allocation although they sit on the home's
disk; they are a few KiB each, so the allocation check against the store's disk is not
skewed by them.

A store that was there and is not any more must never be taken for a new one: a node
that starts on an empty directory (a disk not mounted, a mistyped ``storage_dir``, a
directory moved without its packets) would advertise its whole allocation as free and
answer "not held" for every packet it held, and their owners would have to repair them
all.  So ``HOME/storage/packet-store-location`` records the directory last opened, and a
directory without the store's ``FORMAT`` marker is refused when the recorded one (or,
for a home from before the record, ``HOME/storage``) held a store.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

from ..errors import GridError
from ..fsutil import atomic_write
from ..log import get_logger
from .packets import FORMAT_NAME, PacketDirectory

__all__ = [
    "LOCATION_RECORD",
    "StorageLocationError",
    "check_packet_root",
    "has_packets",
    "holds_store",
    "open_packet_directory",
    "recorded_root",
]

#: In ``HOME/storage``: the absolute path of the packet store last opened.
LOCATION_RECORD: Final = "packet-store-location"
#: What moves with the store (the rest of ``HOME/storage`` stays in the home).
STORE_PARTS: Final = (FORMAT_NAME, "packets", "quarantine")
HOLDINGS_NAME: Final = "holdings.sqlite"
#: Every name the store itself makes in its directory.
_STORE_NAMES: Final = (*STORE_PARTS, "incoming")

_log = get_logger()


class StorageLocationError(GridError):
    """The configured packet store directory is not this node's store (or is missing);
    the message says what to do."""


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path.expanduser()))


def holds_store(root: Path) -> bool:
    """Whether ``root`` holds a packet store: its ``FORMAT`` marker, or (a store from
    before the marker existed) a fan-out directory under ``packets/``."""
    if (root / FORMAT_NAME).is_file():
        return True
    try:
        with os.scandir(root / "packets") as entries:
            return any(entry.is_dir(follow_symlinks=False) for entry in entries)
    except OSError:
        return False


def _nonempty(path: str) -> bool:
    with os.scandir(path) as entries:
        return any(True for _ in entries)


def has_packets(root: Path) -> bool:
    """Whether the store at ``root`` holds a packet (its fan-out directories stay when
    their packets are deleted, so they say nothing); stops at the first one found."""
    packets = root / "packets"
    try:
        with os.scandir(packets) as firsts:
            for first in firsts:
                if not first.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(first.path) as seconds:
                    for second in seconds:
                        if second.is_dir(follow_symlinks=False) and _nonempty(second.path):
                            return True
    except OSError:
        return False
    return False


def recorded_root(home: Path) -> Path | None:
    """The store this node opened last: the recorded directory, else ``HOME/storage``
    when it holds a store (a home from before the record), else None (a new node)."""
    record = home / "storage" / LOCATION_RECORD
    try:
        text = record.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageLocationError(f"cannot read {record}: {exc}") from None
    if text:
        return _absolute(Path(text))
    default = _absolute(home / "storage")
    return default if holds_store(default) else None


def _how_to_move(home: Path) -> str:
    return (
        f"to move the packet store, stop the node, move {', '.join(STORE_PARTS)} from the "
        f"old directory into the new one, then set storage_dir in {home / 'gridnode.toml'} "
        "(docs/OPERATING.md, Moving the packet store)"
    )


def check_packet_root(home: Path, root: Path) -> None:
    """Refuse to open ``root`` as the packet store when it is not this node's store.

    Raises:
        StorageLocationError: ``root`` (a ``storage_dir`` other than ``HOME/storage``)
            is not a directory; it holds the home's ``holdings.sqlite``; or it holds no
            store while the store this node opened last held one, or cannot be found.
    """
    home = _absolute(home)
    root = _absolute(root)
    default = home / "storage"
    record = default / LOCATION_RECORD
    if root != default:
        if not root.is_dir():
            raise StorageLocationError(
                f"storage_dir {root} is not a directory (is its disk mounted?): create it, "
                "or set storage_dir to where this node's packets are"
            )
        if (root / HOLDINGS_NAME).exists():
            raise StorageLocationError(
                f"storage_dir {root} holds {HOLDINGS_NAME}, which stays in the home: move "
                f"it back to {default}/ (only {', '.join(STORE_PARTS)} move to storage_dir)"
            )
    if holds_store(root):
        return
    previous = recorded_root(home)
    if previous is None:
        if root != default:
            _check_empty(root)
        return  # a new node: its store starts here
    lost_for_good = (
        f"if its packets are lost for good, delete {record} and start again with an empty "
        "store (their owners repair them elsewhere)"
    )
    if previous == root:
        raise StorageLocationError(
            f"{root} was this node's packet store but holds none now (no {FORMAT_NAME} "
            "marker): is its disk mounted?  Starting would lose every packet the node "
            f"held.  Mount the disk, or set storage_dir to where the packets are; {lost_for_good}"
        )
    if holds_store(previous):
        if not has_packets(previous):
            if root != default:
                _check_empty(root)
            return  # nothing to lose: the empty store simply starts over here
        raise StorageLocationError(
            f"storage_dir is {root}, which holds no packet store, but this node's packets "
            f"are in {previous}: {_how_to_move(home)}"
        )
    raise StorageLocationError(
        f"storage_dir is {root}, which holds no packet store, and this node's packet store "
        f"{previous} is gone (is its disk mounted?): mount it, or move its "
        f"{', '.join(STORE_PARTS)} into {root}; {lost_for_good}"
    )


def _check_empty(root: Path) -> None:
    """A new store starts in an empty directory: the store empties its ``incoming/`` at
    every start, and a directory of someone's files is no place for it."""
    with os.scandir(root) as entries:
        strangers = sorted(
            entry.name for entry in entries if entry.name not in (*_STORE_NAMES, "lost+found")
        )
    if strangers:
        shown = ", ".join(strangers[:3]) + (", ..." if len(strangers) > 3 else "")
        raise StorageLocationError(
            f"storage_dir {root} holds no packet store and is not empty ({shown}): give "
            "an empty directory (or one that does not exist yet, to init), so that "
            "nothing else shares it with the packets"
        )


def _remember(home: Path, root: Path) -> None:
    """Record ``root`` as the store opened last; warn when the one before still holds
    packets (copied rather than moved: they take disk space and nobody reads them)."""
    home = _absolute(home)
    root = _absolute(root)
    record = home / "storage" / LOCATION_RECORD
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if record.read_text(encoding="utf-8") == f"{root}\n":
            return
    previous = recorded_root(home)
    if previous is not None and previous != root and has_packets(previous):
        _log.warning(
            "packet_store_moved",
            now=str(root),
            was=str(previous),
            note="the old directory still holds packets; delete them once the move is checked",
        )
    atomic_write(record, f"{root}\n".encode())


def open_packet_directory(
    home: Path, root: Path, allocation_bytes: int, *, other_bytes: int = 0
) -> PacketDirectory:
    """Open the node's packet store at ``root`` after :func:`check_packet_root`, and
    record where it is.  ``HOME/storage`` must exist (the node keeps holdings there)."""
    check_packet_root(home, root)
    packets = PacketDirectory(root, allocation_bytes, other_bytes=other_bytes)
    _remember(home, root)
    return packets
