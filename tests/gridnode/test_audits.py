"""Storage audits on real nodes (issue 10): honest holders pass, a holder that lost or
rotted its packets fails and is scored down, a holder that never answers is missed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from gridnode.audit import AUDITS_FILE, NOT_HELD, Auditor, AuditScores
from gridnode.errors import RemoteError
from gridnode.node import Node
from protocol import AuditPacket, Message, format_node_id

from .inproc import open_grid


def write_tree(root: Path) -> Path:
    tree = root / "tree"
    tree.mkdir(parents=True)
    (tree / "random.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (tree / "notes.txt").write_text("audit me " * 4000)
    return tree


def _auditor(node: Node) -> Auditor:
    assert node.auditor is not None
    return node.auditor


def _by_id(grid: Any) -> dict[bytes, Node]:
    return {node.identity.node_id: node for node in grid.nodes}


def _drop_all(node: Node) -> int:
    """Silently delete every packet file (the holder's own books still list them)."""
    ids = list(node.packets.iter_ids())
    for packet_id in ids:
        node.packets.path_for(packet_id).unlink()
    return len(ids)


def _rot_all(node: Node) -> int:
    """Flip one byte in the middle of every packet file."""
    ids = list(node.packets.iter_ids())
    for packet_id in ids:
        path = node.packets.path_for(packet_id)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))
    return len(ids)


async def test_honest_holders_pass_and_lost_or_rotten_packets_fail(tmp_path: Path) -> None:
    tree = write_tree(tmp_path)
    settings = {"audit_interval_s": 0}  # rounds run by hand, below
    async with open_grid(tmp_path / "grid", 4, settings=settings) as grid:
        source = grid.nodes[0]
        await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        auditor = _auditor(source)
        auditor.batch = 30
        outcomes = await auditor.audit_round()
        assert outcomes and set(outcomes.values()) == {"passed"}, outcomes
        holders = sorted(source.catalog.holders())
        assert len(holders) == 3
        assert {t.holder for t in outcomes} == set(holders)
        assert all(auditor.scores.score(h) == 1.0 for h in holders)

        # Refusals name what is wrong: a packet not held, a chunk the packet lacks.
        target = next(iter(outcomes))
        link = await source.link_for(target.holder)
        with pytest.raises(RemoteError) as refused:
            await link.request(
                lambda rid: AuditPacket(request_id=rid, packet_id=bytes(32), index=0)
            )
        assert refused.value.code == NOT_HELD
        with pytest.raises(RemoteError) as refused:
            await link.request(
                lambda rid: AuditPacket(request_id=rid, packet_id=target.packet_id, index=8000)
            )
        assert refused.value.code == "bad_index"

        nodes = _by_id(grid)
        dropper, rotter, honest = (nodes[h] for h in holders)
        assert _drop_all(dropper) > 0
        assert _rot_all(rotter) > 0
        # Which packets a round samples is random, so a holder may be asked little in
        # one round: rounds go on (a bounded number) until both are under 0.5.
        for _ in range(8):
            await auditor.audit_round()
            if max(auditor.scores.score(n.identity.node_id) for n in (dropper, rotter)) < 0.5:
                break

        scores = auditor.scores.holders
        assert scores[dropper.identity.node_id].failed > 0
        assert scores[rotter.identity.node_id].failed > 0
        assert scores[honest.identity.node_id].failed == 0
        assert auditor.scores.score(dropper.identity.node_id) < 0.5
        assert auditor.scores.score(rotter.identity.node_id) < 0.5
        assert auditor.scores.score(honest.identity.node_id) == 1.0
        # The rotten packets were found by the holder's own check and set aside.
        assert rotter.packets.statistics().quarantined_count > 0

        status = await grid.call(0, "status")
        audits = {entry["node_id"]: entry for entry in status["audits"]}
        assert set(audits) == {format_node_id(h) for h in holders}
        entry = audits[format_node_id(dropper.identity.node_id)]
        assert entry["failed"] > 0 and entry["missed"] == 0 and entry["score"] < 0.5
        assert {"passed", "failed", "missed", "score"} <= set(entry)
        json.dumps(status)

        # Kept in the home, so a restart keeps the record.
        kept = AuditScores.load(source.config.home / AUDITS_FILE)
        assert kept.status() == auditor.scores.status()


class Silent:
    """A holder that never answers an audit (everything else is served)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def handle_request(self, link: Any, msg: Message, digest: bytes | None) -> Message:
        if isinstance(msg, AuditPacket):
            await trio.sleep_forever()
        return await self.node.handle_request(link, msg, digest)

    def handle_oneway(self, link: Any, msg: Message) -> None:
        self.node.handle_oneway(link, msg)


async def test_a_holder_that_never_answers_is_missed_and_audits_run_unattended(
    tmp_path: Path,
) -> None:
    tree = write_tree(tmp_path)
    silent: list[Silent] = []

    def wrap(node: Node) -> Any:
        if node.config.home.name == "n1":
            silent.append(Silent(node))
            return silent[0]
        return node

    settings = {"audit_interval_s": 0.3, "audit_batch": 12, "request_timeout_s": 2.0}
    async with open_grid(tmp_path / "grid", 4, settings=settings, wrap_handler=wrap) as grid:
        source = grid.nodes[0]
        await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        auditor = _auditor(source)
        quiet = silent[0].node.identity.node_id
        others = set(source.catalog.holders()) - {quiet}
        with trio.fail_after(30):  # no command: the auditor's own rounds
            while (
                auditor.scores.holders.get(quiet) is None
                or auditor.scores.holders[quiet].missed < 2
                or not others <= set(auditor.scores.holders)
            ):
                await trio.sleep(0.1)
        record = auditor.scores.holders[quiet]
        assert record.passed == 0 and record.failed == 0
        assert auditor.scores.score(quiet) < 1.0
        for holder in others:
            assert auditor.scores.holders[holder].missed == 0
            assert auditor.scores.holders[holder].failed == 0
            assert auditor.scores.score(holder) == 1.0


def test_scores_weigh_recent_outcomes_and_survive_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / AUDITS_FILE
    scores = AuditScores(path)
    holder = bytes(range(32))
    for _ in range(5):
        scores.note(holder, "passed", 1.0)
    assert scores.score(holder) == 1.0
    scores.note(holder, "failed", 2.0)
    assert scores.score(holder) == 0.8
    scores.note(holder, "missed", 3.0)
    assert 0.8 > scores.score(holder) > 0.5
    scores.save()
    again = AuditScores.load(path)
    assert again.status() == scores.status()
    assert again.holders[holder].last_failure == 2.0
    assert AuditScores.load(tmp_path / "none.json").holders == {}
    path.write_text("{not json")
    assert AuditScores.load(path).holders == {}
