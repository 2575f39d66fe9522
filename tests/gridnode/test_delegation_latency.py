"""How soon a delegate acts once its owner and a holder are gone: on the owner's delay,
whatever the delegate's own.

A node's repairer ticks and settles by its own ``repair_after_s`` (the shipped week:
60 s ticks, a 20 s settle), and any member may be chosen as a delegate, the grid's
authority among them.  Such a delegate once napped out the 60 s tick it began before the
capability came, then settled 20 s more, and rebuilt the packets of an owner that asked
for one second a minute or more late (the delegated-repair test, one run in ten).

The repairer runs under trio's mock clock, its worker-thread calls inline, so the times
below are exact: virtual seconds, not a measurement of this machine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from gridnode.delegation import Repairer, build_capability
from gridnode.errors import PeerGone
from gridnode.identity import NodeIdentity
from gridnode.storage.records import ChunkRecord
from protocol._messages import GrantRepair, RepairGranted

from .delegates import signed_chunk

NOW = 1_800_000_000.0
#: The owner's delay, and the tick the repairer takes for it (a quarter of it).
OWNER_AFTER_S = 1.0
OWNER_TICK_S = 0.25


@pytest.fixture
def inline_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker-thread calls run on the loop: the mock clock jumps whenever every task is
    blocked, which a task waiting on a thread is, so real threads would let virtual time
    run ahead of the repairer's work."""

    async def run_sync(fn: Callable[..., Any], *args: Any, **_: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args)

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync)


async def test_a_delegate_with_a_long_delay_of_its_own_repairs_on_the_owners(
    autojump_clock: trio.testing.MockClock, inline_threads: None, tmp_path: Path
) -> None:
    owner, delegate = NodeIdentity.generate(), NodeIdentity.generate()
    holders = [NodeIdentity.generate() for _ in range(4)]
    chunk = signed_chunk(holders)
    here = {owner.node_id, delegate.node_id, *(h.node_id for h in holders)}
    attempts: list[tuple[float, frozenset[bytes]]] = []
    attempted = trio.Event()

    async def fetch(_chunk: ChunkRecord, skip: frozenset[bytes]) -> Any:
        """The first repair attempt is what is timed; the holders are not really there."""
        attempts.append((trio.current_time(), skip))
        attempted.set()
        raise PeerGone("no holder in this test")

    async def never(*_: Any) -> Any:
        raise AssertionError("nothing is stored before a fetch succeeds")

    # What gridnode.node passes a node whose repair_after_s is the shipped week and whose
    # gossip syncs every 5 s (the harness's): 60 s ticks, a 20 s settle.
    repairer = Repairer(
        identity=delegate,
        home=tmp_path,
        present=lambda: set(here),
        members=list,
        fetch=fetch,
        link_for=never,
        store_local=never,
        cpu_limiter=trio.CapacityLimiter(1),
        after_s=7 * 86400.0,
        tick_s=60.0,
        settle_s=20.0,
        clock=lambda: NOW + trio.current_time(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(repairer.run)
        await trio.sleep(5)  # holding nothing, it naps its own 60 s tick
        cap = build_capability(
            owner,
            delegate.node_id,
            [chunk],
            now=repairer.clock(),
            lease_s=3600.0,
            lat=None,
            lon=None,
            after_s=OWNER_AFTER_S,
            threshold=1,
        )
        answer = await repairer.serve(
            GrantRepair(request_id=1, capability=cap.seal(owner.signing_key)), owner.node_id
        )
        assert isinstance(answer, RepairGranted) and not answer.missing
        await trio.sleep(3)  # a few ticks see everyone there
        assert not attempts
        # The owner and one holder of its chunk go.
        here -= {owner.node_id, holders[0].node_id}
        left = trio.current_time()
        with trio.move_on_after(120):
            await attempted.wait()
        nursery.cancel_scope.cancel()
    assert attempts, "no repair attempt within 120 s of the owner and a holder going"
    at, skip = attempts[0]
    assert holders[0].node_id in skip
    # Gone after the owner's second, seen so by the tick after: well under two seconds
    # (before: the nap's end, some 57 s on, and the 20 s settle after it).
    assert at - left <= OWNER_AFTER_S + 2 * OWNER_TICK_S, at - left
