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
which packets are healthy, missing or corrupt.  It cannot hedge (it wants every packet),
so a holder that let a request time out is not asked again for ``silent_for_s``: its
packets count as missing at once, and a verify or repair over many chunks pays for a
holder that accepts requests and never answers once, not once per chunk.

Batches: a holder that speaks protocol 5 is asked for the packets of every chunk in
flight at once, in one ``FetchPackets`` (at most ``MAX_PACKETS_PER_BATCH`` packets, about
``FETCH_BATCH_BYTES``), so a frame, a request and the holder's disk hop serve several
packets.  A restore starts chunks one at a time as its writer frees room, so a batch that
is not full waits up to ``FETCH_LINGER_S`` for other chunks' packets, and with
``SENDERS_PER_HOLDER`` requests in flight per holder, packets asked while one is answered
queue for the next.  Each packet still has its own wait, hedge and timeout; an older
holder gets ``FetchPacket``.

Backpressure: at most ``concurrency`` chunks are fetched at once; each link's in-flight
window bounds what one peer is asked.  Cancellation: pending requests are abandoned; a
packet whose asker gave up before its batch left is not asked; a late answer is dropped.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import blake3
import trio

from protocol import (
    MAX_PACKETS_PER_BATCH,
    FetchPacket,
    FetchPackets,
    PacketData,
    PacketsData,
    WantedPacket,
)

from ..errors import GridError, PeerError, PeerGone, RemoteError, RequestTimeout
from ..logic.packing import packet_size_for
from ..storage.records import ChunkRecord, PacketRecord
from ..transport.link import PeerLink
from .calls import Handlers, Inbox, Request, serve_calls

__all__ = ["ChunkUnavailable", "FetchChunk", "FetchedChunk", "Retriever"]


#: A holder is asked for about this many bytes of packets in one ``FetchPackets``
#: (estimated from each chunk's size): several chunks' packets share a request, and the
#: first of them is not held back long behind the rest.
FETCH_BATCH_BYTES: Final = 4 * 1024 * 1024
#: Requests in flight per holder: the next batch forms while one is answered.
SENDERS_PER_HOLDER: Final = 2
#: How long a holder's batch that is not full waits for more packets.  A restore starts
#: chunks one at a time as its writer frees room, so without a wait nearly every packet
#: would leave alone.
FETCH_LINGER_S: Final = 0.010


class ChunkUnavailable(GridError):
    """Fewer than k packets of a chunk could be fetched and verified."""


@attrs.frozen
class FetchChunk(Request["FetchedChunk"]):
    """A chunk's packets: the fastest k verified (or, ``all_packets``, every one)."""

    chunk: ChunkRecord
    all_packets: bool = False
    #: Holders not to ask (``all_packets`` only): their packets count as missing.
    skip: frozenset[bytes] = frozenset()


#: A fetched packet's bytes: for a chunk fetched to be decoded (``FetchChunk`` without
#: ``all_packets``), a read-only view of the holder's answer, which carries the packets
#: of several chunks back to back; slicing them out as ``bytes`` copied every byte a
#: restore fetches once more, into fresh memory (issue 11).  Every other fetch gets
#: ``bytes``, since its packets may be stored elsewhere again.
Packet = bytes | memoryview


@attrs.frozen
class FetchedChunk:
    shares: dict[int, Packet]
    missing: tuple[tuple[int, bytes, str], ...]  # (share, target, why)
    bytes_fetched: int
    #: Missing shares whose holder *answered* (not held, or bytes that fail their id):
    #: the holder is there but its copy is not, so repair can put the packet back on it.
    answered: frozenset[int] = frozenset()


LinkFor = Callable[[bytes], Awaitable[PeerLink]]
IsConnected = Callable[[bytes], bool]


@attrs.define(eq=False)
class _Wanted:
    """One packet waiting for its holder's next ``FetchPackets``."""

    packet_id: bytes
    size_hint: int
    done: trio.Event = attrs.field(factory=trio.Event)
    outcome: Packet | BaseException | None = None
    #: Its asker stopped waiting: not asked if its batch has not left yet.
    abandoned: bool = False

    def settle(self, outcome: Packet | BaseException) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.done.set()


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
    #: How long a holder that let a request time out is not asked for every packet.
    silent_for_s: float = 60.0
    #: Holder -> until when (trio clock) it is asked after the others.
    _slow_until: dict[bytes, float] = attrs.field(factory=dict, init=False)
    #: Holder -> until when ``_fetch_all`` counts its packets missing without asking.
    _silent_until: dict[bytes, float] = attrs.field(factory=dict, init=False)
    #: Moving average of the seconds one packet took to arrive (None before the first).
    _latency_s: float | None = attrs.field(default=None, init=False)
    #: Holder -> packets waiting for its next batch, and how many senders it has.
    _waiting: dict[bytes, collections.deque[_Wanted]] = attrs.field(factory=dict, init=False)
    _senders: dict[bytes, int] = attrs.field(factory=dict, init=False)
    #: How long a batch that is not full waits for more packets (``FETCH_LINGER_S``).
    linger_s: float = FETCH_LINGER_S
    #: Where batch senders run (``run``); without it every packet is asked alone.
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    #: Holder -> set once its queue holds a full batch (ends a sender's linger).
    _full: dict[bytes, trio.Event] = attrs.field(factory=dict, init=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await serve_calls(
                    self.inbound,
                    Handlers("retriever").on(FetchChunk, self._handle),
                    concurrency=self.concurrency,
                    task_status=task_status,
                )
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

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

    async def _fetch_one(self, packet: PacketRecord, size_hint: int = 0) -> Packet:
        """One verified packet, or raises PeerError/ValueError saying why not.

        ``size_hint``: about how big the packet is, for sizing batches."""
        started = trio.current_time()
        link = await self.link_for(packet.target)
        if self._nursery is not None and link.speaks(FetchPackets):
            data = await self._batched(packet, size_hint)
            # A certified answer: its bytes are checked here, once.
            digest: bytes | None = blake3.blake3(data).digest()
        else:
            answer, digest = await link.request_with_digest(
                lambda rid: FetchPacket(request_id=rid, packet_id=packet.packet_id),
                timeout_s=self.request_timeout_s,
            )
            if not isinstance(answer, PacketData) or answer.packet_id != packet.packet_id:
                raise ValueError(f"holder answered {answer.KIND}")
            data = answer.data
            # The session hashed a detached payload already; hash here only if it did not.
            if digest is None:
                digest = blake3.blake3(data).digest()
        if digest != packet.packet_id:
            self._count("corrupt_packets")
            raise ValueError("packet bytes do not match the packet id (corrupt)")
        took = trio.current_time() - started
        last = self._latency_s
        self._latency_s = took if last is None else 0.8 * last + 0.2 * took
        self._slow_until.pop(packet.target, None)
        self._silent_until.pop(packet.target, None)
        return data

    async def _batched(self, packet: PacketRecord, size_hint: int) -> Packet:
        """``packet``'s bytes (unverified) by way of its holder's batch queue."""
        wanted = _Wanted(packet.packet_id, size_hint)
        queue = self._waiting.setdefault(packet.target, collections.deque())
        queue.append(wanted)
        if _is_full(queue) and (full := self._full.get(packet.target)) is not None:
            full.set()
        if self._senders.get(packet.target, 0) < SENDERS_PER_HOLDER:
            self._senders[packet.target] = self._senders.get(packet.target, 0) + 1
            assert self._nursery is not None
            self._nursery.start_soon(self._drain, packet.target)
        try:
            await wanted.done.wait()
        finally:
            wanted.abandoned = True
        outcome = wanted.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome

    async def _drain(self, target: bytes) -> None:
        """Ask ``target`` for what waits for it, a batch at a time; exit when nothing is
        left.  Between the emptiness check and the exit there is no checkpoint, so a
        packet queued meanwhile always finds a running sender or starts one."""
        try:
            while queue := self._waiting.get(target):
                if self.linger_s > 0 and not _is_full(queue):
                    # Let other chunks' packets for this holder join, until it is full.
                    full = self._full[target] = trio.Event()
                    with trio.move_on_after(self.linger_s):
                        await full.wait()
                    self._full.pop(target, None)
                    queue = self._waiting.get(target)
                    if not queue:
                        continue
                batch: list[_Wanted] = []
                size = 0
                while queue and len(batch) < MAX_PACKETS_PER_BATCH and size < FETCH_BATCH_BYTES:
                    wanted = queue.popleft()
                    if not wanted.abandoned:
                        batch.append(wanted)
                        size += wanted.size_hint
                if not batch:
                    continue
                try:
                    later = await self._ask_batch(target, batch)
                except (PeerError, ValueError) as exc:
                    for wanted in batch:
                        wanted.settle(exc)
                except BaseException as exc:  # cancelled or a bug: nobody may wait forever
                    gone = PeerGone(f"fetch from {target.hex()[:10]} stopped: {exc!r}")
                    for wanted in batch:
                        wanted.settle(gone)
                    raise
                else:
                    # Past the answer's size limit: first in line for the next batch.
                    self._waiting.setdefault(target, collections.deque()).extendleft(
                        reversed(later)
                    )
        finally:
            left = self._senders.get(target, 1) - 1
            if left > 0:
                self._senders[target] = left
            else:
                self._senders.pop(target, None)
                if not self._waiting.get(target):
                    self._waiting.pop(target, None)

    async def _ask_batch(self, target: bytes, batch: list[_Wanted]) -> list[_Wanted]:
        """One ``FetchPackets`` for ``batch``: settles each packet answered (its bytes, or
        why not) and returns those the holder said to ask again ("later")."""
        link = await self.link_for(target)
        wanted = tuple(WantedPacket(packet_id=w.packet_id) for w in batch)
        answer = await link.request(
            lambda rid: FetchPackets(request_id=rid, wanted=wanted),
            timeout_s=self.request_timeout_s,
        )
        if not isinstance(answer, PacketsData) or [p.packet_id for p in answer.parts] != [
            w.packet_id for w in batch
        ]:
            raise ValueError(f"holder answered {answer.KIND} to fetch_packets")
        sizes = sum(part.size_bytes for part in answer.parts if not part.code)
        if sizes != len(answer.data):
            raise ValueError(
                f"holder's answer names {sizes} bytes of packets but carries {len(answer.data)}"
            )
        self._count("fetch_batches")
        later: list[_Wanted] = []
        offset = 0
        payload = memoryview(answer.data).toreadonly()
        for item, part in zip(batch, answer.parts, strict=True):
            if part.code == "later":
                if offset == 0:  # it had the room: "later" would loop forever
                    item.settle(ValueError("holder put off a packet its answer had room for"))
                else:
                    later.append(item)
            elif part.code:
                item.settle(RemoteError(part.code, "packet not held there", peer=target.hex()[:10]))
            else:
                item.settle(payload[offset : offset + part.size_bytes])
                offset += part.size_bytes
        return later

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
        shares: dict[int, Packet] = {}
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
                    data = await self._fetch_one(packet, _packet_size(chunk))
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
        # ``launch`` and ``attempt`` name each other, so their closures form a reference
        # cycle, and it holds ``shares``: the chunk's packets would stay alive until the
        # cyclic garbage collector ran, long after the chunk was decoded and written (a
        # 50,000-file restore held 18 MiB of packets so, twice its prefetch window).
        # The answer gets its own dict; the one the cycle keeps is emptied.
        found = dict(shares)
        shares.clear()
        return FetchedChunk(shares=found, missing=tuple(missing), bytes_fetched=fetched)

    async def _fetch_all(
        self, chunk: ChunkRecord, skip: frozenset[bytes] = frozenset()
    ) -> FetchedChunk:
        shares: dict[int, Packet] = {}
        missing: list[tuple[int, bytes, str]] = []
        answered: set[int] = set()
        fetched = 0

        async def attempt(packet: PacketRecord) -> None:
            nonlocal fetched
            if self._silent_until.get(packet.target, float("-inf")) > trio.current_time():
                missing.append((packet.share, packet.target, "holder did not answer lately"))
                return
            try:
                data = await self._fetch_one(packet, _packet_size(chunk))
            except (RemoteError, ValueError) as exc:
                missing.append((packet.share, packet.target, str(exc)))
                answered.add(packet.share)
            except RequestTimeout as exc:
                self._silent_until[packet.target] = trio.current_time() + self.silent_for_s
                missing.append((packet.share, packet.target, str(exc)))
            except PeerError as exc:
                missing.append((packet.share, packet.target, str(exc)))
            else:
                # bytes of its own: a packet repair or a leave stores again elsewhere
                # should not keep a whole batch of other chunks' packets alive.
                shares[packet.share] = data if isinstance(data, bytes) else bytes(data)
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


def _packet_size(chunk: ChunkRecord) -> int:
    """How big each of ``chunk``'s packets is, as its record says (for sizing batches; a
    record with no k is refused later, by the decoder)."""
    return packet_size_for(chunk.cipher_size, max(1, chunk.k))


def _is_full(queue: collections.deque[_Wanted]) -> bool:
    """Whether ``queue`` holds a whole batch (abandoned packets count too: cheap, and
    they only make a batch leave early)."""
    return len(queue) >= MAX_PACKETS_PER_BATCH or (
        sum(w.size_hint for w in queue) >= FETCH_BATCH_BYTES
    )
