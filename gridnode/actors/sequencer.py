"""The sequencer actor (claims 1, 7, 13, 30): the non-transparent sequence of targets.

For each chunk it answers "which n targets, in which order": the pure placement function
(``gridnode.logic.placement``) ranks the live members by weighted rendezvous hashing under
this node's secret sequence key, under the snapshot's proximity rules.  Nobody without the
key can compute the order; the resulting list packet -> target is kept only in this node's
catalog and, sealed, in the data assembly record on the grid.  A dedup group's data
chunks (``PlaceChunk.shared``) are placed under the group's key instead, with coarse
weights and a keyed share assignment (``gridnode.dedup_group``), so its members choose
alike.

The member view comes from the gossip actor.  A ``PlacementView`` (per-member hashes,
distances from the source) is built once per view version and rules, and reused for every
chunk until gossip reports a change.  The version is asked for first (``version``, a
cheap read): the member list itself, one validated ``Member`` per grid member, is only
built when the version moved, so a chunk costs no O(members) work while nothing changed.

Backpressure: placement is a few vectorised passes (well under a millisecond per chunk
with 10,000 members), so calls are answered inline, a handful at a time.
Cancellation: nothing to clean up; the actor holds no per-call state.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import attrs
import trio

from ..dedup_group import assign_shares, coarse_members
from ..logic.placement import Member, PlacementError, PlacementRules, PlacementView, Source
from .calls import Handlers, Inbox, Request, serve_calls

__all__ = ["PlaceChunk", "PlacementError", "Sequencer"]


@attrs.frozen
class PlaceChunk(Request[tuple[bytes, ...]]):
    """Where the n packets of a chunk go: answered with the n targets, in share order."""

    chunk_id: bytes
    n: int
    packet_bytes: int
    rules: PlacementRules
    exclude: frozenset[bytes] = frozenset()
    #: Targets that already hold packets of this chunk: the answer keeps them and fills the
    #: rest, so a replacement obeys the pairwise rules together with them.
    fixed: tuple[bytes, ...] = ()
    #: A dedup group's data chunk: placed under the group's key (``gridnode.dedup_group``),
    #: so every member chooses the same targets for it given the same view.
    shared: bool = False


#: () -> (view version, members); provided by the gossip actor.  Any hashable version:
#: the node's is gossip's paired with the audit trust version (``audit.TrustedView``).
ViewSource = Callable[[], tuple[Hashable, Sequence[Member]]]
#: () -> the view version alone (cheap); provided by the gossip actor.
VersionSource = Callable[[], Hashable]


@attrs.define
class Sequencer:
    key: bytes
    inbound: Inbox
    view: ViewSource
    source: Callable[[], Source]
    #: The current view version without building the members (None: always build them).
    version: VersionSource | None = None
    #: The dedup group's placement key (None: not in a group, every chunk is private).
    shared_key: bytes | None = None
    _cache: dict[Any, PlacementView] = attrs.field(factory=dict)
    placements: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        handlers = Handlers("sequencer").on(PlaceChunk, self._handle)
        await serve_calls(self.inbound, handlers, concurrency=4, task_status=task_status)

    async def _handle(self, cmd: PlaceChunk) -> tuple[bytes, ...]:
        await trio.lowlevel.checkpoint()
        return self.place(cmd)

    def placement_view(self, rules: PlacementRules, shared: bool = False) -> PlacementView:
        source = self.source()
        shared = shared and self.shared_key is not None
        if self.version is not None:
            cached = self._cache.get((self.version(), rules, source, shared))
            if cached is not None:
                return cached
        version, members = self.view()
        cache_key = (version, rules, source, shared)
        view = self._cache.get(cache_key)
        if view is None:
            # Only the newest view is ever used again (with the group's key beside it).
            for old in [k for k in self._cache if k[0] != version]:
                del self._cache[old]
            if shared:
                assert self.shared_key is not None
                key, members = self.shared_key, coarse_members(members)
            else:
                key = self.key
            view = PlacementView(key=key, source=source, members=members, rules=rules)
            self._cache[cache_key] = view
        return view

    def place(self, cmd: PlaceChunk) -> tuple[bytes, ...]:
        """Raises PlacementError naming the rule and numbers when no valid set exists."""
        if cmd.shared and self.shared_key is not None and not cmd.fixed:
            view = self.placement_view(cmd.rules, shared=True)
            self.placements += 1
            targets = view.place(cmd.chunk_id, cmd.n, cmd.packet_bytes, exclude=cmd.exclude)
            return assign_shares(self.shared_key, cmd.chunk_id, targets)
        view = self.placement_view(cmd.rules, shared=cmd.shared)
        self.placements += 1
        if cmd.fixed:
            targets = view.place(
                cmd.chunk_id, cmd.n, cmd.packet_bytes, exclude=cmd.exclude, fixed=cmd.fixed
            )
        else:
            targets = view.place(cmd.chunk_id, cmd.n, cmd.packet_bytes, exclude=cmd.exclude)
        return tuple(targets)
