"""PNG figures of the audit and lease model (issue 10), from ``run_audits``'s results.

Like ``durability_plots``, matplotlib is imported inside the writer, only when a run
draws; every figure plots numbers that are in ``durability.json`` too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from .durability_plots import clip as _clip

#: Audits off has no rate: it is drawn at this many audits per second, left of the rest.
OFF_X: Final = 1e-4


def _x(row: dict[str, Any]) -> float:
    rate = float(row["audits_per_second"])
    return rate if rate > 0 else OFF_X


def write_audit_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Detection time and loss against the audit rate, and the lease sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows = [r for r in results["rows"] if r["audits_per_second"] > 0]
    all_rows = results["rows"]
    head = results["headline_departures_per_year"]

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        written.append(out / name)
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    # Detection time against the audit rate.
    fig, ax = plt.subplots(figsize=(8, 5))
    keys = sorted(rows[0]["detection"], reverse=True) if rows else []
    for key, color in zip(keys, ("tab:red", "tab:blue", "tab:green"), strict=False):
        fraction = key.removeprefix("fraction_")
        for what, marker, style in (("distrusted", "o", "-"), ("caught", "^", ":")):
            xs = [_x(r) for r in rows]
            med = [r["detection"][key][what]["median_h"] for r in rows]
            pts = [(x, m) for x, m in zip(xs, med, strict=True) if m is not None]
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker=marker,
                    linestyle=style,
                    color=color,
                    label=f"{what}, {fraction} of packets lost (median)",
                )
    ax.axhline(results["repair_after_s_h"], color="grey", linestyle="--", label="repair_after_s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("audits per second of one source (batch / interval)")
    ax.set_ylabel("hours from the silent loss")
    ax.set_title(
        f"Detection on home machines, {results['holders']} holders per source "
        "(caught: first failed audit; distrusted: repair starts)",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    save(fig, "audit_detection.png")

    # Loss against the audit rate, with audit traffic on the other axis.
    fig, ax = plt.subplots(figsize=(8, 5))
    scenarios = [(s["silent_per_holder_year"], s["fraction"]) for s in results["scenarios"]]
    for sigma, fraction in scenarios:
        pts = [
            (_x(r), x["loss_any_file_100gb_per_year"])
            for r in all_rows
            for x in r["loss"]
            if x["departures_per_year"] == head
            and (x["silent_per_holder_year"], x["fraction"]) == (sigma, fraction)
        ]
        if pts:
            ax.plot(
                [p[0] for p in pts],
                [_clip(p[1]) for p in pts],
                marker="o",
                label=f"{sigma:g} silent/holder-yr, {fraction:g} lost",
            )
    ax.axhline(results["target_loss_any_file_per_year"], color="grey", linestyle="--")
    ax.axhline(
        _clip(results["baseline_no_silent_loss_any_file_100gb_per_year"]),
        color="black",
        linestyle=":",
        label="no silent loss",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"audits per second of one source (audits off drawn at {OFF_X:g})")
    ax.set_ylabel("P(lose any file of 100 GB) per year")
    ax2 = ax.twinx()
    ax2.plot(
        [_x(r) for r in rows],
        [r["traffic"]["bytes_per_node_per_day"] / 1e6 for r in rows],
        color="tab:gray",
        marker="x",
        linestyle="-.",
        label="audit MB/node/day",
    )
    ax2.set_yscale("log")
    ax2.set_ylabel("audit traffic, MB per node per day (home)")
    ax.set_title(f"Loss against audit rate, departures {head:.1%}/year", fontsize=9)
    handles = ax.get_legend_handles_labels()
    extra = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=7, loc="lower left")
    save(fig, "audit_loss.png")

    # Leases: the yearly chance of a lapse against the lease.
    fig, ax = plt.subplots(figsize=(8, 5))
    groups: dict[tuple[str, int, float], list[tuple[float, float]]] = {}
    for row in results["leases"]:
        key = (row["absence_model"], row["delegates"], row["renew_days"])
        groups.setdefault(key, []).append((row["lease_days"], row["loss_per_year"]))
    for (model, delegates, renew), pts in sorted(groups.items()):
        ax.plot(
            [p[0] for p in pts],
            [_clip(p[1]) for p in pts],
            marker="o" if delegates else "s",
            linestyle="-" if model == "long" else ":",
            label=f"{model} absences, {delegates} delegates, renew every {renew:g} d",
        )
    ax.axhline(results["target_loss_any_file_per_year"] / 10, color="grey", linestyle="--")
    ax.set_yscale("log")
    ax.set_xlabel("lease (days)")
    ax.set_ylabel("P(the whole backup reclaimed) per year")
    ax.set_title("Lease lapse: owner (and delegates) renew nothing for the lease", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, "lease_lapse.png")
    return written
