"""A delegate's copy of one owner's map, on disk by part: what lets a member hold the
capability of a 100 GB backup (some 2.5 million packets) without holding it in memory.

Each part stays sealed to this node as it arrived (``<owner>.parts/<digest>``); a scan
opens one part at a time.  What the repairer needs on every tick is kept small and in
memory: the packets per holder (to watch holders and count what is away) and the
moves not yet taken in by the owner (applied over the parts as they are read).  All
methods do file I/O or CPU work: call them off the event loop.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs
from nacl.signing import SigningKey

from ..fsutil import atomic_write
from .map_parts import PartRef, decode_part, open_part
from .records import HeldChunk, MoveRecord


@attrs.define
class HeldMap:
    directory: Path
    key: SigningKey
    refs: tuple[PartRef, ...] = ()
    #: (handle, share) -> holder, for moves the owner has not taken in yet.
    overlay: dict[tuple[bytes, int], bytes] = attrs.field(factory=dict)
    #: Packets per holder, moves applied: whom to watch, and what is away.
    targets: dict[bytes, int] = attrs.field(factory=dict)

    def path(self, digest: bytes) -> Path:
        return self.directory / digest.hex()

    def has(self, digest: bytes) -> bool:
        return self.path(digest).is_file()

    def write(self, digest: bytes, sealed: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.path(digest), sealed, mode=0o600)

    def body(self, ref: PartRef) -> bytes:
        """A part's body (plaintext), checked against its signed digest."""
        return open_part(self.path(ref.digest).read_bytes(), self.key, ref)

    def set_moves(self, moves: Iterable[MoveRecord]) -> None:
        self.overlay = {}
        for move in sorted(moves, key=lambda m: (m.at, m.delegate, m.seq)):
            self.overlay[(move.handle, move.share)] = move.new_target

    def _moved(self, chunk: HeldChunk) -> HeldChunk:
        for packet in chunk.packets:
            target = self.overlay.get((chunk.handle, packet.share))
            if target is not None and target != packet.target:
                chunk = chunk.moved(packet.share, target)
        return chunk

    def chunks(self) -> Iterator[HeldChunk]:
        """Every chunk of the map as it stands (moves applied), one part at a time."""
        handles = {h for h, _s in self.overlay}
        for ref in self.refs:
            for chunk in decode_part(self.body(ref), ref):
                yield self._moved(chunk) if chunk.handle in handles else chunk

    def find(self, handles: set[bytes]) -> dict[bytes, HeldChunk]:
        return {c.handle: c for c in self.chunks() if c.handle in handles}

    def index(self) -> None:
        """Count the packets per holder (a full scan: once per capability taken up)."""
        counts: dict[bytes, int] = {}
        for chunk in self.chunks():
            for packet in chunk.packets:
                counts[packet.target] = counts.get(packet.target, 0) + 1
        self.targets = counts

    def moved(self, old: bytes, new: bytes, handle: bytes, share: int) -> None:
        self.overlay[(handle, share)] = new
        if self.targets.get(old, 0) > 1:
            self.targets[old] -= 1
        else:
            self.targets.pop(old, None)
        self.targets[new] = self.targets.get(new, 0) + 1

    def prune(self) -> None:
        """Remove parts of earlier versions the current map no longer lists."""
        if not self.directory.is_dir():
            return
        keep = {r.digest.hex() for r in self.refs}
        for path in self.directory.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def drop(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.refs, self.overlay, self.targets = (), {}, {}
