"""``gridnode demo``: a grid of nodes in European cities, a backup, two losses, a restore.

What it shows, in order, with real node processes on 127.0.0.1:

1. a grid authority (in Luxembourg) creates the grid; eight nodes, one per city, join
   it with one-time invites, get their subscription certificates, and find each other
   by gossip (only subscribed nodes are admitted);
2. a generated sample tree is backed up from Paris with a backup-proximity rule (every
   packet at least 300 km from the source), 4-of-6 erasure coding;
3. a table shows where the packets went and how far away that is (Brussels, 264 km from
   Paris, gets none: the rule at work);
4. two nodes that hold packets are killed;
5. the tree is restored from the survivors and compared byte for byte;
6. each node's statement for the billing period so far: what it owes for what it
   stores, what it earns for what it holds for others (the authority's fee module).

It exits 0 only when the restored tree matches.  All nodes run on one machine, so their
round trips are microseconds and every distance claim would fail the speed-of-light
check: the demo turns that check off and says so.

It lives in the product (``gridnode demo`` runs it) on top of
:mod:`gridnode.testing.localgrid`; ``simulations.demo`` re-exports it.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .testing.localgrid import SAMPLE_WORDS, LocalGrid, NodeSpec

__all__ = ["CITIES", "main", "make_sample_tree", "run_demo"]

CITIES = [
    "Paris",
    "Brussels",
    "Amsterdam",
    "Berlin",
    "Madrid",
    "Rome",
    "Vienna",
    "Warsaw",
    "Prague",
    "Lisbon",
]


def make_sample_tree(root: Path, seed: int = 7) -> Path:
    """About 12 MB: text (compressible), photos (incompressible), many small files."""
    rng = random.Random(seed)
    tree = root / "sample"
    for folder in ("documents/reports", "documents/letters", "photos/2026", "code/src"):
        (tree / folder).mkdir(parents=True, exist_ok=True)
    for i in range(40):
        text = " ".join(rng.choice(SAMPLE_WORDS) for _ in range(rng.randint(200, 6000)))
        (tree / "documents" / ("reports" if i % 2 else "letters") / f"doc-{i:02d}.txt").write_text(
            text
        )
    for i in range(6):
        (tree / "photos" / "2026" / f"IMG_{1000 + i}.jpg").write_bytes(
            rng.randbytes(rng.randint(800_000, 1_800_000))
        )
    for i in range(120):
        (tree / "code" / "src" / f"module_{i:03d}.py").write_text(
            f"def f{i}(x):\n    return x * {i}\n" * rng.randint(1, 40)
        )
    (tree / "README").write_text("A sample tree for the gridnode demo.\n")
    os.symlink("documents/reports", tree / "latest-reports")
    return tree


def _same(a: Path, b: Path) -> tuple[bool, int, int]:
    files = size = 0
    for path in sorted(a.rglob("*")):
        other = b / path.relative_to(a)
        if path.is_symlink():
            if not other.is_symlink() or os.readlink(path) != os.readlink(other):
                return False, files, size
        elif path.is_file():
            if not other.is_file() or path.read_bytes() != other.read_bytes():
                return False, files, size
            files += 1
            size += path.stat().st_size
    extra = {p.relative_to(b) for p in b.rglob("*")} - {p.relative_to(a) for p in a.rglob("*")}
    return not extra, files, size


def _wait_subscribed(grid: LocalGrid, names: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for name in names:  # bounded by the deadline
        while not grid.status(name).get("subscription"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not get its certificate within {timeout} s")
            time.sleep(0.3)


def say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(args: argparse.Namespace) -> bool:
    count = max(7, min(getattr(args, "nodes", 8) or 8, len(CITIES)))
    base = (
        Path(args.dir)
        if getattr(args, "dir", None)
        else Path(tempfile.mkdtemp(prefix="gridnode-demo-"))
    )
    keep = bool(getattr(args, "keep", False)) or bool(getattr(args, "dir", None))
    started = time.monotonic()
    try:
        return _run(base, count, started)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def _run(base: Path, count: int, started: float) -> bool:
    cities = CITIES[:count]
    say(f"== gridnode demo: {count} nodes on this machine, one per city ==")
    say("   (all on 127.0.0.1: the speed-of-light location check is off, since every")
    say("    peer answers in microseconds here; see `gridsim --netns` for real delays)")
    with LocalGrid(base / "grid", name="demo", log_level="warning", authority=True) as grid:
        fast = ("usage_report_interval_s=2",)
        grid.add_authority(
            NodeSpec(name="authority", location="Luxembourg", allocate="1GB", extra=fast)
        )
        seed = grid.nodes["authority"].address
        for city in cities:
            grid.add(
                NodeSpec(name=city.lower(), location=city, allocate="1GB", extra=fast),
                seeds=[seed],
                invite=grid.invite("authority"),
            )
        grid.start_all()
        _wait_subscribed(grid, [c.lower() for c in cities])
        seconds = grid.wait_converged(timeout=90)
        say(
            f"1. a grid authority and {count} subscribed nodes started and found each other "
            f"in {seconds:.1f} s:"
        )
        status = grid.status("paris")
        for m in sorted(status["members"], key=lambda m: m["distance_km"] or 0):
            say(f"     {m['city']:<16} {m['short_id']}  {m['distance_km']:>7.0f} km from Paris")

        tree = make_sample_tree(base)
        say("")
        say("2. backing up a sample tree from Paris: 4-of-6 erasure coding, every packet")
        say("   at least 300 km from the source (--backup-proximity 300km:)")
        result = grid.cli(
            "paris", "backup", str(tree), "--backup-proximity", "300km:", "--redundancy", "4/6"
        )
        say(
            f"   snapshot {result['snapshot_id']}: {result['files']} files, "
            f"{result['bytes'] / 1e6:.1f} MB read, {result['bytes_uploaded'] / 1e6:.1f} MB "
            f"uploaded as {result['packets_uploaded']} packets in {result['seconds']:.1f} s"
        )

        placement = grid.cli("paris", "placement", result["snapshot_id"])
        per_target: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for chunk in placement["chunks"]:
            for packet in chunk["packets"]:
                per_target[packet["target_short"]].append(packet)
        say("")
        say("3. where the packets went (only Paris can compute or read this sequence):")
        say(f"     {'node':<12}{'city':<16}{'km from Paris':>14}{'packets':>9}")
        for m in sorted(status["members"], key=lambda m: m["distance_km"] or 0):
            held = len(per_target.get(m["short_id"], []))
            note = "  <- inside 300 km: none" if (m["distance_km"] or 0) < 300 else ""
            say(f"     {m['short_id']:<12}{m['city']:<16}{m['distance_km']:>14.0f}{held:>9}{note}")
        mins = [c["pairwise_min_km"] for c in placement["chunks"] if c["pairwise_min_km"]]
        closest = min(p["distance_km"] for c in placement["chunks"] for p in c["packets"])
        say(
            f"   every packet is {closest:.0f} km or more from Paris; "
            f"{len(placement['chunks'])} chunks; closest two holders of one chunk "
            f"{min(mins):.0f} km apart"
        )

        victims = [
            n
            for n in sorted(
                grid.nodes, key=lambda n: -len(per_target.get(grid.status(n)["short_id"], []))
            )
            if n not in ("paris", "authority")
        ][:2]
        say("")
        say(f"4. killing two nodes that hold packets: {', '.join(v.title() for v in victims)}")
        for victim in victims:
            grid.kill(victim)

        out = base / "restored"
        say("")
        say("5. restoring from the survivors (any 4 of each chunk's 6 packets suffice)")
        restored = grid.cli("paris", "restore", result["snapshot_id"], "--to", str(out))
        same, files, size = _same(tree, out / "sample")
        say(
            f"   restored {restored['files']} files, {restored['bytes'] / 1e6:.1f} MB "
            f"in {restored['seconds']:.1f} s"
        )
        verdict = "byte-equal to the original" if same else "DIFFERENT from the original"
        say(f"   compared {files} files, {size / 1e6:.1f} MB: {verdict}")
        log = grid.cli("paris", "log")
        say(
            f"   Paris's signed backup log: {len(log['entries'])} entries, "
            f"chain {'verified' if log['verified'] else 'BROKEN'}"
        )
        say("")
        say("6. statements for the billing period so far (from the authority's fee module):")
        for name in ["authority", *(c.lower() for c in cities)]:
            if name in victims:
                continue
            account = grid.cli(name, "account")
            statement = account.get("statement") or {}
            if not statement:
                continue
            usage = account.get("usage") or {}
            say(
                f"     {name.title():<12} stores {usage.get('source_bytes', 0) / 1e6:5.1f} MB, "
                f"holds {usage.get('target_bytes', 0) / 1e6:5.1f} MB: charges "
                f"{statement['charges_total_text']:>6}, credits "
                f"{statement['credits_total_text']:>6}, balance {statement['balance_text']:>6} "
                f"{statement['currency']}"
            )
        say("   (a few seconds of use cost less than the minimum charge of a period)")
        say("")
        say(f"== demo {'passed' if same else 'FAILED'} in {time.monotonic() - started:.0f} s ==")
        return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir")
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--keep", action="store_true")
    sys.exit(0 if run_demo(parser.parse_args()) else 1)


if __name__ == "__main__":
    main()
