"""Readable tables of the audit and lease model (issue 10), from ``run_audits``'s results."""

from __future__ import annotations

from typing import Any

from .user_durability import DAY


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 0.995:
        return "~1"
    if value < 1e-12:
        return "<1e-12"
    return f"{value:.2g}"


def _h(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 48:
        return f"{value / 24:.1f} d"
    return f"{value:.1f} h"


def _bytes(value: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def format_audit_report(results: dict[str, Any]) -> str:
    """Detection and loss against the audit rate, the lease sweep and the defaults."""
    head = results["headline_departures_per_year"]
    shipped = results["shipped_audits"]
    scenarios = [(s["silent_per_holder_year"], s["fraction"]) for s in results["scenarios"]]
    lines = [
        f"STORAGE AUDITS AND LEASES (issue 10): {results['policy']}, home machines, "
        f"{results['holders']} holders per source, {results['packets_of_100gb']} packets "
        f"in 100 GB; shipped audits {shipped['audit_batch']} every "
        f"{shipped['audit_interval_s']:g} s, threshold {shipped['audit_threshold']:g}",
        "no silent loss: P(any)/yr "
        f"{_p(results['baseline_no_silent_loss_any_file_100gb_per_year'])}"
        f" at {head:.1%}/yr departures ({results['repair_episodes']} repair episodes, "
        f"W mean {_h(results['repair_time_mean_h'])})",
        "",
        "DETECTION (median over (source, holder) pairs; '-' = beyond the run) and "
        f"P(lose any file of 100 GB)/yr at {head:.1%}/yr departures",
        f"{'audits':>8} {'MB/node/d':>9} {'caught':>8} {'distrust':>9} {'beyond':>6}  "
        + " ".join(f"{f'{s:g}/yr f={f:g}':>14}" for s, f in scenarios),
    ]
    for row in results["rows"]:
        whole = row["detection"]["fraction_1"]
        cells = []
        for sigma, fraction in scenarios:
            match = [
                x["loss_any_file_100gb_per_year"]
                for x in row["loss"]
                if x["departures_per_year"] == head
                and (x["silent_per_holder_year"], x["fraction"]) == (sigma, fraction)
            ]
            cells.append(f"{_p(match[0]) if match else '':>14}")
        lines.append(
            f"{row['label'] + ('*' if row['shipped'] else ''):>8} "
            f"{row['traffic']['bytes_per_node_per_day'] / 1e6:>9.3g} "
            f"{_h(whole['caught']['median_h']):>8} {_h(whole['distrusted']['median_h']):>9} "
            f"{whole['distrusted']['not_within_run']:>6.1%}  " + " ".join(cells)
        )
    partial = [k for k in results["rows"][-1]["detection"] if k != "fraction_1"]
    for key in partial:
        lines.append(f"partial loss ({key.removeprefix('fraction_')} of a holder's packets):")
        for row in results["rows"]:
            d = row["detection"][key]
            lines.append(
                f"  {row['label']:>8}: caught {_h(d['caught']['median_h'])}, distrusted "
                f"{_h(d['distrusted']['median_h'])} ({d['distrusted']['not_within_run']:.0%} "
                "beyond the run)"
            )
    lines.append(
        "('*' shipped; 'beyond': share of pairs not distrusted within the run, counted as "
        "undetected until the holder leaves)"
    )
    lines += ["", "LEASES: P(the whole backup reclaimed)/yr (owner, delegates renewing)"]
    for row in results["leases"]:
        if row["renew_days"] in (1.0, 7.0):
            lines.append(
                f"  lease {row['lease_days']:>4g} d, renew {row['renew_days']:g} d, "
                f"{row['absence_model']:>4} absences, {row['delegates']} delegates: "
                f"{_p(row['loss_per_year'])}"
            )
    traffic = results["lease_traffic"]
    only = results["leases_renewed_by_the_source_only"]
    lines += [
        f"  renewal traffic per source: {_bytes(traffic['bytes_per_source_per_day'])}/day "
        f"({traffic['bytes_per_packet']:g} B a packet); a home source renews at most "
        f"{traffic['packets_renewable_per_window_home']:.3g} packets per lease window "
        f"(a backup of {_bytes(traffic['largest_backup_bytes_home'])})",
        f"  renewed by the source only: {only['share_of_holders_never_up_with_the_source']:.1%}"
        " of holders are never up with it (their leases lapse): P(any)/yr "
        f"{_p(only['loss_any_file_100gb_per_year'])}",
    ]
    rec = results["recommendation"]
    lines += ["", f"RECOMMENDED (criteria: {rec['criteria']}):"]
    if "audit_interval_s" in rec:
        det = rec["detection_whole_loss"]
        lines.append(
            f"  audit_interval_s {rec['audit_interval_s']:g}, audit_batch {rec['audit_batch']}"
            f" ({rec['audits_per_holder_per_day_while_up']:.3g} audits per holder per day "
            f"while up): {_bytes(rec['audit_bytes_per_node_per_day'])} per node per day; "
            f"a holder that lost everything distrusted after {_h(det['median_h'])} "
            f"(median), P(any)/yr {_p(rec['loss_any_file_100gb_per_year_silent'])} at "
            f"{scenarios[0][0]:g} silent losses per holder-year"
        )
    else:
        lines.append("  audits: no rate of the sweep meets the criteria")
    if "lease_s" in rec:
        lines.append(
            f"  lease_s {rec['lease_s'] / DAY:g} d, renewed every "
            f"{rec['lease_renew_interval_s'] / DAY:g} d: lapse/yr "
            + ", ".join(f"{k} {_p(v)}" for k, v in rec["lease_lapse_per_year"].items())
        )
    else:
        lines.append("  leases: no lease of the sweep meets the criteria")
    if "loss_any_file_100gb_per_year_total" in rec:
        lines.append(
            f"  together: P(any)/yr {_p(rec['loss_any_file_100gb_per_year_total'])} "
            "(silent loss and a lease lapse, added)"
        )
    lines.append(f"Runtime {results['runtime_s']:.1f} s.")
    return "\n".join(lines)
