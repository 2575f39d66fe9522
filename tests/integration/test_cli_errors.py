"""Every command's common error paths end in one line and an exit code, never a
traceback (issue 12): run as a user would, in a fresh process each, against a home that
does not exist and with placeholder values for whatever the command requires."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from gridnode.cli import build_parser, iter_commands

#: Commands that would do real work with placeholder values (the demo builds a grid).
SKIP = {"demo"}


def _placeholders(command: argparse.ArgumentParser, tmp: Path) -> list[str]:
    words: list[str] = []
    for action in command._actions:
        if isinstance(action, argparse._HelpAction) or action.dest == "home":
            continue
        if action.option_strings and action.required:
            words += [action.option_strings[0], str(tmp / "nothing-here")]
        elif not action.option_strings and action.nargs not in ("?", "*"):
            choices = sorted(action.choices) if action.choices else ["nothing-here"]
            words.append(str(choices[0]))
    return words


def test_no_command_prints_a_traceback(tmp_path: Path) -> None:
    home = tmp_path / "no-such-home"
    failures = []
    for words, command in iter_commands(build_parser()):
        if words[0] in SKIP:
            continue
        argv = [*words, *_placeholders(command, tmp_path)]
        if any(a.dest == "home" for a in command._actions):
            argv += ["--home", str(home)]
        done = subprocess.run(
            [sys.executable, "-m", "gridnode", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if "Traceback" in done.stderr or done.returncode not in (0, 1, 2, 4, 5):
            failures.append((argv, done.returncode, done.stderr[-400:]))
        elif done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            if not lines[-1].startswith(("gridnode: error:", "usage:", "gridnode ")):
                failures.append((argv, done.returncode, done.stderr[-400:]))
    assert failures == []
