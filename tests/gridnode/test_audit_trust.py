"""Audit scores act (issue 10): a holder whose score falls below ``audit_threshold``
after enough audits is distrusted by the source, which places nothing new on it and has
its automatic repair move its packets at once."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, cast

import pytest
import trio

import gridnode.cli
from gridnode.actors.sequencer import PlaceChunk, Sequencer
from gridnode.audit import AUDITS_FILE, MIN_AUDITS, AuditScores, TrustedView
from gridnode.logic.placement import PlacementRules, PlacementView, Source
from gridnode.repair import AutoRepair
from protocol import format_node_id

from .inproc import open_grid
from .test_audits import _rot_all, write_tree
from .views import CountingGossip, some_members

SOURCE = Source(node_id=b"s" * 32, lat=47.0, lon=8.0)


def _node(i: int) -> bytes:
    return bytes([i]) * 32


def _write_scores(path: Path, entries: dict[bytes, tuple[int, float]]) -> None:
    """An ``audits.json`` with, per holder, (failed audits, score)."""
    holders = [
        {"node_id": format_node_id(n), "passed": 0, "failed": f, "missed": 0, "score": s}
        for n, (f, s) in entries.items()
    ]
    path.write_text(json.dumps({"version": 1, "holders": holders}))


# --- who is distrusted ---------------------------------------------------------------------


def test_a_low_score_distrusts_only_after_enough_audits(tmp_path: Path) -> None:
    path = tmp_path / AUDITS_FILE
    few, enough, fine = _node(1), _node(2), _node(3)
    _write_scores(path, {few: (MIN_AUDITS - 1, 0.1), enough: (MIN_AUDITS, 0.1), fine: (5, 0.6)})
    scores = AuditScores.load(path, threshold=0.5)
    assert scores.distrusted() == {enough}
    report = {e["node_id"]: e["distrusted"] for e in scores.report()}
    assert report == {format_node_id(n): n == enough for n in (few, enough, fine)}
    # The file keeps facts only: the verdict follows the threshold configured now.
    assert all("distrusted" not in e for e in scores.status())
    # Threshold 0 turns the effect off.
    assert AuditScores.load(path, threshold=0.0).distrusted() == frozenset()


def test_failures_distrust_a_holder_and_passes_restore_it(tmp_path: Path) -> None:
    scores = AuditScores(tmp_path / AUDITS_FILE, threshold=0.5)
    holder = _node(7)
    for t in range(3):  # 1.0 -> 0.512: low, but not yet below the threshold
        scores.note(holder, "failed", float(t))
    assert scores.distrusted() == frozenset() and scores.trust_version == 0
    scores.note(holder, "failed", 3.0)  # 0.41
    assert scores.distrusted() == {holder} and scores.trust_version == 1
    scores.note(holder, "failed", 4.0)  # still distrusted: the version stays
    assert scores.trust_version == 1
    while holder in scores.distrusted():
        scores.note(holder, "passed", 5.0)
    assert scores.trust_version == 2 and scores.score(holder) >= 0.5


def test_misses_alone_never_distrust_at_the_shipped_threshold(tmp_path: Path) -> None:
    """A holder that is only off drifts towards 0.5, never below: ``repair_after_s``
    deals with it, not the audits."""
    scores = AuditScores(tmp_path / AUDITS_FILE, threshold=0.5)
    for t in range(200):
        scores.note(_node(9), "missed", float(t))
    assert scores.distrusted() == frozenset()


# --- placement -----------------------------------------------------------------------------


def _chunk(**kwargs: Any) -> PlaceChunk:
    return PlaceChunk(
        chunk_id=os.urandom(32), n=4, packet_bytes=1 << 18, rules=PlacementRules(), **kwargs
    )


def _trusted_sequencer(
    gossip: CountingGossip, scores: AuditScores
) -> tuple[Sequencer, TrustedView]:
    trusted = TrustedView(view=gossip.view, gossip_version=lambda: gossip.version, scores=scores)
    _send, receive = trio.open_memory_channel[Any](1)
    sequencer = Sequencer(
        key=b"k" * 32,
        inbound=receive,
        view=trusted.members,
        source=lambda: SOURCE,
        version=trusted.version,
    )
    return sequencer, trusted


def test_the_sequencer_places_nothing_on_distrusted_holders(tmp_path: Path) -> None:
    gossip = CountingGossip(some_members(8))
    scores = AuditScores(tmp_path / AUDITS_FILE, threshold=0.5)
    sequencer, _ = _trusted_sequencer(gossip, scores)
    chunks = [_chunk() for _ in range(40)]
    before = [sequencer.place(c) for c in chunks]
    # The holder most placed on starts failing its audits.
    bad = max((m.node_id for m in gossip.members), key=lambda n: sum(n in t for t in before))
    assert any(bad in t for t in before)
    assert gossip.built == 1
    for t in range(MIN_AUDITS + 1):
        scores.note(bad, "failed", float(t))
    assert scores.distrusted() == {bad}
    # Same gossip version, new trust version: the cached view is rebuilt once.
    after = [sequencer.place(c) for c in chunks]
    assert gossip.built == 2
    assert all(bad not in t for t in after)
    # Chunks not placed on it before keep their targets (rendezvous hashing).
    assert [a for a, b in zip(after, before, strict=True) if bad not in b] == [
        b for b in before if bad not in b
    ]
    # A chunk completed around holders that keep their packets may count it among them.
    held = next(t for t in before if bad in t)
    fixed = (*[t for t in held if t != bad][:2], bad)
    completed = sequencer.place(_chunk(fixed=fixed))
    assert completed[:3] == fixed and bad not in completed[3:]
    # Trusted again (passes): placed on again, after one more rebuild.
    while bad in scores.distrusted():
        scores.note(bad, "passed", 10.0)
    assert [sequencer.place(c) for c in chunks] == before and gossip.built == 3


def test_threshold_zero_changes_nothing(tmp_path: Path) -> None:
    members = some_members(8)
    scores = AuditScores(tmp_path / AUDITS_FILE, threshold=0.0)
    for node in members[:3]:
        for t in range(10):
            scores.note(node.node_id, "failed", float(t))
    sequencer, trusted = _trusted_sequencer(CountingGossip(members), scores)
    _, seen = trusted.members()
    assert list(seen) == members
    plain = PlacementView(key=b"k" * 32, source=SOURCE, members=members, rules=PlacementRules())
    for chunk in [_chunk() for _ in range(20)]:
        assert sequencer.place(chunk) == tuple(plain.place(chunk.chunk_id, 4, 1 << 18))


# --- automatic repair ----------------------------------------------------------------------


class _Catalog:
    def __init__(self, holders: set[bytes]) -> None:
        self._holders = holders
        self.seen: dict[bytes, float] = {}

    def holders(self) -> set[bytes]:
        return set(self._holders)

    def holders_seen(self) -> dict[bytes, float]:
        return dict(self.seen)

    def note_holders_seen(self, seen: dict[bytes, float], *, keep: Any = None) -> None:
        self.seen.update(seen)


class _Services:
    def __init__(self, catalog: _Catalog) -> None:
        self.catalog = catalog
        self.identity = argparse.Namespace(node_id=_node(0))
        self.backup_lock = trio.Lock()

    async def db(self, fn: Any, *args: Any) -> Any:
        return fn(*args)


async def test_auto_repair_counts_distrusted_holders_gone_at_once() -> None:
    holders = {_node(1), _node(2), _node(3)}
    distrusted = {_node(2), _node(5)}  # 5 holds nothing of this source's
    repair = AutoRepair(
        services=cast(Any, _Services(_Catalog(holders))),
        present=lambda: set(holders),  # all up: no holder is gone by absence
        after_s=3600.0,
        tick_s=1.0,
        distrusted=lambda: frozenset(distrusted),
    )
    assert await repair.gone() == [_node(2)]
    # A run that left packets behind is retried after another after_s, not every tick,
    # though the holder is present.
    repair.tried[_node(2)] = trio.current_time()
    assert await repair.gone() == [_node(2)] and _node(2) in repair.tried
    distrusted.clear()
    assert await repair.gone() == [] and repair.tried == {}
    without = AutoRepair(
        services=cast(Any, _Services(_Catalog(holders))),
        present=lambda: set(holders),
        after_s=3600.0,
        tick_s=1.0,
    )
    assert await without.gone() == []


# --- on a grid -----------------------------------------------------------------------------


async def test_a_holder_failing_audits_gets_nothing_new_and_loses_its_packets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = write_tree(tmp_path)
    settings = {
        "audit_interval_s": 0,  # rounds run by hand, below
        "repair_after_s": 2.0,  # the repair ticks every 0.5 s; nobody leaves
        "repair_threshold": 1,
        "repair_delegates": 0,
        "redundancy": "2/3",
    }
    async with open_grid(tmp_path / "grid", 5, settings=settings) as grid:
        source = grid.nodes[0]
        assert source.auditor is not None and source.auto_repair is not None
        assert source.config.audit_threshold == 0.5
        first = (await grid.call(0, "backup", paths=[str(tree)]))["snapshot_id"]
        holders = sorted(source.catalog.holders())
        bad = max(holders, key=source.catalog.packets_on)
        on_bad = source.catalog.packets_on(bad)
        nodes = {n.identity.node_id: n for n in grid.nodes}
        assert _rot_all(nodes[bad]) == on_bad

        auditor = source.auditor
        auditor.batch = 30
        with trio.fail_after(30):
            while bad not in auditor.scores.distrusted():
                await auditor.audit_round()
        assert auditor.scores.distrusted() == {bad}

        # The automatic repair moves its packets at once (repair_after_s is not waited).
        with trio.fail_after(30):
            while source.catalog.packets_on(bad) or not source.auto_repair.runs:
                await trio.sleep(0.1)
        run = source.auto_repair.runs[-1]
        assert run["ok"] is True and run["packets_rebuilt"] >= on_bad, run
        assert run["records_rewritten"] == [first]
        verified = await grid.call(0, "verify", snapshot=first)
        assert verified["ok"] and verified["chunks_degraded"] == 0

        # The next backup places nothing on it, though plain placement would have.
        more = tmp_path / "more"
        more.mkdir()
        for i in range(6):
            (more / f"file{i}.bin").write_bytes(os.urandom(700_000))
        second = (await grid.call(0, "backup", paths=[str(more)]))["snapshot_id"]
        chunks = list(source.catalog.iter_chunks_of(second))
        assert chunks and all(p.target != bad for c in chunks for p in c.packets)
        assert source.catalog.packets_on(bad) == 0
        _, members = source.gossiper.placement_view()  # type: ignore[union-attr]
        plain = PlacementView(
            key=source.identity.sequence_key,
            source=source.gossiper.source(),  # type: ignore[union-attr]
            members=members,
            rules=PlacementRules(),
        )
        assert any(bad in plain.place(c.chunk_id, c.n, -(-c.cipher_size // c.k)) for c in chunks)

        status = await grid.call(0, "status")
        verdicts = {e["node_id"]: e["distrusted"] for e in status["audits"]}
        assert verdicts[format_node_id(bad)] is True
        assert sum(verdicts.values()) == 1
        monkeypatch.setattr(gridnode.cli, "call", lambda args, method, **kw: status)
        gridnode.cli.cmd_status(argparse.Namespace(json=False))
        shown = next(e["short_id"] for e in status["audits"] if e["distrusted"])
        assert f"audits: {len(verdicts)} holders audited, 1 distrusted ({shown})" in (
            capsys.readouterr().out
        )
