"""The tree browser's pure parts: one directory's entries, and the scratch directory."""

from __future__ import annotations

from pathlib import Path

from gridnode.dashboard.files import MAX_CHILDREN, RESTORE_DIR, children, clear_restore_dir

ENTRIES = [
    {"path": "home", "type": "dir", "size": 0, "mtime": "t"},
    {"path": "home/me", "type": "dir", "size": 0, "mtime": "t"},
    {"path": "home/me/b.txt", "type": "file", "size": 3, "mtime": "t"},
    {"path": "home/me/a.txt", "type": "file", "size": 5, "mtime": "t"},
    {"path": "home/me/sub", "type": "dir", "size": 0, "mtime": "t"},
    {"path": "home/me/sub/deep.txt", "type": "file", "size": 1, "mtime": "t"},
    {"path": "home/meadow", "type": "dir", "size": 0, "mtime": "t"},
    {"path": "home/meadow/x", "type": "file", "size": 1, "mtime": "t"},
]


def test_children_are_the_entries_directly_under_a_directory() -> None:
    top = children(ENTRIES, "")
    assert [e["path"] for e in top["entries"]] == ["home"]
    listed = children(ENTRIES, "/home/me/")
    # Directories first, then files by name; nothing deeper, nothing of a sibling prefix.
    assert [e["name"] for e in listed["entries"]] == ["sub", "a.txt", "b.txt"]
    assert listed["path"] == "home/me" and listed["total"] == 3
    assert children(ENTRIES, "home/me/sub")["entries"][0]["size"] == 1


def test_a_huge_directory_is_cut_and_counted() -> None:
    many = [{"path": f"d/f{i:05d}", "type": "file", "size": i} for i in range(MAX_CHILDREN + 5)]
    listed = children(many, "d")
    assert len(listed["entries"]) == MAX_CHILDREN and listed["total"] == MAX_CHILDREN + 5


def test_the_scratch_directory_is_emptied_private_and_never_a_link(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / RESTORE_DIR / "left-over").mkdir(parents=True)
    (home / RESTORE_DIR / "left-over" / "file").write_text("from a crash")
    folder = clear_restore_dir(home)
    assert list(folder.iterdir()) == [] and folder.stat().st_mode & 0o777 == 0o700
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("not ours")
    folder.rmdir()
    folder.symlink_to(elsewhere)
    folder = clear_restore_dir(home)
    assert not folder.is_symlink() and (elsewhere / "keep").exists()
