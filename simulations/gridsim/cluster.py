"""Cluster start-up: running ``gridnode`` commands against a grid's nodes, starting the
nodes, and waiting until they see each other.

Everything here blocks on CLI processes, so calls run side by side in threads
(:func:`parallel`); on two cores that is what keeps a seven-node setup short.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

from ..harness import LocalGrid, NodeSpec

__all__ = [
    "CLI_TIMEOUT_S",
    "CONVERGE_TIMEOUT_S",
    "POLL_S",
    "READY_TIMEOUT_S",
    "CliResult",
    "add_nodes",
    "parallel",
    "run_cli",
    "start_nodes",
    "wait_ready",
    "wait_views",
]

T = TypeVar("T")

CLI_TIMEOUT_S: Final = 180.0
READY_TIMEOUT_S: Final = 60.0
CONVERGE_TIMEOUT_S: Final = 90.0
POLL_S: Final = 0.3


@attrs.frozen
class CliResult:
    returncode: int | None  # None: timed out
    value: Any
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def error(self) -> str:
        """The one-line reason of a failure, as the CLI printed it."""
        if self.returncode is None:
            return self.stderr
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        if isinstance(self.value, dict) and self.value.get("event") == "error":
            return str(self.value.get("message", ""))
        return lines[-1] if lines else f"exit code {self.returncode}"

    @property
    def failed_cleanly(self) -> bool:
        """Non-zero exit, no traceback, and a final ``gridnode: error:`` line."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return (
            self.returncode not in (None, 0)
            and "Traceback" not in self.stderr + self.stdout
            and bool(lines)
            and lines[-1].startswith("gridnode: error:")
        )


def run_cli(
    grid: LocalGrid,
    home: Path,
    *args: str,
    timeout: float = CLI_TIMEOUT_S,
) -> CliResult:
    """``gridnode ARGS --home HOME --json``, never raising for the command's own failure."""
    argv = grid.command(*args, "--home", str(home), "--json")
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, env=grid.env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return CliResult(
            None,
            None,
            "",
            f"gridnode {args[0]} timed out after {timeout:g} s",
            time.monotonic() - started,
        )
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    value: Any = None
    lines = [line for line in out.splitlines() if line.strip()]
    if lines:
        with contextlib.suppress(ValueError):
            value = json.loads(lines[-1])
    return CliResult(proc.returncode, value, out, err, time.monotonic() - started)


def parallel(calls: Sequence[Callable[[], T]], *, workers: int = 4) -> list[T]:
    """Run blocking calls (CLI processes, mostly) side by side; results in order."""
    if len(calls) <= 1:
        return [call() for call in calls]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(calls)))
    try:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def add_nodes(grid: LocalGrid, specs: Sequence[tuple[NodeSpec, Sequence[str]]]) -> None:
    """``gridnode init`` for every node, side by side wherever the seeds allow.

    ``specs`` pairs each node with the *names* of its seeds; a node is initialised once
    its seeds have addresses.  The grid's node order stays the order given.
    """
    pending = list(specs)
    for _ in range(len(specs)):
        if not pending:
            break
        ready = [
            (spec, seeds) for spec, seeds in pending if all(seed in grid.nodes for seed in seeds)
        ]
        if not ready:
            raise ValueError("node seeds refer to nodes that are never added")

        def init(spec: NodeSpec, seeds: Sequence[str]) -> None:
            grid.add(spec, seeds=[grid.nodes[s].address for s in seeds])

        parallel([functools.partial(init, spec, seeds) for spec, seeds in ready])
        pending = [item for item in pending if item not in ready]
    order = [spec.name for spec, _ in specs]
    grid.nodes = {name: grid.nodes[name] for name in order}


def wait_ready(
    grid: LocalGrid,
    name: str,
    timeout: float = READY_TIMEOUT_S,
) -> dict[str, Any]:
    """Until the node answers ``status``; returns it.

    The node writes ``HOME/run/control.json`` with its pid once its control channel
    listens, so this watches for that file (cheap) before spending a CLI process on
    ``status``: on two cores, polling seven starting nodes with CLI calls slows them all.
    """
    node = grid.nodes[name]
    info_path = node.home / "run" / "control.json"
    deadline = time.monotonic() + timeout
    last_error = "no control.json yet"
    for _ in range(int(timeout / 0.05) + 1):
        proc = node.process
        if proc is None or proc.poll() is not None:
            code = proc.returncode if proc is not None else None
            raise RuntimeError(f"node {name} exited with {code}: {grid.log_tail(name, 5)}")
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            info = {}
        if info.get("pid") == proc.pid:
            status = run_cli(grid, node.home, "status", timeout=30)
            if status.ok and isinstance(status.value, dict):
                return dict(status.value)
            last_error = status.error
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise TimeoutError(f"node {name} not ready after {timeout:g} s: {last_error}")


def start_nodes(
    grid: LocalGrid, names: Sequence[str], *extra: str, timeout: float = READY_TIMEOUT_S
) -> list[dict[str, Any]]:
    """Start the nodes and wait until each answers ``status``; returns their statuses."""
    for name in names:
        grid.start(name, *extra)
    return parallel(
        [functools.partial(wait_ready, grid, name, timeout=timeout) for name in names],
        workers=len(names),
    )


def alive_addresses(status: Mapping[str, Any]) -> set[str]:
    return {m["address"] for m in status.get("members", []) if m.get("state") == "alive"}


def wait_views(
    grid: LocalGrid, expect: Mapping[str, tuple[set[str], set[str]]], timeout: float
) -> tuple[float, dict[str, dict[str, Any]]]:
    """Until each observer sees the first set of addresses alive and none of the second.

    Returns the seconds it took and the last status of every observer.

    Raises:
        TimeoutError: naming who does not see whom.
    """
    started = time.monotonic()
    deadline = started + timeout
    names = list(expect)
    missing: list[str] = []
    for _ in range(int(timeout / POLL_S) + 2):
        results = parallel(
            [
                functools.partial(run_cli, grid, grid.nodes[name].home, "status", timeout=30)
                for name in names
            ]
        )
        statuses: dict[str, dict[str, Any]] = {}
        missing = []
        for name, result in zip(names, results, strict=True):
            if not result.ok or not isinstance(result.value, dict):
                missing.append(f"{name} does not answer ({result.error})")
                continue
            statuses[name] = result.value
            alive = alive_addresses(result.value)
            want_alive, want_gone = expect[name]
            if not want_alive <= alive:
                missing.append(f"{name} does not see {', '.join(sorted(want_alive - alive))}")
            if want_gone & alive:
                missing.append(f"{name} still sees {', '.join(sorted(want_gone & alive))} alive")
        if not missing:
            return time.monotonic() - started, statuses
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    raise TimeoutError(f"not converged within {timeout:g} s: {'; '.join(missing[:4])}")
