"""The gossip actor on real sessions: in-process nodes on 127.0.0.1 (tests/gridnode/inproc.py)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import trio
import trio.testing

from gridnode.actors import gossip as gossip_actor
from gridnode.actors.gossip import Gossiper, GossipIn
from gridnode.errors import RemoteError
from gridnode.identity import NodeIdentity
from gridnode.logic.swim import GossipConfig, Membership
from gridnode.transport import PeerLink, Transport, TransportSettings, pool
from protocol import GossipUpdates, MemberUpdate, Message, sign_claim, sign_record

from .inproc import open_grid

_GRID = os.urandom(16)
GB = 10**9


async def test_a_seed_is_the_node_met_there_and_accusations_reach_status(tmp_path: Path) -> None:
    async with open_grid(tmp_path, 2) as grid:
        seed, joiner = grid.nodes
        assert joiner.gossiper is not None
        membership = joiner.gossiper.membership
        # The joiner dialled its seed by address; the handshake named the node there.
        with trio.fail_after(5):
            while membership.seed_id(seed.transport.address) is None:
                await trio.sleep(0.02)
        assert membership.seed_id(seed.transport.address) == seed.identity.node_id

        # The seed, over its authenticated session, claims the joiner is dead: the
        # joiner refutes, and counts the false accusation where `status` shows it.
        own = membership.self_record
        proof = sign_claim(seed.identity.signing_key, own.node_id, own.incarnation, "dead")
        claim = MemberUpdate(record=own, state="dead", reporter=seed.identity.node_id, proof=proof)
        link = await seed.transport.connect(
            joiner.transport.address, expect=joiner.identity.node_id
        )
        await link.send(GossipUpdates(updates=(claim,)))
        with trio.fail_after(5):
            while membership.statistics().false_accusations < 1:
                await trio.sleep(0.02)
        assert membership.self_record.incarnation > own.incarnation
        status = await grid.call(1, "status")
        assert status["counters"]["gossip_false_accusations"] == 1
        assert status["counters"]["gossip_forged_claims"] == 0


# --- sessions: idle eviction and the cap (gridnode/transport/pool.py) --------------------------


class _Quiet:
    """A peer that answers nothing of its own: only pings (handled by the link) move."""

    async def handle_request(self, link: PeerLink, msg: Message, digest: bytes | None) -> Message:
        raise RemoteError("unsupported", msg.KIND)

    def handle_oneway(self, link: PeerLink, msg: Message) -> None:
        return None


def _transport(**settings: Any) -> Transport:
    values: dict[str, Any] = {
        "grid_id": _GRID,
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "max_frame_bytes": 1 << 20,
        "seal_payloads": False,
        "request_timeout_s": 5.0,
        **settings,
    }
    return Transport(
        identity=NodeIdentity.generate(), settings=TransportSettings(**values), handler=_Quiet()
    )


async def test_at_the_session_cap_the_quietest_session_gives_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool, "EVICTABLE_AFTER_S", 0.2)
    hub = _transport(max_sessions=2, session_idle_s=3600.0)
    peers = [_transport() for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for transport in (hub, *peers):
            await nursery.start(transport.run)
        quiet = await hub.connect(peers[0].address)
        busy = await hub.connect(peers[1].address)
        await trio.sleep(0.3)
        await busy.ping()
        newest = await hub.connect(peers[2].address)
        assert {link.peer_id for link in hub.links()} == {busy.peer_id, newest.peer_id}
        assert hub.sessions_evicted == 1
        with trio.fail_after(10):
            await quiet.closed.wait()  # retired gracefully: nothing was under way
        # The peer it was with sees it go, and either side may simply dial again.
        with trio.fail_after(10):
            while peers[0].link(hub.identity.node_id) is not None:
                await trio.sleep(0.02)
        # Both remaining sessions were active within EVICTABLE_AFTER_S: a fourth
        # session has to wait rather than thrash them.
        await busy.ping()
        await newest.ping()
        assert hub._at_capacity()
        nursery.cancel_scope.cancel()


async def test_idle_sessions_are_closed_and_dialled_again_on_demand() -> None:
    hub = _transport(session_idle_s=0.4)
    peer = _transport()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        await nursery.start(peer.run)
        first = await hub.connect(peer.address)
        await first.ping()
        with trio.fail_after(10):
            await first.closed.wait()
        assert hub.sessions_evicted == 1 and hub.links() == []
        again = await hub.connect(peer.address)
        assert again is not first
        await again.ping()
        nursery.cancel_scope.cancel()


# --- free space: republished on news, rate-limited (gridnode/actors/gossip.py) -----------------


async def _never_dials(address: str, expect: bytes | None = None) -> PeerLink:
    raise AssertionError("nothing is sent in this test")


async def test_free_space_is_republished_only_when_it_is_news(
    autojump_clock: trio.testing.MockClock,
) -> None:
    key = nacl.signing.SigningKey.generate()
    record = sign_record(key, address="127.0.0.1:1", allocated_bytes=100 * GB, free_bytes=50 * GB)
    membership = Membership(
        signing_key=key,
        self_record=record,
        config=GossipConfig(),
        rng=random.Random(1),
        now=trio.current_time(),
    )
    _, inbound = trio.open_memory_channel[GossipIn](1)
    gossiper = Gossiper(
        membership=membership,
        inbound=inbound,
        connect=_never_dials,
        link_of=lambda _: None,
        seeds=(),
    )

    def published() -> tuple[int, int]:
        own = membership.self_record
        return own.sequence, own.free_bytes

    gossiper.update_free_bytes(50 * GB - 10 * 2**20)  # a few packets: under 1% of 100 GB
    assert published() == (0, 50 * GB)
    gossiper.update_free_bytes(48 * GB)  # 2%: news, and the first in a while
    assert published() == (1, 48 * GB)
    gossiper.update_free_bytes(45 * GB)  # news again, but too soon after the last
    await trio.sleep(gossip_actor.FREE_BYTES_INTERVAL_S / 2)
    gossiper.update_free_bytes(44 * GB)
    assert published() == (1, 48 * GB)
    await trio.sleep(gossip_actor.FREE_BYTES_INTERVAL_S / 2)
    gossiper.update_free_bytes(44 * GB)
    assert published() == (2, 44 * GB)  # the latest figure wins
    # Running out is urgent: under 5% of the allocation the short interval applies.
    await trio.sleep(gossip_actor.FREE_BYTES_LOW_INTERVAL_S)
    gossiper.update_free_bytes(2 * GB)
    assert published() == (3, 2 * GB)


async def test_members_coming_and_going_are_logged_at_info(tmp_path: Path) -> None:
    """An operator running at info sees members leave (and turn suspect or dead)."""
    import io
    import json
    import sys

    from gridnode.log import configure_logging

    out = io.StringIO()
    configure_logging("info", json=True, stream=out)
    try:
        async with open_grid(tmp_path / "grid", 3) as grid:
            leaving = grid.nodes[2]
            leaving.shutdown()
            with trio.fail_after(10):
                while '"member_left"' not in out.getvalue():
                    await trio.sleep(0.05)
    finally:
        configure_logging("warning", json=False, stream=sys.__stderr__)
    entries = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    entry = next(e for e in entries if e["event"] == "member_left")
    assert entry["level"] == "info" and entry["was"] == "alive"
    assert entry["peer"] == leaving.identity.short_id
    assert entry["address"] == leaving.transport.address
