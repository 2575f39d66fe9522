"""The packet store actor (claims 1, 9, 13, 16, 18): the target side of keeping packets.

The source side, taking a chunk's packets to their targets, is the uploader
(``actors.uploader``).

``StorePacket`` from a peer is verified (the id is the BLAKE3 of the bytes: hashed once,
by the session for a lone packet whose digest it checked, or here for each packet of a
``StorePackets`` batch, whose sealed header names every packet's id and length), checked
against the allocation and written atomically into the packet directory from views into
the received payload (no further copy); only then is its owner tag recorded, and the
answer is a receipt signed with this node's key.  ``FetchPacket`` serves a packet only if
it still hashes to its id; ``FetchPackets`` serves several so, read in one worker-thread
hop and answered in one frame.  ``DeletePacket`` needs the delete secret whose hash came with
the packet.  Recovery roots (``PutRoot``/``GetRoot``) live here too: a root is kept only
at the locator derived from its verification key and signed by it, counts against the
allocation, and is charged to the peer that delivered it (see ``storage.holdings``).

Backpressure: every call holds a slot of ``concurrency``; disk work runs in worker
threads under a shared limiter.  Cancellation: a packet is written atomically, so a
cancelled write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import attrs
import trio
from outcome import Outcome

from protocol import (
    MAX_BATCH_BYTES,
    AdoptPackets,
    DeletePacket,
    Error,
    FetchedPart,
    FetchPacket,
    FetchPackets,
    GetRoot,
    LeasesRenewed,
    Message,
    PacketData,
    PacketDeleted,
    PacketsData,
    PacketsStored,
    PacketStored,
    PartStored,
    PutRoot,
    RenewLeases,
    RootData,
    RootStored,
    StorePacket,
    StorePackets,
    receipt_payload,
    root_locator,
    sign,
    verify,
)

from ..dedup_group import adopt_held, adopted_answer
from ..errors import RemoteError
from ..identity import NodeIdentity
from ..log import get_logger
from ..storage.collector import Collected, collect
from ..storage.holdings import Holdings, RootRefused, StoredRoot
from ..storage.packets import (
    AllocationFull,
    OverQuota,
    PacketDirectory,
    PacketIdMismatch,
    PacketStoreError,
)
from .calls import Handlers, Inbox, Reply, Request, serve_calls

__all__ = ["PacketStore", "TargetRequest", "root_signature_payload"]

_log = get_logger(component="packet_store")


#: At most this many packets are written in one group commit.
WRITE_BATCH = 32
#: A ``PacketsData`` answer holds at most this many packet bytes (the frame limit, less
#: room for its header).
FETCH_ANSWER_BYTES = MAX_BATCH_BYTES - 64 * 1024

T = TypeVar("T")


@trio.lowlevel.enable_ki_protection
async def _in_thread(fn: Callable[[], T], limiter: trio.CapacityLimiter) -> T:
    """``trio.to_thread.run_sync(fn, limiter=limiter)`` with less work on the event loop.

    A target makes one such hop per request it stores, so what the hop costs on the
    loop is paid per packet (issue 11).  This one takes a free slot of ``limiter``
    without a checkpoint and skips what the group commit has no use for: a copy of the
    task's context, naming the worker thread (two ``prctl`` calls per hop) and the
    ``trio.from_thread`` plumbing.  Like ``to_thread.run_sync`` it waits for ``fn``
    when cancelled: a batch under way is finished and its handlers are told.
    """
    borrower = object()
    try:
        limiter.acquire_on_behalf_of_nowait(borrower)
    except trio.WouldBlock:
        await limiter.acquire_on_behalf_of(borrower)
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def back(result: Outcome[T]) -> None:  # in the event loop's thread
        limiter.release_on_behalf_of(borrower)
        trio.lowlevel.reschedule(task, result)

    def deliver(result: Outcome[T]) -> None:  # in the worker thread
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(back, result)

    try:
        trio.lowlevel.start_thread_soon(fn, deliver)
    except BaseException:
        limiter.release_on_behalf_of(borrower)
        raise
    result: T = await trio.lowlevel.wait_task_rescheduled(
        lambda _: trio.lowlevel.Abort.FAILED  # the thread cannot be stopped: wait for it
    )
    return result


class _Pending:
    """The outcomes of one request's packets; its handler is woken once all are in.

    One per request, shared by its packets (a channel per packet, or per frame, cost
    more than the bookkeeping it did: issue 11)."""

    __slots__ = ("left", "outcomes", "reply")

    def __init__(self, count: int) -> None:
        self.outcomes: list[bool | PacketStoreError | None] = [None] * count
        self.left = count
        self.reply = Reply()

    def deliver(self, index: int, outcome: bool | PacketStoreError) -> None:
        if self.outcomes[index] is not None:
            return
        self.outcomes[index] = outcome
        self.left -= 1
        if self.left == 0:
            self.reply.send_nowait(None)

    async def wait(self) -> list[bool | PacketStoreError | None]:
        if self.left:
            await self.reply.wait()
        return self.outcomes


@attrs.frozen
class _Write:
    packet_id: bytes
    owner_tag: bytes
    data: bytes | memoryview
    digest: bytes | None
    #: Where the outcome goes, at ``index``: the parts of one frame share one.
    pending: _Pending
    #: Whose usage the packet counts against here (a keyed hash of the peer), and that
    #: source's quota (None: not limited, as on an open grid).
    source: bytes = b""
    quota: int | None = None
    #: Whether the source can renew leases (its protocol has ``RenewLeases``): a tag from
    #: one that cannot is held without a lease, or its packets would run out under it.
    leased: bool = True
    index: int = 0


@attrs.frozen
class TargetRequest(Request[Message]):
    """A request from a peer (target side), answered with a response message."""

    msg: Message
    payload_digest: bytes | None
    #: The node id of the authenticated session it came on: what a held recovery root and
    #: the source's usage here are charged to (as a keyed hash; which packet came from
    #: whom is not recorded).
    peer: bytes
    #: The peer's source quota from its certificate (None: open grid).
    quota: int | None = None
    #: Whether the peer can renew leases (see ``_Write.leased``).
    leased: bool = True


def root_signature_payload(locator: bytes, version: int, sealed: bytes) -> bytes:
    import blake3

    return (
        b"gridnode recovery root v1\x00"
        + locator
        + version.to_bytes(8, "big")
        + (blake3.blake3(sealed).digest())
    )


@attrs.define
class PacketStore:
    identity: NodeIdentity
    packets: PacketDirectory
    holdings: Holdings
    inbound: Inbox
    disk_limiter: trio.CapacityLimiter
    concurrency: int = 32
    on_free_bytes_changed: Callable[[int], None] | None = None
    stats: dict[str, int] = attrs.field(factory=dict)
    #: The longest lease this holder grants (``lease_s``), the wait after a lease ended
    #: before its packet goes (``lease_grace_s``), and how often the collector runs (0:
    #: never; ``lease_sweep_interval_s``).
    lease_s: float = 60 * 86400.0
    lease_grace_s: float = 86400.0
    sweep_interval_s: float = 0.0
    clock: Callable[[], float] = time.time
    #: Held around "put the file, record the tag" and "drop the tag, drop the file", so a
    #: packet stored again is never deleted under its new tag (``storage.collector``).
    keep_lock: threading.Lock = attrs.field(factory=threading.Lock)
    #: Draining before a graceful leave (``gridnode.leave``): new packets are refused.
    leaving: bool = False
    _writes_send: trio.MemorySendChannel[_Write] = attrs.field(init=False)
    _writes_recv: trio.MemoryReceiveChannel[_Write] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._writes_send, self._writes_recv = trio.open_memory_channel[_Write](WRITE_BATCH)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_batches)
            if self.sweep_interval_s > 0:
                nursery.start_soon(self._collect_periodically)
            await serve_calls(
                self.inbound,
                Handlers("packet store").on(TargetRequest, self._handle),
                concurrency=self.concurrency,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()

    async def _collect_periodically(self) -> None:
        """Reclaim what no lease holds any more: expired tags at every run, and once a day
        (and at the first run) a walk over the packet directory for untagged packets."""
        disk_every = max(1, round(86400 / self.sweep_interval_s))
        runs = 0
        while True:
            await trio.sleep(self.sweep_interval_s)
            try:
                await self.collect_now(sweep_disk=runs % disk_every == 0)
            except Exception as exc:  # a failing disk must not stop the store serving
                _log.warning("collector_failed", error=str(exc)[:300])
            runs += 1

    async def collect_now(self, *, sweep_disk: bool = True) -> Collected:
        """Run the collector once (``storage.collector``); logs what it reclaimed."""
        done = await trio.to_thread.run_sync(
            lambda: collect(
                self.packets,
                self.holdings,
                self.keep_lock,
                self.clock(),
                grace_s=self.lease_grace_s,
                sweep_disk=sweep_disk,
            ),
            limiter=self.disk_limiter,
        )
        self._count("leases_expired", done.leases_expired)
        self._count("packets_reclaimed", done.packets_reclaimed)
        self._count("bytes_reclaimed", done.bytes_reclaimed)
        if done.packets_reclaimed or done.leases_expired:
            _log.info("packets_reclaimed", **done.to_json())
            if self.on_free_bytes_changed is not None:
                self.on_free_bytes_changed(self.packets.free_bytes)
        return done

    async def _write_batches(self) -> None:
        """Group commit on the target: packets that arrive together are written together.

        Every StorePacket handler queues its packet here and waits.  This task takes
        whatever is queued (no artificial delay: under load batches form by themselves)
        and stores it with one worker-thread hop and one round of directory fsyncs, which
        on a journaling file system is one journal commit for the whole batch.
        """
        async with self._writes_recv:
            while True:
                # What is queued already is taken without a checkpoint (the thread hop
                # below is one, so this loop always yields once per batch).
                try:
                    first = self._writes_recv.receive_nowait()
                except trio.WouldBlock:
                    try:
                        first = await self._writes_recv.receive()
                    except trio.EndOfChannel:
                        return
                except trio.EndOfChannel:
                    return
                batch = [first]
                while len(batch) < WRITE_BATCH:
                    try:
                        batch.append(self._writes_recv.receive_nowait())
                    except trio.WouldBlock:
                        break

                def write(items: list[_Write] = batch) -> list[bool | PacketStoreError]:
                    # A source over its quota here is refused before its bytes are written.
                    # The usage is read under ``keep_lock``, which adoptions (a dedup
                    # group's ``AdoptPackets``) take too: read before it, an adoption
                    # between the check and the tags let a source pass its quota.
                    with self.keep_lock:
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
                        return self._store_locked(items, accepted, refused)

                try:
                    outcomes = await _in_thread(write, self.disk_limiter)
                except Exception as exc:  # e.g. the holdings database failed: tell everyone
                    outcomes = [PacketStoreError(str(exc)) for _ in batch]
                self._count("write_batches")
                for item, outcome in zip(batch, outcomes, strict=True):
                    item.pending.deliver(item.index, outcome)

    def _store_locked(
        self, items: list[_Write], accepted: list[_Write], refused: dict[int, PacketStoreError]
    ) -> list[bool | PacketStoreError]:
        """Write the accepted packets, then record their tags (under ``keep_lock``)."""
        stored = iter(self.packets.put_each([(w.packet_id, w.data, w.digest) for w in accepted]))
        outcomes = [refused[i] if i in refused else next(stored) for i in range(len(items))]
        # Tags only for packets verified and held (stored now or already): a refused
        # packet must not leave a tag that keeps a packet alive.
        kept = [w for w, outcome in zip(items, outcomes, strict=True) if isinstance(outcome, bool)]
        expires = self.clock() + self.lease_s
        try:
            for leased in (True, False):
                group = [w for w in kept if w.leased is leased]
                if group:
                    self.holdings.add_tags(
                        [(w.packet_id, w.owner_tag) for w in group],
                        [(w.source, len(w.data)) for w in group],
                        expires=expires if leased else None,
                    )
        except Exception:
            # Nobody could ever delete a packet stored now without its tag: drop it
            # again; the source is told and places it elsewhere.
            for w, outcome in zip(items, outcomes, strict=True):
                if outcome is True:
                    with contextlib.suppress(OSError):
                        self.packets.delete(w.packet_id)
            raise
        return outcomes

    async def _handle(self, request: TargetRequest) -> Message:
        return await self._serve_peer(
            request.msg, request.payload_digest, request.peer, request.quota, request.leased
        )

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    # --- target side --------------------------------------------------------------------------

    async def _serve_peer(
        self,
        msg: Message,
        digest: bytes | None,
        peer: bytes,
        quota: int | None = None,
        leased: bool = True,
    ) -> Message:
        if isinstance(msg, StorePacket | StorePackets):
            if self.leaving:  # the uploader places the packet elsewhere
                self._count("store_refused_leaving")
                raise RemoteError("leaving", "this node is leaving the grid: no new packets")
            source = self.identity.root_owner_tag(peer)
            if isinstance(msg, StorePacket):
                return await self._keep(msg, digest, source, quota, leased)
            return await self._keep_many(msg, source, quota, leased)
        if isinstance(msg, RenewLeases):
            return await self._renew(msg, self.identity.root_owner_tag(peer))
        if isinstance(msg, AdoptPackets):  # a dedup group's second source: gridnode.dedup_group
            if self.leaving:  # the source uploads the packet elsewhere
                raise RemoteError("leaving", "this node is leaving the grid: no new packets")
            adopt = functools.partial(
                adopt_held,
                *(self.packets, self.holdings, self.keep_lock, msg.parts),
                source=self.identity.root_owner_tag(peer),
                quota=quota,
                expires=self.clock() + self.lease_s if leased else None,
            )
            codes = await trio.to_thread.run_sync(adopt, limiter=self.disk_limiter)
            self._count("adoptions_served", codes.count(""))
            return adopted_answer(msg, codes, self.identity.signing_key)
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
        if isinstance(msg, FetchPackets):
            return await self._serve_many(msg)
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

    async def _serve_many(self, msg: FetchPackets) -> PacketsData:
        """Every packet asked that is held intact, read in one worker-thread hop (one
        hop per packet was a third of a holder's CPU serving a restore).  The answer
        stays under ``MAX_BATCH_BYTES`` (a packet past it is answered "later", for the
        asker to ask again) and names each packet's length, so the asker checks each one
        against its id."""

        def read() -> tuple[list[FetchedPart], list[bytes]]:
            parts: list[FetchedPart] = []
            found: list[bytes] = []
            total = 0
            for wanted in msg.wanted:
                data = self.packets.get(wanted.packet_id)
                if data is None:
                    parts.append(FetchedPart(packet_id=wanted.packet_id, code="not_found"))
                elif total + len(data) > FETCH_ANSWER_BYTES:
                    parts.append(FetchedPart(packet_id=wanted.packet_id, code="later"))
                else:
                    total += len(data)
                    found.append(data)
                    parts.append(FetchedPart(packet_id=wanted.packet_id, size_bytes=len(data)))
            return parts, found

        parts, found = await trio.to_thread.run_sync(read, limiter=self.disk_limiter)
        misses = sum(part.code == "not_found" for part in parts)
        if misses:
            self._count("fetch_misses", misses)
        if found:
            self._count("packets_served", len(found))
            self._count("bytes_served", sum(map(len, found)))  # metered as served storage
        # The parts' bytes joined once; the frame carries that buffer as it is, or masked
        # in one pass when this node dialled the link (``masking.send_pieces``).
        return PacketsData(request_id=msg.request_id, parts=tuple(parts), data=b"".join(found))

    async def _write(
        self,
        packet_id: bytes,
        owner_tag: bytes,
        data: bytes | memoryview,
        digest: bytes | None,
        source: bytes = b"",
        quota: int | None = None,
        leased: bool = True,
    ) -> bool | PacketStoreError:
        pending = _Pending(1)
        await self._queue_write(
            _Write(packet_id, owner_tag, data, digest, pending, source, quota, leased)
        )
        outcome = (await pending.wait())[0]
        assert outcome is not None
        return outcome

    async def _queue_write(self, write: _Write) -> None:
        """Hand a packet to the group commit; without a checkpoint when there is room
        (the handler waits for the outcome next anyway)."""
        try:
            self._writes_send.send_nowait(write)
        except trio.WouldBlock:
            await self._writes_send.send(write)

    async def _keep_many(
        self,
        msg: StorePackets,
        source: bytes = b"",
        quota: int | None = None,
        leased: bool = True,
    ) -> PacketsStored:
        if sum(p.size_bytes for p in msg.parts) != len(msg.data):
            raise RemoteError("malformed", "part sizes do not add up to the payload")
        view = memoryview(msg.data)
        # Every part is queued for the writer at once, all sharing one ``_Pending``: a
        # task and a channel per part cost more than the bookkeeping they saved.
        pending = _Pending(len(msg.parts))
        offset = 0
        for index, part in enumerate(msg.parts):
            data = view[offset : offset + part.size_bytes]
            offset += part.size_bytes
            await self._queue_write(
                _Write(
                    part.packet_id,
                    part.owner_tag,
                    data,
                    None,
                    pending,
                    source,
                    quota,
                    leased,
                    index,
                )
            )
        outcomes = await pending.wait()
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
        leased: bool = True,
    ) -> PacketStored:
        if digest is not None and digest != msg.packet_id:
            # The session already hashed the payload; a mismatch needs no second hash.
            raise RemoteError("id_mismatch", "packet bytes do not hash to its id")
        outcome = await self._write(
            msg.packet_id, msg.owner_tag, msg.data, digest, source, quota, leased
        )
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
            with self.keep_lock:
                present, left = self.holdings.remove_tag(
                    msg.packet_id, tag, source=source, size=size
                )
                if not present:
                    return False
                if left == 0:
                    self.packets.delete(msg.packet_id)
            return True

        removed = await trio.to_thread.run_sync(remove, limiter=self.disk_limiter)
        if removed and self.on_free_bytes_changed is not None:
            self.on_free_bytes_changed(self.packets.free_bytes)
        return PacketDeleted(request_id=msg.request_id, packet_id=msg.packet_id, removed=removed)

    async def _renew(self, msg: RenewLeases, source: bytes) -> LeasesRenewed:
        """Extend the named leases by ``duration_s`` from now, at most this holder's own
        ``lease_s``; a lease it does not have is answered 0 and not created."""
        until = self.clock() + min(float(msg.duration_s), self.lease_s)
        pairs = [(ref.packet_id, ref.owner_tag) for ref in msg.leases]
        ends = await trio.to_thread.run_sync(
            lambda: self.holdings.renew(pairs, until, source=source), limiter=self.disk_limiter
        )
        unknown = sum(1 for end in ends if not end)
        self._count("leases_renewed", len(ends) - unknown)
        self._count("leases_unknown", unknown)
        return LeasesRenewed(request_id=msg.request_id, expires=tuple(int(end) for end in ends))

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
