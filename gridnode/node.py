"""run_node: one root nursery, every channel, every actor of a node (style.md 8.2).

Who talks to whom, in one place:

    control (CLI) ──ControlJob──> request ──UploadChunk──> uploader ──ws──> targets
                                     │                        └─PlaceChunk─> sequencer <── gossip
                                     │   ──FetchChunk───> retriever ────ws──> holders
                                     └── ──AssembleTree─> assembler ──> retriever
    transport links ──requests──> packet_store (target side)      links ──gossip_*──> gossip

Every channel is bounded; every actor is started with ``nursery.start`` in dependency
order, so ``run_node`` reports ready only when the whole node is.

Shutdown (SIGINT/SIGTERM, or ``Node.shutdown()``): stop accepting connections and
control calls, announce the leave to gossip, give running jobs ``grace_period_s`` to
finish, close every session with a goodbye, then cancel what is left.  The catalog is
transactional, so a cut at any point loses nothing that was reported done.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

import structlog
import trio

from protocol import (
    AuditPacket,
    Message,
    RenewCertificate,
    RenewLeases,
    SpreadRevocations,
    Subscribe,
    format_node_id,
    short_node_id,
)

from .actors.assembler import Assembler
from .actors.calls import Call, Request, call
from .actors.gossip import Gossiper, GossipIn, build_membership, parse_labels
from .actors.packet_store import PacketStore, TargetRequest
from .actors.request import ControlJob, RequestActor
from .actors.retriever import FetchChunk, Packet, Retriever
from .actors.sequencer import Sequencer
from .actors.uploader import Uploader
from .admission import Admission, NotSubscribed
from .audit import AUDITS_FILE, Auditor, AuditScores, TrustedView, answer_audit
from .authority import AUTHORITY_KEY_NAME
from .authority.client import SubscriptionClient
from .authority.subscriptions import SubscriptionManager
from .config import NodeConfig
from .control import ControlServer, Emit
from .control_methods import build_methods
from .dashboard import Dashboard, JobBoard, dashboard_method
from .dedup_group import load_group
from .delegation import Delegator, Repairer
from .errors import PeerGone, RemoteError
from .identity import NodeIdentity
from .job_services import Services
from .leases import LeaseKeeper
from .leave import Departure, Handover
from .log import get_logger
from .logic.placement.members import Member
from .ratelimit import RateLimiter
from .repair import AutoRepair
from .scheduler import Scheduler
from .storage.catalog import Catalog
from .storage.holdings import Holdings
from .storage.location import open_packet_directory
from .storage.packets import PacketDirectory
from .storage.records import ChunkRecord
from .summary import run_reporting
from .transport import PeerLink, Transport, TransportSettings
from .transport.pool import MAX_PREAUTH, MAX_SESSIONS

__all__ = ["Node", "open_node_storage", "run_node"]

_log = get_logger()

#: Sizes of the actors' inbound channels (style.md: small and bounded).
CHANNEL_SIZE = 16
GOSSIP_INBOX = 256


def open_node_storage(
    config: NodeConfig, identity: NodeIdentity
) -> tuple[Catalog, PacketDirectory, Holdings]:
    home = config.home
    catalog = Catalog(home / "catalog.sqlite", signing_key=identity.signing_key)
    (home / "storage").mkdir(parents=True, exist_ok=True)
    holdings = Holdings(home / "storage" / "holdings.sqlite")
    # The recovery roots held for others count against the allocation like packets.  The
    # packets may live on another disk (storage_dir); holdings stay in the home.
    packets = open_packet_directory(
        home, config.packet_root, config.allocated_bytes, other_bytes=holdings.root_bytes()
    )
    return catalog, packets, holdings


#: How often the upload rate is read from our certificate (seconds).
BANDWIDTH_REREAD_S = 1.0
#: How often sessions are checked against their peers' certificates (seconds).
CERTIFICATE_SWEEP_S = 10.0
#: File descriptors kept for the catalog, holdings, packet files, logs and threads: the
#: network may use the rest, so sockets never starve the disk.
FDS_FOR_FILES = 256


def sessions_for_fd_limit() -> int:
    """How many authenticated sessions fit the process's descriptor limit (raised to its
    hard limit first): each session is one socket, and the pre-authentication cap and the
    files need their share."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            wanted = 65536 if hard == resource.RLIM_INFINITY else hard
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    except (OSError, ValueError):
        soft = 1024
    return max(8, min(MAX_SESSIONS, soft - MAX_PREAUTH - FDS_FOR_FILES))


class Node:
    """A running node.  Built and started by ``run_node``; hand it to tests and the CLI."""

    def __init__(self, config: NodeConfig, identity: NodeIdentity) -> None:
        self.config = config
        # A dedup group's key (HOME/dedup-group.key) keys its data chunks: gridnode.dedup_group.
        identity = identity.in_group(load_group(config.home, config.dedup_group))
        self.identity = identity
        self.started_at = time.time()
        #: Running jobs' latest progress, for the dashboard's transfers (gridnode.dashboard).
        self.jobs = JobBoard()
        self.log = _log.bind(node=identity.short_id)
        self.catalog, self.packets, self.holdings = open_node_storage(config, identity)
        interrupted = self.catalog.mark_interrupted()
        # Scratch files (data assembly records being stored or recovered) of a process
        # that died mid-job: nothing refers to them any more.
        scratch = config.home / "tmp"
        if scratch.is_dir():
            for stale in scratch.glob("*.msgpack"):
                stale.unlink(missing_ok=True)
        if interrupted:
            self.log.warning("interrupted_snapshots", snapshots=interrupted)
            for sid in interrupted:
                self.catalog.log("backup_interrupted", sid)
        if not self.catalog.profile():
            self.catalog.set_profile(
                {
                    "node_id": identity.printable_id,
                    "created": time.time(),
                    "grid_id": config.grid_id.hex(),
                }
            )
        self.cpu_limiter = trio.CapacityLimiter(max(2, os.cpu_count() or 2))
        #: Audit proofs are answered one at a time (each costs 30-220 ms of CPU): a peer
        #: that floods audits waits in line instead of taking every core.
        self.audit_limiter = trio.CapacityLimiter(1)
        self.disk_limiter = trio.CapacityLimiter(8)
        is_authority = (config.home / AUTHORITY_KEY_NAME).exists()
        self.admission = Admission(
            grid_id=config.grid_id,
            authority_key=bytes.fromhex(config.authority_key) if config.authority_key else None,
            home=config.home,
            node_id=identity.node_id,
            is_authority=is_authority,
        )
        self.transport = Transport(
            identity=identity,
            admission=self.admission,
            settings=TransportSettings(
                grid_id=config.grid_id,
                listen_host=config.listen_host,
                listen_port=config.listen_port,
                max_frame_bytes=config.max_frame_bytes,
                seal_payloads=config.seal_payloads,
                request_timeout_s=config.request_timeout_s,
                handshake_timeout_s=config.handshake_timeout_s,
                max_sessions=min(config.max_sessions, sessions_for_fd_limit()),
                session_idle_s=config.session_idle_s,
            ),
            handler=self,
            advertised_address=config.advertise or None,
        )
        # The grid authority role (issue 9): a home holding the grid key also serves the
        # subscription manager.  Every node of a grid with an authority keeps a certificate.
        self.authority: SubscriptionManager | None = None
        if is_authority:
            self.authority = SubscriptionManager(
                config.home, lifetime_s=config.certificate_lifetime_s
            )
        self.subscription: SubscriptionClient | None = None
        if config.authority_key:
            self.subscription = SubscriptionClient(
                home=config.home,
                grid_id=config.grid_id,
                node_id=identity.node_id,
                authority_key=bytes.fromhex(config.authority_key),
                authority_address=config.authority_address,
                connect=self.transport.connect,
                local=self.authority,
                request_timeout_s=config.request_timeout_s,
            )
        self._build_global_log_and_revocations()
        self._build_metering()
        self._shutdown = trio.Event()
        self.gossiper: Gossiper | None = None
        self.auto_repair: AutoRepair | None = None
        self.repairer: Repairer | None = None
        self.delegator: Delegator | None = None
        #: The graceful leave (issue 10): this node's departure, and the hand-over of
        #: its own packets off members that leave (``gridnode.leave``).
        self.departure: Departure | None = None
        self.handover: Handover | None = None
        self.stopped = trio.Event()

    # --- peer requests (RequestHandler for the transport) -------------------------------------

    async def handle_request(
        self, link: PeerLink, msg: Message, payload_digest: bytes | None
    ) -> Message:
        if isinstance(msg, Subscribe | RenewCertificate):
            if self.authority is None:
                raise RemoteError("not_authority", "this node is not the grid authority")
            return await self.authority.serve(msg, link.peer_id, self.disk_limiter)
        if not self._certified(link):
            raise RemoteError(
                "not_admitted", "this node has no valid subscription certificate: subscribe first"
            )
        if msg.KIND in ("forward_log", "get_revocations"):
            return await self._serve_authority(link, msg)
        if isinstance(msg, AuditPacket):  # storage audits (gridnode.audit)
            return await answer_audit(
                self.packets, msg, disk_limiter=self.disk_limiter, cpu_limiter=self.audit_limiter
            )
        if msg.KIND in ("grant_repair", "grant_repair_part", "get_repair_moves"):
            if self.repairer is None:
                raise RemoteError("not_ready", "this node is starting")
            return await self.repairer.serve(msg, link.peer_id)
        if msg.KIND in ("usage_report", "get_account"):
            if self.metering is None:
                raise RemoteError("not_authority", "this node is not the grid authority")
            return await self.metering.serve(msg, link.peer_id, self.disk_limiter)
        answer: Message = await call(
            self._store_send,
            TargetRequest(
                msg,
                payload_digest,
                link.peer_id,
                self._source_quota(link),
                leased=link.speaks(RenewLeases),
            ),
        )
        return answer

    async def _watch_certificates(self) -> None:
        """Certificates run out and get renewed while sessions live on: a session whose
        peer's certificate no longer holds (expired, revoked) is closed, so the peer comes
        back with its renewed one or not at all; our own renewed certificate goes into our
        member record so gossip keeps admitting us."""
        last_sweep = trio.current_time()
        while True:
            await trio.sleep(1.0)
            own = self.admission.own_certificate()  # a stat: cheap every second
            gossiper = self.gossiper
            if gossiper is not None and own and own != gossiper.membership.self_record.certificate:
                gossiper.membership.update_self(trio.current_time(), certificate=own)
            now = trio.current_time()
            if now - last_sweep < CERTIFICATE_SWEEP_S:
                continue
            last_sweep = now
            for link in self.transport.links():
                # The authority keeps an uncertified session a little while: its peer came
                # to subscribe, and reconnects with the certificate it got.
                if self._certified(link) or (
                    self.admission.is_authority and now - link.opened_at < CERTIFICATE_SWEEP_S
                ):
                    continue
                await link.aclose("not_admitted", "the peer's certificate no longer holds")

    #: (when last read, the rate then): see ``_bandwidth_bps``.
    _bandwidth: tuple[float, int | None] = (float("-inf"), None)

    def _bandwidth_bps(self) -> int | None:
        """The upload rate the subscription allots (None: open grid or not subscribed;
        an unsubscribed node cannot back up anyway).

        Read at most once a second: the uploader asks before every batch, and reading
        it checks our certificate's signature (an Ed25519 verify per batch was 5% of a
        source's CPU); a renewed certificate still applies within a second."""
        now = trio.current_time()
        read_at, rate = self._bandwidth
        if now - read_at < BANDWIDTH_REREAD_S:
            return rate
        try:
            allocations = self.admission.own_allocations()
            rate = allocations.bandwidth_bps if allocations is not None else None
        except NotSubscribed:
            rate = None
        self._bandwidth = (now, rate)
        return rate

    # --- the global backup log and revocations (issue 9) -------------------------------------

    def _build_global_log_and_revocations(self) -> None:
        """A grid with an authority: this node forwards its backup log to the authority's
        global log and polls it for revocations; the authority's node serves both (and
        reaches its own database directly)."""
        from .authority.globallog import GlobalLog, LogForwarder
        from .authority.revocations import RevocationPoller

        config = self.config
        self.global_log: GlobalLog | None = None
        self.log_forwarder: LogForwarder | None = None
        self.revocation_poller: RevocationPoller | None = None
        if self.authority is not None:
            self.global_log = GlobalLog(self.authority.db)
        if not config.authority_key:
            return
        self.log_forwarder = LogForwarder(
            catalog=self.catalog,
            node_id=self.identity.node_id,
            authority_address=config.authority_address,
            connect=self.transport.connect,
            local=self.global_log,
            interval_s=config.log_forward_s,
            request_timeout_s=config.request_timeout_s,
        )
        self.revocation_poller = RevocationPoller(
            admission=self.admission,
            authority_address=config.authority_address,
            connect=self.transport.connect,
            on_revoked=self._close_revoked,
            local=self.authority.db if self.authority is not None else None,
            interval_s=config.revocation_poll_s,
            request_timeout_s=config.request_timeout_s,
            peers=lambda: [link for link in self.transport.links() if self._certified(link)],
        )

    # --- metering (issue 9) -----------------------------------------------------------------

    def _build_metering(self) -> None:
        """A grid with an authority: this node sends it signed usage reports; the
        authority's node also keeps the usage history and issues invoices each period."""
        from .authority.metering import Metering
        from .authority.reporting import TrafficMeter, UsageReporter

        config = self.config
        self.metering: Metering | None = None
        self.reporter: UsageReporter | None = None
        if self.authority is not None:
            self.metering = Metering(
                config.home,
                billing_period_s=config.billing_period_s,
                report_interval_s=config.usage_report_interval_s,
            )
        if not config.authority_key:
            return
        traffic = TrafficMeter()
        traffic.attach(self.transport)
        subscription = self.subscription
        self.reporter = UsageReporter(
            home=config.home,
            grid_id=config.grid_id,
            signing_key=self.identity.signing_key,
            authority_key=bytes.fromhex(config.authority_key),
            authority_address=config.authority_address,
            connect=self.transport.connect,
            traffic=traffic,
            target_bytes=lambda: self.packets.used_bytes,
            interval_s=config.usage_report_interval_s,
            ready=lambda: subscription is not None and subscription.certificate is not None,
            local=self.metering,
            request_timeout_s=config.request_timeout_s,
            served_bytes=self._served_bytes,
        )

    def _served_bytes(self) -> int:
        store = getattr(self, "packet_store", None)  # built after the reporter
        return int(store.stats.get("bytes_served", 0)) if store is not None else 0

    async def _serve_authority(self, link: PeerLink, msg: Message) -> Message:
        from .authority.revocations import serve_revocations

        if self.authority is None or self.global_log is None:
            raise RemoteError("not_authority", "this node is not the grid authority")
        if msg.KIND == "forward_log":
            return await self.global_log.serve(msg, link.peer_id, self.disk_limiter)
        return await serve_revocations(self.authority.db, msg, self.disk_limiter)

    async def _close_revoked(self, node_ids: set[bytes]) -> None:
        """Close the sessions of peers whose certificate was just revoked, now rather than
        at the next certificate sweep; their handshakes are refused from now on."""
        for link in self.transport.links():
            if link.peer_id in node_ids and not self._certified(link):
                await link.aclose("not_admitted", "the peer's certificate was revoked")

    def _source_quota(self, link: PeerLink) -> int | None:
        """The peer's source quota, from the certificate it showed (None: open grid).  A
        target knows only what the peer keeps *here*, so it holds each source to its
        quota here; the authority's metering sees the whole."""
        if self.admission.open:
            return None
        cert = self.admission.certificate(link.session.peer_certificate)
        return cert.allocations.source_bytes if cert is not None else 0

    def _certified(self, link: PeerLink) -> bool:
        """Only the authority lets uncertified sessions in (to subscribe); nothing else
        may come over them."""
        return self.admission.open or self.admission.certified(
            link.peer_id, link.session.peer_certificate
        )

    def handle_oneway(self, link: PeerLink, msg: Message) -> None:
        if not self._certified(link):
            self.log.info("uncertified_oneway", kind=msg.KIND, peer=link.short_id)
            return
        if msg.KIND.startswith("gossip_"):
            try:
                self._gossip_send.send_nowait(GossipIn(link.peer_id, msg))
            except trio.WouldBlock:
                self.gossip_dropped += 1
        elif isinstance(msg, SpreadRevocations) and self.revocation_poller is not None:
            self.revocation_poller.received(msg.revocations)
        else:
            self.log.info("unexpected_oneway", kind=msg.KIND, peer=link.short_id)

    gossip_dropped = 0

    # --- helpers the actors get ------------------------------------------------------------------

    async def link_for(self, node_id: bytes) -> PeerLink:
        link = self.transport.link(node_id)
        if link is not None:
            return link
        address = self.gossiper.address_of(node_id) if self.gossiper else None
        if address is None:
            raise PeerGone(
                f"no known address for node {short_node_id(node_id)}", peer=short_node_id(node_id)
            )
        return await self.transport.connect(address, expect=node_id)

    # --- lifetime ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        self._shutdown.set()

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        # Every line any task of this node logs carries the node id: tasks inherit the
        # context of the task that started them (style.md, structlog contextvars).
        structlog.contextvars.bind_contextvars(node=self.identity.short_id)
        try:
            async with trio.open_nursery() as nursery:
                await self._start(nursery)
                if not config.authority_key:
                    self.log.warning(
                        "open_grid",
                        message="this grid has no authority: it admits anyone who can reach "
                        "one of its nodes (create grids with `gridnode authority init`)",
                    )
                self.log.info(
                    "node_started",
                    address=self.transport.address,
                    control_socket=str(self.control.socket_path),
                )
                task_status.started(self)
                await self._shutdown.wait()
                self.log.info("node_stopping")
                self.transport.stop_accepting()
                self.control.stop()
                if self.gossiper is not None:
                    self.gossiper.leave()
                with trio.move_on_after(config.grace_period_s):
                    await self.request.wait_idle()
                    await trio.sleep(0.05)  # let the leave announcement go out
                with trio.move_on_after(2):
                    await self.transport.close_all("node shutting down")
                nursery.cancel_scope.cancel()
        finally:
            self.catalog.close()
            if self.authority is not None:
                self.authority.close()
            if self.metering is not None:
                self.metering.close()
            self.stopped.set()
            self.log.info("node_stopped")

    async def _start(self, nursery: trio.Nursery) -> None:
        config, identity = self.config, self.identity
        self._seq_send, seq_recv = trio.open_memory_channel[Call[Request[Any]]](CHANNEL_SIZE)
        self._store_send, store_recv = trio.open_memory_channel[Call[Request[Any]]](CHANNEL_SIZE)
        self._upload_send, upload_recv = trio.open_memory_channel[Call[Request[Any]]](CHANNEL_SIZE)
        self._retr_send, retr_recv = trio.open_memory_channel[Call[Request[Any]]](CHANNEL_SIZE)
        self._asm_send, asm_recv = trio.open_memory_channel[Call[Request[Any]]](CHANNEL_SIZE)
        self._req_send, req_recv = trio.open_memory_channel[Call[Request[Any]]](CHANNEL_SIZE)
        self._gossip_send, gossip_recv = trio.open_memory_channel[GossipIn](GOSSIP_INBOX)

        # The transport first: gossip needs our real (possibly ephemeral) address.
        await nursery.start(self.transport.run)
        membership = build_membership(
            identity=identity,
            config=config,
            address=self.transport.address,
            free_bytes=self.packets.free_bytes,
            now=trio.current_time(),
            certificate=self.admission.own_certificate(),
            admit=None if self.admission.open else self.admission.admits_record,
        )
        self.gossiper = Gossiper(
            membership=membership,
            inbound=gossip_recv,
            connect=self.transport.connect,
            link_of=self.transport.link,
            seeds=config.seeds,
            allotted=self.admission.allotted_bytes,
        )

        self.packet_store = PacketStore(
            identity=identity,
            packets=self.packets,
            holdings=self.holdings,
            inbound=store_recv,
            disk_limiter=self.disk_limiter,
            on_free_bytes_changed=self._free_bytes_changed,
            lease_s=config.lease_s,
            lease_grace_s=config.lease_grace_s,
            sweep_interval_s=config.lease_sweep_interval_s,
        )
        await nursery.start(self.packet_store.run)
        # Storage audit scores (gridnode.audit): distrusted holders get no new packets.
        scores = AuditScores.load(config.home / AUDITS_FILE, threshold=config.audit_threshold)
        trusted = TrustedView(
            view=self.gossiper.placement_view,
            gossip_version=lambda: membership.version,
            scores=scores,
        )
        self.sequencer = Sequencer(
            key=identity.sequence_key,
            shared_key=identity.shared_sequence_key,
            inbound=seq_recv,
            view=trusted.members,
            source=self.gossiper.source,
            version=trusted.version,
        )
        await nursery.start(self.sequencer.run)
        self.uploader = Uploader(
            identity=identity,
            inbound=upload_recv,
            sequencer=self._seq_send,
            link_for=self.link_for,
            request_timeout_s=config.request_timeout_s,
            rate=RateLimiter(self._bandwidth_bps),
            stats=self.packet_store.stats,  # one set of counters in ``status``, as before
        )
        await nursery.start(self.uploader.run)
        self.retriever = Retriever(
            inbound=retr_recv,
            link_for=self.link_for,
            is_connected=lambda n: self.transport.link(n) is not None,
            request_timeout_s=config.request_timeout_s,
        )
        await nursery.start(self.retriever.run)

        async def fetch(chunk: ChunkRecord) -> dict[int, Packet]:
            fetched = await call(self._retr_send, FetchChunk(chunk))
            return fetched.shares

        self.assembler = Assembler(
            inbound=asm_recv,
            dedup_secret=identity.dedup_secret,
            record_key=identity.record_key,
            cpu_limiter=self.cpu_limiter,
            disk_limiter=self.disk_limiter,
            fetch=fetch,
        )
        await nursery.start(self.assembler.run)
        self.services = Services(
            identity=identity,
            config=config,
            catalog=self.catalog,
            sequencer=self._seq_send,
            uploader=self._upload_send,
            retriever=self._retr_send,
            assembler=self._asm_send,
            cpu_limiter=self.cpu_limiter,
            disk_limiter=self.disk_limiter,
            alive_members=self.gossiper.alive,
            link_for=self.link_for,
            allocations=self.admission.own_allocations,
        )
        methods = {**build_methods(self), "dashboard": dashboard_method(self)}
        self.request = RequestActor(inbound=req_recv, methods=methods)
        await nursery.start(self.request.run)
        await nursery.start(self.gossiper.run)
        if not self.admission.open:
            nursery.start_soon(self._watch_certificates)
        # Unattended backups (``[[schedule]]``), submitted as control jobs; before the
        # control server, so a `gridnode schedule list` always finds the scheduler.
        self.scheduler = Scheduler(
            schedules=config.schedules,
            home=config.home,
            submit=self._control_job,
            default_redundancy=config.redundancy,
            alive_members=lambda: len(self.services.alive_members()),
            stopping=self._shutdown.is_set,
            settle_s=min(60.0, 4 * config.gossip_sync_interval_s),
        )
        await nursery.start(self.scheduler.run)
        if config.dashboard_listen:  # gridnode.dashboard: hypercorn loads only when it runs
            from .dashboard.server import open_dashboard

            self.dashboard = await nursery.start(open_dashboard, self, self._control_job)
        self.control = ControlServer(
            home=config.home,
            handler=self._control_job,
            node_id=format_node_id(identity.node_id),
        )
        await nursery.start(self.control.run)
        if config.repair_after_s > 0:
            gossiper = self.gossiper
            self.auto_repair = AutoRepair(
                services=self.services,
                present=lambda: {
                    v.record.node_id for v in gossiper.members() if v.state in ("alive", "suspect")
                },
                after_s=config.repair_after_s,
                tick_s=min(60.0, max(0.2, config.repair_after_s / 4)),
                threshold=config.repair_threshold,
                # Time for gossip to learn the view after a start, before an absence counts.
                settle_s=min(config.repair_after_s, 4 * config.gossip_sync_interval_s),
                on_result=self.request.note_repair,  # the repair totals of node_summary
                distrusted=scores.distrusted,  # moved at once, not after repair_after_s
            )
            await nursery.start(self.auto_repair.run)
        # The graceful leave (gridnode.leave): packets of ours move off draining members,
        # and this node drains again if it was draining when it stopped.
        self.handover = Handover(
            services=self.services,
            draining=self.gossiper.draining_members,
            version=lambda: membership.version,
        )
        await nursery.start(self.handover.run)
        self.departure = Departure(
            home=config.home,
            services=self.services,
            packets=self.packets,
            packet_store=self.packet_store,
            gossiper=self.gossiper,
            shutdown=self.shutdown,
        )
        self.departure.resume()
        # Storage audits of this node's holders (gridnode.audit); scores shown even when off.
        self.auditor = Auditor(
            catalog=self.catalog,
            link_for=self.link_for,
            scores=scores,
            disk_limiter=self.disk_limiter,
            interval_s=config.audit_interval_s,
            batch=config.audit_batch,
            timeout_s=config.request_timeout_s,
        )
        await nursery.start(self.auditor.run)
        # Leases of this node's packets, retried deletes and orphans (gridnode.leases).
        gossip_view = self.gossiper
        self.lease_keeper = LeaseKeeper(
            services=self.services,
            present=lambda: {
                v.record.node_id for v in gossip_view.members() if v.state in ("alive", "suspect")
            },
            lease_s=config.lease_s,
            renew_interval_s=config.lease_renew_interval_s,
            grace_s=config.lease_grace_s,
            orphan_grace_s=config.orphan_grace_s,
            interval_s=config.lease_sweep_interval_s,
        )
        await nursery.start(self.lease_keeper.run)
        await self._start_delegation(nursery)
        # The periodic node_summary line and the allocation_full warning (gridnode.summary).
        await nursery.start(run_reporting, self, config.summary_interval_s)
        if self.subscription is not None:
            await nursery.start(self.subscription.run)
        if self.log_forwarder is not None:
            await nursery.start(self.log_forwarder.run)
        if self.revocation_poller is not None:
            await nursery.start(self.revocation_poller.run)
        if self.metering is not None:
            await nursery.start(self.metering.run)
        if self.reporter is not None:
            await nursery.start(self.reporter.run)
        if self.config.metrics_listen:
            from .metrics import serve_metrics  # prometheus-client, only when asked for

            self.metrics_port = await nursery.start(serve_metrics, self, self.config.metrics_listen)

    #: The port the metrics endpoint listens on (None: off).
    metrics_port: int | None = None
    #: The browser dashboard (``gridnode.dashboard``; None: ``dashboard_listen`` is empty).
    dashboard: Dashboard | None = None
    #: Runs the config's schedules (``gridnode.scheduler``); set while the node starts.
    scheduler: Scheduler | None = None
    #: Audits this node's holders (``gridnode.audit``); set while the node starts.
    auditor: Auditor | None = None
    #: Renews this node's leases, retries its deletes (``gridnode.leases``); set at start.
    lease_keeper: LeaseKeeper | None = None

    async def _start_delegation(self, nursery: trio.Nursery) -> None:
        """Repair that outlives the source (``gridnode.delegation``): every node can be a
        delegate for others; with ``repair_delegates`` it also delegates its own."""
        config, gossiper = self.config, self.gossiper
        assert gossiper is not None

        own = self.identity.node_id

        def present() -> set[bytes]:
            members = gossiper.members()
            return {v.record.node_id for v in members if v.state in ("alive", "suspect")} | {own}

        def members() -> list[Member]:
            """The placement view with this node in it: a delegate may hold packets of the
            chunks it repairs, and may take a rebuilt one itself."""
            record = gossiper.membership.self_record
            me = Member(
                node_id=own,
                lat=record.lat,
                lon=record.lon,
                free_bytes=self.packets.free_bytes,
                labels=parse_labels(record.labels),
            )
            view = gossiper.placement_view()[1]
            return view if self.packet_store.leaving else [*view, me]  # draining: no packets

        async def fetch(chunk: Any, skip: frozenset[bytes]) -> Any:
            """The chunk's packets from their holders, this node's own read from disk (a
            delegate may hold some of the chunks it repairs; it has no session to itself)."""
            fetched = await call(
                self._retr_send, FetchChunk(chunk, all_packets=True, skip=skip | {own})
            )
            for packet in chunk.packets:
                if packet.target == own and packet.target not in skip:
                    data = await trio.to_thread.run_sync(
                        self.packets.get, packet.packet_id, limiter=self.disk_limiter
                    )
                    if data is not None:  # verified against its id by the directory
                        fetched.shares[packet.share] = data
            return fetched

        async def store_local(msg: Message) -> Message:
            """A rebuilt packet this node keeps itself: as if a peer sent it (receipt and
            all), charged to this node."""
            # Its own packets on its own disk need no lease: its forget still releases them.
            answer: Message = await call(
                self._store_send, TargetRequest(msg, None, own, None, leased=False)
            )
            return answer

        tick_s = min(60.0, max(0.2, config.repair_after_s / 4)) if config.repair_after_s else 60.0
        self.repairer = Repairer(
            identity=self.identity,
            home=config.home,
            present=present,
            members=members,
            fetch=fetch,
            link_for=self.link_for,
            store_local=store_local,
            cpu_limiter=self.cpu_limiter,
            after_s=config.repair_after_s,
            tick_s=tick_s,
            request_timeout_s=config.request_timeout_s,
            settle_s=min(config.repair_after_s, 4 * config.gossip_sync_interval_s),
            map_budget_bytes=max(64 << 20, config.allocated_bytes // 20),
            # An absent owner's leases are renewed by its delegates (delegation.renewal).
            lease_s=config.lease_s,
            renew_every_s=min(config.lease_renew_interval_s, config.lease_s / 2),
        )
        await nursery.start(self.repairer.run)
        if config.repair_delegates > 0:
            self.delegator = Delegator(
                services=self.services,
                count=config.repair_delegates,
                lease_s=config.repair_lease_s,
                tick_s=max(1.0, tick_s),
                after_s=config.repair_after_s or 3600.0,
                lat=config.lat,
                lon=config.lon,
                present=present,
                threshold=config.repair_threshold,
            )
            await nursery.start(self.delegator.run)
            if self.auto_repair is not None:
                self.auto_repair.before = self.delegator.take_moves

    async def _control_job(self, method: str, params: dict[str, Any], emit: Emit) -> Any:
        try:
            with self.jobs.track(method, emit) as tracked:
                return await call(self._req_send, ControlJob(method, params, tracked))
        finally:
            if self.log_forwarder is not None and method != "status":
                self.log_forwarder.wake()  # the job's log entry goes to the global log

    def _free_bytes_changed(self, free: int) -> None:
        if self.gossiper is not None:
            self.gossiper.update_free_bytes(free)


async def run_node(
    config: NodeConfig,
    identity: NodeIdentity,
    *,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    node = Node(config, identity)
    await node.run(task_status=task_status)


def node_home_ok(home: Path) -> bool:
    return (home / "gridnode.toml").exists()
