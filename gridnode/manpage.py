"""``gridnode manpage``: the man page, generated from the CLI's own parser.

The parser is the one place commands, options and their help are declared; the man page
is derived from it at the moment it is asked for, so it cannot drift from what
``gridnode --help`` says.  Plain roff with the ``man`` macros (no mdoc), so ``man -l``,
``groff -man`` and ``mandoc`` all read it.
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Iterator, Sequence

__all__ = ["render"]


def _roff(text: str) -> str:
    """Escape text for roff: backslashes, and a leading dot or quote on a line."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.splitlines() or [""]:
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _synopsis(words: Sequence[str], parser: argparse.ArgumentParser) -> str:
    usage = parser.format_usage().strip()
    if usage.startswith("usage: "):
        usage = usage[len("usage: ") :]
    return " ".join(usage.split())  # one line; roff fills it


def _options(parser: argparse.ArgumentParser) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            flags = ", ".join(action.option_strings)
            if action.nargs != 0:
                flags += f" {action.metavar or action.dest.upper()}"
        else:
            flags = str(action.metavar or action.dest)
        yield ".TP"
        yield f"\\fB{_roff(flags)}\\fR"
        yield _roff(action.help or "")


def render(
    parser: argparse.ArgumentParser,
    commands: Sequence[tuple[tuple[str, ...], argparse.ArgumentParser]],
    examples: dict[str, str],
    *,
    version: str,
    exit_codes: Sequence[tuple[int, str]],
) -> str:
    """The whole page, section 1."""
    today = datetime.date.today().isoformat()
    out = [
        f'.TH GRIDNODE 1 "{today}" "gridnode {_roff(version)}" "User Commands"',
        ".SH NAME",
        "gridnode \\- " + _roff(parser.description or "peer-to-peer grid backup"),
        ".SH SYNOPSIS",
        "\\fBgridnode\\fR \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        _roff(
            "Every command takes --home DIR (or GRIDNODE_HOME).  Commands other than grid "
            "create, init, run, recover, demo and authority talk to the running node of "
            "that home over a Unix socket inside it."
        ),
        ".SH COMMANDS",
    ]
    for words, command in commands:
        name = " ".join(words)
        out.append(f'.SS "{_roff(name)}"')
        summary = command.description or _help_of(parser, words)
        if summary:
            out.append(_roff(summary))
        out += [".PP", f"\\fB{_roff(_synopsis(words, command))}\\fR"]
        out += list(_options(command))
        example = examples.get(name)
        if example:
            out += [".PP", "Example:", ".RS", ".nf", _roff(example), ".fi", ".RE"]
    out.append(".SH EXIT STATUS")
    for code, meaning in exit_codes:
        out += [".TP", f"\\fB{code}\\fR", _roff(meaning)]
    out += [
        ".SH FILES",
        ".TP",
        "\\fI~/.local/share/gridnode\\fR",
        _roff(
            "the default node home when neither GRIDNODE_HOME nor XDG_DATA_HOME is set "
            "(then $XDG_DATA_HOME/gridnode): node.key, gridnode.toml, catalog.sqlite, storage/"
        ),
        ".SH SEE ALSO",
        _roff("README.md and docs/OPERATING.md in the gridnode sources."),
    ]
    return "\n".join(out) + "\n"


def _help_of(parser: argparse.ArgumentParser, words: Sequence[str]) -> str:
    """The one-line help a command has in its parent's list of commands."""
    current = parser
    text = ""
    for word in words:
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    if choice.dest == word:
                        text = choice.help or ""
                current = action.choices[word]
                break
    return text
