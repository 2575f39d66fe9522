"""The catalog's record types: what one snapshot, one entry of its tree, one chunk and one
packet are, and how each travels (``to_wire``/``from_wire``: the sealed data assembly
record on the grid) and is rebuilt from its stored fields.

They live apart from ``gridnode.storage.catalog`` because most of the node handles
records without touching the database: the actors and jobs pass them around, the
record file encodes them, restore and repair read them.  Those modules import the
types from here; only what reads or writes the SQLite file needs the ``Catalog``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Final, TypeAlias

import attrs
import msgpack

from ..names import escape

__all__ = [
    "HOLE",
    "SNAPSHOT_COLUMNS",
    "ChunkRecord",
    "EntryRecord",
    "EntryRow",
    "PacketRecord",
    "SnapshotRecord",
    "entry_row",
    "pack_extents",
    "pack_meta",
    "packed_entry_wire",
    "policy_key",
]


def policy_key(k: int, n: int, rules: dict[str, Any]) -> str:
    """The placement policy a chunk was stored under: the dedup key beside its id."""
    return f"{k}/{n} " + json.dumps(rules, sort_keys=True, separators=(",", ":"))


@attrs.frozen
class SnapshotRecord:
    snapshot_id: str
    created: float
    finished: float | None
    state: str  # running | complete | interrupted | failed
    parent: str | None
    roots: tuple[str, ...]
    files: int
    total_bytes: int
    params: str
    rules: dict[str, Any]
    record: bytes | None  # msgpack of the sealed record's chunk refs on the grid
    #: ``backup --tag`` labels (``gridnode.logic.tags``); kept in the catalog and in the
    #: recovery root's copy of ``to_json``, so a recovered catalog has them too.
    tags: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    @property
    def policy(self) -> str:
        k, _, n = self.params.partition("/")
        return policy_key(int(k), int(n), self.rules)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> SnapshotRecord:
        """From a ``snapshots`` row selected as ``SNAPSHOT_COLUMNS``."""
        (sid, created, finished, state, parent, roots, files, size, params, rules, record, tags) = (
            row
        )
        return cls(
            sid,
            created,
            finished,
            state,
            parent,
            tuple(json.loads(roots)),
            files,
            size,
            params,
            json.loads(rules),
            record,
            tuple(json.loads(tags or "[]")),
        )

    @classmethod
    def from_json(cls, snap: dict[str, Any], record: bytes | None) -> SnapshotRecord:
        """A complete snapshot back from its ``to_json`` (the recovery root's copy) and its
        sealed record's refs; ``tags`` is absent from roots published before tags."""
        return cls(
            snapshot_id=snap["snapshot_id"],
            created=snap["created"],
            finished=snap["finished"],
            state="complete",
            parent=snap["parent"],
            roots=tuple(snap["roots"]),
            files=snap["files"],
            total_bytes=snap["bytes"],
            params=snap["redundancy"],
            rules=snap["rules"],
            record=record,
            tags=tuple(str(t) for t in snap.get("tags") or ()),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "created": self.created,
            "finished": self.finished,
            "state": self.state,
            "complete": self.complete,
            "parent": self.parent,
            # Shown escaped: a root's name need not be UTF-8 (see gridnode.names).
            "roots": [escape(os.fsencode(r)) for r in self.roots],
            "files": self.files,
            "bytes": self.total_bytes,
            "redundancy": self.params,
            "rules": self.rules,
            "tags": list(self.tags),
        }


#: The chunk id of a hole: an extent that is all zero bytes, stored nowhere and restored
#: as a hole (sparse files, and runs of zeros in any large file, cost nothing to keep).
HOLE: Final = b""


def _name_bytes(value: str | bytes | None) -> bytes | None:
    """Paths of records written before names were bytes (version 1 and 2) were text."""
    if value is None or isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogateescape")


@attrs.frozen
class EntryRecord:
    """One entry of a snapshot's tree: the source data record of claims 2-3.

    ``uid``/``gid`` are None for entries recorded before owners were kept.  ``hardlink``
    names the first entry (in path order) of the hard-link group this file belongs to;
    such a file still carries its extents, so restoring it alone still gives its bytes.
    """

    path: bytes
    kind: str  # file | dir | symlink | fifo | chardev | blockdev | socket
    mode: int
    mtime_ns: int
    size: int
    inode: int = 0
    device: int = 0
    link_target: bytes | None = None
    extents: tuple[tuple[bytes, int, int], ...] = ()
    uid: int | None = None
    gid: int | None = None
    user: str | None = None
    group: str | None = None
    rdev: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    hardlink: bytes | None = None

    def meta(self) -> list[Any] | None:
        """The fields beyond the first nine, or None when there are none to keep."""
        if (
            self.uid is None
            and self.gid is None
            and not self.rdev
            and not self.xattrs
            and self.hardlink is None
        ):
            return None
        return [
            self.uid,
            self.gid,
            self.user,
            self.group,
            self.rdev,
            [list(x) for x in self.xattrs],
            self.hardlink,
        ]

    def to_wire(self) -> list[Any]:
        return [
            self.path,
            self.kind,
            self.mode,
            self.mtime_ns,
            self.size,
            self.inode,
            self.device,
            self.link_target,
            [list(e) for e in self.extents],
            *(self.meta() or [None, None, None, None, 0, [], None]),
        ]

    @classmethod
    def from_wire(cls, raw: Sequence[Any]) -> EntryRecord:
        """Reads every version: nine fields (text names) before record version 3."""
        path, kind, mode, mtime_ns, size, inode, device, link_target, extents = raw[:9]
        meta = raw[9:] if len(raw) > 9 else None
        return cls.build(
            path, kind, mode, mtime_ns, size, inode, device, link_target, extents, meta
        )

    @classmethod
    def build(
        cls,
        path: str | bytes,
        kind: str,
        mode: int,
        mtime_ns: int,
        size: int,
        inode: int,
        device: int,
        link_target: str | bytes | None,
        extents: Sequence[Sequence[Any]] | None,
        meta: Sequence[Any] | None,
    ) -> EntryRecord:
        """From stored fields (a record item or a catalog row), checking their types.

        Runs once per entry whenever a snapshot is read whole (its record written, a
        listing, a restore), so the common shapes take the short way: names already
        bytes, no extended attributes, one extent."""
        name = path if type(path) is bytes else _name_bytes(path)
        if not name or not isinstance(kind, str):
            raise ValueError(f"bad entry: {str(path)[:80]}")
        uid = gid = None
        user = group = None
        rdev = 0
        xattrs: tuple[tuple[bytes, bytes], ...] = ()
        hardlink = None
        if meta is not None:
            uid, gid, user, group, rdev, raw_xattrs, raw_hardlink = meta
            if raw_xattrs:
                xattrs = tuple([(bytes(k), bytes(v)) for k, v in raw_xattrs])
            if raw_hardlink is not None:
                hardlink = _name_bytes(raw_hardlink)
        return cls(
            name,
            kind,
            int(mode),
            int(mtime_ns),
            int(size),
            int(inode),
            int(device),
            None if link_target is None else _name_bytes(link_target),
            tuple([(bytes(c), int(o), int(n)) for c, o, n in extents]) if extents else (),
            uid,
            gid,
            user,
            group,
            int(rdev),
            xattrs,
            hardlink,
        )


#: One row of the catalog's ``entries`` table, as ``executemany`` takes it: snapshot id,
#: path, kind, mode, mtime_ns, size, inode, device, link target, extents (msgpack; files
#: only) and meta (msgpack, or None when there is none).  A backup builds these directly
#: from what it scanned, and carries an unchanged file's extents over as the parent's
#: bytes: no ``EntryRecord`` per entry, no decode and re-encode.
EntryRow: TypeAlias = tuple[
    str, bytes, str, int, int, int, int, int, bytes | None, bytes | None, bytes | None
]


def pack_extents(extents: Sequence[Sequence[Any]]) -> bytes:
    """A file's extents as the catalog stores them (tuples pack as lists do)."""
    return bytes(msgpack.packb(extents, use_bin_type=True))


def pack_meta(meta: Sequence[Any]) -> bytes:
    """``EntryRecord.meta()`` (when not None) as the catalog stores it."""
    return bytes(msgpack.packb(meta, use_bin_type=True))


#: ``EntryRecord.to_wire()`` has 16 fields: msgpack's array16 header for it.
_WIRE_HEAD: Final = b"\xdc\x00\x10"
#: The wire's last seven fields of an entry whose ``meta()`` is None.
_NO_META_WIRE: Final = bytes(
    msgpack.packb([None, None, None, None, 0, [], None], use_bin_type=True)
)[1:]
#: How a stored ``meta`` starts: the header of a seven-field array.
_META_HEAD: Final = b"\x97"


def packed_entry_wire(row: Sequence[Any], packer: msgpack.Packer) -> bytes | None:
    """``EntryRecord.build(*row).to_wire()`` packed, from a catalog row (path, kind,
    mode, mtime_ns, size, inode, device, link target, extents, meta), or None for a row
    of a shape this short way does not know (then build the record).  ``packer``: the
    caller's (a ``Packer`` is not for two threads at once).

    The record of a snapshot holds every entry's wire form, and the catalog keeps an
    entry's extents and owners as msgpack already (``pack_extents``, ``pack_meta``):
    spliced in as they are, the same bytes come without decoding, checking and
    re-encoding them through an ``EntryRecord``.  At the end of a backup nothing else
    runs meanwhile: for a 51,000-entry tree, 0.27 s to write the record, 0.12 s so."""
    path, kind, mode, mtime_ns, size, inode, device, link_target, extents, meta = row
    if (
        type(path) is not bytes
        or not path
        or type(kind) is not str
        or type(mode) is not int
        or type(mtime_ns) is not int
        or type(size) is not int
        or type(inode) is not int
        or type(device) is not int
        or (link_target is not None and type(link_target) is not bytes)
        or (extents is not None and type(extents) is not bytes)
    ):
        return None
    if (
        meta is not None
        and (
            type(meta) is not bytes
            # Seven fields, as ``pack_meta`` wrote them, and a uid or a gid: without both,
            # ``meta()`` may be None, whose wire form is the empty one.
            or (meta and (meta[:1] != _META_HEAD or meta[1:3] == b"\xc0\xc0"))
        )
    ):
        return None
    head: bytes = packer.pack(row[:8])
    return (
        _WIRE_HEAD
        + head[1:]  # the eight fields without their array's header
        + (extents or b"\x90")  # none: an empty array
        + (meta[1:] if meta else _NO_META_WIRE)
    )


def entry_row(snapshot_id: str, e: EntryRecord) -> EntryRow:
    return (
        snapshot_id,
        e.path,
        e.kind,
        e.mode,
        e.mtime_ns,
        e.size,
        e.inode,
        e.device,
        e.link_target,
        pack_extents(e.extents) if e.kind == "file" else None,
        None if (meta := e.meta()) is None else pack_meta(meta),
    )


@attrs.frozen
class PacketRecord:
    share: int
    packet_id: bytes
    target: bytes
    receipt: bytes


@attrs.frozen
class ChunkRecord:
    chunk_id: bytes
    plain_size: int
    cipher_size: int
    compressed: bool
    k: int
    n: int
    packets: tuple[PacketRecord, ...]
    rules: dict[str, Any] = attrs.field(factory=dict)
    #: Which secret keys the chunk: "data" (the dedup secret, shared within a dedup
    #: domain) or "record" (the node's own record key: data assembly records).
    domain: str = "data"

    def to_wire(self) -> list[Any]:
        return [
            self.chunk_id,
            self.plain_size,
            self.cipher_size,
            self.compressed,
            self.k,
            self.n,
            [[p.share, p.packet_id, p.target, p.receipt] for p in self.packets],
            json.dumps(self.rules, sort_keys=True),
            self.domain,
        ]

    @property
    def policy(self) -> str:
        return policy_key(self.k, self.n, self.rules)

    @classmethod
    def from_wire(cls, raw: Sequence[Any]) -> ChunkRecord:
        chunk_id, plain, cipher, compressed, k, n, packets, rules, domain = raw
        return cls(
            bytes(chunk_id),
            int(plain),
            int(cipher),
            bool(compressed),
            int(k),
            int(n),
            tuple(PacketRecord(int(s), bytes(p), bytes(t), bytes(r)) for s, p, t, r in packets),
            json.loads(rules),
            str(domain),
        )


#: The ``snapshots`` columns ``SnapshotRecord.from_row`` reads, in its order.
SNAPSHOT_COLUMNS: Final = (
    "snapshot_id, created, finished, state, parent, roots, files, bytes, params, rules, record,"
    " tags"
)
