"""What a running node tells its operator unasked: a periodic summary line, and a warning
when its allocation is full.

``node_summary`` (at info, every ``summary_interval_s``; 0 turns it off) carries the
figures one looks for first in a node's log: members by state, sessions, packets and
bytes held, free bytes of the allocation, jobs ended and failed since the start, the age
of the newest complete backup and the repairs done.  The same figures are what the
Prometheus endpoint serves (``gridnode.metrics`` reads them from here), so a log and a
graph never disagree.

``allocation_full`` (at warning) is logged once when the packet store starts refusing
packets or recovery roots for lack of room, and not again until the allocation has room
again (``allocation_has_room``, at info): a full node refuses every packet offered, and a
line for each would drown the log.  The packet store counts its refusals
(``store_refused_full``, ``roots_refused_full``); they are read here every
``ALLOCATION_CHECK_S`` rather than logged where they happen, so the store's hot path
stays free of log calls.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

from .log import get_logger

if TYPE_CHECKING:
    from .actors.gossip import Gossiper
    from .actors.packet_store import PacketStore
    from .actors.request import RequestActor
    from .job_services import Services
    from .storage.packets import PacketDirectory
    from .transport import Transport

__all__ = [
    "ALLOCATION_CHECK_S",
    "MEMBER_STATES",
    "AllocationWatch",
    "SummaryNode",
    "last_backup_age_s",
    "members_by_state",
    "run_reporting",
    "summary_fields",
]

_log = get_logger(actor="summary")

#: Seconds between reads of the packet store's refusal counters.
ALLOCATION_CHECK_S: Final = 1.0
#: Room that must come back (a share of the allocation, at least 1 MiB) before a full
#: allocation counts as having room again: freeing one packet is not the end of it.
ROOM_AGAIN_FRACTION: Final = 0.01
#: The membership states, each always reported (a zero is a figure too).
MEMBER_STATES: Final = ("alive", "suspect", "dead", "left")
#: The packet store's counters of refusals for lack of room.
_FULL_COUNTERS: Final = ("store_refused_full", "roots_refused_full")


class SummaryNode(Protocol):
    """What the summary reads of the node (``gridnode.node.Node`` has it all); named here
    so this module does not import the node that starts it."""

    packets: PacketDirectory
    transport: Transport
    gossiper: Gossiper | None
    request: RequestActor
    packet_store: PacketStore
    services: Services


def members_by_state(node: SummaryNode) -> dict[str, int]:
    """Members this node knows (itself not included), by membership state."""
    counts = dict.fromkeys(MEMBER_STATES, 0)
    if node.gossiper is not None:
        for view in node.gossiper.members():
            counts[view.state] = counts.get(view.state, 0) + 1
    return counts


async def last_backup_age_s(services: Services) -> float | None:
    """Seconds since this node's newest complete snapshot finished (None: none yet)."""
    snapshots = await services.db(services.catalog.snapshots)
    finished = [s.finished for s in snapshots if s.complete and s.finished]
    return time.time() - max(finished) if finished else None


def summary_fields(node: SummaryNode, backup_age_s: float | None) -> dict[str, Any]:
    """The ``node_summary`` line's fields (plain numbers: nothing secret, nothing long)."""
    stats = node.packets.statistics()
    members = members_by_state(node)
    request = node.request
    return {
        **{f"members_{state}": count for state, count in members.items()},
        "sessions": len(node.transport.links()),
        "packets_held": stats.packet_count,
        "bytes_held": stats.used_bytes,
        "free_bytes": stats.free_bytes,
        "jobs_running": request.running,
        "jobs_run": request.jobs_ended("ok") + request.jobs_ended("failed"),
        "jobs_failed": request.jobs_ended("failed"),
        "last_backup_age_s": None if backup_age_s is None else round(backup_age_s, 1),
        "repairs": request.repairs.get("runs", 0),
        "chunks_repaired": request.repairs.get("chunks_repaired", 0),
    }


@attrs.define
class AllocationWatch:
    """Logs ``allocation_full`` once per spell of refusals (see the module docstring)."""

    node: SummaryNode
    #: Refusals counted when last checked.
    seen: int = 0
    #: Free bytes when the warning was logged (None: no warning standing).
    warned_free: int | None = None

    def refusals(self) -> int:
        stats = self.node.packet_store.stats
        return sum(stats.get(name, 0) for name in _FULL_COUNTERS)

    def check(self) -> None:
        refused = self.refusals()
        stats = self.node.packets.statistics()
        if self.warned_free is None:
            if refused > self.seen:
                self.warned_free = stats.free_bytes
                _log.warning(
                    "allocation_full",
                    allocated_bytes=stats.allocation_bytes,
                    used_bytes=stats.used_bytes,
                    free_bytes=stats.free_bytes,
                    refused=refused,
                    message="packets offered to this node are refused for lack of room: "
                    "raise --allocate or free space",
                )
        else:
            room = max(int(stats.allocation_bytes * ROOM_AGAIN_FRACTION), 1 << 20)
            if stats.free_bytes >= self.warned_free + room:
                self.warned_free = None
                _log.info("allocation_has_room", free_bytes=stats.free_bytes)
        self.seen = refused

    async def run(self) -> None:
        self.seen = self.refusals()
        while True:
            await trio.sleep(ALLOCATION_CHECK_S)
            self.check()


async def _summarise(node: SummaryNode, interval_s: float) -> None:
    while True:
        await trio.sleep(interval_s)
        try:
            age = await last_backup_age_s(node.services)
            _log.info("node_summary", **summary_fields(node, age))
        except Exception:  # a diagnostic line must never stop the node it describes
            _log.warning("node_summary_failed", exc_info=True)


async def run_reporting(
    node: SummaryNode,
    interval_s: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The summary line every ``interval_s`` (0: none) and the allocation watch, until
    cancelled with the node."""
    async with trio.open_nursery() as nursery:
        if interval_s > 0:
            nursery.start_soon(_summarise, node, interval_s)
        nursery.start_soon(AllocationWatch(node).run)
        task_status.started()
