"""mypy --strict holds for the product, and the typed actor calls catch what they claim to.

``gridnode.actors.calls`` promises that a handler whose answer is not its command's
``R`` is a type error: the second test writes such a handler and checks that mypy
refuses it (and accepts the right one), so the promise is tested, not assumed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _mypy(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_mypy_strict_is_clean() -> None:
    proc = _mypy("--config-file", str(ROOT / "pyproject.toml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_handler_must_answer_its_commands_type(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from gridnode.actors.calls import Handlers, Outbox, Request, call

            class Ping(Request[int]):
                pass

            async def right(cmd: Ping) -> int:
                return 1

            async def wrong(cmd: Ping) -> str:
                return "one"

            Handlers("a").on(Ping, right)
            Handlers("b").on(Ping, wrong)

            async def caller(box: Outbox) -> str:
                return await call(box, Ping())
            """
        )
    )
    proc = _mypy("--strict", "--ignore-missing-imports", "--python-version", "3.11", str(snippet))
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    lines = sorted(int(line.split(":")[1]) for line in errors)
    source = snippet.read_text().splitlines()
    expected = [
        source.index('Handlers("b").on(Ping, wrong)') + 1,  # a handler answering str
        source.index("    return await call(box, Ping())") + 1,  # str expected from an int
    ]
    assert lines == expected, proc.stdout
