"""The steps that make and check data: ``backup``, ``restore``, ``verify``, ``repair``,
``corrupt`` and ``delete``.

Each handler takes the run's :class:`~.world.World`, the step and its report entry; it
fills the entry and raises :class:`~.world.StepFailed` when the grid did not do what the
scenario expects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .model import Step
from .report import StepReport
from .survival import chunk_survivors, survival
from .workload import build_manifest, generate_data
from .world import BackupState, StepFailed, World

__all__ = [
    "step_backup",
    "step_corrupt",
    "step_delete",
    "step_repair",
    "step_restore",
    "step_verify",
]


def step_backup(sim: World, step: Step, report: StepReport) -> None:
    """``backup``: generate or take the data, back it up, record its placement; check ``expect``
    and ``not_on``."""
    assert step.node is not None and step.data is not None
    sim.need_up(step.node)
    if step.data.path is not None:
        root = step.data.path
        if not root.is_dir():
            raise StepFailed(f"{root} is not a directory")
    else:
        root = sim.base / "data" / step.name
        generate_data(root, step.data)
    manifest = build_manifest(root)
    files = sum(1 for v in manifest.values() if v[0] == "file")
    size = sum(v[1] for v in manifest.values() if v[0] == "file")
    args = ["backup", str(root)]
    for flag, value in (
        ("--redundancy", step.redundancy),
        ("--backup-proximity", step.backup_proximity),
        ("--packet-proximity", step.packet_proximity),
    ):
        if value is not None:
            args += [flag, value]
    for label in step.distinct:
        args += ["--distinct", label]
    result = sim.cli(step.node, *args)
    report.detail.update(
        {
            "source": step.node,
            "root": str(root),
            "files": files,
            "bytes": size,
            "expect": step.expect,
            "outcome": "ok" if result.ok else "fail",
        }
    )
    if not result.ok:
        report.detail["error"] = result.error
        report.summary = f"backup failed: {result.error}"
        if step.expect == "ok":
            raise StepFailed(f"backup failed: {result.error}")
        return
    value = result.value
    earlier = {c["chunk_id"] for b in sim.backups.values() for c in b.placement.get("chunks", [])}
    placement = sim.cli(step.node, "placement", value["snapshot_id"])
    if not placement.ok:
        raise StepFailed(f"placement of {value['snapshot_id']} failed: {placement.error}")
    backup = BackupState(
        name=step.name,
        source=step.node,
        snapshot_id=value["snapshot_id"],
        root=root,
        manifest=manifest,
        placement=placement.value,
    )
    sim.backups[step.name] = backup
    holders = sim.holder_counts(backup)
    report.detail.update(
        {
            "snapshot_id": value["snapshot_id"],
            "bytes_uploaded": value.get("bytes_uploaded"),
            "packets_uploaded": value.get("packets_uploaded"),
            "packets_replaced": value.get("packets_replaced"),
            "node_seconds": value.get("seconds"),
            "chunks": len(placement.value["chunks"]),
            "holders": holders,
        }
    )
    report.summary = (
        f"snapshot {value['snapshot_id']}: {files} files, {size / 1e6:.2f} MB, "
        f"{len(placement.value['chunks'])} chunks, "
        f"{value.get('packets_uploaded')} packets on "
        + ", ".join(f"{n} {c}" for n, c in sorted(holders.items()))
    )
    if step.expect == "fail":
        raise StepFailed("the backup succeeded, but the scenario expected it to fail")
    # Deduplicated chunks keep the packets placed by an earlier backup.
    fresh: dict[str, int] = {}
    for chunk in placement.value["chunks"]:
        if chunk["chunk_id"] not in earlier:
            for packet in chunk["packets"]:
                name = sim.by_id.get(packet["target"], packet["target"])
                fresh[name] = fresh.get(name, 0) + 1
    report.detail["new_packets_on"] = fresh
    wrong = {name: fresh[name] for name in step.not_on if fresh.get(name)}
    if wrong:
        raise StepFailed(f"new packets went to nodes the scenario excludes: {wrong}")


def step_restore(sim: World, step: Step, report: StepReport) -> None:
    """``restore``: restore on the source and compare, against the survival model's prediction (or
    ``expect``) and ``max_seconds``."""
    assert step.backup is not None
    backup = sim.backups.get(step.backup)
    if backup is None:
        raise StepFailed(f"backup {step.backup} made no snapshot")
    sim.need_up(backup.source)
    model = survival(sim, backup)
    predicted = model["restore"]
    expect = predicted if step.expect == "auto" else step.expect
    if predicted == "either":
        report.notes.append(
            f"{model['lost']} chunk(s) have fewer than k surviving "
            "packets, but they may all be snapshot-record chunks, which a "
            "restore does not read: either outcome is possible"
        )
    elif expect != predicted:
        report.notes.append(
            f"the survival model predicts {predicted}, the scenario expects {expect}"
        )
    outcome = sim.restore_and_compare(backup)
    report.detail.update({"expect": expect, "predicted": predicted, "model": model, **outcome})
    took = outcome["seconds"]
    if outcome["ok"]:
        if outcome["differences"]:
            raise StepFailed("restored data differs: " + "; ".join(outcome["differences"]))
        report.summary = f"restored byte-equal in {took:.1f} s (model: {predicted})"
        if expect == "fail":
            raise StepFailed("the restore succeeded, but the scenario expected it to fail")
    else:
        report.summary = f"restore failed in {took:.1f} s: {outcome['error']}"
        if expect == "ok":
            raise StepFailed(f"restore failed: {outcome['error']}")
        if not outcome["clean_failure"]:
            raise StepFailed("restore failed, but not cleanly (no one-line error)")
    if step.max_seconds is not None and took > step.max_seconds:
        raise StepFailed(f"restore took {took:.1f} s, more than {step.max_seconds:g} s")


def backups_to_check(
    sim: World, step: Step, report: StepReport, problems: list[str], verb: str
) -> Iterator[tuple[str, BackupState]]:
    """The step's backup (or every one) whose source is up to run ``verb`` on."""
    for name in [step.backup] if step.backup else list(sim.backups):
        backup = sim.backups.get(name)
        if backup is None:
            problems.append(f"backup {name} made no snapshot")
        elif sim.nodes[backup.source].state != "up":
            report.notes.append(f"{name}: source {backup.source} is not up; not {verb}")
        else:
            yield name, backup


def step_verify(sim: World, step: Step, report: StepReport) -> None:
    """``verify``: ``gridnode verify`` must agree with the survival model on healthy, degraded and
    lost chunks."""
    results: dict[str, Any] = {}
    problems: list[str] = []
    for name, backup in backups_to_check(sim, step, report, problems, "verified"):
        model = survival(sim, backup)
        result = sim.cli(backup.source, "verify", backup.snapshot_id)
        value = result.value if isinstance(result.value, dict) else {}
        if "ok" not in value:
            problems.append(f"{name}: verify gave no result: {result.error}")
            continue
        got = {
            "ok": value["ok"],
            "lost": value.get("chunks_lost"),
            "healthy": value.get("chunks_healthy"),
            "degraded": value.get("chunks_degraded"),
        }
        want = {
            "ok": model["all_chunks_ok"],
            "lost": model["lost"],
            "healthy": model["healthy"],
            "degraded": model["degraded"],
        }
        results[name] = {"verify": got, "model": want}
        if got != want:
            problems.append(f"{name}: verify says {got}, the model {want}")
    report.detail["backups"] = results
    report.summary = "; ".join(
        f"{n}: ok={r['verify']['ok']} healthy={r['verify']['healthy']} "
        f"degraded={r['verify']['degraded']} lost={r['verify']['lost']}"
        for n, r in results.items()
    )
    if problems:
        raise StepFailed("; ".join(problems))


def step_repair(sim: World, step: Step, report: StepReport) -> None:
    """``repair``: lost chunks must be those the model counts lost; with enough nodes up, every
    chunk is back to n packets."""
    problems: list[str] = []
    results: dict[str, Any] = {}
    for name, backup in backups_to_check(sim, step, report, problems, "repaired"):
        model = survival(sim, backup)
        result = sim.cli(backup.source, "repair", backup.snapshot_id)
        value = result.value if isinstance(result.value, dict) else {}
        if "chunks_lost" not in value:
            problems.append(f"{name}: repair gave no result: {result.error}")
            continue
        if value["chunks_unrepaired"] == 0:
            # Every chunk that still had k packets now has n: a damaged copy was
            # rewritten (on its holder, when that answered) or moved elsewhere.
            for chunk in backup.placement.get("chunks", []):
                if chunk_survivors(sim, backup, chunk) >= int(chunk["k"]):
                    for packet in chunk["packets"]:
                        sim.damaged.pop((packet["target"], packet["packet_id"]), None)
        placement = sim.cli(backup.source, "placement", backup.snapshot_id, timeout=60)
        if placement.ok and isinstance(placement.value, dict):
            backup.placement = placement.value
        after = survival(sim, backup)
        results[name] = {
            "repaired": value["chunks_repaired"],
            "packets_rebuilt": value["packets_rebuilt"],
            "lost": value["chunks_lost"],
            "unrepaired": value["chunks_unrepaired"],
            "model_lost_before": model["lost"],
            "degraded_after": after["degraded"],
        }
        if value["chunks_lost"] != model["lost"]:
            problems.append(
                f"{name}: repair found {value['chunks_lost']} chunks lost, "
                f"the model {model['lost']}"
            )
        up_targets = sum(
            1 for n, node in sim.nodes.items() if node.state == "up" and n != backup.source
        )
        widest = max((int(c["n"]) for c in backup.placement.get("chunks", [])), default=0)
        if model["lost"] == 0 and up_targets >= widest and after["degraded"]:
            problems.append(
                f"{name}: {after['degraded']} chunks still short of n packets after "
                f"repair with {up_targets} nodes up"
            )
    report.detail["backups"] = results
    report.summary = "; ".join(
        f"{n}: {r['repaired']} chunks repaired ({r['packets_rebuilt']} packets), {r['lost']} lost"
        for n, r in results.items()
    )
    if problems:
        raise StepFailed("; ".join(problems))


def _packets_on(sim: World, name: str, backup: str | None) -> list[str]:
    """Packets of ``backup`` (or of every backup) that node ``name`` holds, undamaged, on disk."""
    node_id = sim.nodes[name].node_id
    chosen = [sim.backups[backup]] if backup else list(sim.backups.values())
    ids = {
        p["packet_id"]
        for b in chosen
        for c in b.placement.get("chunks", [])
        for p in c["packets"]
        if p["target"] == node_id
    }
    return sorted(
        i for i in ids if (node_id, i) not in sim.damaged and sim.packet_path(name, i).is_file()
    )


def _damage(sim: World, step: Step, report: StepReport, what: str) -> None:
    """``corrupt`` or ``delete`` N of a node's packet files (chosen with the run's seed); the model
    counts them lost."""
    assert step.node is not None
    if step.backup is not None and step.backup not in sim.backups:
        raise StepFailed(f"backup {step.backup} made no snapshot")
    candidates = _packets_on(sim, step.node, step.backup)
    if len(candidates) < step.packets:
        raise StepFailed(
            f"{step.node} holds only {len(candidates)} undamaged packet(s) "
            f"of {step.backup or 'the scenario backups'}"
        )
    chosen = sorted(sim.rng.sample(candidates, step.packets))
    node_id = sim.nodes[step.node].node_id
    for packet_id in chosen:
        path = sim.packet_path(step.node, packet_id)
        if what == "corrupted":
            with path.open("r+b") as fh:
                size = path.stat().st_size
                offset = max(0, size // 2 - 8)
                fh.seek(offset)
                original = fh.read(16)
                fh.seek(offset)
                fh.write(bytes(b ^ 0xFF for b in original))
        else:
            path.unlink()
        sim.damaged[(node_id, packet_id)] = what
    report.detail.update({"node": step.node, "packets": chosen})
    report.summary = f"{what} {len(chosen)} packet file(s) on {step.node}"


def step_corrupt(sim: World, step: Step, report: StepReport) -> None:
    """``corrupt``: flip bytes in the middle of N packet files."""
    _damage(sim, step, report, "corrupted")


def step_delete(sim: World, step: Step, report: StepReport) -> None:
    """``delete``: remove N packet files."""
    _damage(sim, step, report, "deleted")
