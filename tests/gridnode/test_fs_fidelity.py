"""The pieces behind a faithful restore, one at a time: names as bytes and their escaped
form, the scanner's view of every kind of entry, sparse reading and writing, owners by
name or number, and the path checks that keep a restore inside its destination."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridnode.logic.chunking import iter_file_pieces, open_regular
from gridnode.names import escape, from_arg, unescape
from gridnode.scanner import ScanError, iter_tree, read_xattrs, safe_join
from gridnode.storage.records import EntryRecord
from gridnode.tree_writer import SPARSE_BLOCK, TreeWriter

MiB = 1 << 20


# --- names -----------------------------------------------------------------------------------


@given(st.binary(max_size=64))
def test_escaped_names_round_trip(name: bytes) -> None:
    text = escape(name)
    assert unescape(text) == name
    text.encode("utf-8")  # always printable as UTF-8: no surrogates left
    assert from_arg(text, {name}) == name


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"plain/caf\xc3\xa9.txt", "plain/café.txt"),
        (b"bad-\xff-name", "bad-\\xff-name"),
        (b"back\\slash", "back\\\\slash"),
        (b"looks-escaped-\\x41", "looks-escaped-\\\\x41"),
        (b"new\nline", "new\nline"),
    ],
)
def test_escape_is_readable_and_unambiguous(raw: bytes, shown: str) -> None:
    assert escape(raw) == shown
    assert unescape(shown) == raw


def test_a_typed_name_is_taken_literally_when_it_names_an_entry() -> None:
    # A real name containing "\x41" typed as it is must not be unescaped to "A".
    known = {b"dir/\\x41", b"dir/A"}
    assert from_arg("dir/\\x41", known) == b"dir/\\x41"
    assert from_arg("dir/\\\\x41", known) == b"dir/\\x41"
    # The raw byte as a shell passes it (surrogate-escaped by Python) is found too.
    assert from_arg(os.fsdecode(b"bad-\xff"), {b"bad-\xff"}) == b"bad-\xff"


# --- the scanner --------------------------------------------------------------------------------


def test_scanner_walks_bytes_names_and_records_every_kind(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path / "t")
    os.mkdir(root)
    os.mkdir(root + b"/bad-\xff")
    with open(root + b"/bad-\xff/f", "wb") as fh:
        fh.write(b"x")
    os.mkfifo(root + b"/fifo")
    os.symlink(b"target-\xfe", root + b"/link")
    os.link(root + b"/bad-\xff/f", root + b"/second")
    notes: list[str] = []
    entries = {e.path: e for e in iter_tree([os.fsdecode(root)], notes=notes)}
    assert notes == []
    assert entries[b"t/bad-\xff"].kind == "dir"
    assert entries[b"t/bad-\xff/f"].nlink == 2
    assert entries[b"t/second"].inode == entries[b"t/bad-\xff/f"].inode
    assert entries[b"t/fifo"].kind == "fifo"
    assert entries[b"t/link"].link_target == b"target-\xfe"
    assert entries[b"t/link"].uid == os.geteuid()


def test_exclude_patterns_match_bytes_names(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path / "t")
    os.makedirs(root + b"/keep")
    os.makedirs(root + b"/skip-\xff")
    got = [e.path for e in iter_tree([os.fsdecode(root)], excludes=[os.fsdecode(b"skip-*")])]
    assert got == [b"t", b"t/keep"]


def test_xattrs_are_read_sorted_with_binary_values(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    os.setxattr(path, "user.b", b"\x00\xff")
    os.setxattr(path, "user.a", b"first")
    attrs, problem = read_xattrs(os.fsencode(path))
    assert problem is None
    assert attrs == ((b"user.a", b"first"), (b"user.b", b"\x00\xff"))


def test_open_regular_refuses_a_fifo_or_a_symlink_swapped_in(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # opening it for reading would block forever
    with pytest.raises(OSError, match="no longer a regular file"):
        open_regular(tmp_path / "fifo")
    (tmp_path / "real").write_bytes(b"secret")
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(OSError):
        open_regular(tmp_path / "link")


# --- sparse files ----------------------------------------------------------------------------


def test_holes_and_zero_chunks_are_not_read_as_data(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    data = os.urandom(MiB)
    with open(path, "wb") as fh:
        fh.truncate(256 * MiB)
        fh.seek(100 * MiB)
        fh.write(data)
    pieces = list(iter_file_pieces(path))
    assert b"".join(p for p in pieces if isinstance(p, bytes)) == data
    assert sum(p if isinstance(p, int) else len(p) for p in pieces) == 256 * MiB
    # Written zeros are holes too (a chunk of zeros is stored nowhere).
    (tmp_path / "zeros").write_bytes(bytes(8 * MiB))
    assert list(iter_file_pieces(tmp_path / "zeros")) == [8 * MiB]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.integers(min_value=1, max_value=3 * SPARSE_BLOCK),  # a hole
            st.binary(min_size=1, max_size=2 * SPARSE_BLOCK),  # data
            st.integers(min_value=1, max_value=4).map(lambda n: bytes(n * SPARSE_BLOCK + 7)),
        ),
        max_size=8,
    )
)
def test_append_writes_exactly_the_bytes_with_holes_where_zeros_were(
    pieces: list[bytes | int],
) -> None:
    expected = b"".join(bytes(p) if isinstance(p, int) else p for p in pieces)
    entry = EntryRecord(b"f", "file", 0o644, 0, len(expected))
    with tempfile.TemporaryDirectory() as tmp:
        writer = TreeWriter(Path(tmp))
        final, temp, fh = writer.open_temp(b"f")
        writer.append(fh, pieces)
        writer.finish(entry, final, temp, fh)
        assert final.read_bytes() == expected


def test_a_large_run_of_written_zeros_restores_as_a_hole(tmp_path: Path) -> None:
    blob = os.urandom(1000) + bytes(16 * MiB) + os.urandom(1000)
    writer = TreeWriter(tmp_path)
    final, temp, fh = writer.open_temp(b"f")
    writer.append(fh, [blob, 32 * MiB])
    writer.finish(EntryRecord(b"f", "file", 0o600, 0, len(blob) + 32 * MiB), final, temp, fh)
    assert final.stat().st_size == len(blob) + 32 * MiB
    assert final.stat().st_blocks * 512 < 2 * MiB


# --- owners and privileges -------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="owners are only set by root")
def test_owner_by_name_where_it_exists_else_by_number(tmp_path: Path) -> None:
    # Recorded on another machine: "daemon" had uid 4321 there; here it is uid 1.
    entry = EntryRecord(b"f", "file", 0o644, 0, 0, uid=4321, gid=8765, user="daemon")
    assert TreeWriter(tmp_path).owner_for(entry) == (1, 8765)
    assert TreeWriter(tmp_path, numeric_owner=True).owner_for(entry) == (4321, 8765)
    unknown = EntryRecord(b"f", "file", 0o644, 0, 0, uid=4321, gid=8765, user="no-such-user")
    assert TreeWriter(tmp_path).owner_for(unknown) == (4321, 8765)
    old = EntryRecord(b"f", "file", 0o644, 0, 0)  # recorded before owners were kept
    assert TreeWriter(tmp_path).owner_for(old) is None


def test_setuid_is_dropped_unless_the_recorded_owner_is_the_result(tmp_path: Path) -> None:
    writer = TreeWriter(tmp_path)
    me = os.geteuid()
    other = me + 1000 if me else 1000
    for name, uid in ((b"mine", me), (b"theirs", other)):
        entry = EntryRecord(name, "file", 0o4755, 0, 0, uid=uid, gid=os.getegid())
        final, temp, fh = writer.open_temp(name)
        if me == 0:  # as root, the owner is restored: no privilege is created out of thin air
            writer.as_root = False  # pretend a normal user restores: chown is not done
        writer.finish(entry, final, temp, fh)
    assert os.stat(tmp_path / "mine").st_mode & stat.S_ISUID
    assert not os.stat(tmp_path / "theirs").st_mode & stat.S_ISUID
    assert any("theirs: setuid bit dropped" in n for n in writer.notes)


# --- staying inside the destination -----------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    [b"..", b"a/..", b"a/../b", b"/etc/passwd", b"a//b", b"./a", b"a/.", b"", b"a\x00b"],
)
def test_safe_join_refuses_every_escape(tmp_path: Path, rel: bytes) -> None:
    with pytest.raises(ScanError):
        safe_join(tmp_path, rel)


def test_finishing_a_directory_never_follows_a_symlink_swapped_in(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    dest = tmp_path / "dest"
    writer = TreeWriter(dest)
    entry = EntryRecord(b"d", "dir", 0o777, 0, 0)
    writer.make_dirs([entry])
    (dest / "d").rmdir()
    os.symlink(outside, dest / "d")  # swapped in after the directory was made
    with pytest.raises(ScanError):
        writer.finish_dirs([entry])
    assert stat.S_IMODE(outside.stat().st_mode) == 0o755
    assert outside.stat().st_mtime_ns != 0


def test_a_symlink_inside_the_destination_cannot_lead_a_restore_outside(tmp_path: Path) -> None:
    """The guard resolves links (realpath): with abspath, ``dest/evil/file`` looks inside
    the destination while it lands in ``outside``."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "evil")
    writer = TreeWriter(dest)
    with pytest.raises(ScanError, match="resolves outside"):
        writer.open_temp(b"evil/file")
    with pytest.raises(ScanError, match="resolves outside"):
        writer.make_specials([EntryRecord(b"evil/fifo", "fifo", 0o600, 0, 0)])
    assert list(outside.iterdir()) == []


# --- from the mutation run (docs/MUTATION.md) -------------------------------------------------


def test_root_names_take_the_last_component_and_refuse_clashes(tmp_path: Path) -> None:
    from gridnode.scanner import root_names

    (tmp_path / "x" / "data").mkdir(parents=True)
    (tmp_path / "y" / "data").mkdir(parents=True)
    root = os.path.abspath("/")
    assert root_names([str(tmp_path / "x" / "data") + "/", root]) == [
        (str(tmp_path / "x" / "data"), b"data"),
        (root, b"root"),
    ]
    with pytest.raises(ScanError, match="same name"):
        root_names([str(tmp_path / "x" / "data"), str(tmp_path / "y" / "data")])
    with pytest.raises(ScanError, match="no such file"):
        root_names([str(tmp_path / "missing")])


def test_the_writer_makes_missing_parents_and_private_directories(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b" / "dest"
    writer = TreeWriter(dest)
    assert dest.is_dir()
    path = writer.ensure_parent(b"x/y/z/file")
    assert path == dest / "x" / "y" / "z" / "file" and path.parent.is_dir()
    entry = EntryRecord(b"x/y", "dir", 0o755, 0, 0)
    writer.make_dirs([entry, EntryRecord(b"new", "dir", 0o755, 0, 0)])  # one exists already
    # Until finish_dirs, a directory made by the restore is private to the restoring user.
    assert stat.S_IMODE((dest / "new").stat().st_mode) == 0o700
    writer.finish_dirs([entry])
    assert stat.S_IMODE((dest / "x" / "y").stat().st_mode) == 0o755


def test_make_dirs_refuses_a_symlink_in_the_way(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    writer = TreeWriter(dest)
    os.symlink(outside, dest / "d")
    with pytest.raises(ScanError, match="symlink is in the way"):
        writer.make_dirs([EntryRecord(b"d", "dir", 0o755, 0, 0)])


def test_finish_dirs_sets_every_directory_deepest_first(tmp_path: Path) -> None:
    writer = TreeWriter(tmp_path / "dest")
    entries = [
        EntryRecord(b"a", "dir", 0o750, 1_000_000_000_000_000_000, 0),
        EntryRecord(b"a/b", "dir", 0o705, 2_000_000_000_000_000_000, 0),
        EntryRecord(b"a/b/c", "dir", 0o701, 3_000_000_000_000_000_000, 0),
    ]
    writer.make_dirs(entries)
    seen: list[bytes] = []
    real_apply = writer._apply

    def spy(entry: EntryRecord, target: object, **kw: bool) -> None:
        assert isinstance(target, int)  # through the descriptor, never the path
        seen.append(entry.path)
        real_apply(entry, target, **kw)  # type: ignore[arg-type]

    writer._apply = spy  # type: ignore[method-assign]
    writer.finish_dirs(entries)
    assert seen == [b"a/b/c", b"a/b", b"a"]
    for entry in entries:
        st = (tmp_path / "dest" / os.fsdecode(entry.path)).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (entry.mode, entry.mtime_ns)


def test_clear_replaces_files_and_links_but_never_a_directory(tmp_path: Path) -> None:
    writer = TreeWriter(tmp_path / "dest")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"k")
    dest = tmp_path / "dest"
    (dest / "file").write_bytes(b"old")
    os.symlink(outside, dest / "link-to-dir")
    os.symlink(tmp_path / "nowhere", dest / "dangling")
    (dest / "dir").mkdir()
    for name in (b"file", b"link-to-dir", b"dangling"):
        path = writer.target(name)
        writer._clear(path, name)
        assert not path.is_symlink() and not path.exists()
    assert (outside / "keep").read_bytes() == b"k"
    with pytest.raises(ScanError, match="refusing to replace directory"):
        writer._clear(writer.target(b"dir"), b"dir")
    assert (dest / "dir").is_dir()


def test_notes_are_capped(tmp_path: Path) -> None:
    writer = TreeWriter(tmp_path)
    for i in range(1005):
        writer.note(b"f", f"note {i}")
    assert len(writer.notes) == 1000 and writer.notes[-1] == "f: note 999"


@pytest.mark.skipif(os.geteuid() != 0, reason="owners are only set by root")
def test_group_by_name_where_it_exists_and_no_owner_without_both_ids(tmp_path: Path) -> None:
    writer = TreeWriter(tmp_path)
    by_name = EntryRecord(b"f", "file", 0o644, 0, 0, uid=4321, gid=8765, group="root")
    assert writer.owner_for(by_name) == (4321, 0)
    unknown = EntryRecord(b"f", "file", 0o644, 0, 0, uid=4321, gid=8765, group="no-such-group")
    assert writer.owner_for(unknown) == (4321, 8765)
    assert writer.owner_for(EntryRecord(b"f", "file", 0o644, 0, 0, uid=4321)) is None
    assert writer.owner_for(EntryRecord(b"f", "file", 0o644, 0, 0, gid=8765)) is None
