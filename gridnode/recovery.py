"""Disaster recovery: the node's catalog, rebuilt from the grid with the node's key alone.

After each backup the node publishes a *recovery root*: the list of its complete
snapshots and, for each, where the sealed data assembly record lives on the grid (its
chunk records, i.e. the record's own packet sequence).  The root is sealed with the
record key and signed with a root key derived from the node's seed; its *locator* is
the hash of that key's verification key (``protocol.root_locator``), and it is stored on
the members that rank first for that locator.  A holder checks that the locator is its
key's and the signature, so nobody but this key can take or overwrite the locator, nor
roll it back to an older version.  A holder learns nothing inside the root, and no key
that names the node, but it does know which authenticated peer delivered it.

``gridnode recover`` derives the same locator and keys from the key file or recovery
phrase, asks every member it can reach for the root, keeps the newest validly signed
version, then fetches and unseals each snapshot's record and imports it into a fresh
catalog.  Restores then work as before the loss.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from .dedup_group import DedupGroup
from .delegation import MoveRecord, apply_moves, asked_for_moves, gather_moves
from .errors import GridError
from .job_services import Services
from .log import get_logger
from .record_store import load_blob, read_record
from .recovery_root import ROOT_TIMEOUT_S, fetch_root, group_of, log_head_of
from .repair import repair_holders
from .storage.records import ChunkRecord, SnapshotRecord

__all__ = [
    "RecoveryFailed",
    "check_group",
    "collect_moves",
    "delegates_of",
    "recover_catalog",
]

_log = get_logger(actor="request", job="recovery")


class RecoveryFailed(GridError):
    pass


async def recover_catalog(
    services: Services,
    authority_head: Callable[[], Awaitable[tuple[int, bytes] | None]] | None = None,
) -> dict[str, Any]:
    """Rebuild the catalog from the grid.  Snapshots already in the catalog are skipped.

    The backup log continues the chain of the lost catalog: from the head in the root,
    or from the authority's global log (``authority_head``) when that holds later
    entries (a restore or a repair logged after the root was last published)."""
    fetched = await fetch_root(services)
    if fetched is None:
        raise RecoveryFailed(
            "no member holds a recovery root for this key (wrong key, wrong grid, "
            "or this node never completed a backup)"
        )
    version, root = fetched
    check_group(root, services.identity.group)
    catalog = services.catalog
    imported: list[str] = []
    skipped: list[str] = []
    named = delegates_of(root)
    delegates: set[bytes] = set(named)
    moves = await collect_moves(services, delegates)  # adds members handed on to
    moved = [0]

    def moved_on(item: Any) -> Any:
        """A chunk with the moves its repairers made while this node was gone."""
        if not moves or not isinstance(item, ChunkRecord):
            return item
        chunk, taken = apply_moves(services.identity, item, moves, delegates)
        moved[0] += taken
        return chunk

    for item in root["snapshots"]:
        snap = item["snapshot"]
        if await services.db(catalog.snapshot, snap["snapshot_id"]) is not None:
            skipped.append(snap["snapshot_id"])
            continue
        refs = [
            moved_on(ChunkRecord.from_wire(r)) for r in msgpack.unpackb(item["record"], raw=False)
        ]
        path = services.config.home / "tmp" / f"recover-{snap['snapshot_id']}.msgpack"
        path.parent.mkdir(exist_ok=True)
        snapshot = SnapshotRecord.from_json(snap, item["record"])
        try:
            await load_blob(services, refs, path)
            await services.db(
                lambda s=snapshot, r=refs, p=path: catalog.import_snapshot(
                    s, map(moved_on, itertools.chain(read_record(p), r))
                )
            )
        finally:
            path.unlink(missing_ok=True)
        imported.append(snapshot.snapshot_id)
    await services.db(catalog.set_root_version, version)
    if delegates:
        # A member handed the capability on to is trusted as a delegate from now on.
        found = {n: named.get(n, time.time()) for n in delegates}
        await services.db(catalog.set_delegates, {**found, **await services.db(catalog.delegates)})
    if moved[0]:
        # The records on the grid still name the old holders: rewrite them now, so the
        # root published next points at the new ones.
        await services.db(catalog.mark_stale, imported)
        await repair_holders(services, [])
    heads = [log_head_of(root)]
    if authority_head is not None:
        heads.append(await authority_head())
    known = [h for h in heads if h is not None]
    continued = 0
    if known:
        seq, digest = max(known, key=lambda h: h[0])
        if await services.db(catalog.seed_log, seq, digest):
            continued = seq
    await services.db(
        lambda: catalog.log(
            "recover", None, root_version=version, imported=imported, log_continues=continued
        )
    )
    return {
        "root_version": version,
        "snapshots": imported,
        "already_present": skipped,
        "log_continues_after": continued,
        "moves_taken": moved[0],
    }


def check_group(root: dict[str, Any], group: DedupGroup | None) -> None:
    """Refuse a recovery whose dedup group is not the lost node's.

    The group's secret keys the node's data chunks, and the key file or phrase does not
    hold it: recovered without it (or with another group's), the catalog would come back
    and every restore then fail chunk by chunk.  The root, sealed with the node's own
    record key, says which group it was in."""
    if "dedup_group" not in root:
        return  # published before roots named the group: nothing to check against
    recorded = root["dedup_group"]
    mine = group_of(group)
    if recorded == mine:
        return
    if not isinstance(recorded, dict):
        raise RecoveryFailed(
            f"the lost node was in no dedup group, but this recovery names group "
            f"{mine['name'] if mine else '?'!r}: its data would not decrypt; recover again "
            "without --dedup-group"
        )
    name = str(recorded.get("name"))
    wanted = f"dedup group {name!r} (fingerprint {recorded.get('fingerprint')})"
    if mine is None:
        raise RecoveryFailed(
            f"the lost node was in {wanted}, whose secret keys its data: recover again with "
            f"--dedup-group {name} --convergence-secret-file FILE"
        )
    raise RecoveryFailed(
        f"the lost node was in {wanted}, but the group given is {mine['name']!r} "
        f"(fingerprint {mine['fingerprint']}): check the group's name and secret file"
    )


def delegates_of(root: dict[str, Any]) -> dict[bytes, float]:
    """The delegates a root names (roots published before delegated repair name none)."""
    raw = root.get("delegates")
    if not isinstance(raw, dict):
        return {}
    found: dict[bytes, float] = {}
    for key, expires in list(raw.items())[:1000]:
        try:
            node_id = bytes.fromhex(key)
        except (TypeError, ValueError):
            continue
        if len(node_id) == 32 and isinstance(expires, int | float):
            found[node_id] = float(expires)
    return found


async def collect_moves(services: Services, delegates: set[bytes]) -> dict[bytes, list[MoveRecord]]:
    """Move records of ``delegates`` (those still in the view), and of members the
    delegates handed the capability on to (their authority checked, then added to
    ``delegates``), by chunk handle."""
    alive = services.alive_ids()
    own = services.identity.node_id
    return await gather_moves(
        services.link_for,
        own,
        asked_for_moves(own, delegates, alive - {own}, len(delegates)),
        delegates,
        timeout_s=ROOT_TIMEOUT_S,
    )
