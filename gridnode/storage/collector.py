"""The holder's collector: packets whose last lease ended, and packets no tag holds, go.

A packet is kept while any owner tag holds it (``storage.holdings``): a tag withdrawn with
its delete secret goes at once (the packet store does that), a tag whose lease ended goes
here, a grace after its end, and so does a packet found on disk with no tag at all (a
crash between writing a packet and recording its tag leaves one; nobody could ever
release it).  The packet's file goes only with its last tag, and only after checking again,
under the lock the packet store's writes take around "put the file, record the tag", that
no tag holds it: a packet stored again while its old lease ends is never deleted under the
new one.

Blocking (SQLite and the file system): run it in a worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import attrs

from .holdings import Holdings
from .packets import PacketDirectory

__all__ = ["Collected", "collect"]

#: Tags dropped, and packet ids looked at on disk, per transaction.
_BATCH = 2_000


@attrs.frozen
class Collected:
    """What one run reclaimed."""

    leases_expired: int = 0
    packets_reclaimed: int = 0
    bytes_reclaimed: int = 0
    untagged_reclaimed: int = 0

    def to_json(self) -> dict[str, int]:
        return attrs.asdict(self)


def _drop(
    packets: PacketDirectory, holdings: Holdings, lock: threading.Lock, ids: list[bytes]
) -> tuple[int, int]:
    """Delete those of ``ids`` still held by no tag; returns (packets, bytes)."""
    count = size = 0
    with lock:
        for packet_id in holdings.untagged_now(ids):
            try:
                nbytes = packets.path_for(packet_id).stat().st_size
            except OSError:
                nbytes = 0
            if packets.delete(packet_id):
                count += 1
                size += nbytes
    return count, size


def _batches(ids: Iterator[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for packet_id in ids:
        batch.append(packet_id)
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def collect(
    packets: PacketDirectory,
    holdings: Holdings,
    lock: threading.Lock,
    now: float,
    *,
    grace_s: float,
    sweep_disk: bool = True,
) -> Collected:
    """Drop the tags whose lease ended before ``now - grace_s`` and the packets they
    leave with no tag; with ``sweep_disk``, also the packets on disk held by no tag since
    before ``now - grace_s`` (a walk over the whole packet directory: run it rarely)."""
    expired = reclaimed = freed = untagged = 0
    while True:
        dropped, bare = holdings.expire(now - grace_s, limit=_BATCH)
        expired += dropped
        count, size = _drop(packets, holdings, lock, bare)
        reclaimed += count
        freed += size
        if dropped < _BATCH:
            break
    if sweep_disk:
        for batch in _batches(packets.iter_ids()):
            doomed = holdings.sweep_untagged(batch, now, grace_s)
            if doomed:
                count, size = _drop(packets, holdings, lock, doomed)
                holdings.forget_untagged(doomed)
                untagged += count
                reclaimed += count
                freed += size
    return Collected(
        leases_expired=expired,
        packets_reclaimed=reclaimed,
        bytes_reclaimed=freed,
        untagged_reclaimed=untagged,
    )
