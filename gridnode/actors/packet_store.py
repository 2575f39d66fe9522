"""The packet store actor (claims 1, 9, 13, 16, 18): both sides of keeping packets.

Source side: ``UploadChunk`` sends a chunk's n packets to the n targets the sequencer
chose, concurrently, under a per-target window (the link's in-flight window) and a
node-wide byte budget, so memory stays flat whatever the backup size.  A target that
fails (gone, full, timed out) is replaced: the sequencer is asked for another target
excluding every one that failed, and the change is part of the returned placement.

Target side: ``StorePacket`` from a peer is verified (the id is the BLAKE3 of the
bytes), checked against the allocation and written atomically into the packet
directory; only then is its owner tag recorded, and the answer is a receipt signed
with this node's key.  ``FetchPacket`` serves a packet only if it still hashes to its
id.  ``DeletePacket`` needs the delete secret whose hash came with the packet.
Recovery roots (``PutRoot``/``GetRoot``) live here too: a root is kept only at the
locator derived from its verification key and signed by it, counts against the
allocation, and is charged to the peer that delivered it (see ``storage.holdings``).

Backpressure: every call holds a slot of ``concurrency``; disk work runs in worker
threads under a shared limiter.  Cancellation: an upload cancelled mid-way leaves only
complete packets on targets (they write atomically); the caller records nothing.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from protocol import (
    MAX_PACKETS_PER_BATCH,
    DeletePacket,
    Error,
    FetchPacket,
    GetRoot,
    Message,
    PacketData,
    PacketDeleted,
    PacketPart,
    PacketsStored,
    PacketStored,
    PartStored,
    PutRoot,
    RootData,
    RootStored,
    StorePacket,
    StorePackets,
    receipt_payload,
    root_locator,
    sign,
    verify,
)

from ..byte_budget import ByteBudget
from ..errors import GridError, PeerError, RemoteError
from ..exception_groups import collapse_groups
from ..identity import NodeIdentity
from ..log import get_logger
from ..ratelimit import RateLimiter
from ..storage.holdings import Holdings, RootRefused, StoredRoot
from ..storage.packets import (
    AllocationFull,
    OverQuota,
    PacketDirectory,
    PacketIdMismatch,
    PacketStoreError,
)
from .calls import Call, serve_calls

__all__ = [
    "ChunkUploaded",
    "PacketStore",
    "PlacedPacket",
    "UploadChunk",
    "UploadFailed",
    "root_signature_payload",
]

_log = get_logger(actor="packet_store")


class UploadFailed(GridError):
    """A chunk could not get all of its packets stored; nothing about it is recorded."""


@attrs.frozen
class PlacedPacket:
    share: int
    packet_id: bytes
    target: bytes
    receipt: bytes


@attrs.frozen
class UploadChunk:
    chunk_id: bytes
    packets: tuple[bytes, ...]
    packet_ids: tuple[bytes, ...]
    targets: tuple[bytes, ...]
    rules: Any  # PlacementRules: the same rules govern any replacement target
    packet_bytes: int
    policy: str = ""  # the catalog's policy key: scopes the packets' delete secrets
    #: Targets already holding other packets of this chunk (repair uploads only the lost
    #: ones): a replacement must obey the pairwise rules together with them too.
    held: tuple[bytes, ...] = ()


@attrs.frozen
class ChunkUploaded:
    placed: tuple[PlacedPacket, ...]
    replaced: int
    bytes_sent: int


#: At most this many packets are written in one group commit.
WRITE_BATCH = 32


@attrs.frozen
class _Write:
    packet_id: bytes
    owner_tag: bytes
    data: bytes | memoryview
    digest: bytes | None
    reply: trio.MemorySendChannel[bool | PacketStoreError]
    #: Whose usage the packet counts against here (a keyed hash of the peer), and that
    #: source's quota (None: not limited, as on an open grid).
    source: bytes = b""
    quota: int | None = None


@attrs.frozen
class _Outgoing:
    packet_id: bytes
    owner_tag: bytes
    data: bytes
    reply: trio.MemorySendChannel[bytes | Exception]


#: One batch in flight per target: packets that arrive meanwhile form the next batch, so
#: a slow target (a busy disk, a long link) is sent fewer, larger frames, and a fast one
#: is never kept waiting (there is no artificial delay).
SENDERS_PER_TARGET = 1
#: Stop adding packets to a batch beyond this many bytes.
BATCH_BYTES = 1024 * 1024


@attrs.frozen
class TargetRequest:
    """A request from a peer (target side), answered with a response message."""

    msg: Message
    payload_digest: bytes | None
    #: The node id of the authenticated session it came on: what a held recovery root and
    #: the source's usage here are charged to (as a keyed hash; which packet came from
    #: whom is not recorded).
    peer: bytes
    #: The peer's source quota from its certificate (None: open grid).
    quota: int | None = None


def root_signature_payload(locator: bytes, version: int, sealed: bytes) -> bytes:
    import blake3

    return (
        b"gridnode recovery root v1\x00"
        + locator
        + version.to_bytes(8, "big")
        + (blake3.blake3(sealed).digest())
    )


#: (job, targets kept, exclude) -> a replacement target; raises PlacementError when none is left.
Replace = Callable[[UploadChunk, tuple[bytes, ...], frozenset[bytes]], Awaitable[bytes]]
#: node id -> an open link to it (dials through the transport).
LinkFor = Callable[[bytes], Awaitable[Any]]


@attrs.define
class PacketStore:
    identity: NodeIdentity
    packets: PacketDirectory
    holdings: Holdings
    inbound: trio.MemoryReceiveChannel[Call[Any]]
    link_for: LinkFor
    replace_target: Replace
    disk_limiter: trio.CapacityLimiter
    upload_budget_bytes: int = 24 * 1024 * 1024
    request_timeout_s: float = 30.0
    max_replacements: int = 12
    concurrency: int = 32
    on_free_bytes_changed: Callable[[int], None] | None = None
    #: The subscription's bandwidth allocation for uploads (None: unlimited).
    rate: RateLimiter | None = None
    _budget: ByteBudget = attrs.field(init=False)
    stats: dict[str, int] = attrs.field(factory=dict)
    _writes_send: trio.MemorySendChannel[_Write] = attrs.field(init=False)
    _writes_recv: trio.MemoryReceiveChannel[_Write] = attrs.field(init=False)
    _waiting: dict[bytes, collections.deque[_Outgoing]] = attrs.field(factory=dict)
    _senders: dict[bytes, int] = attrs.field(factory=dict)
    _nursery: trio.Nursery | None = None

    def __attrs_post_init__(self) -> None:
        self._budget = ByteBudget(self.upload_budget_bytes)
        self._writes_send, self._writes_recv = trio.open_memory_channel[_Write](WRITE_BATCH)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._write_batches)
            await serve_calls(
                self.inbound, self._handle, concurrency=self.concurrency, task_status=task_status
            )
            nursery.cancel_scope.cancel()

    async def _write_batches(self) -> None:
        """Group commit on the target: packets that arrive together are written together.

        Every StorePacket handler queues its packet here and waits.  This task takes
        whatever is queued (no artificial delay: under load batches form by themselves)
        and stores it with one worker-thread hop and one round of directory fsyncs, which
        on a journaling file system is one journal commit for the whole batch.
        """
        async with self._writes_recv:
            async for first in self._writes_recv:
                batch = [first]
                while len(batch) < WRITE_BATCH:
                    try:
                        batch.append(self._writes_recv.receive_nowait())
                    except trio.WouldBlock:
                        break

                def write(items: list[_Write] = batch) -> list[bool | PacketStoreError]:
                    # A source over its quota here is refused before its bytes are written
                    # (batches are written one at a time, so the check cannot race).
                    planned: dict[bytes, int] = {}
                    accepted: list[_Write] = []
                    refused: dict[int, PacketStoreError] = {}
                    for index, w in enumerate(items):
                        if w.quota is not None:
                            used = planned.get(w.source)
                            if used is None:
                                used = self.holdings.source_bytes(w.source)
                            if used + len(w.data) > w.quota:
                                refused[index] = OverQuota(
                                    f"the source keeps {used} bytes here and its "
                                    f"subscription allows {w.quota}"
                                )
                                continue
                            planned[w.source] = used + len(w.data)
                        accepted.append(w)
                    stored = iter(
                        self.packets.put_each([(w.packet_id, w.data, w.digest) for w in accepted])
                    )
                    outcomes = [
                        refused[i] if i in refused else next(stored) for i in range(len(items))
                    ]
                    # Tags only for packets verified and held (stored now or already):
                    # a refused packet must not leave a tag that keeps a packet alive.
                    kept = [
                        w
                        for w, outcome in zip(items, outcomes, strict=True)
                        if isinstance(outcome, bool)
                    ]
                    held = [(w.packet_id, w.owner_tag) for w in kept]
                    charges = [(w.source, len(w.data)) for w in kept]
                    try:
                        self.holdings.add_tags(held, charges)
                    except Exception:
                        # Nobody could ever delete a packet stored now without its tag:
                        # drop it again; the source is told and places it elsewhere.
                        for w, outcome in zip(items, outcomes, strict=True):
                            if outcome is True:
                                with contextlib.suppress(OSError):
                                    self.packets.delete(w.packet_id)
                        raise
                    return outcomes

                try:
                    outcomes = await trio.to_thread.run_sync(write, limiter=self.disk_limiter)
                except Exception as exc:  # e.g. the holdings database failed: tell everyone
                    outcomes = [PacketStoreError(str(exc)) for _ in batch]
                self._count("write_batches")
                for item, outcome in zip(batch, outcomes, strict=True):
                    with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                        item.reply.send_nowait(outcome)

    async def _handle(self, payload: Any) -> Any:
        if isinstance(payload, UploadChunk):
            return await self._upload_chunk(payload)
        if isinstance(payload, TargetRequest):
            return await self._serve_peer(
                payload.msg, payload.payload_digest, payload.peer, payload.quota
            )
        raise TypeError(f"packet store cannot handle {type(payload).__name__}")

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    # --- source side ------------------------------------------------------------------------

    async def _upload_chunk(self, job: UploadChunk) -> ChunkUploaded:
        placed: list[PlacedPacket | None] = [None] * len(job.packets)
        failed: set[bytes] = set()
        assigned: dict[int, bytes] = {}
        replacing = trio.Lock()
        replaced = 0
        sent = 0
        errors: list[str] = []

        async def one(share: int, target: bytes) -> None:
            nonlocal replaced, sent
            data, packet_id = job.packets[share], job.packet_ids[share]
            held = await self._budget.acquire(len(data))
            try:
                for _attempt in range(self.max_replacements + 1):
                    try:
                        receipt = await self._store_on(target, packet_id, data, job.policy)
                        placed[share] = PlacedPacket(share, packet_id, target, receipt)
                        sent += len(data)
                        return
                    except (PeerError, UploadFailed) as exc:
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
                                dict(enumerate(job.targets))
                                | {p.share: p.target for p in placed if p is not None}
                                | assigned
                            )
                            current.pop(share, None)
                            keep = job.held + tuple(t for t in current.values() if t not in failed)
                            try:
                                target = await self.replace_target(job, keep, frozenset(failed))
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

        with collapse_groups():
            async with trio.open_nursery() as nursery:
                for share, target in enumerate(job.targets):
                    nursery.start_soon(one, share, target)
        result = tuple(p for p in placed if p is not None)
        assert len(result) == len(job.packets)
        self._count("chunks_uploaded")
        self._count("packets_uploaded", len(result))
        self._count("packets_replaced", replaced)
        return ChunkUploaded(placed=result, replaced=replaced, bytes_sent=sent)

    async def _store_on(self, target: bytes, packet_id: bytes, data: bytes, policy: str) -> bytes:
        """Queue one packet for ``target`` and wait for its receipt.

        Packets for one target wait in that target's queue; its senders take whatever is
        queued and send it as one StorePackets frame.  With several chunks uploading at
        once, every target has a few packets waiting, so batches form without any added
        delay, and the per-packet costs of a frame, a task and a journal commit on the
        target are shared.
        """
        owner_tag = self.identity.packet_owner_tag(packet_id, policy)
        reply_send, reply_recv = trio.open_memory_channel[bytes | Exception](1)
        self._waiting.setdefault(target, collections.deque()).append(
            _Outgoing(packet_id, owner_tag, data, reply_send)
        )
        if self._senders.get(target, 0) < SENDERS_PER_TARGET:
            self._senders[target] = self._senders.get(target, 0) + 1
            assert self._nursery is not None, "PacketStore.run() must be started first"
            self._nursery.start_soon(self._drain, target)
        outcome = await reply_recv.receive()
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
                batch = [queue.popleft()]
                size = len(batch[0].data)
                while queue and len(batch) < MAX_PACKETS_PER_BATCH and size < BATCH_BYTES:
                    batch.append(queue.popleft())
                    size += len(batch[-1].data)
                try:
                    outcomes = await self._send_batch(target, batch)
                except (PeerError, UploadFailed) as exc:
                    outcomes = [exc] * len(batch)
                except BaseException as exc:  # cancelled or a bug: nobody may wait forever
                    gone = UploadFailed(f"upload to {target.hex()[:10]} stopped: {exc!r}")
                    for item in batch:
                        with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                            item.reply.send_nowait(gone)
                    raise
                for item, outcome in zip(batch, outcomes, strict=True):
                    with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                        item.reply.send_nowait(outcome)
        finally:
            left = self._senders.get(target, 1) - 1
            if left > 0:
                self._senders[target] = left
            else:
                self._senders.pop(target, None)
                if not self._waiting.get(target):
                    self._waiting.pop(target, None)

    async def _send_batch(self, target: bytes, batch: list[_Outgoing]) -> list[bytes | Exception]:
        if self.rate is not None:
            await self.rate.take(sum(len(i.data) for i in batch))
        link = await self.link_for(target)
        if len(batch) == 1:
            item = batch[0]
            answer = await link.request(
                lambda rid: StorePacket(
                    request_id=rid,
                    packet_id=item.packet_id,
                    owner_tag=item.owner_tag,
                    data=item.data,
                ),
                timeout_s=self.request_timeout_s,
                payload_digest=item.packet_id,  # computed from these bytes by encode_chunk
            )
            if not isinstance(answer, PacketStored) or answer.packet_id != item.packet_id:
                raise UploadFailed(f"target answered {answer.KIND} to store_packet")
            parts = [PartStored(packet_id=item.packet_id, receipt=answer.receipt)]
        else:
            parts_out = tuple(
                PacketPart(packet_id=i.packet_id, owner_tag=i.owner_tag, size_bytes=len(i.data))
                for i in batch
            )
            payload = b"".join(i.data for i in batch)
            batched = await link.request(
                lambda rid: StorePackets(request_id=rid, parts=parts_out, data=payload),
                timeout_s=self.request_timeout_s,
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

    # --- target side --------------------------------------------------------------------------

    async def _serve_peer(
        self, msg: Message, digest: bytes | None, peer: bytes, quota: int | None = None
    ) -> Message:
        if isinstance(msg, StorePacket | StorePackets):
            source = self.identity.root_owner_tag(peer)
            if isinstance(msg, StorePacket):
                return await self._keep(msg, digest, source, quota)
            return await self._keep_many(msg, source, quota)
        if isinstance(msg, FetchPacket):
            data = await trio.to_thread.run_sync(
                self.packets.get, msg.packet_id, limiter=self.disk_limiter
            )
            if data is None:
                self._count("fetch_misses")
                raise RemoteError("not_found", "packet not held here (or failed verification)")
            self._count("packets_served")
            self._count("bytes_served", len(data))  # metered: credited as served storage
            return PacketData(request_id=msg.request_id, packet_id=msg.packet_id, data=data)
        if isinstance(msg, DeletePacket):
            return await self._delete(msg, self.identity.root_owner_tag(peer))
        if isinstance(msg, PutRoot):
            return await self._put_root(msg, peer)
        if isinstance(msg, GetRoot):
            root = await trio.to_thread.run_sync(
                self.holdings.get_root, msg.locator, limiter=self.disk_limiter
            )
            if root is None:
                raise RemoteError("not_found", "no root at this locator")
            return RootData(
                request_id=msg.request_id,
                locator=root.locator,
                version=root.version,
                verify_key=root.verify_key,
                signature=root.signature,
                sealed=root.sealed,
            )
        return Error(
            request_id=getattr(msg, "request_id", 0),
            code="unsupported",
            message=f"{msg.KIND} is not a request this node serves",
        )

    async def _write(
        self,
        packet_id: bytes,
        owner_tag: bytes,
        data: bytes | memoryview,
        digest: bytes | None,
        source: bytes = b"",
        quota: int | None = None,
    ) -> bool | PacketStoreError:
        reply_send, reply_recv = trio.open_memory_channel[bool | PacketStoreError](1)
        await self._writes_send.send(
            _Write(packet_id, owner_tag, data, digest, reply_send, source, quota)
        )
        return await reply_recv.receive()

    async def _keep_many(
        self, msg: StorePackets, source: bytes = b"", quota: int | None = None
    ) -> PacketsStored:
        if sum(p.size_bytes for p in msg.parts) != len(msg.data):
            raise RemoteError("malformed", "part sizes do not add up to the payload")
        view = memoryview(msg.data)
        offset = 0
        slices = []
        for part in msg.parts:
            slices.append(view[offset : offset + part.size_bytes])
            offset += part.size_bytes
        outcomes: list[bool | PacketStoreError | None] = [None] * len(msg.parts)

        async def one(index: int) -> None:
            part = msg.parts[index]
            outcomes[index] = await self._write(
                part.packet_id, part.owner_tag, slices[index], None, source, quota
            )

        async with trio.open_nursery() as nursery:
            for index in range(len(msg.parts)):
                nursery.start_soon(one, index)
        results = []
        for part, outcome in zip(msg.parts, outcomes, strict=True):
            if isinstance(outcome, PacketStoreError) or outcome is None:
                code, text = self._refusal(outcome)
                results.append(PartStored(packet_id=part.packet_id, code=code, message=text[:500]))
            else:
                self._count("packets_stored")
                receipt = sign(
                    self.identity.signing_key, receipt_payload(part.packet_id, part.size_bytes)
                )
                results.append(PartStored(packet_id=part.packet_id, receipt=receipt))
        free = self.packets.free_bytes
        if self.on_free_bytes_changed is not None:
            self.on_free_bytes_changed(free)
        return PacketsStored(request_id=msg.request_id, results=tuple(results), free_bytes=free)

    def _refusal(self, outcome: PacketStoreError | None) -> tuple[str, str]:
        if isinstance(outcome, AllocationFull):
            self._count("store_refused_full")
            return "allocation_full", str(outcome)
        if isinstance(outcome, PacketIdMismatch):
            return "id_mismatch", str(outcome)
        if isinstance(outcome, OverQuota):
            self._count("store_refused_quota")
            return "over_quota", str(outcome)
        return "storage_error", str(outcome) if outcome is not None else "not stored"

    async def _keep(
        self,
        msg: StorePacket,
        digest: bytes | None,
        source: bytes = b"",
        quota: int | None = None,
    ) -> PacketStored:
        if digest is not None and digest != msg.packet_id:
            # The session already hashed the payload; a mismatch needs no second hash.
            raise RemoteError("id_mismatch", "packet bytes do not hash to its id")
        outcome = await self._write(msg.packet_id, msg.owner_tag, msg.data, digest, source, quota)
        try:
            if isinstance(outcome, PacketStoreError):
                raise outcome
        except OverQuota as exc:
            self._count("store_refused_quota")
            raise RemoteError("over_quota", str(exc)) from None
        except AllocationFull as exc:
            self._count("store_refused_full")
            raise RemoteError("allocation_full", str(exc)) from None
        except PacketIdMismatch as exc:
            raise RemoteError("id_mismatch", str(exc)) from None
        except PacketStoreError as exc:
            raise RemoteError("storage_error", str(exc)) from None
        self._count("packets_stored")
        free = self.packets.free_bytes
        if self.on_free_bytes_changed is not None:
            self.on_free_bytes_changed(free)
        receipt = sign(self.identity.signing_key, receipt_payload(msg.packet_id, len(msg.data)))
        return PacketStored(
            request_id=msg.request_id,
            packet_id=msg.packet_id,
            size_bytes=len(msg.data),
            receipt=receipt,
            free_bytes=free,
        )

    async def _delete(self, msg: DeletePacket, source: bytes = b"") -> PacketDeleted:
        """Withdraw the owner's tag (its secret proves it is the owner's), and the packet's
        bytes from the deleting source's usage here; the packet goes with its last tag."""
        import blake3

        tag = blake3.blake3(msg.owner_secret).digest()

        def remove() -> bool:
            path = self.packets.path_for(msg.packet_id)
            try:
                size = path.stat().st_size
            except OSError:
                size = 0
            present, left = self.holdings.remove_tag(msg.packet_id, tag, source=source, size=size)
            if not present:
                return False
            if left == 0:
                self.packets.delete(msg.packet_id)
            return True

        removed = await trio.to_thread.run_sync(remove, limiter=self.disk_limiter)
        if removed and self.on_free_bytes_changed is not None:
            self.on_free_bytes_changed(self.packets.free_bytes)
        return PacketDeleted(request_id=msg.request_id, packet_id=msg.packet_id, removed=removed)

    async def _put_root(self, msg: PutRoot, peer: bytes) -> RootStored:
        """Keep a recovery root: only at its key's locator, only signed by that key, within
        the allocation and the delivering peer's limits (``storage.holdings``)."""
        if msg.locator != root_locator(msg.verify_key):
            raise RemoteError(
                "bad_locator", "a root's locator must be the hash of its verification key"
            )
        payload = root_signature_payload(msg.locator, msg.version, msg.sealed)
        if not verify(msg.verify_key, payload, msg.signature):
            raise RemoteError("bad_signature", "root signature does not verify")
        root = StoredRoot(msg.locator, msg.version, msg.verify_key, msg.signature, msg.sealed)
        owner = self.identity.root_owner_tag(peer)

        def keep() -> None:
            reserved = grown = 0

            def charge(delta: int) -> None:
                nonlocal reserved
                if delta > 0:
                    self.packets.reserve(delta)
                    reserved = delta

            try:
                grown = self.holdings.put_root(root, owner=owner, charge=charge)
            finally:
                self.packets.settle(reserved, grown)

        try:
            await trio.to_thread.run_sync(keep, limiter=self.disk_limiter)
        except AllocationFull as exc:
            self._count("roots_refused_full")
            raise RemoteError("allocation_full", f"no room for this recovery root: {exc}") from None
        except RootRefused as exc:
            self._count("roots_refused")
            raise RemoteError(exc.code, str(exc)) from None
        self._count("roots_stored")
        if self.on_free_bytes_changed is not None:
            self.on_free_bytes_changed(self.packets.free_bytes)
        return RootStored(request_id=msg.request_id, locator=msg.locator, version=msg.version)


def describe_targets(targets: Sequence[bytes]) -> str:
    return ", ".join(t.hex()[:8] for t in targets)
