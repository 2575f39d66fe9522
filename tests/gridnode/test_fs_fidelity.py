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
from gridnode.storage.catalog import EntryRecord
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
