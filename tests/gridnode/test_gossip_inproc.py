"""The gossip actor on real sessions: in-process nodes on 127.0.0.1 (tests/gridnode/inproc.py)."""

from __future__ import annotations

from pathlib import Path

import trio

from protocol import GossipUpdates, MemberUpdate, sign_claim

from .inproc import open_grid


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
