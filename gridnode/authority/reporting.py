"""The node's side of metering: measure, sign and deliver usage reports, and fetch the
node's account (``gridnode account``).

Every ``usage_report_interval_s`` (an hour by default) a node holding a certificate
makes one report covering ``[end of the previous report, now)``: source bytes (the
packets of its chunks on the grid, redundancy included, from its catalog), target bytes
(packets it holds for others, from its packet directory), grid bytes sent and received
since the previous report (every session's frames, summed by ``TrafficMeter``), and the
CPU seconds of the process over the interval (the node does grid work only).

Nothing is counted twice or lost, across crashes and authority outages:

- One file, ``HOME/usage-reports.json`` (0600, written atomically), holds the next
  sequence number, the end of the last report, the traffic and CPU measured but not yet
  reported, and the queue of reports made but not yet accepted.  Making a report moves
  the measured figures into a queued report in that one write, so a crash leaves either
  the figures or the report, never both.  (Traffic since the last write is lost with a
  crash: at most one interval of it.)
- Reports are delivered oldest first, one at a time; a report is dropped from the queue
  only once the authority accepted it (or answered ``replayed``: it already has it, the
  acceptance was lost).  The authority refuses a sequence number it already has, so a
  report delivered twice is stored once.
- While the authority is down the queue grows (at most ``MAX_PENDING`` reports; beyond
  that no new report is made and the next one covers the longer interval), and it is
  delivered in order once the authority answers again.
- A node whose reports the authority finds behind its own history (``out_of_order``: a
  home restored from an old copy, or recovered from the key) renumbers its queue after
  the authority's last sequence number and signs it again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import attrs
import trio
from nacl.signing import SigningKey

from protocol import Account, GetAccount, Message, UsageAccepted, UsageReport

from ..errors import GridError, PeerError, RemoteError
from ..fsutil import atomic_write
from ..log import get_logger
from ..storage.catalog import placed_bytes_by_target
from .fees import FeeError, Invoice, UsageSample
from .metering import Metering, MeteringError, SignedUsage, sign_usage

__all__ = [
    "MAX_PENDING",
    "REPORTS_NAME",
    "ReportingFailed",
    "TrafficMeter",
    "UsageReporter",
    "catalog_usage",
]

_log = get_logger()

REPORTS_NAME: Final = "usage-reports.json"
ACCOUNT_CACHE_NAME: Final = "account.json"
#: Reports queued at most (about 300 bytes each); the authority down for 1,000 intervals
#: (six weeks at an hour) makes the next report cover the rest of the outage.
MAX_PENDING: Final = 1000
#: Answers after which the head report can never be accepted: drop it (after a resync).
_DROP_CODES: Final = frozenset(
    {"bad_report", "bad_signature", "wrong_node", "wrong_grid", "overlapping"}
)


class ReportingFailed(GridError):
    """The authority could not be asked, or refused; ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- what is measured -----------------------------------------------------------------------


class TrafficMeter:
    """Grid bytes sent and received, over every session this process has had.

    Each link counts its own frames; a closed link's counts are folded into a base when
    it is next looked at, so the total never goes back and nothing is counted twice.
    """

    def __init__(self) -> None:
        self._live: list[Any] = []
        self._base_sent = 0
        self._base_received = 0

    def attach(self, transport: Any) -> None:
        previous: Callable[[Any], None] | None = transport.link_added

        def added(link: Any) -> None:
            self._live.append(link)
            if previous is not None:
                previous(link)

        transport.link_added = added

    def totals(self) -> tuple[int, int]:
        sent, received = self._base_sent, self._base_received
        keep: list[Any] = []
        for link in self._live:
            stats = link.statistics()
            if link.closed.is_set():
                self._base_sent += stats.bytes_sent
                self._base_received += stats.bytes_received
            else:
                keep.append(link)
            sent += stats.bytes_sent
            received += stats.bytes_received
        self._live = keep
        return sent, received


def catalog_usage(catalog_path: Path) -> tuple[int, dict[bytes, int]]:
    """Source bytes (every packet of every chunk the catalog holds on the grid: the
    erasure expansion is in the count) and how many of them sit on each target.

    A read-only connection of its own: the catalog's connections belong to its jobs."""
    if not catalog_path.exists():
        return 0, {}
    db = sqlite3.connect(f"file:{catalog_path}?mode=ro", uri=True, timeout=30)
    try:
        placed = placed_bytes_by_target(db)
    finally:
        db.close()
    return sum(placed.values()), placed


@attrs.define
class _State:
    """What ``usage-reports.json`` holds (see the module docstring)."""

    next_sequence: int = 1
    last_end: int = 0
    sent: int = 0
    received: int = 0
    cpu_ms: int = 0
    served: int = 0
    pending: list[bytes] = attrs.field(factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "next_sequence": self.next_sequence,
            "last_end": self.last_end,
            "carried": {
                "sent": self.sent,
                "received": self.received,
                "cpu_ms": self.cpu_ms,
                "served": self.served,
            },
            "pending": [raw.hex() for raw in self.pending],
        }

    @classmethod
    def from_json(cls, raw: Any) -> _State:
        carried = raw["carried"]
        return cls(
            next_sequence=int(raw["next_sequence"]),
            last_end=int(raw["last_end"]),
            sent=int(carried["sent"]),
            received=int(carried["received"]),
            cpu_ms=int(carried["cpu_ms"]),
            served=int(carried.get("served", 0)),  # absent in files of older versions
            pending=[bytes.fromhex(h) for h in raw["pending"]],
        )


# --- the reporter ---------------------------------------------------------------------------


class UsageReporter:
    def __init__(
        self,
        *,
        home: Path,
        grid_id: bytes,
        signing_key: SigningKey,
        authority_key: bytes,
        authority_address: str,
        connect: Callable[[str], Awaitable[Any]],
        traffic: TrafficMeter,
        target_bytes: Callable[[], int],
        interval_s: float,
        ready: Callable[[], bool] = lambda: True,
        local: Metering | None = None,
        request_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        cpu_clock: Callable[[], float] = time.process_time,
        served_bytes: Callable[[], int] = lambda: 0,
    ) -> None:
        self.home = home
        self.grid_id = grid_id
        self.key = signing_key
        self.node_id = bytes(signing_key.verify_key)
        self.authority_key = authority_key
        self.authority_address = authority_address
        self.connect = connect
        self.traffic = traffic
        self.target_bytes = target_bytes
        self.interval_s = interval_s
        self.ready = ready
        self.local = local
        self.request_timeout_s = request_timeout_s
        self.clock = clock
        self.cpu_clock = cpu_clock
        #: Packet bytes this node has sent to others as a target (a running total).
        self.served_bytes = served_bytes
        self.path = home / REPORTS_NAME
        self.last_error: str | None = None
        self.delivered = 0
        self._lock = trio.Lock()
        self.state = self._load()
        # What the process has measured so far is counted from here on.
        self._seen_sent, self._seen_received = traffic.totals()
        self._seen_cpu = cpu_clock()
        self._seen_served = served_bytes()

    def _load(self) -> _State:
        try:
            return _State.from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            state = _State(last_end=int(self.clock()))
        except (ValueError, KeyError, TypeError) as exc:
            # Unreadable: start a fresh interval; the sequence resyncs with the authority.
            _log.error("usage_state_unreadable", path=str(self.path), error=str(exc))
            state = _State(last_end=int(self.clock()))
        self._save(state)
        return state

    def _save(self, state: _State) -> None:
        atomic_write(self.path, json.dumps(state.to_json()).encode("ascii"), mode=0o600)

    @property
    def pending(self) -> int:
        return len(self.state.pending)

    # --- measuring and making reports --------------------------------------------------------

    def _fold(self) -> None:
        """Move what was measured since the last look into the carried figures."""
        sent, received = self.traffic.totals()
        cpu = self.cpu_clock()
        self.state.sent += max(0, sent - self._seen_sent)
        self.state.received += max(0, received - self._seen_received)
        self.state.cpu_ms += max(0, int((cpu - self._seen_cpu) * 1000))
        served = self.served_bytes()
        self.state.served += max(0, served - self._seen_served)
        self._seen_sent, self._seen_received, self._seen_cpu = sent, received, cpu
        self._seen_served = served

    def make_report(self) -> SignedUsage | None:
        """Queue a report covering ``[last_end, now)`` (blocking: a catalog query and a
        write); None when no whole second has passed or the queue is full."""
        state = self.state
        self._fold()
        end = int(self.clock())
        if end <= state.last_end or len(state.pending) >= MAX_PENDING:
            self._save(state)  # keep the carried figures; the next report covers them
            return None
        source, placed = catalog_usage(self.home / "catalog.sqlite")
        try:
            sample = UsageSample(
                start=state.last_end,
                end=end,
                source_bytes=source,
                target_bytes=self.target_bytes(),
                sent_bytes=state.sent,
                received_bytes=state.received,
                served_bytes=state.served,
                cpu_seconds=state.cpu_ms // 1000,
            )
        except FeeError as exc:
            _log.error("usage_report_invalid", error=str(exc))
            return None
        report = sign_usage(
            self.key,
            grid_id=self.grid_id,
            sequence=state.next_sequence,
            sample=sample,
            placed=placed.items(),
        )
        self.state = attrs.evolve(
            state,
            next_sequence=state.next_sequence + 1,
            last_end=end,
            sent=0,
            received=0,
            served=0,
            cpu_ms=state.cpu_ms % 1000,
            pending=[*state.pending, report.encode()],
        )
        self._save(self.state)
        return report

    # --- talking to the authority --------------------------------------------------------------

    async def _ask(self, build: Callable[[int], Message]) -> Message:
        try:
            if self.local is not None:
                return await self.local.serve(build(0), self.node_id)
            link = await self.connect(self.authority_address)
            answer: Message = await link.request(build, timeout_s=self.request_timeout_s)
            return answer
        except RemoteError as exc:
            raise ReportingFailed(exc.code, f"the grid authority refused: {exc}") from None
        except PeerError as exc:
            raise ReportingFailed(
                "unreachable", f"cannot reach the grid authority at {self.authority_address}: {exc}"
            ) from None

    async def deliver(self) -> int:
        """Send the queued reports, oldest first; returns how many were accepted.  Stops
        at the first that cannot be delivered now (it is tried again later)."""
        accepted = 0
        resynced = False
        async with self._lock:
            for _ in range(len(self.state.pending) + 1):  # +1: one resync per pass
                if not self.state.pending:
                    break
                head = self.state.pending[0]

                def build(rid: int, report: bytes = head) -> Message:
                    return UsageReport(request_id=rid, report=report)

                try:
                    answer = await self._ask(build)
                    if not isinstance(answer, UsageAccepted):
                        raise ReportingFailed("bad_answer", f"the authority answered {answer.KIND}")
                except ReportingFailed as exc:
                    if exc.code == "replayed":
                        pass  # it has this one already: our copy of its answer was lost
                    elif exc.code == "out_of_order" and not resynced:
                        resynced = True
                        await self._resync()
                        continue
                    elif exc.code in _DROP_CODES or exc.code == "out_of_order":
                        _log.error("usage_report_dropped", code=exc.code, error=str(exc))
                    else:
                        self.last_error = str(exc)
                        raise
                self.state.pending = self.state.pending[1:]
                await trio.to_thread.run_sync(self._save, self.state)
                accepted += 1
        self.delivered += accepted
        self.last_error = None
        return accepted

    async def _resync(self) -> None:
        """The authority holds later reports of ours than our queue starts at (an old or
        recovered home): number the queue after its last one and sign it again."""
        account = await self.fetch_account()
        last = int(account.get("usage", {}).get("last_sequence", 0))
        renumbered: list[bytes] = []
        for i, raw in enumerate(self.state.pending):
            try:
                old = SignedUsage.decode(raw)
            except MeteringError:
                continue
            renumbered.append(
                sign_usage(
                    self.key,
                    grid_id=self.grid_id,
                    sequence=last + 1 + i,
                    sample=old.sample,
                    placed=old.placed,
                ).encode()
            )
        self.state.pending = renumbered
        self.state.next_sequence = last + 1 + len(renumbered)
        await trio.to_thread.run_sync(self._save, self.state)
        _log.warning("usage_reports_renumbered", after=last, pending=len(renumbered))

    async def fetch_account(self) -> dict[str, Any]:
        answer = await self._ask(lambda rid: GetAccount(request_id=rid))
        if not isinstance(answer, Account):
            raise ReportingFailed("bad_answer", f"the authority answered {answer.KIND}")
        try:
            account = json.loads(answer.account)
        except ValueError:
            raise ReportingFailed("bad_answer", "the authority's account is not JSON") from None
        if not isinstance(account, dict):
            raise ReportingFailed("bad_answer", "the authority's account is not an object")
        return account

    # --- the account, as `gridnode account` shows it ----------------------------------------

    async def account(self, subscription: dict[str, Any] | None) -> dict[str, Any]:
        """The node's account: its subscription, its usage and statement as the authority
        has them, and the invoices it issued, each checked against the grid key (an
        invoice that does not verify is shown with ``verified: false``).  When the
        authority cannot be reached, the last account fetched, marked ``stale``."""
        cache = self.home / ACCOUNT_CACHE_NAME
        stale, error = False, None
        try:
            remote = await self.fetch_account()
            await trio.to_thread.run_sync(
                lambda: atomic_write(cache, json.dumps(remote).encode("utf-8"), mode=0o600)
            )
        except ReportingFailed as exc:
            stale, error = True, str(exc)
            try:
                remote = json.loads(cache.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                remote = {}
        invoices = []
        for raw in remote.get("invoices", []):
            try:
                invoice = Invoice.decode(bytes.fromhex(raw["encoded"]))
                verified = invoice.node_id == self.node_id and invoice.verify(self.authority_key)
            except (FeeError, KeyError, TypeError, ValueError):
                verified = False
            invoices.append(
                {k: v for k, v in raw.items() if k != "encoded"} | {"verified": verified}
            )
        usage = remote.get("usage") or {
            "source_bytes": 0,
            "target_bytes": 0,
            "sent_bytes": 0,
            "received_bytes": 0,
            "served_bytes": 0,
        }
        return {
            "subscription": subscription,
            "usage": usage,
            "statement": remote.get("statement"),
            "invoices": invoices,
            "flags": remote.get("flags", []),
            "pending_reports": self.pending,
            "next_sequence": self.state.next_sequence,
            "stale": stale,
            "authority_error": error,
        }

    # --- in the background ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Every interval: make a report (once the node holds a certificate) and deliver
        the queue.  A failed delivery is retried sooner, from a second (or the interval,
        if shorter) doubling to five minutes, never later than the next report."""
        task_status.started()
        first = min(self.interval_s, 5.0)
        next_report = trio.current_time() + self.interval_s
        failures = 0
        while True:  # a background task: every pass ends in a sleep
            now = trio.current_time()
            if now >= next_report:
                next_report = now + self.interval_s
                if self.ready():
                    try:
                        await trio.to_thread.run_sync(self.make_report)
                    except (OSError, sqlite3.Error) as exc:  # a full disk: try next time
                        _log.error("usage_report_failed", error=f"{type(exc).__name__}: {exc}")
            delay = next_report - trio.current_time()
            if self.state.pending:
                try:
                    await self.deliver()
                    failures = 0
                except (ReportingFailed, OSError) as exc:
                    failures += 1
                    _log.info("usage_report_queued", error=str(exc), pending=self.pending)
                    delay = min(delay, first * 2 ** min(failures - 1, 10), 300.0)
            await trio.sleep(max(0.05, delay))

    def status_json(self) -> dict[str, Any]:
        return {
            "pending_reports": self.pending,
            "next_sequence": self.state.next_sequence,
            "delivered": self.delivered,
            "last_error": self.last_error,
        }
