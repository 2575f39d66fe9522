"""What every ``gridnode`` command shares: errors and exit codes, the progress line, JSON
output, finding the home, and calling the home's running node.

Only the standard library and the control client (which adds msgpack) are imported here,
so a command that only asks the running node something (``status``, ``ls``, ``find``)
starts in milliseconds; commands that need the node's own machinery (``init``, ``run``,
``key``) live in ``gridnode.home_cli`` and are imported only when run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import control_client
from .config_keys import CONFIG_KEYS, ConfigKey, flag_of
from .control_files import ControlError, NodeNotRunning
from .home_layout import CONFIG_NAME, DEFAULT_HOME_TEXT, default_home
from .units import format_bytes

__all__ = [
    "EXIT_BELOW_THRESHOLD",
    "EXIT_ERROR",
    "EXIT_INCOMPLETE",
    "EXIT_NOT_RUNNING",
    "EXIT_NO_HOME",
    "CliError",
    "Progress",
    "absolute",
    "add_convergence_secret",
    "add_home",
    "add_json",
    "add_node_settings",
    "backup_summary",
    "call",
    "finish",
    "format_eta",
    "lazy",
    "print_json",
    "resolve_home",
    "table",
]


class CliError(Exception):
    """A one-line reason for a non-zero exit (1 unless ``code`` says otherwise)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


#: Exit codes a script can tell apart (README, "Exit codes").
EXIT_ERROR = 1
EXIT_NO_HOME = 4
EXIT_NOT_RUNNING = 5
#: A backup that completed but could not read some entries (they are named in its notes).
EXIT_INCOMPLETE = 3
#: ``gridnode check``: a snapshot has a chunk at the repair threshold, not repaired.
EXIT_BELOW_THRESHOLD = 6


def format_eta(seconds: float) -> str:
    """``h:mm:ss`` (``m:ss`` under an hour), as people read a remaining time."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """A one-line progress display on a terminal, redrawn in place; silent otherwise.

    The line is cut to the terminal's width (read at every redraw, so a resized window
    is followed) and the rest of the previous line erased with ``ESC[K``: a line one
    column too long wraps, and every redraw then starts a new line."""

    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self._last = 0.0
        self._drawn = False

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = shutil.get_terminal_size().columns
        return max(20, columns - 1)  # never the last column: some terminals wrap there

    def _draw(self, text: str) -> None:
        self.stream.write("\r" + text[: self._width()] + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def update(self, event: dict[str, Any]) -> None:
        if not self.enabled or event.get("event") != "progress":
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        self._draw(self.line(event, self._width()))

    @staticmethod
    def line(event: dict[str, Any], width: int = 80) -> str:
        """The text of one redraw (without the carriage return), at most ``width`` wide."""
        if "packets_held" in event:  # leave: the owners' hand-over
            return (
                f"handing over: {event['packets_held']}/{event['packets_at_start']} "
                f"packets still held, {event.get('seconds', 0):.0f} s"
            )[:width]
        if "chunks_checked" in event and "bytes_total" not in event:  # verify, repair
            total = event.get("chunks_total")
            frac = min(event["chunks_checked"] / total, 1.0) if total else None
            line = f"{event.get('phase', 'checking')}: {event['chunks_checked']}"
            line += f"/{total} chunks ({frac * 100:5.1f}%)" if frac is not None else " chunks"
            if "chunks_repaired" in event:
                line += f", {event['chunks_repaired']} repaired"
            return line[:width]
        done = event.get("bytes_read", event.get("bytes", 0)) or 0
        total = event.get("bytes_total") or 0
        frac = min(done / total, 1.0) if total else 0.0
        files = f"{event.get('files', 0)}/{event.get('files_total', '?')} files"
        rate = format_bytes(event.get("rate_bps") or 0) + "/s"
        eta = event.get("eta_s")
        eta_text = f" ETA {format_eta(eta)}" if isinstance(eta, int | float) else ""
        text = (
            f" {frac * 100:5.1f}% {format_bytes(done)}/{format_bytes(total)} "
            f"{files} {rate}{eta_text}"
        )
        # The bar takes what the figures leave, 10 to 30 columns; none on a narrow screen.
        room = width - len(text) - 2
        if room < 10:
            return text.strip()[:width]
        bar_width = min(30, room)
        filled = int(frac * bar_width)
        return f"[{'#' * filled}{'.' * (bar_width - filled)}]{text}"[:width]

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


#: Columns a summary line fits: a terminal's default width.
SUMMARY_WIDTH = 80


def backup_summary(r: dict[str, Any]) -> str:
    """What ``gridnode backup`` prints at the end: the snapshot on the first line, the
    upload on an indented second.  On one line it was 95 columns for a few thousand files
    (the snapshot id alone is 16) and wrapped on an 80-column terminal; each line now fits
    80 columns up to ten-digit counts.  The notes follow, one per line, as they are.
    ``--json`` prints the job's result instead, unchanged."""
    return (
        f"snapshot {r['snapshot_id']}: {r['files']} files, {format_bytes(r['bytes'])} "
        f"({r['files_unchanged']} unchanged)\n"
        f"  uploaded {format_bytes(r['bytes_uploaded'])} in {r['packets_uploaded']} packets, "
        f"{r['seconds']:.1f} s" + "".join(f"\n  note: {n}" for n in r.get("notes", [])[:10])
    )


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def resolve_home(args: argparse.Namespace) -> Path:
    home = Path(args.home).expanduser() if getattr(args, "home", None) else default_home()
    return home.absolute()


def call(
    args: argparse.Namespace,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    long_job: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> Any:
    """Call the running node of ``--home``; stream events for long jobs.

    ``on_event`` takes the node's events instead of the progress display (or the JSON
    lines of ``--json``): for a command whose events carry its output (``ls``)."""
    home = resolve_home(args)
    as_json = getattr(args, "json", False)
    if not (home / CONFIG_NAME).exists():
        problem = (
            f"{home} is not a gridnode home (no {CONFIG_NAME}); create one with "
            "`gridnode init --home DIR ...`, or point --home (or GRIDNODE_HOME) at yours"
        )
        if as_json and long_job:
            print_json({"event": "error", "code": "no_home", "message": problem})
        raise CliError(problem, EXIT_NO_HOME)
    progress = Progress()

    def show(event: dict[str, Any]) -> None:
        if as_json:
            print_json(event)
        else:
            progress.update(event)

    try:
        result = control_client.call(home, method, params, on_event=on_event or show)
    except ControlError as exc:
        progress.finish()
        if as_json and long_job:
            print_json({"event": "error", "code": exc.code, "message": str(exc)})
        raise CliError(str(exc)) from None
    except NodeNotRunning as exc:
        if as_json and long_job:
            print_json({"event": "error", "code": "not_running", "message": str(exc)})
        raise CliError(
            f"{exc}; start it with `gridnode run --home {home}` (or its systemd unit)",
            EXIT_NOT_RUNNING,
        ) from None
    progress.finish()
    return result


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def finish(args: argparse.Namespace, result: Any, summary: Callable[[Any], str]) -> None:
    if args.json:
        print_json(result)
    else:
        print(summary(result))


def absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--home",
        default=os.environ.get("GRIDNODE_HOME"),
        help=f"node home directory (default {DEFAULT_HOME_TEXT})",
    )


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def add_convergence_secret(p: argparse.ArgumentParser) -> None:
    """The dedup group's secret (``gridnode.dedup_group``), with ``--dedup-group``."""
    p.add_argument(
        "--convergence-secret-file",
        metavar="FILE",
        help="the dedup group's secret (32+ random bytes or a passphrase of 32+ characters); "
        "its derived key is kept in the home, mode 600",
    )
    p.add_argument(
        "--new-convergence-secret",
        metavar="FILE",
        help="make a new group secret in FILE (mode 600) and use it; give FILE to the "
        "group's other members",
    )


def add_node_settings(p: argparse.ArgumentParser, *, init: bool) -> None:
    """The flags of ``init`` (``init=True``) and ``run`` that set config keys: one per key
    declared with a flag (``gridnode.config_keys``), its help and choices from there."""
    for key in CONFIG_KEYS:
        if key.flag == "run" or (init and key.flag == "init"):
            _add_key_flag(p, key)
    p.add_argument("--seed", action="append", help="HOST:PORT of a member to join through")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="set a config key (any but the grid file's: `gridnode config reference`)",
    )
    if init:
        p.add_argument("--label", action="append", help="failure-domain label NAME=VALUE")


def _add_key_flag(p: argparse.ArgumentParser, key: ConfigKey) -> None:
    """``--log-level`` for ``log_level``: the flag's help, default and choices are the
    key's, so the two cannot drift apart.  The value lands under the key's name
    (``--storage`` in ``args.storage_dir``)."""
    text = key.help.replace("%", "%%")  # argparse formats help with %
    if key.default not in (None, ""):
        text += f" (default {key.default})"
    metavar = "DIR" if key.kind == "path" else None
    p.add_argument(
        flag_of(key), dest=key.name, metavar=metavar, choices=key.choices or None, help=text
    )


def lazy(module: str, name: str) -> Callable[[argparse.Namespace], None]:
    """A command handler imported only when its command runs: the parser names every
    command, and most of them must not pay for importing the others' machinery."""

    def run(args: argparse.Namespace) -> None:
        import importlib

        handler: Callable[[argparse.Namespace], None] = getattr(
            importlib.import_module(module), name
        )
        handler(args)

    run.__qualname__ = run.__name__ = name
    return run
