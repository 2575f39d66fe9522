"""The command line: ``gridsim up``, ``down`` and ``run`` (and ``_supervise``, which
``up`` starts); their flags, output and exit codes are a stable interface."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .manual import MANUAL
from .model import ScenarioError
from .network import choose_network
from .parser import load_scenario
from .report import render_text
from .runner import run_scenario
from .supervisor import (
    DOWN_GRACE_S,
    STATE_FILE,
    cmd_supervise,
    cmdline,
    pid_alive,
    read_state,
    stop_pids,
    up_cities,
    write_state,
)

__all__ = ["build_parser", "cmd_down", "cmd_run", "cmd_up", "main"]


def cmd_run(args: argparse.Namespace) -> int:
    """``gridsim run``: 0 all passed, 1 a failure, 2 a bad scenario or --dir, 130 interrupted."""
    try:
        scenario = load_scenario(Path(args.scenario))
    except ScenarioError as exc:
        print(f"gridsim: error: {exc}", file=sys.stderr)
        return 2
    if args.dir:
        base = Path(args.dir).absolute()
        if base.exists() and any(base.iterdir()):
            print(
                f"gridsim: error: {base} is not empty; give a new or empty --dir", file=sys.stderr
            )
            return 2
        base.mkdir(parents=True, exist_ok=True)
    else:
        base = Path(tempfile.mkdtemp(prefix=f"gridsim-{scenario.name}-"))
    keep = bool(args.dir) or args.keep
    network = choose_network(args.netns)

    def progress(text: str) -> None:
        if not args.quiet:
            print(f"gridsim: {text}", file=sys.stderr, flush=True)

    try:
        report = run_scenario(scenario, base=base, network=network, progress=progress)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    report.dir = str(base) if keep else None
    if args.json:
        print(json.dumps(report.to_json()), flush=True)
    else:
        print(render_text(report), flush=True)
    if report.interrupted:
        return 130
    return 0 if report.ok else 1


def cmd_up(args: argparse.Namespace) -> int:
    """``gridsim up``: start the supervisor, wait until it says the grid is ready, print it."""
    directory = Path(args.dir).absolute()
    if args.nodes < 1 or args.nodes > 64:
        print("gridsim: error: --nodes must be 1..64", file=sys.stderr)
        return 2
    try:
        up_cities(args)
    except ValueError as exc:
        print(f"gridsim: error: {exc}", file=sys.stderr)
        return 2
    previous = read_state(directory)
    if previous is not None:
        running = pid_alive(int(previous.get("supervisor_pid", 0)))
        print(
            f"gridsim: error: {directory} already holds a grid"
            f"{' that is running; gridsim down --dir first' if running else ''}; "
            "use another --dir",
            file=sys.stderr,
        )
        return 1
    directory.mkdir(parents=True, exist_ok=True)
    if args.location_check == "off":
        print(
            "gridsim: all nodes listen on 127.0.0.1: the speed-of-light location check "
            "is off (give --location-check to change it)",
            file=sys.stderr,
            flush=True,
        )
    argv = [
        sys.executable,
        "-m",
        "simulations.gridsim",
        "_supervise",
        "--dir",
        str(directory),
        "--nodes",
        str(args.nodes),
        "--location-check",
        args.location_check,
        "--allocate",
        args.allocate,
        "--lifetime",
        str(args.lifetime),
        "--timeout",
        str(args.timeout),
        "--log-level",
        args.log_level,
    ]
    if args.cities:
        argv += ["--cities", args.cities]
    if args.open:
        argv.append("--open")
    with (directory / "gridsim-supervisor.log").open("ab") as log:
        supervisor = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + args.timeout + 60
    state: dict[str, Any] | None = None
    try:
        for _ in range(int((args.timeout + 60) / 0.2) + 1):
            state = read_state(directory)
            if state is not None and state.get("state") in ("ready", "failed", "stopped"):
                break
            if supervisor.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        supervisor.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            supervisor.wait(timeout=DOWN_GRACE_S + 10)
        print("gridsim: interrupted; the grid was stopped", file=sys.stderr)
        return 130
    if state is None or state.get("state") != "ready":
        why = (state or {}).get("error") or "the supervisor did not report a ready grid"
        if supervisor.poll() is None:
            supervisor.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                supervisor.wait(timeout=DOWN_GRACE_S + 10)
        print(
            f"gridsim: error: grid did not start: {why} (see "
            f"{directory / 'gridsim-supervisor.log'})",
            file=sys.stderr,
        )
        return 1
    print(
        json.dumps(
            {
                k: state[k]
                for k in (
                    "dir",
                    "grid_file",
                    "supervisor_pid",
                    "nodes",
                    "authority",
                    "location_check",
                    "converged_s",
                )
            }
        ),
        flush=True,
    )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """``gridsim down``: stop the grid through its supervisor, or directly if that is gone; print a
    JSON summary."""
    directory = Path(args.dir).absolute()
    state = read_state(directory)
    if state is None:
        print(f"gridsim: error: no grid in {directory} ({STATE_FILE} missing)", file=sys.stderr)
        return 1
    supervisor = int(state.get("supervisor_pid") or 0)
    via = "supervisor"
    already = state.get("state") == "stopped"
    if (
        state.get("state") != "stopped"
        and supervisor
        and pid_alive(supervisor)
        and "_supervise" in cmdline(supervisor)
        and str(directory) in cmdline(supervisor)
    ):
        os.kill(supervisor, signal.SIGTERM)
        for _ in range(int((DOWN_GRACE_S + 20) / 0.1)):
            if not pid_alive(supervisor):
                break
            time.sleep(0.1)
        state = read_state(directory) or state
    if state.get("state") != "stopped":
        via = "direct (the supervisor was gone)"
        state["down"] = stop_pids(state.get("nodes", []))
        authority = state.get("authority")
        state["down_authority"] = stop_pids([authority])[0] if authority else None
        state["state"] = "stopped"
        write_state(directory, state)
    summary = {
        "dir": str(directory),
        "stopped": True,
        "via": via,
        "already_stopped": already,
        "nodes": state.get("down", []),
        "authority": state.get("down_authority"),
    }
    print(json.dumps(summary), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``gridsim`` argument parser."""
    parser = argparse.ArgumentParser(prog="gridsim", description=MANUAL.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{up,down,run}")

    def grid_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", required=True, help="where the grid's homes and state live")
        p.add_argument("--nodes", type=int, required=True)
        p.add_argument(
            "--cities",
            help="comma-separated, or semicolon-separated to mix in "
            "LAT,LON (default: European capitals)",
        )
        p.add_argument(
            "--location-check",
            nargs="?",
            const="enforce",
            default="off",
            choices=["enforce", "warn", "off"],
            help="default off: every node is on 127.0.0.1",
        )
        p.add_argument("--allocate", default="2GB")
        p.add_argument(
            "--lifetime",
            type=float,
            default=86_400.0,
            help="stop the grid after this many seconds (default a day)",
        )
        p.add_argument(
            "--timeout", type=float, default=120.0, help="seconds to wait for the grid to converge"
        )
        p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        p.add_argument(
            "--open",
            action="store_true",
            help="an open grid, without an authority: admits anyone who can reach a node",
        )

    up = sub.add_parser("up", help="start a grid in the background")
    grid_options(up)
    up.set_defaults(fn=cmd_up)
    supervise = sub.add_parser("_supervise")  # started by `up`, not by people
    grid_options(supervise)
    supervise.set_defaults(fn=cmd_supervise)

    down = sub.add_parser("down", help="stop a grid started by `up`")
    down.add_argument("--dir", required=True)
    down.set_defaults(fn=cmd_down)

    run = sub.add_parser("run", help="run a scenario file")
    run.add_argument("scenario")
    run.add_argument("--json", action="store_true", help="one JSON report on stdout")
    run.add_argument("--dir", help="keep the grid's files here (new or empty directory)")
    run.add_argument("--keep", action="store_true", help="keep the temporary directory")
    run.add_argument(
        "--netns",
        action="store_true",
        help="one network namespace per node, delays from distance (root)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress on stderr")
    run.set_defaults(fn=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """The ``gridsim`` command (the ``gridsim`` script and ``python -m simulations.gridsim``)."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.fn(args))
    except KeyboardInterrupt:
        print("gridsim: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
