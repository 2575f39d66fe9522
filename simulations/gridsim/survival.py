"""The survival model: which packets of a backup a restore on its source can still get.

A packet survives if its target is running, not paused, on the source's side of a
partition, and was not corrupted or deleted by a step.  The restore invariant, the
``restore``, ``verify`` and ``repair`` steps compare what the grid does with this.
"""

from __future__ import annotations

from typing import Any

from .world import BackupState, World

__all__ = ["chunk_survivors", "survival"]


def chunk_survivors(sim: World, backup: BackupState, chunk: dict[str, Any]) -> int:
    """Packets of one chunk (from a placement report) a restore on the source can get."""
    alive = 0
    for packet in chunk["packets"]:
        name = sim.by_id.get(packet["target"])
        if (
            name is not None
            and sim.nodes[name].state == "up"
            and not sim.separated(backup.source, name)
            and (packet["target"], packet["packet_id"]) not in sim.damaged
        ):
            alive += 1
    return alive


def survival(sim: World, backup: BackupState) -> dict[str, Any]:
    """The model: how many packets of each chunk a restore on the source can still get."""
    per_chunk: list[tuple[int, int, int]] = [  # (survivors, k, n)
        (chunk_survivors(sim, backup, chunk), int(chunk["k"]), int(chunk["n"]))
        for chunk in backup.placement.get("chunks", [])
    ]
    lost = sum(alive < k for alive, k, _ in per_chunk)
    healthy = sum(alive == n for alive, _, n in per_chunk)
    # Placement does not say which chunks hold the snapshot record (needed to
    # recover, not to restore), only how many there are: more lost chunks than
    # that, and some data chunk is lost for sure.  (A restore counts a chunk that
    # recurs, non-adjacent, in the tree twice; generated data never does that.)
    spare = len(per_chunk) - backup.data_chunks if backup.data_chunks is not None else 0
    record_chunks = spare if spare > 0 else None
    if lost == 0:
        restore = "ok"
    elif record_chunks is not None and lost > record_chunks:
        restore = "fail"
    else:
        restore = "either"
    return {
        "chunks": len(per_chunk),
        "record_chunks": record_chunks,
        "lost": lost,
        "healthy": healthy,
        "degraded": len(per_chunk) - lost - healthy,
        "min_survivors": min((a for a, _, _ in per_chunk), default=None),
        "min_spare": min((a - k for a, k, _ in per_chunk), default=None),
        "all_chunks_ok": lost == 0,
        "restore": restore,
    }
