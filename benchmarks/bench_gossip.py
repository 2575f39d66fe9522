"""Membership gossip at 1,000 and 10,000 members, against analytic baselines.

Wraps ``simulations.gossip_sim`` (the real ``Membership`` state machine on a simulated
network: 2% message loss, latency from the members' coordinates with the location
check on, 20 Mbit/s uplinks, memberlist's default intervals) and sets each result
beside a baseline computed or measured in the same run.

Top-level keys that scripts read (``python -m benchmarks --only gossip --out FILE``
puts them under ``benchmarks.gossip.result``):

- ``idle_bytes_per_s_per_member``: gossip bytes each member sends per second in an
  idle grid of ``idle_members`` members (10,000; 1,000 with ``--quick``).  Aim: at
  most 1,000 (issue 15; 24.7 KB/s with full-state anti-entropy);
- ``false_deaths``: live members declared dead, summed over the 10,000-member run and
  every soak (2% loss, record updates, 10%/hour churn); ``false_deaths_member_hours``
  says how much simulated exposure that covers.  Aim: 0.

Figures:

- join spread, in gossip rounds until every member knows a newcomer, against the
  classic push-epidemic estimate ``log_{1+f}(N) + ln(N) / f`` rounds (f = fan-out);
- suspicion spread (first suspect until every member holds the victim suspect or
  dead), the cleanest pure-dissemination figure, against the same estimate;
- crash until the first "dead", against SWIM + Lifeguard's expectation: one probe
  interval to notice, then the minimum suspicion timeout
  ``suspicion_mult * log10(N) * probe_interval`` (reached once enough independent
  confirmations arrive);
- "dead" known by 99.99 % of members after the first declaration, against issue 15's
  aim of 2 s;
- steady-state bytes per member per second against probes and acks alone (the
  ratio is what anti-entropy costs on top of SWIM's failure detector);
- simulation wall time against a bare event loop (heap push and pop of the same
  number of events with no member code): what the state machine costs per event.

- idle bytes per member per second against the full-state anti-entropy it replaced:
  a full view (every record once) per ``sync_interval_s`` scaled like memberlist's
  push/pull, both ways, which is what the code before issue 15 sent;
- false suspicions of live members per member-hour in the soaks (no baseline: SWIM
  expects some at 2% loss; what must not happen is a death).

Event-level simulation of 24 hours at 10,000 members would take about a day of wall
time; the soaks run 100 members (30 with ``--quick``) for an hour per seed, and the
figures report the member-hours they cover.

Run ``python -m benchmarks.bench_gossip [--quick] [--json]`` (quick: 1-3 minutes; full:
20-40 minutes on 2 cores, most of it the 10,000-member run under tracemalloc, which
about triples its time).
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
from simulations.gossip_sim import SimConfig, simulate, soak

AIM_DEATH_SPREAD_S = 2.0
AIM_IDLE_BYTES_PER_S = 1000.0
LOSS = 0.02
#: Soaks: members, hours, seeds (full and quick).
SOAK_FULL = (100, 1.0, (1, 2, 3))
SOAK_QUICK = (30, 0.25, (1, 2))


def epidemic_rounds(members: int, fanout: int) -> float:
    """Expected push-gossip rounds to reach everyone (Pittel's estimate)."""
    return math.log(members, 1 + fanout) + math.log(members) / fanout


def expected_first_dead_s(members: int, probe_interval_s: float, suspicion_mult: int) -> float:
    return probe_interval_s + suspicion_mult * max(1.0, math.log10(members)) * probe_interval_s


def full_state_bytes_per_s(members: int, record_bytes: float, sync_interval_s: float) -> float:
    """What each member sent per second with full-state anti-entropy (before issue 15):
    one full view per scaled interval, and on average one answer of the same size."""
    scaled = sync_interval_s
    if members > 32:
        scaled *= math.ceil(math.log2(members) - math.log2(32)) + 1
    return 2 * members * record_bytes / scaled


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
                "issue 15 aim",
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
            f"{n}: idle bytes per member per second",
            steady["bytes_per_member_per_s"],
            "B/s",
            "full-state anti-entropy (before issue 15)",
            full_state_bytes_per_s(n, result["record_bytes"], cfg["sync_interval_s"]),
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


def _soaks(quick: bool) -> list[dict[str, Any]]:
    members, hours, seeds = SOAK_QUICK if quick else SOAK_FULL
    return [
        soak(
            SimConfig(
                members=members,
                seed=seed,
                loss=LOSS,
                update_interval_s=3600.0,
                churn_per_hour=0.1,
                measure_memory=False,
            ),
            hours,
        )
        for seed in seeds
    ]


def run(quick: bool = False) -> dict[str, Any]:
    """Simulate 1,000 (quick) or 1,000 and 10,000 members, then the soaks; figures with
    baselines."""
    sizes = (1000,) if quick else (1000, 10_000)
    runs = [simulate(SimConfig(members=n, loss=LOSS)) for n in sizes]
    for result in runs:
        result["record_bytes"] = _record_bytes()
    soaks = _soaks(quick)
    figures = [figure for result in runs for figure in _figures(result)]
    member_hours = sum(s["member_hours"] for s in soaks)
    episodes = sum(s["false_suspicion_episodes"] for s in soaks)
    if member_hours:
        figures.append(
            Figure(
                f"soaks ({member_hours:.0f} member-hours): false suspicions per member-hour",
                episodes / member_hours,
                "1/h",
                "none",
                0.0,
            ).to_dict()
        )
    largest = runs[-1]
    false_deaths = largest["false_deaths"] + sum(s["false_deaths"] for s in soaks)
    spread = [r["death"]["first_dead_to_p9999_s"] for r in runs]
    idle = largest["idle_bytes_per_s_per_member"]
    return {
        "benchmark": "gossip",
        "quick": quick,
        "idle_members": largest["members"],
        "idle_bytes_per_s_per_member": idle,
        "false_deaths": false_deaths,
        "false_deaths_member_hours": round(
            member_hours + largest["members"] * largest["simulated_s"] / 3600, 1
        ),
        "false_suspicion_episodes": largest["false_suspicion_episodes"] + episodes,
        "runs": runs,
        "soaks": soaks,
        "target": {
            "death_known_by_9999_within_s": AIM_DEATH_SPREAD_S,
            "idle_bytes_per_s_per_member_at_most": AIM_IDLE_BYTES_PER_S,
            "false_deaths": 0,
            "met": all(s is not None and s <= AIM_DEATH_SPREAD_S for s in spread)
            and idle <= AIM_IDLE_BYTES_PER_S
            and false_deaths == 0,
        },
        "figures": figures,
    }


def _record_bytes() -> float:
    """Encoded size of one simulated member's record in a full-state page."""
    import random

    import nacl.signing

    from protocol import GossipSyncReply, MemberUpdate, encoded_size
    from simulations.gossip_sim import _record_for

    rng = random.Random(0)
    record = _record_for(nacl.signing.SigningKey(rng.randbytes(32)), 7, rng)
    one = GossipSyncReply(sync_id=1, updates=(MemberUpdate(record=record, state="alive"),))
    return float(encoded_size(one) - encoded_size(GossipSyncReply(sync_id=1)))


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "bench_gossip: SWIM + Lifeguard state machine on a simulated network "
        "(2% loss, latency from coordinates, location check on, 20 Mbit/s uplinks)",
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
        memory = result["memory"]
        peak = f"{memory['peak_mb']} MB traced" if memory.get("measured") else "not measured"
        lines.append(
            f"{result['members']} members: {steady['messages_per_member_per_s']} messages "
            f"and {steady['bytes_per_member_per_s']} bytes per member per second idle; "
            f"false suspicions {result['false_suspicion_episodes']}, false deaths "
            f"{result['false_deaths']}; wall {result['wall_s']} s, memory {peak}"
        )
    for s in results["soaks"]:
        lines.append(
            f"soak seed {s['seed']}: {s['members']} members x {s['hours']} h, "
            f"{s['departures']} departures, {s['record_updates']} updates: "
            f"{s['false_suspicion_episodes']} false suspicions, {s['false_deaths']} false "
            f"deaths, {s['bytes_per_member_per_s']} B/s per member"
        )
    target = results["target"]
    lines.append(
        f"targets: idle <= {target['idle_bytes_per_s_per_member_at_most']} B/s per member "
        f"at {results['idle_members']} members ({results['idle_bytes_per_s_per_member']}), "
        f"dead known by 99.99% within {target['death_known_by_9999_within_s']} s, "
        f"no false deaths ({results['false_deaths']} in "
        f"{results['false_deaths_member_hours']} member-hours): "
        f"{'met' if target['met'] else 'NOT met'}"
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
