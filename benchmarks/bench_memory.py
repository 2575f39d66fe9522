"""Issue 3's memory figure: the source node's peak RSS during a backup, whatever the size.

The source is the ``gridnode run`` process of the node where the backup starts; its
peak resident set (``VmHWM`` in ``/proc/PID/status``) is read right after the backup
has finished.  Two backups of incompressible data on a local grid (source + 6 storage
nodes, 4-of-6):

- the 256 MiB run of ``bench_grid`` (quick: 64 MiB), one file;
- one 2 GiB file (quick: 512 MiB);
- a tree of 50,000 small files (quick: 10,000) in 500 directories, about 4 KiB each
  on average, backed up and then restored (issue 11: the source's peak is measured for
  the restore too, so a job that holds every entry of a snapshot shows).

Baseline, same run: the RSS of the idle source right after it started and saw its 6
targets.  The figure is peak / idle; the difference is what the job itself adds.
A flat pipeline keeps the difference the same for every size; the aim (issues 3 and 11)
is a peak of 100 MB or less whatever the data size or the number of files.

The peak cannot be read for one job alone unless it is reset between jobs.  In the full
run every measurement gets a fresh grid (so each peak starts from a freshly started
node, like the baseline).  In the quick run one grid serves both measurements and the
peak is reset with ``/proc/PID/clear_refs`` (Linux >= 4.0) before each backup; the RSS
at the reset, which the first backup may have left higher, is recorded too.  When the
reset is refused, the quick run falls back to a fresh grid.

The data files are written in 8 MiB blocks before the grid starts, so this process
stays small and does not compete with the nodes for memory.  Run
``python -m benchmarks.bench_memory [--quick] [--json] [--only NAME]`` (``--only tree``:
the tree alone).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from simulations.harness import LocalGrid

from .bench_tree import compare_trees, tree_digest
from .common import (
    SOURCE,
    Figure,
    MiB,
    discard_tree,
    grid_of,
    pick,
    proc_memory_kib,
    rate_mb_s,
    reset_peak_rss,
    source_pid,
    timed_cli,
    write_random_file,
)

__all__ = ["format_table", "main", "run"]

GiB: Final = 1024 * MiB
FULL_SIZES: Final = {"256 MiB run": 256 * MiB, "2 GiB file": 2 * GiB}
QUICK_SIZES: Final = {"64 MiB run": 64 * MiB, "512 MiB file": 512 * MiB}
#: Issue 3's aim, in MB (10**6 bytes), and issue 11's, in MiB: the same number in two
#: units, 4.9% apart, so a peak may meet the one and miss the other; both are reported.
AIM_PEAK_MB: Final = 100
AIM_PEAK_MIB: Final = 100
TREE_NAME: Final = "tree"
FULL_TREE_FILES: Final = 50_000
QUICK_TREE_FILES: Final = 10_000
#: Files per directory of the generated tree (a directory of 100 is typical of /usr).
TREE_FANOUT: Final = 100
#: Let the idle node settle (first gossip rounds, lazy imports) before the baseline.
SETTLE_S: Final = 1.0


def _targets_peak_kib(grid: LocalGrid) -> int:
    peaks = [
        proc_memory_kib(node.process.pid)["VmHWM"]
        for name, node in grid.nodes.items()
        if name != SOURCE and node.process is not None
    ]
    return max(peaks, default=0)


def _backup(grid: LocalGrid, path: Path, size: int | None = None) -> dict[str, Any]:
    """A backup of ``path``'s directory; ``size``: the bytes in it (else ``path``'s)."""
    result, wall = timed_cli(grid, "backup", str(path.parent), "--redundancy", "4/6")
    size = path.stat().st_size if size is None else size
    memory = proc_memory_kib(source_pid(grid))
    return {
        **pick(result, "snapshot_id", "files", "bytes", "bytes_uploaded", "seconds"),
        "wall_s": round(wall, 2),
        "mb_s": round(rate_mb_s(size, float(result["seconds"])), 1),
        "peak_rss_kib": memory["VmHWM"],
        "rss_after_kib": memory["VmRSS"],
        "targets_peak_rss_kib": _targets_peak_kib(grid),
    }


def write_tree(root: Path, files: int, *, seed: int) -> int:
    """``files`` files of incompressible bytes, ``TREE_FANOUT`` per directory, two levels
    deep; sizes are mostly under 4 KiB with one in eight up to 36 KiB (about 4 KiB on
    average), so the count of entries, not the bytes, is what the source must carry.
    Returns the bytes written."""
    rng = random.Random(seed)
    total = 0
    for index in range(files):
        folder = root / f"d{index // (TREE_FANOUT * 10):03d}" / f"e{index // TREE_FANOUT:04d}"
        if index % TREE_FANOUT == 0:
            folder.mkdir(parents=True, exist_ok=True)
        size = rng.randrange(4096) if index % 8 else rng.randrange(4096, 36 * 1024)
        (folder / f"f{index:06d}.bin").write_bytes(rng.randbytes(size))
        total += size
    return total


class _Grids:
    """Hands out a grid per measurement: fresh ones, or one reused with a peak reset."""

    def __init__(self, root: Path, *, reuse: bool) -> None:
        self.root = root
        self.reuse = reuse
        self._stack = contextlib.ExitStack()
        self._shared: LocalGrid | None = None
        self._count = 0
        self.idle_kib: dict[str, int] = {}

    @contextlib.contextmanager
    def _fresh(self) -> Iterator[LocalGrid]:
        self._count += 1
        root = self.root / f"grid{self._count}"
        try:
            with grid_of(root) as grid:
                time.sleep(SETTLE_S)
                memory = proc_memory_kib(source_pid(grid))
                self.idle_kib = {"rss": memory["VmRSS"], "peak": memory["VmHWM"]}
                yield grid
        finally:
            discard_tree(root)  # the packets of a 2 GiB backup: free the disk early

    @contextlib.contextmanager
    def measurement(self) -> Iterator[tuple[LocalGrid, dict[str, Any]]]:
        """A grid ready for one backup, and facts about how its peak was made fresh."""
        if self._shared is not None:
            pid = source_pid(self._shared)
            rss = proc_memory_kib(pid)["VmRSS"]
            if reset_peak_rss(pid):
                yield (
                    self._shared,
                    {
                        "grid": "reused",
                        "peak_reset": "clear_refs",
                        "rss_at_reset_kib": rss,
                        "idle": dict(self.idle_kib),
                    },
                )
                return
            self.reuse = False  # the reset was refused: fresh grids from now on
            self._shared = None
            self._stack.close()
        if self.reuse:
            self._shared = self._stack.enter_context(self._fresh())
            yield self._shared, {"grid": "fresh", "idle": dict(self.idle_kib)}
            return
        with self._fresh() as grid:
            yield grid, {"grid": "fresh", "idle": dict(self.idle_kib)}

    def close(self) -> None:
        self._stack.close()


def _restore(
    grid: LocalGrid, snapshot_id: str, dest: Path, tree: Path, digest: str
) -> dict[str, Any]:
    """A restore of the whole snapshot, with the source's peak reset just before it."""
    pid = source_pid(grid)
    rss = proc_memory_kib(pid)["VmRSS"]
    reset = reset_peak_rss(pid)
    result, wall = timed_cli(grid, "restore", snapshot_id, "--to", str(dest))
    memory = proc_memory_kib(pid)
    return {
        **pick(result, "files", "bytes", "seconds"),
        "wall_s": round(wall, 2),
        "peak_rss_kib": memory["VmHWM"],
        "rss_after_kib": memory["VmRSS"],
        "rss_at_reset_kib": rss,
        "peak_reset": reset,
        # gridnode keeps the backed-up directory's own name as the top level.
        "equal": compare_trees(digest, dest / tree.parent.name / TREE_NAME),
    }


def _tree_rows(
    grids: _Grids, tree: Path, files: int, size: int, work: Path
) -> dict[str, dict[str, Any]]:
    """Backup, then restore, of the generated tree on one grid (the restore needs the
    snapshot); the restore's peak is reset before it (``reset_peak_rss``)."""
    digest = tree_digest(tree)
    rows: dict[str, dict[str, Any]] = {}
    label = f"{files // 1000}k-file tree"
    started = time.perf_counter()
    with grids.measurement() as (grid, how):
        ready_s = round(time.perf_counter() - started, 1)
        backup = _backup(grid, tree, size)
        snapshot_id = str(backup["snapshot_id"])
        rows[f"{label} backup"] = {**how, "grid_ready_s": ready_s, **backup}
        out = work / "restored"
        restore = _restore(grid, snapshot_id, out, tree, digest)
        discard_tree(out)
        rows[f"{label} restore"] = {
            "grid": how["grid"],
            "idle": how["idle"],
            "mb_s": round(rate_mb_s(int(restore["bytes"]), float(restore["seconds"])), 1),
            "targets_peak_rss_kib": _targets_peak_kib(grid),
            **restore,
        }
    return rows


def run(quick: bool = False, only: str | None = None) -> dict[str, Any]:
    """Peak RSS of the source for each job (see the module docstring); ``only``: "files"
    (the one-file backups) or "tree"."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    tree_files = QUICK_TREE_FILES if quick else FULL_TREE_FILES
    rows: dict[str, dict[str, Any]] = {}
    work = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    try:
        paths = {}
        started = time.perf_counter()
        if only != "tree":
            for index, (name, size) in enumerate(sizes.items()):
                paths[name] = work / f"data{index}" / "data.bin"
                write_random_file(paths[name], size, seed=100 + index)
        tree = work / "data-tree" / TREE_NAME
        tree_bytes = 0 if only == "files" else write_tree(tree, tree_files, seed=300)
        generate_s = time.perf_counter() - started
        grids = _Grids(work, reuse=quick)
        try:
            for name, path in paths.items():
                started = time.perf_counter()
                with grids.measurement() as (grid, how):
                    ready_s = round(time.perf_counter() - started, 1)
                    rows[name] = {**how, "grid_ready_s": ready_s, **_backup(grid, path)}
                path.unlink()  # keep the disk footprint to one data file at a time
            if only != "files":
                rows.update(_tree_rows(grids, tree, tree_files, tree_bytes, work))
        finally:
            grids.close()
    finally:
        discard_tree(work)

    figures = []
    for name, row in rows.items():
        idle = row["idle"]["rss"]
        row["added_kib"] = row["peak_rss_kib"] - idle
        row["peak_mb"] = round(row["peak_rss_kib"] * 1024 / 1e6, 1)
        figures.append(
            Figure(
                f"source peak RSS, {name}",
                row["peak_rss_kib"] / 1024,
                "MiB",
                "idle source right after start",
                idle / 1024,
            ).to_dict()
        )
    return {
        "benchmark": "memory",
        "quick": quick,
        "sizes": {} if only == "tree" else sizes,
        "tree": {} if only == "files" else {"files": tree_files, "bytes": tree_bytes},
        "aim_peak_mb_at_most": AIM_PEAK_MB,
        "aim_met": all(row["peak_mb"] <= AIM_PEAK_MB for row in rows.values()),
        "aim_peak_mib_at_most": AIM_PEAK_MIB,
        "aim_mib_met": all(row["peak_rss_kib"] <= AIM_PEAK_MIB * 1024 for row in rows.values()),
        "rows": rows,
        "generate_data_s": round(generate_s, 1),
        "figures": figures,
    }


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "bench_memory: source node peak RSS (VmHWM) during a job, incompressible data, "
        "source + 6 storage nodes, 4/6",
        f"{'job':<22} {'wall s':>7} {'MB/s':>6} {'idle MiB':>9} {'peak MiB':>9} {'peak/idle':>9} "
        f"{'added MiB':>9} {'after MiB':>9} {'tgt peak':>9}  grid",
    ]
    for name, row in results["rows"].items():
        idle = row["idle"]["rss"]
        lines.append(
            f"{name:<22} {row['wall_s']:>7.2f} {row['mb_s']:>6.1f} {idle / 1024:>9.1f} "
            f"{row['peak_rss_kib'] / 1024:>9.1f} {row['peak_rss_kib'] / idle:>9.2f} "
            f"{row['added_kib'] / 1024:>9.1f} {row['rss_after_kib'] / 1024:>9.1f} "
            f"{row['targets_peak_rss_kib'] / 1024:>9.1f}  {row['grid']}"
            + (
                f" (RSS at reset {row['rss_at_reset_kib'] / 1024:.1f} MiB)"
                if "rss_at_reset_kib" in row
                else ""
            )
            + ("" if "equal" not in row else f" byte-equal: {row['equal']}")
        )
    lines.append(
        f"aim: peak <= {results['aim_peak_mb_at_most']} MB whatever the size (issue 3): "
        f"{'met' if results['aim_met'] else 'NOT met'}; "
        f"<= {results['aim_peak_mib_at_most']} MiB (issue 11): "
        f"{'met' if results['aim_mib_met'] else 'NOT met'}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from gridnode.log import configure_logging

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one grid")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--only", choices=("files", "tree"), help="only the one-file backups, or only the tree"
    )
    args = parser.parse_args(argv)
    configure_logging("warning")
    started = time.perf_counter()
    results = run(quick=args.quick, only=args.only)
    results["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results))
        print(f"\n(total {results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
