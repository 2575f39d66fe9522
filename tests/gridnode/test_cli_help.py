"""The CLI explains itself: help for every option, an example for every command, a man
page and shell completion generated from the same parser (issue 12)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

from gridnode.cli import EXAMPLES, build_parser, iter_commands


def test_every_option_has_help_and_every_command_an_example() -> None:
    parser = build_parser()
    commands = list(iter_commands(parser))
    assert len(commands) > 25
    missing = [
        (" ".join(words), action.dest)
        for words, command in commands
        for action in command._actions
        if action.help is None and not isinstance(action, argparse._HelpAction)
    ]
    assert missing == []
    names = {" ".join(words) for words, _ in commands}
    no_example = sorted(names - set(EXAMPLES) - {"completion", "manpage"})
    assert no_example == []
    for name, example in EXAMPLES.items():
        assert name in names and example.startswith(f"gridnode {name}"), name
        assert f"example:\n  {example}" in dict(commands)[tuple(name.split())].format_help()


def _gridnode(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gridnode", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_the_man_page_is_valid_roff_and_names_every_command() -> None:
    page = _gridnode("manpage")
    groff = shutil.which("groff")
    assert groff is not None, ".ci/run installs groff"
    checked = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-z"], input=page, capture_output=True, text=True
    )
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    for words, _ in iter_commands(build_parser()):
        assert f'.SS "{" ".join(words)}"' in page
    assert ".SH EXIT STATUS" in page and "\\fB5\\fR" in page


def test_bash_completion_is_valid_and_knows_the_commands() -> None:
    script = _gridnode("completion", "bash")
    checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    for command in ("backup", "restore", "find", "authority"):
        assert command in script
