"""Membership gossip at 1,000 and 10,000 members, against analytic baselines.

Wraps ``simulations.gossip_sim`` (the real ``Membership`` state machine on a simulated
network: 2-5 ms links, memberlist's default intervals) and sets each result beside a
baseline computed or measured in the same run:

- join spread, in gossip rounds until every member knows a newcomer, against the
  classic push-epidemic estimate ``log_{1+f}(N) + ln(N) / f`` rounds (f = fan-out);
- suspicion spread (first suspect until every member holds the victim suspect or
  dead), the cleanest pure-dissemination figure, against the same estimate;
- crash until the first "dead", against SWIM + Lifeguard's expectation: one probe
  interval to notice, then the minimum suspicion timeout
  ``suspicion_mult * log10(N) * probe_interval`` (reached once enough independent
  confirmations arrive);
- "dead" known by 99.99 % of members after the first declaration, against issue 4's
  aim of 5 s;
- steady-state bytes per member per second against probes and acks alone (the
  ratio is what anti-entropy costs on top of SWIM's failure detector);
- simulation wall time against a bare event loop (heap push and pop of the same
  number of events with no member code): what the state machine costs per event.

Run ``python -m benchmarks.bench_gossip [--quick] [--json]`` (quick: 1,000 members
only, about 10 s; full: about 4 minutes).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.common import Figure
from simulations.gossip_sim import SimConfig, simulate

AIM_DEATH_SPREAD_S = 5.0


def epidemic_rounds(members: int, fanout: int) -> float:
    """Expected push-gossip rounds to reach everyone (Pittel's estimate)."""
    return math.log(members, 1 + fanout) + math.log(members) / fanout


def expected_first_dead_s(members: int, probe_interval_s: float, suspicion_mult: int) -> float:
    return probe_interval_s + suspicion_mult * max(1.0, math.log10(members)) * probe_interval_s


def bare_event_loop_s(events: int) -> float:
    """Wall time of the simulation's heap push/pop for ``events`` events, no work."""
    queue: list[tuple[float, int, int]] = []
    started = time.perf_counter()
    for i in range(events):
        heapq.heappush(queue, (i * 1e-3, i, 0))
        heapq.heappop(queue)
    return time.perf_counter() - started


def _figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    n = result["members"]
    cfg = result["gossip_config"]
    fanout = cfg["gossip_fanout"]
    estimate = epidemic_rounds(n, fanout)
    join = result["join"]
    death = result["death"]
    steady = result["steady"]
    by_kind = steady["bytes_per_member_per_s_by_kind"]
    swim_bytes = by_kind.get("gossip_probe", 0.0) + by_kind.get("gossip_probe_ack", 0.0)
    figures = []
    if join["all_rounds"] is not None:
        figures.append(
            Figure(
                f"{n}: join known by all (gossip rounds)",
                join["all_rounds"],
                "rounds",
                "push-epidemic estimate",
                estimate,
            )
        )
    if death["first_suspect_to_all_suspect_rounds"] is not None:
        figures.append(
            Figure(
                f"{n}: suspicion known by all (gossip rounds)",
                death["first_suspect_to_all_suspect_rounds"],
                "rounds",
                "push-epidemic estimate",
                estimate,
            )
        )
    if death["crash_to_first_dead_s"] is not None:
        figures.append(
            Figure(
                f"{n}: crash to first dead",
                death["crash_to_first_dead_s"],
                "s",
                "probe interval + minimum suspicion timeout",
                expected_first_dead_s(n, cfg["probe_interval_s"], cfg["suspicion_mult"]),
            )
        )
    if death["first_dead_to_p9999_s"] is not None:
        figures.append(
            Figure(
                f"{n}: first dead to 99.99% knowing",
                death["first_dead_to_p9999_s"],
                "s",
                "issue 4 aim",
                AIM_DEATH_SPREAD_S,
            )
        )
    figures.append(
        Figure(
            f"{n}: steady bytes per member per second",
            steady["bytes_per_member_per_s"],
            "B/s",
            "probes and acks only",
            swim_bytes,
        )
    )
    figures.append(
        Figure(
            f"{n}: simulation wall time",
            result["wall_s"],
            "s",
            "bare event loop, same events",
            bare_event_loop_s(result["events"]),
        )
    )
    return [figure.to_dict() for figure in figures]


def run(quick: bool = False) -> dict[str, Any]:
    """Simulate 1,000 (quick) or 1,000 and 10,000 members; figures with baselines."""
    sizes = (1000,) if quick else (1000, 10_000)
    runs = [simulate(SimConfig(members=n)) for n in sizes]
    figures = [figure for result in runs for figure in _figures(result)]
    aim = [
        r["death"]["first_dead_to_p9999_s"] is not None
        and r["death"]["first_dead_to_p9999_s"] <= AIM_DEATH_SPREAD_S
        for r in runs
    ]
    return {
        "benchmark": "gossip",
        "quick": quick,
        "runs": runs,
        "target": {"death_known_by_9999_within_s": AIM_DEATH_SPREAD_S, "met": all(aim)},
        "figures": figures,
    }


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "bench_gossip: SWIM + Lifeguard state machine on a simulated network "
        "(2-5 ms links, memberlist LAN defaults, location check off)",
        f"{'figure':<46} {'value':>10} {'unit':<6} {'baseline':>10}  {'ratio':>6}  baseline",
    ]
    for figure in results["figures"]:
        ratio = figure["ratio"]
        lines.append(
            f"{figure['name']:<46} {figure['value']:>10.3f} {figure['unit']:<6} "
            f"{figure['baseline_value']:>10.3f}  "
            f"{'-' if ratio is None else f'{ratio:.2f}':>6}  {figure['baseline']}"
        )
    for result in results["runs"]:
        steady = result["steady"]
        lines.append(
            f"{result['members']} members: {steady['messages_per_member_per_s']} messages "
            f"and {steady['bytes_per_member_per_s']} bytes per member per second; "
            f"wall {result['wall_s']} s, peak RSS {result['max_rss_mb']} MB"
        )
    target = results["target"]
    lines.append(
        f"target: dead known by 99.99% within {target['death_known_by_9999_within_s']} s "
        f"of the first declaration: {'met' if target['met'] else 'NOT met'}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 members only")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = run(quick=args.quick)
    results["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results))
        print(f"\n(total {results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
