"""The automatic repair policy on an in-process grid (issue 15, docs/DURABILITY.md).

Home machines are off most of the day.  A repair that moved every packet it could not
fetch, a holder counted gone after an hour in memory of the running repairer, and a chunk
repaired at its first loss would move every packet every night and never finish a long
delay on a node that is itself switched off at night.  So: a holder is gone once the grid
has not seen it for ``repair_after_s``, counted from a sighting kept in the catalog; a
chunk is repaired once ``repair_threshold`` of its holders are gone; and only the gone
holders' packets move.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest
import trio

from gridnode.control import ControlError
from gridnode.repair import AutoRepair
from gridnode.storage.records import ChunkRecord

from .inproc import open_grid

HOUR = 3600.0


async def test_gone_holders_count_from_a_kept_sighting_and_only_their_packets_move(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "src"
    tree.mkdir()
    for i in range(6):
        (tree / f"file{i}").write_bytes(os.urandom(300_000 + i))
    # The node's own repair waits an hour: the test drives fresh AutoRepair instances
    # (each one a restarted node: nothing in memory) on a clock it sets.
    settings = {"repair_after_s": HOUR, "redundancy": "2/5", "repair_delegates": 0}
    async with open_grid(tmp_path / "grid", 9, settings=settings) as grid:
        source = grid.nodes[0]
        snap = (await grid.call(0, "backup", paths=[str(tree)]))["snapshot_id"]
        chunks = await source.services.db(lambda: list(source.catalog.chunks_in_use()))
        assert chunks and all((c.k, c.n) == (2, 5) for c in chunks)
        by_id = {n.identity.node_id: n for n in grid.nodes}
        holders = sorted({p.target for c in chunks for p in c.packets})

        def on(chunk: ChunkRecord, nodes: set[bytes]) -> int:
            return sum(p.target in nodes for p in chunk.packets)

        # Two holders leave for good, chosen so that some chunk loses both and some only
        # one; a third (the sleeper) is only switched off.
        gone = next(
            {a, b}
            for a, b in itertools.combinations(holders, 2)
            if any(on(c, {a, b}) == 2 for c in chunks) and any(on(c, {a, b}) == 1 for c in chunks)
        )
        sleeper = next(
            n
            for n in holders
            if n not in gone and any(on(c, gone) == 2 and on(c, {n}) for c in chunks)
        )
        for node_id in [*gone, sleeper]:
            by_id[node_id].shutdown()
            await by_id[node_id].stopped.wait()
        with trio.fail_after(30):  # gossip declares them dead, so placement avoids them
            while {n for n, _ in source.gossiper.alive()} & {*gone, sleeper}:
                await trio.sleep(0.2)

        def live() -> set[bytes]:
            return {n for n, _ in source.gossiper.alive()}

        def restarted(now: float, present: set[bytes], settle_s: float = 0.0) -> AutoRepair:
            return AutoRepair(
                services=source.services,
                present=lambda: present,
                after_s=HOUR,
                tick_s=1.0,
                threshold=2,
                settle_s=settle_s,
                clock=lambda: now,
            )

        t0 = time.time() + 30 * 86400  # later than any sighting the node's own repair writes
        # t0: the two are first missed; the sleeper was seen (it is up at that hour).
        assert await restarted(t0, live() | {sleeper}).tick() is None
        # Restarted 50 minutes later, the sleeper seen again: nobody is gone yet.
        assert await restarted(t0 + 3000, live() | {sleeper}).tick() is None
        # Restarted again past the hour: the two are gone (the clock kept running in
        # the catalog); the sleeper, off now but seen 700 s ago, is not.
        # (A node just started waits for gossip to fill its view before it counts anyone
        # gone: it sees nobody yet.  Back after being off itself for longer than the
        # delay, it watches a while first: a holder it has not seen since may be off
        # only now.)
        assert await restarted(t0 + HOUR + 100, live(), settle_s=600).gone() == []
        back = restarted(t0 + 3000 + 2 * HOUR, live())
        assert await back.gone() == [] and back.watch_s == HOUR
        repair = restarted(t0 + HOUR + 100, live())
        assert await repair.gone() == sorted(gone)
        result = await repair.tick()
        assert result is not None and result["ok"] is True, (result["problems"], result)
        assert result["packets_rebuilt"] > 0

        after = {
            (c.chunk_id, c.policy): c
            for c in await source.services.db(lambda: list(source.catalog.chunks_in_use()))
        }
        rebuilt = 0
        for before in chunks:
            now = after.get((before.chunk_id, before.policy))
            if now is None:
                continue  # a piece of the old record, replaced by the rewritten one
            on_gone = on(before, gone)
            for old, new in zip(before.packets, now.packets, strict=True):
                if on_gone >= 2 and old.target in gone:
                    assert new.target not in gone | {sleeper}
                    rebuilt += 1
                else:  # below the threshold, or not a gone holder's packet: unmoved
                    assert new.target == old.target
        assert 0 < rebuilt <= result["packets_rebuilt"]
        verified = await grid.call(0, "verify", snapshot=snap)
        assert verified["chunks_lost"] == 0


def test_repair_threshold_defaults_to_two_and_is_bounded_by_the_code(tmp_path: Path) -> None:
    from gridnode.config import ConfigError, build_config

    grid = {"grid_id": "ab" * 16}
    shipped = build_config(tmp_path, grid)
    assert (shipped.redundancy, shipped.repair_threshold) == ("10/30", 2)
    assert shipped.repair_after_s == 7 * 86400
    # A thin code survives one loss only: it is repaired at its first gone holder.
    assert build_config(tmp_path, {**grid, "redundancy": "2/3"}).repair_threshold == 1
    assert build_config(tmp_path, {**grid, "repair_threshold": "1"}).repair_threshold == 1
    for bad in ("0", "21", "x"):
        with pytest.raises(ConfigError, match="'repair_threshold'"):
            build_config(tmp_path, {**grid, "repair_threshold": bad})
    with pytest.raises(ConfigError, match=r"use 1\.\.2"):
        build_config(tmp_path, {**grid, "redundancy": "4/6", "repair_threshold": 3})


async def test_a_grid_smaller_than_the_code_fails_a_backup_with_the_fix(tmp_path: Path) -> None:
    tree = tmp_path / "src"
    tree.mkdir()
    (tree / "a").write_bytes(b"a" * 1000)
    async with open_grid(tmp_path / "grid", 3, settings={"redundancy": "10/30"}) as grid:
        with pytest.raises(ControlError) as failed:
            await grid.call(0, "backup", paths=[str(tree)])
    text = str(failed.value)
    assert "10/30" in text and "--redundancy" in text
