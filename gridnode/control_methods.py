"""The control methods the request actor serves, with their parameter checks.

Each method takes the JSON ``params`` the CLI sent and returns a JSON-ready result; the
CLI prints that result verbatim with ``--json``, so the keys here are the stable
interface documented in the README ("The interface scripts rely on").

The methods read the running node through ``ControlledNode``, the few attributes they
use, rather than through ``gridnode.node.Node``: the node builds its method table from
this module, so this module must not import the node back.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import msgpack
import trio

from protocol import format_node_id, short_node_id

from .authority.client import SubscriptionFailed
from .backup import BackupJob, BackupRequest
from .check import Checker
from .control import ControlError, Emit
from .errors import PeerError
from .leave import leave_params
from .listing import (
    diff_snapshots,
    find_in_snapshots,
    json_pages,
    list_snapshot,
    stream_diff,
    stream_snapshot,
)
from .logic.distance import haversine_km, parse_band
from .logic.packing import ErasureParams
from .logic.placement.rules import PlacementRules
from .logic.retention import KeepPolicy, RetentionError
from .logic.tags import TagError, check_tags, parse_filter, schedule_of
from .recovery import recover_catalog as recover
from .repair import repair as repair_job
from .restore import (
    forget_by_policy,
    forget_snapshot,
    resolve,
    restore_snapshot,
    verify_snapshot,
)
from .storage.records import ChunkRecord

if TYPE_CHECKING:
    from .actors.gossip import Gossiper
    from .actors.packet_store import PacketStore
    from .actors.request import Method, RequestActor
    from .actors.retriever import Retriever
    from .audit import Auditor
    from .authority.client import SubscriptionClient
    from .authority.globallog import LogForwarder
    from .authority.reporting import UsageReporter
    from .config import NodeConfig
    from .delegation import Delegator, Repairer
    from .identity import NodeIdentity
    from .job_services import Services
    from .leases import LeaseKeeper
    from .leave import Departure, Handover
    from .scheduler import Scheduler
    from .storage.packets import PacketDirectory
    from .transport import Transport

__all__ = ["ControlledNode", "build_methods"]

#: Backup log entries read per catalog call of a streamed ``log`` (then cut by bytes).
LOG_PAGE_ENTRIES = 512
#: Bounds the pages of one ``log`` (a billion entries): the loop ends on a short page.
MAX_LOG_PAGES = 2_000_000


class ControlledNode(Protocol):
    """What the control methods read of a running node, and the one thing they do to it
    (``shutdown``).  ``gridnode.node.Node`` satisfies it; a member that is None belongs
    to a part the node runs only in some grids (an authority, delegated repair)."""

    @property
    def config(self) -> NodeConfig: ...
    @property
    def identity(self) -> NodeIdentity: ...
    @property
    def services(self) -> Services: ...
    @property
    def started_at(self) -> float: ...
    @property
    def transport(self) -> Transport: ...
    @property
    def packets(self) -> PacketDirectory: ...
    @property
    def gossiper(self) -> Gossiper | None: ...
    @property
    def gossip_dropped(self) -> int: ...
    @property
    def request(self) -> RequestActor: ...
    @property
    def packet_store(self) -> PacketStore: ...
    @property
    def retriever(self) -> Retriever: ...
    @property
    def delegator(self) -> Delegator | None: ...
    @property
    def repairer(self) -> Repairer | None: ...
    @property
    def subscription(self) -> SubscriptionClient | None: ...
    @property
    def log_forwarder(self) -> LogForwarder | None: ...
    @property
    def reporter(self) -> UsageReporter | None: ...
    @property
    def scheduler(self) -> Scheduler | None: ...
    @property
    def auditor(self) -> Auditor | None: ...
    @property
    def departure(self) -> Departure | None: ...
    @property
    def handover(self) -> Handover | None: ...
    @property
    def lease_keeper(self) -> LeaseKeeper | None: ...

    def shutdown(self) -> None: ...


async def _lease_status(node: ControlledNode) -> dict[str, Any]:
    keeper = node.lease_keeper
    pending, pending_bytes = await node.services.db(node.services.catalog.pending_deletes)
    return {
        "pending_deletes": pending,
        "pending_bytes": pending_bytes,
        "lease_s": node.config.lease_s,
        "renew_interval_s": keeper.renew_every_s if keeper is not None else None,
        "counters": dict(keeper.stats) if keeper is not None else {},
    }


def _str(params: dict[str, Any], key: str, default: str | None = None) -> str:
    value = params.get(key, default)
    if not isinstance(value, str):
        raise ControlError("bad_params", f"parameter {key!r} must be a string")
    return value


def _opt_str(params: dict[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is not None and not isinstance(value, str):
        raise ControlError("bad_params", f"parameter {key!r} must be a string")
    return value


def _bool(params: dict[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise ControlError("bad_params", f"parameter {key!r} must be a boolean")
    return value


def _str_list(params: dict[str, Any], key: str) -> tuple[str, ...]:
    value = params.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ControlError("bad_params", f"parameter {key!r} must be a list of strings")
    return tuple(value)


def _tags(params: dict[str, Any]) -> tuple[str, ...]:
    """``backup``'s ``tags``, checked here too: a control client need not be our CLI."""
    try:
        return check_tags(_str_list(params, "tags"))
    except TagError as exc:
        raise ControlError("bad_params", str(exc)) from None


def _tag_filter(params: dict[str, Any]) -> tuple[frozenset[str], ...]:
    """``forget``'s ``tags``: restic's filter, each string a comma-separated group."""
    try:
        return parse_filter(_str_list(params, "tags"))
    except TagError as exc:
        raise ControlError("bad_params", str(exc)) from None


def rules_from(params: dict[str, Any], node: ControlledNode) -> PlacementRules:
    """Rules from the command, with the node's configured defaults."""
    try:
        backup = parse_band(params.get("backup_proximity") or node.config.backup_proximity or ":")
        packet = parse_band(params.get("packet_proximity") or node.config.packet_proximity or ":")
    except ValueError as exc:
        raise ControlError("bad_params", str(exc)) from None
    distinct = _str_list(params, "distinct")
    return PlacementRules(backup_proximity=backup, packet_proximity=packet, distinct=distinct)


def build_methods(node: ControlledNode) -> dict[str, Method]:
    services = node.services

    async def status(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        config = node.config
        peers: list[dict[str, Any]] = []

        async def ping(link: Any) -> None:
            rtt: float | None
            try:
                rtt = await link.ping(timeout_s=2.0)
            except PeerError:
                rtt = None
            peers.append(
                {
                    "node_id": format_node_id(link.peer_id),
                    "short_id": short_node_id(link.peer_id),
                    "address": link.peer_address,
                    "rtt_ms": round(rtt, 3) if rtt is not None else None,
                }
            )

        async with trio.open_nursery() as nursery:
            # ``peers: false`` (the dashboard's ticks): no round trips, ``peers`` empty.
            for link in node.transport.links() if params.get("peers", True) is not False else ():
                nursery.start_soon(ping, link)
        peers.sort(key=lambda p: p["address"])
        members = []
        assert node.gossiper is not None
        for view in node.gossiper.members():
            rec = view.record
            members.append(
                {
                    "node_id": format_node_id(rec.node_id),
                    "short_id": short_node_id(rec.node_id),
                    "address": rec.address,
                    "state": view.state,
                    "city": rec.city,
                    "lat": rec.lat,
                    "lon": rec.lon,
                    "distance_km": round(view.distance_km, 1)
                    if view.distance_km is not None
                    else None,
                    "free_bytes": rec.free_bytes,
                    "allocated_bytes": rec.allocated_bytes,
                    "rtt_ms": round(view.rtt_ms, 3) if view.rtt_ms is not None else None,
                    "trusted": view.location_trusted,
                    "location_plausible": view.location_plausible,
                    "labels": list(rec.labels),
                    "incarnation": rec.incarnation,
                }
            )
        members.sort(key=lambda m: str(m["address"]))
        stats = node.packets.statistics()
        return {
            "node_id": format_node_id(node.identity.node_id),
            "short_id": node.identity.short_id,
            "grid_id": config.grid_id.hex(),
            "grid_name": config.grid_name,
            # The dedup group (gridnode.dedup_group): members' fingerprints agree.
            "dedup_group": (
                {"name": group.name, "fingerprint": group.fingerprint}
                if (group := node.identity.group) is not None
                else None
            ),
            "address": node.transport.address,
            "city": config.city,
            "lat": config.lat,
            "lon": config.lon,
            "location_check": config.location_check,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - node.started_at, 1),
            "storage": {
                "allocated_bytes": stats.allocation_bytes,
                "used_bytes": stats.used_bytes,
                # Recovery roots held for others: inside the allocation, beside packets.
                "root_bytes": stats.other_bytes,
                "free_bytes": stats.free_bytes,
                "packets": stats.packet_count,
                "quarantined": stats.quarantined_count,
                # Where the packets are: storage_dir, on another disk, or HOME/storage.
                "dir": str(node.packets.root),
            },
            "peers": peers,
            "members": members,
            "membership_version": node.gossiper.membership.version,
            "jobs_running": node.request.running,
            # Draining before a graceful leave (``gridnode leave``): takes no new packets.
            "draining": node.departure is not None and node.departure.draining,
            # Members holding a repair capability of this node's snapshots, and until when.
            "repair_delegates": node.delegator.status() if node.delegator is not None else [],
            # Capabilities this node holds for others (it is their delegate).
            "delegated_to_me": node.repairer.leases() if node.repairer is not None else [],
            # Storage audits of this node's holders, per holder (gridnode.audit).
            "audits": node.auditor.scores.report() if node.auditor is not None else [],
            # Leases of this node's packets and deletes holders have not confirmed yet.
            "leases": await _lease_status(node),
            "delegated_repair": {
                "counters": dict(node.repairer.stats) if node.repairer is not None else {},
                "problems": list(node.repairer.problems) if node.repairer is not None else [],
            },
            "counters": {
                **node.packet_store.stats,
                **node.retriever.stats,
                # Packets this node moved off members that left (``gridnode.leave``).
                **(node.handover.stats if node.handover is not None else {}),
                "refused_handshakes": node.transport.refused_handshakes,
                "refused_connections": node.transport.refused_connections,
                "gossip_dropped": node.gossip_dropped,
                **node.gossiper.counters(),
            },
            **(
                {"subscription": sub}
                if node.subscription is not None
                and (sub := node.subscription.status_json()) is not None
                else {}
            ),
        }

    async def snapshots(params: dict[str, Any], emit: Emit) -> list[dict[str, Any]]:
        rows = await services.db(services.catalog.snapshots)
        # Which ``[[schedule]]`` made each snapshot (None: a backup someone typed): its
        # ``schedule:NAME`` tag, or for a snapshot made before tags, the scheduler's list.
        made_by = node.scheduler.snapshot_schedules() if node.scheduler is not None else {}
        return [
            {**s.to_json(), "schedule": schedule_of(s.tags) or made_by.get(s.snapshot_id)}
            for s in rows
        ]

    async def schedules(params: dict[str, Any], emit: Emit) -> list[dict[str, Any]]:
        """``gridnode schedule list``: each schedule, its next run and its last one."""
        return node.scheduler.describe() if node.scheduler is not None else []

    async def backup(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        paths = _str_list(params, "paths")
        if not paths:
            raise ControlError("bad_params", "nothing to back up: give at least one path")
        for path in paths:
            if not os.path.isabs(path):
                raise ControlError("bad_params", f"path {path!r} must be absolute")
        try:
            erasure = ErasureParams.parse(_str(params, "redundancy", node.config.redundancy))
        except ValueError as exc:
            raise ControlError("bad_params", str(exc)) from None
        flags = {flag: _bool(params, flag) for flag in ("one_file_system", "dry_run")}
        request = BackupRequest(
            paths=paths,
            excludes=_str_list(params, "excludes"),
            params=erasure,
            rules=rules_from(params, node),
            one_file_system=flags["one_file_system"],
            tags=_tags(params),
        )
        job = BackupJob(services, request, emit)
        return await (job.dry_run() if flags["dry_run"] else job.run())

    async def restore(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        dest = _str(params, "to")
        if not os.path.isabs(dest):
            raise ControlError("bad_params", "the destination must be an absolute path")
        path = _opt_str(params, "path")
        numeric_owner = _bool(params, "numeric_owner")
        return await restore_snapshot(
            services, _str(params, "snapshot"), dest, path, emit, numeric_owner=numeric_owner
        )

    async def ls(params: dict[str, Any], emit: Emit) -> list[dict[str, Any]] | dict[str, Any]:
        """Rows in ``entries`` events when the client asks to ``stream`` (today's CLI
        does); the whole listing as one answer for a client from before."""
        snapshot, path = _str(params, "snapshot"), _opt_str(params, "path")
        if _bool(params, "stream"):
            return await stream_snapshot(services, snapshot, path, emit)
        return await list_snapshot(services, snapshot, path)

    async def find(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        return await find_in_snapshots(
            services, _str(params, "pattern"), list(_str_list(params, "snapshots"))
        )

    async def diff(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        """The lists in ``diff`` events when the client asks to ``stream`` (as ``ls``)."""
        first, second = _str(params, "from"), _str(params, "to")
        if _bool(params, "stream"):
            return await stream_diff(services, first, second, emit)
        return await diff_snapshots(services, first, second)

    async def verify(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        return await verify_snapshot(services, _str(params, "snapshot"), emit)

    async def repair(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        snapshot = params.get("snapshot")
        if snapshot is not None and not isinstance(snapshot, str):
            raise ControlError("bad_params", "parameter 'snapshot' must be a string")
        return await repair_job(services, snapshot, emit)

    async def check(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        """``gridnode check``: each snapshot's weakest chunk from the member view, the
        audits and the catalog, no packet fetched (``gridnode.check``)."""
        repair = _bool(params, "repair")
        gossiper = node.gossiper
        if gossiper is None:
            raise ControlError("not_ready", "this node is starting")
        own = node.identity.node_id

        def present() -> set[bytes]:
            """Alive or suspect (not yet declared dead), as the automatic repair counts."""
            members = gossiper.members()
            return {v.record.node_id for v in members if v.state in ("alive", "suspect")} | {own}

        checker = Checker(
            services=services,
            alive=present,
            state_of=lambda n: "alive" if n == own else gossiper.membership.state_of(n),
            scores=node.auditor.scores if node.auditor is not None else None,
            threshold=node.config.repair_threshold,
            on_repair=node.request.note_repair,
        )
        return await checker.run(repair=repair)

    async def forget(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        raw_policy = params.get("policy")
        if raw_policy is None:
            if "tags" in params:
                raise ControlError("bad_params", "'tags' filters a policy; give one")
            return await forget_snapshot(services, _str(params, "snapshot"))
        if "snapshot" in params:
            raise ControlError("bad_params", "give a snapshot or a policy, not both")
        if not isinstance(raw_policy, dict):
            raise ControlError("bad_params", "parameter 'policy' must be an object")
        known = {f.name for f in attrs.fields(KeepPolicy)}
        if unknown := sorted(set(raw_policy) - known):
            raise ControlError("bad_params", f"unknown policy keys: {', '.join(unknown)}")
        dry_run = _bool(params, "dry_run")
        try:
            policy = KeepPolicy(**raw_policy)
            return await forget_by_policy(
                services, policy, dry_run=dry_run, emit=emit, tags=_tag_filter(params)
            )
        except RetentionError as exc:
            raise ControlError("bad_params", str(exc)) from None

    async def prune(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        """Release now what the lease keeper releases in the background: orphans past
        their grace and every queued delete whose holder is in the view."""
        if node.lease_keeper is None:
            raise ControlError("not_ready", "this node is starting")
        await emit({"event": "started"})
        return {"event": "result", **await node.lease_keeper.round(prune=True)}

    async def placement(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        snap = await resolve(services, _str(params, "snapshot"))
        chunks: list[ChunkRecord] = await services.db(services.catalog.chunks_of, snap.snapshot_id)
        if snap.record:
            chunks += [ChunkRecord.from_wire(r) for r in msgpack.unpackb(snap.record, raw=False)]
        assert node.gossiper is not None
        where = {v.record.node_id: v.record for v in node.gossiper.members()}
        src = node.gossiper.source()

        def locate(node_id: bytes) -> tuple[float, float] | None:
            rec = where.get(node_id)
            if rec is None or rec.lat is None or rec.lon is None:
                return None
            return rec.lat, rec.lon

        origin = (src.lat, src.lon) if src.lat is not None and src.lon is not None else None
        out_chunks = []
        for chunk in sorted(chunks, key=lambda c: c.chunk_id):
            packets = []
            located: list[tuple[float, float]] = []
            for p in chunk.packets:
                spot = locate(p.target)
                dist = haversine_km(*origin, *spot) if origin and spot else None
                if spot is not None:
                    located.append(spot)
                rec = where.get(p.target)
                packets.append(
                    {
                        "share": p.share,
                        "packet_id": p.packet_id.hex(),
                        "target": format_node_id(p.target),
                        "target_short": short_node_id(p.target),
                        "city": rec.city if rec else None,
                        "lat": spot[0] if spot else None,
                        "lon": spot[1] if spot else None,
                        "distance_km": round(dist, 1) if dist is not None else None,
                    }
                )
            pairwise = [haversine_km(*a, *b) for a, b in itertools.combinations(located, 2)]
            out_chunks.append(
                {
                    "chunk_id": chunk.chunk_id.hex(),
                    "kind": chunk.domain,
                    "k": chunk.k,
                    "n": chunk.n,
                    "packets": packets,
                    "pairwise_min_km": round(min(pairwise), 1) if pairwise else None,
                    "pairwise_max_km": round(max(pairwise), 1) if pairwise else None,
                }
            )
        return {
            "snapshot_id": snap.snapshot_id,
            "rules": snap.rules,
            "source": {
                "node_id": format_node_id(node.identity.node_id),
                "lat": src.lat,
                "lon": src.lon,
                "city": node.config.city,
            },
            "chunks": out_chunks,
        }

    async def backup_log(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        """Asked to ``stream`` (today's CLI), the entries leave in pages of ``log``
        events and the answer counts them: years of hourly backups are more than one
        control message.  Older clients get every entry in the answer."""
        catalog = services.catalog
        ok, detail = await services.db(catalog.verify_log)
        if not _bool(params, "stream"):
            entries = await services.db(catalog.log_entries)
            return {"verified": ok, "detail": detail, "entries": [e.to_json() for e in entries]}
        after, sent = 0, 0
        for _ in range(MAX_LOG_PAGES):
            page = await services.db(catalog.log_page, after, LOG_PAGE_ENTRIES)
            for rows in json_pages([e.to_json() for e in page]):
                await emit({"event": "log", "entries": rows})
            sent += len(page)
            if len(page) < LOG_PAGE_ENTRIES:
                break
            after = page[-1].seq
        return {"verified": ok, "detail": detail, "entries": sent}

    async def recover_catalog(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        forwarder = node.log_forwarder
        return await recover(services, forwarder.authority_head if forwarder else None)

    async def subscribe(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        if node.subscription is None:
            raise ControlError(
                "open_grid", "this node's grid has no authority (an open grid): nothing to join"
            )
        invite = _str(params, "invite")
        plan = _str(params, "plan", "")
        try:
            cert = await node.subscription.subscribe(invite, plan)
        except SubscriptionFailed as exc:
            raise ControlError(exc.code, str(exc)) from None
        return cert.to_json()

    async def account(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        """The node's account with the grid authority (``gridnode account``)."""
        reporter = node.reporter
        if reporter is None or node.subscription is None:
            raise ControlError(
                "open_grid", "this node's grid has no authority (an open grid): no account"
            )
        result: dict[str, Any] = await reporter.account(node.subscription.status_json())
        return result

    async def leave(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        """``gridnode leave``: drain, wait for the owners to move their packets, then
        leave (``gridnode.leave``); ``cancel`` takes packets again."""
        timeout_s, force, cancel = leave_params(params)
        if node.departure is None:
            raise ControlError("not_ready", "this node is starting")
        if cancel:
            node.departure.cancel()
            return {"event": "result", "ok": True, "draining": False}
        return await node.departure.leave(timeout_s=timeout_s, force=force, emit=emit)

    async def shutdown(params: dict[str, Any], emit: Emit) -> dict[str, Any]:
        node.shutdown()
        return {"stopping": True}

    return {
        "status": status,
        "snapshots": snapshots,
        "schedules": schedules,
        "backup": backup,
        "restore": restore,
        "ls": ls,
        "diff": diff,
        "find": find,
        "verify": verify,
        "forget": forget,
        "prune": prune,
        "repair": repair,
        "check": check,
        "placement": placement,
        "log": backup_log,
        "recover_catalog": recover_catalog,
        "subscribe": subscribe,
        "account": account,
        "leave": leave,
        "shutdown": shutdown,
    }
