"""The snapshot tree browser: one directory's entries, and one file restored to download.

Listing uses the ``ls`` control method (the catalog only; no packet is fetched) and
keeps the entries directly under the directory asked for.  A download is a real
``restore`` job of that one path, submitted like a CLI's (so it is logged and counted
with the node's jobs), into a fresh private directory under ``HOME/dashboard-restore``
(0700); the file is streamed from there and the directory removed when the answer ends
or fails.  A file larger than ``MAX_DOWNLOAD_BYTES`` is refused (``gridnode restore``
is the tool for it), so a page cannot fill the disk.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import trio

__all__ = [
    "MAX_CHILDREN",
    "MAX_DOWNLOAD_BYTES",
    "RESTORE_DIR",
    "DownloadRefused",
    "children",
    "clear_restore_dir",
    "restore_one",
]

#: Entries of one directory a page is given (the rest are counted).
MAX_CHILDREN: Final = 2000
#: Largest file restored for a download.
MAX_DOWNLOAD_BYTES: Final = 1 << 30
#: Where downloads are restored, under the node's home.
RESTORE_DIR: Final = "dashboard-restore"

Submit = Callable[
    [str, dict[str, Any], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[Any]
]


class DownloadRefused(ValueError):
    """Not a regular file of the snapshot, or too large to restore for a download."""


def children(entries: Iterable[Mapping[str, Any]], path: str) -> dict[str, Any]:
    """The entries directly under ``path`` (escaped form, ``""`` for the top), as the page
    lists them: name, path, type, size, mtime; directories first."""
    prefix = path.strip("/")
    depth = prefix.count("/") + 1 if prefix else 0
    found = []
    for entry in entries:
        entry_path = str(entry["path"]).strip("/")
        if prefix and not entry_path.startswith(prefix + "/"):
            continue
        if entry_path.count("/") != depth:
            continue
        found.append(
            {
                "name": entry_path.rsplit("/", 1)[-1],
                "path": entry_path,
                "type": entry.get("type"),
                "size": entry.get("size"),
                "mtime": entry.get("mtime"),
            }
        )
    found.sort(key=lambda e: (e["type"] != "dir", e["name"]))
    return {"path": prefix, "entries": found[:MAX_CHILDREN], "total": len(found)}


def clear_restore_dir(home: Path) -> Path:
    """``HOME/dashboard-restore``, emptied (a crash may have left a download there)."""
    folder = home / RESTORE_DIR
    if folder.is_symlink():
        folder.unlink()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    return folder


async def restore_one(
    submit: Submit, folder: Path, snapshot: str, path: str, entries: Sequence[Mapping[str, Any]]
) -> tuple[Path, Path]:
    """Restores the one regular file ``path`` of ``snapshot`` (its ``ls`` entries given)
    into a new directory under ``folder``; returns (that directory, the file)."""
    wanted = path.strip("/")
    match = [e for e in entries if str(e["path"]).strip("/") == wanted]
    if not match or match[0].get("type") != "file":
        raise DownloadRefused(f"{wanted!r} is not a regular file of this snapshot")
    if int(match[0].get("size") or 0) > MAX_DOWNLOAD_BYTES:
        raise DownloadRefused(
            f"{wanted!r} is larger than {MAX_DOWNLOAD_BYTES >> 20} MiB: use gridnode restore"
        )
    scratch = folder / secrets.token_hex(8)
    await trio.Path(scratch).mkdir(mode=0o700)

    async def no_events(event: dict[str, Any]) -> None:
        """A download shows no progress; the browser shows its own."""

    try:
        await submit(
            "restore", {"snapshot": snapshot, "to": str(scratch), "path": wanted}, no_events
        )
        files = await trio.to_thread.run_sync(_regular_files, scratch)
        if len(files) != 1:
            raise DownloadRefused(f"the restore of {wanted!r} did not give one file")
    except BaseException:
        await trio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))
        raise
    return scratch, files[0]


def _regular_files(root: Path) -> list[Path]:
    out = []
    for top, _dirs, names in os.walk(root):
        for name in names:
            candidate = Path(top) / name
            if candidate.is_file() and not candidate.is_symlink():
                out.append(candidate)
    return out
