"""What a durability run prints and stores: the tables on stdout and strict JSON.

The figures themselves are computed elsewhere (``durability_stats``,
``user_durability_stats``, the suites); this module only words them, for both models,
so the tables of the grid model and of the user-level model read alike.  The JSON is
strict (no NaN or Infinity): benchmarks and scripts parse it with any JSON reader.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .durability_audit_report import format_audit_report
from .user_durability import MEAN_CHUNK_BYTES, format_duration
from .user_durability_suite import RECOMMENDED_DELAY_S, TARGET_ANY_LOSS, row_at


def jsonable(value: Any) -> Any:
    """Strict JSON: numpy scalars become Python ones, inf and nan become null."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, results: dict[str, Any]) -> None:
    """``results`` as indented strict JSON at ``path``."""
    path.write_text(json.dumps(jsonable(results), indent=2, allow_nan=False))


def _fmt_ci(loss: dict[str, Any]) -> str:
    low, high = loss["ci95"]
    if loss["per_year"] is None:
        return "n/a"
    if loss["lost_chunks"] == 0:
        return f"0 (< {high:.2e})"
    return f"{loss['per_year']:.2e} [{low:.2e}, {high:.2e}]"


def format_report(results: dict[str, Any]) -> str:
    """Readable tables for stdout: the grid model's, then the user-level model's if run."""
    lines: list[str] = []
    s = results["sanity"]
    lines.append("SANITY (issue 5): independent failures, no repair, no outages, no disasters")
    lines.append(
        f"{'k-of-n':>7} {'p':>6} {'chunks':>8} {'observed':>10} {'binomial':>10} "
        f"{'SE':>9} {'z':>7}  ok"
    )
    for c in [s, *results["sanity_curve"]]:
        lines.append(
            f"{c['k']}-of-{c['n']:<3} {c['p']:>6.3f} {c['chunks']:>8} "
            f"{c['observed']:>10.5f} {c['expected']:>10.5f} {c['se']:>9.2e} "
            f"{c['z']:>7.2f}  {'yes' if c['passed'] else 'NO'}"
        )
    lines.append(f"(SE includes chunks sharing nodes; design effect {s['design_effect']:.2f})")
    lines.append(
        "model results "
        + ("can be trusted" if results["trusted"] else "are NOT trusted: the sanity case failed")
    )
    lines.append("")
    b = results["baseline"]
    c = b["config"]
    lines.append(
        f"BASELINE: {c['nodes']} nodes, {b['chunks_placed']} chunks {c['k']}-of-{c['n']}, "
        f"{c['years']:g} years, lifetime {c['mean_lifetime_years']:g} y, outages "
        f"{c['outage_rate_per_year']:g}/y x {c['outage_mean_days']:g} d, disasters "
        f"{c['disaster_rate_per_year']:g}/y r={c['disaster_radius_km']:g} km, repair at <= "
        f"{c['repair_threshold']} after {c['repair_delay_days']:g} d, D={c['min_distance_km']:g} km"
    )
    loss = b["loss"]
    lines.append(
        f"  chunk loss per year      {_fmt_ci(loss)}  ({loss['lost_chunks']} lost in "
        f"{loss['loss_events']} events, {loss['exposure_chunk_years']:.0f} chunk-years)"
    )
    r = b["repair"]
    lines.append(
        f"  repair per node          {r['bytes_per_node_year'] / 1e9:.2f} GB/year = "
        f"{r['kbit_s_per_node']:.1f} kbit/s ({r['repairs']} repairs in sample)"
    )
    u = b["unavailability"]
    lines.append(
        f"  unavailable chunks       mean {u['mean_fraction']:.2e}, max "
        f"{u['max_fraction']:.2e} over {u['samples']} instants (node down fraction "
        f"{u['node_down_fraction']:.3f})"
    )
    lines.append(f"  placement failures       {b['placement_failures']}")
    lines.append("")
    sw = results["proximity_sweep"]
    lines.append("PROXIMITY SWEEP: " + sw["scenario"])
    if sw["safe_distance_km"] is not None:
        lines.append(
            f"  (a single disaster cannot take {sw['packets_one_disaster_must_take']} "
            f"packets of a chunk once D > {sw['safe_distance_km']:.0f} km)"
        )
    lines.append(
        f"{'D km':>7} {'lost':>6} {'after disaster':>14} {'loss/year [95% CI]':>34} "
        f"{'max pk/disaster':>15} {'repair kbit/s':>13} {'place fail':>10}"
    )
    for row in sw["rows"]:
        loss = row["loss"]
        lines.append(
            f"{row['min_distance_km']:>7g} {loss['lost_chunks']:>6} "
            f"{loss['lost_after_disaster']:>14} {_fmt_ci(loss):>34} "
            f"{row['disasters']['max_packets_of_one_chunk_in_one_disaster']:>15} "
            f"{row['repair']['kbit_s_per_node']:>13.1f} {row['placement_failures']:>10}"
        )
    lines.append("  (after disaster: lost chunks that a disaster had hit since their last repair)")
    if results["repair_policy_sweep"]:
        first = results["repair_policy_sweep"][0]
        lines.append("")
        lines.append(
            f"REPAIR POLICY SWEEP: baseline scenario, {first['chunks_placed']} chunks, "
            f"{first['config']['years']:g} years; repair when <= r packets survive, "
            "after a delay"
        )
        lines.append(
            f"{'r':>3} {'delay d':>7} {'lost':>6} {'loss/year [95% CI]':>34} {'repair kbit/s':>13}"
        )
        for row in results["repair_policy_sweep"]:
            lines.append(
                f"{row['repair_threshold']:>3} {row['repair_delay_days']:>7g} "
                f"{row['loss']['lost_chunks']:>6} {_fmt_ci(row['loss']):>34} "
                f"{row['repair']['kbit_s_per_node']:>13.1f}"
            )
    lines.append("")
    lines.append("Loss intervals treat chunk-years as independent; losses cluster (see events),")
    lines.append(f"so read them as optimistic. Runtime {results['runtime_s']:.1f} s.")
    if "user" in results:
        lines += ["", format_user_report(results["user"])]
    if "audits" in results:
        lines += ["", format_audit_report(results["audits"])]
    return "\n".join(lines)


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 0.995:
        return "~1"
    if value < 1e-12:
        return "<1e-12"
    return f"{value:.2g}"


def _years(value: float | None, horizon: float = 50.0) -> str:
    if value is None:
        return f">{horizon:g}"
    if value < 1 / 12:
        return f"{value * 365.25:.1f} d"
    return f"{value:.2g} y"


def sweep_table(results: dict[str, Any]) -> list[str]:
    """The k-of-n sweep, one line per code and policy: home and datacenter side by side."""
    head = results["headline_departures_per_year"]
    lines = [
        f"{'policy':<9} {'k/n':>6} {'ovh':>5} {'P(any)/yr home':>14} {'P(any)/yr dc':>12} "
        f"{'markov home':>11} {'W mean h':>8} {'home kbit/s':>11} {'spur/chunk-yr':>13} "
        f"{'unreadable':>10} {'open':>5} {'stuck bound':>11}"
    ]
    by_key = {
        (row["policy_kind"], row["availability"], row["policy"]["k"], row["policy"]["n"]): row
        for row in results["sweep"]
    }
    for kind, avail, k, n in by_key:
        if avail != "home":
            continue
        h = by_key[(kind, "home", k, n)]
        d = by_key[(kind, "datacenter", k, n)]
        rh, rd = row_at(h, head), row_at(d, head)
        mean_h = h["repair_time"]["mean_h"]
        lines.append(
            f"{kind:<9} {f'{k}/{n}':>6} {n / k:>5.2f} {_p(rh['loss_any_file_100gb_per_year']):>14} "
            f"{_p(rd['loss_any_file_100gb_per_year']):>12} "
            f"{_p(rh['markov_loss_any_file_100gb_per_year']):>11} "
            f"{(mean_h if mean_h is not None else math.nan):>8.1f} "
            f"{rh['traffic']['repairer_kbit_s']:>11.1f} "
            f"{rh['traffic']['spurious_repairs_per_chunk_year']:>13.1f} "
            f"{h['restore_unreadable_fraction']:>10.2f} "
            f"{h['repair_time']['open_fraction']:>5.3f} "
            f"{_p(rh['loss_any_file_100gb_per_year_if_open_stuck']):>11}"
        )
    return lines


def format_user_report(results: dict[str, Any]) -> str:
    """Readable tables of the user-level model (issue 15), from ``run_user``'s results."""
    head = results["headline_departures_per_year"]
    ship = results["shipped_policy"]
    v = results["validation"]
    lines = [
        "USER-LEVEL DURABILITY (issue 15): a 100 GB backup "
        f"({results['backup']['chunks']} chunks of {MEAN_CHUNK_BYTES / 1e6:g} MB)",
        f"shipped: {ship['k']}/{ship['n']}, repair when one holder is gone "
        f"{format_duration(ship['repair_after_s'])} ({ship['detection']}), "
        f"{ship['repair_delegates']} delegates, lease {format_duration(ship['repair_lease_s'])}",
        f"validation: {v['policy']} at {v['departures_per_year']:g} departures/yr: "
        f"{v['losses_counted']} losses counted in {v['chunk_years']:.0f} chunk-years = "
        f"{v['counted_rate']:.3g}/chunk-yr, Markov {v['markov_rate']:.3g}, conditional "
        f"{v['conditional_rate']:.3g}, z={v['z']:.2f} {'ok' if v['passed'] else 'FAILED'}",
        "",
        f"K-OF-N SWEEP at {head:.1%} departures/yr (candidate = timer from last seen, "
        f"{format_duration(RECOMMENDED_DELAY_S)}, rebuild only gone holders' packets; "
        "kbit/s = the repairer's traffic for its 100 GB)",
        *sweep_table(results),
        "",
        "DELAY SWEEP (home, recommended code):",
    ]
    for ev in results["delay_sweep"]:
        row = row_at(ev, head)
        lines.append(
            f"  {ev['label']:<48} P(any)/yr {_p(row['loss_any_file_100gb_per_year']):>8}  "
            f"{row['traffic']['repairer_kbit_s']:>8.1f} kbit/s  W mean "
            f"{ev['repair_time']['mean_h'] or math.nan:.1f} h"
        )
    lines.append("THRESHOLD SWEEP (home, recommended code):")
    for ev in results["threshold_sweep"]:
        row = row_at(ev, head)
        lines.append(
            f"  {ev['label']:<48} P(any)/yr {_p(row['loss_any_file_100gb_per_year']):>8}  "
            f"{row['traffic']['repairer_kbit_s']:>8.1f} kbit/s"
        )
    lines.append("ABLATION (home, the recommended policy with one change undone):")
    for ev in results["ablation"]:
        row = row_at(ev, head)
        lines.append(
            f"  {ev['label']:<48} P(any)/yr {_p(row['loss_any_file_100gb_per_year']):>8}  "
            f"{row['traffic']['repairer_kbit_s']:>8.1f} kbit/s  open "
            f"{ev['repair_time']['open_fraction']:.3f} (bound if stuck "
            f"{_p(row['loss_any_file_100gb_per_year_if_open_stuck'])})"
        )
    rec = results["recommendation"]
    lines += [
        "",
        f"RECOMMENDED: redundancy {rec['redundancy']}, "
        f"repair threshold r={rec['repair_threshold']}, "
        f"repair after {format_duration(rec['repair_after_s'])} ({rec['detection']}, rebuild "
        f"{rec['rebuild']}); target met: {rec['met_target']} "
        f"(codes meeting it: {', '.join(rec['codes_meeting_target']) or 'none'})",
        f"  home, {head:.1%}/yr: P(any)/yr "
        f"{_p(rec['home_at_headline']['loss_any_file_100gb_per_year'])}"
        f", at {results['design_departures_per_year']:.0%}/yr: "
        f"{_p(rec['home_at_design']['loss_any_file_100gb_per_year'])} "
        f"(+2 SE {_p(rec['home_at_design']['loss_any_file_100gb_per_year_hi'])}, "
        "open episodes stuck "
        f"{_p(rec['home_at_design']['loss_any_file_100gb_per_year_if_open_stuck'])}); "
        f"traffic {rec['home_at_headline']['traffic']['repairer_kbit_s']:.1f} kbit/s",
        "",
        "SOURCE DESTROYED: years until P(any file lost) reaches 1 % [median]",
    ]
    for which in ("shipped", "recommended"):
        block = results["source_lost"][which]
        lines.append(f"  {which}: {block['policy']}, {block['delegates']} delegates")
        for p_year in (head, results["design_departures_per_year"]):
            cells = block[f"departures_{p_year:.3f}"]
            lines.append(
                f"    {p_year:.0%}/yr: "
                + ", ".join(
                    f"{name.replace('_', ' ')} {_years(c['years_to_1pct'])} "
                    f"[{_years(c['years_to_median'])}]"
                    for name, c in cells.items()
                )
            )
    need = results["source_lost"]["fixed_delegates_needed"]
    lines.append(
        "  fixed delegates (never replaced, no lease limit) needed for 5 years at "
        f"{TARGET_ANY_LOSS:.0%}: "
        + ", ".join(
            f"{row['departures_per_year']:.0%}/yr: {row['delegates'] or '>32'}"
            for row in need["within_5_years_at_target"]
        )
    )
    lines += [
        "",
        f"HEADLINE (shipped, home, {head:.1%}/yr): loss_any_file_100gb_per_year = "
        f"{_p(results['loss_any_file_100gb_per_year'])}; "
        f"years_to_first_loss_after_source_lost = "
        f"{_years(results['years_to_first_loss_after_source_lost'])}",
        f"Runtime {results['runtime_s']:.1f} s.",
    ]
    return "\n".join(lines)
