"""Dialling by address reaches the node meant: real websockets on 127.0.0.1, several
Transports in one process."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from gridnode.errors import PeerGone
from gridnode.identity import NodeIdentity
from gridnode.transport import Transport

from .test_transport import Handler, settings


def _transport(port: int = 0, **kwargs: Any) -> Transport:
    return Transport(
        identity=NodeIdentity.generate(),
        settings=settings(listen_port=port),
        handler=Handler(),
        **kwargs,
    )


async def test_a_claimed_listen_address_does_not_redirect_a_dial() -> None:
    """An impostor that dials us claiming a seed's address is not where the seed's dials go;
    after the first contact the seed's address is bound to the node met there."""
    victim, seed = _transport(), _transport()
    seed_scope = trio.CancelScope()
    seed_stopped = trio.Event()

    async def run_seed(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with seed_scope:
                await seed.run(task_status=task_status)
        finally:
            seed_stopped.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(victim.run)
        await nursery.start(run_seed)
        impostor = _transport(advertised_address=seed.address)
        await nursery.start(impostor.run)
        await impostor.connect(victim.address)
        with trio.fail_after(5):
            while victim.link(impostor.identity.node_id) is None:
                await trio.sleep(0.01)

        link = await victim.connect(seed.address)
        assert link.peer_id == seed.identity.node_id
        assert (await victim.connect(seed.address)) is link

        # The seed's process is gone; another node now listens on its address.
        await link.aclose("goodbye", "test")
        seed_scope.cancel()
        with trio.fail_after(5):
            await seed_stopped.wait()
        squatter = _transport(port=seed.port)
        await nursery.start(squatter.run)
        assert squatter.address == seed.address
        with pytest.raises(PeerGone, match="not"):
            await victim.connect(seed.address)
        # A caller that names the node it wants still reaches whoever that is.
        other = await victim.connect(seed.address, expect=squatter.identity.node_id)
        assert other.peer_id == squatter.identity.node_id
        for transport in (victim, impostor, squatter):
            await transport.close_all()
        nursery.cancel_scope.cancel()
