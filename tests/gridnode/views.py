"""Stand-ins for what gossip gives the sequencer, for in-process placement tests."""

from __future__ import annotations

import os
from collections.abc import Sequence

from gridnode.logic.placement import Member


def some_members(count: int) -> list[Member]:
    """``count`` members with room, all at one place (no distance rule applies)."""
    return [
        Member(node_id=os.urandom(32), lat=47.0, lon=8.0, free_bytes=10**12) for _ in range(count)
    ]


class CountingGossip:
    """A stand-in for the gossip actor that counts how often the member list is built."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.version = 1
        self.built = 0

    def view(self) -> tuple[int, Sequence[Member]]:
        self.built += 1
        return self.version, list(self.members)
