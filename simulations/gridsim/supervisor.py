"""The supervisor of an ``up`` grid: a detached process that starts the nodes, reaps
them (so ``down`` reports their real exit codes), and stops them on a signal or when
the grid's lifetime ends; plus the state file it shares with ``up`` and ``down``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final

from gridnode.logic.cities import fold_name, parse_location

from ..harness import AUTHORITY_NAME, LocalGrid, NodeSpec
from .cluster import add_nodes, start_nodes, wait_views

__all__ = [
    "DOWN_GRACE_S",
    "EUROPEAN_CAPITALS",
    "STATE_FILE",
    "cmd_supervise",
    "cmdline",
    "pid_alive",
    "read_state",
    "stop_pids",
    "up_cities",
    "write_state",
]

EUROPEAN_CAPITALS: Final = (
    "Paris",
    "Berlin",
    "Madrid",
    "Rome",
    "Vienna",
    "Amsterdam",
    "Warsaw",
    "Prague",
    "Lisbon",
    "Stockholm",
    "Brussels",
    "Dublin",
    "Athens",
    "Budapest",
    "Copenhagen",
    "Helsinki",
    "Oslo",
    "Bern",
    "Bucharest",
    "Sofia",
)
STATE_FILE: Final = "gridsim.json"
DOWN_GRACE_S: Final = 10.0


def write_state(directory: Path, state: dict[str, Any]) -> None:
    """Write the state file atomically: ``up`` and ``down`` poll it while the supervisor writes."""
    path = directory / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def read_state(directory: Path) -> dict[str, Any] | None:
    """The state file, or None when there is none (or it is unreadable)."""
    try:
        value = json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def pid_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[:1]
    return bool(state) and state[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    """A process's command line, to make sure a recorded pid is still ours before signalling it."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _node_name(city: str, taken: set[str]) -> str:
    """A node name from its city, unique among ``taken`` (which it extends)."""
    base = fold_name(city).replace(" ", "-") or "node"
    name = base
    for i in range(2, len(taken) + 3):
        if name not in taken:
            break
        name = f"{base}-{i}"
    taken.add(name)
    return name


def up_cities(args: argparse.Namespace) -> list[str]:
    # Commas separate cities, unless there is a semicolon: then "Oslo;59.9,10.7" works.
    """One city per node for ``up``, cycling through ``--cities``; raises ValueError for an unknown
    one."""
    separator = ";" if args.cities and ";" in args.cities else ","
    cities = (
        [c.strip() for c in args.cities.split(separator) if c.strip()]
        if args.cities
        else list(EUROPEAN_CAPITALS)
    )
    if not cities:
        raise ValueError("--cities is empty")
    for city in set(cities):
        parse_location(city)  # fail before starting anything
    return [cities[i % len(cities)] for i in range(args.nodes)]


class _Stop(BaseException):
    """The supervisor was asked to stop (SIGTERM, SIGINT, SIGHUP)."""


def cmd_supervise(args: argparse.Namespace) -> int:
    """The detached owner of an ``up`` grid: starts it, reaps it, stops it on SIGTERM."""
    directory = Path(args.dir).absolute()
    state: dict[str, Any] = {
        "state": "starting",
        "dir": str(directory),
        "supervisor_pid": os.getpid(),
        "nodes": [],
        "location_check": args.location_check,
        "lifetime_s": args.lifetime,
        "started_at": time.time(),
    }
    write_state(directory, state)

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Stop()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)
    grid = LocalGrid(directory, name="gridsim", log_level=args.log_level, authority=not args.open)
    state["grid_file"] = str(grid.grid_file)
    cities = up_cities(args)
    taken: set[str] = {AUTHORITY_NAME}
    names = [
        _node_name(city if parse_location(city)[2] else f"node {i + 1}", taken)
        for i, city in enumerate(cities)
    ]
    exited: dict[str, int] = {}
    try:
        try:
            first = names[0]
            add_nodes(
                grid,
                [
                    (
                        NodeSpec(
                            name=name,
                            location=city,
                            allocate=args.allocate,
                            location_check=args.location_check,
                        ),
                        [first] if name != first else [],
                    )
                    for name, city in zip(names, cities, strict=True)
                ],
            )
            statuses = start_nodes(grid, names)
            # Every node sees every other, and the authority (a member too), alive.
            extra = {grid.authority_address} if grid.authority_address else set()
            seconds, _ = wait_views(
                grid,
                {
                    n: ({grid.nodes[o].address for o in names if o != n} | extra, set())
                    for n in names
                },
                args.timeout,
            )
        except Exception as exc:
            state.update(state="failed", error=f"{type(exc).__name__}: {exc}")
            write_state(directory, state)
            return 1
        pids = {
            name: proc.pid
            for name, node in grid.all_nodes().items()
            if (proc := node.process) is not None
        }
        authority = grid.authority_node
        state["authority"] = (
            {
                "name": AUTHORITY_NAME,
                "home": str(authority.home),
                "address": authority.address,
                "pid": pids.get(AUTHORITY_NAME),
            }
            if authority is not None
            else None
        )
        state["nodes"] = [
            {
                "name": name,
                "home": str(grid.nodes[name].home),
                "address": grid.nodes[name].address,
                "pid": pids.get(name),
                "city": city,
                "node_id": status["node_id"],
                "lat": status.get("lat"),
                "lon": status.get("lon"),
            }
            for name, city, status in zip(names, cities, statuses, strict=True)
        ]
        state.update(state="ready", converged_s=round(seconds, 2))
        write_state(directory, state)
        for _ in range(int(args.lifetime / 0.5) + 1):
            time.sleep(0.5)
            for name, node in grid.all_nodes().items():
                if (
                    name not in exited
                    and node.process is not None
                    and node.process.poll() is not None
                ):
                    exited[name] = node.process.returncode
                    state.setdefault("exited", {})[name] = node.process.returncode
                    write_state(directory, state)
        state["stopped_because"] = f"lifetime of {args.lifetime:g} s reached"
    except _Stop:
        state["stopped_because"] = "signal"
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        down = _stop_children(grid, exited)
        state["down"] = [entry for entry in down if entry["name"] != AUTHORITY_NAME]
        state["down_authority"] = next(
            (entry for entry in down if entry["name"] == AUTHORITY_NAME), None
        )
        state["state"] = "stopped"
        write_state(directory, state)
    return 0


def _stop_children(grid: LocalGrid, exited: Mapping[str, int]) -> list[dict[str, Any]]:
    """SIGTERM every node, SIGKILL what is left after the grace period; their exit codes."""
    summary: dict[str, dict[str, Any]] = {}
    nodes = grid.all_nodes()
    for name, node in nodes.items():
        proc = node.process
        if proc is None:
            continue
        summary[name] = {"name": name, "pid": proc.pid}
        if proc.poll() is not None:
            summary[name].update(
                exit_code=proc.returncode, how="exited before down" if name in exited else "exited"
            )
            continue
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        summary[name]["how"] = "SIGTERM"
    deadline = time.monotonic() + DOWN_GRACE_S
    for name, node in nodes.items():
        proc = node.process
        if proc is None or "exit_code" in summary[name]:
            continue
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            summary[name]["how"] = "SIGKILL after SIGTERM"
        summary[name]["exit_code"] = proc.returncode
    return list(summary.values())


def stop_pids(nodes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Without the supervisor: signal the recorded pids that still run our nodes."""
    out: list[dict[str, Any]] = []
    live: list[tuple[dict[str, Any], int]] = []
    for node in nodes:
        pid = int(node.get("pid") or 0)
        entry: dict[str, Any] = {"name": node.get("name"), "pid": pid, "exit_code": None}
        out.append(entry)
        if pid and pid_alive(pid) and str(node.get("home")) in cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
            entry["how"] = "SIGTERM"
            live.append((entry, pid))
        else:
            entry["how"] = "not running"
    for _ in range(int(DOWN_GRACE_S / 0.1)):
        if not any(pid_alive(pid) for _, pid in live):
            break
        time.sleep(0.1)
    for entry, pid in live:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            entry["how"] = "SIGKILL after SIGTERM"
    return out
