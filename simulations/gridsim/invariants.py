"""The invariants checked after every step: ``restore``, ``rules`` and ``processes``.

What each one means is in :mod:`.manual`; :func:`check_invariants` runs those the
scenario asks for and returns one :class:`~.report.Check` each.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

from gridnode.logic.distance import Band, haversine_km

from ..harness import AUTHORITY_NAME
from .cluster import CliResult, parallel
from .model import NodeDef
from .report import Check
from .survival import survival
from .world import BackupState, SimNode, World

__all__ = ["check_invariants", "rule_problems"]


def check_invariants(sim: World) -> list[Check]:
    """The checks the scenario's ``invariants`` name, one Check each."""
    wanted = sim.scenario.invariants
    checks: list[Check] = []
    if "restore" in wanted or "rules" in wanted:
        checks += _check_snapshots(sim, restore="restore" in wanted, rules="rules" in wanted)
    if "processes" in wanted:
        checks.append(_check_processes(sim))
    return checks


def _check_snapshots(sim: World, *, restore: bool, rules: bool) -> list[Check]:
    """The ``restore`` and ``rules`` checks: listings, placements and restores of every backup
    whose source is up, side by side."""
    restore_check, rules_check = Check("restore"), Check("rules")
    by_source: dict[str, list[BackupState]] = {}
    for backup in sim.backups.values():
        if sim.nodes[backup.source].state == "up":
            by_source.setdefault(backup.source, []).append(backup)
        else:
            note = (
                f"{backup.name}: source {backup.source} is "
                f"{sim.nodes[backup.source].state}; not checked"
            )
            restore_check.notes.append(note)
            rules_check.notes.append(note)

    def snapshots_of(source: str) -> CliResult:
        return sim.cli(source, "snapshots", timeout=60)

    def per_backup(backup: BackupState) -> tuple[CliResult, dict[str, Any] | None]:
        placement = sim.cli(backup.source, "placement", backup.snapshot_id, timeout=60)
        if placement.ok and isinstance(placement.value, dict):
            backup.placement = placement.value
        outcome = sim.restore_and_compare(backup) if restore else None
        return placement, outcome

    backups = [b for group in by_source.values() for b in group]
    sources = list(by_source)
    tasks: list[Callable[[], Any]] = [functools.partial(snapshots_of, s) for s in sources]
    tasks += [functools.partial(per_backup, b) for b in backups]
    results = parallel(tasks)
    listings: dict[str, CliResult] = dict(zip(sources, results[: len(sources)], strict=True))
    checked: list[tuple[CliResult, dict[str, Any] | None]] = results[len(sources) :]
    restored = good_rules = 0
    for backup, (placement, outcome) in zip(backups, checked, strict=True):
        listing = listings[backup.source]
        rows = listing.value if listing.ok and isinstance(listing.value, list) else []
        row = next((r for r in rows if r.get("snapshot_id") == backup.snapshot_id), None)
        if row is None or row.get("complete") is not True:
            restore_check.fail(
                f"{backup.name}: snapshot {backup.snapshot_id} is not "
                f"listed complete on {backup.source}"
            )
        if not placement.ok:
            rules_check.fail(f"{backup.name}: placement failed: {placement.error}")
        elif rules:
            problems = rule_problems(sim, backup)
            for problem in problems[:5]:
                rules_check.fail(f"{backup.name}: {problem}")
            if len(problems) > 5:
                rules_check.fail(f"{backup.name}: ... and {len(problems) - 5} more")
            good_rules += not problems
        if outcome is not None:
            restored += _judge_restore(sim, backup, outcome, restore_check)
    restore_check.detail["summary"] = f"{restored}/{len(backups)} as expected"
    rules_check.detail["summary"] = f"{good_rules}/{len(backups)} snapshots"
    out = []
    if restore:
        out.append(restore_check)
    if rules:
        out.append(rules_check)
    return out


def _judge_restore(sim: World, backup: BackupState, outcome: dict[str, Any], check: Check) -> bool:
    """Whether a restore's outcome is what the survival model allows; notes and failures go to
    ``check``."""
    model = survival(sim, backup)
    check.detail[backup.name] = {"model": model, **outcome}
    if outcome["ok"]:
        if outcome["differences"]:
            check.fail(
                f"{backup.name}: restored data differs: " + "; ".join(outcome["differences"])
            )
            return False
        if model["restore"] == "fail":
            check.fail(
                f"{backup.name}: restored although {model['lost']} chunk(s) have "
                f"fewer than k surviving packets, more than the "
                f"{model['record_chunks']} snapshot-record chunk(s)"
            )
            return False
        if model["restore"] == "either":
            check.notes.append(
                f"{backup.name}: restored byte-equal with {model['lost']} chunk(s) below "
                "k surviving packets: they must be snapshot-record chunks, which a "
                "restore does not read"
            )
        return True
    if model["restore"] == "ok":
        check.fail(
            f"{backup.name}: restore failed although every chunk has at least k "
            f"surviving packets (fewest spare: {model['min_spare']}): "
            f"{outcome['error']}"
        )
        return False
    if not outcome["clean_failure"]:
        check.fail(
            f"{backup.name}: restore failed, as the model predicts, but not cleanly:"
            f" {outcome['error']}"
        )
        return False
    return True


def _band(wire: Any) -> Band:
    """A placement's proximity band; unreadable means unbounded, so a bad report cannot hide a
    breach."""
    try:
        return Band.from_wire(wire)
    except ValueError:
        return Band()


def rule_problems(sim: World, backup: BackupState) -> list[str]:
    """Rule breaches in ``backup``'s placement, distances recomputed from our locations."""
    placement = backup.placement
    rules = placement.get("rules") or {}
    near = _band(rules.get("backup_proximity"))
    pair = _band(rules.get("packet_proximity"))
    distinct = list(rules.get("distinct") or [])
    source = sim.nodes[backup.source].defn
    source_id = sim.nodes[backup.source].node_id
    problems: list[str] = []
    for chunk in placement.get("chunks", []):
        cid = chunk["chunk_id"][:12]
        packets = chunk["packets"]
        targets = [p["target"] for p in packets]
        if len(packets) != int(chunk["n"]):
            problems.append(f"chunk {cid}: {len(packets)} packets, n is {chunk['n']}")
        if len(set(targets)) != len(targets):
            problems.append(f"chunk {cid}: two packets on one target")
        if source_id in targets:
            problems.append(f"chunk {cid}: a packet on the source itself")
        defs: list[NodeDef] = []
        for packet in packets:
            name = sim.by_id.get(packet["target"])
            if name is None:
                problems.append(
                    f"chunk {cid}: target {packet['target'][:10]} is not a scenario node"
                )
                continue
            target = sim.nodes[name].defn
            defs.append(target)
            km = haversine_km(source.lat, source.lon, target.lat, target.lon)
            if not near.contains(km):
                problems.append(
                    f"chunk {cid}: {name} is {km:.0f} km from the source, "
                    f"outside backup proximity {near.describe()}"
                )
            reported = packet.get("distance_km")
            if reported is not None and abs(reported - km) > 1 + km * 1e-3:
                problems.append(
                    f"chunk {cid}: placement says {name} is {reported} km away, it is {km:.1f} km"
                )
        for a, b in itertools.combinations(defs, 2):
            km = haversine_km(a.lat, a.lon, b.lat, b.lon)
            if not pair.contains(km):
                problems.append(
                    f"chunk {cid}: {a.name} and {b.name} are {km:.0f} km "
                    f"apart, outside packet proximity {pair.describe()}"
                )
        for label in distinct:
            values = [d.label(label) for d in defs]
            if None in values or len(set(values)) != len(values):
                problems.append(
                    f"chunk {cid}: targets do not have distinct {label!r} labels: {values}"
                )
    return problems


def _check_processes(sim: World) -> Check:
    """The ``processes`` check: nodes nothing stopped still run, stopped ones do not, and no log
    has a Traceback."""
    check = Check("processes")
    authority = sim.g.authority_node
    if authority is not None:
        sim.note_authority_pid()
        if not authority.running:
            code = authority.process.returncode if authority.process is not None else None
            check.fail(
                f"the authority node is not running (exit code {code}): "
                f"{sim.g.log_tail(AUTHORITY_NAME, 3)}"
            )
        _scan_log(sim, AUTHORITY_NAME, sim.authority)
        if sim.authority.tracebacks:
            check.fail(f"the authority's log has a Traceback: {sim.authority.tracebacks[0]}")
    running = 0
    for name, node in sim.nodes.items():
        proc = sim.g.nodes[name]
        alive = proc.running
        if node.state in ("up", "paused"):
            if alive:
                running += 1
            else:
                code = proc.process.returncode if proc.process is not None else None
                check.fail(
                    f"{name} is not running (exit code {code}); nothing stopped it"
                    f": {sim.g.log_tail(name, 3)}"
                )
                node.state = "crashed"
        elif alive:
            check.fail(f"{name} should be {node.state} but is running")
        _scan_log(sim, name, node)
        if node.tracebacks:
            check.fail(f"{name}'s log has a Traceback: {node.tracebacks[0]}")
    check.detail["summary"] = f"{running} running"
    return check


def _scan_log(sim: World, name: str, node: SimNode) -> None:
    """Read the log from where the last scan stopped; remember Traceback lines."""
    path = sim.g.node(name).home / "node.log"
    if not path.exists():
        return
    with path.open("rb") as fh:
        fh.seek(node.log_offset)
        data = fh.read()
    # Only whole lines: a line being written now is read next time.
    end = data.rfind(b"\n") + 1
    node.log_offset += end
    for line in data[:end].decode(errors="replace").splitlines():
        if "Traceback" in line and len(node.tracebacks) < 5:
            node.tracebacks.append(line.strip()[:300])
