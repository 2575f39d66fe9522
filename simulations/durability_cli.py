"""The command line of the durability suite: ``python -m simulations.durability_cli``.

Flags override the quick or full suite's baseline scenario and sweep sizes; the tables
go to stdout and ``durability.json`` with the PNGs to ``--out``.  The exit status is 1
when the sanity case or the user-level validation failed (the figures are then not
to be trusted), so scripts can tell.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from . import durability
from .durability_audit_report import format_audit_report
from .durability_report import format_report
from .durability_suite import SuiteSettings, run_audits_only, run_suite

DEFAULT_OUT_DIR = Path("simulations/results/durability")


def _parse_distances(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(",") if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m simulations.durability_cli [--quick] [--out DIR] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.durability_cli",
        description=(durability.__doc__ or "").split("\n")[0],
        allow_abbrev=False,
    )
    parser.add_argument("--quick", action="store_true", help="small run (< 30 s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output directory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--chunks", type=int, help="baseline chunk sample size")
    parser.add_argument("--years", type=float)
    parser.add_argument("--k", type=int)
    parser.add_argument("--n", type=int)
    parser.add_argument("--repair-threshold", type=int)
    parser.add_argument("--repair-delay-days", type=float)
    parser.add_argument("--lifetime-years", type=float)
    parser.add_argument("--outage-rate", type=float, help="outages per node per year")
    parser.add_argument("--outage-days", type=float, help="mean outage length")
    parser.add_argument("--disaster-rate", type=float, help="baseline disasters per year")
    parser.add_argument("--disaster-radius-km", type=float)
    parser.add_argument("--min-distance-km", type=float, help="baseline packet proximity minimum")
    parser.add_argument("--stored-gb-per-node", type=float)
    parser.add_argument("--sweep-chunks", type=int, help="chunk sample of each sweep run")
    parser.add_argument("--sanity-chunks", type=int)
    parser.add_argument(
        "--sweep-distances",
        type=_parse_distances,
        help="comma-separated km, default 0,100,500,1000",
    )
    parser.add_argument("--heavy-disaster-rate", type=float)
    parser.add_argument("--heavy-disaster-radius-km", type=float)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--no-user", action="store_true", help="leave out the user-level model (issue 15)"
    )
    parser.add_argument(
        "--no-audits", action="store_true", help="leave out storage audits and leases (issue 10)"
    )
    parser.add_argument(
        "--audit-mode",
        choices=("tiny", "quick", "full"),
        help="size of the audit and lease runs (default: as --quick, else full)",
    )
    parser.add_argument(
        "--audits-only",
        action="store_true",
        help="run only storage audits and leases (issue 10): detection, loss, defaults",
    )
    args = parser.parse_args(argv)

    settings = SuiteSettings.for_mode(args.quick)
    overrides = {
        "nodes": args.nodes,
        "chunks": args.chunks,
        "years": args.years,
        "k": args.k,
        "n": args.n,
        "repair_threshold": args.repair_threshold,
        "repair_delay_days": args.repair_delay_days,
        "mean_lifetime_years": args.lifetime_years,
        "outage_rate_per_year": args.outage_rate,
        "outage_mean_days": args.outage_days,
        "disaster_rate_per_year": args.disaster_rate,
        "disaster_radius_km": args.disaster_radius_km,
        "min_distance_km": args.min_distance_km,
        "stored_bytes_per_node": None
        if args.stored_gb_per_node is None
        else args.stored_gb_per_node * 1e9,
    }
    baseline = attrs.evolve(
        settings.baseline, **{k: v for k, v in overrides.items() if v is not None}
    )
    suite_overrides: dict[str, Any] = {"baseline": baseline}
    if args.years is not None:
        suite_overrides["sweep_years"] = args.years
    if args.sweep_chunks is not None:
        suite_overrides["sweep_chunks"] = args.sweep_chunks
    if args.sanity_chunks is not None:
        suite_overrides["sanity_chunks"] = args.sanity_chunks
        suite_overrides["sanity_curve_chunks"] = args.sanity_chunks
    if args.sweep_distances is not None:
        suite_overrides["sweep_distances_km"] = args.sweep_distances
    if args.heavy_disaster_rate is not None:
        suite_overrides["heavy_disaster_rate_per_year"] = args.heavy_disaster_rate
    if args.heavy_disaster_radius_km is not None:
        suite_overrides["heavy_disaster_radius_km"] = args.heavy_disaster_radius_km
    if args.no_user:
        suite_overrides["user_mode"] = None
    if args.audit_mode is not None:
        suite_overrides["audit_mode"] = args.audit_mode
    if args.no_audits:
        suite_overrides["audit_mode"] = None
    settings = attrs.evolve(settings, **suite_overrides)
    if args.audits_only:
        if args.no_audits:
            parser.error("--audits-only and --no-audits contradict each other")
        results = run_audits_only(
            settings.audit_mode or "quick", args.out, args.seed, not args.no_plots
        )
        print(format_audit_report(results))
        print(f"\nwrote {', '.join(results['files'])}")
        return 0
    results = run_suite(settings, out_dir=args.out, seed=args.seed, plots=not args.no_plots)
    print(format_report(results))
    print(f"\nwrote {', '.join(results['files'])}")
    return 0 if results["trusted"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
