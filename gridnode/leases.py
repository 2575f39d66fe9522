"""The source's side of leases (issue 10): renewing, retrying deletes, releasing orphans.

Holders keep a packet while a lease on it runs and reclaim it a grace after the lease
ends (``storage.holdings``, ``storage.collector``).  This node therefore:

- **renews** the leases of its packets in the background, a bounded batch per holder per
  message (``RenewLeases``), each a renewal interval after the last (sooner when a
  holder grants shorter leases); a packet just stored is renewed at the next round,
  which also tells the source what the holder really granted (``storage.lease_book``).
  A holder of a protocol without leases keeps packets without one and is not asked;
- **retries the deletes** that holders have not confirmed (``forget`` on a holder that was
  away, a repaired packet's old copy), with backoff, until they confirm or a lease and
  its grace have passed (by then the holder has reclaimed the packet by itself);
- **releases orphans**: chunks no snapshot uses, stored by a backup that never completed,
  once ``orphan_grace_s`` has passed without a later backup adopting them.

Releasing runs under the node's backup lock, so no backup decides to reuse a chunk while
it is being released; renewing needs no lock (a lease renewed just before its packet is
released is withdrawn with the tag).  ``gridnode prune`` runs a release round at once.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from protocol import (
    MAX_LEASE_S,
    MAX_LEASES_PER_MESSAGE,
    DeletePacket,
    LeaseRef,
    LeasesRenewed,
    PacketDeleted,
    RenewLeases,
)

from .errors import PeerError, RemoteError
from .job_services import Services
from .log import get_logger
from .storage.lease_book import LeaseDue, PendingDelete

__all__ = ["LeaseKeeper", "delete_on_holder", "release_queued"]

_log = get_logger(component="leases")

#: Lease rows looked at per renewal round, and deletes per release round: bounded work
#: per round (a 100 GB backup has some 2.5 million packets; rounds run hourly).
RENEW_ROWS_PER_ROUND = 50_000
#: Batches one round renews at most: 1.5 million packets an hour, enough for a backup of
#: some 60 TB renewed weekly.
RENEW_BATCHES_PER_ROUND = 30
#: Holders left out of one round at most (away or failing): past it the round ends.
MAX_SKIPPED_HOLDERS = 900
DELETES_PER_ROUND = 10_000
#: Batches of deletes one release sends at most (a forget of a 100 GB backup queues
#: some 2.5 million: all go at once, as before leases).
MAX_RELEASE_BATCHES = 1_000
#: Holders asked at once, and deletes in flight to one holder.
PARALLEL_HOLDERS = 4
DELETES_IN_FLIGHT = 8
#: Wire code of a message the peer's protocol has no word for (``transport.link``).
_UNSUPPORTED = "unsupported"


def _delete_request(packet_id: bytes, secret: bytes, request_id: int) -> DeletePacket:
    return DeletePacket(request_id=request_id, packet_id=packet_id, owner_secret=secret)


async def delete_on_holder(
    services: Services, packet_id: bytes, target: bytes, policy: str, *, timeout_s: float = 10
) -> bool:
    """Withdraw this node's tag on a packet (with its delete secret); True if the holder
    had it.  Raises ``PeerError`` when the holder cannot be reached or refuses."""
    secret = services.identity.packet_delete_secret(packet_id, policy)
    link = await services.link_for(target)
    answer = await link.request(
        functools.partial(_delete_request, packet_id, secret), timeout_s=timeout_s
    )
    return isinstance(answer, PacketDeleted) and answer.removed


async def release_queued(
    services: Services, present: Callable[[], set[bytes]], *, all_now: bool = False
) -> dict[str, int]:
    """Send the queued deletes that are due (``all_now``: every queued one) to the
    holders in the view, until none is left to try; the caller holds the backup lock.
    Returns what was released, freed and left queued.

    A queued delete never names a packet a record names at that holder: recording a
    packet withdraws its queued delete in the same transaction (``Catalog._insert_chunks``,
    ``LeaseBook.queue_deletes``), and records change only under the backup lock."""
    catalog = services.catalog
    now = time.time()
    here = present()
    released = freed = 0
    tried: set[tuple[bytes, bytes]] = set()
    for _ in range(MAX_RELEASE_BATCHES):
        due = [
            d
            for d in await services.db(
                lambda: catalog.deletes_due(now, DELETES_PER_ROUND, all_now=all_now)
            )
            if (d.packet_id, d.target) not in tried
        ]
        if not due:
            break
        tried.update((d.packet_id, d.target) for d in due)
        done, failed, count, size = await _send_deletes(services, due, here)
        released += count
        freed += size
        await services.db(catalog.deletes_done, done)
        await services.db(catalog.deletes_failed, failed, now)
    pending, pending_bytes = await services.db(catalog.pending_deletes)
    return {
        "packets_released": released,
        "bytes_freed": freed,
        "packets_pending": pending,
        "bytes_pending": pending_bytes,
    }


async def _send_deletes(
    services: Services, due: list[PendingDelete], here: set[bytes]
) -> tuple[list[tuple[bytes, bytes]], list[PendingDelete], int, int]:
    """One batch: (done, failed, packets released, bytes freed).  A holder that fails a
    delete gets no more of this batch: the rest wait for the next try with it."""
    done: list[tuple[bytes, bytes]] = []
    failed: list[PendingDelete] = []
    released = freed = 0
    by_target: dict[bytes, list[PendingDelete]] = defaultdict(list)
    for item in due:
        by_target[item.target].append(item)
    holders = trio.Semaphore(PARALLEL_HOLDERS)

    async def one_holder(target: bytes, items: list[PendingDelete]) -> None:
        if target not in here:
            failed.extend(items)
            return
        gone = False
        in_flight = trio.Semaphore(DELETES_IN_FLIGHT)

        async def one(item: PendingDelete) -> None:
            nonlocal released, freed, gone
            async with in_flight:
                if gone:
                    failed.append(item)
                    return
                try:
                    removed = await delete_on_holder(
                        services, item.packet_id, item.target, item.policy, timeout_s=10
                    )
                except PeerError:
                    gone = True
                    failed.append(item)
                    return
            done.append((item.packet_id, item.target))
            if removed:
                released += 1
                freed += item.size

        async with holders, trio.open_nursery() as nursery:
            for item in items:
                nursery.start_soon(one, item)

    async with trio.open_nursery() as nursery:
        for target, items in by_target.items():
            nursery.start_soon(one_holder, target, items)
    return done, failed, released, freed


@attrs.define
class LeaseKeeper:
    """Renews this node's leases and retries its deletes, every ``interval_s``."""

    services: Services
    present: Callable[[], set[bytes]]
    lease_s: float
    renew_interval_s: float
    grace_s: float
    orphan_grace_s: float
    interval_s: float
    clock: Callable[[], float] = time.time
    stats: dict[str, int] = attrs.field(factory=dict)

    @property
    def renew_every_s(self) -> float:
        """At most half a lease between renewals, whatever the config says."""
        return min(self.renew_interval_s, self.lease_s / 2)

    def next_renewal(self, now: float, end: float) -> float:
        """When to renew a lease that now ends at ``end``: a renewal interval from now
        when the holder granted a whole lease, sooner when it granted less (its own
        ``lease_s`` may be shorter), but never before half of what is left, nor in this
        round (a holder whose clock is behind may answer an end already past here)."""
        soonest = now + min(60.0, self.renew_every_s / 2)
        return max(end - self.lease_s + self.renew_every_s, now + (end - now) / 2, soonest)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.interval_s <= 0:
            return
        while True:
            await trio.sleep(self.interval_s)
            try:
                await self.round()
            except Exception as exc:  # a failing round must not stop the node: next one
                _log.warning("lease_round_failed", error=str(exc)[:300])

    def _count(self, key: str, n: int = 1) -> None:
        if n:
            self.stats[key] = self.stats.get(key, 0) + n

    async def round(self, *, prune: bool = False) -> dict[str, Any]:
        """One round: release orphans and queued deletes (under the backup lock), drop
        deletes older than a lease, then renew what is due."""
        services = self.services
        catalog = services.catalog
        now = self.clock()
        async with services.backup_lock:
            orphans = await services.db(catalog.release_orphans, now - self.orphan_grace_s)
            released = await release_queued(services, self.present, all_now=prune)
            stale = await services.db(catalog.drop_stale_deletes, now - self.lease_s - self.grace_s)
        renewed = await self.renew()
        self._count("orphan_chunks_released", orphans)
        self._count("packets_released", released["packets_released"])
        self._count("bytes_freed", released["bytes_freed"])
        result = {
            "orphan_chunks_released": orphans,
            **released,
            "deletes_given_up": stale,
            **renewed,
        }
        if orphans or released["packets_released"] or stale or renewed["leases_lost"]:
            _log.info("leases_round", **result)
        return result

    async def renew(self) -> dict[str, int]:
        """Renew the leases due, holder by holder, a batch of rows at a time; holders
        away (or failing now) are left out of later batches and rounds until they are
        back, so they never hold up the others (their leases run for weeks)."""
        services = self.services
        catalog = services.catalog
        now = self.clock()
        here = self.present() - {services.identity.node_id}
        tally = {"leases_renewed": 0, "leases_lost": 0, "leases_skipped": 0}
        skip: set[bytes] = set()
        for _ in range(RENEW_BATCHES_PER_ROUND):
            due: list[LeaseDue] = await services.db(
                functools.partial(catalog.leases_due, now, RENEW_ROWS_PER_ROUND, skip=sorted(skip))
            )
            if not due:
                break
            by_target: dict[bytes, list[LeaseDue]] = defaultdict(list)
            for item in due:
                by_target[item.target].append(item)
            away = {t for t in by_target if t not in here}
            for target in away:
                tally["leases_skipped"] += len(by_target.pop(target))
            skip |= away
            if not by_target:
                if len(skip) > MAX_SKIPPED_HOLDERS:
                    break
                continue
            ends = await self._renew_holders(by_target, now, tally, skip)
            if ends:
                await services.db(catalog.set_renewals, ends)
        for key, value in tally.items():
            self._count(key, value)
        return tally

    async def _renew_holders(
        self,
        by_target: dict[bytes, list[LeaseDue]],
        now: float,
        tally: dict[str, int],
        failing: set[bytes],
    ) -> list[tuple[LeaseDue, float]]:
        """Renew each holder's leases (a few holders at once); returns the new ends and
        adds holders that failed to ``failing``."""
        ends: list[tuple[LeaseDue, float]] = []
        limiter = trio.Semaphore(PARALLEL_HOLDERS)
        duration = int(min(self.lease_s, MAX_LEASE_S))

        async def one_holder(target: bytes, items: list[LeaseDue]) -> None:
            async with limiter:
                for start in range(0, len(items), MAX_LEASES_PER_MESSAGE):
                    batch = items[start : start + MAX_LEASES_PER_MESSAGE]
                    try:
                        answered = await self._renew_batch(target, batch, duration)
                    except RemoteError as exc:
                        if exc.code == _UNSUPPORTED:
                            # An older holder keeps packets without leases: ask again a
                            # lease later, in case it was upgraded.
                            ends.extend((item, now + self.lease_s) for item in items[start:])
                        else:
                            failing.add(target)
                        tally["leases_skipped"] += len(items) - start
                        return
                    except PeerError:
                        failing.add(target)
                        tally["leases_skipped"] += len(items) - start
                        return
                    lost = 0
                    for item, end in zip(batch, answered, strict=True):
                        if end:
                            ends.append((item, self.next_renewal(now, float(end))))
                        else:
                            # The holder has no such lease: the packet is lost there.  Ask
                            # again next interval; audits and repair act on the loss.
                            ends.append((item, now + self.renew_every_s))
                            lost += 1
                    tally["leases_renewed"] += len(batch) - lost
                    tally["leases_lost"] += lost
                    if lost:
                        _log.warning("leases_lost", holder=target.hex()[:10], packets=lost)

        async with trio.open_nursery() as nursery:
            for target, items in by_target.items():
                nursery.start_soon(one_holder, target, items)
        return ends

    async def _renew_batch(
        self, target: bytes, batch: Sequence[LeaseDue], duration: int
    ) -> tuple[int, ...]:
        leases = tuple(LeaseRef(packet_id=d.packet_id, owner_tag=self._tag(d)) for d in batch)
        link = await self.services.link_for(target)
        answer = await link.request(
            lambda rid: RenewLeases(request_id=rid, leases=leases, duration_s=duration),
            timeout_s=30,
        )
        if not isinstance(answer, LeasesRenewed) or len(answer.expires) != len(batch):
            raise PeerError("malformed lease renewal answer", peer=target.hex()[:10])
        return answer.expires

    def _tag(self, item: LeaseDue) -> bytes:
        return self.services.identity.packet_owner_tag(item.packet_id, item.policy)
