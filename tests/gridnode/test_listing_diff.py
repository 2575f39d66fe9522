"""``gridnode diff``: two snapshots compared side by side in path order (a merge).

The merge must give exactly what comparing two dictionaries of every entry gave (the
old way, which held both snapshots in memory), for names in any byte order; and the
command, on a real catalog, names what was added, removed and changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gridnode.listing import _COMPARED, diff_entries, find_in_snapshots
from gridnode.names import escape
from gridnode.storage.records import EntryRecord

from .inproc import open_grid

#: Names whose byte order differs from their order as text, and prefixes of each other.
_NAMES = st.sampled_from([b"a", b"a/b", b"a-b", b"a/b/c", b"a\xff", b"\xfe", b"b", b"A", b"a b"])


def _entries(paths: set[bytes], sizes: dict[bytes, int]) -> list[EntryRecord]:
    return [
        EntryRecord(path=p, kind="file", mode=0o644, mtime_ns=1, size=sizes[p])
        for p in sorted(paths)
    ]


def _by_dictionaries(old: list[EntryRecord], new: list[EntryRecord]) -> dict[str, Any]:
    """The old implementation: both snapshots as dictionaries."""
    a = {e.path: e for e in old}
    b = {e.path: e for e in new}
    changes = []
    for path in sorted(a.keys() & b.keys()):
        fields = [f for f in _COMPARED if getattr(a[path], f) != getattr(b[path], f)]
        if fields:
            changes.append({"path": escape(path), "fields": fields})
    return {
        "added": [escape(p) for p in sorted(b.keys() - a.keys())],
        "removed": [escape(p) for p in sorted(a.keys() - b.keys())],
        "changed": [c["path"] for c in changes],
        "changes": changes,
    }


@settings(max_examples=200, deadline=None)
@given(
    old=st.sets(_NAMES),
    new=st.sets(_NAMES),
    sizes=st.dictionaries(_NAMES, st.integers(0, 2)),
    new_sizes=st.dictionaries(_NAMES, st.integers(0, 2)),
)
def test_the_merge_gives_what_two_dictionaries_gave(
    old: set[bytes], new: set[bytes], sizes: dict[bytes, int], new_sizes: dict[bytes, int]
) -> None:
    before = _entries(old, {p: sizes.get(p, 0) for p in old})
    after = _entries(new, {p: new_sizes.get(p, 0) for p in new})
    assert diff_entries(iter(before), iter(after)) == _by_dictionaries(before, after)


async def test_diff_of_two_real_snapshots(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "docs").mkdir(parents=True)
    (tree / "docs" / "kept.txt").write_text("same")
    (tree / "docs" / "edited.txt").write_text("first")
    (tree / "gone.txt").write_text("bye")
    async with open_grid(tmp_path / "grid", 4) as grid:
        first = await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        (tree / "docs" / "edited.txt").write_text("second, longer")
        (tree / "gone.txt").unlink()
        (tree / "docs" / "new-\xe9.txt").write_text("hello")
        second = await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        diff = await grid.call(
            0, "diff", **{"from": first["snapshot_id"], "to": second["snapshot_id"]}
        )
    assert diff["added"] == ["tree/docs/new-\xe9.txt"]
    assert diff["removed"] == ["tree/gone.txt"]
    assert "tree/docs/edited.txt" in diff["changed"]
    assert "tree/docs/kept.txt" not in diff["changed"]
    edited = next(c for c in diff["changes"] if c["path"] == "tree/docs/edited.txt")
    assert "size" in edited["fields"] and "extents" in edited["fields"]


async def test_find_keeps_only_what_it_lists_but_counts_every_match(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for number in range(5):
        (tree / f"file-{number}.txt").write_text(str(number))
    async with open_grid(tmp_path / "grid", 4) as grid:
        await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        (tree / "file-0.txt").write_text("changed")
        await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        services = grid.nodes[0].services
        few = await find_in_snapshots(services, "*.txt", [], limit=3)
        spanning = await find_in_snapshots(services, "*.txt", [], limit=7)
    assert few["total"] == 10 and len(few["matches"]) == 3 and few["truncated"]
    assert spanning["total"] == 10 and len(spanning["matches"]) == 7
    newest, older = spanning["snapshots"]
    assert [m["snapshot_id"] for m in spanning["matches"]] == [newest] * 5 + [older] * 2
