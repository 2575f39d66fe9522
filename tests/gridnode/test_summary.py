"""What a running node logs unasked (issue 12): `run` at info by default, a periodic
``node_summary`` line, the end of every restore and verify, and one ``allocation_full``
warning when the packet store starts refusing packets for lack of room."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from gridnode.actors.request import RequestActor
from gridnode.config_keys import KEYS_BY_NAME
from gridnode.control import ControlError
from gridnode.identity import load_identity
from gridnode.log import configure_logging
from gridnode.summary import AllocationWatch
from simulations.harness import free_port

from .inproc import open_grid

GRIDNODE = [sys.executable, "-m", "gridnode"]
SUMMARY_FIELDS = {
    "members_alive", "members_suspect", "members_dead", "members_left", "sessions",
    "packets_held", "bytes_held", "free_bytes", "jobs_running", "jobs_run", "jobs_failed",
    "last_backup_age_s", "repairs", "chunks_repaired",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_suite_logging() -> Iterator[None]:
    yield
    configure_logging("warning", json=False)  # what tests/conftest.py sets for the suite


def _events(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a log (a node's stderr also holds its one human start line)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _gridnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GRIDNODE, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_node_logs_at_info_by_default_and_summary_lines_are_every_ten_minutes() -> None:
    assert KEYS_BY_NAME["log_level"].default == "info"
    assert KEYS_BY_NAME["summary_interval_s"].default == 600.0


def test_run_logs_at_info_by_default_with_a_summary_line_within_its_interval(
    tmp_path: Path,
) -> None:
    grid, home = tmp_path / "grid.toml", tmp_path / "home"
    assert _gridnode("grid", "create", "t", "--out", str(grid), "--open").returncode == 0
    done = _gridnode(
        "init", "--home", str(home), "--grid", str(grid), "--listen",
        f"127.0.0.1:{free_port()}", "--location", "Paris", "--allocate", "1GB",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log:
        # No --log-level: the default must be info.  stderr is a file, so JSON lines.
        node = subprocess.Popen(
            [*GRIDNODE, "run", "--home", str(home), "--set", "summary_interval_s=0.5"],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 30
        while "node_summary" not in log_path.read_text():  # bounded by the deadline
            assert time.monotonic() < deadline, log_path.read_text()
            assert node.poll() is None, log_path.read_text()
            time.sleep(0.1)
        done = _gridnode("stop", "--home", str(home))
        assert done.returncode == 0, done.stderr
        assert node.wait(timeout=20) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    text = log_path.read_text()
    events = _events(text)
    started = next(e for e in events if e["event"] == "node_started")
    assert started["level"] == "info"
    summaries = [e for e in events if e["event"] == "node_summary"]
    first = summaries[0]
    assert first["level"] == "info" and set(first) >= SUMMARY_FIELDS
    assert (first["members_alive"], first["sessions"], first["packets_held"]) == (0, 0, 0)
    assert first["free_bytes"] == 10**9 and first["bytes_held"] == 0
    assert (first["jobs_run"], first["jobs_failed"], first["last_backup_age_s"]) == (0, 0, None)
    assert first["node"] == started["node"]
    # Within its interval of the start (half a second; a slow machine gets some slack).
    gap = _seconds(first["timestamp"]) - _seconds(started["timestamp"])
    assert 0.4 <= gap < 5, gap
    identity = load_identity(home / "node.key")
    for secret in (identity.dedup_secret, identity.record_key):
        assert secret.hex() not in text
    assert identity.recovery_phrase() not in text


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def test_jobs_log_their_end_and_the_summary_counts_them(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f.bin").write_bytes(os.urandom(100_000))
    out = io.StringIO()
    configure_logging("info", json=True, stream=out)
    settings = {"summary_interval_s": 0.3}
    async with open_grid(tmp_path / "grid", 7, settings=settings) as grid:
        source = grid.nodes[0]
        # Automatic repairs count in the totals as manual ones do.
        assert source.auto_repair is not None
        assert source.auto_repair.on_result == source.request.note_repair
        backup = await grid.call(0, "backup", paths=[str(tree)])
        sid = backup["snapshot_id"]
        restored = await grid.call(0, "restore", snapshot=sid, to=str(tmp_path / "out"))
        verified = await grid.call(0, "verify", snapshot=sid)
        with pytest.raises(ControlError):
            await grid.call(0, "restore", snapshot="nosuchsnapshot", to=str(tmp_path / "x"))
        mark = len(out.getvalue())  # the summaries after the jobs count them all

        def summaries() -> list[dict[str, Any]]:
            return [
                e
                for e in _events(out.getvalue()[mark:])
                if e["event"] == "node_summary" and e["node"] == source.identity.short_id
            ]

        with trio.fail_after(10):
            while not summaries():
                await trio.sleep(0.05)
        line = summaries()[0]
        held = source.packets.statistics()
    events = _events(out.getvalue())
    mine = [e for e in events if e.get("node") == source.identity.short_id]
    finished = next(e for e in mine if e["event"] == "restore_finished")
    assert finished["level"] == "info" and finished["snapshot_id"] == sid
    assert (finished["files"], finished["bytes"]) == (restored["files"], restored["bytes"])
    assert finished["seconds"] >= 0
    checked = next(e for e in mine if e["event"] == "verify_finished")
    assert checked["level"] == "info" and checked["ok"] is True
    assert checked["chunks"] == verified["chunks"]
    failed = next(e for e in mine if e["event"] == "restore_failed")
    assert failed["level"] == "warning" and failed["code"]
    assert any(e["event"] == "backup_finished" for e in mine)
    assert set(line) >= SUMMARY_FIELDS
    assert line["members_alive"] == 6 and line["sessions"] >= 1
    assert (line["jobs_run"], line["jobs_failed"]) == (4, 1)
    assert 0 <= line["last_backup_age_s"] < 60
    assert (line["packets_held"], line["free_bytes"]) == (held.packet_count, held.free_bytes)


def _fake_node(allocation: int) -> Any:
    """What the allocation watch reads: the store's refusal counters and the directory's
    statistics (set by the test)."""
    stats = SimpleNamespace(allocation_bytes=allocation, used_bytes=allocation, free_bytes=0)
    return SimpleNamespace(
        packet_store=SimpleNamespace(stats={}),
        packets=SimpleNamespace(statistics=lambda: stats),
        stats=stats,
    )


def test_a_full_allocation_is_warned_about_once_until_it_has_room_again() -> None:
    out = io.StringIO()
    configure_logging("info", json=True, stream=out)
    node = _fake_node(100 << 20)
    watch = AllocationWatch(node)
    watch.check()
    assert out.getvalue() == ""  # nothing refused yet
    for refused in range(1, 20):  # a full node refuses every packet offered
        node.packet_store.stats["store_refused_full"] = refused
        watch.check()
    node.packet_store.stats["roots_refused_full"] = 1
    watch.check()
    events = _events(out.getvalue())
    assert [e["event"] for e in events] == ["allocation_full"]
    assert events[0]["level"] == "warning" and events[0]["refused"] == 1
    assert events[0]["allocated_bytes"] == 100 << 20 and events[0]["free_bytes"] == 0
    node.stats.free_bytes = 4096  # one packet deleted: still full for practical purposes
    watch.check()
    assert len(_events(out.getvalue())) == 1
    node.stats.free_bytes = 2 << 20  # room again (more than 1 % of the allocation)
    watch.check()
    node.packet_store.stats["store_refused_full"] = 100  # and full again: warned again
    watch.check()
    events = _events(out.getvalue())
    assert [e["event"] for e in events] == [
        "allocation_full",
        "allocation_has_room",
        "allocation_full",
    ]


def test_repair_totals_sum_every_run() -> None:
    actor = RequestActor(inbound=None, methods={})  # type: ignore[arg-type]
    actor.note_repair({"ok": True, "chunks_repaired": 2, "packets_rebuilt": 5, "chunks_lost": 0})
    actor.note_repair({"ok": False, "chunks_repaired": 1, "chunks_unrepaired": 3})
    assert actor.repairs == {
        "runs": 2,
        "runs_incomplete": 1,
        "chunks_repaired": 3,
        "chunks_lost": 0,
        "chunks_unrepaired": 3,
        "packets_rebuilt": 5,
    }
