"""The delegate's side of delegated repair: holds capabilities, watches holders, rebuilds
and moves the packets of absent owners, hands a capability on as delegates leave."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import blake3
import msgpack
import trio
from nacl.exceptions import CryptoError
from nacl.public import SealedBox

from protocol import Message, PacketStored, StorePacket, receipt_payload, verify
from protocol._messages import (
    MAX_CAPABILITY_BYTES,
    MAX_MOVES_PER_MESSAGE,
    GetRepairMoves,
    GrantRepair,
    GrantRepairPart,
    RepairGranted,
    RepairMoves,
)

from ..errors import GridError, PeerError, RemoteError
from ..fsutil import atomic_write
from ..identity import NodeIdentity
from ..log import get_logger
from ..logic.packing import ChunkIntegrityError, ErasureParams, rebuild_shares
from ..logic.placement import Member, PlacementError, PlacementRules, PlacementView, Source
from ..storage.records import ChunkRecord
from .capability import Capability
from .held_map import HeldMap
from .map_parts import PartRef, decode_part, seal_part
from .moves import rank_for
from .records import (
    MAX_HOPS,
    MAX_MOVES_KEPT,
    MAX_OWNERS,
    MIN_AFTER_S,
    MOVES_KEPT_S,
    PLACE_ATTEMPTS,
    CapabilityRefused,
    HeldChunk,
    HeldPacket,
    MoveRecord,
)
from .renewal import renew_owner_leases
from .transfer import deliver

_log = get_logger(actor="delegation")

#: What a delegate counts per packet of a map it keeps (parts are ~73 bytes a packet).
MAP_BYTES_PER_PACKET: Final = 80
#: Chunks one scan of a map hands to repair; the rest wait for the next scan.
MAX_CHUNKS_PER_SCAN: Final = 5_000
#: Ticks before a map is scanned again for chunks left unrepaired (no new holder, a
#: fetch that failed) although no further holder went.
RESCAN_TICKS: Final = 10

# --- the delegate side ----------------------------------------------------------------------


@attrs.define
class _Held:
    """What a delegate keeps for one owner: the capability (None once expired), its map
    on disk, the moves the owner has not yet taken in, its authority (shown with the
    moves, so the owner trusts them even after the capability expired) and the members
    it handed it on to."""

    blob: bytes
    capability: Capability | None
    expires: float
    map: HeldMap
    moves: list[MoveRecord] = attrs.field(factory=list)
    next_seq: int = 1
    authority: bytes = b""
    handed: set[bytes] = attrs.field(factory=set)
    #: The gone holders the last scan of the map acted on, and when to scan again
    #: although they did not change (chunks left unrepaired are retried).
    scanned_gone: frozenset[bytes] = frozenset()
    rescan_at: float = 0.0

    def to_file(self) -> bytes:
        return bytes(
            msgpack.packb(
                {
                    "blob": self.blob if self.capability is not None else b"",
                    "expires": self.expires,
                    "moves": [m.encode() for m in self.moves],
                    "next_seq": self.next_seq,
                    "authority": self.authority,
                    "handed": sorted(self.handed),
                    "targets": sorted(self.map.targets.items()),
                },
                use_bin_type=True,
            )
        )


@attrs.define
class _Pending:
    """A capability whose grant arrived and whose map's parts are still coming: taken up
    (and the one held before replaced) once the last part has arrived."""

    capability: Capability
    held: _Held
    sender: bytes
    missing: set[bytes]
    direct: bool


@attrs.define
class Repairer:
    """A member's delegate role: holds capabilities, repairs for absent owners, and
    hands a capability on when fewer of the owner's delegates are left than it chose.

    ``present`` gives the members gossip reports alive or suspect; ``members`` the
    placement view; ``fetch`` a chunk's surviving packets (the retriever).  A member
    (owner, holder or fellow delegate) counts as gone once not seen for the owner's
    ``after_s``, from last-seen times kept on disk (a restart does not reset them) and
    only after this process too has missed it for ``settle_s``, or the owner's
    ``after_s`` if shorter.

    Ticks and delays are the owner's, not this node's: a member whose own
    ``repair_after_s`` is long (the shipped week gives 60 s ticks and a 20 s settle; a
    grid's authority runs so) is as likely a delegate as any, and its owner's packets
    were rebuilt some 60 s late, one run of the delegated-repair test in ten."""

    identity: NodeIdentity
    home: Path
    present: Callable[[], set[bytes]]
    members: Callable[[], Sequence[Member]]
    fetch: Callable[[ChunkRecord, frozenset[bytes]], Any]
    link_for: Callable[[bytes], Any]
    #: Stores a packet on this node itself (a StorePacket served as if from a peer).
    store_local: Callable[[Message], Awaitable[Message]]
    cpu_limiter: trio.CapacityLimiter
    after_s: float
    tick_s: float
    request_timeout_s: float = 30.0
    settle_s: float = 0.0
    #: Disk this node gives the maps of the owners it repairs for, all together (the
    #: node passes a twentieth of its allocation): anyone may choose it as a delegate.
    map_budget_bytes: int = 1 << 30
    clock: Callable[[], float] = time.time
    held: dict[bytes, _Held] = attrs.field(factory=dict)
    #: Capabilities waiting for parts of their map, by owner (in memory only: after a
    #: restart the sender is asked again at its next renewal).
    pending: dict[bytes, _Pending] = attrs.field(factory=dict)
    #: When each watched member was last seen (wall clock; saved in ``seen.msgpack``).
    seen: dict[bytes, float] = attrs.field(factory=dict)
    #: When this process first missed each absent watched member (trio clock).
    missing_here: dict[bytes, float] = attrs.field(factory=dict)
    stats: dict[str, int] = attrs.field(factory=dict)
    problems: list[str] = attrs.field(factory=list)
    #: Set on the first tick: ``settle_s``, or a day after this node was itself off
    #: longer than the delay (as ``repair.AutoRepair``: its sightings are its own).
    watch_s: float | None = None
    #: Leases this node asks for on an absent owner's behalf (``delegation.renewal``;
    #: 0: none), and how often it renews them.
    lease_s: float = 0.0
    renew_every_s: float = 7 * 86400.0
    #: When this process last renewed each absent owner's leases (wall clock).
    renewed_at: dict[bytes, float] = attrs.field(factory=dict)
    #: Set when a capability is taken up, so a nap begun on a longer tick is cut short.
    _retick: trio.Event = attrs.field(factory=trio.Event, init=False)

    @property
    def directory(self) -> Path:
        return self.home / "delegations"

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def _problem(self, text: str) -> None:
        """Why a chunk was not repaired (the latest few, for ``status``)."""
        self._count("chunks_unrepaired")
        self.problems.append(text[:300])
        del self.problems[:-20]

    def _map(self, owner: bytes) -> HeldMap:
        return HeldMap(self.directory / f"{owner.hex()}.parts", self.identity.signing_key)

    def load(self) -> None:
        """Capabilities, moves and last-seen times survive a restart of the delegate."""
        if not self.directory.is_dir():
            return
        now = self.clock()
        try:
            raw_seen = msgpack.unpackb((self.directory / "seen.msgpack").read_bytes(), raw=False)
            self.seen = {bytes(k): float(v) for k, v in dict(raw_seen).items()}
        except (OSError, ValueError, TypeError, msgpack.UnpackException):
            self.seen = {}
        for path in sorted(self.directory.glob("*.msgpack"))[:10_000]:
            if path.name == "seen.msgpack":
                continue
            try:
                owner = bytes.fromhex(path.stem)
                raw = msgpack.unpackb(path.read_bytes(), raw=False)
                moves = [MoveRecord.decode(m) for m in raw["moves"]]
                cap = None
                if raw["blob"]:
                    try:
                        cap = Capability.open(
                            raw["blob"], identity=self.identity, sender=None, now=now
                        )
                    except CapabilityRefused:  # its time ran out while this node was off
                        cap = None
                held_map = self._map(owner)
                if cap is not None:
                    held_map.refs = cap.parts
                    held_map.targets = {bytes(t): int(c) for t, c in raw.get("targets", [])}
                    held_map.set_moves(moves)
                    if not all(held_map.has(r.digest) for r in cap.parts):
                        # The map is gone (a disk problem): the owner grants it again at
                        # its next renewal; the moves, its only record, are kept.
                        _log.warning("delegation_map_missing", owner=owner.hex()[:12])
                        cap = None
                if cap is None:
                    held_map.drop()
                held = _Held(
                    raw["blob"] if cap else b"",
                    cap,
                    float(raw["expires"]),
                    held_map,
                    moves,
                    int(raw["next_seq"]),
                    authority=bytes(raw.get("authority", b"")),
                    handed={bytes(n) for n in raw.get("handed", [])[:64]},
                )
            except (ValueError, KeyError, TypeError, GridError, msgpack.UnpackException) as exc:
                _log.warning("delegation_unreadable", file=path.name, error=str(exc))
                continue
            self.held[owner] = held

    def _save(self, owner: bytes) -> None:
        path = self.directory / f"{owner.hex()}.msgpack"
        held = self.held.get(owner)
        if held is None:
            path.unlink(missing_ok=True)
            self._map(owner).drop()
        else:
            atomic_write(path, held.to_file(), mode=0o600)

    def _save_seen(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        blob = msgpack.packb(dict(sorted(self.seen.items())), use_bin_type=True)
        atomic_write(self.directory / "seen.msgpack", bytes(blob), mode=0o600)

    def leases(self) -> list[dict[str, Any]]:
        """What ``status`` shows of the capabilities held: per owner, the lease, the moves
        not yet taken in, and the packets whose holder is out of the view now."""
        present = self.present()
        return [
            {
                "owner": o.hex(),
                "expires": h.expires,
                "until": h.capability.until,
                "handed_on": len(h.capability.authority.links) if h.capability.authority else 0,
                "moves": len(h.moves),
                "standby": self._standby(o, h, present),
                "packets": h.capability.packets,
                "packets_away": sum(n for t, n in h.map.targets.items() if t not in present),
            }
            for o, h in sorted(self.held.items())
            if h.capability is not None
        ]

    # --- serving owners -------------------------------------------------------------------

    async def serve(self, msg: Message, peer: bytes) -> Message:
        if isinstance(msg, GrantRepair):
            return await self._grant(msg, peer)
        if isinstance(msg, GrantRepairPart):
            return await self._part(msg, peer)
        if isinstance(msg, GetRepairMoves):
            held = self.held.get(peer)
            moves = [m for m in (held.moves if held else []) if m.seq > msg.after]
            page = moves[:MAX_MOVES_PER_MESSAGE]
            return RepairMoves(
                request_id=msg.request_id,
                moves=tuple(m.encode() for m in page),
                more=len(moves) > len(page),
                authority=held.authority if held and moves else b"",
            )
        raise RemoteError("unsupported", f"{msg.KIND} is not a delegation request")

    async def _grant(self, msg: GrantRepair, peer: bytes) -> Message:
        now = self.clock()
        try:
            cap = await trio.to_thread.run_sync(
                functools.partial(
                    Capability.open, msg.capability, identity=self.identity, sender=peer, now=now
                ),
                limiter=self.cpu_limiter,
            )
        except CapabilityRefused as exc:
            self._count("capabilities_refused")
            _log.info("capability_refused", sender=peer.hex()[:12], reason=str(exc))
            raise RemoteError(exc.code, str(exc)) from None
        assert cap.authority is not None
        owner = cap.owner
        direct = not cap.authority.links
        old = self.held.get(owner)
        if old is None and len(self.held) + len(self.pending) >= MAX_OWNERS:
            raise RemoteError("too_many_owners", "this node holds as many capabilities as it may")
        others = sum(
            h.capability.packets for o, h in self.held.items() if o != owner and h.capability
        )
        if (others + cap.packets) * MAP_BYTES_PER_PACKET > self.map_budget_bytes:
            self._count("capabilities_refused")
            raise RemoteError(
                "no_room",
                f"a map of {cap.packets} packets does not fit the "
                f"{self.map_budget_bytes} bytes this node keeps for repair maps",
            )
        if old is not None and old.capability is not None:
            if cap.version < old.capability.version:
                raise RemoteError("stale_capability", "a newer capability of this owner is held")
            if not direct and cap.version == old.capability.version:
                # Handed on a capability already held (from the owner or another giver).
                return RepairGranted(
                    request_id=msg.request_id, version=cap.version, expires=cap.until
                )
        if direct:
            moves = [m for m in (old.moves if old else []) if m.seq > msg.applied_through]
        else:
            moves = list(old.moves) if old else []
        held = _Held(
            b"",
            attrs.evolve(cap, chunks=(), sealed_parts={}),
            cap.expires,
            self._map(owner),
            moves,
            old.next_seq if old else 1,
            authority=cap.authority.encode(),
            handed=set(old.handed) if old and direct else set(),
        )
        held.map.refs = cap.parts

        def store_inline() -> set[bytes]:
            held.blob = cap.head()
            for digest, sealed in cap.sealed_parts.items():
                if not held.map.has(digest):
                    held.map.write(digest, sealed)
            return {r.digest for r in cap.parts if not held.map.has(r.digest)}

        missing = await trio.to_thread.run_sync(store_inline, limiter=self.cpu_limiter)
        pending = _Pending(cap, held, peer, missing, direct)
        if missing:
            self.pending[owner] = pending
            return RepairGranted(
                request_id=msg.request_id,
                version=cap.version,
                expires=0.0,
                missing=tuple(sorted(missing)),
            )
        self.pending.pop(owner, None)
        return await self._take_up(owner, pending, msg.request_id)

    async def _part(self, msg: GrantRepairPart, peer: bytes) -> Message:
        """One part of a map whose grant came before from the same sender."""
        pending = self.pending.get(msg.owner)
        if pending is None or pending.sender != peer or pending.capability.version != msg.version:
            raise RemoteError("unexpected_part", "no grant of this version waits for parts")
        refs = {r.digest: r for r in pending.capability.parts}
        key = self.identity.signing_key

        def check_and_store() -> bytes:
            body = bytes(SealedBox(key.to_curve25519_private_key()).decrypt(msg.part))
            digest = blake3.blake3(body).digest()
            ref = refs.get(digest)
            if ref is None or digest not in pending.missing:
                raise ValueError("a part the grant does not list, or sent twice")
            decode_part(body, ref)  # a part that does not decode is refused now
            pending.held.map.write(digest, msg.part)
            return digest

        try:
            digest = await trio.to_thread.run_sync(check_and_store, limiter=self.cpu_limiter)
        except (CryptoError, ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            self._count("capabilities_refused")
            raise RemoteError("bad_capability", f"map part refused: {exc}") from None
        pending.missing.discard(digest)
        if pending.missing:
            return RepairGranted(
                request_id=msg.request_id,
                version=msg.version,
                expires=0.0,
                missing=tuple(sorted(pending.missing)),
            )
        del self.pending[msg.owner]
        return await self._take_up(msg.owner, pending, msg.request_id)

    async def _take_up(self, owner: bytes, pending: _Pending, request_id: int) -> Message:
        """Every part is here: index the map, adopt carried moves, replace the old one."""
        cap, held = pending.capability, pending.held
        old = self.held.get(owner)
        if old is not None and old.capability is not None and cap.version < old.capability.version:
            raise RemoteError("stale_capability", "a newer capability of this owner is held")

        def index() -> None:
            held.map.set_moves(held.moves)
            if cap.carried:
                self._adopt(owner, held, cap)
            held.map.index()
            held.map.prune()

        try:
            await trio.to_thread.run_sync(index, limiter=self.cpu_limiter)
        except (CapabilityRefused, ValueError, TypeError, KeyError, OSError) as exc:
            raise RemoteError("bad_capability", f"capability map unusable: {exc}") from None
        self.held[owner] = held
        self._retick.set()  # its owner's delay may want shorter ticks than the nap under way
        await trio.to_thread.run_sync(self._save, owner)
        self._count("capabilities_held" if pending.direct else "capabilities_taken_on")
        return RepairGranted(
            request_id=request_id,
            version=cap.version,
            expires=cap.expires if pending.direct else cap.until,
        )

    def _adopt(self, owner: bytes, held: _Held, cap: Capability) -> None:
        """Take over the moves an earlier holder made and the owner has not taken in:
        each is checked as the owner would (signed by a delegate of this capability,
        the packet on the holder it left, the new holder's receipt), applied to the map
        and signed again by this node, which now answers for it to the owner."""
        assert cap.authority is not None
        signers = set(cap.peers) | cap.authority.members()
        carried = sorted(cap.carried, key=lambda m: (m.at, m.delegate, m.seq))
        chunks = held.map.find({m.handle for m in carried})
        taken = 0
        for move in carried:
            chunk = chunks.get(move.handle)
            if (
                chunk is None
                or move.owner != owner
                or move.delegate not in signers
                or not move.signature_ok()
            ):
                continue
            packet = next((p for p in chunk.packets if p.share == move.share), None)
            if (
                packet is None
                or packet.packet_id != move.packet_id
                or packet.target != move.old_target
                or any(p.target == move.new_target for p in chunk.packets)
                or move.size_bytes != chunk.packet_bytes
                or not verify(
                    move.new_target,
                    receipt_payload(move.packet_id, move.size_bytes),
                    move.receipt,
                )
            ):
                continue
            mine = attrs.evolve(
                move, delegate=self.identity.node_id, seq=held.next_seq, signature=b""
            ).signed(self.identity.signing_key)
            held.next_seq += 1
            if len(held.moves) < MAX_MOVES_KEPT:
                held.moves.append(mine)
            held.map.overlay[(move.handle, move.share)] = move.new_target
            chunks[move.handle] = chunk.moved(move.share, move.new_target)
            taken += 1
        self._count("moves_adopted", taken)

    # --- watching members -----------------------------------------------------------------

    def _observe(self, present: set[bytes], watched: set[bytes]) -> None:
        now, mono = self.clock(), trio.current_time()
        for node_id in watched:
            if node_id in present:
                self.seen[node_id] = now
                self.missing_here.pop(node_id, None)
            else:
                self.seen.setdefault(node_id, now)  # first missed: its clock starts
                self.missing_here.setdefault(node_id, mono)
        self.seen = {n: t for n, t in self.seen.items() if n in watched}
        self.missing_here = {n: t for n, t in self.missing_here.items() if n in watched}

    def _gone(self, node_id: bytes, after_s: float, present: set[bytes]) -> bool:
        """Unseen for ``after_s`` and missed here for the watch, never longer than
        ``after_s``: the node's ``settle_s`` is capped by its *own* repair delay, which may
        be far longer than the owner's (as ``repair.AutoRepair`` caps it by the delay it
        keeps), and a settle counted from each member's first miss would delay every repair
        by it, not only those just after a start."""
        if node_id in present:
            return False
        now, mono = self.clock(), trio.current_time()
        watch = min(self.watch_s or 0.0, after_s)
        return (
            now - self.seen.get(node_id, now) >= after_s
            and mono - self.missing_here.get(node_id, mono) >= watch
        )

    # --- repairing ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.to_thread.run_sync(self.load)
        task_status.started()
        while True:
            await self._nap(trio.current_time())
            try:
                await self.tick()
            except (GridError, OSError, ValueError) as exc:
                _log.warning("delegated_repair_failed", error=str(exc))

    async def _nap(self, since: float) -> None:
        """Until a tick after ``since``, the tick recomputed whenever a capability is taken
        up.  A nap begun while nothing (or only patient owners) was held lasts this node's
        own tick, up to 60 s: an owner whose delay wants ticks of a quarter second, granted
        meanwhile, must not wait it out (its repair came a minute late)."""
        while trio.current_time() < since + self._tick_s():  # a pass per capability taken up
            self._retick = trio.Event()
            with trio.move_on_at(since + self._tick_s()):
                await self._retick.wait()

    def _tick_s(self) -> float:
        """Often enough for the most impatient owner held (its delay over four)."""
        delays = [h.capability.after_s for h in self.held.values() if h.capability is not None]
        return min([self.tick_s, *(max(MIN_AFTER_S, d / 4) for d in delays)])

    def expire(self, present: set[bytes] | None = None) -> list[bytes]:
        """Drop capabilities whose time ran out (and moves kept past their time).

        The lease binds while the owner is in the view: an owner that is around renews
        what it wants kept.  While it is away a capability holds until the hand-on
        horizon the owner signed (``until``), so repair outlives it."""
        now = self.clock()
        present = self.present() if present is None else present
        dropped: list[bytes] = []
        for owner, held in list(self.held.items()):
            cap = held.capability
            if cap is not None and (now >= cap.until or (now >= held.expires and owner in present)):
                held.capability, held.blob = None, b""
                held.map.drop()
                dropped.append(owner)
            if held.capability is None and (not held.moves or now > held.expires + MOVES_KEPT_S):
                del self.held[owner]
            self._save(owner)
        return dropped

    async def tick(self) -> int:
        """One round: expire capabilities, then for owners gone ``after_s`` hand the
        capability on if delegates left, and repair; returns the packets moved."""
        present = self.present()
        dropped = await trio.to_thread.run_sync(self.expire, present)
        for owner in dropped:
            _log.info("capability_expired", owner=owner.hex()[:12])
        if self.after_s <= 0:
            return 0  # repair is off on this node
        own = self.identity.node_id
        watched: set[bytes] = {own}  # this node's own row: its last tick
        delays = [self.after_s]
        for owner, held in self.held.items():
            if held.capability is not None:
                delays.append(held.capability.after_s)
                watched |= {owner, *self._group(held)}
                watched |= set(held.map.targets)
        if self.watch_s is None:
            last_tick = self.seen.get(own)
            self.watch_s = self.settle_s
            if last_tick is not None and self.clock() - last_tick > min(delays):
                self.watch_s = max(self.settle_s, min(min(delays), 86400.0))
        self._observe(present | {own}, watched)
        await trio.to_thread.run_sync(self._save_seen)
        await self._renew_absent(present)
        moved = 0
        for owner, held in list(self.held.items()):
            cap = held.capability
            if cap is None or not self._gone(owner, cap.after_s, present):
                continue
            if self._standby(owner, held, present):
                continue
            await self._hand_on(owner, held, present)
            moved += await self._repair_owner(owner, held, present)
        return moved

    async def _renew_absent(self, present: set[bytes]) -> None:
        """Renew the leases of owners away for half a renewal interval or more, once per
        interval each, unless a delegate ranked before this one is there to do it."""
        if self.lease_s <= 0:
            return
        now = self.clock()
        for owner, held in list(self.held.items()):
            last_seen = self.seen.get(owner)
            away = now - last_seen if last_seen is not None else float("inf")
            if (
                held.capability is None
                or owner in present
                or away < self.renew_every_s / 2
                or now - self.renewed_at.get(owner, 0.0) < self.renew_every_s
                or self._standby(owner, held, present)
            ):
                continue
            tally = await renew_owner_leases(
                held.map,
                here=present,
                link_for=self.link_for,
                lease_s=self.lease_s,
                cpu_limiter=self.cpu_limiter,
                own=self.identity.node_id,
                local=self.store_local,
                timeout_s=self.request_timeout_s,
            )
            self.renewed_at[owner] = now
            for key, value in tally.items():
                self._count(f"delegated_{key}", value)
            _log.info("leases_renewed_for_owner", owner=owner.hex()[:12], **tally)

    def _standby(self, owner: bytes, held: _Held, present: set[bytes]) -> bool:
        """True while a delegate ranked before this one (in the owner's ranking of the
        delegates this node knows) is in the view: one repairer acts at a time."""
        order = rank_for(owner, self._group(held) | {self.identity.node_id})
        ahead = order[: order.index(self.identity.node_id)]
        return any(p in present for p in ahead)

    def _group(self, held: _Held) -> set[bytes]:
        """The owner's delegates this node knows of: the owner's choice, the holders this
        capability came through and the members this node handed it on to."""
        cap = held.capability
        if cap is None or cap.authority is None:
            return set()
        return set(cap.peers) | cap.authority.members() | held.handed

    async def _hand_on(self, owner: bytes, held: _Held, present: set[bytes]) -> int:
        """Give the capability to replacements for the delegates that are gone, so that
        as many as the owner chose are left; returns how many took it."""
        cap = held.capability
        assert cap is not None and cap.authority is not None
        group = self._group(held)
        left = {n for n in group if not self._gone(n, cap.after_s, present)}
        wanted = max(1, len(cap.peers)) - len(left)
        if wanted <= 0:
            return 0
        if len(cap.authority.links) >= MAX_HOPS:
            self._problem("capability handed on too often to hand on again")
            return 0
        candidates = [n for n in rank_for(owner, present) if n not in group and n != owner][
            : wanted + 3
        ]
        taken = 0
        for taker in candidates:
            if taken >= wanted:
                break
            try:
                blob = await trio.to_thread.run_sync(
                    functools.partial(
                        cap.hand_on,
                        self.identity.signing_key,
                        taker,
                        now=self.clock(),
                        carried=held.moves,
                        bodies=[],
                    ),
                    limiter=self.cpu_limiter,
                )
                if len(blob) > MAX_CAPABILITY_BYTES:
                    return taken
                answer = await deliver(
                    await self.link_for(taker),
                    owner=owner,
                    version=cap.version,
                    head=blob,
                    parts={r.digest: functools.partial(self._body, held, r) for r in cap.parts},
                    seal_for=functools.partial(self._seal_for, taker),
                    timeout_s=self.request_timeout_s,
                )
            except (PeerError, GridError, OSError) as exc:
                _log.info("hand_on_failed", taker=taker.hex()[:12], error=str(exc))
                continue
            if answer.missing:
                continue
            if not isinstance(answer, RepairGranted):
                continue
            held.handed.add(taker)
            await trio.to_thread.run_sync(self._save, owner)
            self._count("capabilities_handed_on")
            _log.info("capability_handed_on", owner=owner.hex()[:12], taker=taker.hex()[:12])
            taken += 1
        return taken

    async def _body(self, held: _Held, ref: PartRef, _digest: bytes) -> bytes:
        return await trio.to_thread.run_sync(held.map.body, ref, limiter=self.cpu_limiter)

    async def _seal_for(self, taker: bytes, body: bytes) -> bytes:
        return await trio.to_thread.run_sync(seal_part, body, taker, limiter=self.cpu_limiter)

    async def _repair_owner(self, owner: bytes, held: _Held, present: set[bytes]) -> int:
        """Rebuild the packets of the owner's gone holders.  The map is scanned (a part at
        a time, off the loop) when the gone holders change, and again after
        ``RESCAN_TICKS`` ticks while chunks were left unrepaired."""
        assert held.capability is not None
        after_s = held.capability.after_s
        threshold = held.capability.threshold
        gone = frozenset(n for n in held.map.targets if self._gone(n, after_s, present))
        if not gone:
            held.scanned_gone = frozenset()
            return 0
        now = trio.current_time()
        if gone <= held.scanned_gone and now < held.rescan_at:
            return 0

        def to_repair() -> list[HeldChunk]:
            found: list[HeldChunk] = []
            for chunk in held.map.chunks():
                lost = sum(1 for p in chunk.packets if p.target in gone)
                if lost and lost >= max(1, min(threshold, chunk.n - chunk.k)):
                    found.append(chunk)
                    if len(found) >= MAX_CHUNKS_PER_SCAN:
                        break
            return found

        chunks = await trio.to_thread.run_sync(to_repair, limiter=self.cpu_limiter)
        source = Source(owner, held.capability.lat, held.capability.lon)
        members = [m for m in self.members() if m.node_id != owner]
        views: dict[PlacementRules, PlacementView] = {}
        moved = 0
        complete = len(chunks) < MAX_CHUNKS_PER_SCAN
        for chunk in chunks:
            lost = sum(1 for p in chunk.packets if p.target in gone)
            try:
                done = await self._repair_chunk(owner, held, chunk, gone, source, members, views)
            except (PeerError, ValueError) as exc:  # this chunk waits for the next scan
                self._problem(f"repair failed: {exc}")
                done = 0
            moved += done
            complete = complete and done >= lost
        held.scanned_gone = gone
        held.rescan_at = float("inf") if complete else now + RESCAN_TICKS * self._tick_s()
        return moved

    async def _repair_chunk(
        self,
        owner: bytes,
        held: _Held,
        chunk: HeldChunk,
        gone: frozenset[bytes],
        source: Source,
        members: list[Member],
        views: dict[PlacementRules, PlacementView],
    ) -> int:
        fetched = await self.fetch(chunk.as_record(), gone)
        if len(fetched.shares) < chunk.k:
            self._count("chunks_lost")
            return 0
        lost = sorted(p.share for p in chunk.packets if p.target in gone)
        by_share = {p.share: p for p in chunk.packets}
        try:
            rebuilt = await trio.to_thread.run_sync(
                functools.partial(
                    rebuild_shares,
                    fetched.shares,
                    params=ErasureParams(chunk.k, chunk.n),
                    cipher_size=chunk.cipher_size,
                    packet_ids=[by_share[i].packet_id for i in range(chunk.n)],
                    wanted=lost,
                ),
                limiter=self.cpu_limiter,
            )
        except ChunkIntegrityError as exc:
            self._problem(f"cannot rebuild: {exc}")
            return 0
        rules = PlacementRules.from_wire(chunk.rules) if chunk.rules else PlacementRules()
        view = views.get(rules)
        if view is None:
            view = views[rules] = PlacementView(
                key=self.identity.sequence_key, source=source, members=members, rules=rules
            )
        moved = 0
        failed: set[bytes] = set(gone)
        current = chunk
        for share in lost:
            for _attempt in range(PLACE_ATTEMPTS):
                fixed = tuple(p.target for p in current.packets if p.share != share)
                if any(t in gone for t in fixed):
                    fixed = tuple(t for t in fixed if t not in gone)
                try:
                    targets = view.place(
                        chunk.handle,
                        len(fixed) + 1,
                        chunk.packet_bytes,
                        exclude=frozenset(failed),
                        fixed=fixed,
                    )
                except (PlacementError, ValueError) as exc:
                    self._problem(f"no new holder: {exc}")
                    return moved
                fresh = [t for t in targets if t not in fixed]
                if not fresh:
                    return moved
                target = fresh[0]
                try:
                    receipt = await self._store(target, by_share[share], rebuilt[share])
                except (PeerError, GridError) as exc:
                    failed.add(target)
                    _log.info("delegated_store_failed", target=target.hex()[:12], error=str(exc))
                    continue
                current = await self._record(owner, held, current, share, target, receipt)
                moved += 1
                break
        return moved

    async def _store(self, target: bytes, packet: HeldPacket, data: bytes) -> bytes:
        def request(rid: int) -> StorePacket:
            return StorePacket(
                request_id=rid, packet_id=packet.packet_id, owner_tag=packet.owner_tag, data=data
            )

        answer: Message
        if target == self.identity.node_id:
            answer = await self.store_local(request(0))
        else:
            link = await self.link_for(target)
            answer = await link.request(request, timeout_s=self.request_timeout_s)
        if not isinstance(answer, PacketStored) or answer.packet_id != packet.packet_id:
            raise RemoteError("bad_answer", f"holder answered {answer.KIND}")
        if not verify(target, receipt_payload(packet.packet_id, len(data)), answer.receipt):
            raise RemoteError("bad_receipt", "the new holder's receipt does not verify")
        return answer.receipt

    async def _record(
        self,
        owner: bytes,
        held: _Held,
        chunk: HeldChunk,
        share: int,
        target: bytes,
        receipt: bytes,
    ) -> HeldChunk:
        """Sign and keep the move of ``share`` to ``target``; returns the chunk moved."""
        old = next(p for p in chunk.packets if p.share == share)
        move = MoveRecord(
            owner=owner,
            delegate=self.identity.node_id,
            seq=held.next_seq,
            handle=chunk.handle,
            share=share,
            packet_id=old.packet_id,
            size_bytes=chunk.packet_bytes,
            old_target=old.target,
            new_target=target,
            receipt=receipt,
            at=self.clock(),
        ).signed(self.identity.signing_key)
        held.next_seq += 1
        if len(held.moves) < MAX_MOVES_KEPT:
            held.moves.append(move)
        held.map.moved(old.target, target, chunk.handle, share)
        await trio.to_thread.run_sync(self._save, owner)
        self._count("packets_moved")
        _log.info(
            "delegated_move",
            owner=owner.hex()[:12],
            share=share,
            old=old.target.hex()[:12],
            new=target.hex()[:12],
        )
        return chunk.moved(share, target)
