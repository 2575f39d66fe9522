"""The simulation: a :class:`~.world.World` that sets up its grid, runs the steps'
handlers, checks the invariants, and stops everything it started."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from ..harness import AUTHORITY_NAME, LocalGrid, NodeSpec
from ..netns import Netns, NetnsGrid, plan_netns
from . import steps_data, steps_grid
from .cluster import CONVERGE_TIMEOUT_S, add_nodes
from .invariants import check_invariants, rule_problems
from .model import Step
from .report import Check, StepReport
from .survival import survival
from .world import BackupState, World

__all__ = ["STEP_HANDLERS", "Simulation"]

#: One handler per action; each fills the step's report entry or raises StepFailed.
STEP_HANDLERS: Final[Mapping[str, Callable[[World, Step, StepReport], None]]] = {
    "backup": steps_data.step_backup,
    "restore": steps_data.step_restore,
    "verify": steps_data.step_verify,
    "repair": steps_data.step_repair,
    "corrupt": steps_data.step_corrupt,
    "delete": steps_data.step_delete,
    "kill": steps_grid.step_kill,
    "stop": steps_grid.step_stop,
    "pause": steps_grid.step_pause,
    "resume": steps_grid.step_resume,
    "restart": steps_grid.step_restart,
    "partition": steps_grid.step_partition,
    "heal": steps_grid.step_heal,
    "fill": steps_grid.step_fill,
    "wait": steps_grid.step_wait,
}


class Simulation(World):
    """One scenario run: sets the grid up, runs each step's handler, checks the
    invariants, describes the grid and its nodes for the report, and tears it all down."""

    # --- setup and teardown ---------------------------------------------------------------

    def setup(self) -> dict[str, Any]:
        """Create the grid (loopback or namespaces), initialise and start every node, wait until
        they converge; returns the setup timings."""
        root = self.base / "grid"
        if self.network.mode == "netns":
            plan = plan_netns(
                [(n.name, n.lat, n.lon) for n in self.scenario.nodes], tag=f"gs{os.getpid()}"
            )
            netns = Netns(plan, delay=self.network.delay)
            self.network.netns = netns
            netns.open()
            # NetnsGrid places scenario nodes in namespaces; the authority has none yet.
            self.grid = NetnsGrid(
                root,
                netns,
                name=self.scenario.name,
                log_level=self.scenario.log_level,
                authority=False,
            )
        else:
            self.grid = LocalGrid(root, name=self.scenario.name, log_level=self.scenario.log_level)
        for node in self.scenario.nodes:
            if node.location_check == "enforce" and not self.network.delay:
                self.network.notes.append(
                    f"{node.name} enforces the location check without real delays: it will "
                    "distrust every peer's distance"
                )
        started = time.monotonic()
        add_nodes(
            self.grid,
            [
                (
                    NodeSpec(
                        name=n.name,
                        location=n.location,
                        allocate=n.allocation,
                        location_check=self.node_check(n),
                        labels=n.labels,
                        extra=n.settings,
                    ),
                    n.seeds,
                )
                for n in self.scenario.nodes
            ],
        )
        initialised = time.monotonic()
        self.progress(
            f"setup: {len(self.nodes)} homes initialised in {initialised - started:.1f} s"
            + (", with the grid's authority" if self.grid.authority_node is not None else "")
        )
        statuses = self.start_processes(list(self.nodes))
        ready = time.monotonic()
        self.progress(f"setup: {len(self.nodes)} nodes answering in {ready - initialised:.1f} s")
        for name, status in zip(self.nodes, statuses, strict=True):
            sim_node = self.nodes[name]
            sim_node.node_id = status["node_id"]
            sim_node.short_id = status.get("short_id", "")
            sim_node.address = self.grid.nodes[name].address
            self.by_id[sim_node.node_id] = name
        seconds = self.converge(CONVERGE_TIMEOUT_S)
        self.progress(f"setup: converged in {seconds:.1f} s")
        return {
            "init_s": round(initialised - started, 2),
            "start_s": round(ready - initialised, 2),
            "converged_s": round(seconds, 2),
        }

    def close(self) -> None:
        """Stop every process the run started, the authority too, and tear down namespaces."""
        if self.grid is not None:
            self.note_authority_pid()
            self.grid.close()
            self.authority.state = "stopped"
        if self.network.netns is not None:
            self.network.netns.close()

    def grid_row(self) -> dict[str, Any]:
        """What kind of grid this is, for the report."""
        node = self.grid.authority_node if self.grid is not None else None
        if node is None:
            why = "--netns" if self.network.mode == "netns" else "no authority"
            return {
                "authority": False,
                "authority_node": None,
                "note": f"open ({why}): any node that can reach a member may join",
            }
        self.note_authority_pid()
        if node.running:
            status = "up"
        else:  # stopped by close(), or it died (the processes check says so)
            status = "stopped" if self.authority.state == "stopped" else "not running"
        return {
            "authority": True,
            "authority_node": {
                "name": AUTHORITY_NAME,
                "address": node.address,
                "home": str(node.home),
                "state": status,
                "pids": list(self.authority.pids),
            },
            "note": f"with an authority at {node.address}: every node subscribed with a "
            "one-time invite and holds a certificate (the authority stores no packets)",
        }

    def node_rows(self) -> list[dict[str, Any]]:
        """One row per scenario node for the report (``nodes``)."""
        rows = []
        for name, node in self.nodes.items():
            proc = self.grid.nodes.get(name) if self.grid else None
            rows.append(
                {
                    "name": name,
                    "city": node.defn.city or None,
                    "lat": node.defn.lat,
                    "lon": node.defn.lon,
                    "address": node.address or (proc.address if proc else None),
                    "node_id": node.node_id or None,
                    "short_id": node.short_id or None,
                    "allocation": node.defn.allocation,
                    "location_check": self.node_check(node.defn),
                    "labels": list(node.defn.labels),
                    "state": node.state,
                    "pids": list(node.pids),
                }
            )
        return rows

    # --- steps and checks -------------------------------------------------------------------

    def run_step(self, step: Step, report: StepReport) -> None:
        """The step's handler (see :data:`STEP_HANDLERS`); raises :class:`StepFailed`."""
        STEP_HANDLERS[step.action](self, step, report)

    def check_invariants(self) -> list[Check]:
        """The invariant checks the scenario asks for (see :mod:`.invariants`)."""
        return check_invariants(self)

    def survival(self, backup: BackupState) -> dict[str, Any]:
        """The survival model of ``backup`` now (see :mod:`.survival`)."""
        return survival(self, backup)

    def rule_problems(self, backup: BackupState) -> list[str]:
        """Rule breaches in ``backup``'s placement (see :mod:`.invariants`)."""
        return rule_problems(self, backup)
