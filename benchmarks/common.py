"""Shared pieces of the benchmark suite: figures with baselines, data, /proc, grids.

Every benchmark of the suite reports its results as *figures*: one measured value
beside a baseline measured in the same run and their ratio, because absolute rates
on a shared 2-core machine drift with whatever else runs; a ratio drifts much less.
The runner (``python -m benchmarks``) prints the figures of every benchmark as one
table.

Data is generated into files in blocks, never as one big ``bytes``: the benchmark
process must stay lean, or it competes for memory and cache with the nodes it
measures.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import blake3
import numpy as np

from simulations.harness import LocalGrid, NodeSpec

__all__ = [
    "MB",
    "SOURCE",
    "CpuSample",
    "Figure",
    "MiB",
    "children_cpu_seconds",
    "discard_tree",
    "environment",
    "file_digest",
    "grid_cpu_seconds",
    "grid_of",
    "pick",
    "proc_cpu_seconds",
    "proc_memory_kib",
    "rate_mb_s",
    "reset_peak_rss",
    "source_pid",
    "timed_cli",
    "wait_discarded",
    "write_random_file",
    "write_text_file",
]

MiB: Final = 1024 * 1024
#: Rates are in MB/s with MB = 10**6 bytes, as in the issues' figures.
MB: Final = 1_000_000
_BLOCK: Final = 8 * MiB
REPO_ROOT: Final = Path(__file__).resolve().parent.parent


# --- figures -------------------------------------------------------------------------------


@attrs.frozen
class Figure:
    """One measured value beside its in-run baseline.

    ``ratio`` is value / baseline whatever the unit: for rates (MB/s) above 1 means
    faster than the baseline, for times and memory above 1 means slower or bigger.
    """

    name: str
    value: float
    unit: str
    baseline_name: str
    baseline_value: float

    @property
    def ratio(self) -> float | None:
        if self.baseline_value == 0:
            return None
        return self.value / self.baseline_value

    def to_dict(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "name": self.name,
            "value": round(self.value, 3),
            "unit": self.unit,
            "baseline": self.baseline_name,
            "baseline_value": round(self.baseline_value, 3),
            "ratio": None if ratio is None else round(ratio, 3),
        }


def rate_mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / max(seconds, 1e-9) / MB


def pick(mapping: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The subset of ``mapping`` with ``keys`` that are present (CLI results vary)."""
    return {key: mapping[key] for key in keys if key in mapping}


# --- environment ---------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """What the figures depend on besides the code: machine, load, versions, commit."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "load_average": list(os.getloadavg()),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "packages": {
            name: _version(name)
            for name in (
                "trio",
                "trio-websocket",
                "wsproto",
                "numpy",
                "pynacl",
                "zstandard",
                "zfec",
                "blake3",
                "msgpack",
            )
        },
        "executable": sys.executable,
    }


# --- data files ----------------------------------------------------------------------------


def write_random_file(path: Path, size: int, *, seed: int) -> bytes:
    """``size`` pseudo-random (incompressible, never repeating) bytes; returns their BLAKE3.

    Deterministic per seed (SFC64, about 1 GB/s), written block by block so the benchmark
    process never holds more than one block.  Never-repeating matters: repeated blocks
    would deduplicate.
    """
    generator = np.random.SFC64(seed)
    hasher = blake3.blake3()
    path.parent.mkdir(parents=True, exist_ok=True)
    words = _BLOCK // 8
    with open(path, "wb") as out:
        left = size
        for _ in range(size // _BLOCK + 1):  # bounded: one block per iteration
            if left <= 0:
                break
            block = generator.random_raw(words).view(np.uint8).data[: min(_BLOCK, left)]
            hasher.update(block)
            out.write(block)
            left -= len(block)
    return hasher.digest()


def write_text_file(path: Path, size: int, *, seed: int) -> bytes:
    """English-like text (about 4x with zstd-3), written in 16 MiB pieces; returns its BLAKE3.

    Each piece is generated with its own seed, so no piece repeats another.
    """
    from .bench_pipeline import english_like_text

    hasher = blake3.blake3()
    piece = 16 * MiB
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        left = size
        for index in range(size // piece + 1):
            if left <= 0:
                break
            block = english_like_text(min(piece, left), seed=seed * 100_003 + index)
            hasher.update(block)
            out.write(block)
            left -= len(block)
    return hasher.digest()


def file_digest(path: Path) -> bytes:
    hasher = blake3.blake3()
    with open(path, "rb") as stream:
        for _ in range(path.stat().st_size // _BLOCK + 2):
            block = stream.read(_BLOCK)
            if not block:
                break
            hasher.update(block)
    return hasher.digest()


# --- cleaning up -----------------------------------------------------------------------------


_discarding: list[threading.Thread] = []


def discard_tree(path: Path) -> None:
    """Delete a directory tree in a background thread.

    Deleting fsynced files can cost milliseconds each (ext4 mounted with ``discard``
    trims every extent as it goes), and a grid leaves thousands of packet files: the
    next benchmark should not wait for that.  The thread is not a daemon, so the
    process does not exit before the tree is gone; :func:`wait_discarded` waits too.
    """
    thread = threading.Thread(
        target=shutil.rmtree,
        args=(path,),
        kwargs={"ignore_errors": True},
        name=f"discard {path.name}",
    )
    thread.start()
    _discarding.append(thread)


def wait_discarded(timeout: float = 600.0) -> bool:
    """Until every tree handed to :func:`discard_tree` is gone; False on timeout."""
    deadline = time.monotonic() + timeout
    for thread in list(_discarding):
        thread.join(max(0.0, deadline - time.monotonic()))
        if not thread.is_alive():
            _discarding.remove(thread)
    return not _discarding


# --- /proc -----------------------------------------------------------------------------------


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS), RssAnon, RssFile of a process, in KiB (Linux)."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "VmPeak")
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in wanted:
                out[key] = int(value.split()[0])
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (``clear_refs`` 5, Linux >= 4.0).

    Needs the right to ptrace the process (same user).  Returns whether the peak now
    equals the current RSS, i.e. whether the reset really happened.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    memory = proc_memory_kib(pid)
    return memory.get("VmHWM") == memory.get("VmRSS")


def _stat_cpu_seconds(stat_path: str) -> float:
    with open(stat_path) as stat:
        text = stat.read()
    fields = text[text.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads)."""
    return _stat_cpu_seconds(f"/proc/{pid}/stat")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's children that have been waited for.

    The CPU of a CLI call that ``subprocess.run`` started and reaped is the difference
    of this around the call (long-running children, like grid nodes, are not counted
    until they are reaped, so they do not disturb it).
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def grid_cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process; one that has gone counts as 0."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            out[name] = proc_cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            out[name] = 0.0
    return out


@attrs.frozen
class CpuSample:
    """CPU seconds of a process so far: all threads, and its main thread alone.

    A node's main thread runs the trio loop (and everything that holds the GIL in
    it); worker threads do the C work.  Main-thread seconds close to wall seconds
    mean the event loop, not the cores, is the limit.
    """

    total_s: float
    main_s: float

    @classmethod
    def of(cls, pid: int) -> CpuSample:
        return cls(proc_cpu_seconds(pid), _stat_cpu_seconds(f"/proc/{pid}/task/{pid}/stat"))

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.total_s - other.total_s, self.main_s - other.main_s)


# --- grids -----------------------------------------------------------------------------------


SOURCE: Final = "source"


def _wait_source_sees(grid: LocalGrid, count: int, timeout: float) -> float:
    """Until the source sees ``count`` other members alive (what placement needs).

    A target that is alive in the source's view is up and serving, so the targets need
    no readiness check of their own; one that exited fails the wait at once.
    """
    started = time.monotonic()
    deadline = started + timeout
    alive = 0
    while time.monotonic() < deadline:
        for name, node in grid.nodes.items():
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(
                    f"node {name} exited with {node.process.returncode}: {grid.log_tail(name)}"
                )
        members = grid.without_authority(grid.status(SOURCE)["members"])
        alive = sum(
            1
            for m in members
            if m["state"] == "alive" and m["address"] != grid.nodes[SOURCE].address
        )
        if alive >= count:
            return time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError(f"the source saw {alive} of {count} targets alive after {timeout} s")


@contextlib.contextmanager
def grid_of(
    root: Path, *, targets: int = 6, allocate: str = "8GB", extra: tuple[str, ...] = ()
) -> Iterator[LocalGrid]:
    """A running grid: node ``source`` plus ``targets`` nodes ``t1..tN``, location check off.

    The targets are initialised in parallel (each ``gridnode init`` is a process start)
    and the grid counts as ready once the source sees every target alive; targets need
    not see each other for a backup.  Every process is stopped when the block ends,
    also on an exception.
    """
    with LocalGrid(root, log_level="warning") as grid:
        source = grid.add(NodeSpec(name=SOURCE, allocate=allocate, extra=extra))
        specs = [
            NodeSpec(name=f"t{i}", allocate=allocate, extra=extra) for i in range(1, targets + 1)
        ]
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(grid.add, spec, seeds=[source.address]) for spec in specs]
            for future in futures:
                future.result()
        ports = [node.port for node in grid.nodes.values()]
        if len(set(ports)) != len(ports):
            raise RuntimeError(f"two nodes got the same port: {sorted(ports)}")
        for name in grid.nodes:
            grid.start(name)
        grid.wait_ready(SOURCE, timeout=60)
        _wait_source_sees(grid, targets, timeout=60)
        yield grid


def source_pid(grid: LocalGrid) -> int:
    process = grid.nodes[SOURCE].process
    if process is None:
        raise RuntimeError("the source node is not running")
    return process.pid


def timed_cli(grid: LocalGrid, *args: str, timeout: float = 1800) -> tuple[dict[str, Any], float]:
    """Run ``gridnode ARGS --json`` against the source; its result and the wall seconds."""
    started = time.perf_counter()
    result = grid.cli(SOURCE, *args, timeout=timeout)
    wall = time.perf_counter() - started
    if not isinstance(result, dict) or result.get("event") == "error":
        raise RuntimeError(f"gridnode {args[0]} failed: {result!r}"[:500])
    return result, wall
