"""The one pattern every actor uses to answer commands: a typed call with a one-shot reply.

An actor reads ``Call`` objects from its bounded inbound channel.  The caller waits on
the call's private reply channel (size 1, style.md 8.2), so request/response inside the
node needs no shared state and no locks.  ``serve_calls`` runs each call in a child task
under a concurrency limit: a slow disk or peer holds a slot, the inbound channel fills,
and the callers block: backpressure instead of a growing queue.

Every command is a ``Request[R]``: ``R`` is the type of its answer.  ``call`` returns
exactly ``R``, and an actor registers one handler per command kind with ``Handlers.on``,
whose return type mypy checks against the command's ``R`` (``Request`` is invariant in
``R``).  So mypy follows a value across every seam, from ``gridnode backup`` to a
target's disk, with no ``Any`` in between.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Never, TypeVar

import attrs
import trio

__all__ = ["Call", "Handlers", "Inbox", "Outbox", "Request", "call", "serve_calls"]

R = TypeVar("R")
T = TypeVar("T")


class Request(Generic[R]):
    """Base of every command an actor answers; ``R`` is the type of the answer."""

    __slots__ = ()


@attrs.frozen
class Call(Generic[T]):
    payload: T
    reply: trio.MemorySendChannel[object]


#: The sending side of an actor's inbox (what callers hold), and its receiving side.
Outbox = trio.MemorySendChannel[Call[Request[Any]]]
Inbox = trio.MemoryReceiveChannel[Call[Request[Any]]]


@attrs.frozen
class _Failure:
    error: Exception


async def call(channel: Outbox, payload: Request[R]) -> R:
    """Send ``payload`` to an actor and wait for its answer; the actor's exception is
    re-raised here, in the caller."""
    send, receive = trio.open_memory_channel[object](1)
    async with receive:
        await channel.send(Call(payload, send))
        result = await receive.receive()
    if isinstance(result, _Failure):
        raise result.error
    return result  # type: ignore[return-value]  # Handlers.on checked it against R


class Handlers:
    """An actor's handlers, one per command kind: ``on(Kind, fn)`` accepts only an
    ``fn`` whose answer is ``Kind``'s ``R``."""

    def __init__(self, actor: str) -> None:
        self.actor = actor
        self._by_kind: dict[type, Callable[[Any], Awaitable[object]]] = {}

    def on(self, kind: type[Request[R]], fn: Callable[[Never], Awaitable[R]]) -> Handlers:
        self._by_kind[kind] = fn
        return self

    async def __call__(self, payload: Request[Any]) -> object:
        fn = self._by_kind.get(type(payload))
        if fn is None:
            raise TypeError(f"{self.actor} cannot handle {type(payload).__name__}")
        return await fn(payload)


async def serve_calls(
    inbound: Inbox,
    handle: Callable[[Request[Any]], Awaitable[object]],
    *,
    concurrency: int,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer calls until the channel closes (EndOfChannel) or the scope is cancelled."""
    limiter = trio.Semaphore(concurrency)

    async def one(item: Call[Request[Any]]) -> None:
        try:
            try:
                result: object = await handle(item.payload)
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
