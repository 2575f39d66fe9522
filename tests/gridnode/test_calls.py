"""The actor call (``gridnode.actors.calls``): answers, failures, backpressure, give-ups.

``call`` puts a command in an actor's inbox without a checkpoint when there is room and
waits on a one-shot ``Reply``; ``serve_calls`` takes commands without a checkpoint
while it has free slots (issue 11: a target makes one call per packet it stores).  These
tests hold the contract those shortcuts must keep: at most ``concurrency`` handlers at
once, a full inbox makes callers wait, a caller that gives up leaves the actor serving,
an answer is delivered exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from gridnode.actors.calls import Call, Handlers, Outbox, Reply, Request, call, serve_calls


@attrs.frozen
class Double(Request[int]):
    value: int


@asynccontextmanager
async def actor(
    handler: Callable[[Double], Awaitable[int]], *, concurrency: int = 4, inbox: int = 16
) -> AsyncIterator[tuple[Outbox, trio.Nursery]]:
    send, receive = trio.open_memory_channel[Call[Request[Any]]](inbox)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_calls(
                receive,
                Handlers("test").on(Double, handler),
                concurrency=concurrency,
                task_status=task_status,
            )
        )
        yield send, nursery
        nursery.cancel_scope.cancel()


async def test_an_answer_and_a_failure_reach_the_caller() -> None:
    async def handler(cmd: Double) -> int:
        if cmd.value < 0:
            raise ValueError("negative")
        return cmd.value * 2

    async with actor(handler) as (outbox, _):
        assert [await call(outbox, Double(i)) for i in range(5)] == [0, 2, 4, 6, 8]
        with pytest.raises(ValueError, match="negative"):
            await call(outbox, Double(-1))
        assert await call(outbox, Double(21)) == 42  # the actor still serves


async def test_at_most_concurrency_handlers_run_at_once() -> None:
    running = 0
    most = 0
    release = trio.Event()

    async def handler(cmd: Double) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return cmd.value * 2

    answers: list[int] = []
    async with actor(handler, concurrency=2) as (outbox, nursery):

        async def ask(value: int) -> None:
            answers.append(await call(outbox, Double(value)))

        for value in range(5):
            nursery.start_soon(ask, value)
        await trio.testing.wait_all_tasks_blocked()
        assert running == 2  # three calls wait in the inbox for a slot
        release.set()
        while len(answers) < 5:
            await trio.testing.wait_all_tasks_blocked()
    assert most == 2
    assert sorted(answers) == [0, 2, 4, 6, 8]


async def test_a_full_inbox_makes_callers_wait_not_fail() -> None:
    release = trio.Event()

    async def handler(cmd: Double) -> int:
        await release.wait()
        return cmd.value * 2

    answers: list[int] = []
    # One slot and an inbox of one: the first call runs, the actor holds the second
    # until the slot frees, the third fills the inbox and the fourth must wait.
    async with actor(handler, concurrency=1, inbox=1) as (outbox, nursery):

        async def ask(value: int) -> None:
            answers.append(await call(outbox, Double(value)))

        for value in range(4):
            nursery.start_soon(ask, value)
        await trio.testing.wait_all_tasks_blocked()
        assert outbox.statistics().tasks_waiting_send == 1
        release.set()
        while len(answers) < 4:
            await trio.testing.wait_all_tasks_blocked()
    assert sorted(answers) == [0, 2, 4, 6]


async def test_a_caller_that_gives_up_leaves_the_actor_serving() -> None:
    release = trio.Event()
    finished: list[int] = []

    async def handler(cmd: Double) -> int:
        if cmd.value == 1:
            await release.wait()
        finished.append(cmd.value)
        return cmd.value * 2

    async with actor(handler) as (outbox, _):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                inner.start_soon(call, outbox, Double(1))
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()  # the caller goes away while its handler runs
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert finished == [1]  # answered into the void, without harm
        assert await call(outbox, Double(2)) == 4


async def test_a_reply_is_delivered_once_whenever_it_comes() -> None:
    early = Reply()
    early.send_nowait("first")
    early.send_nowait("second")  # a second answer is dropped
    assert await early.wait() == "first"
    with pytest.raises(RuntimeError):
        await early.wait()

    late = Reply()
    async with trio.open_nursery() as nursery:
        got: list[object] = []

        async def waiter() -> None:
            got.append(await late.wait())

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        late.send_nowait("answer")
    assert got == ["answer"]

    abandoned = Reply()
    with trio.move_on_after(0):  # gives up at once
        await abandoned.wait()
    abandoned.send_nowait("too late")  # nobody waits: dropped, no error


async def test_closing_the_inbox_ends_the_actor_after_its_calls() -> None:
    send, receive = trio.open_memory_channel[Call[Request[Any]]](4)

    async def handler(cmd: Double) -> int:
        return cmd.value * 2

    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def run_actor() -> None:
            await serve_calls(receive, Handlers("test").on(Double, handler), concurrency=2)
            done.set()

        nursery.start_soon(run_actor)
        assert await call(send, Double(3)) == 6
        await send.aclose()
        await done.wait()
