"""Delegating a large backup: the repair capability's map, in parts, at 100 GB.

A 100 GB backup at the shipped 10-of-30 and the average chunk (~1.2 MB) is some 85,000
chunks and 2.5 million packets.  This measures, in a fresh process each (so the peak
memory is the work's own):

- the owner cutting the map into parts (streaming, spilled to disk past 32 MiB):
  seconds, peak RSS, parts, bytes per packet;
- a delegate taking it up (each part opened, checked against the signed digest,
  decoded and counted per holder) and one full scan of it (what a repair tick does
  when holders go): seconds and peak RSS;
- the baseline in the same run: the same map as one msgpack list in memory (the
  single-blob capability this replaced, capped at 8 MiB), its size and encode time.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

CHUNK_PACKETS = 30
HOLDERS = 600


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _chunks(count: int, seed: int) -> Any:
    from gridnode.delegation.records import HeldChunk, HeldPacket

    rnd = __import__("random").Random(seed)
    holders = [rnd.randbytes(32) for _ in range(HOLDERS)]
    for _ in range(count):
        yield HeldChunk(
            rnd.randbytes(32),
            10,
            CHUNK_PACKETS,
            1_250_000,
            {"distinct": ["site"]},
            tuple(
                HeldPacket(s, rnd.randbytes(32), holders[rnd.randrange(HOLDERS)], rnd.randbytes(32))
                for s in range(CHUNK_PACKETS)
            ),
        )


def _owner(chunks: int, out_dir: str, queue: Any) -> None:
    from gridnode.delegation.map_parts import build_parts

    base = _peak_mib()
    start = time.perf_counter()
    parts = build_parts(_chunks(chunks, 1), Path(out_dir))
    queue.put(
        {
            "seconds": time.perf_counter() - start,
            "peak_rss_mib": _peak_mib(),
            "rss_at_start_mib": base,
            "parts": len(parts),
            "bytes": sum(p.size for p in parts),
            "refs": [[p.ref.digest.hex(), p.ref.chunks, p.ref.packets] for p in parts],
        }
    )


def _delegate(out_dir: str, refs: list[list[Any]], queue: Any) -> None:
    from nacl.signing import SigningKey

    from gridnode.delegation.held_map import HeldMap
    from gridnode.delegation.map_parts import PartRef, seal_part

    key = SigningKey.generate()
    work = Path(out_dir) / "delegate"
    held = HeldMap(work, key, tuple(PartRef(bytes.fromhex(d), c, p) for d, c, p in refs))
    start = time.perf_counter()
    for ref in held.refs:  # arrival: each part sealed to this delegate, stored as is
        body = (Path(out_dir) / ref.digest.hex()).read_bytes()
        held.write(ref.digest, seal_part(body, bytes(key.verify_key)))
    sealed_s = time.perf_counter() - start
    start = time.perf_counter()
    held.index()
    index_s = time.perf_counter() - start
    start = time.perf_counter()
    gone = set(list(held.targets)[:2])
    hit = sum(1 for c in held.chunks() if sum(p.target in gone for p in c.packets) >= 2)
    queue.put(
        {
            "store_seconds": sealed_s,
            "take_up_seconds": index_s,
            "scan_seconds": time.perf_counter() - start,
            "chunks_hit_by_two_gone_holders": hit,
            "holders": len(held.targets),
            "peak_rss_mib": _peak_mib(),
        }
    )


def _baseline(chunks: int, queue: Any) -> None:
    import msgpack

    start = time.perf_counter()
    blob = msgpack.packb([c.to_wire() for c in _chunks(chunks, 1)], use_bin_type=True)
    queue.put(
        {
            "seconds": time.perf_counter() - start,
            "bytes": len(blob),
            "peak_rss_mib": _peak_mib(),
        }
    )


def _in_child(target: Any, *args: Any) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result: dict[str, Any] = queue.get(timeout=1800)
    proc.join(60)
    return result


def run(quick: bool = False) -> dict[str, Any]:
    chunks = 8_500 if quick else 85_000
    packets = chunks * CHUNK_PACKETS
    with tempfile.TemporaryDirectory(prefix="bench-delegation-") as tmp:
        owner = _in_child(_owner, chunks, tmp)
        delegate = _in_child(_delegate, tmp, owner.pop("refs"))
        baseline = _in_child(_baseline, chunks)
    return {
        "chunks": chunks,
        "packets": packets,
        "backup_gb_at_10_of_30": round(chunks * 1.2e6 / 1e9, 1),
        "owner": owner,
        "delegate": delegate,
        "baseline_one_blob": baseline,
        "bytes_per_packet": owner["bytes"] / packets,
        "baseline_bytes_per_packet": baseline["bytes"] / packets,
        "one_blob_fits_8mib": baseline["bytes"] <= 8 * 1024 * 1024,
        "cpus": os.cpu_count(),
    }


def format_table(result: dict[str, Any]) -> str:
    o, d, b = result["owner"], result["delegate"], result["baseline_one_blob"]
    return "\n".join(
        [
            f"map of {result['packets']:,} packets ({result['backup_gb_at_10_of_30']} GB at 10/30)",
            f"  owner builds {o['parts']} parts: {o['seconds']:.1f} s, "
            f"{result['bytes_per_packet']:.1f} B/packet, peak RSS {o['peak_rss_mib']:.0f} MiB",
            f"  delegate takes it up in {d['take_up_seconds']:.1f} s, scans in "
            f"{d['scan_seconds']:.1f} s, peak RSS {d['peak_rss_mib']:.0f} MiB",
            f"  baseline one blob: {b['bytes'] / 2**20:.0f} MiB "
            f"({result['baseline_bytes_per_packet']:.1f} B/packet), {b['seconds']:.1f} s, "
            f"peak RSS {b['peak_rss_mib']:.0f} MiB",
        ]
    )


if __name__ == "__main__":
    import json
    import sys

    res = run(quick="--quick" in sys.argv)
    print(format_table(res))
    print(json.dumps(res, indent=2))
