"""``gridnode ls`` and ``diff`` of snapshots whose answers are larger than one control
message.

The whole listing used to travel as one answer, and an answer past the control
protocol's 4 MiB (a tree of about 15,000 files) could not be sent: ``ls`` of a real
home failed.  Now the rows stream in pages of events; a client from before, which asks
for one answer, hears why it cannot have it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gridnode.control_client import call
from gridnode.control_files import ControlError
from gridnode.identity import load_identity
from gridnode.listing import FIND_LIMIT
from gridnode.storage.catalog import Catalog
from protocol._messages import MAX_CONTROL_TEXT
from simulations.harness import LocalGrid

pytestmark = pytest.mark.slow

DIRS = 20
FILES_PER_DIR = 1000
#: Long names make every row bigger, so fewer files pass the limit.
#: Backup log entries of about 2 KB added: more than 4 MiB together.
LOG_ENTRIES = 2200
STEM = "a-file-name-long-enough-to-make-the-listing-large-" * 2


def test_ls_streams_a_listing_larger_than_a_control_message(make_grid: Any, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for d in range(DIRS):
        folder = tree / f"d{d:02d}"
        folder.mkdir(parents=True)
        for f in range(FILES_PER_DIR):
            (folder / f"{STEM}{f:04d}").touch()
    grid: LocalGrid = make_grid(4)
    snap = grid.cli("n0", "backup", str(tree), "--redundancy", "2/3", timeout=600)["snapshot_id"]
    home = grid.node("n0").home

    rows = grid.cli("n0", "ls", snap, timeout=300)
    assert len(rows) == 1 + DIRS + DIRS * FILES_PER_DIR
    assert len(json.dumps(rows)) > MAX_CONTROL_TEXT  # past what one answer may hold
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert rows[0] == {**rows[0], "path": "tree", "type": "dir"}
    kinds = [r["type"] for r in rows]
    assert kinds.count("dir") == 1 + DIRS and kinds.count("file") == DIRS * FILES_PER_DIR

    text = grid.gridnode("ls", snap, "tree/d07", "--home", str(home), json_out=False)
    lines = text.splitlines()
    assert lines[0] == "tree/d07" and len(lines) == 1 + FILES_PER_DIR
    assert lines[-1] == f"tree/d07/{STEM}{FILES_PER_DIR - 1:04d}"

    # Asked for as one answer, the rows come in answer parts, joined by the client; a
    # client from before parts is refused, by name, and the node goes on answering.
    assert call(home, "ls", {"snapshot": snap}, timeout_s=120) == rows
    with pytest.raises(ControlError) as refused:
        call(home, "ls", {"snapshot": snap}, timeout_s=120, join_parts=False)
    assert refused.value.code == "too_large"
    assert len(call(home, "ls", {"snapshot": snap, "path": "tree/d03"}, timeout_s=60)) == 1001

    # Every file's mtime changes: the diff's lists are larger than one message too.
    for path in tree.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    again = grid.cli("n0", "backup", str(tree), "--redundancy", "2/3", timeout=600)
    diff = grid.cli("n0", "diff", snap, again["snapshot_id"], timeout=300)
    assert len(json.dumps(diff)) > MAX_CONTROL_TEXT
    assert diff["added"] == diff["removed"] == []
    assert len(diff["changes"]) == DIRS * FILES_PER_DIR
    assert diff["changed"] == [c["path"] for c in diff["changes"]]
    assert {tuple(c["fields"]) for c in diff["changes"]} == {("mtime_ns",)}
    assert list(diff) == ["event", "from", "to", "added", "removed", "changed", "changes"]

    # find keeps to 10,000 matches and to what one answer can carry, counting the rest.
    found = grid.cli("n0", "find", "*", timeout=300)
    assert found["total"] == 2 * len(rows) and found["truncated"] is True
    assert 0 < len(found["matches"]) < FIND_LIMIT  # these rows are long: bytes bound it
    assert len(json.dumps(found)) < MAX_CONTROL_TEXT

    # The backup log of a long-lived node: more than one control message of entries.
    grid.stop("n0")
    key = load_identity(home / "node.key").signing_key
    catalog = Catalog(home / "catalog.sqlite", signing_key=key)
    for index in range(LOG_ENTRIES):
        catalog.log("note", None, index=index, padding="x" * 2000)
    catalog.close()
    grid.start("n0")
    grid.wait_ready("n0")
    log = grid.cli("n0", "log", timeout=300)
    assert log["verified"] is True and len(json.dumps(log)) > MAX_CONTROL_TEXT
    notes = [e for e in log["entries"] if e["event"] == "note"]
    assert [e["detail"]["index"] for e in notes] == list(range(LOG_ENTRIES))
    assert [e["seq"] for e in log["entries"]] == list(range(1, len(log["entries"]) + 1))
    assert call(home, "log", {}, timeout_s=120) == log
    with pytest.raises(ControlError) as refused:
        call(home, "log", {}, timeout_s=120, join_parts=False)
    assert refused.value.code == "too_large"

    missing = grid.gridnode(
        "ls", snap, "tree/nothing-here", "--home", str(home), json_out=False, check=False
    )
    assert missing == ""  # the error goes to stderr, nothing half-listed to stdout
