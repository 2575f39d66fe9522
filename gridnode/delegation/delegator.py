"""The owner's side of delegated repair: chooses delegates, keeps their leases running and
takes their moves into the catalog."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs
import trio

from protocol import format_node_id
from protocol._messages import (
    RepairGranted,
)

from ..errors import GridError, RemoteError
from ..job_services import Services
from ..log import get_logger
from ..logic.placement.rules import PlacementError
from ..recovery_root import publish_root
from ..repair import repair_holders
from .capability import build_capability, held_chunk
from .map_parts import MapPart, PartBuilder, seal_part
from .moves import apply_moves, asked_for_moves, gather_moves, rank_for
from .records import (
    MOVES_KEPT_S,
    MoveRecord,
)
from .transfer import deliver

_log = get_logger(actor="delegation")

#: Where the owner keeps its map's parts between renewals (under its home).
PARTS_DIR: Final = "delegation-map"

# --- the owner side -------------------------------------------------------------------------


@attrs.frozen
class Grant:
    node_id: bytes
    version: int
    expires: float
    root_version: int
    applied_through: int
    peers: tuple[bytes, ...] = ()


@attrs.define
class Delegator:
    """The owner's side: chooses ``count`` delegates, keeps their leases running, and
    takes their moves into the catalog.

    Delegates are ranked by a hash keyed by the owner's id (so a node recovered from its
    key picks the same members again when they are still there); one that leaves the
    view or refuses is replaced by the next in rank."""

    services: Services
    count: int
    lease_s: float
    tick_s: float
    #: This node's ``repair_after_s``, handed to its delegates with the capability.
    after_s: float
    lat: float | None
    lon: float | None
    present: Callable[[], set[bytes]]
    clock: Callable[[], float] = time.time
    #: This node's ``repair_threshold``, handed to its delegates with the capability.
    threshold: int = 1
    grants: dict[bytes, Grant] = attrs.field(factory=dict)
    moves_taken: int = 0
    _published_delegates: frozenset[bytes] | None = None
    _refused: dict[bytes, float] = attrs.field(factory=dict)
    #: Per delegate, the highest move number taken in (it may drop those).
    _through: dict[bytes, int] = attrs.field(factory=dict)
    #: The map's parts as last built, and the catalog root version they were built at.
    _parts: list[MapPart] | None = None
    _parts_root: int = -1

    def status(self) -> list[dict[str, Any]]:
        return [
            {"node_id": format_node_id(g.node_id), "expires": g.expires}
            for g in sorted(self.grants.values(), key=lambda g: g.node_id)
        ]

    def delegates(self) -> list[bytes]:
        return sorted(self.grants)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.tick()
            except (GridError, OSError, sqlite3.Error, PlacementError, ValueError) as exc:
                _log.warning("delegation_failed", error=str(exc))
            await trio.sleep(self.tick_s)

    def _ranked(self, candidates: Iterable[bytes]) -> list[bytes]:
        return rank_for(self.services.identity.node_id, candidates)

    async def tick(self) -> None:
        services = self.services
        catalog = services.catalog
        own = services.identity.node_id
        present = self.present() - {own}
        for node_id in [n for n in self.grants if n not in present]:
            del self.grants[node_id]  # it left: its lease runs out by itself
        if self.count <= 0:
            return
        if not await services.db(catalog.holders):
            return  # nothing stored yet
        now = self.clock()
        # Moves first: a capability issued after them names the new holders.
        await self.take_moves()
        known: dict[bytes, float] = await services.db(catalog.delegates)
        root_version = await services.db(_root_version, catalog)
        ranked = [n for n in self._ranked(present) if self._refused.get(n, 0.0) <= now]
        # Keep the delegates that still answer; fill up from the ranking.
        chosen = [n for n in ranked if n in self.grants][: self.count]
        chosen += [n for n in ranked if n not in chosen][: self.count - len(chosen)]
        peers = tuple(self._ranked(chosen))
        parts: list[MapPart] | None = None
        for node_id in peers:
            grant = self.grants.get(node_id)
            if (
                grant is not None
                and grant.root_version == root_version
                and grant.peers == peers
                and now < grant.expires - self.lease_s / 2
                and grant.applied_through == self._through.get(node_id, 0)
            ):
                continue
            if parts is None:
                parts = await self._map_parts(root_version)
            through = self._through.get(node_id, 0)
            try:
                answer, expires = await self._grant(node_id, parts, now, through, peers)
            except GridError as exc:  # PeerError, RemoteError, CapabilityRefused
                _log.info("grant_failed", delegate=node_id.hex()[:12], error=str(exc))
                self.grants.pop(node_id, None)
                self._refused[node_id] = now + 10 * self.tick_s  # try others meanwhile
                continue
            self.grants[node_id] = Grant(
                node_id, answer.version, expires, root_version, through, peers
            )
            known[node_id] = expires
        self.grants = {n: g for n, g in self.grants.items() if n in peers}
        known = {n: e for n, e in known.items() if now <= e + MOVES_KEPT_S}
        await services.db(catalog.set_delegates, known)
        granted = frozenset(self.grants)
        if granted and granted != self._published_delegates:
            # The recovery root names the delegates, so a node recovered from the key
            # knows whose move records to trust.
            async with services.backup_lock:
                await publish_root(services)
            self._published_delegates = granted
            new_root = await services.db(_root_version, catalog)
            self.grants = {
                n: attrs.evolve(g, root_version=new_root) if g.root_version == root_version else g
                for n, g in self.grants.items()
            }

    async def _map_parts(self, root_version: int) -> list[MapPart]:
        """The catalog's map cut into parts, in one streaming pass (memory bounded by
        the builder), kept on disk and reused until the catalog changes."""
        if self._parts is not None and self._parts_root == root_version:
            return self._parts
        services = self.services
        identity = services.identity
        catalog = services.catalog
        out_dir = services.config.home / PARTS_DIR

        def build() -> list[MapPart]:
            with PartBuilder(out_dir) as builder:
                for chunk in catalog.chunks_in_use():
                    builder.add(held_chunk(identity, chunk))
                return builder.finish()

        self._parts = await services.db(build)
        self._parts_root = root_version
        return self._parts

    async def _grant(
        self,
        node_id: bytes,
        parts: list[MapPart],
        now: float,
        through: int,
        peers: tuple[bytes, ...],
    ) -> tuple[RepairGranted, float]:
        """Grant or renew ``node_id``'s capability: the signed head, then whichever parts
        of the map it lacks (after a small change, one or two)."""
        services = self.services
        cap = build_capability(
            services.identity,
            node_id,
            (),
            now=now,
            lease_s=self.lease_s,
            lat=self.lat,
            lon=self.lon,
            peers=peers,
            after_s=self.after_s,
            threshold=self.threshold,
        )
        head = await trio.to_thread.run_sync(
            functools.partial(cap.seal, services.identity.signing_key, parts=parts),
            limiter=services.cpu_limiter,
        )
        by_digest = {p.ref.digest: p for p in parts}

        async def load(digest: bytes) -> bytes:
            return await trio.to_thread.run_sync(by_digest[digest].read)

        async def seal_for(body: bytes) -> bytes:
            return await trio.to_thread.run_sync(
                seal_part, body, node_id, limiter=services.cpu_limiter
            )

        answer = await deliver(
            await services.link_for(node_id),
            owner=services.identity.node_id,
            version=cap.version,
            head=head,
            parts=dict.fromkeys(by_digest, load),
            seal_for=seal_for,
            applied_through=through,
            timeout_s=services.config.request_timeout_s,
        )
        if answer.missing:
            raise RemoteError("bad_answer", "the delegate did not take up the capability")
        return answer, cap.expires

    async def take_moves(self) -> int:
        """Fetch, check and apply the moves this node's delegates made; returns how many
        were taken.  Runs before each grant, and before the node's own automatic repair
        (a node back after a while must not rebuild what its repairers rebuilt already).

        A move that fails the check counts as seen all the same: it never will pass."""
        services = self.services
        own = services.identity.node_id
        known: dict[bytes, float] = await services.db(services.catalog.delegates)
        present = self.present() - {own}
        allowed = set(known)
        by_handle = await gather_moves(
            services.link_for,
            own,
            asked_for_moves(own, known, present, self.count),
            allowed,
            timeout_s=services.config.request_timeout_s,
            after=self._through,
        )
        if not by_handle:
            return 0
        found: dict[bytes, list[MoveRecord]] = {}
        for moves in by_handle.values():
            for move in moves:
                found.setdefault(move.delegate, []).append(move)
        for node_id in allowed - set(known):  # handed on to: trusted from now on
            known[node_id] = self.clock() + self.lease_s
        await services.db(services.catalog.set_delegates, known)
        identity = services.identity
        catalog = services.catalog

        def apply() -> int:
            taken = 0
            for chunk in list(catalog.chunks_in_use()):
                updated, n = apply_moves(identity, chunk, by_handle, allowed)
                if n:
                    catalog.repair_chunk(updated)
                    taken += n
            return taken

        taken = int(await services.db(apply))
        self.moves_taken += taken
        if taken:
            _log.info("delegated_moves_taken", moves=taken)
            await repair_holders(services, [])  # rewrite the stale records, republish the root
        for node_id, moves in found.items():
            self._through[node_id] = max(self._through.get(node_id, 0), *(m.seq for m in moves))
        return taken


def _root_version(catalog: Any) -> int:
    return int(catalog.root_version())
