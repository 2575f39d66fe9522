"""What the dashboard's pages are shown: the control methods' answers, cut down.

The figures come from the very methods ``gridnode status --json`` and ``gridnode
snapshots --json`` call (``gridnode.control_methods``), never from a second reading of
the node.  The page is then given only the fields it draws, by allow-list, so a field
added to ``status`` later (another owner's capability, a key, a counter) never reaches a
browser unless it is named here: members as the gossip view publishes them (no network
address, no labels), this node's own storage and band, and its own snapshots.

Snapshot health (``snapshot_health``) is the one figure computed here: per snapshot,
its weakest chunk's packets on holders the view has present (alive or suspect, or this
node), against the k it needs, how many of its holders audits distrust, and whether its
placement rules still hold for where its holders are now (``gridnode.dashboard.held``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from protocol import format_node_id

from ..logic.distance import Band, parse_band
from ..logic.placement.rules import PlacementRules
from ..storage.catalog import Catalog
from .held import RulesCheck, pair_distances

__all__ = [
    "HEALTH_CHUNK_LIMIT",
    "LOG_ENTRIES_LISTED",
    "MEMBER_FIELDS",
    "SNAPSHOT_FIELDS",
    "account_view",
    "log_view",
    "map_view",
    "placement_view",
    "snapshot_health",
    "snapshots_view",
]

#: A member's fields the map is given: what every member's signed gossip record tells
#: everyone, plus this node's view of it (state, distance, round trip, trust).
MEMBER_FIELDS: Final = (
    "short_id",
    "state",
    "city",
    "lat",
    "lon",
    "distance_km",
    "free_bytes",
    "allocated_bytes",
    "trusted",
    "location_plausible",
)
#: A snapshot's fields the snapshots page is given (this node's own snapshots).
SNAPSHOT_FIELDS: Final = (
    "snapshot_id",
    "created",
    "finished",
    "state",
    "complete",
    "roots",
    "files",
    "bytes",
    "redundancy",
    "rules",
    "tags",
    "schedule",
)
#: Chunks read for the health of one page of snapshots; past this the health is left
#: out (``gridnode verify`` checks a large snapshot properly).
HEALTH_CHUNK_LIMIT: Final = 50_000


def _band(text: str) -> dict[str, float | None]:
    try:
        band = parse_band(text or ":")
    except ValueError:
        return {"min_km": None, "max_km": None}
    return {"min_km": band.min_km, "max_km": band.max_km}


def map_view(status: Mapping[str, Any], backup_proximity: str) -> dict[str, Any]:
    """The grid map's data from a ``status`` answer; this node is the member whose
    ``state`` is ``self``."""
    distrusted = {a["node_id"] for a in status.get("audits", []) if a.get("distrusted")}
    members = []
    for member in status.get("members", []):
        entry = {name: member.get(name) for name in MEMBER_FIELDS}
        entry["audit_distrusted"] = member.get("node_id") in distrusted
        members.append(entry)
    storage = status.get("storage", {})
    members.append(
        {
            "short_id": status["short_id"],
            "state": "self",
            "city": status.get("city"),
            "lat": status.get("lat"),
            "lon": status.get("lon"),
            "distance_km": 0.0,
            "free_bytes": storage.get("free_bytes"),
            "allocated_bytes": storage.get("allocated_bytes"),
            "trusted": True,
            "location_plausible": True,
            "audit_distrusted": False,
        }
    )
    members.sort(key=lambda m: (m["state"] != "self", str(m["city"] or ""), m["short_id"]))
    return {
        "node": {
            "short_id": status["short_id"],
            "city": status.get("city"),
            "lat": status.get("lat"),
            "lon": status.get("lon"),
            "grid_name": status.get("grid_name"),
            "jobs_running": status.get("jobs_running"),
            "storage": {
                name: storage.get(name)
                for name in ("allocated_bytes", "used_bytes", "free_bytes", "packets")
            },
            "backup_proximity": _band(backup_proximity),
        },
        "members": members,
        "membership_version": status.get("membership_version"),
    }


#: Chunks of a snapshot listed one by one on the placement page (all count in the map).
PLACEMENT_CHUNKS_LISTED: Final = 100


def _packet_band(rules: Any) -> Band:
    """The snapshot's packet-proximity band (any distance when it has none or the record
    cannot be read: the pair lines then say only how far apart the holders are)."""
    try:
        return PlacementRules.from_wire(rules).packet_proximity if rules else Band()
    except ValueError:
        return Band()


def placement_view(answer: Mapping[str, Any]) -> dict[str, Any]:
    """The placement page's data from a ``placement`` answer (the owner's own view of
    where its packets went): the snapshot's rules, this node's place, each holder with
    its packet count, and the pairwise spread of the first chunks: each pair of a chunk's
    holders with its distance and whether it meets the packet-proximity band (``ok``;
    None when a holder's place is unknown).  Packet ids and full node ids stay out: the
    page draws places and distances, nothing a holder is asked by."""
    targets: dict[str, dict[str, Any]] = {}
    chunks: list[dict[str, Any]] = []
    packet_band = _packet_band(answer.get("rules"))
    for chunk in answer.get("chunks", []):
        shorts = []
        spots: list[tuple[str, float | None, float | None]] = []
        for packet in chunk.get("packets", []):
            short = packet.get("target_short")
            shorts.append(short)
            spots.append((str(short), packet.get("lat"), packet.get("lon")))
            entry = targets.setdefault(
                short,
                {
                    "short_id": short,
                    "city": packet.get("city"),
                    "lat": packet.get("lat"),
                    "lon": packet.get("lon"),
                    "distance_km": packet.get("distance_km"),
                    "packets": 0,
                },
            )
            entry["packets"] += 1
        if len(chunks) < PLACEMENT_CHUNKS_LISTED:
            chunks.append(
                {
                    "kind": chunk.get("kind"),
                    "k": chunk.get("k"),
                    "n": chunk.get("n"),
                    "targets": shorts,
                    "pairwise_min_km": chunk.get("pairwise_min_km"),
                    "pairwise_max_km": chunk.get("pairwise_max_km"),
                    "pairs": [
                        {
                            "a": a,
                            "b": b,
                            "km": None if km is None else round(km, 1),
                            "ok": None if km is None else packet_band.contains(km),
                        }
                        for a, b, km in pair_distances(spots)
                    ],
                }
            )
    source = answer.get("source", {})
    return {
        "snapshot_id": answer.get("snapshot_id"),
        "rules": answer.get("rules"),
        "source": {name: source.get(name) for name in ("lat", "lon", "city")},
        "targets": sorted(
            targets.values(), key=lambda t: (t["distance_km"] is None, t["distance_km"] or 0)
        ),
        "chunks": chunks,
        "chunks_total": len(answer.get("chunks", [])),
    }


#: Backup log entries a page is given, newest first.
LOG_ENTRIES_LISTED: Final = 500
#: The account's parts the account page is given (this node's own account).
ACCOUNT_FIELDS: Final = (
    "subscription",
    "usage",
    "statement",
    "invoices",
    "flags",
    "pending_reports",
    "stale",
    "authority_error",
)


def log_view(
    answer: Mapping[str, Any], newest: Iterable[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The backup log page's data from a ``log`` answer: the chain's verification and
    the newest entries.  A streamed answer counts the entries it sent, and ``newest``
    holds the last of them (oldest first); else the answer lists them all."""
    counted = answer.get("entries", [])
    entries = list(newest) if newest is not None else list(counted)
    return {
        "verified": answer.get("verified"),
        "detail": answer.get("detail"),
        "total": counted if isinstance(counted, int) else len(entries),
        "entries": [
            {name: e.get(name) for name in ("seq", "at", "event", "snapshot_id", "detail")}
            for e in entries[::-1][:LOG_ENTRIES_LISTED]
        ],
    }


def account_view(answer: Mapping[str, Any]) -> dict[str, Any]:
    """The account page's data from an ``account`` answer."""
    return {name: answer.get(name) for name in ACCOUNT_FIELDS}


def present_holders(status: Mapping[str, Any]) -> tuple[frozenset[str], frozenset[str]]:
    """(holders the view has present, holders audits distrust), as printable node ids."""
    present = {status["node_id"]} | {
        m["node_id"] for m in status.get("members", []) if m.get("state") in ("alive", "suspect")
    }
    distrusted = {a["node_id"] for a in status.get("audits", []) if a.get("distrusted")}
    return frozenset(present), frozenset(distrusted)


def snapshot_health(
    catalog: Catalog,
    snapshot_ids: Iterable[str],
    present: frozenset[str],
    distrusted: frozenset[str],
    limit: int = HEALTH_CHUNK_LIMIT,
    check: RulesCheck | None = None,
) -> dict[str, dict[str, Any] | None]:
    """Per snapshot: its weakest chunk (fewest packets on present holders), that chunk's
    k and n, how many distinct holders of the snapshot audits distrust, and, given
    ``check`` (the view's places), whether its rules hold: ``rules_held`` True (every
    chunk held), False (``rules_broken_chunks`` break a rule) or None (none broken,
    ``rules_unknown_chunks`` have a holder the view cannot place).  None for a
    snapshot left out because the chunks read reached ``limit``.  Runs in a worker
    thread: the catalog's iterator holds that thread's cursor."""
    out: dict[str, dict[str, Any] | None] = {}
    budget = limit
    for snapshot_id in snapshot_ids:
        if budget <= 0:
            out[snapshot_id] = None
            continue
        weakest: tuple[int, int, int] | None = None  # (present, k, n)
        holders_distrusted: set[str] = set()
        chunks = 0
        broken = unknown = 0
        complete = True
        for chunk in catalog.iter_chunks_of(snapshot_id):
            if chunks >= budget:
                complete = False
                break
            chunks += 1
            targets = [format_node_id(p.target) for p in chunk.packets]
            here = sum(1 for t in targets if t in present)
            holders_distrusted.update(t for t in targets if t in distrusted)
            if check is not None:
                verdict = check.chunk(chunk.rules, targets)
                broken += verdict == "broken"
                unknown += verdict == "unknown"
            if weakest is None or here - chunk.k < weakest[0] - weakest[1]:
                weakest = (here, chunk.k, chunk.n)
        budget -= chunks
        if not complete:
            out[snapshot_id] = None
            continue
        if weakest is None:
            out[snapshot_id] = {"chunks": 0, "weakest_present": None, "k": None, "n": None,
                                "holders_distrusted": 0, "level": "empty", "rules_held": None,
                                "rules_broken_chunks": 0, "rules_unknown_chunks": 0}  # fmt: skip
            continue
        here, k, n = weakest
        level = "healthy" if here >= n else "degraded" if here >= k else "at_risk"
        out[snapshot_id] = {
            "chunks": chunks,
            "weakest_present": here,
            "k": k,
            "n": n,
            "holders_distrusted": len(holders_distrusted),
            "level": level,
            "rules_held": None if check is None else False if broken else None if unknown else True,
            "rules_broken_chunks": broken,
            "rules_unknown_chunks": unknown,
        }
    return out


def snapshots_view(
    rows: Iterable[Mapping[str, Any]], health: Mapping[str, dict[str, Any] | None]
) -> list[dict[str, Any]]:
    """The snapshots page's rows from a ``snapshots`` answer, newest first."""
    out = []
    for row in rows:
        entry = {name: row.get(name) for name in SNAPSHOT_FIELDS}
        entry["health"] = health.get(str(row.get("snapshot_id")))
        out.append(entry)
    out.sort(key=lambda r: r.get("created") or 0, reverse=True)
    return out
