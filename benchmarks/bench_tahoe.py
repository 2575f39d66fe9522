"""Issue 11: Tahoe-LAFS beside gridnode, on the same data and machine (optional).

When a ``tahoe`` executable is found (``GRIDNODE_TAHOE=path``, else ``PATH``), builds a
local Tahoe-LAFS grid on 127.0.0.1 in a temporary directory: an introducer, 6 storage
nodes and a client (``shares.needed=3``, ``shares.happy=6``, ``shares.total=6``), each
a ``tahoe run`` process.  It then backs up (``tahoe put``) and restores (``tahoe get``)
the very data of ``bench_grid``'s incompressible dataset (the same generator, seed and
size: 256 MiB, quick 64 MiB), checks the restore byte for byte, and reports:

- MB/s of each, by the wall clock of the CLI call (as ``bench_grid``'s ``wall_mb_s``);
- the whole Tahoe grid's CPU seconds per GB: every node process from ``/proc`` plus the
  CLI process, because in Tahoe the CLI itself streams the file to and from the client
  node over HTTP (in gridnode the node reads and writes the file, and its CLI moves no
  data); the nodes alone and the CLI alone are kept beside it;
- the source's share: the client node plus the CLI, what the machine that backs up
  spends.

Run with the grid benchmark (``python -m benchmarks --only grid,tahoe``), the runner
calls :func:`compare` at the end and the summary shows gridnode / Tahoe-LAFS for each
figure, measured in the same run.  Alone: ``python -m benchmarks.bench_tahoe [--quick]
[--json] [--grid-json FILE]`` (a saved ``bench_grid --json`` result to compare with).
When no ``tahoe`` is found the benchmark raises :class:`~benchmarks.optional.Unavailable`
and the runner reports it as skipped.  Tahoe-LAFS is never a dependency of the project.

Note on redundancy: ``bench_grid`` stores 4-of-6 (1.5x), Tahoe here 3-of-6 (2x), as
issue 11 asks; Tahoe thus writes a third more bytes to its storage nodes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from simulations.harness import free_port

from .bench_grid import FULL_BYTES, QUICK_BYTES
from .common import (
    Figure,
    children_cpu_seconds,
    discard_tree,
    file_digest,
    grid_cpu_seconds,
    rate_mb_s,
    write_random_file,
)
from .optional import Unavailable, find_tool

__all__ = ["TahoeGrid", "compare", "format_table", "main", "run"]

ENV_VAR: Final = "GRIDNODE_TAHOE"
STORAGE_NODES: Final = 6
NEEDED: Final = 3
HAPPY: Final = 6
TOTAL: Final = 6
#: bench_grid's incompressible dataset is ``write_random_file(..., seed=1)``.
DATA_SEED: Final = 1
START_TIMEOUT_S: Final = 180.0
JOB_TIMEOUT_S: Final = 1800.0


class TahoeGrid:
    """An introducer, ``STORAGE_NODES`` storage nodes and a client under ``root``.

    Every node is a ``tahoe run`` child with a pipe on its standard input: ``tahoe run``
    exits when its stdin closes, so the nodes go away with this process even if it is
    killed.  :meth:`close` (or leaving the ``with`` block) stops them all.
    """

    def __init__(self, tahoe: Path, root: Path) -> None:
        self.tahoe = tahoe
        self.root = root
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.web_port = 0
        self.client_dir = root / "client"

    def _tahoe(self, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run(
            [str(self.tahoe), *args], capture_output=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"tahoe {' '.join(args[:2])} failed ({proc.returncode}): "
                f"{proc.stderr.decode(errors='replace')[-800:]}"
            )
        return proc.stdout.decode()

    def _listen(self) -> list[str]:
        port = free_port()
        return [
            "--listen=tcp",
            f"--port=tcp:{port}:interface=127.0.0.1",
            f"--location=tcp:127.0.0.1:{port}",
        ]

    def _run(self, name: str, directory: Path) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            self.processes[name] = subprocess.Popen(
                [str(self.tahoe), "run", str(directory)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()  # the child has its own descriptor

    def start(self) -> float:
        """Create and start every node; returns seconds until the client sees them all."""
        started = time.monotonic()
        introducer = self.root / "introducer"
        self._tahoe("create-introducer", *self._listen(), str(introducer))
        self._run("introducer", introducer)
        furl_file = introducer / "private" / "introducer.furl"
        self._wait(lambda: furl_file.exists() and furl_file.read_text().strip() != "", "furl")
        furl = furl_file.read_text().strip()
        shares = [f"--shares-needed={NEEDED}", f"--shares-happy={HAPPY}"]
        shares.append(f"--shares-total={TOTAL}")
        self.web_port = free_port()
        creations = {
            f"s{i}": [
                "create-node", *self._listen(), "--webport=none", f"--introducer={furl}",
                f"--nickname=s{i}", *shares, str(self.root / f"s{i}"),
            ]
            for i in range(1, STORAGE_NODES + 1)
        }  # fmt: skip
        creations["client"] = [
            "create-client", f"--webport=tcp:{self.web_port}:interface=127.0.0.1",
            f"--introducer={furl}", "--nickname=client", *shares, str(self.client_dir),
        ]  # fmt: skip
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            for future in [pool.submit(self._tahoe, *args) for args in creations.values()]:
                future.result()
        for name in creations:
            self._run(name, self.root / name)
        self._wait(lambda: self.connected_servers() >= STORAGE_NODES, "storage servers")
        return time.monotonic() - started

    def connected_servers(self) -> int:
        """How many storage servers the client is connected to (its welcome page JSON)."""
        url = f"http://127.0.0.1:{self.web_port}/?t=json"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                welcome = json.loads(response.read())
        except (OSError, urllib.error.URLError, ValueError):
            return 0
        return sum(
            1
            for server in welcome.get("servers", [])
            if str(server.get("connection_status", "")).lower().startswith("connected")
        )

    def _wait(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    log = (self.root / f"{name}.log").read_bytes()[-800:].decode(errors="replace")
                    raise RuntimeError(f"tahoe node {name} exited: {log}")
            if ready():
                return
            time.sleep(0.3)
        raise TimeoutError(f"Tahoe-LAFS grid: no {what} after {START_TIMEOUT_S} s")

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items() if p.poll() is None}

    def job(self, *args: str) -> tuple[str, dict[str, float]]:
        """``tahoe -d CLIENT ARGS``: its output, wall seconds and CPU of nodes and CLI."""
        before, cli0 = grid_cpu_seconds(self.pids()), children_cpu_seconds()
        started = time.perf_counter()
        out = self._tahoe("-d", str(self.client_dir), *args, timeout=JOB_TIMEOUT_S)
        wall = time.perf_counter() - started
        cli = children_cpu_seconds() - cli0
        after = grid_cpu_seconds(self.pids())
        used = {name: max(0.0, after.get(name, cpu) - cpu) for name, cpu in before.items()}
        return out, {
            "wall_s": wall,
            "cli_cpu_s": cli,
            "nodes_cpu_s": sum(used.values()),
            "client_cpu_s": used.get("client", 0.0),
            "storage_cpu_s": sum(v for k, v in used.items() if k.startswith("s")),
        }

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdin is not None:
                process.stdin.close()
        self.processes.clear()

    def __enter__(self) -> TahoeGrid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _row(measured: dict[str, float], nbytes: int) -> dict[str, Any]:
    gigabytes = nbytes / 1e9
    whole = measured["nodes_cpu_s"] + measured["cli_cpu_s"]
    source = measured["client_cpu_s"] + measured["cli_cpu_s"]
    return {
        "wall_s": round(measured["wall_s"], 3),
        "mb_s": round(rate_mb_s(nbytes, measured["wall_s"]), 1),
        "grid_cpu_s": round(whole, 2),
        "grid_cpu_s_per_gb": round(whole / gigabytes, 2),
        "nodes_cpu_s_per_gb": round(measured["nodes_cpu_s"] / gigabytes, 2),
        "cli_cpu_s_per_gb": round(measured["cli_cpu_s"] / gigabytes, 2),
        "source_cpu_s_per_gb": round(source / gigabytes, 2),
        "storage_cpu_s_per_gb": round(measured["storage_cpu_s"] / gigabytes, 2),
    }


def _version(tahoe: Path) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        proc = subprocess.run(
            [str(tahoe), "--version"], capture_output=True, timeout=60, check=False
        )
        for line in proc.stdout.decode(errors="replace").splitlines():
            if line.strip():
                return line.strip()
    return "unknown"


def run(quick: bool = False) -> dict[str, Any]:
    """Measure Tahoe-LAFS as in the module docstring; raises ``Unavailable`` without it."""
    tahoe = find_tool(ENV_VAR, "tahoe")
    size = QUICK_BYTES if quick else FULL_BYTES
    results: dict[str, Any] = {
        "benchmark": "tahoe",
        "quick": quick,
        "tahoe": str(tahoe),
        "version": _version(tahoe),
        "shares": {"needed": NEEDED, "happy": HAPPY, "total": TOTAL},
        "storage_nodes": STORAGE_NODES,
        "bytes": size,
    }
    work = Path(tempfile.mkdtemp(prefix="bench_tahoe_"))
    try:
        data = work / "data" / "data.bin"
        digest = write_random_file(data, size, seed=DATA_SEED)
        with TahoeGrid(tahoe, work / "grid") as grid:
            grid.root.mkdir()
            results["grid_start_s"] = round(grid.start(), 1)
            cap, backup = grid.job("put", str(data))
            cap = cap.strip().splitlines()[-1].strip()
            out = work / "restored.bin"
            _, restore = grid.job("get", cap, str(out))
            results["backup"] = _row(backup, size)
            results["restore"] = _row(restore, size)
            results["restore"]["equal"] = file_digest(out) == digest
            if not results["restore"]["equal"]:
                raise RuntimeError("tahoe get did not give back the bytes put")
    finally:
        discard_tree(work)
    for job in ("backup", "restore"):
        results[f"{job}_mb_s"] = results[job]["mb_s"]
        results[f"grid_cpu_s_per_gb_{job}"] = results[job]["grid_cpu_s_per_gb"]
        results[f"source_cpu_s_per_gb_{job}"] = results[job]["source_cpu_s_per_gb"]
    results["figures"] = [
        Figure(
            "Tahoe-LAFS get (restore)", results["restore_mb_s"], "MB/s",
            "Tahoe-LAFS put (backup)", results["backup_mb_s"],
        ).to_dict()
    ]  # fmt: skip
    return results


#: gridnode's key (bench_grid) -> Tahoe's key, label and unit, for :func:`compare`.
_PAIRS: Final = (
    ("backup_wall_mb_s", "backup_mb_s", "backup, wall clock of the CLI", "MB/s"),
    ("restore_wall_mb_s", "restore_mb_s", "restore, wall clock of the CLI", "MB/s"),
    ("grid_cpu_s_per_gb_backup", "grid_cpu_s_per_gb_backup", "whole grid CPU, backup", "s/GB"),
    ("grid_cpu_s_per_gb_restore", "grid_cpu_s_per_gb_restore", "whole grid CPU, restore", "s/GB"),
    ("source_cpu_s_per_gb_backup", "source_cpu_s_per_gb_backup", "source's CPU, backup", "s/GB"),
    ("source_cpu_s_per_gb_restore", "source_cpu_s_per_gb_restore", "source's CPU, restore", "s/GB"),
)


def compare(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """gridnode (the grid benchmark of the same run) beside Tahoe-LAFS, figure by figure.

    Also stores the ratios under ``vs_gridnode`` in Tahoe's result, with the bytes of
    each side (they should be equal: the same dataset).  Empty when either is missing.
    """
    grid, tahoe = results.get("grid"), results.get("tahoe")
    if not grid or not tahoe or "grid_cpu_s_per_gb_backup" not in grid:
        return []
    figures = [
        Figure(f"gridnode {label}", grid[ours], unit, "Tahoe-LAFS, same data", tahoe[theirs])
        for ours, theirs, label, unit in _PAIRS
    ]
    tahoe["vs_gridnode"] = {
        "gridnode_bytes": grid.get("headline_bytes"),
        "tahoe_bytes": tahoe["bytes"],
        **{
            f"{ours}_ratio": figure.to_dict()["ratio"]
            for (ours, *_), figure in zip(_PAIRS, figures, strict=True)
        },
        "aims": {"backup_ratio_at_least": 4, "restore_ratio_at_least": 6},
    }
    return [f.to_dict() for f in figures]


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"bench_tahoe: {results['version']}, introducer + {results['storage_nodes']} storage "
        f"nodes + client on 127.0.0.1, {NEEDED}-of-{TOTAL}, {results['bytes'] // 2**20} MiB; "
        f"grid started in {results['grid_start_s']} s",
        f"{'job':<10} {'MB/s':>8} {'grid CPU s/GB':>14} {'nodes':>8} {'CLI':>8} "
        f"{'source':>8} {'storage':>8}",
    ]
    for job in ("backup", "restore"):
        row = results[job]
        lines.append(
            f"{job:<10} {row['mb_s']:>8.1f} {row['grid_cpu_s_per_gb']:>14.2f} "
            f"{row['nodes_cpu_s_per_gb']:>8.2f} {row['cli_cpu_s_per_gb']:>8.2f} "
            f"{row['source_cpu_s_per_gb']:>8.2f} {row['storage_cpu_s_per_gb']:>8.2f}"
        )
    if "vs_gridnode" in results:
        lines.append(f"gridnode / Tahoe-LAFS: {json.dumps(results['vs_gridnode'])}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--grid-json", type=Path, help="a saved bench_grid --json result to compare with"
    )
    args = parser.parse_args(argv)
    try:
        results = run(quick=args.quick)
    except Unavailable as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 0
    if args.grid_json is not None:
        grid = json.loads(args.grid_json.read_text())
        results.setdefault("figures", []).extend(compare({"grid": grid, "tahoe": results}))
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
