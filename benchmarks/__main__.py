"""The benchmark suite: ``python -m benchmarks [--quick] [--out FILE] [--only NAME,...]``.

Runs every benchmark in turn (pipeline, transport, grid, tahoe, tree, memory, placement,
gossip when its module exists, durability, cli, delegation), each in its own ``try``: one
that fails is reported with its traceback and the others still run.  ``tahoe`` and
``tree`` compare with Tahoe-LAFS and restic when those are installed (found through
``GRIDNODE_TAHOE`` / ``GRIDNODE_RESTIC`` or ``PATH``) and are skipped with a note when
not.  A benchmark may also compare itself with another one of the same run (Tahoe-LAFS
with the grid's figures): the runner hands it the others' results at the end.

Writes one JSON file (default ``benchmarks/results/<YYYY-MM-DD>.json``, or
``<YYYY-MM-DD>-quick.json`` for ``--quick`` so a quick run never overwrites the day's
full figures) with the environment (CPUs, Python, platform, load average at start and
end, git commit) and every benchmark's own results, and prints a summary in which each
figure sits beside the baseline measured in the same run and their ratio: absolute
figures on a shared machine drift, ratios much less.

``--quick`` scales every benchmark down (aim: a few minutes in all on 2 idle cores;
``tahoe`` and ``tree``, when their tools are installed, add about 1.5 minutes each).
``--details`` also prints each benchmark's own table.  Exit status 1 when a benchmark
failed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from .optional import Unavailable

RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
ORDER: Final = (
    "pipeline", "transport", "grid", "tahoe", "tree", "memory", "placement", "gossip",
    "durability", "cli", "delegation",
)  # fmt: skip
#: Benchmarks that may be absent (another engineer's, still to come): skipped, not failed.
#: (``tahoe`` and ``tree`` are skipped by raising ``Unavailable`` when their tool is absent.)
OPTIONAL: Final = frozenset({"gossip"})
_MODULES: Final = {
    "pipeline": "benchmarks.bench_pipeline",
    "transport": "benchmarks.bench_transport",
    "grid": "benchmarks.bench_grid",
    "tahoe": "benchmarks.bench_tahoe",
    "tree": "benchmarks.bench_tree",
    "memory": "benchmarks.bench_memory",
    "placement": "benchmarks.bench_placement",
    "gossip": "benchmarks.bench_gossip",
    "durability": "simulations.durability_suite",
    "cli": "benchmarks.bench_cli",
    "delegation": "benchmarks.bench_delegation",
}

Runner = Callable[[bool], dict[str, Any]]


class _Missing(Exception):
    """An optional benchmark whose module does not exist (yet)."""


def _runner(name: str, *, plots_dir: Path | None) -> tuple[Runner, Callable[..., str] | None]:
    """The benchmark's ``run(quick)`` and, when it has one, its table formatter."""
    module_name = _MODULES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if name in OPTIONAL and exc.name == module_name:
            raise _Missing(f"{module_name} does not exist") from None
        raise
    if name == "durability":

        def durability(quick: bool) -> dict[str, Any]:
            result: dict[str, Any] = module.run(quick=quick, out_dir=plots_dir, seed=1)
            return result

        return durability, getattr(module, "format_report", None)
    run: Callable[..., dict[str, Any]] = module.run
    return (lambda quick: run(quick=quick)), getattr(module, "format_table", None)


@attrs.define
class Outcome:
    name: str
    status: str  # ok, failed, skipped
    seconds: float = 0.0
    result: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None
    details: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "seconds": round(self.seconds, 1)}
        if self.error is not None:
            out["error"] = self.error
        if self.traceback is not None:
            out["traceback"] = self.traceback
        if self.result is not None:
            out["figures"] = figures_of(self.name, self.result)
            out["result"] = {k: v for k, v in self.result.items() if k != "figures"}
        return out


def run_one(name: str, *, quick: bool, plots_dir: Path | None, details: bool) -> Outcome:
    """One benchmark; never raises for the benchmark's own failure."""
    started = time.perf_counter()
    try:
        run, formatter = _runner(name, plots_dir=plots_dir)
        result = run(quick)
    except (_Missing, Unavailable) as exc:
        return Outcome(name, "skipped", time.perf_counter() - started, error=str(exc))
    except Exception as exc:
        return Outcome(
            name,
            "failed",
            time.perf_counter() - started,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            traceback=traceback.format_exc()[-8000:],
        )
    outcome = Outcome(name, "ok", time.perf_counter() - started, result=result)
    if details and formatter is not None:
        try:
            outcome.details = formatter(result)
        except Exception as exc:  # a formatter bug must not lose the figures
            outcome.details = f"(no table: {type(exc).__name__}: {exc})"
    return outcome


def compare_outcomes(outcomes: dict[str, Outcome]) -> None:
    """Let each benchmark that has a ``compare(results)`` add figures against the others
    of this run (e.g. Tahoe-LAFS beside the grid): ratios of figures measured minutes
    apart on the same machine, not across days."""
    results = {n: o.result for n, o in outcomes.items() if o.status == "ok" and o.result}
    for name, outcome in outcomes.items():
        if outcome.result is None:
            continue
        compare = getattr(sys.modules.get(_MODULES[name]), "compare", None)
        if compare is None:
            continue
        try:
            extra = compare(results)
        except Exception as exc:  # a comparison bug must not lose the figures
            outcome.result["compare_error"] = f"{type(exc).__name__}: {exc}"[:500]
            continue
        if extra:
            own = outcome.result.get("figures")
            outcome.result["figures"] = [*(own if isinstance(own, list) else []), *extra]


# --- figures of the benchmarks that do not list their own ------------------------------------


def _figure(
    name: str, value: float, unit: str, baseline: str, baseline_value: float
) -> dict[str, Any]:
    ratio = value / baseline_value if baseline_value else None
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio": ratio,
    }


def _pipeline_figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        _figure(
            f"{dataset}: {stage}", row["ours_mb_s"], "MB/s", row["baseline"], row["baseline_mb_s"]
        )
        for dataset, data in result["datasets"].items()
        for stage, row in data["stages"].items()
    ]


def _placement_figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        _figure(
            f"{row['members']} members, rules {row['rules']}: place one chunk",
            row["place_us_per_chunk"],
            "us",
            "plain hash selection",
            row["baseline_us_per_chunk"],
        )
        for row in result["rows"]
    ]


def _durability_figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    sanity = [result["sanity"], *result.get("sanity_curve", [])]
    figures = [
        _figure(
            f"sanity {s['k']}-of-{s['n']}, p={s['p']}: fraction of chunks lost",
            s["observed"],
            "",
            "binomial formula",
            s["expected"],
        )
        for s in sanity
    ]
    rows = result.get("proximity_sweep", {}).get("rows", [])
    base = next((r for r in rows if r["min_distance_km"] == 0), rows[0] if rows else None)
    for row in rows:
        if base is None or row is base:
            continue
        value, baseline = row["loss"]["per_year"], base["loss"]["per_year"]
        if value is None or baseline is None:
            continue
        figures.append(
            _figure(
                f"disaster-heavy, packets >= {row['min_distance_km']:g} km apart: chunk loss/year",
                value,
                "",
                f"packets >= {base['min_distance_km']:g} km apart",
                baseline,
            )
        )
    user = result.get("user")
    if isinstance(user, dict):  # issue 15: the user-level model beside its Markov chain
        check = user["validation"]
        figures.append(
            _figure(
                f"validation {check['policy']}: chunk losses/chunk-year",
                check["counted_rate"],
                "",
                "Markov chain",
                check["markov_rate"],
            )
        )
        figures.append(
            _figure(
                "shipped defaults, home: P(lose any file of 100 GB)/year",
                result["loss_any_file_100gb_per_year"],
                "",
                "Markov chain, independent availability",
                result["loss_any_file_100gb_per_year_markov"],
            )
        )
    return figures


_ADAPTERS: Final[dict[str, Callable[[dict[str, Any]], list[dict[str, Any]]]]] = {
    "pipeline": _pipeline_figures,
    "placement": _placement_figures,
    "durability": _durability_figures,
}


def figures_of(name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The benchmark's figures: its own ``figures`` list, or read out of its results."""
    own = result.get("figures")
    if isinstance(own, list):
        return [f for f in own if isinstance(f, dict) and "value" in f]
    adapter = _ADAPTERS.get(name)
    if adapter is None:
        return []
    try:
        return adapter(result)
    except (KeyError, TypeError, IndexError):
        return []  # a changed result layout: the JSON still has everything


# --- output ---------------------------------------------------------------------------------


def _number(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    if value == 0:
        return "0"
    if abs(value) < 1:
        return f"{value:.3g}"
    if abs(value) < 100:
        return f"{value:.2f}"
    return f"{value:.1f}" if abs(value) < 1e7 else f"{value:.3g}"


def format_summary(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"benchmarks ({'quick' if report['quick'] else 'full'}) on {env['cpu_count']} CPUs, "
        f"Python {env['python']}, {env['platform']}, commit "
        f"{(env['git_commit'] or 'unknown')[:12]}{' (dirty)' if env['git_dirty'] else ''}",
        f"load average at start {env['load_average_start'][0]:.2f}, "
        f"at end {env['load_average_end'][0]:.2f}; total {report['seconds']:.0f} s; "
        "ratio = figure / baseline (MB/s: >1 faster; s, us, MiB: >1 slower or bigger)",
    ]
    header = f"  {'figure':<60} {'value':>9} {'unit':<5} {'baseline':>9} {'ratio':>7}  baseline"
    for name, bench in report["benchmarks"].items():
        lines += ["", f"== {name}: {bench['status']} in {bench['seconds']:.1f} s"]
        if bench["status"] != "ok":
            lines.append(f"  {bench.get('error', '')}")
            continue
        figures = bench.get("figures", [])
        if not figures:
            lines.append("  (no figures with a baseline; see the JSON)")
            continue
        lines.append(header)
        for fig in figures:
            lines.append(
                f"  {str(fig['name'])[:60]:<60} {_number(fig['value']):>9} "
                f"{fig.get('unit', '')!s:<5} {_number(fig.get('baseline_value')):>9} "
                f"{_number(fig.get('ratio')):>7}  {fig.get('baseline', '')}"
            )
        for key in ("target", "aims"):
            if key in bench["result"]:
                lines.append(f"  {key}: {json.dumps(jsonable(bench['result'][key]))}")
        if "aim_met" in bench["result"]:
            lines.append(f"  aim met: {bench['result']['aim_met']}")
        if "aim_mib_met" in bench["result"]:
            lines.append(f"  aim met in MiB: {bench['result']['aim_mib_met']}")
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """Strict JSON: numpy scalars to Python, paths to text, inf and nan to null."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        value = item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n")
    os.replace(temp, path)


def default_out(quick: bool) -> Path:
    day = datetime.date.today().isoformat()
    return RESULTS_DIR / (f"{day}-quick.json" if quick else f"{day}.json")


def _parse_only(text: str | None, parser: argparse.ArgumentParser) -> list[str]:
    if not text:
        return list(ORDER)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(ORDER)}")
    return [n for n in ORDER if n in names]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Run the benchmark suite."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="every benchmark scaled down (a few minutes on 2 idle cores)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON file to write (default benchmarks/results/<date>[-quick].json)",
    )
    parser.add_argument("--only", metavar="NAME,...", help=f"run only these, of: {','.join(ORDER)}")
    parser.add_argument(
        "--details", action="store_true", help="also print each benchmark's own table"
    )
    args = parser.parse_args(argv)
    names = _parse_only(args.only, parser)
    out = args.out if args.out is not None else default_out(args.quick)

    # Logging first: gridnode's module-level loggers keep the configuration that is
    # current when they are imported, and the benchmarks import gridnode lazily.
    from gridnode.log import configure_logging

    configure_logging("warning")
    from .common import environment, wait_discarded

    env = environment()
    env["load_average_start"] = env.pop("load_average")
    report: dict[str, Any] = {
        "suite": "gridnode benchmarks",
        "quick": args.quick,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "environment": env,
        "benchmarks": {},
    }
    plots_dir = None if args.quick else out.with_name(f"{out.stem}-durability")
    if plots_dir is not None and "durability" in names:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            from simulations.durability_suite import PLOTS_NEED

            print(f"note: {PLOTS_NEED}; every figure is still in the JSON", file=sys.stderr)
    started = time.perf_counter()
    interrupted = False
    outcomes: dict[str, Outcome] = {}
    try:
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            outcome = run_one(name, quick=args.quick, plots_dir=plots_dir, details=args.details)
            outcomes[name] = outcome
            report["benchmarks"][name] = outcome.to_dict()
            print(
                f"  {name}: {outcome.status} in {outcome.seconds:.1f} s"
                + (f" ({outcome.error})" if outcome.error else ""),
                file=sys.stderr,
                flush=True,
            )
            if outcome.details:
                print(outcome.details + "\n", flush=True)
    except KeyboardInterrupt:
        interrupted = True
    compare_outcomes(outcomes)
    report["benchmarks"] = {name: outcome.to_dict() for name, outcome in outcomes.items()}
    wait_discarded()  # temporary trees deleted in the background
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["interrupted"] = interrupted
    env["load_average_end"] = list(os.getloadavg())
    write_json(out, report)
    print(format_summary(jsonable(report)))
    print(f"\nwrote {out}")
    if interrupted:
        return 130
    return 1 if any(b["status"] == "failed" for b in report["benchmarks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
