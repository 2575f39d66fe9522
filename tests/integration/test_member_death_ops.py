"""Issue 12's check "Kill a member: a survivor's log says so at info within the gossip
timeout, and the metrics endpoint's member gauge changes", on real node processes.

A grid of four ``gridnode run`` processes, each serving its Prometheus endpoint
(``metrics_listen``).  One member is killed with SIGKILL (no goodbye, no leave
announcement: a crash or a pulled cable).  A survivor's log file (JSON lines at info,
what ``gridnode run`` writes when its stderr is not a terminal) must show the member
suspected and then declared dead, by its address, within the gossip timeout; and the
survivor's ``gridnode_members`` gauge must lose one ``alive`` and gain one ``dead``.
docs/OPERATING.md names the same lines and gauge for operators."""

from __future__ import annotations

import json
import math
import time
import urllib.request
from pathlib import Path
from typing import Any

from gridnode.logic.swim.config import GossipConfig
from simulations.harness import LocalGrid, NodeSpec, free_port

from ..cities import CITIES

NODES = 4
PROBE_S = 0.5  # LocalGrid's gossip_probe_interval_s
#: The suspicion a lone accuser starts lasts the longest (Lifeguard): what the node's
#: own GossipConfig gives for this grid (gridnode/logic/swim/suspicion.py).
_CFG = GossipConfig(probe_interval_s=PROBE_S)
SUSPICION_MAX_S = (
    _CFG.suspicion_max_timeout_mult * _CFG.suspicion_mult * max(1.0, math.log10(NODES)) * PROBE_S
)
#: Probing finds a silent member within a round of probes of the others (each probe
#: waits its timeout and the indirect probes' too): twice a round is generous.
DETECT_S = 2 * NODES * PROBE_S
#: The gossip timeout: found, then suspected for at most the longest suspicion.  The
#: slack is for two shared cores running four nodes and the test's own CLI calls.
GOSSIP_TIMEOUT_S = DETECT_S + SUSPICION_MAX_S
SLACK_S = 10.0


def _scrape(port: int) -> dict[str, float]:
    """``gridnode_members{state=...}`` of one scrape, by state."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        body = answer.read().decode()
    members: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("gridnode_members{"):
            labels, _, value = line.partition("} ")
            members[labels.split('state="')[1].rstrip('"')] = float(value)
    return members


def _log_events(path: Path, offset: int) -> list[dict[str, Any]]:
    """The JSON log lines written after ``offset`` (other lines, such as a traceback's,
    are not events)."""
    with path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def test_a_killed_member_is_logged_and_counted_by_a_survivor(tmp_path: Path) -> None:
    ports = {f"n{i}": free_port() for i in range(NODES)}
    specs = [
        NodeSpec(
            name=name,
            location=CITIES[i],
            extra=(f"metrics_listen=127.0.0.1:{ports[name]}",),
        )
        for i, name in enumerate(ports)
    ]
    with LocalGrid(tmp_path / "grid", authority=False, probe_interval_s=PROBE_S) as grid:
        grid.add_many(specs)
        grid.start_all()
        grid.wait_converged(timeout=60)
        survivor, victim = grid.node("n0"), grid.node("n2")
        assert survivor.log_path is not None
        before = _scrape(ports["n0"])
        assert before["alive"] == NODES - 1 and before["dead"] == 0, before
        offset = survivor.log_path.stat().st_size

        victim_id = grid.status("n2")["short_id"]
        grid.kill("n2")  # SIGKILL: the process says nothing to anyone
        killed = time.monotonic()
        noticed_after = dead_after = None  # the first suspect (or dead) line, the dead one
        deadline = killed + GOSSIP_TIMEOUT_S + SLACK_S
        while time.monotonic() < deadline and dead_after is None:  # bounded by the deadline
            for event in _log_events(survivor.log_path, offset):
                if event.get("event") not in ("member_suspect", "member_dead"):
                    continue
                if event.get("address") != victim.address:
                    continue
                # What an operator greps for: at info (what `run` logs by default), the
                # member by its short id and address.
                assert event.get("level") == "info" and event.get("peer") == victim_id, event
                elapsed = time.monotonic() - killed
                if noticed_after is None:
                    noticed_after = elapsed
                if event["event"] == "member_dead":
                    dead_after = elapsed
            time.sleep(0.2)
        tail = grid.log_tail("n0", 30)
        assert noticed_after is not None, f"no member_suspect line for n2:\n{tail}"
        assert dead_after is not None, f"no member_dead line for n2 in time:\n{tail}"

        # The gauge: one alive fewer, one dead more (bounded; the log line came first).
        after: dict[str, float] = {}
        gauge_deadline = time.monotonic() + SLACK_S
        while time.monotonic() < gauge_deadline:  # bounded by the deadline
            after = _scrape(ports["n0"])
            if after["alive"] == before["alive"] - 1 and after["dead"] == before["dead"] + 1:
                break
            time.sleep(0.2)
        assert after["alive"] == before["alive"] - 1, (before, after)
        assert after["dead"] == before["dead"] + 1, (before, after)
        print(
            f"n2 killed: logged after {noticed_after:.1f} s, dead after {dead_after:.1f} s "
            f"(gossip timeout {GOSSIP_TIMEOUT_S:.1f} s)"
        )
