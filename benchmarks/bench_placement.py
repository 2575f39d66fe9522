"""Placement time per chunk for 100, 1,000 and 10,000 members (issue 4's aim: < 1 ms at 10,000).

For each member count the same random member view (coordinates spread over
Europe, free space between 1 GiB and 1 TiB) is placed under three rule sets,
n = 6 targets of 256 KiB per chunk, the source in Zurich:

- ``none``: no distance rule (capacity-weighted rendezvous order only);
- ``backup``: backup proximity 300-2000 km;
- ``backup+packet``: the same plus packet proximity 100-1500 km (every two
  targets of a chunk at least 100 km and at most 1,500 km apart).

Each row reports the one-off cost of building the :class:`PlacementView`
(hashing every member under the key, distances from the source) and the mean
time of ``place()`` per chunk, with two in-run baselines over the same array
of 64-bit member hashes: one raw numpy pass (a single XOR of the array with a
constant), and the plainest possible hash selection (one BLAKE3 of the chunk
id, one XOR pass, ``argpartition`` for the top 6; unweighted, no rule). The
ratio is placement over plain selection. At 10,000 members placement can beat
the plain selection: it never partitions the whole array, but scores only the
members that an integer threshold lets through (see ``PlacementView._head``).
Figures are the best of 3 (quick) or 5 rounds.

Issue 11 asks for the time *through the sequencer*, as a backup pays it: the
``sequencer`` rows place the same chunks with ``Sequencer.place`` (its cached view,
rebuilt only when the gossip version changes; the version is read per chunk, as the
node does), and ``actor call`` sends each ``PlaceChunk`` over the sequencer's channel
and waits for the answer, as a backup's chunk worker does (trio, one call at a time).

Run ``python -m benchmarks.bench_placement [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import blake3
import numpy as np
import trio

from gridnode.actors.calls import Call, Request, call
from gridnode.actors.sequencer import PlaceChunk, Sequencer
from gridnode.logic.distance import parse_band
from gridnode.logic.placement import Member, PlacementRules, PlacementView, Source

MEMBER_COUNTS = (100, 1_000, 10_000)
TARGETS = 6
PACKET_BYTES = 256 * 1024
ZURICH = (47.3769, 8.5417)
RULE_SETS: dict[str, PlacementRules] = {
    "none": PlacementRules(),
    "backup": PlacementRules(backup_proximity=parse_band("300km:2000km")),
    "backup+packet": PlacementRules(
        backup_proximity=parse_band("300km:2000km"),
        packet_proximity=parse_band("100km:1500km"),
    ),
}


def make_members(count: int, seed: int) -> list[Member]:
    rng = random.Random(seed)
    return [
        Member(
            node_id=rng.randbytes(32),
            lat=rng.uniform(36.0, 60.0),
            lon=rng.uniform(-10.0, 30.0),
            free_bytes=rng.randint(1 << 30, 1 << 40),
        )
        for _ in range(count)
    ]


def _best_mean_us(fn: Callable[[bytes], object], chunk_ids: Sequence[bytes], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for chunk_id in chunk_ids:
            fn(chunk_id)
        best = min(best, (time.perf_counter_ns() - started) / len(chunk_ids) / 1000.0)
    return best


def _baseline(member_hashes: np.ndarray[Any, np.dtype[np.uint64]]) -> Callable[[bytes], object]:
    key = b"\x01" * 32

    def select(chunk_id: bytes) -> object:
        chunk_hash = np.uint64(
            int.from_bytes(blake3.blake3(chunk_id, key=key).digest(length=8), "little")
        )
        mixed = member_hashes ^ chunk_hash
        top = np.argpartition(mixed, TARGETS - 1)[:TARGETS]
        return top[np.argsort(mixed[top])]

    return select


def _raw_pass(member_hashes: np.ndarray[Any, np.dtype[np.uint64]]) -> Callable[[bytes], object]:
    constant = np.uint64(0x9E3779B97F4A7C15)

    def one_pass(_chunk_id: bytes) -> object:
        return member_hashes ^ constant

    return one_pass


def _fixed_view(members: list[Member]) -> tuple[int, Sequence[Member]]:
    return 1, members


def _sequencer_rows(
    key: bytes, source: Source, chunk_ids: Sequence[bytes], rounds: int
) -> list[dict[str, Any]]:
    """Placement per chunk through the sequencer actor, under the strictest rule set."""
    rules = RULE_SETS["backup+packet"]
    rows: list[dict[str, Any]] = []
    for count in MEMBER_COUNTS:
        members = make_members(count, seed=count)
        send, receive = trio.open_memory_channel[Call[Request[Any]]](16)
        sequencer = Sequencer(
            key=key,
            inbound=receive,
            view=functools.partial(_fixed_view, members),
            source=lambda: source,
            version=lambda: 1,
        )
        sequencer.place(PlaceChunk(chunk_ids[0], TARGETS, PACKET_BYTES, rules))  # build once

        def place(chunk_id: bytes, seq: Sequencer = sequencer) -> object:
            return seq.place(PlaceChunk(chunk_id, TARGETS, PACKET_BYTES, rules))

        direct_us = _best_mean_us(place, chunk_ids, rounds)

        async def through_actor(
            seq: Sequencer = sequencer,
            send: trio.MemorySendChannel[Call[Request[Any]]] = send,
        ) -> float:
            best = float("inf")
            async with trio.open_nursery() as nursery:
                await nursery.start(seq.run)
                for _ in range(rounds):
                    started = time.perf_counter_ns()
                    for chunk_id in chunk_ids:
                        await call(send, PlaceChunk(chunk_id, TARGETS, PACKET_BYTES, rules))
                    best = min(best, (time.perf_counter_ns() - started) / 1e3 / len(chunk_ids))
                nursery.cancel_scope.cancel()
            return best

        actor_us = trio.run(through_actor)
        rows.append(
            {
                "members": count,
                "rules": "backup+packet",
                "sequencer_us_per_chunk": round(direct_us, 1),
                "actor_call_us_per_chunk": round(actor_us, 1),
            }
        )
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    """Measure placement per chunk; returns the figures (see the module docstring)."""
    chunks = 300 if quick else 2_000
    rounds = 3 if quick else 5
    key = os.urandom(32)
    source = Source(node_id=b"\xff" * 32, lat=ZURICH[0], lon=ZURICH[1])
    chunk_ids = [i.to_bytes(8, "little") + b"chunk" for i in range(chunks)]
    rows: list[dict[str, Any]] = []
    for count in MEMBER_COUNTS:
        members = make_members(count, seed=count)
        hashes = np.frombuffer(
            b"".join(blake3.blake3(m.node_id).digest(length=8) for m in members), dtype=np.uint64
        ).copy()
        baseline_us = _best_mean_us(_baseline(hashes), chunk_ids, rounds)
        raw_pass_us = _best_mean_us(_raw_pass(hashes), chunk_ids, rounds)
        for name, rules in RULE_SETS.items():
            started = time.perf_counter_ns()
            view = PlacementView(key=key, source=source, members=members, rules=rules)
            build_ms = (time.perf_counter_ns() - started) / 1e6
            place = functools.partial(view.place, n=TARGETS, packet_bytes=PACKET_BYTES)
            mean_us = _best_mean_us(place, chunk_ids, rounds)
            rows.append(
                {
                    "members": count,
                    "rules": name,
                    "candidates": view.candidate_count,
                    "build_ms": round(build_ms, 2),
                    "place_us_per_chunk": round(mean_us, 1),
                    "raw_pass_us": round(raw_pass_us, 1),
                    "baseline_us_per_chunk": round(baseline_us, 1),
                    "ratio": round(mean_us / baseline_us, 2),
                }
            )
    return {
        "benchmark": "placement",
        "quick": quick,
        "targets_per_chunk": TARGETS,
        "packet_bytes": PACKET_BYTES,
        "chunks": chunks,
        "rounds": rounds,
        "rules": {name: rules.describe() for name, rules in RULE_SETS.items()},
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "rows": rows,
        "through_sequencer": _sequencer_rows(key, source, chunk_ids, rounds),
        "aim_us_per_chunk_at_10000": 1000,
    }


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"bench_placement: n={results['targets_per_chunk']} targets per chunk, "
        f"{results['chunks']} chunks, best of {results['rounds']}, "
        f"{results['cpu_count']} CPUs (load {results['load_average']:.2f}), "
        f"numpy {results['numpy']}",
        *(f"  {name}: {text}" for name, text in results["rules"].items()),
        "",
        f"{'members':>8} {'rules':<14} {'eligible':>8} {'build ms':>9} "
        f"{'place us':>9} {'raw pass us':>12} {'plain sel us':>13} {'ratio':>6}",
    ]
    for row in results["rows"]:
        lines.append(
            f"{row['members']:>8} {row['rules']:<14} {row['candidates']:>8} "
            f"{row['build_ms']:>9.1f} {row['place_us_per_chunk']:>9.1f} "
            f"{row['raw_pass_us']:>12.1f} {row['baseline_us_per_chunk']:>13.1f} "
            f"{row['ratio']:>6.2f}"
        )
    lines.append("")
    lines.append(f"{'members':>8} {'through the sequencer us':>25} {'as an actor call us':>20}")
    for row in results.get("through_sequencer", []):
        lines.append(
            f"{row['members']:>8} {row['sequencer_us_per_chunk']:>25.1f} "
            f"{row['actor_call_us_per_chunk']:>20.1f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer chunks and rounds (< 10 s)")
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
