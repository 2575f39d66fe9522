"""A token bucket for the packet store's uploads: the subscription's bandwidth allocation.

The certificate allots each node a rate (``bandwidth_bps``, in bits per second; claims
22-25, 35) and the packet store keeps its uploads to it.  The bucket holds one second of
traffic, so a short burst goes out at once and a long transfer settles at the rate; a
packet larger than the bucket is let through and paid for afterwards (the next sender
waits), so no packet size can block the store.  The rate is read on every take: a
renewed certificate with another allotment applies at once.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, rate_bps: Callable[[], int | None]) -> None:
        """``rate_bps()``: the allowed rate in bits per second (None or 0: unlimited)."""
        self._rate_bps = rate_bps
        self._tokens = 0.0  # bytes that may go now (negative: debt to wait off)
        self._stamp: float | None = None
        self._lock = trio.Lock()  # one waiter at a time: fair, first come first served
        self.waited_s = 0.0

    async def take(self, size: int) -> None:
        rate = self._rate_bps()
        if not rate:
            return
        per_second = rate / 8
        async with self._lock:
            now = trio.current_time()
            if self._stamp is None:
                self._tokens = per_second
            else:
                self._tokens = min(per_second, self._tokens + (now - self._stamp) * per_second)
            self._stamp = now
            if self._tokens < 0:  # pay off what earlier large packets borrowed
                wait = -self._tokens / per_second
                self.waited_s += wait
                await trio.sleep(wait)
                self._tokens = 0.0
                self._stamp = trio.current_time()
            self._tokens -= size
