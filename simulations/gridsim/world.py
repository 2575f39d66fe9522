"""The state of one scenario run, shared by the steps, the survival model and the checks."""

from __future__ import annotations

import itertools
import math
import random
import shutil
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..harness import AUTHORITY_NAME, LocalGrid
from .cluster import CLI_TIMEOUT_S, CONVERGE_TIMEOUT_S, CliResult, run_cli, start_nodes, wait_views
from .model import NodeDef, Scenario, Step
from .network import Network
from .workload import Manifest, build_manifest, compare_manifest

__all__ = ["BackupState", "SimNode", "StepFailed", "World"]


class StepFailed(Exception):
    """A step's action did not do what the scenario expected; the message says how."""


@attrs.define
class SimNode:
    """One scenario node as the run sees it: its definition, the state the steps left it in, and
    every pid started for it (the report lists them)."""

    defn: NodeDef
    state: str = "up"  # up | paused | killed | stopped | cut (emulated partition)
    node_id: str = ""
    short_id: str = ""
    address: str = ""
    run_args: tuple[str, ...] = ()
    pids: list[int] = attrs.field(factory=list)  # every process started for this node
    log_offset: int = 0
    tracebacks: list[str] = attrs.field(factory=list)


@attrs.define
class BackupState:
    """A backup step's snapshot and what checks it: the manifest of what was backed up and the
    latest placement report."""

    name: str
    source: str
    snapshot_id: str
    root: Path
    manifest: Manifest
    placement: dict[str, Any]
    #: Chunks a restore reads (its result's ``chunks``); the rest of the placement's
    #: chunks hold the snapshot record, which a restore does not need.
    data_chunks: int | None = None


class World:
    """What a scenario run knows about its grid: the nodes and their states, the backups
    made, the packets damaged, the partition; and the small operations every step and
    check shares (run a CLI command on a node, start and stop nodes, wait for views).

    :class:`~.simulation.Simulation` adds setup, teardown, and running the steps and
    checks; the step handlers (:mod:`.steps_data`, :mod:`.steps_grid`), the survival
    model (:mod:`.survival`) and the invariants (:mod:`.invariants`) are functions of a
    ``World``, so that none of them needs the others.
    """

    def __init__(
        self, scenario: Scenario, base: Path, network: Network, progress: Callable[[str], None]
    ) -> None:
        self.scenario = scenario
        self.base = base
        self.network = network
        self.progress = progress
        self.rng = random.Random(scenario.seed)
        self.grid: LocalGrid | None = None
        self.nodes: dict[str, SimNode] = {n.name: SimNode(defn=n) for n in scenario.nodes}
        self.by_id: dict[str, str] = {}
        self.backups: dict[str, BackupState] = {}
        self.damaged: dict[tuple[str, str], str] = {}  # (node id, packet id) -> what
        self.partition: tuple[frozenset[str], frozenset[str]] | None = None
        self.emulated_partition = False
        self._restores = itertools.count(1)
        #: The authority node's processes and log scan (a grid with an authority).
        self.authority = SimNode(
            defn=NodeDef(
                name=AUTHORITY_NAME,
                location="",
                lat=math.nan,
                lon=math.nan,
                city="",
                allocation="0",
                seeds=(),
                labels=(),
                location_check="off",
                settings=(),
            )
        )

    # --- the grid and its nodes -------------------------------------------------------------

    def node_check(self, node: NodeDef) -> str:
        """What the node's ``location_check`` means on this network (``auto`` follows it)."""
        return self.network.location_check if node.location_check == "auto" else node.location_check

    def note_authority_pid(self) -> None:
        """Remember the authority's pid before it is stopped, for the report's grid row."""
        node = self.grid.authority_node if self.grid is not None else None
        if (
            node is not None
            and node.process is not None
            and node.process.pid not in self.authority.pids
        ):
            self.authority.pids.append(node.process.pid)

    @property
    def g(self) -> LocalGrid:
        """The grid, once set up; steps and checks only run after setup."""
        assert self.grid is not None
        return self.grid

    def cli(self, name: str, *args: str, timeout: float = CLI_TIMEOUT_S) -> CliResult:
        """``gridnode ARGS --json`` against node ``name`` (never raises for the command's own
        failure)."""
        return run_cli(self.g, self.g.nodes[name].home, *args, timeout=timeout)

    def separated(self, a: str, b: str) -> bool:
        """Whether a real (not emulated) partition keeps ``a`` and ``b`` apart."""
        if self.partition is None or self.emulated_partition:
            return False
        left, right = self.partition
        return (a in left and b in right) or (a in right and b in left)

    def up(self) -> list[str]:
        """The nodes that run and are not paused: the ones that answer."""
        return [name for name, node in self.nodes.items() if node.state == "up"]

    def need_up(self, name: str) -> None:
        """A step that runs a command on ``name`` needs it running; StepFailed says why not."""
        if self.nodes[name].state != "up":
            raise StepFailed(f"{name} is {self.nodes[name].state}, not up")

    def packet_path(self, name: str, packet_id: str) -> Path:
        """Where node ``name`` stores a packet file (the ``corrupt`` and ``delete`` steps reach
        in)."""
        return (
            self.g.nodes[name].home
            / "storage"
            / "packets"
            / packet_id[:2]
            / packet_id[2:4]
            / packet_id
        )

    def signal_name(self, name: str, sig: signal.Signals) -> None:
        """Signal a node's process if it still runs."""
        proc = self.g.nodes[name].process
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    # --- starting and stopping nodes --------------------------------------------------------

    def start_processes(
        self,
        names: Sequence[str],
        extra: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """Start nodes and wait until each answers; every pid is recorded even on failure, so the
        processes check and the report know them."""
        try:
            return start_nodes(self.g, names, *extra)
        finally:
            for name in names:
                proc = self.g.nodes[name].process
                if proc is not None and proc.pid not in self.nodes[name].pids:
                    self.nodes[name].pids.append(proc.pid)

    def start(self, names: Sequence[str], extra: Sequence[str] = ()) -> float:
        """Start stopped or killed nodes (their disks intact), mark them up, wait for views to
        converge."""
        for name in names:
            self.nodes[name].run_args = tuple(extra)
        self.start_processes(names, extra)
        for name in names:
            self.nodes[name].state = "up"
        return self.converge(CONVERGE_TIMEOUT_S)

    def stop(self, names: Sequence[str], state: str) -> dict[str, int | None]:
        """SIGTERM nodes (SIGCONT first, in case they are paused); their exit codes; they end in
        ``state``."""
        codes: dict[str, int | None] = {}
        for name in names:
            self.signal_name(name, signal.SIGCONT)
            codes[name] = self.g.stop(name, timeout=10)
            self.nodes[name].state = state
        return codes

    def converge(
        self, timeout: float, *, settled: bool = False, observers: Sequence[str] = ()
    ) -> float:
        """Until every running node sees the nodes it can reach alive (and, settled, no others).

        ``observers`` limits whose view must get there (default: every running node).
        """
        up = self.up()
        expect: dict[str, tuple[set[str], set[str]]] = {}
        for name in up:
            if observers and name not in observers:
                continue
            reach = {self.nodes[o].address for o in up if o != name and not self.separated(name, o)}
            others = {n.address for o, n in self.nodes.items() if o != name} - reach
            expect[name] = (reach, others if settled else set())
        seconds, _ = wait_views(self.g, expect, timeout)
        return seconds

    # --- backups -------------------------------------------------------------------------

    def select(self, step: Step, *, states: Sequence[str]) -> list[str]:
        """The nodes a kill/stop/pause/resume/restart step names, each required to be in one of
        ``states``."""
        if step.node:
            chosen = [step.node]
        elif step.nodes:
            chosen = list(step.nodes)
        else:
            assert step.holders_of is not None
            backup = self.backups.get(step.holders_of)
            if backup is None:
                raise StepFailed(f"backup {step.holders_of} made no snapshot")
            counts = self.holder_counts(backup)
            shares = self.share_sums(backup)
            # Most packets first; among equals, the lowest shares: a restore asks for
            # shares in order, so those holders are the ones it meets first.
            candidates = sorted(
                (
                    name
                    for name in counts
                    if name != backup.source and self.nodes[name].state in states
                ),
                key=lambda n: (-counts[n], shares.get(n, 0), n),
            )
            if len(candidates) < step.count:
                raise StepFailed(
                    f"only {len(candidates)} node(s) in state "
                    f"{'/'.join(states)} hold packets of {backup.name}"
                )
            chosen = candidates[: step.count]
        for name in chosen:
            if self.nodes[name].state not in states:
                raise StepFailed(f"{name} is {self.nodes[name].state}, not {' or '.join(states)}")
        return chosen

    def holder_counts(self, backup: BackupState) -> dict[str, int]:
        """How many packets of ``backup`` each scenario node holds, from the latest placement."""
        counts: dict[str, int] = {}
        for chunk in backup.placement.get("chunks", []):
            for packet in chunk["packets"]:
                name = self.by_id.get(packet["target"])
                if name is not None:
                    counts[name] = counts.get(name, 0) + 1
        return counts

    def share_sums(self, backup: BackupState) -> dict[str, int]:
        """The sum of the share numbers each node holds of ``backup`` (restores ask low first)."""
        sums: dict[str, int] = {}
        for chunk in backup.placement.get("chunks", []):
            for packet in chunk["packets"]:
                name = self.by_id.get(packet["target"])
                if name is not None:
                    sums[name] = sums.get(name, 0) + int(packet.get("share", 0))
        return sums

    def restore_and_compare(self, backup: BackupState) -> dict[str, Any]:
        """Restore on the source into a fresh directory; compare; keep it only if different."""
        out = self.base / "restores" / f"{backup.name}-{next(self._restores)}"
        result = self.cli(backup.source, "restore", backup.snapshot_id, "--to", str(out))
        outcome: dict[str, Any] = {
            "ok": result.ok,
            "seconds": round(result.seconds, 3),
            "clean_failure": result.failed_cleanly,
        }
        if result.ok:
            differences = compare_manifest(backup.manifest, build_manifest(out / backup.root.name))
            outcome["differences"] = differences
            value = result.value if isinstance(result.value, dict) else {}
            outcome["node_seconds"] = value.get("seconds")
            if isinstance(value.get("chunks"), int):
                backup.data_chunks = value["chunks"]
            if differences:
                outcome["kept"] = str(out)
                return outcome
        else:
            outcome["error"] = result.error
        shutil.rmtree(out, ignore_errors=True)
        return outcome
