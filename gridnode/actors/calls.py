"""The one pattern every actor uses to answer commands: a call with a one-shot reply.

An actor reads ``Call`` objects from its bounded inbound channel.  The caller waits on
the call's private reply channel (size 1, style.md 8.2), so request/response inside the
node needs no shared state and no locks.  ``serve_calls`` runs each call in a child task
under a concurrency limit: a slow disk or peer holds a slot, the inbound channel fills,
and the callers block: backpressure instead of a growing queue.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import attrs
import trio

__all__ = ["Call", "call", "serve_calls"]

T = TypeVar("T")


@attrs.frozen
class Call(Generic[T]):
    payload: T
    reply: trio.MemorySendChannel[Any]


async def call(channel: trio.MemorySendChannel[Call[Any]], payload: Any) -> Any:
    """Send ``payload`` to an actor and wait for its answer; the actor's exception is re-raised."""
    send, receive = trio.open_memory_channel[Any](1)
    async with receive:
        await channel.send(Call(payload, send))
        result = await receive.receive()
    if isinstance(result, _Failure):
        raise result.error
    return result


@attrs.frozen
class _Failure:
    error: Exception


async def serve_calls(
    inbound: trio.MemoryReceiveChannel[Call[Any]],
    handle: Callable[[Any], Awaitable[Any]],
    *,
    concurrency: int,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer calls until the channel closes (EndOfChannel) or the scope is cancelled."""
    limiter = trio.Semaphore(concurrency)

    async def one(item: Call[Any]) -> None:
        try:
            try:
                result: Any = await handle(item.payload)
            except Exception as exc:  # delivered to the caller, who decides; never lost
                result = _Failure(exc)
            # The caller may have been cancelled and gone away: nobody to tell.
            with contextlib.suppress(trio.BrokenResourceError, trio.WouldBlock):
                item.reply.send_nowait(result)
        finally:
            limiter.release()

    async with inbound, trio.open_nursery() as nursery:
        task_status.started()
        async for item in inbound:
            await limiter.acquire()
            nursery.start_soon(one, item)
