"""What a snapshot holds, without restoring it: ``ls``, ``find`` and ``diff``.

Both read the catalog only (no packet is fetched).  Paths are shown in the escaped text
form of :mod:`gridnode.names`, which the same commands and ``restore --path`` accept back.
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from .job_services import Services
from .names import escape, from_arg
from .restore import SnapshotNotFound, resolve
from .storage.records import HOLE, EntryRecord

__all__ = [
    "diff_entries",
    "diff_snapshots",
    "entry_json",
    "find_in_snapshots",
    "json_pages",
    "list_snapshot",
    "stream_diff",
    "stream_snapshot",
]

#: Rows per ``entries`` event of a streamed ``ls``: about 150 KB of JSON, far below the
#: control protocol's limit on one message.
LS_PAGE_ROWS = 512
#: JSON bytes per event of a streamed ``ls`` or ``diff`` at most (about): a quarter of
#: what one control message may hold.
EVENT_BYTES = 1024 * 1024
#: Bounds the pages of one listing (a billion entries): the loop ends on a short page.
MAX_LS_PAGES = 2_000_000

#: Matches ``find`` returns at most (the rest is counted, not listed).
FIND_LIMIT = 10_000
#: And JSON bytes of matches at most: an answer must stay under the control protocol's
#: 4 MiB, with room for the rest of it.
FIND_ANSWER_BYTES = 3 * 1024 * 1024

#: Fields whose difference makes an entry "changed" in a diff.
_COMPARED = (
    "kind",
    "size",
    "mtime_ns",
    "mode",
    "extents",
    "link_target",
    "uid",
    "gid",
    "rdev",
    "xattrs",
    "hardlink",
)


def _rfc3339(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}Z"


def entry_json(e: EntryRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": escape(e.path),
        "type": e.kind,
        "size": e.size,
        "mtime": _rfc3339(e.mtime_ns),
        "mtime_ns": e.mtime_ns,
        "mode": f"{e.mode:04o}",
        "uid": e.uid,
        "gid": e.gid,
        "user": e.user,
        "group": e.group,
    }
    if e.link_target is not None:
        out["link_target"] = escape(e.link_target)
    if e.hardlink is not None:
        out["hardlink"] = escape(e.hardlink)
    if e.kind in ("chardev", "blockdev"):
        out["device"] = [os.major(e.rdev), os.minor(e.rdev)]
    if e.xattrs:
        out["xattrs"] = [escape(name) for name, _ in e.xattrs]
    if e.kind == "file":
        out["allocated_bytes"] = sum(n for c, _, n in e.extents if c != HOLE)
    return out


def _under(entries: Iterable[EntryRecord], path: str | None) -> Iterator[EntryRecord]:
    listed = list(entries)
    if not path:
        yield from listed
        return
    wanted = from_arg(path.strip("/"), {e.path for e in listed})
    found = False
    for e in listed:
        if e.path == wanted or e.path.startswith(wanted + b"/"):
            found = True
            yield e
    if not found:
        raise SnapshotNotFound(f"no path {escape(wanted)!r} in this snapshot")


async def list_snapshot(
    services: Services, snapshot: str, path: str | None
) -> list[dict[str, Any]]:
    """The whole listing as one answer: what clients from before ``stream_snapshot``
    ask for (a listing past the control protocol's limit is refused, by name, there)."""
    snap = await resolve(services, snapshot)
    catalog = services.catalog
    entries = await services.db(lambda: list(catalog.entries(snap.snapshot_id)))
    return [entry_json(e) for e in _under(entries, path)]


async def stream_snapshot(
    services: Services,
    snapshot: str,
    path: str | None,
    emit: Callable[[dict[str, Any]], Awaitable[None]],
) -> dict[str, Any]:
    """``ls`` of a snapshot of any size: the rows leave in pages of at most
    ``LS_PAGE_ROWS`` and about ``EVENT_BYTES`` of JSON, one ``{"event": "entries",
    "entries": [...]}`` event each, and the answer counts them.

    One answer holding every row failed past the control protocol's 4 MiB (a tree of
    about 15,000 files), and held the whole listing in the node's memory twice; a page
    at a time (keyset pagination in the catalog) holds one page."""
    snap = await resolve(services, snapshot)
    catalog = services.catalog
    sid = snap.snapshot_id
    under: bytes | None = None
    if path and path.strip("/"):
        text = path.strip("/")
        literal = await services.db(lambda: catalog.entry_paths(sid, [os.fsencode(text)]))
        under = from_arg(text, literal)
    after: bytes | None = None
    listed = 0
    for _ in range(MAX_LS_PAGES):
        page = await services.db(
            lambda a=after: catalog.entry_page(
                sid, kinds=(), exclude=True, after=a, limit=LS_PAGE_ROWS, under=under
            )
        )
        if page:
            for rows in json_pages([entry_json(e) for e in page]):
                await emit({"event": "entries", "entries": rows})
            listed += len(page)
            after = page[-1].path
        if len(page) < LS_PAGE_ROWS:
            break
    if under is not None and not listed:
        raise SnapshotNotFound(f"no path {escape(under)!r} in this snapshot")
    return {"snapshot_id": sid, "entries": listed}


async def find_in_snapshots(
    services: Services, pattern: str, snapshots: list[str], limit: int = FIND_LIMIT
) -> dict[str, Any]:
    """Entries whose name or snapshot path matches the glob ``pattern``, in the given
    snapshots (all complete ones when none is given), newest snapshot first.

    The pattern is matched as bytes, in the escaped form's raw bytes (so ``*\\xff*``
    finds a name holding byte 0xff); a pattern without ``/`` is tried on the name, one
    with ``/`` on the whole path, as in ``--exclude``."""
    raw = from_arg(pattern, set())
    catalog = services.catalog
    if snapshots:
        chosen = [await resolve(services, s) for s in snapshots]
    else:
        chosen = [s for s in await services.db(catalog.snapshots) if s.complete][::-1]
    on_path = b"/" in raw

    def search(snapshot_id: str, room: int) -> tuple[list[EntryRecord], int]:
        """The first ``room`` matches, and how many there are: a pattern that matches
        every entry of a huge snapshot keeps ``room`` of them, not all."""
        found: list[EntryRecord] = []
        count = 0
        for e in catalog.entries(snapshot_id):
            target = e.path if on_path else e.path.rsplit(b"/", 1)[-1]
            if fnmatch.fnmatchcase(target, raw):
                count += 1
                if len(found) < room:
                    found.append(e)
        return found, count

    matches: list[dict[str, Any]] = []
    total = 0
    for snap in chosen:
        sid = snap.snapshot_id
        room = limit - len(matches)
        found, count = await services.db(lambda sid=sid, room=room: search(sid, room))
        total += count
        matches.extend({"snapshot_id": sid, **entry_json(e)} for e in found)
    # At most FIND_ANSWER_BYTES of JSON as well: 10,000 long paths would not fit in one
    # control answer; those past it are counted, like those past the limit.
    kept = next(json_pages(matches, FIND_ANSWER_BYTES), [])
    if len(kept) < len(matches):
        matches = kept
    return {
        "event": "result",
        "pattern": pattern,
        "snapshots": [s.snapshot_id for s in chosen],
        "matches": matches,
        "total": total,
        "truncated": total > len(matches),
    }


def json_pages(items: list[Any], budget: int = EVENT_BYTES) -> Iterator[list[Any]]:
    """``items`` in consecutive pages of at most about ``budget`` bytes of JSON each (one
    item larger than that is a page alone): pages by count could still pass the control
    protocol's limit, since one path may be 4 KiB and escaping can make it 16."""
    page: list[Any] = []
    size = 0
    for item in items:
        cost = len(json.dumps(item)) + 2
        if page and size + cost > budget:
            yield page
            page, size = [], 0
        page.append(item)
        size += cost
    if page:
        yield page


async def stream_diff(
    services: Services,
    first: str,
    second: str,
    emit: Callable[[dict[str, Any]], Awaitable[None]],
) -> dict[str, Any]:
    """``diff`` whose lists may be larger than one control message: each list leaves in
    ``{"event": "diff", LIST: [...]}`` pages (``added``, ``removed``, ``changes``), and
    the answer gives ``from``, ``to`` and each list's length."""
    result = await diff_snapshots(services, first, second)
    for key in ("added", "removed", "changes"):
        for page in json_pages(result[key]):
            await emit({"event": "diff", key: page})
    return {
        "event": "result",
        "from": result["from"],
        "to": result["to"],
        **{key: len(result[key]) for key in ("added", "removed", "changes")},
    }


async def diff_snapshots(services: Services, first: str, second: str) -> dict[str, Any]:
    """What changed from ``first`` to ``second``: both snapshots' entries are read side by
    side in path order (a merge), so a diff of two snapshots of millions of files holds
    one entry of each at a time, not two dictionaries of every entry."""
    a = await resolve(services, first)
    b = await resolve(services, second)
    catalog = services.catalog
    changes = await services.db(
        lambda: diff_entries(catalog.entries(a.snapshot_id), catalog.entries(b.snapshot_id))
    )
    return {"event": "result", "from": a.snapshot_id, "to": b.snapshot_id, **changes}


def diff_entries(old: Iterable[EntryRecord], new: Iterable[EntryRecord]) -> dict[str, Any]:
    """``added``, ``removed``, ``changed`` (escaped paths) and ``changes`` (path and the
    fields that differ) between two entry streams, each in path order (byte order, as
    the catalog sorts them)."""
    added: list[str] = []
    removed: list[str] = []
    changes: list[dict[str, Any]] = []
    old_it, new_it = iter(old), iter(new)
    o, n = next(old_it, None), next(new_it, None)
    while o is not None or n is not None:
        if n is None or (o is not None and o.path < n.path):
            assert o is not None
            removed.append(escape(o.path))
            o = next(old_it, None)
        elif o is None or n.path < o.path:
            added.append(escape(n.path))
            n = next(new_it, None)
        else:
            fields = [f for f in _COMPARED if getattr(o, f) != getattr(n, f)]
            if fields:
                changes.append({"path": escape(n.path), "fields": fields})
            o, n = next(old_it, None), next(new_it, None)
    return {
        "added": added,
        "removed": removed,
        "changed": [c["path"] for c in changes],
        "changes": changes,
    }
