"""The report of a run: invariant checks, one entry per step, and the whole run, as
JSON (``gridsim run --json``; its keys are a stable interface) or as text.
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from .model import Scenario
from .network import Network

__all__ = ["Check", "Report", "StepReport", "render_text"]


@attrs.define
class Check:
    name: str
    ok: bool = True
    problems: list[str] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    detail: dict[str, Any] = attrs.field(factory=dict)

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "problems": self.problems,
            "notes": self.notes,
            "detail": self.detail,
        }


@attrs.define
class StepReport:
    index: int
    action: str
    name: str
    title: str
    status: str = "skipped"  # passed | failed | skipped
    action_ok: bool | None = None
    seconds: float = 0.0
    check_seconds: float = 0.0
    summary: str = ""
    error: str | None = None
    detail: dict[str, Any] = attrs.field(factory=dict)
    notes: list[str] = attrs.field(factory=list)
    invariants: list[Check] = attrs.field(factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "passed"

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "action": self.action,
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "ok": self.ok,
            "action_ok": self.action_ok,
            "seconds": round(self.seconds, 3),
            "check_seconds": round(self.check_seconds, 3),
            "summary": self.summary,
            "error": self.error,
            "detail": self.detail,
            "notes": self.notes,
            "invariants": [c.to_json() for c in self.invariants],
        }


@attrs.define
class Report:
    scenario: Scenario
    network: Network
    started: float = attrs.field(factory=time.monotonic)
    setup_ok: bool = False
    setup_seconds: float = 0.0
    setup_error: str | None = None
    nodes: list[dict[str, Any]] = attrs.field(factory=list)
    steps: list[StepReport] = attrs.field(factory=list)
    interrupted: bool = False
    dir: str | None = None
    seconds: float = 0.0
    notes: list[str] = attrs.field(factory=list)
    #: ``{"authority": bool, "authority_node": {...} | None, "note": str}``
    grid: dict[str, Any] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        return self.setup_ok and not self.interrupted and all(step.ok for step in self.steps)

    def problems(self) -> list[str]:
        out = [f"setup: {self.setup_error}"] if self.setup_error else []
        for step in self.steps:
            if step.status == "failed":
                if step.action_ok is False:
                    out.append(f"step {step.index} ({step.name}): {step.error}")
                for check in step.invariants:
                    out += [
                        f"step {step.index} ({step.name}) {check.name}: {p}" for p in check.problems
                    ]
        if self.interrupted:
            out.append("interrupted")
        return out

    def to_json(self) -> dict[str, Any]:
        scenario = self.scenario
        return {
            "scenario": {
                "name": scenario.name,
                "description": scenario.description,
                "file": str(scenario.path) if scenario.path else None,
            },
            "ok": self.ok,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
            "dir": self.dir,
            "network": {
                "mode": self.network.mode,
                "delay": self.network.delay,
                "location_check": self.network.location_check,
                "notes": self.network.notes,
            },
            "setup": {
                "ok": self.setup_ok,
                "seconds": round(self.setup_seconds, 3),
                "error": self.setup_error,
            },
            "grid": self.grid,
            "nodes": self.nodes,
            "steps": [step.to_json() for step in self.steps],
            "problems": self.problems(),
            "notes": self.notes,
        }


def render_text(report: Report) -> str:
    scenario = report.scenario
    lines = [
        f"gridsim scenario {scenario.name!r}: {len(scenario.nodes)} nodes, "
        f"{len(scenario.steps)} steps"
    ]
    if scenario.description:
        lines.append(f"  {scenario.description}")
    lines.append(
        f"network: {report.network.mode}"
        f"{' with distance delays' if report.network.delay else ''}, "
        f"location check {report.network.location_check}"
    )
    lines += [f"  - {note}" for note in report.network.notes]
    if report.grid.get("note"):
        lines.append(f"grid: {report.grid['note']}")
    if report.setup_ok:
        lines.append(
            f"setup: {len(report.nodes)} nodes started and converged in "
            f"{report.setup_seconds:.1f} s"
        )
        for node in report.nodes:
            lines.append(
                f"  {node['name']:<12} {node['city'] or '':<18} "
                f"{node['address']:<22} {node['short_id'] or ''}"
            )
    else:
        lines.append(f"setup FAILED after {report.setup_seconds:.1f} s: {report.setup_error}")
    for step in report.steps:
        mark = {"passed": "ok", "failed": "FAILED", "skipped": "skipped"}[step.status]
        lines.append(f"step {step.index:>2} [{mark}] {step.title} ({step.seconds:.1f} s)")
        if step.summary:
            lines.append(f"         {step.summary}")
        if step.error:
            lines.append(f"         error: {step.error}")
        lines += [f"         note: {note}" for note in step.notes]
        if step.invariants:
            parts = [
                f"{c.name} {'ok' if c.ok else 'FAILED'}"
                + (f" ({c.detail['summary']})" if c.detail.get("summary") else "")
                for c in step.invariants
            ]
            lines.append(f"         invariants ({step.check_seconds:.1f} s): " + "; ".join(parts))
            for check in step.invariants:
                lines += [f"           {check.name}: {p}" for p in check.problems]
                lines += [f"           {check.name} note: {n}" for n in check.notes]
    lines += [f"note: {note}" for note in report.notes]
    if report.dir:
        lines.append(f"files kept in {report.dir}")
    verdict = "PASSED" if report.ok else ("INTERRUPTED" if report.interrupted else "FAILED")
    failed = sum(step.status == "failed" for step in report.steps)
    lines.append(
        f"result: {verdict}: {len(report.steps)} steps, {failed} failed, {report.seconds:.1f} s"
    )
    return "\n".join(lines)
