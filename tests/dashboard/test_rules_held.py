""" "Rules held" on the snapshots page and the pair lines of the placement page, on a
real grid (in one trio run): a snapshot made with a backup-proximity band and a
packet-proximity rule, its rules held where its holders are, and broken (or unknown)
once the view has a holder somewhere else (or nowhere).

The view is moved by handing the dashboard's data source a ``status`` answer in which
one holder's recorded position is changed: the status answer is the whole of what the
check is told about places (``gridnode.dashboard.held.places_from_status``), so this
runs the same code a changed gossip record would, against the real catalog's chunks.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gridnode.dashboard.app import DataSource, Method
from gridnode.dashboard.held import Place, RulesCheck
from gridnode.logic.distance import Band, haversine_km
from gridnode.logic.placement.rules import PlacementRules
from gridnode.node import Node
from protocol import format_node_id

from ..gridnode.inproc import open_grid
from .test_http import get, session_opener

#: Paris is the source; London (344 km), Berlin (878 km) and Madrid (1054 km) are all
#: in the band, and every two of them are at least 930 km apart.
LOCATIONS = ["Paris", "London", "Berlin", "Madrid"]
BACKUP_BAND = "200km:1200km"
PACKET_BAND = "800km:"


async def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("these pages submit no job")


def node_source(
    node: Node, restore_dir: Path, methods: Mapping[str, Method] | None = None
) -> DataSource:
    """The data source the dashboard's server runs on ``node`` (``methods``: others)."""
    return DataSource(
        methods=node.request.methods if methods is None else methods,
        catalog=node.catalog,
        run_db=node.services.db,
        backup_proximity=node.config.backup_proximity,
        submit=_refuse,
        restore_dir=restore_dir,
        jobs=node.jobs,
    )


def _move(status: dict[str, Any], node_id: str, lat: float | None, lon: float | None) -> None:
    for member in status["members"]:
        if member["node_id"] == node_id:
            member["lat"], member["lon"] = lat, lon
            return
    raise AssertionError(f"{node_id} is not in the view")


async def test_rules_held_and_the_pair_lines(tmp_path: Path) -> None:
    async with open_grid(
        tmp_path / "grid",
        len(LOCATIONS),
        locations=LOCATIONS,
        settings={"dashboard_listen": "127.0.0.1:0"},
    ) as grid:
        node = grid.nodes[0]
        tree = tmp_path / "tree"
        tree.mkdir()
        for i in range(4):
            (tree / f"f{i}.bin").write_bytes(bytes([i]) * (300_000 + i))
        snap = await grid.call(
            0,
            "backup",
            paths=[str(tree)],
            redundancy="1/2",
            backup_proximity=BACKUP_BAND,
            packet_proximity=PACKET_BAND,
        )
        snapshot_id = snap["snapshot_id"]

        link = await grid.call(0, "dashboard")
        browser = session_opener()
        assert (await get(link["url"], browser))[0] == 200
        status_code, body = await get(link["base_url"] + "/api/snapshots", browser)
        assert status_code == 200
        (row,) = [r for r in json.loads(body) if r["snapshot_id"] == snapshot_id]
        health = row["health"]
        assert health["level"] == "healthy"
        assert health["rules_held"] is True
        assert health["rules_broken_chunks"] == 0 and health["rules_unknown_chunks"] == 0

        # The placement page: every pair of a chunk's holders, its distance (haversine of
        # the holders' places) and whether it meets the packet rule; no packet ids.
        status_code, body = await get(
            f"{link['base_url']}/api/placement?snapshot={snapshot_id}", browser
        )
        assert status_code == 200
        placement = json.loads(body)
        where = {t["short_id"]: (t["lat"], t["lon"]) for t in placement["targets"]}
        pairs = [p for c in placement["chunks"] for p in c["pairs"]]
        assert pairs and all(len(c["pairs"]) == 1 for c in placement["chunks"])  # 2 holders
        for pair in pairs:
            assert set(pair) == {"a", "b", "km", "ok"}
            km = haversine_km(*where[pair["a"]], *where[pair["b"]])
            assert pair["km"] == pytest.approx(km, abs=0.06) and km >= 800
            assert pair["ok"] is True
        raw = await grid.call(0, "placement", snapshot=snapshot_id)
        for chunk in raw["chunks"]:
            for packet in chunk["packets"]:
                assert packet["packet_id"] not in body.decode()
                assert packet["target"] not in body.decode()

        # The data source the server runs, on the same node, told of moved holders.
        source = node_source(node, tmp_path / "restore")
        chunks = await node.services.db(node.catalog.chunks_of, snapshot_id)
        holders = [[format_node_id(p.target) for p in c.packets] for c in chunks]
        x, y = holders[0]
        status = await grid.call(0, "status", peers=False)

        def health_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
            (found,) = [r["health"] for r in rows if r["snapshot_id"] == snapshot_id]
            return dict(found)

        assert health_of(await source.snapshots(status))["rules_held"] is True

        # x recorded at y's place: every chunk held by both breaks the packet rule; x
        # stays in the band and as far from every other holder as y is, so no other.
        moved = copy.deepcopy(status)
        y_place = next((m["lat"], m["lon"]) for m in status["members"] if m["node_id"] == y)
        _move(moved, x, *y_place)
        both = sum(1 for h in holders if x in h and y in h)
        assert both >= 1
        health = health_of(await source.snapshots(moved))
        assert (health["rules_held"], health["rules_broken_chunks"]) == (False, both)

        # x recorded at the source's own place: out of the backup band, in every chunk.
        at_home = copy.deepcopy(status)
        _move(at_home, x, status["lat"], status["lon"])
        with_x = sum(1 for h in holders if x in h)
        health = health_of(await source.snapshots(at_home))
        assert (health["rules_held"], health["rules_broken_chunks"]) == (False, with_x)

        # x not in the view at all: its chunks are unknown, not broken.
        gone = copy.deepcopy(status)
        gone["members"] = [m for m in gone["members"] if m["node_id"] != x]
        health = health_of(await source.snapshots(gone))
        assert health["rules_held"] is None
        assert (health["rules_broken_chunks"], health["rules_unknown_chunks"]) == (0, with_x)

        # The view as it is again: held (the health is not kept across a changed view).
        assert health_of(await source.snapshots(status))["rules_held"] is True


def test_distinct_labels_and_unknown_places() -> None:
    """The check on its own: labels the rules name, a holder the view cannot place, a
    rules record that cannot be read."""
    paris, berlin, madrid = (48.8566, 2.3522), (52.52, 13.405), (40.4168, -3.7038)
    places = {
        "a": Place(*berlin, (("site", "one"),)),
        "b": Place(*madrid, (("site", "two"),)),
        "c": Place(*madrid, (("site", "one"),)),
        "d": Place(None, None, (("site", "three"),)),
        "e": Place(*berlin),
    }
    check = RulesCheck(Place(*paris), places)
    distinct = PlacementRules(distinct=("site",)).to_wire()
    assert check.chunk(distinct, ["a", "b"]) == "held"
    assert check.chunk(distinct, ["a", "c"]) == "broken"  # both at site one
    assert check.chunk(distinct, ["a", "e"]) == "unknown"  # e says no site
    packet = PlacementRules(packet_proximity=Band(min_km=500.0)).to_wire()
    assert check.chunk(packet, ["a", "b"]) == "held"
    assert check.chunk(packet, ["b", "c"]) == "broken"  # the same place
    assert check.chunk(packet, ["a", "d"]) == "unknown"  # d has no location
    assert check.chunk(packet, ["a", "d", "b", "c"]) == "broken"  # broken beats unknown
    assert check.chunk(packet, ["a", "zz"]) == "unknown"  # not in the view
    band = PlacementRules(backup_proximity=Band(max_km=1000.0)).to_wire()
    assert check.chunk(band, ["a"]) == "held"  # Berlin, 878 km
    assert check.chunk(band, ["a", "b"]) == "broken"  # Madrid, 1054 km
    assert RulesCheck(Place(None, None), places).chunk(band, ["a"]) == "unknown"
    assert check.chunk({}, ["a", "c"]) == "held"  # no rules: nothing to break
    assert check.chunk({"backup_proximity": 3}, ["a"]) == "unknown"  # unreadable record
