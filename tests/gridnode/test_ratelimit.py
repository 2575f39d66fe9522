"""The packet store's uploads keep to the subscription's bandwidth allocation."""

from __future__ import annotations

import trio
import trio.testing

from gridnode.ratelimit import RateLimiter

MB = 1_000_000


async def _send(limiter: RateLimiter, sizes: list[int]) -> float:
    start = trio.current_time()
    for size in sizes:
        await limiter.take(size)
    return trio.current_time() - start


def test_a_long_transfer_settles_at_the_allotted_rate() -> None:
    async def main() -> None:
        limiter = RateLimiter(lambda: 8 * MB)  # 8 Mbit/s: 1 MB/s
        # 20 MB in 1 MB packets: a second's worth goes at once (the bucket, and one
        # packet on credit), the other 18 MB at 1 MB/s.
        elapsed = await _send(limiter, [MB] * 20)
        assert 17.9 <= elapsed <= 18.1
        # A packet larger than the bucket is let through, and the next one pays for it.
        limiter = RateLimiter(lambda: 8 * MB)
        assert await _send(limiter, [5 * MB]) == 0
        assert 3.9 <= await _send(limiter, [1]) <= 4.1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_no_allocation_means_no_limit_and_a_new_one_applies_at_once() -> None:
    async def main() -> None:
        rate: list[int | None] = [None]
        limiter = RateLimiter(lambda: rate[0])
        assert await _send(limiter, [100 * MB] * 10) == 0
        rate[0] = 80 * MB  # 10 MB/s from now on
        assert 7.9 <= await _send(limiter, [10 * MB] * 10) <= 8.1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
