"""How fast the ``gridnode`` command answers: issue 12's aim is under 150 ms of wall time
for a command that asks the running node (``status``, ``snapshots``, ``ls``) and for
``--help`` and ``--version``, beside ``python -c pass`` measured in the same run (the
interpreter's own start, which no command can beat).

One node of an open grid runs on 127.0.0.1 in a temporary home; each command runs
``ROUNDS`` times as a fresh process (as a user types it) and the median wall time is
reported.  ``python -m benchmarks.bench_cli [--quick] [--json]``.

An editable install (``pip install -e``) adds an import hook to every interpreter start
(about 40 ms here); a regular install does not, so figures from an editable install are
an upper bound.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from simulations.harness import free_port

from .common import Figure

__all__ = ["format_table", "main", "run"]

ROUNDS: Final = 15
QUICK_ROUNDS: Final = 5
AIM_MS: Final = 150.0
_START_TIMEOUT_S: Final = 60.0


def _wall_ms(argv: Sequence[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return (time.perf_counter() - started) * 1000


def _median_ms(argv: Sequence[str], rounds: int) -> float:
    return statistics.median(_wall_ms(argv) for _ in range(rounds))


def run(quick: bool = False) -> dict[str, Any]:
    rounds = QUICK_ROUNDS if quick else ROUNDS
    gridnode = [sys.executable, "-m", "gridnode"]
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        base = Path(tmp)
        grid, home = base / "grid.toml", base / "home"
        subprocess.run([*gridnode, "grid", "create", "b", "--out", str(grid), "--open"],
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run(
            [*gridnode, "init", "--home", str(home), "--grid", str(grid), "--listen",
             f"127.0.0.1:{free_port()}", "--location", "Paris", "--allocate", "1GB"],
            check=True, capture_output=True,
        )  # fmt: skip
        node = subprocess.Popen(
            [*gridnode, "run", "--home", str(home)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + _START_TIMEOUT_S
            while not (home / "run" / "control.sock").exists():  # bounded by the deadline
                if time.monotonic() > deadline or node.poll() is not None:
                    raise RuntimeError("the benchmark's node did not start")
                time.sleep(0.1)
            time.sleep(0.5)
            baseline = _median_ms([sys.executable, "-c", "pass"], rounds)
            commands = {
                "gridnode status --json": [*gridnode, "status", "--home", str(home), "--json"],
                "gridnode snapshots --json": [*gridnode, "snapshots", "--home", str(home),
                                              "--json"],
                "gridnode --version": [*gridnode, "--version"],
                "gridnode --help": [*gridnode, "--help"],
            }  # fmt: skip
            rows = {name: _median_ms(argv, rounds) for name, argv in commands.items()}
        finally:
            node.terminate()
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
    figures = [
        Figure(name, ms, "ms", "python -c pass", baseline).to_dict() for name, ms in rows.items()
    ]
    return {
        "benchmark": "cli",
        "quick": quick,
        "rounds": rounds,
        "python_ms": round(baseline, 1),
        "rows_ms": {name: round(ms, 1) for name, ms in rows.items()},
        "target": {
            "aim_ms": AIM_MS,
            "met": all(ms <= AIM_MS for ms in rows.values()),
        },
        "figures": figures,
    }


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"bench_cli: median wall time of {results['rounds']} fresh processes; "
        f"python -c pass: {results['python_ms']:.0f} ms",
        f"{'command':<30} {'ms':>8} {'minus python':>13}",
    ]
    for name, ms in results["rows_ms"].items():
        lines.append(f"{name:<30} {ms:>8.0f} {ms - results['python_ms']:>13.0f}")
    target = results["target"]
    lines.append(
        f"aim: every command under {target['aim_ms']:.0f} ms: "
        f"{'met' if target['met'] else 'NOT met'}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 15")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    results = run(quick=args.quick)
    print(json.dumps(results, indent=1) if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
