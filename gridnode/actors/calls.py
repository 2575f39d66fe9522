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

Cost: a target answers every packet it stores through one call, so a call's own cost
is per packet (issue 11).  The reply is a one-shot ``Reply`` (the waiting task is woken
with the answer) rather than a memory channel, and neither side yields where trio's
channel and semaphore would checkpoint although nothing has to wait: the caller only
yields to wait for the answer, ``serve_calls`` only when its inbox is empty or every
slot is taken (so at most ``concurrency`` calls are taken in without yielding).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, Never, TypeVar

import attrs
import outcome
import trio

__all__ = ["Call", "Handlers", "Inbox", "Outbox", "Reply", "Request", "call", "serve_calls"]

R = TypeVar("R")
T = TypeVar("T")


class Request(Generic[R]):
    """Base of every command an actor answers; ``R`` is the type of the answer."""

    __slots__ = ()


class Reply:
    """Where an answer goes: the one task that waits for it, woken with it.

    A memory channel per call allocated two channels and a state, and closing it was one
    more checkpoint (issue 11: a target makes a call per packet it stores).  The answer
    is delivered once: one that comes before the wait is kept for it, one that comes
    after the waiter stopped waiting (cancelled, timed out) is dropped, as a closed
    channel's was.
    """

    __slots__ = ("_answered", "_task", "_value", "_waited")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._value: object = None
        self._answered = False
        self._waited = False

    def send_nowait(self, value: object) -> None:
        """Hand over ``value``: to the waiting task, or kept until it waits; dropped
        when the waiter gave up, or when an answer was handed over already."""
        if self._answered:
            return
        self._answered = True
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Value(value))
        elif not self._waited:
            self._value = value

    async def wait(self) -> object:
        """The answer, once it is there (one wait per reply)."""
        if self._waited:
            raise RuntimeError("a reply is waited for once")
        self._waited = True
        if self._answered:
            await trio.lowlevel.checkpoint()
            value, self._value = self._value, None
            return value
        self._task = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._task = None  # a late answer finds nobody and is dropped
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)


@attrs.frozen
class Call(Generic[T]):
    payload: T
    reply: Reply


#: The sending side of an actor's inbox (what callers hold), and its receiving side.
Outbox = trio.MemorySendChannel[Call[Request[Any]]]
Inbox = trio.MemoryReceiveChannel[Call[Request[Any]]]


@attrs.frozen
class _Failure:
    error: Exception


async def call(channel: Outbox, payload: Request[R]) -> R:
    """Send ``payload`` to an actor and wait for its answer; the actor's exception is
    re-raised here, in the caller."""
    reply = Reply()
    item = Call(payload, reply)
    try:
        channel.send_nowait(item)
    except trio.WouldBlock:  # the actor's inbox is full: wait for room (backpressure)
        await channel.send(item)
    result = await reply.wait()
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
            item.reply.send_nowait(result)
        finally:
            limiter.release()

    async with inbound, trio.open_nursery() as nursery:
        task_status.started()
        while True:
            try:
                item = inbound.receive_nowait()
            except trio.WouldBlock:
                try:
                    item = await inbound.receive()
                except trio.EndOfChannel:
                    return
            except trio.EndOfChannel:
                return
            try:
                limiter.acquire_nowait()
            except trio.WouldBlock:  # every slot taken: wait for a call to finish
                await limiter.acquire()
            nursery.start_soon(one, item)
