"""The CLI's progress line: fits the terminal, redraws in place, ETA as h:mm:ss."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gridnode.cli_common import Progress, format_eta


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00"), (59.6, "1:00"), (61, "1:01"), (3599, "59:59"), (7200, "2:00:00"),
     (90061, "25:01:01"), (-3, "0:00")],
)  # fmt: skip
def test_eta_reads_as_hours_minutes_seconds(seconds: float, text: str) -> None:
    assert format_eta(seconds) == text


def _backup_event(done: int, total: int) -> dict[str, object]:
    return {
        "event": "progress",
        "bytes_read": done,
        "bytes_total": total,
        "files": 12_345,
        "files_total": 99_999,
        "rate_bps": 123_456_789,
        "eta_s": 7322,
    }


@pytest.mark.parametrize("width", [20, 40, 79, 120, 300])
def test_a_line_never_exceeds_the_width(width: int) -> None:
    for done in (0, 1, 10**9 // 3, 10**9):
        line = Progress.line(_backup_event(done, 10**9), width)
        assert len(line) <= width
    line = Progress.line(_backup_event(10**9 // 2, 10**9), 120)
    assert line.startswith("[") and "ETA 2:02:02" in line and " 50.0% " in line
    verify = {"event": "progress", "phase": "verifying", "chunks_checked": 5, "chunks_total": 10}
    assert len(Progress.line(verify, width)) <= width


DRIVER = """
import sys, time
from gridnode.cli_common import Progress
p = Progress(sys.stderr)
total = 10**9
for i in range(1, 41):
    p._last = 0.0
    p.update({"event": "progress", "bytes_read": total * i // 40, "bytes_total": total,
              "files": i * 100, "files_total": 4000, "rate_bps": 25_000_000,
              "eta_s": (40 - i) * 1.5})
    time.sleep(0.01)
sys.stderr.write("\\nDONE\\n")
sys.stderr.flush()
time.sleep(30)
"""


def test_in_an_80_column_terminal_the_line_is_redrawn_in_place(tmp_path: Path) -> None:
    """A real terminal (tmux, 80 columns; .ci/run installs tmux): after 40 redraws the
    pane holds one progress line, not 40 wrapped ones."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    session = f"gridnode-progress-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
         f"{sys.executable} {script}"],
        check=True,
    )  # fmt: skip
    try:
        pane = ""
        deadline = time.monotonic() + 30
        while "DONE" not in pane and time.monotonic() < deadline:  # bounded by the deadline
            time.sleep(0.1)
            pane = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
        lines = [line for line in pane.splitlines() if line.strip()]
        assert lines[-1] == "DONE", pane
        progress = [line for line in lines if "%" in line]
        assert len(progress) == 1, pane
        assert "100.0%" in progress[0] and len(progress[0].rstrip()) <= 80
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
