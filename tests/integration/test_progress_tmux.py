"""Issue 12: in ``tmux`` at 80 columns, a 1 GB backup shows one progress line redrawn in
place.  A real ``gridnode backup`` of a 1 GB file of random bytes (so neither zstd nor
deduplication makes it small) runs against a small real grid, inside a detached 80x24
tmux pane (.ci/run installs tmux); the pane is captured while it runs and at the end.

A progress line one column too long, or one drawn with a newline instead of a carriage
return, leaves a pane of stacked or wrapped lines: the captures would show it."""

from __future__ import annotations

import random
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from simulations.harness import LocalGrid

pytestmark = pytest.mark.slow

SIZE = 1 << 30  # the 1 GB
BLOCK = 4 << 20
#: The line drawn for a backup, as in "[###...]  3.6% 37.2 MiB/1 GiB 0/1 files 74.1 MiB/s ETA 0:13"
PROGRESS = re.compile(
    r"^\[[#.]+\] +\d+\.\d% [\d.]+ \w+/[\d.]+ \w+ \d+/\d+ files [\d.]+ \w+/s"
    r"( ETA \d+(:\d\d)+)?$"
)
#: Any piece of a progress line: a wrapped or stacked redraw leaves one of these behind.
FRAGMENT = re.compile(r"%|files|/s|ETA|\[[#.]")
BACKUP_WAIT_S = 75
WIDTH, HEIGHT = 80, 24


def _write_random(path: Path, size: int) -> None:
    """Real, incompressible bytes (a sparse file or a repeated block would be skipped or
    deduplicated, and the backup would be over before anything is drawn)."""
    rng = random.Random(12)
    with path.open("wb") as out:
        for _ in range(size // BLOCK):
            out.write(rng.randbytes(BLOCK))


def _tmux(socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=10, check=False
    )


def _pane(socket: str, session: str) -> list[str]:
    done = _tmux(socket, "capture-pane", "-p", "-t", session)
    assert done.returncode == 0, done.stderr
    return [line.rstrip() for line in done.stdout.splitlines()]


def test_a_1gb_backup_in_80_columns_redraws_one_line(make_grid: Any, tmp_path: Path) -> None:
    # Redundancy 1/2 stores 2 GB; a fourth node leaves room for a peer that is slow to
    # answer a probe while both cores are busy with the backup.
    grid: LocalGrid = make_grid(4, authority=False, redundancy="1/2", allocate="4GB")
    source = tmp_path / "big.bin"
    _write_random(source, SIZE)
    home = grid.nodes["n0"].home
    command = shlex.join([sys.executable, "-m", "gridnode", "backup", "--home", str(home),
                          str(source)])  # fmt: skip
    # A server of its own (-L): the test's environment, and nothing shared with a user's tmux.
    socket, session = f"gridnode-test-{uuid.uuid4().hex[:8]}", "backup"
    started = time.monotonic()
    done = _tmux(
        socket, "new-session", "-d", "-s", session, "-x", str(WIDTH), "-y", str(HEIGHT),
        f"{command}; echo DONE-$?; sleep 30",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    try:
        running: list[str] = []  # the progress line of each capture taken mid-backup
        pane: list[str] = []
        deadline = started + BACKUP_WAIT_S
        while time.monotonic() < deadline:  # bounded by the deadline
            pane = _pane(socket, session)
            text = [line for line in pane if line]
            if any(line.startswith("DONE-") for line in text):
                break
            if any(line.startswith(("snapshot ", "gridnode: ")) for line in text):
                time.sleep(0.1)  # the summary (or an error) is out: DONE- follows
                continue
            assert all(len(line) <= WIDTH for line in pane), pane
            if text:
                # Mid-backup the pane holds the progress line and nothing else: no stacked
                # redraws, no wrapped tail of a line that was too long.
                assert len(text) == 1, "\n".join(pane)
                assert PROGRESS.search(text[0]), text[0]
                assert len(text[0]) < WIDTH, text[0]
                running.append(text[0])
            time.sleep(0.5)
        else:
            raise AssertionError(f"backup not done in {BACKUP_WAIT_S} s:\n" + "\n".join(pane))
        seconds = time.monotonic() - started
        text = [line for line in pane if line]
        assert text[-1] == "DONE-0", "\n".join([*text, grid.log_tail("n0", 40)])
        assert not any(FRAGMENT.search(line) for line in text if "snapshot" not in line), pane
        assert len(set(running)) >= 2, running  # redrawn in place: it changed, one line
        summary = next(line for line in text if line.startswith("snapshot "))
        snapshot = summary.split()[1].rstrip(":")
        listing = grid.cli("n0", "snapshots")
        assert [s["snapshot_id"] for s in listing] == [snapshot]
        assert listing[0]["complete"] is True and listing[0]["bytes"] == SIZE
        print(f"backup of {SIZE} bytes in {seconds:.1f} s, {len(running)} captures")
    finally:
        _tmux(socket, "kill-server")
        source.unlink()  # 1 GB: not left for pytest's rotation of old temporary folders
