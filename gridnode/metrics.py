"""An optional Prometheus endpoint: what an operator graphs about a node.

``metrics_listen = "127.0.0.1:9474"`` (config key; empty, the default, turns it off)
serves ``GET /metrics`` in Prometheus' text format: storage held and free, sessions,
members by state, the age of the newest complete backup, jobs ended by method and
outcome, the outcomes of this node's repair runs (manual and automatic), and the node's
counters (packets stored and served, delegated repair, gossip).  The figures are read
the way the ``node_summary`` log line reads them (``gridnode.summary``).  Audits (spot
checks of what holders keep) do not exist yet, so neither do their series.

Loopback only: the figures say which members this node talks to and how much it holds,
which is nobody else's business, so a non-loopback address is refused; put a scraper on
the same machine or tunnel to it.

prometheus-client renders the format (its exposition rules are subtle: escaping, types,
``_total`` suffixes).  Its own HTTP server runs in a thread, which would read the node's
state while the node's trio thread changes it; so this module serves the few bytes of
HTTP itself, on the node's trio loop, and collects at each scrape from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .actors.request import REPAIR_FIELDS
from .config import check_metrics_address
from .log import get_logger
from .summary import SummaryNode, last_backup_age_s, members_by_state

if TYPE_CHECKING:
    from .actors.retriever import Retriever


class Node(SummaryNode, Protocol):
    """What a scrape reads of the node (``gridnode.node.Node`` has it all); named here so
    this module does not import the node that starts it."""

    retriever: Retriever


__all__ = ["MetricsCollector", "check_metrics_address", "serve_metrics"]

_log = get_logger(actor="metrics")

#: Connections served at once; more wait.  A scraper makes one every few seconds.
MAX_CONNECTIONS: Final = 8
#: Time a client has to send its request line and headers.
REQUEST_TIMEOUT_S: Final = 5.0
MAX_REQUEST_BYTES: Final = 8192
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class MetricsCollector(Collector):
    """Reads the node at each scrape (on the node's trio thread, see the docstring)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        #: Seconds since the newest complete snapshot finished (None: no snapshot yet),
        #: refreshed from the catalog before each scrape (``refresh``).
        self.backup_age_s: float | None = None
        #: Deletes holders have not confirmed yet (``gridnode.leases``), and their bytes.
        self.pending_deletes: tuple[int, int] = (0, 0)

    async def refresh(self) -> None:
        self.backup_age_s = await last_backup_age_s(self.node.services)
        services = self.node.services
        self.pending_deletes = await services.db(services.catalog.pending_deletes)

    def collect(self) -> Iterator[Metric]:
        node = self.node
        stats = node.packets.statistics()
        storage = GaugeMetricFamily(
            "gridnode_storage_bytes", "Storage offered to the grid, by kind", labels=["kind"]
        )
        storage.add_metric(["allocated"], stats.allocation_bytes)
        storage.add_metric(["used"], stats.used_bytes)
        storage.add_metric(["free"], stats.free_bytes)
        storage.add_metric(["roots"], stats.other_bytes)
        yield storage
        yield GaugeMetricFamily(
            "gridnode_packets_held", "Packets held for other nodes", value=stats.packet_count
        )
        yield GaugeMetricFamily(
            "gridnode_packets_quarantined",
            "Packets that failed their check and were set aside",
            value=stats.quarantined_count,
        )
        yield GaugeMetricFamily(
            "gridnode_sessions", "Authenticated sessions to other members",
            value=len(node.transport.links()),
        )  # fmt: skip
        members = GaugeMetricFamily(
            "gridnode_members", "Grid members this node knows, by state", labels=["state"]
        )
        for state, count in sorted(members_by_state(node).items()):
            members.add_metric([state], count)
        yield members
        if self.backup_age_s is not None:
            yield GaugeMetricFamily(
                "gridnode_last_backup_age_seconds",
                "Seconds since the newest complete snapshot of this node finished",
                value=self.backup_age_s,
            )
        yield GaugeMetricFamily(
            "gridnode_jobs_running", "Control jobs running (backups, restores, ...)",
            value=node.request.running,
        )  # fmt: skip
        yield from _jobs_and_repairs(node)
        auditor = getattr(node, "auditor", None)  # (storage audits: issue 10)
        if auditor is not None:
            yield from _audits(auditor.scores.report())
        yield from _counters("gridnode_store", "Packet store events", node.packet_store.stats)
        pending = GaugeMetricFamily(
            "gridnode_pending_deletes",
            "Deletes of this node's packets that holders have not confirmed yet",
            labels=["unit"],
        )
        pending.add_metric(["packets"], self.pending_deletes[0])
        pending.add_metric(["bytes"], self.pending_deletes[1])
        yield pending
        keeper = getattr(node, "lease_keeper", None)  # (leases: issue 10)
        if keeper is not None:
            yield from _counters("gridnode_leases", "Lease renewals and releases", keeper.stats)
        yield from _counters("gridnode_fetch", "Retriever events", node.retriever.stats)
        repairer = getattr(node, "repairer", None)  # (delegated repair: issue 15)
        if repairer is not None:
            yield from _counters(
                "gridnode_delegated_repair", "Repair done for other owners", repairer.stats
            )
        if node.gossiper is not None:
            yield from _counters("gridnode_gossip", "Gossip events", node.gossiper.counters())


def _jobs_and_repairs(node: Node) -> Iterator[Metric]:
    """Jobs ended since the start by method and outcome, and this node's repair runs
    (manual and automatic) with what they did to its chunks."""
    request = node.request
    jobs = CounterMetricFamily(
        "gridnode_jobs",
        "Jobs (backup, restore, verify, repair, forget, recover_catalog) ended, by outcome",
        labels=["method", "outcome"],
    )
    for (method, outcome), count in sorted(request.outcomes.items()):
        jobs.add_metric([method, outcome], count)
    yield jobs
    repairs = request.repairs
    runs = CounterMetricFamily(
        "gridnode_repair_runs",
        "Repair runs of this node's snapshots; incomplete: chunks left lost or unrepaired",
        labels=["result"],
    )
    incomplete = repairs.get("runs_incomplete", 0)
    runs.add_metric(["complete"], repairs.get("runs", 0) - incomplete)
    runs.add_metric(["incomplete"], incomplete)
    yield runs
    chunks = CounterMetricFamily(
        "gridnode_repair_chunks",
        "Chunks of this node's repair runs, by outcome",
        labels=["outcome"],
    )
    for name in REPAIR_FIELDS:
        if name.startswith("chunks_"):
            chunks.add_metric([name.removeprefix("chunks_")], repairs.get(name, 0))
    yield chunks
    yield CounterMetricFamily(
        "gridnode_repair_packets_rebuilt",
        "Packets rebuilt and placed anew by this node's repair runs",
        value=repairs.get("packets_rebuilt", 0),
    )


def _audits(report: list[dict[str, Any]]) -> Iterator[Metric]:
    """Audit outcomes over every holder of this node's packets, and how many holders it
    distrusts (``gridnode.audit``): what an operator alerts on."""
    outcomes = CounterMetricFamily(
        "gridnode_audits", "Storage audits of this node's holders, by outcome", labels=["outcome"]
    )
    for outcome in ("passed", "failed", "missed"):
        outcomes.add_metric([outcome], sum(int(h[outcome]) for h in report))
    yield outcomes
    yield GaugeMetricFamily(
        "gridnode_audited_holders", "Holders of this node's packets audited so far",
        value=len(report),
    )  # fmt: skip
    yield GaugeMetricFamily(
        "gridnode_distrusted_holders",
        "Holders whose audit score fell below audit_threshold (no new packets; repaired away)",
        value=sum(1 for h in report if h["distrusted"]),
    )


def _counters(prefix: str, what: str, values: dict[str, Any]) -> Iterator[Metric]:
    family = CounterMetricFamily(f"{prefix}_events", what, labels=["event"])
    for name, value in sorted(values.items()):
        if isinstance(value, int | float) and not isinstance(value, bool):
            family.add_metric([name], value)
    yield family


async def _respond(stream: trio.SocketStream, render: Callable[[], Any]) -> None:
    request = b""
    with trio.move_on_after(REQUEST_TIMEOUT_S):
        while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST_BYTES:
            data = await stream.receive_some(4096)
            if not data:
                return
            request += data
    line = request.split(b"\r\n", 1)[0].split()
    if len(line) < 2 or b"\r\n\r\n" not in request:
        status, body, kind = b"400 Bad Request", b"bad request\n", b"text/plain"
    elif line[0] != b"GET" or line[1].split(b"?")[0] != b"/metrics":
        status, body, kind = b"404 Not Found", b"only GET /metrics here\n", b"text/plain"
    else:
        status, body, kind = b"200 OK", await render(), CONTENT_TYPE.encode()
    head = (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind
        + b"\r\nContent-Length: " + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    await stream.send_all(head + body)


async def serve_metrics(
    node: Node,
    address: str,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``address`` (loopback) until cancelled; reports the port."""
    host, port = check_metrics_address(address)
    collector = MetricsCollector(node)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def render() -> bytes:
        await collector.refresh()
        return bytes(generate_latest(registry))

    async def handle(stream: trio.SocketStream) -> None:
        async with limiter:
            try:
                await _respond(stream, render)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                await trio.aclose_forcefully(stream)

    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    _log.info("metrics_serving", address=f"{host}:{bound}")
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)
