"""Transfers in progress: the jobs running on the node and their latest progress.

A job's progress events go to the client that started it (``gridnode backup`` draws
them as its progress line).  The node hands every control job's ``emit`` through
``JobBoard.track`` (``gridnode.node``), which passes each event on unchanged and keeps
the latest ``progress`` of each running job (``JOB_METHODS`` only: queries are not
transfers), so the dashboard shows the same figures the CLI does: bytes, rate, ETA.
Finished jobs stay listed a while (``RECENT``) with their outcome.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

import attrs

from ..actors.request import JOB_METHODS

__all__ = ["PROGRESS_FIELDS", "JobBoard"]

Emit = Callable[[dict[str, Any]], Awaitable[None]]

#: The fields of a progress event the page shows (backup's and restore's).
PROGRESS_FIELDS: Final = (
    "phase",
    "files",
    "files_total",
    "bytes",
    "bytes_read",
    "bytes_total",
    "bytes_uploaded",
    "packets_uploaded",
    "rate_bps",
    "eta_s",
)
#: Finished jobs kept for the page.
RECENT: Final = 10


@attrs.define
class _Job:
    number: int
    method: str
    started: float
    progress: dict[str, Any] | None = None
    events: int = 0
    outcome: str | None = None
    ended: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.number,
            "method": self.method,
            "started": self.started,
            "ended": self.ended,
            "outcome": self.outcome,
            "events": self.events,
            "progress": self.progress,
        }


@attrs.define
class JobBoard:
    """The running jobs and the last few finished ones."""

    clock: Callable[[], float] = time.time
    _running: dict[int, _Job] = attrs.field(factory=dict)
    _recent: deque[_Job] = attrs.field(factory=lambda: deque(maxlen=RECENT))
    _count: int = 0

    @contextlib.contextmanager
    def track(self, method: str, emit: Emit) -> Iterator[Emit]:
        """An ``emit`` that records ``method``'s progress and forwards every event."""
        if method not in JOB_METHODS:
            yield emit
            return
        self._count += 1
        job = _Job(number=self._count, method=method, started=self.clock())
        self._running[job.number] = job

        async def recording(event: dict[str, Any]) -> None:
            job.events += 1
            if event.get("event") in ("progress", "started"):
                job.progress = {k: event[k] for k in PROGRESS_FIELDS if k in event}
            await emit(event)

        outcome = "failed"
        try:
            yield recording
            outcome = "ok"
        finally:
            job.outcome, job.ended = outcome, self.clock()
            del self._running[job.number]
            self._recent.appendleft(job)

    def view(self) -> dict[str, Any]:
        return {
            "running": [job.to_json() for job in self._running.values()],
            "recent": [job.to_json() for job in self._recent],
        }
