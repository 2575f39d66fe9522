"""Running a scenario: every step in order, the invariants after each, and always the
teardown, also on Ctrl-C, SIGTERM, SIGHUP, a failure or the scenario's timeout."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from .model import Scenario
from .network import Network
from .report import Check, Report, StepReport
from .simulation import Simulation
from .world import StepFailed

__all__ = ["Interrupted", "run_scenario"]


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, turned into an exception so every ``finally`` runs."""


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Interrupted`, so cleanup runs as for Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Cleanup is bounded; a second Ctrl-C must not leave nodes behind."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_scenario(
    scenario: Scenario, *, base: Path, network: Network, progress: Callable[[str], None]
) -> Report:
    """Run every step, checking invariants after each; always stops what it started."""
    report = Report(scenario=scenario, network=network)
    report.steps = [
        StepReport(index=step.index, action=step.action, name=step.name, title=step.title())
        for step in scenario.steps
    ]
    sim = Simulation(scenario, base, network, progress)
    deadline = report.started + scenario.timeout_s
    try:
        with _signals_raise():
            try:
                progress(f"setup: {len(scenario.nodes)} nodes ({network.mode})")
                sim.setup()
                report.setup_ok = True
            except Exception as exc:
                report.setup_error = f"{type(exc).__name__}: {exc}"
            except KeyboardInterrupt:
                report.setup_error = "interrupted"
                raise
            finally:
                report.setup_seconds = time.monotonic() - report.started
                report.nodes = sim.node_rows()
                report.grid = sim.grid_row()
            aborted: str | None = None if report.setup_ok else "setup failed"
            for step, entry in zip(scenario.steps, report.steps, strict=True):
                if aborted is None and time.monotonic() > deadline:
                    aborted = f"scenario timeout ({scenario.timeout_s:g} s) reached"
                if aborted is not None:
                    entry.error = f"skipped: {aborted}"
                    continue
                progress(f"step {step.index}/{len(scenario.steps)}: {entry.title}")
                started = time.monotonic()
                entry.error = "interrupted while running"  # unless it ends normally
                try:
                    sim.run_step(step, entry)
                    entry.action_ok, entry.error = True, None
                except StepFailed as exc:
                    entry.action_ok, entry.error = False, str(exc)
                except Exception as exc:
                    entry.action_ok, entry.error = False, f"{type(exc).__name__}: {exc}"
                    aborted = f"step {step.index} raised {type(exc).__name__}"
                entry.seconds = time.monotonic() - started
                if step.check and aborted is None:
                    checked = time.monotonic()
                    try:
                        entry.invariants = sim.check_invariants()
                    except Exception as exc:
                        failed = Check("checks")
                        failed.fail(f"{type(exc).__name__}: {exc}")
                        entry.invariants = [failed]
                    entry.check_seconds = time.monotonic() - checked
                entry.status = (
                    "passed"
                    if entry.action_ok and all(c.ok for c in entry.invariants)
                    else "failed"
                )
                if entry.status == "failed":
                    progress(f"  step {step.index} FAILED: " + "; ".join(report.problems()[-3:]))
    except KeyboardInterrupt:
        report.interrupted = True
        for entry in report.steps:
            if entry.status != "skipped":
                continue
            if entry.action_ok:
                entry.error = "interrupted during the invariant checks"
            elif entry.error is None:
                entry.error = "interrupted"
    finally:
        report.nodes = sim.node_rows()
        report.grid = sim.grid_row()
        with _signals_ignored():
            progress("stopping every node")
            sim.close()
        report.grid = sim.grid_row()  # every pid, the authority's state as it was
        report.seconds = time.monotonic() - report.started
    return report
