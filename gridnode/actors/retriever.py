"""The retriever actor (claims 6, 7, 40): fetch a chunk's packets by the sequence.

For one chunk it asks holders for packets in the order of the non-transparent sequence,
k at a time, and takes the first k that verify (the id is the BLAKE3 of the bytes, so a
corrupt or substituted packet is caught here, whoever sent it).  A holder that is gone,
answers "not found", times out or returns bad bytes is skipped and the next holder in
the sequence is asked; holders whose link is already open are asked first, since they
answer fastest.  A slow holder is hedged: when no packet has come for a while (four times
the recent packet latency, between ``hedge_min_s`` and ``hedge_after_s``) another holder
is asked in parallel, so one stalled peer costs a fraction of a second, not a timeout.
The holders still silent at a hedge, or that failed, are remembered as slow for
``slow_for_s`` (until they answer again) and asked last for the next chunks: a restore of
many chunks with several in flight pays for a stalled holder once, not once per chunk.
Once k packets have arrived the slower requests are cancelled (their late answers are
dropped by the link).

``FetchChunk(all_packets=True)`` (for ``gridnode verify``) asks every holder and reports
which packets are healthy, missing or corrupt.

Backpressure: at most ``concurrency`` chunks are fetched at once; each link's in-flight
window bounds what one peer is asked.  Cancellation: pending requests are abandoned; a
late answer is dropped by the link.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import blake3
import trio

from protocol import FetchPacket, PacketData

from ..errors import GridError, PeerError, PeerGone, RemoteError
from ..storage.records import ChunkRecord, PacketRecord
from .calls import Handlers, Inbox, Request, serve_calls

__all__ = ["ChunkUnavailable", "FetchChunk", "FetchedChunk", "Retriever"]


class ChunkUnavailable(GridError):
    """Fewer than k packets of a chunk could be fetched and verified."""


@attrs.frozen
class FetchChunk(Request["FetchedChunk"]):
    """A chunk's packets: the fastest k verified (or, ``all_packets``, every one)."""

    chunk: ChunkRecord
    all_packets: bool = False
    #: Holders not to ask (``all_packets`` only): their packets count as missing.
    skip: frozenset[bytes] = frozenset()


@attrs.frozen
class FetchedChunk:
    shares: dict[int, bytes]
    missing: tuple[tuple[int, bytes, str], ...]  # (share, target, why)
    bytes_fetched: int
    #: Missing shares whose holder *answered* (not held, or bytes that fail their id):
    #: the holder is there but its copy is not, so repair can put the packet back on it.
    answered: frozenset[int] = frozenset()


LinkFor = Callable[[bytes], Awaitable[Any]]
IsConnected = Callable[[bytes], bool]


@attrs.define
class Retriever:
    inbound: Inbox
    link_for: LinkFor
    is_connected: IsConnected
    request_timeout_s: float = 30.0
    hedge_after_s: float = 2.0
    #: The shortest wait before a hedge, however fast packets came lately.
    hedge_min_s: float = 0.5
    #: How long a holder that stalled or failed is asked last (unless it answers).
    slow_for_s: float = 5.0
    retry_delay_s: float = 1.0
    concurrency: int = 16
    stats: dict[str, int] = attrs.field(factory=dict)
    #: Holder -> until when (trio clock) it is asked after the others.
    _slow_until: dict[bytes, float] = attrs.field(factory=dict, init=False)
    #: Moving average of the seconds one packet took to arrive (None before the first).
    _latency_s: float | None = attrs.field(default=None, init=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_calls(
            self.inbound,
            Handlers("retriever").on(FetchChunk, self._handle),
            concurrency=self.concurrency,
            task_status=task_status,
        )

    async def _handle(self, cmd: FetchChunk) -> FetchedChunk:
        if cmd.all_packets:
            return await self._fetch_all(cmd.chunk, cmd.skip)
        return await self.fetch_chunk(cmd.chunk)

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    async def fetch_chunk(self, chunk: ChunkRecord) -> FetchedChunk:
        """The fastest k verified packets of ``chunk`` (what ``FetchChunk`` answers)."""
        return await self._fetch_k(chunk)

    def _mark_slow(self, target: bytes) -> None:
        self._slow_until[target] = trio.current_time() + self.slow_for_s

    def _is_slow(self, target: bytes) -> bool:
        until = self._slow_until.get(target)
        if until is None:
            return False
        if until <= trio.current_time():
            del self._slow_until[target]
            return False
        return True

    def _hedge_delay(self) -> float:
        """How long to wait for a packet before asking one more holder."""
        if self._latency_s is None:
            return self.hedge_after_s
        return min(self.hedge_after_s, max(self.hedge_min_s, 4 * self._latency_s))

    async def _fetch_one(self, packet: PacketRecord) -> bytes:
        """One verified packet, or raises PeerError/ValueError saying why not."""
        started = trio.current_time()
        link = await self.link_for(packet.target)
        answer, digest = await link.request_with_digest(
            lambda rid: FetchPacket(request_id=rid, packet_id=packet.packet_id),
            timeout_s=self.request_timeout_s,
        )
        if not isinstance(answer, PacketData) or answer.packet_id != packet.packet_id:
            raise ValueError(f"holder answered {answer.KIND}")
        # The session hashed a detached payload already; hash here only if it did not.
        if digest is None:
            digest = blake3.blake3(answer.data).digest()
        if digest != packet.packet_id:
            self._count("corrupt_packets")
            raise ValueError("packet bytes do not match the packet id (corrupt)")
        took = trio.current_time() - started
        last = self._latency_s
        self._latency_s = took if last is None else 0.8 * last + 0.2 * took
        self._slow_until.pop(packet.target, None)
        return answer.data

    def _sequence(self, chunk: ChunkRecord) -> list[PacketRecord]:
        """The sequence order, holders with an open link first and holders known to be
        slow last (stable within each group)."""
        packets = sorted(chunk.packets, key=lambda p: p.share)
        return sorted(
            packets,
            key=lambda p: 2 if self._is_slow(p.target) else int(not self.is_connected(p.target)),
        )

    async def _fetch_k(self, chunk: ChunkRecord) -> FetchedChunk:
        k = chunk.k
        # (packet, delay before asking): a holder we could not reach gets one more chance
        # after ``retry_delay_s``, at the end of the queue: a node that is restarting, or
        # a connection that broke a moment ago, should not make a restore fail.
        queue: list[tuple[PacketRecord, float]] = [(p, 0.0) for p in self._sequence(chunk)]
        shares: dict[int, bytes] = {}
        missing: list[tuple[int, bytes, str]] = []
        retried: set[int] = set()
        fetched = 0
        done = trio.Event()
        running = 0
        next_index = 0
        asking: dict[int, bytes] = {}  # share -> holder, for the requests not yet answered

        async with trio.open_nursery() as nursery:

            def launch() -> bool:
                nonlocal next_index, running
                if next_index >= len(queue):
                    return False
                packet, delay = queue[next_index]
                next_index += 1
                running += 1
                nursery.start_soon(attempt, packet, delay)
                return True

            def settle() -> None:
                if len(shares) >= k or (running == 0 and next_index >= len(queue)):
                    done.set()

            async def attempt(packet: PacketRecord, delay: float) -> None:
                nonlocal fetched, running
                try:
                    await trio.sleep(delay)
                    asking[packet.share] = packet.target
                    data = await self._fetch_one(packet)
                except PeerGone as exc:
                    self._mark_slow(packet.target)
                    if packet.share not in retried:
                        retried.add(packet.share)
                        queue.append((packet, self.retry_delay_s))
                    else:
                        missing.append((packet.share, packet.target, str(exc)))
                    self._count("fallbacks")
                    launch()
                except (PeerError, ValueError) as exc:
                    self._mark_slow(packet.target)
                    missing.append((packet.share, packet.target, str(exc)))
                    self._count("fallbacks")
                    launch()
                else:
                    if len(shares) < k:
                        shares[packet.share] = data
                        fetched += len(data)
                finally:
                    asking.pop(packet.share, None)
                    running -= 1
                    settle()

            for _ in range(min(k, len(queue))):
                launch()
            if not queue:
                done.set()
            # Hedge: while short of k and nothing settles for a while, ask one more holder.
            while not done.is_set():
                with trio.move_on_after(self._hedge_delay()):
                    await done.wait()
                if done.is_set():
                    break
                for target in asking.values():  # silent all this while: ask them last
                    self._mark_slow(target)
                self._count("hedges")
                if not launch():
                    await done.wait()  # nobody left to ask: wait for those still running
            nursery.cancel_scope.cancel()
        self._count("chunks_fetched")
        if len(shares) < k:
            reasons = "; ".join(f"share {s} on {t.hex()[:8]}: {why}" for s, t, why in missing[:4])
            raise ChunkUnavailable(
                f"chunk {chunk.chunk_id.hex()[:12]}: only {len(shares)} of the {k} packets needed "
                f"could be fetched ({reasons})"
            )
        return FetchedChunk(shares=shares, missing=tuple(missing), bytes_fetched=fetched)

    async def _fetch_all(
        self, chunk: ChunkRecord, skip: frozenset[bytes] = frozenset()
    ) -> FetchedChunk:
        shares: dict[int, bytes] = {}
        missing: list[tuple[int, bytes, str]] = []
        answered: set[int] = set()
        fetched = 0

        async def attempt(packet: PacketRecord) -> None:
            nonlocal fetched
            try:
                data = await self._fetch_one(packet)
            except (RemoteError, ValueError) as exc:
                missing.append((packet.share, packet.target, str(exc)))
                answered.add(packet.share)
            except PeerError as exc:
                missing.append((packet.share, packet.target, str(exc)))
            else:
                shares[packet.share] = data
                fetched += len(data)

        async with trio.open_nursery() as nursery:
            for packet in chunk.packets:
                if packet.target in skip:
                    missing.append((packet.share, packet.target, "holder is gone"))
                else:
                    nursery.start_soon(attempt, packet)
        return FetchedChunk(
            shares=shares,
            missing=tuple(sorted(missing)),
            bytes_fetched=fetched,
            answered=frozenset(answered),
        )
