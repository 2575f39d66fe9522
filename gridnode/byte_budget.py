"""A node-wide cap on bytes in flight, shared by the packet store (uploads) and the
transport (inbound reads): a byte-counting semaphore.

It sits beside the actors rather than in them because the transport, which no actor
owns, draws on the same kind of budget.
"""

from __future__ import annotations

import trio

__all__ = ["ByteBudget"]


class ByteBudget:
    """A node-wide cap on bytes in flight (uploads, prefetched chunks).

    A semaphore counts holders; this counts bytes, so one 4 MiB packet and sixty-four
    64 KiB packets weigh the same.  A request larger than the whole budget is clipped to
    it, so it can still run alone instead of waiting forever.
    """

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = max(1, total_bytes)
        self.used_bytes = 0
        self._lot = trio.lowlevel.ParkingLot()

    async def acquire(self, size: int) -> int:
        size = min(max(size, 0), self.total_bytes)
        await trio.lowlevel.checkpoint()
        while self.used_bytes + size > self.total_bytes:
            await self._lot.park()
        self.used_bytes += size
        return size

    def grow(self, total_bytes: int) -> None:
        """Raise the cap to ``total_bytes`` (never lowers it): a window that starts small
        and widens where a consumer proves it needs more."""
        if total_bytes > self.total_bytes:
            self.total_bytes = total_bytes
            self._lot.unpark_all()

    def release(self, size: int) -> None:
        self.used_bytes -= size
        self._lot.unpark_all()
