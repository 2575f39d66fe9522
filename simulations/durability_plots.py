"""PNG figures of both durability models, drawn beside ``durability.json``.

matplotlib is an extra (``gridnode[sim]``): it is imported inside the two writers, only
when a run draws, so the models, their statistics and the JSON need nothing beyond
numpy.  Every figure plots numbers that are in the JSON too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Final

import numpy as np

from .durability_stats import binomial_loss_probability
from .user_durability import HOUR
from .user_durability_suite import row_at


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """The grid model's figures (issue 5), from ``run_suite``'s results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []

    sweep = results["proximity_sweep"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [row["min_distance_km"] for row in sweep["rows"]]
    for i, row in enumerate(sweep["rows"]):
        loss = row["loss"]
        low, high = loss["ci95"]
        if loss["lost_chunks"]:
            ax.errorbar(
                [i],
                [loss["per_year"]],
                yerr=[[loss["per_year"] - low], [high - loss["per_year"]]],
                fmt="o",
                color="tab:red",
                capsize=4,
            )
        else:
            ax.plot([i], [high], marker="v", color="tab:blue", linestyle="none")
    ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    ax.set_yscale("log")
    ax.set_xlabel("packet-proximity minimum distance D (km)")
    ax.set_ylabel("chunk loss probability per year")
    ax.set_title(
        "Loss vs D, disaster-heavy stress scenario\n(dots: 95% CI; triangles: "
        "upper bound, no loss seen)",
        fontsize=9,
    )
    if sweep["safe_distance_km"] is not None:
        ax.text(
            0.02,
            0.02,
            f"one disaster cannot take {sweep['packets_one_disaster_must_take']} "
            f"packets when D > {sweep['safe_distance_km']:.0f} km",
            transform=ax.transAxes,
            fontsize=8,
        )
    fig.tight_layout()
    written.append(out_dir / "loss_vs_min_distance.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    base = results["baseline"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    per_year = base["repair"]["bytes_per_node_by_year"]
    ax.bar(range(1, len(per_year) + 1), [b / 1e9 for b in per_year], color="tab:green")
    ax.set_xlabel("simulated year")
    ax.set_ylabel("repair traffic per node (GB/year, each direction)")
    ax.set_title(
        f"Baseline repair traffic: mean {base['repair']['kbit_s_per_node']:.1f} kbit/s per node",
        fontsize=9,
    )
    fig.tight_layout()
    written.append(out_dir / "repair_traffic.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    curve = results["sanity_curve"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    k, n = curve[0]["k"], curve[0]["n"]
    ps = np.linspace(0.0, max(c["p"] for c in curve), 200)
    ax.plot(ps, [binomial_loss_probability(k, n, float(p)) for p in ps], label="binomial formula")
    ax.errorbar(
        [c["p"] for c in curve],
        [c["observed"] for c in curve],
        yerr=[2 * c["se"] for c in curve],
        fmt="o",
        label="simulated (±2 SE)",
    )
    ax.set_xlabel("node failure probability over the period, p")
    ax.set_ylabel("chunk loss probability")
    ax.set_title(f"Sanity case: {k}-of-{n}, independent failures, no repair", fontsize=9)
    ax.legend()
    fig.tight_layout()
    written.append(out_dir / "sanity_binomial.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    policies = results["repair_policy_sweep"]
    if policies:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for row in policies:
            loss = row["loss"]
            y = loss["per_year"] if loss["lost_chunks"] else loss["ci95"][1]
            x = row["repair"]["kbit_s_per_node"]
            ax.plot(
                [x],
                [y],
                marker="o" if loss["lost_chunks"] else "v",
                linestyle="none",
                color=f"C{row['repair_threshold'] - policies[0]['repair_threshold']}",
            )
            ax.annotate(
                f"r={row['repair_threshold']}, {row['repair_delay_days']:g} d",
                (x, y),
                textcoords="offset points",
                xytext=(5, 3),
                fontsize=8,
            )
        ax.set_yscale("log")
        ax.set_xlabel("repair traffic per node (kbit/s, each direction)")
        ax.set_ylabel("chunk loss probability per year")
        ax.set_title(
            "Repair policy: threshold r and delay vs loss and traffic\n"
            "(triangles: upper bound, no loss seen)",
            fontsize=9,
        )
        fig.tight_layout()
        written.append(out_dir / "repair_policy.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


FLOOR: Final = 1e-30  # log plots show smaller probabilities at this floor


def clip(value: float | None) -> float:
    """A probability for a log axis: unknown as 1, below ``FLOOR`` at the floor."""
    if value is None or not math.isfinite(value):
        return 1.0
    return max(FLOOR, value)


def write_user_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """The user-level model's figures (issue 15), from ``run_user``'s results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    head = results["headline_departures_per_year"]

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        written.append(out / name)
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {
        ("shipped", "home"): ("o", "tab:red"),
        ("shipped", "datacenter"): ("s", "tab:orange"),
        ("candidate", "home"): ("o", "tab:blue"),
        ("candidate", "datacenter"): ("s", "tab:green"),
    }
    seen: set[tuple[str, str]] = set()
    for row in results["sweep"]:
        key = (row["policy_kind"], row["availability"])
        marker, colour = styles[key]
        y = clip(row_at(row, head)["loss_any_file_100gb_per_year"])
        ax.plot(
            [row["overhead"]],
            [y],
            marker=marker,
            color=colour,
            linestyle="none",
            label=None if key in seen else f"{key[0]} policy, {key[1]}",
        )
        seen.add(key)
        ax.annotate(
            f"{row['policy']['k']}/{row['policy']['n']}",
            (row["overhead"], y),
            textcoords="offset points",
            xytext=(4, 2),
            fontsize=7,
        )
    ax.axhline(results["target_loss_any_file_per_year"], color="grey", linestyle="--")
    ax.set_yscale("log")
    ax.set_xlabel("storage overhead n/k")
    ax.set_ylabel("P(lose any file of 100 GB) per year (upper bound)")
    ax.set_title(
        f"k-of-n sweep, departures {head:.0%}/year; shipped policy vs candidate (floor {FLOOR:g})",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    save(fig, "user_kn_sweep.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, colour in (
        ("shipped_home", "tab:red"),
        ("recommended_home", "tab:blue"),
        ("recommended_datacenter", "tab:green"),
    ):
        ev = results[name]
        xs = [row["departures_per_year"] for row in ev["by_departure_rate"]]
        ax.plot(
            xs,
            [clip(row["loss_any_file_100gb_per_year"]) for row in ev["by_departure_rate"]],
            marker="o",
            color=colour,
            label=f"{name.replace('_', ', ')}: {ev['label']}",
        )
        ax.plot(
            xs,
            [clip(row["markov_loss_any_file_100gb_per_year"]) for row in ev["by_departure_rate"]],
            linestyle="--",
            color=colour,
            label="  Markov baseline (independent availability)",
        )
    ax.axhline(results["target_loss_any_file_per_year"], color="grey", linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("members leaving per year")
    ax.set_ylabel("P(lose any file of 100 GB) per year")
    ax.set_title("Model (solid) and analytic Markov baseline (dashed)", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, "user_loss_vs_departures.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    head_key = f"departures_{head:.3f}"
    for ax, which in zip(axes, ("shipped", "recommended"), strict=True):
        block = results["source_lost"][which]
        for variant, colour in (
            ("without_delegates", "tab:red"),
            ("delegates_shipped_lease", "tab:orange"),
            ("delegates_no_lease_limit", "tab:purple"),
            ("delegates_renewed", "tab:blue"),
        ):
            curve = block[head_key][variant]["curve"]
            ax.plot(
                [max(1e-4, y) for y in curve["years"]],
                [clip(p) for p in curve["p_any"]],
                color=colour,
                label=variant.replace("_", " "),
            )
        ax.axhline(0.01, color="grey", linestyle=":")
        ax.axvline(5.0, color="grey", linestyle=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("years after the source is destroyed")
        ax.set_title(f"{which}: {block['policy']}", fontsize=8)
    axes[0].set_ylabel("P(any file of 100 GB lost by then)")
    axes[0].legend(fontsize=7)
    save(fig, "user_source_lost.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [ev["policy"]["repair_after_s"] / HOUR for ev in results["delay_sweep"]]
    traffic_kbit = [row_at(ev, head)["traffic"]["repairer_kbit_s"] for ev in results["delay_sweep"]]
    loss = [clip(row_at(ev, head)["loss_any_file_100gb_per_year"]) for ev in results["delay_sweep"]]
    ax.plot(xs, traffic_kbit, marker="o", color="tab:green", label="repair traffic (kbit/s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("repair delay (hours)")
    ax.set_ylabel("repairer traffic for a 100 GB backup (kbit/s)")
    ax2 = ax.twinx()
    ax2.plot(xs, loss, marker="s", color="tab:red", label="P(any loss)/year")
    ax2.set_yscale("log")
    ax2.set_ylabel("P(lose any file of 100 GB) per year")
    ax.set_title(
        f"Delay sweep, home machines, {results['recommendation']['redundancy']}", fontsize=9
    )
    fig.legend(fontsize=8, loc="upper center")
    save(fig, "user_delay_sweep.png")

    v = results["validation"]
    fig, ax = plt.subplots(figsize=(6, 4))
    se = math.sqrt(max(1, v["losses_counted"])) / v["chunk_years"]
    ax.errorbar(
        [0], [v["counted_rate"]], yerr=[2 * se], fmt="o", capsize=5, label="counted (±2 SE)"
    )
    ax.plot([1], [v["markov_rate"]], "s", label="Markov chain")
    ax.plot([2], [v["conditional_rate"]], "^", label="conditional estimate")
    ax.set_xticks([0, 1, 2], ["Monte Carlo", "Markov", "conditional"])
    ax.set_ylabel("chunk losses per chunk-year")
    ax.set_title(
        f"Validation: {v['policy']}, {v['departures_per_year']:g} departures/yr", fontsize=9
    )
    save(fig, "user_validation.png")
    return written
