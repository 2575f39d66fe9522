"""The uploader actor (claims 1, 9, 13): the source side of a packet's journey, one owner.

``UploadChunk`` takes a chunk's n packets to n targets and returns their signed
receipts.  The uploader asks the sequencer for the targets (unless the caller chose
them, as repair does) and, when a target fails (gone, full, timed out, a receipt that
does not verify), for a replacement under the chunk's rules together with the targets
that already hold its packets, excluding every target that failed.  No callback runs
through the node: both are ``PlaceChunk`` calls on the sequencer's channel.

Sending: packets for one target wait in that target's queue and leave as one
``StorePackets`` frame (one batch in flight per target, no added delay).  The frame is
written from the packets' own buffers (``Session.send(payload=...)``; a packet may be a
view of its chunk's buffer, ``packing.encode_chunk``, never copied), and its sealed
header names each packet's id and length, so neither side hashes the batch: the packet
ids were computed once, by ``encode_chunk``, and the target checks each packet against
its id once (``protocol._session`` Rule 6a).  A target of protocol 2 has no such
frame: the session sends it the batch as a "D" frame, with the digest it computes
(Rule 2a).

A dedup group's shared chunk (``UploadChunk.shared``) is placed under the group's key,
and each chosen target is first asked whether it holds its packet already
(``AdoptPackets``, ``gridnode.dedup_group``): a packet it keeps under our tag too is
placed without a byte sent.

Backpressure: a node-wide byte budget bounds the packet bytes in flight, each link's
window the requests; a caller waits for its chunk's n receipts.  Cancellation: an upload
cancelled mid-way leaves only complete packets on targets (they write atomically); the
caller records nothing.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Awaitable, Callable

import attrs
import trio

from protocol import (
    MAX_PACKETS_PER_BATCH,
    PacketPart,
    PacketsStored,
    PacketStored,
    PartStored,
    StorePacket,
    StorePackets,
    receipt_payload,
    verify,
)

from ..byte_budget import ByteBudget
from ..dedup_group import adopt_on
from ..errors import GridError, PeerError, RemoteError
from ..exception_groups import collapse_groups
from ..identity import NodeIdentity
from ..log import get_logger
from ..logic.packing import Buffer
from ..logic.placement import PlacementRules
from ..ratelimit import RateLimiter
from ..transport.link import PeerLink
from .calls import Handlers, Inbox, Outbox, Request, call, serve_calls
from .sequencer import PlaceChunk

__all__ = [
    "ChunkUploaded",
    "PlacedPacket",
    "UploadChunk",
    "UploadFailed",
    "Uploader",
    "linger_for",
]

_log = get_logger(actor="uploader")


class UploadFailed(GridError):
    """A chunk could not get all of its packets stored; nothing about it is recorded."""


@attrs.frozen
class PlacedPacket:
    share: int
    packet_id: bytes
    target: bytes
    receipt: bytes


@attrs.frozen
class UploadChunk(Request["ChunkUploaded"]):
    """Upload an encoded chunk's packets to their targets (or to targets the sequencer
    gives); answered with where each packet went and its receipt."""

    chunk_id: bytes
    #: ``bytes`` or read-only views (``packing.EncodedChunk.packets``): sent as they are.
    packets: tuple[Buffer, ...]
    packet_ids: tuple[bytes, ...]
    #: One target per packet, or empty: the uploader asks the sequencer.
    targets: tuple[bytes, ...]
    rules: PlacementRules  # the same rules govern any replacement target
    packet_bytes: int
    policy: str = ""  # the catalog's policy key: scopes the packets' delete secrets
    #: Targets already holding other packets of this chunk (repair uploads only the lost
    #: ones): a replacement must obey the pairwise rules together with them too.
    held: tuple[bytes, ...] = ()
    #: A dedup group's data chunk: placed under the group's key, and each target is asked
    #: first whether it holds its packet already (``gridnode.dedup_group``).
    shared: bool = False


@attrs.frozen
class ChunkUploaded:
    placed: tuple[PlacedPacket, ...]
    replaced: int
    bytes_sent: int
    #: Packets a holder had already and kept under our tag too: placed, not uploaded.
    adopted: int = 0


@attrs.frozen
class _Outgoing:
    packet_id: bytes
    owner_tag: bytes
    data: Buffer
    #: Where the outcome goes, with ``index``: a chunk's packets share one channel.
    reply: trio.MemorySendChannel[tuple[int, bytes | Exception]]
    index: int = 0


#: One batch in flight per target: packets that arrive meanwhile form the next batch, so
#: a slow target (a busy disk, a long link) is sent fewer, larger frames, and a fast one
#: is never kept waiting (there is no artificial delay).
SENDERS_PER_TARGET = 1
#: Stop adding packets to a batch beyond this many bytes.
BATCH_BYTES = 1024 * 1024
#: How long a sender waits for more packets when fewer than ``BATCH_BYTES`` are queued
#: (a full batch leaves at once).  Without it a fast target answered each packet before
#: the next chunk was encoded, so nearly every packet travelled alone (673 frames for 714
#: packets) and paid a frame's, a request's, a receipt round's and a write hop's cost on
#: both sides.  The chunk workers keep encoding meanwhile.  Measured side by side (256
#: MiB, 4-of-6, idle machine): no linger 23.2-23.5 grid CPU-s/GB at 75-76 MB/s; 5 ms
#: 19.0-19.3 at 86-88 MB/s (1.65 packets per frame); 20 ms 17.8-19.2 at 66-72 MB/s (3.2
#: per frame, but a chunk's packets wait longer than the byte budget lets others fill in).
LINGER_S = 0.005
#: Packets smaller than this wait longer, up to ``LINGER_MAX_FACTOR`` times ``LINGER_S``
#: (``linger_for``).
LINGER_REF_BYTES = 256 * 1024
LINGER_MAX_FACTOR = 3.0


def linger_for(linger_s: float, packet_bytes: int) -> float:
    """How long a sender whose batch is not full waits for company, given the size of the
    first packet waiting: ``linger_s`` for packets of ``LINGER_REF_BYTES`` or more, longer
    for smaller ones in proportion, at most ``LINGER_MAX_FACTOR`` times.

    A frame's cost on both sides (a request, a session seal, a receipt round, a write hop
    and a directory fsync on the target) is per frame, not per byte, so small packets
    need more of them to pay for it.  A tree's small-file packs compress to about 88 KB
    packets: with 5 ms, 1.9 packets travelled per frame (2,215 frames for 4,128 packets
    of /usr/share).  Measured side by side on this 2-core machine, alternating:
    - /usr/share (48,168 files): with this rule 3.2 packets per frame, the first backup
      7.2-7.6 s at 10.9-11.5 grid CPU-s, against 8.4-8.5 s at 13.6-13.7 with 5 ms flat;
    - bench_grid's 256 MiB incompressible file: 97.8-99.9 MB/s at 13.2-13.9 grid CPU-s/GB,
      against 97.0-101.7 MB/s at 14.8-15.3.
    A flat 15 ms for every size was slower on the large file (76-79 against 81-91 MB/s):
    its large packets fill the pipeline's byte budget (``backup._pipeline_bytes``) long
    before a batch, so a longer wait there is only latency."""
    factor = min(LINGER_MAX_FACTOR, max(1.0, LINGER_REF_BYTES / max(1, packet_bytes)))
    return linger_s * factor


#: node id -> an open link to it (dials through the transport).
LinkFor = Callable[[bytes], Awaitable[PeerLink]]


@attrs.define
class Uploader:
    identity: NodeIdentity
    inbound: Inbox
    #: The sequencer's inbox: targets and replacements are asked for there.
    sequencer: Outbox
    link_for: LinkFor
    upload_budget_bytes: int = 24 * 1024 * 1024
    request_timeout_s: float = 30.0
    linger_s: float = LINGER_S
    max_replacements: int = 12
    concurrency: int = 32
    #: The subscription's bandwidth allocation for uploads (None: unlimited).
    rate: RateLimiter | None = None
    #: Counters shown by ``status`` (the node shares one dict with the packet store).
    stats: dict[str, int] = attrs.field(factory=dict)
    _budget: ByteBudget = attrs.field(init=False)
    _waiting: dict[bytes, collections.deque[_Outgoing]] = attrs.field(factory=dict)
    #: Bytes queued per target (the sum of ``len(data)`` over ``_waiting[target]``).
    _queued: dict[bytes, int] = attrs.field(factory=dict)
    #: Set when a lingering sender's queue reaches ``BATCH_BYTES``.
    _full: dict[bytes, trio.Event] = attrs.field(factory=dict)
    _senders: dict[bytes, int] = attrs.field(factory=dict)
    _nursery: trio.Nursery | None = None

    def __attrs_post_init__(self) -> None:
        self._budget = ByteBudget(self.upload_budget_bytes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await serve_calls(
                self.inbound,
                Handlers("uploader").on(UploadChunk, self._upload_chunk),
                concurrency=self.concurrency,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    async def _place(
        self, job: UploadChunk, count: int, fixed: tuple[bytes, ...], exclude: frozenset[bytes]
    ) -> list[bytes]:
        """``count`` new targets for ``job`` beside ``fixed`` (raises PlacementError)."""
        targets: tuple[bytes, ...] = await call(
            self.sequencer,
            PlaceChunk(
                chunk_id=job.chunk_id,
                n=len(fixed) + count,
                packet_bytes=job.packet_bytes,
                rules=job.rules,
                exclude=exclude,
                fixed=fixed,
                shared=job.shared,
            ),
        )
        return [t for t in targets if t not in fixed]

    async def _adopt(self, job: UploadChunk, targets: tuple[bytes, ...]) -> dict[int, PlacedPacket]:
        """A shared chunk: ask each chosen target whether it holds the packet placed there
        already (another member of the group stored it); those it keeps under our tag are
        placed without uploading a byte.  Any failure means "upload it"."""
        found: dict[int, PlacedPacket] = {}

        async def ask(share: int, target: bytes) -> None:
            packet_id = job.packet_ids[share]
            tag = self.identity.packet_owner_tag(packet_id, job.policy)
            part = (packet_id, tag, len(job.packets[share]))
            taken = await adopt_on(self.link_for, target, [part], timeout_s=self.request_timeout_s)
            if packet_id in taken:
                found[share] = PlacedPacket(share, packet_id, target, taken[packet_id])

        async with trio.open_nursery() as nursery:
            for share, target in enumerate(targets):
                nursery.start_soon(ask, share, target)
        self._count("packets_adopted", len(found))
        return found

    async def _upload_chunk(self, job: UploadChunk) -> ChunkUploaded:
        initial = job.targets
        if not initial:
            initial = tuple(await self._place(job, len(job.packets), job.held, frozenset()))
        adopted = await self._adopt(job, initial) if job.shared else {}
        placed: list[PlacedPacket | None] = [adopted.get(i) for i in range(len(job.packets))]
        failed: set[bytes] = set()
        assigned: dict[int, bytes] = {}
        replacing = trio.Lock()
        replaced = 0
        sent = 0
        errors: list[str] = []

        async def one(share: int, target: bytes, first: Exception) -> None:
            """Packet ``share``, whose first attempt (made together with the chunk's other
            packets) failed on ``target``: retried on replacement targets."""
            nonlocal replaced, sent
            data, packet_id = job.packets[share], job.packet_ids[share]
            held = await self._budget.acquire(len(data))
            try:
                for attempt in range(self.max_replacements + 1):
                    try:
                        if attempt == 0:
                            raise first
                        receipt = await self._store_on(target, packet_id, data, job.policy)
                        placed[share] = PlacedPacket(share, packet_id, target, receipt)
                        sent += len(data)
                        return
                    except (PeerError, UploadFailed) as exc:
                        # ``first`` is raised here from this frame, which holds it and the
                        # packet's bytes: without its traceback, no cycle keeps them.
                        exc.with_traceback(None)
                        failed.add(target)
                        errors.append(f"{target.hex()[:8]}: {exc}")
                        _log.info(
                            "target_failed",
                            chunk=job.chunk_id.hex()[:12],
                            share=share,
                            target=target.hex()[:12],
                            error=str(exc),
                        )
                        # One replacement at a time: two packets whose targets failed together must
                        # each see the other's new target, or both could be sent to the same node.
                        async with replacing:
                            current = (
                                dict(enumerate(initial))
                                | {p.share: p.target for p in placed if p is not None}
                                | assigned
                            )
                            current.pop(share, None)
                            keep = job.held + tuple(t for t in current.values() if t not in failed)
                            try:
                                fresh = await self._place(job, 1, keep, frozenset(failed))
                                target = fresh[0]
                            except Exception as placement_error:
                                raise UploadFailed(
                                    f"packet {share} of chunk {job.chunk_id.hex()[:12]}: "
                                    f"{errors[-1]}; and no replacement target: {placement_error}"
                                ) from None
                            assigned[share] = target
                        replaced += 1
                raise UploadFailed(
                    f"packet {share} of chunk {job.chunk_id.hex()[:12]} found no target after "
                    f"{self.max_replacements} replacements: {'; '.join(errors[-3:])}"
                )
            finally:
                self._budget.release(held)

        # The first attempt of every packet is queued at once, with one reply channel (a
        # task and a channel per packet were per-packet costs of a backup's event loop);
        # only packets whose target failed get a task of their own, to find another.
        pending = [(share, target) for share, target in enumerate(initial) if placed[share] is None]
        firsts = await self._store_all(job, pending)
        retry: list[tuple[int, bytes, Exception]] = []
        for (share, target), first in zip(pending, firsts, strict=True):
            if isinstance(first, Exception):
                retry.append((share, target, first))
            else:
                placed[share] = PlacedPacket(share, job.packet_ids[share], target, first)
                sent += len(job.packets[share])
        if retry:  # a nursery only then: opening one per chunk was an event-loop cost
            with collapse_groups():
                async with trio.open_nursery() as nursery:
                    for share, target, first in retry:
                        nursery.start_soon(one, share, target, first)
        result = tuple(p for p in placed if p is not None)
        assert len(result) == len(job.packets)
        self._count("chunks_uploaded")
        self._count("packets_uploaded", len(result))
        self._count("packets_replaced", replaced)
        return ChunkUploaded(
            placed=result, replaced=replaced, bytes_sent=sent, adopted=len(adopted)
        )

    async def _store_all(
        self, job: UploadChunk, pending: list[tuple[int, bytes]]
    ) -> list[bytes | Exception]:
        """Queue packet ``share`` for ``target``, for each pair, and wait for every
        outcome: a receipt, or the error that the sender met."""
        size = sum(len(job.packets[share]) for share, _ in pending)
        held = await self._budget.acquire(size)
        try:
            reply_send, reply_recv = trio.open_memory_channel[tuple[int, bytes | Exception]](
                max(1, len(pending))
            )
            for index, (share, target) in enumerate(pending):
                self._enqueue(
                    target, job.packet_ids[share], job.packets[share], job.policy, reply_send, index
                )
            outcomes: list[bytes | Exception] = [UploadFailed("no answer")] * len(pending)
            for _ in pending:
                index, outcome = await reply_recv.receive()
                outcomes[index] = outcome
            return outcomes
        finally:
            self._budget.release(held)

    def _enqueue(
        self,
        target: bytes,
        packet_id: bytes,
        data: Buffer,
        policy: str,
        reply: trio.MemorySendChannel[tuple[int, bytes | Exception]],
        index: int = 0,
    ) -> None:
        """Put one packet in ``target``'s queue (starting its sender if none runs)."""
        owner_tag = self.identity.packet_owner_tag(packet_id, policy)
        self._waiting.setdefault(target, collections.deque()).append(
            _Outgoing(packet_id, owner_tag, data, reply, index)
        )
        queued = self._queued[target] = self._queued.get(target, 0) + len(data)
        if queued >= BATCH_BYTES and (full := self._full.get(target)) is not None:
            full.set()
        if self._senders.get(target, 0) < SENDERS_PER_TARGET:
            self._senders[target] = self._senders.get(target, 0) + 1
            assert self._nursery is not None, "Uploader.run() must be started first"
            self._nursery.start_soon(self._drain, target)

    async def _store_on(self, target: bytes, packet_id: bytes, data: Buffer, policy: str) -> bytes:
        """Queue one packet for ``target`` and wait for its receipt.

        Packets for one target wait in that target's queue; its senders take whatever is
        queued and send it as one StorePackets frame.  With several chunks uploading at
        once, every target has a few packets waiting, so batches form without any added
        delay, and the per-packet costs of a frame, a task and a journal commit on the
        target are shared.
        """
        reply_send, reply_recv = trio.open_memory_channel[tuple[int, bytes | Exception]](1)
        self._enqueue(target, packet_id, data, policy, reply_send)
        _, outcome = await reply_recv.receive()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _drain(self, target: bytes) -> None:
        """Send what waits for ``target`` in batches; exit when nothing is left.

        Started on demand (at most ``SENDERS_PER_TARGET`` per target), so an idle target
        costs nothing.  Between the emptiness check and the exit there is no checkpoint,
        so a packet queued meanwhile always finds a running sender or starts one.
        """
        try:
            while queue := self._waiting.get(target):
                if self.linger_s > 0 and self._queued.get(target, 0) < BATCH_BYTES:
                    # Let other chunks' packets join, until the batch is full.
                    full = self._full[target] = trio.Event()
                    with trio.move_on_after(linger_for(self.linger_s, len(queue[0].data))):
                        await full.wait()
                    self._full.pop(target, None)
                    queue = self._waiting.get(target)
                    if not queue:
                        continue
                batch = [queue.popleft()]
                size = len(batch[0].data)
                while queue and len(batch) < MAX_PACKETS_PER_BATCH and size < BATCH_BYTES:
                    batch.append(queue.popleft())
                    size += len(batch[-1].data)
                self._queued[target] = self._queued.get(target, size) - size
                try:
                    outcomes = await self._send_batch(target, batch)
                except (PeerError, UploadFailed) as exc:
                    # Kept as a value, without its traceback: the traceback holds this
                    # frame, whose ``outcomes`` holds the error (a cycle), and the frames
                    # of the send, which hold the packets: they would wait for the
                    # cyclic collector (issue 11).
                    outcomes = [exc.with_traceback(None)] * len(batch)
                except BaseException as exc:  # cancelled or a bug: nobody may wait forever
                    gone = UploadFailed(f"upload to {target.hex()[:10]} stopped: {exc!r}")
                    for item in batch:
                        with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                            item.reply.send_nowait((item.index, gone))
                    raise
                for item, outcome in zip(batch, outcomes, strict=True):
                    with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                        item.reply.send_nowait((item.index, outcome))
        finally:
            left = self._senders.get(target, 1) - 1
            if left > 0:
                self._senders[target] = left
            else:
                self._senders.pop(target, None)
                if not self._waiting.get(target):
                    self._waiting.pop(target, None)
                    self._queued.pop(target, None)

    async def _send_batch(self, target: bytes, batch: list[_Outgoing]) -> list[bytes | Exception]:
        if self.rate is not None:
            await self.rate.take(sum(len(i.data) for i in batch))
        link = await self.link_for(target)
        if len(batch) == 1:
            item = batch[0]
            # The packet as the frame's payload piece (a view of the chunk's buffer is
            # sent as it is): the same frame as with ``data=item.data``.
            answer = await link.request(
                lambda rid: StorePacket(
                    request_id=rid,
                    packet_id=item.packet_id,
                    owner_tag=item.owner_tag,
                    data=b"",
                ),
                timeout_s=self.request_timeout_s,
                payload_digest=item.packet_id,  # computed from these bytes by encode_chunk
                payload=[item.data],
            )
            if not isinstance(answer, PacketStored) or answer.packet_id != item.packet_id:
                raise UploadFailed(f"target answered {answer.KIND} to store_packet")
            parts = [PartStored(packet_id=item.packet_id, receipt=answer.receipt)]
        else:
            parts_out = tuple(
                PacketPart(packet_id=i.packet_id, owner_tag=i.owner_tag, size_bytes=len(i.data))
                for i in batch
            )
            # The packets' own buffers: the session joins them once, into the frame.
            batched = await link.request(
                lambda rid: StorePackets(request_id=rid, parts=parts_out, data=b""),
                timeout_s=self.request_timeout_s,
                payload=[i.data for i in batch],
            )
            if not isinstance(batched, PacketsStored) or [r.packet_id for r in batched.results] != [
                i.packet_id for i in batch
            ]:
                raise UploadFailed(f"target answered {batched.KIND} to store_packets")
            parts = list(batched.results)
        outcomes: list[bytes | Exception] = []
        for item, part in zip(batch, parts, strict=True):
            if part.code:
                outcomes.append(RemoteError(part.code, part.message, peer=target.hex()[:10]))
            elif not verify(target, receipt_payload(item.packet_id, len(item.data)), part.receipt):
                outcomes.append(UploadFailed("target's receipt does not verify under its node id"))
            else:
                outcomes.append(part.receipt)
        self._count("store_batches")
        return outcomes
