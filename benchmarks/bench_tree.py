"""Issue 11: a real tree, gridnode beside restic in the same run (optional).

When a ``restic`` executable is found (``GRIDNODE_RESTIC=path``, else ``PATH``), copies
up to 50,000 regular files of ``/usr/share`` (quick: 5,000; evenly spread over the
sorted walk when there are more, symlinks and unreadable files left out) once into a
temporary directory, then, on that copy:

- gridnode, on a local grid of 7 processes (the source and 6 storage nodes, 4-of-6 as
  ``bench_grid``): first backup, unchanged re-backup, restore;
- restic 0.14 or later to a local repository (``restic init``; ``restic backup`` twice;
  ``restic restore latest``), with ``RESTIC_PASSWORD`` set and its cache in the
  temporary directory.  A gridnode restore ends with a ``syncfs`` of the destination
  and restic's does not, so the ``syncfs`` that would make restic's restore as durable
  is timed after it: both restore ratios are reported (``restore_ratio`` against
  restic's own time, ``restore_durable_ratio`` against that time plus the sync).

Both restores are checked against the copy by a hash of the whole tree (every relative
path, size and content).  Times are wall-clock seconds of the CLI call, as a user sees
them (the node's own ``seconds`` is kept beside gridnode's); figures are gridnode /
restic, so below 1 is faster.  Memory: the source node's peak RSS during each job
(``VmHWM``, reset before each job when the kernel allows) against restic's peak RSS
(``ru_maxrss`` of each restic process).  The whole grid's CPU seconds and restic's are
kept too.  Aims (issue 11): unchanged re-backup and restore no slower than restic, a
first backup within 1.2x, the source's peak at most 100 MiB.

Each restore row also has ``create_us``: microseconds per empty file created in a fresh
directory of the same disk just before that restore.  ext4 without a journal (this
machine's disk) skips inodes freed in the last minutes on every create, so a run that
starts soon after another deleted its trees restores slower, gridnode's restore (which
runs first) more than restic's: when the two probes differ much, the restore ratio says
more about the disk than about either tool.

Without restic the benchmark raises :class:`~benchmarks.optional.Unavailable` and the
runner reports it as skipped.  Run ``python -m benchmarks.bench_tree [--quick] [--json]
[--source DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import blake3

from gridnode.tree_writer import TreeWriter

from .bench_grid import PARAMS, Probe
from .common import (
    Figure,
    MiB,
    discard_tree,
    grid_of,
    proc_memory_kib,
    reset_peak_rss,
    source_pid,
)
from .optional import Unavailable, find_tool

__all__ = ["compare_trees", "copy_tree", "format_table", "main", "run", "tree_digest"]

ENV_VAR: Final = "GRIDNODE_RESTIC"
SOURCE_TREE: Final = Path("/usr/share")
FULL_FILES: Final = 50_000
QUICK_FILES: Final = 5_000
RESTIC_PASSWORD: Final = "gridnode-benchmark"
RESTIC_TIMEOUT_S: Final = 1800.0
#: How often restic's peak RSS is read (its wall clock ends up to this much late).
POLL_S: Final = 0.02
AIMS: Final = {
    "first_backup_ratio_at_most": 1.2,
    "unchanged_ratio_at_most": 1.0,
    "restore_ratio_at_most": 1.0,
    "source_peak_rss_mib_at_most": 100,
}


# --- the tree -----------------------------------------------------------------------------


def _regular_files(root: Path) -> list[Path]:
    """Every readable regular file under ``root`` (no symlinks), relative, sorted."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file() or not os.access(path, os.R_OK):
                continue
            found.append(path.relative_to(root))
    return found


def copy_tree(source: Path, dest: Path, limit: int) -> dict[str, int]:
    """Copy at most ``limit`` regular files of ``source`` into ``dest`` (with mtimes).

    When there are more, every n-th file of the sorted walk is taken so the copy keeps
    the tree's mix of sizes and depths rather than its first directories.
    """
    files = _regular_files(source)
    if len(files) > limit:
        step = len(files) / limit
        files = [files[int(i * step)] for i in range(limit)]
    copied = nbytes = 0
    for relative in files:
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(source / relative, target)
        except OSError:
            continue  # vanished or unreadable meanwhile
        copied += 1
        nbytes += target.stat().st_size
    return {"files": copied, "bytes": nbytes, "available_files": len(_regular_files(source))}


def tree_digest(root: Path) -> str:
    """BLAKE3 over every regular file's relative path, size and content, in order."""
    hasher = blake3.blake3()
    for relative in _regular_files(root):
        data = (root / relative).read_bytes()
        hasher.update(os.fsencode(relative.as_posix()) + b"\0")
        hasher.update(len(data).to_bytes(8, "big"))
        hasher.update(blake3.blake3(data).digest())
    return hasher.hexdigest()


def compare_trees(original: str, restored: Path) -> bool:
    return restored.is_dir() and tree_digest(restored) == original


# --- restic --------------------------------------------------------------------------------


def _restic(restic: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    """One restic call: wall seconds, CPU seconds and peak RSS of that very process.

    The peak is the process's own ``VmHWM``, polled until it exits: ``ru_maxrss`` of a
    child is no use here, because Linux carries the forking parent's high-water mark
    into it (this benchmark process's RSS would show as restic's).  CPU comes from
    ``wait4`` of that one child.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen([str(restic), *args], stdout=out, stderr=err, env=env)
        peak = 0
        deadline = time.monotonic() + RESTIC_TIMEOUT_S
        while True:
            done, status, usage = os.wait4(process.pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                process.kill()
            with contextlib.suppress(OSError, KeyError):
                peak = max(peak, proc_memory_kib(process.pid)["VmHWM"])
            time.sleep(POLL_S)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            err.seek(0)
            raise RuntimeError(
                f"restic {args[0]} failed ({process.returncode}): "
                f"{err.read().decode(errors='replace')[-800:]}"
            )
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_kib": peak,
    }


def _sync_seconds(path: Path) -> float:
    """How long flushing ``path``'s file system takes right after restic's restore.

    A gridnode restore ends with this very ``syncfs`` (so "restored" means "on disk"),
    restic's does not: restic's restore plus this is the same work as gridnode's, and
    both figures are reported."""
    started = time.perf_counter()
    TreeWriter(path).sync()
    return round(time.perf_counter() - started, 3)


#: Empty files created by ``create_probe``.
PROBE_FILES: Final = 2000


def create_probe(directory: Path, count: int = PROBE_FILES) -> float:
    """Microseconds per file to create ``count`` empty files in ``directory`` (made here,
    left in place: deleting them would slow what follows, as in the module docstring)."""
    directory.mkdir(parents=True)
    started = time.perf_counter()
    for number in range(count):
        os.close(os.open(directory / f"f{number}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return round((time.perf_counter() - started) / count * 1e6, 1)


def _version(restic: Path) -> str:
    proc = subprocess.run([str(restic), "version"], capture_output=True, timeout=60, check=False)
    return proc.stdout.decode(errors="replace").strip() or "unknown"


def bench_restic(restic: Path, tree: Path, work: Path, digest: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "RESTIC_PASSWORD": RESTIC_PASSWORD,
        "RESTIC_REPOSITORY": str(work / "restic-repo"),
        "RESTIC_CACHE_DIR": str(work / "restic-cache"),
    }
    _restic(restic, env, "init")
    first = _restic(restic, env, "backup", "--quiet", str(tree))
    again = _restic(restic, env, "backup", "--quiet", str(tree))
    out = work / "restic-restore"
    create_us = create_probe(work / "probe-restic")
    restore = _restic(restic, env, "restore", "latest", "--target", str(out))
    restore["create_us"] = create_us
    restore["sync_s"] = _sync_seconds(out)
    # restic restores the absolute path under the target.
    restore["equal"] = compare_trees(digest, out / tree.relative_to(tree.anchor))
    return {"first_backup": first, "unchanged": again, "restore": restore}


# --- gridnode -------------------------------------------------------------------------------


def _job(probe: Probe, *args: str) -> dict[str, Any]:
    """A gridnode job with the source's peak RSS during it (reset just before)."""
    pid = source_pid(probe.grid)
    reset = reset_peak_rss(pid)
    row = probe.job(*args)
    row["source_peak_rss_kib"] = proc_memory_kib(pid)["VmHWM"]
    row["peak_rss_reset"] = reset
    return row


def bench_gridnode(tree: Path, work: Path, digest: str) -> dict[str, Any]:
    started = time.perf_counter()
    with grid_of(work / "grid") as grid:
        start_s = time.perf_counter() - started
        probe = Probe(grid)
        first = _job(probe, "backup", str(tree), "--redundancy", str(PARAMS))
        again = _job(probe, "backup", str(tree), "--redundancy", str(PARAMS))
        out = work / "gridnode-restore"
        create_us = create_probe(work / "probe-gridnode")
        restore = _job(probe, "restore", str(again["snapshot_id"]), "--to", str(out))
        restore["create_us"] = create_us
        # gridnode keeps the backed-up directory's own name as the top level.
        restore["equal"] = compare_trees(digest, out / tree.name)
        # Kept until the end: deleting 50,000 files just before restic's restore would
        # slow it on a file system that skips recently freed inodes (ext4 without a
        # journal scans past them on every create), and each restore should find the
        # disk as the other did.
        peak = proc_memory_kib(source_pid(grid))["VmHWM"]
    return {
        "grid_start_s": round(start_s, 1),
        "redundancy": str(PARAMS),
        "first_backup": first,
        "unchanged": again,
        "restore": restore,
        "source_peak_rss_kib": max(
            peak, *(row["source_peak_rss_kib"] for row in (first, again, restore))
        ),
    }


# --- the benchmark ---------------------------------------------------------------------------

_JOBS: Final = (
    ("first_backup", "first backup"),
    ("unchanged", "unchanged re-backup"),
    ("restore", "restore"),
)


def run(quick: bool = False, source: Path = SOURCE_TREE) -> dict[str, Any]:
    """Measure as in the module docstring; raises ``Unavailable`` without restic."""
    restic = find_tool(ENV_VAR, "restic")
    if not source.is_dir():
        raise Unavailable(f"{source} is not a directory: no real tree to back up")
    limit = QUICK_FILES if quick else FULL_FILES
    results: dict[str, Any] = {
        "benchmark": "tree",
        "quick": quick,
        "source": str(source),
        "restic": str(restic),
        "restic_version": _version(restic),
        "aims": AIMS,
    }
    work = Path(tempfile.mkdtemp(prefix="bench_tree_"))
    try:
        tree = work / "tree"
        started = time.perf_counter()
        results["tree"] = copy_tree(source, tree, limit)
        results["copy_s"] = round(time.perf_counter() - started, 1)
        digest = tree_digest(tree)
        results["gridnode"] = bench_gridnode(tree, work, digest)
        results["restic_runs"] = bench_restic(restic, tree, work, digest)
    finally:
        discard_tree(work)
    ours, theirs = results["gridnode"], results["restic_runs"]
    results["seconds"] = {
        job: {"gridnode": ours[job]["wall_s"], "restic": theirs[job]["wall_s"]} for job, _ in _JOBS
    }
    results["ratios"] = {
        f"{job}_ratio": round(ours[job]["wall_s"] / max(theirs[job]["wall_s"], 1e-9), 3)
        for job, _ in _JOBS
    }
    # Against restic's restore made as durable as gridnode's (its wall time plus a syncfs).
    durable = theirs["restore"]["wall_s"] + theirs["restore"].get("sync_s", 0.0)
    results["ratios"]["restore_durable_ratio"] = round(
        ours["restore"]["wall_s"] / max(durable, 1e-9), 3
    )
    results["source_peak_rss_mib"] = round(ours["source_peak_rss_kib"] / 1024, 1)
    results["restic_peak_rss_mib"] = round(
        max(theirs[job]["peak_rss_kib"] for job, _ in _JOBS) / 1024, 1
    )
    results["equal"] = bool(ours["restore"]["equal"] and theirs["restore"]["equal"])
    results["figures"] = _figures(results)
    return results


def _figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    label = f"{results['tree']['files']} files, {results['tree']['bytes'] // MiB} MiB"
    ours, theirs = results["gridnode"], results["restic_runs"]
    figures = [
        Figure(f"{label}: gridnode {name}", ours[job]["wall_s"], "s", f"restic {name}",
               theirs[job]["wall_s"])
        for job, name in _JOBS
    ]  # fmt: skip
    restic_restore = theirs["restore"]
    figures.append(
        Figure(
            f"{label}: gridnode restore (ends with syncfs)",
            ours["restore"]["wall_s"],
            "s",
            "restic restore + syncfs",
            restic_restore["wall_s"] + restic_restore.get("sync_s", 0.0),
        )
    )
    figures.append(
        Figure(
            f"{label}: file create just before gridnode's restore",
            ours["restore"]["create_us"],
            "us",
            "just before restic's",
            restic_restore["create_us"],
        )
    )
    figures.append(
        Figure(
            f"{label}: source node peak RSS",
            results["source_peak_rss_mib"],
            "MiB",
            "restic peak RSS",
            results["restic_peak_rss_mib"],
        )
    )
    return [f.to_dict() for f in figures]


def format_table(results: dict[str, Any]) -> str:
    tree = results["tree"]
    ours, theirs = results["gridnode"], results["restic_runs"]
    lines = [
        f"bench_tree: {tree['files']} files ({tree['bytes'] / 1e6:.0f} MB) of {results['source']}"
        f" (of {tree['available_files']}), copied in {results['copy_s']} s; gridnode "
        f"{ours['redundancy']} on source + 6 storage nodes; {results['restic_version']}",
        f"{'job':<22} {'gridnode s':>10} {'(node s)':>9} {'restic s':>9} {'ratio':>6} "
        f"{'grid CPU s':>10} {'restic CPU s':>12} {'src RSS MiB':>11} {'restic RSS':>10}",
    ]
    for job, name in _JOBS:
        row, other = ours[job], theirs[job]
        lines.append(
            f"{name:<22} {row['wall_s']:>10.2f} {row.get('seconds', 0):>9.2f} "
            f"{other['wall_s']:>9.2f} {row['wall_s'] / max(other['wall_s'], 1e-9):>6.2f} "
            f"{row['grid_cpu_s']:>10.2f} {other['cpu_s']:>12.2f} "
            f"{row['source_peak_rss_kib'] / 1024:>11.1f} {other['peak_rss_kib'] / 1024:>10.1f}"
        )
    # Where the grid's CPU goes: the source and the targets share this machine's cores.
    lines.extend(
        f"{name} CPU s: source {ours[job].get('source_cpu_s', 0):.2f} (event loop "
        f"{ours[job].get('source_main_thread_cpu_s', 0):.2f}), targets "
        f"{ours[job].get('targets_cpu_s', 0):.2f}; restic {theirs[job]['cpu_s']:.2f} "
        f"on {os.cpu_count()} cores"
        for job, name in _JOBS[:2]
    )
    restore = theirs["restore"]
    lines.append(
        f"restic restore + syncfs (as durable as gridnode's, which ends with one): "
        f"{restore['wall_s'] + restore.get('sync_s', 0.0):.2f} s (the sync "
        f"{restore.get('sync_s', 0.0):.2f} s); ratio "
        f"{results['ratios']['restore_durable_ratio']:.2f}"
    )
    lines.append(f"restores byte-equal: {results['equal']}; aims: {json.dumps(AIMS)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from gridnode.log import configure_logging

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_FILES} files")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--source", type=Path, default=SOURCE_TREE, help="the tree to copy")
    args = parser.parse_args(argv)
    configure_logging("warning")
    try:
        results = run(quick=args.quick, source=args.source)
    except Unavailable as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 0
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
