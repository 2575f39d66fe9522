"""The sequencer builds the member list only when gossip's view version moved (issue 11):
placing a chunk in an unchanged grid costs no O(members) work."""

from __future__ import annotations

import os
from typing import Any

import trio

from gridnode.actors.sequencer import PlaceChunk, Sequencer
from gridnode.logic.placement import PlacementRules, Source

from .views import CountingGossip, some_members


def _sequencer(gossip: CountingGossip, **kwargs: Any) -> Sequencer:
    _send, receive = trio.open_memory_channel[Any](1)
    return Sequencer(
        key=b"k" * 32,
        inbound=receive,
        view=gossip.view,
        source=lambda: Source(node_id=b"s" * 32, lat=47.0, lon=8.0),
        **kwargs,
    )


def _chunk() -> PlaceChunk:
    return PlaceChunk(chunk_id=os.urandom(32), n=6, packet_bytes=1 << 18, rules=PlacementRules())


def test_the_member_list_is_built_once_per_view_version() -> None:
    gossip = CountingGossip(some_members(50))
    sequencer = _sequencer(gossip, version=lambda: gossip.version)
    first = [sequencer.place(_chunk()) for _ in range(20)]
    assert gossip.built == 1 and all(len(set(t)) == 6 for t in first)
    gossip.version += 1  # a member joined, left or changed: the next chunk sees it
    newcomer = some_members(1)[0]
    gossip.members = [newcomer]
    gossip.members += some_members(5)
    targets = sequencer.place(_chunk())
    assert gossip.built == 2 and newcomer.node_id in targets
    sequencer.place(_chunk())
    assert gossip.built == 2


def test_the_same_chunk_is_placed_alike_with_and_without_the_version_shortcut() -> None:
    members = some_members(30)
    chunks = [_chunk() for _ in range(10)]
    fast = _sequencer(g := CountingGossip(members), version=lambda: g.version)
    slow = _sequencer(CountingGossip(members))
    assert [fast.place(c) for c in chunks] == [slow.place(c) for c in chunks]
