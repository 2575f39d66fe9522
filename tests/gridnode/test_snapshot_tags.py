"""Snapshot tags (issue 12's ``backup --tag``): checked, stored with the snapshot, listed,
carried through the recovery root's JSON, and a filter for ``forget --keep-... --tag``."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gridnode.cli import main
from gridnode.logic.tags import (
    TagError,
    check_tag,
    check_tags,
    matches_filter,
    parse_filter,
    schedule_of,
    schedule_tag,
)
from gridnode.storage.catalog import MIGRATIONS, Catalog
from gridnode.storage.migrations import apply_migrations
from gridnode.storage.records import SnapshotRecord

from .inproc import open_grid


def test_a_tag_is_1_to_64_printable_characters_without_whitespace_or_commas() -> None:
    for good in ("a", "x" * 64, "weekly", "host:db-1", "ünïcode", "schedule:" + "n" * 64):
        assert check_tag(good) == good
    for bad in ("", "x" * 65, "two words", "a,b", "tab\there", "nl\n", "bell\x07", "nb\u00a0sp"):
        with pytest.raises(TagError):
            check_tag(bad)
    assert check_tags(["b", "a", "b"]) == ("b", "a")  # duplicates dropped, order kept
    assert schedule_tag("docs") == "schedule:docs"
    assert schedule_of(("x", "schedule:docs")) == "docs"
    assert schedule_of(("x", "schedule:")) is None


def test_the_forget_filter_follows_restic() -> None:
    # Each --tag is a group the snapshot must carry all of; any group will do.
    groups = parse_filter(["a,b", "c"])
    assert matches_filter(("a", "b", "z"), groups)
    assert matches_filter(("c",), groups)
    assert not matches_filter(("a",), groups)
    assert not matches_filter((), groups)
    assert matches_filter((), ())  # no filter: every snapshot
    with pytest.raises(TagError):
        parse_filter(["a,,b"])


def _record(**changes: object) -> SnapshotRecord:
    values: dict[str, object] = {
        "snapshot_id": "ab" * 8,
        "created": 1.0,
        "finished": 2.0,
        "state": "complete",
        "parent": None,
        "roots": ("/data",),
        "files": 3,
        "total_bytes": 4,
        "params": "2/3",
        "rules": {"distinct": []},
        "record": b"refs",
    }
    return SnapshotRecord(**{**values, **changes})  # type: ignore[arg-type]


def test_tags_survive_the_recovery_roots_json() -> None:
    snap = _record(tags=("weekly", "schedule:docs"))
    wire = json.loads(json.dumps(snap.to_json()))  # the root is stored as JSON-like data
    assert wire["tags"] == ["weekly", "schedule:docs"]
    assert SnapshotRecord.from_json(wire, b"refs") == snap
    # A root published before tags existed has no "tags" key.
    old = {k: v for k, v in wire.items() if k != "tags"}
    assert SnapshotRecord.from_json(old, b"refs") == _record()


def test_the_migration_keeps_the_snapshots_of_the_previous_schema(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    apply_migrations(db, MIGRATIONS[:3], what="catalog", path=path)
    db.execute(
        "INSERT INTO snapshots(snapshot_id, created, finished, state, parent, roots, files,"
        " bytes, params, rules, record) VALUES ('old', 1, 2, 'complete', NULL, '[\"/d\"]', 5,"
        " 6, '2/3', '{}', x'00')"
    )
    db.close()
    catalog = Catalog(path, signing_key=SigningKey.generate())
    try:
        assert catalog.schema_version == len(MIGRATIONS) >= 4
        [old] = catalog.snapshots()
        assert (old.snapshot_id, old.roots, old.files, old.total_bytes, old.tags) == (
            "old",
            ("/d",),
            5,
            6,
            (),
        )
        catalog.begin_snapshot("new", roots=["/d"], parent="old", params="2/3", rules={})
        catalog.begin_snapshot(
            "tagged", roots=["/d"], parent=None, params="2/3", rules={}, tags=["t"]
        )
        assert [s.tags for s in catalog.snapshots()] == [(), (), ("t",)]
    finally:
        catalog.close()


def test_the_cli_refuses_a_bad_tag_before_asking_the_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["backup", "--home", str(tmp_path), str(tmp_path), "--tag", "two words"],
        ["forget", "--home", str(tmp_path), "--keep-last", "1", "--tag", "a,,b"],
        ["forget", "--home", str(tmp_path), "latest", "--tag", "a"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code != 0
        assert "tag" in capsys.readouterr().err


async def test_tags_are_stored_listed_and_limit_forget(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    async with open_grid(tmp_path / "grid", 7) as grid:
        ids: dict[str, list[str]] = {"daily": [], "untagged": [], "both": []}
        for i in range(3):
            (tree / f"v{i}.bin").write_bytes(os.urandom(50_000))
            for kind, tags in (("daily", ["daily"]), ("untagged", []), ("both", ["daily", "x"])):
                result = await grid.call(0, "backup", paths=[str(tree)], tags=tags)
                ids[kind].append(result["snapshot_id"])
        rows = {s["snapshot_id"]: s for s in await grid.call(0, "snapshots")}
        assert rows[ids["daily"][0]]["tags"] == ["daily"]
        assert rows[ids["both"][0]]["tags"] == ["daily", "x"]
        assert rows[ids["untagged"][0]]["tags"] == []
        assert rows[ids["daily"][0]]["schedule"] is None
        with pytest.raises(Exception, match="printable characters only"):
            await grid.call(0, "backup", paths=[str(tree)], tags=["a b"])
        with pytest.raises(Exception, match="must be a list of strings"):
            await grid.call(0, "backup", paths=[str(tree)], tags="daily")

        # Only the snapshots with both tags: keep the newest of them.
        both = await grid.call(0, "forget", policy={"keep_last": 1}, tags=["daily,x"], dry_run=True)
        assert both["tags"] == ["daily,x"]
        assert sorted(both["forget"]) == sorted(ids["both"][:2])
        # Either group: the six tagged ones; the untagged are neither kept nor forgotten.
        done = await grid.call(0, "forget", policy={"keep_last": 1}, tags=["daily", "x"])
        tagged = ids["daily"] + ids["both"]
        assert {k["snapshot_id"] for k in done["keep"]} == {ids["both"][-1]}
        assert sorted(done["forget"]) == sorted(set(tagged) - {ids["both"][-1]})
        left = {s["snapshot_id"] for s in await grid.call(0, "snapshots")}
        assert left == {*ids["untagged"], ids["both"][-1]}
        with pytest.raises(Exception, match="'tags' filters a policy"):
            await grid.call(0, "forget", snapshot="latest", tags=["daily"])
