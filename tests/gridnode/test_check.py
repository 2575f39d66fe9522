"""``gridnode check`` (issue 10): each snapshot's weakest chunk from the member view, the
storage audits and the catalog, without fetching a packet; ``--repair`` runs the
targeted repair for the chunks at the threshold.

The counting itself is checked against a plain Python count on a real SQLite catalog;
the rest runs on real nodes on loopback (``open_grid``) and, for the command line, the
real ``gridnode`` program against the source's control socket."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from nacl.signing import SigningKey

from gridnode.audit import AuditScores
from gridnode.check import AUDIT_WINDOW_S, passed_lately
from gridnode.check_cli import check_summary
from gridnode.cli_common import EXIT_BELOW_THRESHOLD
from gridnode.config import dump_toml
from gridnode.home_layout import CONFIG_NAME
from gridnode.node import Node
from gridnode.repair import effective_threshold
from gridnode.storage.catalog import Catalog
from gridnode.storage.records import ChunkRecord, PacketRecord
from protocol import format_node_id

from .inproc import Grid, open_grid
from .test_audits import _drop_all, write_tree

#: Keys scripts rely on (README, "The interface scripts rely on").
SNAPSHOT_KEYS = {"snapshot_id", "weakest_chunk_packets", "k", "n", "below_threshold"}


# --- the count, on a real catalog ------------------------------------------------------------


def _chunk(rng: random.Random, holders: list[bytes], k: int, n: int) -> ChunkRecord:
    targets = rng.sample(holders, n)
    packets = tuple(
        PacketRecord(share, rng.randbytes(32), target, b"r") for share, target in enumerate(targets)
    )
    return ChunkRecord(rng.randbytes(32), 100, 100, False, k, n, packets)


def test_the_count_matches_a_plain_count_of_every_chunk(tmp_path: Path) -> None:
    rng = random.Random(7)
    holders = [rng.randbytes(32) for _ in range(12)]
    catalog = Catalog(tmp_path / "catalog.sqlite", signing_key=SigningKey.generate())
    pool = [_chunk(rng, holders, 2, 4) for _ in range(150)] + [
        _chunk(rng, holders, 3, 6) for _ in range(50)
    ]
    uses: dict[str, list[ChunkRecord]] = {}
    for i, state in enumerate(["complete", "complete", "complete", "interrupted"]):
        sid = f"snap{i}"
        catalog.begin_snapshot(sid, roots=["/x"], parent=None, params="2/4", rules={})
        uses[sid] = rng.sample(pool, 80)  # snapshots share chunks, as dedup makes them
        catalog.add_chunks(uses[sid], snapshot_id=sid)
        if state == "complete":
            catalog.complete_snapshot(sid, files=1, size_bytes=1, record=None)
        else:
            catalog.mark_interrupted()
    gone = set(holders[:3])
    survivors = {h: i % 2 == 0 for i, h in enumerate(holders) if h not in gone}
    for threshold in (1, 2, 3):
        counted = catalog.survival(survivors, threshold)
        assert {row.snapshot_id for row in counted.snapshots} == {"snap0", "snap1", "snap2"}
        for row in counted.snapshots:
            chunks = uses[row.snapshot_id]

            def alive(c: ChunkRecord) -> int:
                return sum(p.target in survivors for p in c.packets)

            def audited(c: ChunkRecord) -> int:
                return sum(survivors.get(p.target, False) for p in c.packets)

            weakest = min((alive(c) - c.k, audited(c)) for c in chunks)
            assert (row.weakest_surviving - row.k, row.weakest_audited) == weakest
            assert (row.weakest_surviving, row.weakest_audited, row.k, row.n) in {
                (alive(c), audited(c), c.k, c.n)
                for c in chunks
                if (alive(c) - c.k, audited(c)) == weakest
            }
            assert row.chunks == len(chunks)
            below = [c for c in chunks if c.n - alive(c) >= effective_threshold(c, threshold)]
            assert row.chunks_below_threshold == len(below)
            assert row.chunks_lost == sum(alive(c) < c.k for c in chunks)
            assert row.packets == sum(c.n for c in chunks)
            assert row.packets_surviving == sum(alive(c) for c in chunks)
            assert row.packets_audited == sum(audited(c) for c in chunks)
            on_gone = {p.target for c in chunks for p in c.packets if p.target in gone}
            assert counted.lost_by_snapshot.get(row.snapshot_id, set()) == on_gone
        every = [c for c in pool if any(c in used for used in uses.values())]
        assert counted.lost_holders == {
            h: n
            for h, n in Counter(p.target for c in every for p in c.packets).items()
            if h in gone
        }
    # Everyone alive: nothing below, nothing lost, and the next call starts afresh.
    clean = catalog.survival(dict.fromkeys(holders, True), 1)
    assert all(
        r.chunks_below_threshold == 0 and r.packets_audited == r.packets for r in clean.snapshots
    )
    assert clean.lost_holders == {} and clean.lost_by_snapshot == {}
    catalog.close()


def test_audited_means_a_recent_pass_and_no_failure_since(tmp_path: Path) -> None:
    scores = AuditScores(tmp_path / "audits.json")
    recent, stale, failed_since, never = (bytes([i]) * 32 for i in range(4))
    now = 10 * AUDIT_WINDOW_S
    scores.note(recent, "passed", now - 60)
    scores.note(recent, "missed", now - 30)  # a miss says nothing of the bytes
    scores.note(stale, "passed", now - AUDIT_WINDOW_S - 1)
    scores.note(failed_since, "passed", now - 60)
    scores.note(failed_since, "failed", now - 30)
    scores.note(never, "missed", now - 30)
    assert passed_lately(scores, now, AUDIT_WINDOW_S) == {recent}
    scores.save()  # kept in audits.json across restarts
    assert AuditScores.load(scores.path).holders[recent].last_passed == now - 60


def test_the_summary_is_one_line_per_snapshot_within_80_columns() -> None:
    big = 10**10 - 1
    snaps = [
        {
            "snapshot_id": os.urandom(8).hex(),
            "weakest_chunk_packets": 255,
            "weakest_chunk_audited": 255,
            "k": 200,
            "n": 255,
            "below_threshold": below,
            "chunks": big,
            "chunks_below_threshold": big if below else 0,
            "chunks_lost": 0,
            "repaired": False,
        }
        for below in (False, True)
    ]
    holder = {"short_id": "abcdef012345", "node_id": "ab" * 32}
    text = check_summary(
        {
            "snapshots": snaps,
            "holders_gone": [holder] * 6,
            "holders_distrusted": [holder],
            "repaired": None,
        }
    )
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert [line.split()[0] for line in lines[2:4]] == [s["snapshot_id"] for s in snaps]
    assert lines[2].endswith("ok") and lines[3].endswith("below")
    assert lines[4:] == [
        "holders gone: 6 (abcdef012345, abcdef012345, abcdef012345 and 3 more)",
        "holders distrusted: 1 (abcdef012345)",
    ]


# --- on a grid -------------------------------------------------------------------------------

#: Audits by hand, no automatic repair (check --repair is the repair here), threshold 1:
#: a chunk is due at its first lost packet.
SETTINGS = {
    "audit_interval_s": 0,
    "repair_after_s": 0,
    "repair_delegates": 0,
    "repair_threshold": 1,
    "redundancy": "2/4",
    "request_timeout_s": 3.0,
}


async def _chunks(node: Node, snapshot_id: str) -> list[ChunkRecord]:
    """The snapshot's chunks, data and record pieces alike (what check counts)."""
    out: list[ChunkRecord] = []
    after = b""
    for _ in range(1000):
        page = await trio.to_thread.run_sync(
            lambda a=after: node.catalog.chunk_page(snapshot_id, after=a)  # type: ignore[misc]
        )
        if not page:
            return out
        out += page
        after = page[-1].chunk_id
    raise AssertionError("more pages than a test snapshot has")


async def _without_fetching(grid: Grid, call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()``, asserting that no holder served a packet and the source fetched none."""

    def counters() -> tuple[int, int]:
        served = sum(n.packet_store.stats.get("packets_served", 0) for n in grid.nodes)
        misses = sum(n.packet_store.stats.get("fetch_misses", 0) for n in grid.nodes)
        return served + misses, grid.nodes[0].retriever.stats.get("chunks_fetched", 0)

    before = counters()
    result = await call()
    assert counters() == before
    return result


def _state(source: Node, node_id: bytes) -> str | None:
    return source.gossiper.membership.state_of(node_id)  # type: ignore[union-attr]


async def _gone_from_view(source: Node, node: Node) -> None:
    """Stop ``node`` and wait until the source's view no longer has it alive or suspect."""
    node.shutdown()
    await node.stopped.wait()
    with trio.fail_after(60):
        while _state(source, node.identity.node_id) in ("alive", "suspect"):
            await trio.sleep(0.1)


async def test_check_counts_live_trusted_holders_and_repair_brings_chunks_back(
    tmp_path: Path,
) -> None:
    tree = write_tree(tmp_path)
    async with open_grid(tmp_path / "grid", 9, settings=SETTINGS) as grid:
        source = grid.nodes[0]
        snap = (await grid.call(0, "backup", paths=[str(tree)]))["snapshot_id"]
        chunks = await _chunks(source, snap)
        assert chunks and all((c.k, c.n) == (2, 4) for c in chunks)
        auditor = source.auditor
        assert auditor is not None
        auditor.batch = 40
        await auditor.audit_round()
        passed = passed_lately(auditor.scores, time.time(), AUDIT_WINDOW_S)
        assert passed

        # Healthy: every chunk at n, the audited packets those of holders that passed.
        healthy = await _without_fetching(grid, lambda: grid.call(0, "check"))
        assert healthy["ok"] is True and healthy["repaired"] is None
        assert healthy["holders_gone"] == [] and healthy["holders_distrusted"] == []
        (s,) = healthy["snapshots"]
        assert s["snapshot_id"] == snap and s["below_threshold"] is False
        assert (s["weakest_chunk_packets"], s["k"], s["n"]) == (4, 2, 4)
        assert s["chunks"] == len(chunks) and s["chunks_below_threshold"] == 0
        assert s["packets"] == s["packets_surviving"] == 4 * len(chunks)
        assert s["audited_packets"] == sum(p.target in passed for c in chunks for p in c.packets)
        assert s["weakest_chunk_audited"] == min(
            sum(p.target in passed for p in c.packets) for c in chunks
        )
        json.dumps(healthy)

        # A holder that dropped its packets and is caught by the audits stops counting,
        # though it is alive in the view.
        by_id = {n.identity.node_id: n for n in grid.nodes}
        holders = {p.target for c in chunks for p in c.packets}
        bad = max(holders, key=lambda h: sum(p.target == h for c in chunks for p in c.packets))
        assert _drop_all(by_id[bad]) > 0
        with trio.fail_after(60):
            for _ in range(100):
                if bad in auditor.scores.distrusted():
                    break
                await auditor.audit_round()
        assert bad in auditor.scores.distrusted()
        assert _state(source, bad) in ("alive", "suspect")  # in the view all along
        on_bad = [c for c in chunks if any(p.target == bad for p in c.packets)]
        distrusted = await _without_fetching(grid, lambda: grid.call(0, "check"))
        (s,) = distrusted["snapshots"]
        assert distrusted["ok"] is False and s["below_threshold"] is True
        assert s["weakest_chunk_packets"] == 3  # n less the one holder lost
        assert s["chunks_below_threshold"] == len(on_bad)
        assert s["packets_surviving"] == 4 * len(chunks) - len(on_bad)
        assert [h["node_id"] for h in distrusted["holders_distrusted"]] == [format_node_id(bad)]
        assert distrusted["holders_distrusted"][0]["packets"] == len(on_bad)
        assert distrusted["holders_gone"] == []
        assert (s["holders_gone"], s["holders_distrusted"]) == (0, 1)

        # A holder sharing a chunk with it stops: that chunk is down by exactly two.
        shared = Counter(p.target for c in on_bad for p in c.packets if p.target != bad)
        other = shared.most_common(1)[0][0]
        await _gone_from_view(source, by_id[other])
        on_either = [c for c in chunks if any(p.target in (bad, other) for p in c.packets)]
        lost_packets = sum(p.target in (bad, other) for c in chunks for p in c.packets)
        down = await _without_fetching(grid, lambda: grid.call(0, "check"))
        (s,) = down["snapshots"]
        assert s["weakest_chunk_packets"] == 2 and s["chunks_lost"] == 0
        assert s["chunks_below_threshold"] == len(on_either)
        assert s["packets_surviving"] == 4 * len(chunks) - lost_packets
        assert [h["node_id"] for h in down["holders_gone"]] == [format_node_id(other)]
        assert down["holders_gone"][0]["state"] in ("dead", "left")  # stopped: it said goodbye
        assert (s["holders_gone"], s["holders_distrusted"]) == (1, 1)

        # --repair rebuilds the lost packets on other holders; the next check is clean.
        fixed = await grid.call(0, "check", repair=True)
        rebuilt = fixed["repaired"]
        assert rebuilt["ok"] is True, rebuilt
        assert rebuilt["chunks_repaired"] == len(on_either)
        assert rebuilt["packets_rebuilt"] == lost_packets
        (s,) = fixed["snapshots"]
        assert s["repaired"] is True and s["weakest_chunk_packets_before"] == 2
        assert s["weakest_chunk_packets"] == 4 and s["below_threshold"] is False
        assert fixed["ok"] is True
        # The backup log says someone asked for this repair (not the automatic one).
        (entry,) = [e for e in source.catalog.log_entries() if e.event == "repair"]
        assert entry.detail["automatic"] is False and entry.detail["ok"] is True
        clean = await _without_fetching(grid, lambda: grid.call(0, "check"))
        assert clean["ok"] is True and clean["repaired"] is None
        assert clean["holders_gone"] == [] and clean["holders_distrusted"] == []
        (s,) = clean["snapshots"]
        assert (s["weakest_chunk_packets"], s["chunks_below_threshold"]) == (4, 0)
        after = await _chunks(source, snap)
        assert not {bad, other} & {p.target for c in after for p in c.packets}
        verified = await grid.call(0, "verify", snapshot=snap)
        assert verified["ok"] and verified["chunks_degraded"] == 0


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridnode", "check", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


async def test_the_command_line_keys_exit_codes_and_repair(tmp_path: Path) -> None:
    tree = write_tree(tmp_path)
    async with open_grid(tmp_path / "grid", 6, settings=SETTINGS) as grid:
        source = grid.nodes[0]
        home = source.config.home  # the CLI wants a home's config file beside the socket
        (home / CONFIG_NAME).write_text(dump_toml(source.config.to_values()), encoding="utf-8")
        snap = (await grid.call(0, "backup", paths=[str(tree)]))["snapshot_id"]
        done = await trio.to_thread.run_sync(lambda: _cli(home, "--json"))
        assert done.returncode == 0, done.stderr
        (line,) = done.stdout.splitlines()  # one object, no progress lines
        result = json.loads(line)
        assert {"snapshots", "holders_gone", "holders_distrusted", "repaired"} <= set(result)
        (s,) = result["snapshots"]
        assert set(s) >= SNAPSHOT_KEYS and s["snapshot_id"] == snap
        assert (s["weakest_chunk_packets"], s["below_threshold"]) == (s["n"], False)

        chunks = await _chunks(source, snap)
        holder = Counter(p.target for c in chunks for p in c.packets).most_common(1)[0][0]
        (node,) = [n for n in grid.nodes if n.identity.node_id == holder]
        await _gone_from_view(source, node)
        done = await trio.to_thread.run_sync(lambda: _cli(home))
        assert done.returncode == EXIT_BELOW_THRESHOLD, done.stderr
        lines = done.stdout.splitlines()
        assert all(len(x) <= 80 for x in lines), lines
        row = next(x for x in lines if x.startswith(snap))
        assert row.split()[1] == "3/4" and row.endswith("below")
        assert "check --repair" in done.stderr

        done = await trio.to_thread.run_sync(lambda: _cli(home, "--repair", "--json"))
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["repaired"]["ok"] is True and result["repaired"]["packets_rebuilt"] > 0
        (s,) = result["snapshots"]
        assert s["repaired"] is True and s["weakest_chunk_packets"] == 4
