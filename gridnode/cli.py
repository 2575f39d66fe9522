"""The ``gridnode`` command line.

Every command exits 0 on success and non-zero with one line on stderr
(``gridnode: error: ...``) otherwise.  ``--json`` prints machine output on stdout: for
long jobs, progress events as JSON lines and then one final object with
``"event": "result"`` (or ``"event": "error"`` with a ``message``).  Without ``--json``,
long jobs draw a progress bar on a terminal and print a short summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

import trio

from protocol import PROTOCOL_VERSION

from . import __version__
from .config import (
    CONFIG_NAME,
    ConfigError,
    GridFile,
    build_config,
    default_home,
    load_config,
    parse_address,
)
from .control import ControlError, NodeNotRunning, call_node
from .errors import GridError
from .identity import KeyError_, NodeIdentity, load_identity, read_key_argument
from .log import configure_logging
from .trioutil import collapse_groups
from .units import format_bytes

__all__ = ["main"]


class CliError(Exception):
    """A one-line reason for a non-zero exit (1 unless ``code`` says otherwise)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


#: Exit codes a script can tell apart (README, "Exit codes").
EXIT_ERROR = 1
EXIT_NO_HOME = 4
EXIT_NOT_RUNNING = 5


# --- output helpers ---------------------------------------------------------------------------


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


#: A backup that completed but could not read some entries (they are named in its notes).
EXIT_INCOMPLETE = 3


def _print_json(value: Any) -> None:
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
) -> Any:
    """Call the running node of ``--home``; stream events for long jobs."""
    home = resolve_home(args)
    as_json = getattr(args, "json", False)
    if not (home / CONFIG_NAME).exists():
        problem = (
            f"{home} is not a gridnode home (no {CONFIG_NAME}); create one with "
            "`gridnode init --home DIR ...`, or point --home (or GRIDNODE_HOME) at yours"
        )
        if as_json and long_job:
            _print_json({"event": "error", "code": "no_home", "message": problem})
        raise CliError(problem, EXIT_NO_HOME)
    progress = Progress()

    def on_event(event: dict[str, Any]) -> None:
        if as_json:
            _print_json(event)
        else:
            progress.update(event)

    try:
        result = trio.run(lambda: call_node(home, method, params, on_event=on_event))
    except ControlError as exc:
        progress.finish()
        if as_json and long_job:
            _print_json({"event": "error", "code": exc.code, "message": str(exc)})
        raise CliError(str(exc)) from None
    except NodeNotRunning as exc:
        if as_json and long_job:
            _print_json({"event": "error", "code": "not_running", "message": str(exc)})
        raise CliError(
            f"{exc}; start it with `gridnode run --home {home}` (or its systemd unit)",
            EXIT_NOT_RUNNING,
        ) from None
    progress.finish()
    return result


# --- commands ---------------------------------------------------------------------------------


def cmd_grid_create(args: argparse.Namespace) -> None:
    if not args.open:
        raise CliError(
            "a grid is created with `gridnode authority init` (its authority admits nodes by "
            "invitation); `gridnode grid create NAME --out FILE --open` writes an open grid, "
            "which admits anyone who can reach one of its nodes"
        )
    grid = GridFile(name=args.name, grid_id=os.urandom(16), seeds=tuple(args.seed or ()))
    for seed in grid.seeds:
        parse_address(seed, key="seed")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise CliError(f"{out} exists; use --force to overwrite")
    grid.save(out)
    if args.json:
        _print_json(
            {"name": grid.name, "grid_id": grid.grid_id.hex(), "file": str(out), "open": True}
        )
    else:
        print(f"open grid {grid.name!r} ({grid.grid_id.hex()}) written to {out}")


#: Flags shared by ``init`` and ``run`` that map one to one onto config keys.
_RUN_KEYS = ("listen", "advertise", "allocate", "location", "location_check", "log_level")
_INIT_KEYS = (*_RUN_KEYS, "redundancy", "backup_proximity", "packet_proximity")


def _given(args: argparse.Namespace, keys: Sequence[str]) -> dict[str, Any]:
    """The config values given as flags (a flag left out keeps the file's value)."""
    return {key: value for key in keys if (value := getattr(args, key, None)) is not None}


def _set_items(args: argparse.Namespace) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs; validated by the config, so any key may be set."""
    values: dict[str, Any] = {}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--set expects KEY=VALUE, got {item!r}")
        values[key.strip()] = value.strip()
    return values


def _init_values(args: argparse.Namespace, grid: GridFile) -> dict[str, Any]:
    values: dict[str, Any] = {
        "grid_id": grid.grid_id.hex(),
        "grid_name": grid.name,
        "seeds": list(args.seed or grid.seeds),
        "authority_key": grid.authority_key.hex(),
        "authority_address": grid.authority_address,
        **_given(args, _INIT_KEYS),
    }
    if getattr(args, "label", None):
        values["labels"] = list(args.label)
    return values | _set_items(args)


def init_home(
    home: Path, args: argparse.Namespace, identity: NodeIdentity, *, grid: GridFile | None = None
) -> dict[str, Any]:
    """Create a node home (config, key, control token); ``grid`` defaults to ``--grid``."""
    if grid is None:
        grid = GridFile.load(Path(args.grid))
    values = _init_values(args, grid)
    config = build_config(home, values)
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    identity.write_key_file(config.key_path)
    config.save()
    from .control import ensure_token

    ensure_token(home)
    return {
        "home": str(home),
        "node_id": identity.printable_id,
        "short_id": identity.short_id,
        "grid_id": grid.grid_id.hex(),
        "listen": config.listen_address,
        "city": config.city,
        "lat": config.lat,
        "lon": config.lon,
        "allocated_bytes": config.allocated_bytes,
        "key_file": str(config.key_path),
    }


def cmd_init(args: argparse.Namespace) -> None:
    home = resolve_home(args)
    if (home / CONFIG_NAME).exists() and not args.force:
        raise CliError(f"{home} is already a node home; use --force to overwrite its config")
    if args.key:
        stdin = sys.stdin.read() if args.key == "-" else None
        identity = read_key_argument(args.key, stdin)
    elif (home / "node.key").exists():
        identity = load_identity(home / "node.key")
    else:
        identity = NodeIdentity.generate()
    if args.invite and GridFile.load(Path(args.grid)).open:
        raise CliError("--invite: this grid file is an open grid's; it has no authority")
    if args.plan and not args.invite:
        raise CliError("--plan goes with --invite")
    info = init_home(home, args, identity)
    if args.invite:
        from .authority.client import save_pending_invite

        # Used on the node's first start: subscribing needs the node running.
        save_pending_invite(home, args.invite, args.plan or "")
        info["invite_pending"] = True
    if args.json:
        _print_json(info)
    else:
        print(f"node {info['short_id']} initialised in {home}")
        print(
            f"  listen {info['listen']}, location {info['city'] or info['lat']}, "
            f"allocation {format_bytes(info['allocated_bytes'])}"
        )
        print(
            f"  key file {info['key_file']}: keep a copy off this machine "
            f"(or run `gridnode key phrase --home {home}` and write the phrase down)"
        )


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = _given(args, _RUN_KEYS)
    if getattr(args, "seed", None):
        values["seeds"] = list(args.seed)
    return values | _set_items(args)


async def serve_until_signalled(node_run: Callable[..., Any]) -> None:
    """Run a node until SIGINT/SIGTERM, then shut it down gracefully (exit code 0)."""
    async with trio.open_nursery() as nursery:
        node = await nursery.start(node_run)

        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    node.shutdown()
                    return

        nursery.start_soon(watch)
        await node.stopped.wait()
        nursery.cancel_scope.cancel()


def cmd_run(args: argparse.Namespace) -> None:
    from .memory import tune_allocator
    from .node import Node

    tune_allocator()
    home = resolve_home(args)
    config = load_config(home, _run_overrides(args))
    configure_logging(config.log_level)
    identity = load_identity(config.key_path)
    node = Node(config, identity)
    if not args.quiet:
        print(
            f"gridnode {identity.short_id} starting on {config.listen_address} "
            f"(home {home}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
    # A node that cannot start (another one answers on this home's control socket, a
    # port in use) says why in one line, not as a group of one from the root nursery.
    with collapse_groups():
        trio.run(serve_until_signalled, node.run)


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> None:
    status = call(args, "status")
    if args.json:
        _print_json(status)
        return
    print(
        f"node {status['short_id']} at {status['address']} "
        f"({status['city'] or 'no location'}), grid {status['grid_id'][:16]}"
    )
    st = status["storage"]
    print(
        f"storage: {format_bytes(st['used_bytes'])} used of "
        f"{format_bytes(st['allocated_bytes'])}, {st['packets']} packets"
    )
    if status["members"]:
        print(
            _table(
                [
                    (
                        m["short_id"],
                        m["address"],
                        m["state"],
                        m["city"],
                        m["distance_km"],
                        format_bytes(m["free_bytes"]),
                        m["rtt_ms"],
                        "yes" if m["trusted"] else "NO",
                    )
                    for m in status["members"]
                ],
                ["member", "address", "state", "city", "km", "free", "rtt ms", "trusted"],
            )
        )
    else:
        print("no other members known yet")


def _finish(args: argparse.Namespace, result: Any, summary: Callable[[Any], str]) -> None:
    if args.json:
        _print_json(result)
    else:
        print(summary(result))


def _abs(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def read_exclude_file(path: str) -> list[str]:
    """One glob per line; blank lines and lines starting with ``#`` are ignored (as in
    restic's and borg's exclude files)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read the exclude file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"the exclude file {path} is not UTF-8 text") from None
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _dry_run_summary(r: dict[str, Any]) -> str:
    quota = r.get("quota")
    fits = ""
    if quota and "fits" in quota:
        fits = "; it fits the source quota" if quota["fits"] else "; it would NOT fit the quota"
    return (
        f"dry run: {r['files']} files, {format_bytes(r['bytes'])}; {r['files_changed']} new "
        f"or changed ({format_bytes(r['bytes_changed'])}) since "
        f"{r['parent'] or 'no earlier snapshot'}; would store at most "
        f"{format_bytes(r['would_store_at_most'])} on the grid{fits}; nothing uploaded"
        + "".join(f"\n  note: {n}" for n in r.get("notes", [])[:10])
    )


def cmd_backup(args: argparse.Namespace) -> None:
    excludes = list(args.exclude or [])
    for path in args.exclude_file or []:
        excludes += read_exclude_file(path)
    params: dict[str, Any] = {
        "paths": [_abs(p) for p in args.paths],
        "excludes": excludes,
        "one_file_system": bool(args.one_file_system),
        "dry_run": bool(args.dry_run),
    }
    if args.redundancy:
        params["redundancy"] = args.redundancy
    if args.backup_proximity is not None:
        params["backup_proximity"] = args.backup_proximity
    if args.packet_proximity is not None:
        params["packet_proximity"] = args.packet_proximity
    if args.distinct:
        params["distinct"] = list(args.distinct)
    result = call(args, "backup", params, long_job=True)
    if args.dry_run:
        _finish(args, result, _dry_run_summary)
        return
    _finish(
        args,
        result,
        lambda r: (
            f"snapshot {r['snapshot_id']}: {r['files']} files, {format_bytes(r['bytes'])} "
            f"({r['files_unchanged']} unchanged), uploaded {format_bytes(r['bytes_uploaded'])} in "
            f"{r['packets_uploaded']} packets, {r['seconds']:.1f} s"
            + "".join(f"\n  note: {n}" for n in r.get("notes", [])[:10])
        ),
    )
    if result.get("skipped"):
        # Completed, but not everything is in it: a script must be able to tell.
        print(
            f"gridnode: warning: {result['skipped']} entries could not be read and are not "
            "in the snapshot (see the notes)",
            file=sys.stderr,
        )
        sys.exit(EXIT_INCOMPLETE)


def cmd_snapshots(args: argparse.Namespace) -> None:
    rows = call(args, "snapshots")
    if args.json:
        _print_json(rows)
        return
    print(
        _table(
            [
                (
                    r["snapshot_id"],
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])),
                    r["state"],
                    r["files"],
                    format_bytes(r["bytes"]),
                    " ".join(r["roots"]),
                )
                for r in rows
            ],
            ["snapshot", "created", "state", "files", "size", "paths"],
        )
    )


def cmd_restore(args: argparse.Namespace) -> None:
    params: dict[str, Any] = {"snapshot": args.snapshot, "to": _abs(args.to)}
    if args.path:
        params["path"] = args.path
    if args.numeric_owner:
        params["numeric_owner"] = True
    result = call(args, "restore", params, long_job=True)
    _finish(
        args,
        result,
        lambda r: (
            f"restored {r['files']} files, {format_bytes(r['bytes'])} to {r['to']} "
            f"in {r['seconds']:.1f} s" + "".join(f"\n  note: {n}" for n in r.get("notes", [])[:10])
        ),
    )


def cmd_ls(args: argparse.Namespace) -> None:
    params: dict[str, Any] = {"snapshot": args.snapshot}
    if args.path:
        params["path"] = args.path
    rows = call(args, "ls", params)
    if args.json:
        _print_json(rows)
        return
    for r in rows:
        if not args.long:
            print(r["path"])
            continue
        owner = f"{r.get('user') or r.get('uid')}/{r.get('group') or r.get('gid')}"
        target = f" -> {r['link_target']}" if "link_target" in r else ""
        print(
            f"{_TYPE_LETTER.get(r['type'], '?')}{r['mode']} {owner:>16} {r['size']:>12} "
            f"{r['mtime'][:19].replace('T', ' ')} {r['path']}{target}"
        )


_TYPE_LETTER = {
    "file": "-",
    "dir": "d",
    "symlink": "l",
    "fifo": "p",
    "chardev": "c",
    "blockdev": "b",
    "socket": "s",
}


def cmd_find(args: argparse.Namespace) -> None:
    result = call(args, "find", {"pattern": args.pattern, "snapshots": list(args.snapshots)})
    if args.json:
        _print_json(result)
        return
    for m in result["matches"]:
        print(
            f"{m['snapshot_id']}  {m['mtime'][:19].replace('T', ' ')} {m['size']:>12}  {m['path']}"
        )
    if result["truncated"]:
        print(f"... {result['total'] - len(result['matches'])} more matches not shown")


def cmd_diff(args: argparse.Namespace) -> None:
    result = call(args, "diff", {"from": args.first, "to": args.second})
    if args.json:
        _print_json(result)
        return
    fields = {c["path"]: ",".join(c["fields"]) for c in result["changes"]}
    for mark, key in (("+", "added"), ("-", "removed"), ("M", "changed")):
        for path in result[key]:
            print(f"{mark} {path}" + (f"  ({fields[path]})" if mark == "M" else ""))


def cmd_verify(args: argparse.Namespace) -> None:
    result = call(args, "verify", {"snapshot": args.snapshot}, long_job=True)
    _finish(
        args,
        result,
        lambda r: (
            f"snapshot {r['snapshot_id']}: {'OK' if r['ok'] else 'DAMAGED'}: "
            f"{r['chunks_healthy']} chunks healthy, {r['chunks_degraded']} degraded, "
            f"{r['chunks_lost']} lost (fewest spare packets: {r['min_spare_packets']})"
        ),
    )
    if not result["ok"]:
        raise CliError(f"snapshot {result['snapshot_id']} cannot be fully restored")


def cmd_forget(args: argparse.Namespace) -> None:
    result = call(args, "forget", {"snapshot": args.snapshot}, long_job=True)
    _finish(
        args,
        result,
        lambda r: (
            f"forgot {r['snapshot_id']}: {r['chunks_freed']} chunks freed, "
            f"{r['packets_deleted']} packets deleted"
        ),
    )


def cmd_repair(args: argparse.Namespace) -> None:
    params = {} if args.snapshot in (None, "all") else {"snapshot": args.snapshot}
    result = call(args, "repair", params, long_job=True)
    _finish(
        args,
        result,
        lambda r: (
            f"checked {r['chunks_checked']} chunks: {r['chunks_healthy']} healthy, "
            f"{r['chunks_repaired']} repaired ({r['packets_rebuilt']} packets rebuilt), "
            f"{r['chunks_lost']} lost, {r['chunks_unrepaired']} could not be repaired; "
            f"{len(r['records_rewritten'])} snapshot records rewritten"
        ),
    )
    if not result["ok"]:
        raise CliError("some chunks could not be brought back to full redundancy")


def cmd_placement(args: argparse.Namespace) -> None:
    result = call(args, "placement", {"snapshot": args.snapshot})
    if args.json:
        _print_json(result)
        return
    src = result["source"]
    print(
        f"snapshot {result['snapshot_id']} from {src['city'] or 'source'} "
        f"({src['lat']}, {src['lon']}); rules {result['rules']}"
    )
    for chunk in result["chunks"]:
        print(
            f"chunk {chunk['chunk_id'][:12]} ({chunk['k']}/{chunk['n']}): pairwise "
            f"{chunk['pairwise_min_km']}-{chunk['pairwise_max_km']} km"
        )
        for p in chunk["packets"]:
            print(
                f"  packet {p['packet_id'][:12]} -> {p['target_short']} "
                f"{p['city'] or ''} {p['distance_km']} km"
            )


def cmd_log(args: argparse.Namespace) -> None:
    result = call(args, "log")
    if args.json:
        _print_json(result)
    else:
        for e in result["entries"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
            print(
                f"{e['seq']:5d} {when} {e['event']:<18} {e['snapshot_id'] or ''} "
                f"{json.dumps(e['detail'])}"
            )
        print(f"chain: {'verified' if result['verified'] else 'BROKEN'} ({result['detail']})")
    if not result["verified"]:
        raise CliError(f"the backup log fails verification: {result['detail']}")


def cmd_stop(args: argparse.Namespace) -> None:
    call(args, "shutdown")
    if not getattr(args, "json", False):
        print("node stopping")


def cmd_key(args: argparse.Namespace) -> None:
    home = resolve_home(args)
    identity = load_identity(home / "node.key")
    if args.action == "phrase":
        print(identity.recovery_phrase())
    elif args.action == "export":
        if not args.out:
            raise CliError(
                "key export needs --out FILE: the key is secret, so it goes to a new file "
                "(mode 600), never to the terminal; `gridnode key phrase` prints the "
                "words to write down instead"
            )
        out = Path(args.out)
        if out.exists():
            raise CliError(f"{out} exists")
        identity.write_key_file(out)
        print(f"key written to {out} (mode 600)")
    else:
        print(identity.printable_id)


def cmd_recover(args: argparse.Namespace) -> None:
    from .recover_cli import recover

    result = recover(args)
    if args.json:
        _print_json(result)
    else:
        print(
            f"recovered {len(result['snapshots'])} snapshot(s) from recovery root "
            f"version {result['root_version']} into {result['home']}"
        )


def cmd_demo(args: argparse.Namespace) -> None:
    from simulations.demo import run_demo

    ok = run_demo(args)
    if not ok:
        raise CliError("demo failed: the restored data did not match")


# --- parser -----------------------------------------------------------------------------------


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--home",
        default=os.environ.get("GRIDNODE_HOME"),
        help="node home directory (default $GRIDNODE_HOME or ~/.local/share/gridnode)",
    )


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def _add_node_settings(p: argparse.ArgumentParser, *, init: bool) -> None:
    p.add_argument("--listen", help="HOST:PORT to listen on for peers")
    p.add_argument("--advertise", help="HOST:PORT other members dial (with --listen 0.0.0.0)")
    p.add_argument("--seed", action="append", help="HOST:PORT of a member to join through")
    p.add_argument("--location", help='"CITY" or LAT,LON')
    p.add_argument("--allocate", help="storage to offer the grid, e.g. 50GB or 1.5TiB")
    p.add_argument(
        "--location-check",
        choices=["enforce", "warn", "off"],
        help="check members' claimed locations against round-trip times (default enforce)",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error", "critical"],
        help="how much the node logs to stderr (default warning)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key")
    if init:
        p.add_argument("--label", action="append", help="failure-domain label NAME=VALUE")
        p.add_argument("--redundancy", help="default K/N for backups (default 4/6)")
        p.add_argument("--backup-proximity", help="default MIN:MAX from source (km or mi)")
        p.add_argument("--packet-proximity", help="default MIN:MAX between targets")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridnode",
        description="gridnode: back up to a peer-to-peer grid of other people's machines",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"gridnode {__version__} (protocol {PROTOCOL_VERSION})",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    grid = sub.add_parser("grid", help="grid files")
    grid_sub = grid.add_subparsers(dest="grid_command", required=True)
    create = grid_sub.add_parser("create", help="create a new grid file")
    create.add_argument("name", help="the grid's name")
    create.add_argument("--out", required=True, help="the grid file to write")
    create.add_argument("--seed", action="append", help="HOST:PORT of a first member")
    create.add_argument("--force", action="store_true", help="overwrite an existing file")
    create.add_argument(
        "--open",
        action="store_true",
        help="an open grid, without an authority: admits anyone who can reach a node",
    )
    _add_json(create)
    create.set_defaults(fn=cmd_grid_create)

    p = sub.add_parser("init", help="create a node home")
    _add_home(p)
    p.add_argument(
        "--grid",
        required=True,
        help="grid file from `gridnode authority init` (or `gridnode grid create --open`)",
    )
    p.add_argument("--key", help="reuse a key file (or - for a recovery phrase on stdin)")
    p.add_argument("--force", action="store_true", help="reuse a directory that is not empty")
    p.add_argument("--invite", help="invite code from the grid authority (used on first start)")
    p.add_argument("--plan", help="plan to subscribe under (with --invite)")
    _add_node_settings(p, init=True)
    _add_json(p)
    p.set_defaults(fn=cmd_init)

    from .authority.cli import add_account_parser
    from .authority.cli import add_parsers as add_authority_parsers

    add_authority_parsers(sub)
    add_account_parser(sub)

    p = sub.add_parser("run", help="run the node until SIGINT/SIGTERM")
    _add_home(p)
    _add_node_settings(p, init=False)
    p.add_argument("--quiet", action="store_true", help="do not print the start-up line")
    p.set_defaults(fn=cmd_run)

    for name, fn, helptext in (
        ("status", cmd_status, "this node and what it sees"),
        ("snapshots", cmd_snapshots, "list snapshots"),
        ("log", cmd_log, "the signed backup log"),
        ("stop", cmd_stop, "stop the running node"),
    ):
        p = sub.add_parser(name, help=helptext)
        _add_home(p)
        _add_json(p)
        p.set_defaults(fn=fn)

    p = sub.add_parser("backup", help="back up paths")
    _add_home(p)
    p.add_argument("paths", nargs="+", help="files and directories to back up")
    p.add_argument("--redundancy", help="K/N erasure coding, e.g. 4/6")
    p.add_argument("--exclude", action="append", help="glob to skip (name or path)")
    p.add_argument(
        "--exclude-file",
        action="append",
        metavar="FILE",
        help="read globs to skip from FILE, one per line (# starts a comment)",
    )
    p.add_argument(
        "--one-file-system",
        action="store_true",
        help="record mount points but do not enter other file systems",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="walk and compare with the last snapshot; upload and record nothing",
    )
    p.add_argument("--backup-proximity", help="MIN:MAX distance source->targets (km or mi)")
    p.add_argument("--packet-proximity", help="MIN:MAX distance between targets")
    p.add_argument("--distinct", action="append", help="label whose values must all differ")
    _add_json(p)
    p.set_defaults(fn=cmd_backup)

    p = sub.add_parser("restore", help="restore a snapshot (or one path of it)")
    _add_home(p)
    p.add_argument("snapshot", help="snapshot id, unique prefix, or latest")
    p.add_argument("--to", required=True, help="directory to restore into (made if missing)")
    p.add_argument("--path", help="one file or sub-tree (as `ls` shows it; \\xHH for a byte)")
    p.add_argument(
        "--numeric-owner",
        action="store_true",
        help="as root, set owners by recorded number, not by user and group name",
    )
    _add_json(p)
    p.set_defaults(fn=cmd_restore)

    p = sub.add_parser("ls", help="list what a snapshot holds (or one path of it)")
    _add_home(p)
    p.add_argument("snapshot", help="snapshot id, unique prefix, or latest")
    p.add_argument("path", nargs="?", help="a file or sub-tree (as `ls` shows it)")
    p.add_argument("--long", "-l", action="store_true", help="type, mode, owner, size, mtime")
    _add_json(p)
    p.set_defaults(fn=cmd_ls)

    p = sub.add_parser(
        "find",
        help="find files by name or path glob in snapshots",
        description="Entries whose name (or, for a pattern with '/', whose path) matches "
        "PATTERN, in the given snapshots or all complete ones, newest first.  Example: "
        "gridnode find '*.pdf' latest",
    )
    _add_home(p)
    p.add_argument("pattern", help="a glob: '*.pdf', 'home/*/taxes/*'")
    p.add_argument("snapshots", nargs="*", help="snapshot ids, prefixes or latest (default: all)")
    _add_json(p)
    p.set_defaults(fn=cmd_find)

    p = sub.add_parser("diff", help="what changed between two snapshots")
    _add_home(p)
    p.add_argument("first", help="the older snapshot (id, prefix or latest)")
    p.add_argument("second", help="the newer snapshot (id, prefix or latest)")
    _add_json(p)
    p.set_defaults(fn=cmd_diff)

    for name, fn, helptext in (
        ("verify", cmd_verify, "fetch and check every packet"),
        ("forget", cmd_forget, "drop a snapshot and free its packets"),
        ("placement", cmd_placement, "where each packet went"),
    ):
        p = sub.add_parser(name, help=helptext)
        _add_home(p)
        p.add_argument("snapshot", help="snapshot id, unique prefix, or latest")
        _add_json(p)
        p.set_defaults(fn=fn)

    p = sub.add_parser("repair", help="rebuild lost packets on new holders, under the rules")
    _add_home(p)
    p.add_argument("snapshot", nargs="?", help="one snapshot (default: every complete one)")
    _add_json(p)
    p.set_defaults(fn=cmd_repair)

    p = sub.add_parser("key", help="show or export this node's key")
    _add_home(p)
    p.add_argument(
        "action",
        choices=["id", "phrase", "export"],
        help="id: the node id; phrase: 24 words that hold the key; export: a key file",
    )
    p.add_argument("--out", help="the key file to write (export; mode 600)")
    p.set_defaults(fn=cmd_key)

    p = sub.add_parser("recover", help="rebuild a lost node's catalog from the grid")
    _add_home(p)
    p.add_argument("--key", required=True, help="key file, or - for the phrase on stdin")
    p.add_argument("--grid", required=True, help="the grid file the node belonged to")
    p.add_argument("--seed", action="append", required=True, help="HOST:PORT of a member to ask")
    p.add_argument(
        "--listen", default="127.0.0.1:0", help="HOST:PORT for the recovered node's home"
    )
    p.add_argument("--advertise", help="HOST:PORT other members dial")
    p.add_argument("--location", help='"CITY" or LAT,LON of the new machine')
    p.add_argument("--allocate", help="storage to offer the grid, e.g. 50GB")
    p.add_argument(
        "--location-check",
        choices=["enforce", "warn", "off"],
        help="check members' claimed locations (default enforce)",
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the grid (default 60)"
    )
    _add_json(p)
    p.set_defaults(fn=cmd_recover)

    p = sub.add_parser("demo", help="a local grid in European cities: back up, lose, restore")
    p.add_argument("--dir", help="where to put the demo grid (default: a temp dir)")
    p.add_argument("--nodes", type=int, default=8, help="how many nodes (default 8)")
    p.add_argument("--keep", action="store_true", help="leave the grid's files behind")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("completion", help="shell completion script (bash, zsh or tcsh)")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell to complete for")
    p.set_defaults(fn=cmd_completion)

    p = sub.add_parser("manpage", help="the man page, in roff (man -l <(gridnode manpage))")
    p.set_defaults(fn=cmd_manpage)
    _add_examples(parser)
    return parser


#: The exit codes, for the man page (the README lists the same).
EXIT_CODES: Final = (
    (0, "done"),
    (EXIT_ERROR, "an error; the line on stderr says which"),
    (2, "a usage error"),
    (3, "a backup completed but could not read some entries (named in its notes)"),
    (EXIT_NO_HOME, "no such home (no gridnode.toml): gridnode init makes one"),
    (EXIT_NOT_RUNNING, "the home's node is not running: gridnode run starts it"),
    (130, "interrupted"),
)


def cmd_completion(args: argparse.Namespace) -> None:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))


def cmd_manpage(args: argparse.Namespace) -> None:
    from .manpage import render

    parser = build_parser()
    print(
        render(
            parser,
            list(iter_commands(parser)),
            dict(EXAMPLES),
            version=f"{__version__} (protocol {PROTOCOL_VERSION})",
            exit_codes=EXIT_CODES,
        ),
        end="",
    )


#: One example per command, shown under its --help (and in the man page).
EXAMPLES: Final = {
    "grid create": "gridnode grid create lab --out lab-grid.toml --open",
    "init": "gridnode init --home ~/gn --grid office-grid.toml --listen 0.0.0.0:7400 "
    '--advertise 10.0.0.7:7400 --location "Zürich" --allocate 500GB --invite inv-...',
    "authority init": "gridnode authority init --home ~/gn-auth --out office-grid.toml "
    "--listen 0.0.0.0:7400 --advertise 10.0.0.5:7400 --name office",
    "authority invite": "gridnode authority invite --home ~/gn-auth --plan small",
    "authority requests": "gridnode authority requests --home ~/gn-auth",
    "authority approve": "gridnode authority approve --home ~/gn-auth NODE_ID --plan small",
    "authority deny": "gridnode authority deny --home ~/gn-auth NODE_ID",
    "authority revoke": "gridnode authority revoke --home ~/gn-auth NODE_ID",
    "authority clients": "gridnode authority clients --home ~/gn-auth --json",
    "authority log": "gridnode authority log --home ~/gn-auth",
    "subscribe": "gridnode subscribe --home ~/gn --invite inv-...",
    "account": "gridnode account --home ~/gn",
    "run": "gridnode run --home ~/gn --log-level info",
    "status": "gridnode status --home ~/gn",
    "snapshots": "gridnode snapshots --home ~/gn",
    "log": "gridnode log --home ~/gn",
    "stop": "gridnode stop --home ~/gn",
    "backup": "gridnode backup --home ~/gn ~/Documents --exclude-file ~/.gridnode-excludes "
    "--backup-proximity 100km:3000km",
    "restore": "gridnode restore --home ~/gn latest --to /tmp/restore --path Documents/taxes",
    "ls": "gridnode ls --home ~/gn latest Documents --long",
    "find": "gridnode find --home ~/gn '*.pdf' latest",
    "diff": "gridnode diff --home ~/gn SNAP_A SNAP_B",
    "verify": "gridnode verify --home ~/gn latest",
    "forget": "gridnode forget --home ~/gn SNAPSHOT",
    "placement": "gridnode placement --home ~/gn latest",
    "repair": "gridnode repair --home ~/gn",
    "key": "gridnode key phrase --home ~/gn",
    "recover": "gridnode recover --home ~/gn2 --key - --grid office-grid.toml --seed 10.0.0.5:7400",
    "demo": "gridnode demo --nodes 8",
}


def iter_commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every leaf command's words and parser (``("authority", "init")``, ...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from iter_commands(child, (*prefix, name))
            return
    if prefix:
        yield prefix, parser


def _add_examples(parser: argparse.ArgumentParser) -> None:
    for words, command in iter_commands(parser):
        example = EXAMPLES.get(" ".join(words))
        if example:
            command.epilog = f"example:\n  {example}"
            command.formatter_class = argparse.RawDescriptionHelpFormatter


#: Options whose value may be coordinates, and coordinates with a leading minus.
_COORDINATE_OPTIONS: Final = frozenset({"--location"})
_NEGATIVE_COORDINATES: Final = re.compile(r"^-\d+(\.\d+)?\s*,\s*-?\d+(\.\d+)?$")


def _join_negative_coordinates(argv: Sequence[str]) -> list[str]:
    """``--location -33.87,151.21`` as ``--location=-33.87,151.21``: argparse takes any
    word starting with ``-`` that is not a plain number for an option, so every
    southern-hemisphere latitude was refused."""
    out: list[str] = []
    words = list(argv)
    i = 0
    while i < len(words):  # bounded: i grows every pass
        word = words[i]
        if (
            word in _COORDINATE_OPTIONS
            and i + 1 < len(words)
            and _NEGATIVE_COORDINATES.match(words[i + 1])
        ):
            out.append(f"{word}={words[i + 1]}")
            i += 2
            continue
        out.append(word)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(_join_negative_coordinates(sys.argv[1:] if argv is None else argv))
    if args.command != "run":
        configure_logging(os.environ.get("GRIDNODE_LOG_LEVEL", "warning"))
    try:
        args.fn(args)
    except (CliError, ConfigError, KeyError_, GridError) as exc:
        print(f"gridnode: error: {exc}", file=sys.stderr)
        sys.exit(exc.code if isinstance(exc, CliError) else EXIT_ERROR)
    except KeyboardInterrupt:
        print("gridnode: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        print(
            f"gridnode: error: {exc.strerror or exc}"
            f"{': ' + str(exc.filename) if exc.filename else ''}",
            file=sys.stderr,
        )
        sys.exit(1)
    sys.exit(0)
