"""The steps that act on nodes and the network: ``kill``, ``stop``, ``pause``,
``resume``, ``restart``, ``partition``, ``heal``, ``fill`` and ``wait``.

Each handler takes the run's :class:`~.world.World`, the step and its report entry, and
keeps the nodes' states in the world in step with what it did to their processes (the
survival model and the ``processes`` invariant read them).
"""

from __future__ import annotations

import functools
import time

from .cluster import CONVERGE_TIMEOUT_S, POLL_S, parallel
from .model import Step
from .report import StepReport
from .world import StepFailed, World

__all__ = [
    "step_fill",
    "step_heal",
    "step_kill",
    "step_partition",
    "step_pause",
    "step_restart",
    "step_resume",
    "step_stop",
    "step_wait",
]


def step_kill(sim: World, step: Step, report: StepReport) -> None:
    """``kill``: SIGKILL; the node stays killed until a ``restart``."""
    chosen = sim.select(step, states=("up", "paused"))
    for name in chosen:
        sim.g.kill(name)
        sim.nodes[name].state = "killed"
    report.detail["nodes"] = chosen
    report.summary = f"killed {', '.join(chosen)} (SIGKILL)"


def step_stop(sim: World, step: Step, report: StepReport) -> None:
    """``stop``: SIGTERM; a clean exit (code 0) is expected."""
    chosen = sim.select(step, states=("up", "paused"))
    codes = sim.stop(chosen, "stopped")
    report.detail.update({"nodes": chosen, "exit_codes": codes})
    report.summary = "stopped " + ", ".join(f"{n} (exit {c})" for n, c in codes.items())
    bad = {n: c for n, c in codes.items() if c != 0}
    if bad:
        raise StepFailed(f"SIGTERM did not stop cleanly: {bad}")


def step_pause(sim: World, step: Step, report: StepReport) -> None:
    """``pause``: SIGSTOP; the process runs but does not answer."""
    chosen = sim.select(step, states=("up",))
    for name in chosen:
        sim.g.pause(name)
        sim.nodes[name].state = "paused"
    report.detail["nodes"] = chosen
    report.summary = f"paused {', '.join(chosen)} (SIGSTOP)"


def step_resume(sim: World, step: Step, report: StepReport) -> None:
    """``resume``: SIGCONT for paused nodes."""
    chosen = sim.select(step, states=("paused",))
    for name in chosen:
        sim.g.resume(name)
        sim.nodes[name].state = "up"
    report.detail["nodes"] = chosen
    report.summary = f"resumed {', '.join(chosen)} (SIGCONT)"


def step_restart(sim: World, step: Step, report: StepReport) -> None:
    """``restart``: start killed or stopped nodes again, optionally with another ``--allocate``."""
    chosen = sim.select(step, states=("killed", "stopped"))
    extra = ("--allocate", step.allocation) if step.allocation else ()
    seconds = sim.start(chosen, extra)
    report.detail.update(
        {"nodes": chosen, "converged_s": round(seconds, 2), "run_args": list(extra)}
    )
    report.summary = f"restarted {', '.join(chosen)}; converged in {seconds:.1f} s"


def step_partition(sim: World, step: Step, report: StepReport) -> None:
    """``partition``: drop packets between the groups (``--netns``), or stop the smaller group
    (loopback)."""
    left, right = (frozenset(g) for g in step.groups)
    sim.partition = (left, right)
    if sim.network.netns is not None:
        sim.network.netns.cut(left, right)
        sim.emulated_partition = False
        report.detail.update({"emulated": False, "groups": [sorted(left), sorted(right)]})
        report.summary = (
            f"links between {','.join(sorted(left))} and "
            f"{','.join(sorted(right))} drop every packet"
        )
        return
    sim.emulated_partition = True
    minority = right if len(right) <= len(left) else left
    stopped = [n for n in sorted(minority) if sim.nodes[n].state == "up"]
    codes = sim.stop(stopped, "cut")
    report.detail.update(
        {
            "emulated": True,
            "groups": [sorted(left), sorted(right)],
            "stopped": stopped,
            "exit_codes": codes,
        }
    )
    report.notes.append(
        "emulated partition (loopback, no packet filter): the smaller "
        f"group {', '.join(sorted(minority))} is stopped until heal, so "
        "it cannot act on its own side meanwhile"
    )
    report.summary = f"emulated: stopped {', '.join(stopped) or 'nothing'}"


def step_heal(sim: World, step: Step, report: StepReport) -> None:
    """``heal``: mend the links, or restart the stopped group; wait for views to converge."""
    if sim.network.netns is not None and not sim.emulated_partition:
        sim.network.netns.mend()
        sim.partition = None
        seconds = sim.converge(CONVERGE_TIMEOUT_S)
        report.summary = f"links restored; converged in {seconds:.1f} s"
    else:
        cut = [n for n, node in sim.nodes.items() if node.state == "cut"]
        sim.partition = None
        sim.emulated_partition = False
        seconds = sim.start(cut, ()) if cut else sim.converge(CONVERGE_TIMEOUT_S)
        report.summary = f"restarted {', '.join(cut) or 'nothing'}; converged in {seconds:.1f} s"
    report.detail["converged_s"] = round(seconds, 2)


def step_fill(sim: World, step: Step, report: StepReport) -> None:
    """``fill``: restart the node with an allocation of what it stores plus ``free``, and wait
    until the grid hears."""
    assert step.node is not None
    sim.need_up(step.node)
    status = sim.cli(step.node, "status", timeout=30)
    if not status.ok:
        raise StepFailed(f"status of {step.node} failed: {status.error}")
    used = int(status.value["storage"]["used_bytes"])
    allocation = used + step.free
    codes = sim.stop([step.node], "stopped")
    if codes[step.node] != 0:
        raise StepFailed(f"{step.node} did not stop cleanly: exit {codes[step.node]}")
    seconds = sim.start([step.node], ("--allocate", str(allocation)))
    address = sim.nodes[step.node].address
    heard = time.monotonic()
    waited = _wait_free(sim, address, step.free, CONVERGE_TIMEOUT_S)
    report.detail.update(
        {
            "used_bytes": used,
            "allocation_bytes": allocation,
            "converged_s": round(seconds, 2),
            "heard_s": round(time.monotonic() - heard, 2),
        }
    )
    report.summary = (
        f"restarted {step.node} with --allocate {allocation} (stores {used} "
        f"bytes); every node heard in {waited:.1f} s"
    )


def _wait_free(sim: World, address: str, free: int, timeout: float) -> float:
    """Until every running node's view gives ``address`` at most ``free`` free bytes."""
    started = time.monotonic()
    names = [n for n in sim.up() if sim.nodes[n].address != address]
    for _ in range(int(timeout / POLL_S) + 2):
        results = parallel([functools.partial(sim.cli, n, "status", timeout=30) for n in names])
        if all(
            r.ok
            and any(
                m["address"] == address and (m.get("free_bytes") or 0) <= free
                for m in r.value.get("members", [])
            )
            for r in results
        ):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            break
        time.sleep(POLL_S)
    raise StepFailed(f"the grid did not hear within {timeout:g} s that {address} is full")


def step_wait(sim: World, step: Step, report: StepReport) -> None:
    """``wait``: sleep, or wait until views are converged or settled (``seconds`` is then the
    limit)."""
    if step.until is None:
        time.sleep(step.seconds or 0)
        report.summary = f"slept {step.seconds or 0:g} s"
        return
    seconds = sim.converge(
        step.seconds or 60.0, settled=step.until == "settled", observers=step.nodes
    )
    report.detail[f"{step.until}_s"] = round(seconds, 2)
    report.summary = f"{step.until} in {seconds:.1f} s"
