"""The client request actor (claims 1, 30, 36, 46): where every job enters the node.

It takes requests from the local CLI (through ``gridnode.control``), validates their
parameters, and owns each job: it streams the job's progress events, cancels the job
when the client goes away (Ctrl-C on a backup stops the backup), and returns the final
result or a one-line error.  Long jobs run in their own tasks, so ``status`` answers
while a backup is running.

Backpressure: ``concurrency`` jobs at most; more callers wait on the inbound channel.
Cancellation: a job's events go to its client; when sending one fails because the client
disconnected, the job's cancel scope is cancelled and the job cleans up (a backup is
recorded as failed, a restore leaves only temporary files).

Outcomes: the jobs proper (``JOB_METHODS``; not queries such as ``status``) are counted
by method and outcome for ``node_summary`` and the metrics, and the end of a restore or
a verify, and the failure of a restore, verify or repair, is logged here (backups log
their own start and end in ``gridnode.backup``, repairs ``repair_done`` in
``gridnode.repair``), so an operator reading the log sees every job a node ran.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import attrs
import trio
from trio_websocket import ConnectionClosed

from ..control import ControlError, Emit
from ..errors import GridError
from ..exception_groups import leaves
from ..log import get_logger
from ..memory import release_free_memory
from .calls import Handlers, Inbox, Request, serve_calls

__all__ = ["JOB_METHODS", "REPAIR_FIELDS", "ControlJob", "RequestActor", "as_control_error"]

_log = get_logger(actor="request")

#: method -> async fn(params, emit) -> JSON result
Method = Callable[[dict[str, Any], Emit], Awaitable[Any]]

#: The control methods that are jobs (they change or check the grid), as opposed to
#: queries (``status``, ``ls``, ...): their outcomes are what an operator counts.
JOB_METHODS: Final = frozenset(
    {"backup", "restore", "verify", "repair", "forget", "recover_catalog"}
)
#: A job's end logged here at info: the result fields the log line carries.
_FINISHED_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "restore": ("snapshot_id", "files", "bytes", "seconds"),
    "verify": ("snapshot_id", "ok", "chunks", "chunks_degraded", "chunks_lost", "seconds"),
}
#: Jobs whose failure is logged here at warning (a backup logs its own).
_FAILURES_LOGGED: Final = frozenset({"restore", "verify", "repair"})
#: The figures of a repair run's result summed over the node's runs (manual and
#: automatic), for the summary line and the metrics.
REPAIR_FIELDS: Final = ("chunks_repaired", "chunks_lost", "chunks_unrepaired", "packets_rebuilt")


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, from the OS or from SQLite (``SQLITE_FULL``)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or (
            "disk is full" in str(exc)
        )
    return False


def as_control_error(method: str, exc: Exception) -> ControlError:
    """The one-line error a client sees; a bug is logged with its traceback, never hidden."""
    real: BaseException = exc
    if isinstance(exc, BaseExceptionGroup):
        found = [e for e in leaves(exc) if not isinstance(e, trio.Cancelled)]
        real = found[0] if found else exc
    if isinstance(real, ControlError):
        return real
    if _disk_full(real):
        _log.warning("job_disk_full", method=method, error=str(real))
        # The node's own disk (catalog, scratch files, storage), not the user's files: a
        # restore names its destination itself.
        return ControlError(
            "disk_full",
            f"{method} failed: the node's disk is full ({real}): free space where the "
            f"node's home is and run {method} again (what was recorded before is intact)",
        )
    if isinstance(real, GridError):
        return ControlError("failed", str(real))
    if isinstance(real, ValueError | LookupError):
        return ControlError("bad_request", str(real))
    if isinstance(real, OSError):
        return ControlError(
            "os_error",
            f"{real.strerror or real}{': ' + str(real.filename) if real.filename else ''}",
        )
    _log.error("job_crashed", method=method, exc_info=exc)
    return ControlError("internal_error", f"{method} failed: {type(real).__name__}: {real}")


@attrs.frozen
class ControlJob(Request[object]):
    """One control method called by a client; answered with its JSON result."""

    method: str
    params: dict[str, Any]
    emit: Emit


@attrs.define
class RequestActor:
    inbound: Inbox
    methods: dict[str, Method]
    concurrency: int = 16
    jobs_started: int = 0
    jobs_failed: int = 0
    running: int = 0
    #: (method, "ok" | "failed") -> jobs of ``JOB_METHODS`` ended so since the start.
    outcomes: dict[tuple[str, str], int] = attrs.field(factory=dict)
    #: Repair runs ("runs", "runs_incomplete") and ``REPAIR_FIELDS`` summed over them.
    repairs: dict[str, int] = attrs.field(factory=dict)
    _idle: trio.Event = attrs.field(factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._idle.set()
        handlers = Handlers("request").on(ControlJob, self._handle)
        await serve_calls(
            self.inbound, handlers, concurrency=self.concurrency, task_status=task_status
        )

    async def wait_idle(self) -> None:
        """Shutdown waits here (under a grace deadline) for running jobs to finish."""
        await self._idle.wait()

    def note_repair(self, result: Mapping[str, Any]) -> None:
        """Adds one repair run's result (``gridnode.repair``) to the totals; the node's
        automatic repair reports its runs here too, so the totals cover every run."""
        self.repairs["runs"] = self.repairs.get("runs", 0) + 1
        if not result.get("ok", True):
            self.repairs["runs_incomplete"] = self.repairs.get("runs_incomplete", 0) + 1
        for name in REPAIR_FIELDS:
            value = result.get(name, 0)
            if isinstance(value, int) and not isinstance(value, bool):
                self.repairs[name] = self.repairs.get(name, 0) + value

    def jobs_ended(self, outcome: str) -> int:
        """Jobs of ``JOB_METHODS`` that ended with ``outcome`` ("ok" or "failed")."""
        return sum(n for (_, how), n in self.outcomes.items() if how == outcome)

    def _ended(self, method: str, result: Any, error: ControlError | None) -> None:
        """Counts a job's outcome and logs its end (see the module docstring)."""
        if method not in JOB_METHODS:
            return
        key = (method, "ok" if error is None else "failed")
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if error is not None:
            if method in _FAILURES_LOGGED:
                _log.warning(f"{method}_failed", code=error.code, error=str(error))
            return
        if method == "repair" and isinstance(result, Mapping):
            self.note_repair(result)
        fields = _FINISHED_FIELDS.get(method)
        if fields is not None and isinstance(result, Mapping):
            line = {name: result.get(name) for name in fields}
            if result.get("ok", True):
                _log.info(f"{method}_finished", **line)
            else:  # a verify that found damaged or lost chunks needs a look
                _log.warning(f"{method}_finished", **line)

    async def _handle(self, job: ControlJob) -> object:
        method = self.methods.get(job.method)
        if method is None:
            raise ControlError("unknown_method", f"unknown method {job.method!r}")
        self.jobs_started += 1
        self.running += 1
        self._idle = trio.Event()
        client_gone = False
        try:
            with trio.CancelScope() as scope:

                async def emit(event: dict[str, Any]) -> None:
                    nonlocal client_gone
                    try:
                        await job.emit(event)
                    except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                        client_gone = True
                        scope.cancel()

                result = await method(job.params, emit)
                self._ended(job.method, result, None)
                return result
            raise ControlError("cancelled", f"{job.method} cancelled: the client went away")
        except Exception as exc:
            self.jobs_failed += 1
            error = as_control_error(job.method, exc)
            self._ended(job.method, None, error)
            raise error from None
        finally:
            self.running -= 1
            if self.running == 0:
                self._idle.set()
                release_free_memory()  # a big job's high-water mark goes back to the system
            if client_gone:
                _log.info("job_cancelled", method=job.method, reason="client went away")
