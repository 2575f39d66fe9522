"""The durability suite (issues 5 and 15): what ``python -m benchmarks`` and the CLI run.

Sanity first (the grid model against the binomial formula: if it fails the rest is
not trusted), then the grid model's baseline scenario, the packet-proximity sweep
under a disaster-heavy scenario and the repair-policy sweep, then the user-level model
(``user_durability_suite.run_user``) with its headline figures copied to the top level
of the result (``USER_HEADLINE_KEYS``), then storage audits and leases (issue 10,
``durability_audit.run_audits``: detection time and loss against the audit rate, the
lease sweep and the defaults chosen from them, under ``audits`` and, for scripts,
``audit_recommendation``).  With an output directory it writes ``durability.json`` and
the PNGs.

:func:`run` is the benchmark runner's entry point; it reads ``run`` and
``format_report`` from this module, so the report's formatter is re-exported here.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import attrs

from .durability import SimConfig, disaster_safe_distance_km, simulate
from .durability_audit import run_audits
from .durability_audit_plots import write_audit_plots
from .durability_plots import write_plots, write_user_plots
from .durability_report import format_report, write_json
from .durability_stats import sanity_check, summarise
from .user_durability_suite import run_user

__all__ = [
    "DEFAULT_SWEEP_DISTANCES_KM",
    "PLOTS_NEED",
    "USER_HEADLINE_KEYS",
    "SuiteSettings",
    "format_report",
    "run",
    "run_audits_only",
    "run_suite",
]

DEFAULT_SWEEP_DISTANCES_KM: tuple[float, ...] = (0.0, 100.0, 500.0, 1000.0)
USER_HEADLINE_KEYS: tuple[str, ...] = (
    "loss_any_file_100gb_per_year",
    "loss_any_file_100gb_per_year_markov",
    "years_to_first_loss_after_source_lost",
    "years_to_first_loss_after_source_lost_median",
    "years_to_first_loss_after_source_lost_without_delegates",
    "recommendation",
)
#: Said up front (benchmarks/__main__) and in the results when plots cannot be drawn.
PLOTS_NEED = "plots skipped: matplotlib is not installed (pip install 'gridnode[sim]')"


@attrs.frozen(kw_only=True)
class SuiteSettings:
    """How big each part of a :func:`run` is; quick and full differ only here."""

    baseline: SimConfig
    sweep_chunks: int
    sweep_years: float
    sweep_distances_km: tuple[float, ...] = DEFAULT_SWEEP_DISTANCES_KM
    heavy_disaster_rate_per_year: float = 12.0
    heavy_disaster_radius_km: float = 250.0
    sanity_chunks: int = 20_000
    sanity_curve_p: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
    sanity_curve_chunks: int = 5_000
    policy_delays_days: tuple[float, ...] = (1.0, 3.0, 7.0)
    #: The user-level model of issue 15 (``simulations.user_durability``): "tiny",
    #: "quick", "full", or None to leave it out.
    user_mode: str | None = None
    #: Storage audits and leases (issue 10, ``simulations.durability_audit``): "tiny",
    #: "quick", "full", or None to leave them out.
    audit_mode: str | None = None

    @classmethod
    def for_mode(cls, quick: bool) -> SuiteSettings:
        if quick:
            return cls(
                baseline=SimConfig(chunks=20_000, years=2.0),
                sweep_chunks=10_000,
                sweep_years=2.0,
                user_mode="quick",
                audit_mode="quick",
            )
        return cls(
            user_mode="full",
            audit_mode="full",
            baseline=SimConfig(chunks=100_000, years=10.0),
            sweep_chunks=50_000,
            sweep_years=5.0,
            sanity_chunks=100_000,
            sanity_curve_chunks=20_000,
        )

    def heavy(self, min_distance_km: float) -> SimConfig:
        return attrs.evolve(
            self.baseline,
            chunks=self.sweep_chunks,
            years=self.sweep_years,
            disaster_rate_per_year=self.heavy_disaster_rate_per_year,
            disaster_radius_km=self.heavy_disaster_radius_km,
            min_distance_km=min_distance_km,
        )

    def policies(self) -> list[SimConfig]:
        """Baseline churn and outages, every valid threshold r times each delay."""
        base = attrs.evolve(self.baseline, chunks=self.sweep_chunks, years=self.sweep_years)
        return [
            attrs.evolve(base, repair_threshold=r, repair_delay_days=delay)
            for r in range(base.k, base.n)
            for delay in self.policy_delays_days
        ]


def run_suite(
    settings: SuiteSettings, *, out_dir: Path | None, seed: int, plots: bool = True
) -> dict[str, Any]:
    """Run sanity, baseline and sweep; write JSON (and PNGs) when ``out_dir`` is set."""
    started = time.perf_counter()
    base = settings.baseline
    sanity = sanity_check(
        k=base.k, n=base.n, p=0.2, nodes=base.nodes, chunks=settings.sanity_chunks, seed=seed
    )
    curve = [
        sanity_check(
            k=base.k,
            n=base.n,
            p=p,
            nodes=base.nodes,
            chunks=settings.sanity_curve_chunks,
            seed=seed + 1 + i,
        )
        for i, p in enumerate(settings.sanity_curve_p)
    ]
    results: dict[str, Any] = {
        "sanity": sanity,
        "sanity_curve": curve,
        "trusted": sanity["passed"] and all(c["passed"] for c in curve),
        "baseline": summarise(simulate(base, seed)),
    }
    rows: list[dict[str, Any]] = []
    for d in settings.sweep_distances_km:
        summary = summarise(simulate(settings.heavy(d), seed))
        rows.append({"min_distance_km": d, **summary})
    m = base.n - base.k + 1
    safe = disaster_safe_distance_km(settings.heavy_disaster_radius_km, m)
    results["proximity_sweep"] = {
        "scenario": (
            f"DISASTER-HEAVY stress scenario (not a forecast): "
            f"{settings.heavy_disaster_rate_per_year:g} disasters/year, each destroying every "
            f"node within {settings.heavy_disaster_radius_km:g} km; churn, outages and repair "
            "as baseline"
        ),
        "packets_one_disaster_must_take": m,
        "safe_distance_km": safe,
        "rows": rows,
    }
    results["repair_policy_sweep"] = [
        {
            "repair_threshold": cfg.threshold,
            "repair_delay_days": cfg.repair_delay_days,
            **summarise(simulate(cfg, seed)),
        }
        for cfg in settings.policies()
    ]
    if settings.user_mode is not None:
        user = run_user(settings.user_mode, seed=seed)
        results["user"] = user
        results["trusted"] = results["trusted"] and user["validation"]["passed"]
        # The figures scripts read (issue 15), at the top level of the result.
        for key in USER_HEADLINE_KEYS:
            results[key] = user[key]
    if settings.audit_mode is not None:
        audits = run_audits(settings.audit_mode, seed=seed)
        results["audits"] = audits
        results["audit_recommendation"] = audits["recommendation"]
    results["runtime_s"] = time.perf_counter() - started
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = [out_dir / "durability.json"]
        if plots and importlib.util.find_spec("matplotlib") is None:
            # The README's plain install has no matplotlib: the figures are all in the
            # JSON; only the pictures need the extra.
            results["plots_skipped"] = PLOTS_NEED
            plots = False
        if plots:
            files += write_plots(results, out_dir)
            if "user" in results:
                files += write_user_plots(results["user"], out_dir)
            if "audits" in results:
                files += write_audit_plots(results["audits"], out_dir)
        results["files"] = [str(f) for f in files]
        write_json(out_dir / "durability.json", results)
    return results


def run_audits_only(
    mode: str, out_dir: Path | None, seed: int, plots: bool = True
) -> dict[str, Any]:
    """Only storage audits and leases (issue 10): ``durability_audits.json`` and their
    PNGs in ``out_dir``, for a run that does not need the other models again."""
    results = run_audits(mode, seed=seed)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = [out_dir / "durability_audits.json"]
        if plots and importlib.util.find_spec("matplotlib") is None:
            results["plots_skipped"] = PLOTS_NEED
            plots = False
        if plots:
            files += write_audit_plots(results, out_dir)
        results["files"] = [str(f) for f in files]
        write_json(files[0], results)
    return results


def run(quick: bool = False, out_dir: Path | None = None, seed: int = 1) -> dict[str, Any]:
    """Entry point for the benchmark suite: the default quick or full suite."""
    return run_suite(SuiteSettings.for_mode(quick), out_dir=out_dir, seed=seed)
