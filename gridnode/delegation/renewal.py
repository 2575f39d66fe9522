"""A delegate renews the leases of an owner that is away (issue 10 with issue 15).

Holders keep a packet while its lease runs (``gridnode.leases``).  An owner renews its
own; an owner that is away for longer than a lease would lose everything, which is the
day delegated repair exists for (the source destroyed, its user recovering from the key).
So a delegate holding the owner's capability renews, while the owner is out of the view,
the leases of every packet in the map (each packet's owner tag is in it): repair and
leases outlive the source together, up to the hand-on horizon the owner signed.  A
renewal never creates a lease, so a delegate cannot keep alive what the owner released.

The map is read a part at a time off the event loop; each holder gets batches of at most
``MAX_LEASES_PER_MESSAGE`` leases, holders away are left for the next round.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from protocol import (
    MAX_LEASE_S,
    MAX_LEASES_PER_MESSAGE,
    LeaseRef,
    LeasesRenewed,
    Message,
    RenewLeases,
)

from ..errors import PeerError
from .held_map import HeldMap

__all__ = ["renew_owner_leases"]


def _leases_by_holder(held_map: HeldMap, here: set[bytes]) -> dict[bytes, list[LeaseRef]]:
    """Every packet of the map (moves applied) by holder, for the holders in ``here``."""
    out: dict[bytes, list[LeaseRef]] = defaultdict(list)
    for chunk in held_map.chunks():
        for packet in chunk.packets:
            if packet.target in here:
                out[packet.target].append(
                    LeaseRef(packet_id=packet.packet_id, owner_tag=packet.owner_tag)
                )
    return out


async def renew_owner_leases(
    held_map: HeldMap,
    *,
    here: set[bytes],
    link_for: Callable[[bytes], Awaitable[Any]],
    lease_s: float,
    cpu_limiter: trio.CapacityLimiter,
    own: bytes,
    local: Callable[[Message], Awaitable[Message]],
    timeout_s: float = 30.0,
) -> dict[str, int]:
    """Renew the leases of every packet in ``held_map`` on the holders in ``here``
    (``own``'s through ``local``: a delegate may hold some of the owner's packets and has
    no session to itself); returns the leases renewed, unknown to their holder (lost)
    and left for later."""
    by_holder = await trio.to_thread.run_sync(
        _leases_by_holder, held_map, here, limiter=cpu_limiter
    )
    tally = {"leases_renewed": 0, "leases_lost": 0, "leases_skipped": 0}
    duration = int(min(lease_s, MAX_LEASE_S))
    for holder, leases in by_holder.items():
        for start in range(0, len(leases), MAX_LEASES_PER_MESSAGE):
            batch = tuple(leases[start : start + MAX_LEASES_PER_MESSAGE])
            try:
                if holder == own:
                    answer = await local(
                        RenewLeases(request_id=0, leases=batch, duration_s=duration)
                    )
                else:
                    link = await link_for(holder)
                    answer = await link.request(
                        lambda rid, b=batch: RenewLeases(
                            request_id=rid, leases=b, duration_s=duration
                        ),
                        timeout_s=timeout_s,
                    )
            except PeerError:  # away, or of a protocol without leases: next round
                tally["leases_skipped"] += len(leases) - start
                break
            if not isinstance(answer, LeasesRenewed):
                tally["leases_skipped"] += len(leases) - start
                break
            renewed = sum(1 for end in answer.expires if end)
            tally["leases_renewed"] += renewed
            tally["leases_lost"] += len(batch) - renewed
    return tally
