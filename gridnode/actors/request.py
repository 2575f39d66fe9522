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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed

from ..control import ControlError, Emit
from ..errors import GridError
from ..exception_groups import leaves
from ..log import get_logger
from ..memory import release_free_memory
from .calls import Handlers, Inbox, Request, serve_calls

__all__ = ["ControlJob", "RequestActor", "as_control_error"]

_log = get_logger(actor="request")

#: method -> async fn(params, emit) -> JSON result
Method = Callable[[dict[str, Any], Emit], Awaitable[Any]]


def as_control_error(method: str, exc: Exception) -> ControlError:
    """The one-line error a client sees; a bug is logged with its traceback, never hidden."""
    real: BaseException = exc
    if isinstance(exc, BaseExceptionGroup):
        found = [e for e in leaves(exc) if not isinstance(e, trio.Cancelled)]
        real = found[0] if found else exc
    if isinstance(real, ControlError):
        return real
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

                return await method(job.params, emit)
            raise ControlError("cancelled", f"{job.method} cancelled: the client went away")
        except Exception as exc:
            self.jobs_failed += 1
            raise as_control_error(job.method, exc) from None
        finally:
            self.running -= 1
            if self.running == 0:
                self._idle.set()
                release_free_memory()  # a big job's high-water mark goes back to the system
            if client_gone:
                _log.info("job_cancelled", method=job.method, reason="client went away")
