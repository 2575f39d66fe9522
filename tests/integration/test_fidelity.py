"""Issue 14 on real node processes: a restore gives back what was there.

One tree holds every case (see ``fstree.py``): names that are not UTF-8, hard links,
xattrs and ACLs, FIFOs, devices and a socket, other owners, setuid bits, a 1 GiB sparse
file, written zeros, and a file the node cannot read.  It is backed up by a node running
as root (without the capability to read other users' files, so the unreadable file
really is unreadable) and restored, then compared property by property; then by a node
running as a normal user.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulations.harness import LocalGrid, NodeProc, NodeSpec, free_port

from ..cities import CITIES
from .fstree import (
    BAD,
    MiB,
    describe,
    diff_trees,
    link_groups,
    make_fidelity_tree,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="building the test tree needs root"),
]

#: Root, less the right to read and search what it does not own: chmod 000 stops it.
NO_DAC = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")
NOBODY = 65534
AS_NOBODY = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
REDUNDANCY = ("--redundancy", "2/3")


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGrid]:
    root = tmp_path_factory.mktemp("fidelity")
    with LocalGrid(root / "grid") as g:
        specs = [
            NodeSpec(name=f"n{i}", location=CITIES[i], wrapper=NO_DAC if i == 0 else ())
            for i in range(4)
        ]
        g.add_many(specs)
        g.start_all()
        g.wait_converged(timeout=60)
        yield g


def run_cli(grid: LocalGrid, name: str, *args: str | bytes) -> tuple[int, Any, str]:
    """``gridnode ARGS --home H --json``: (exit code, last JSON object, stderr).  Arguments
    may be bytes: a name that is not UTF-8 reaches the program as those bytes."""
    proc = subprocess.run(
        [*grid.command(), *args, "--home", str(grid.nodes[name].home), "--json"],
        capture_output=True,
        env=grid.env,
        timeout=300,
    )
    lines = [line for line in proc.stdout.decode().splitlines() if line.strip()]
    return proc.returncode, json.loads(lines[-1]) if lines else None, proc.stderr.decode()


def checked(grid: LocalGrid, name: str, *args: str | bytes) -> Any:
    code, result, err = run_cli(grid, name, *args)
    assert code == 0, err
    return result


def without(tree: dict[bytes, dict[str, Any]], *names: bytes) -> dict[bytes, dict[str, Any]]:
    return {k: v for k, v in tree.items() if k not in names}


def allocated(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def test_every_kind_of_entry_round_trips_as_root(grid: LocalGrid, tmp_path: Path) -> None:
    tree = make_fidelity_tree(tmp_path / "src")
    original = describe(tree)

    code, backup, err = run_cli(grid, "n0", "backup", str(tree), *REDUNDANCY)
    # Completed, but one file could not be read: exit code 3, the file named in the notes.
    assert code == 3, err
    assert backup["skipped"] == 1
    assert any("tree/unreadable.txt" in n and "denied" in n for n in backup["notes"])
    assert "could not be read" in err
    # 1 GiB of holes and 8 MiB of written zeros are neither read into chunks nor stored.
    assert backup["bytes_read"] < 16 * MiB
    assert backup["bytes_uploaded"] < 40 * MiB
    assert backup["specials"] == 4  # fifo, two devices, socket

    out = tmp_path / "out"
    restored = checked(grid, "n0", "restore", backup["snapshot_id"], "--to", str(out))
    assert restored["hardlinks"] == 3
    assert restored["specials"] == 3
    assert any("tree/dev/socket" in n and "not recreated" in n for n in restored["notes"])
    problems = diff_trees(
        without(original, b".", b"unreadable.txt", b"dev/socket"),
        without(describe(out / "tree"), b"."),
    )
    assert problems == []
    assert link_groups(out / "tree") == link_groups(tree)
    # Holes stay holes: 3 MiB of data in 1 GiB, and the written zeros, cost no disk.
    assert os.path.getsize(out / "tree/sparse.img") == 1 << 30
    assert allocated(out / "tree/sparse.img") < 8 * MiB
    assert allocated(out / "tree/zeros.img") < 4 * MiB
    assert os.stat(out / "tree/owners/setuid").st_mode & stat.S_ISUID

    # The name that is not UTF-8, through ls, restore --path and diff.
    snapshot = backup["snapshot_id"]
    escaped = "tree/bad-\\xff-name"
    listing = checked(grid, "n0", "ls", snapshot)
    paths = {row["path"]: row for row in listing}
    assert paths[escaped]["type"] == "dir"
    assert paths["tree/back\\\\slash \\\\x41.txt"]["type"] == "file"
    assert paths["tree/dev/null"]["device"] == [1, 3]
    assert paths["tree/links/b.txt"]["hardlink"] == "tree/links/a.txt"
    for row in listing:
        assert {"path", "type", "size", "mtime"} <= row.keys()
    one = checked(grid, "n0", "ls", snapshot, escaped)
    assert [r["path"] for r in one] == [escaped, escaped + "/inner-\\xfe.txt"]
    for form in (escaped, b"tree/" + BAD):  # as ls shows it, and as the raw bytes
        dest = tmp_path / f"one-{type(form).__name__}"
        got = checked(grid, "n0", "restore", snapshot, "--to", str(dest), "--path", form)
        assert got["files"] == 1
        inner = os.fsencode(dest) + b"/tree/" + BAD + b"/inner-\xfe.txt"
        with open(inner, "rb") as fh:
            assert fh.read() == b"inside a name that is not UTF-8\n"
    # A literal backslash in a name is found in both of its forms too.
    for form in ("tree/back\\slash \\x41.txt", "tree/back\\\\slash \\\\x41.txt"):
        dest = tmp_path / f"bs-{len(form)}"
        got = checked(grid, "n0", "restore", snapshot, "--to", str(dest), "--path", form)
        assert (dest / "tree" / "back\\slash \\x41.txt").read_bytes().startswith(b"a backslash")

    bad_dir = os.fsencode(tree) + b"/" + BAD
    with open(bad_dir + b"/inner-\xfe.txt", "ab") as fh:
        fh.write(b"changed\n")
    with open(bad_dir + b"/new-\xfd", "wb") as fh:
        fh.write(b"added\n")
    os.unlink(os.fsencode(tree) + b"/new\nline.txt")
    code, second, err = run_cli(grid, "n0", "backup", str(tree), *REDUNDANCY)
    assert code == 3, err
    diff = checked(grid, "n0", "diff", snapshot, second["snapshot_id"])
    assert diff["added"] == [escaped + "/new-\\xfd"]
    assert diff["removed"] == ["tree/new\nline.txt"]
    assert escaped + "/inner-\\xfe.txt" in diff["changed"]


def test_numeric_owner_restores_by_number(grid: LocalGrid, tmp_path: Path) -> None:
    tree = make_fidelity_tree(tmp_path / "src", unreadable=False)
    code, backup, err = run_cli(grid, "n0", "backup", str(tree), *REDUNDANCY)
    assert code == 0, err
    assert backup["skipped"] == 0
    out = tmp_path / "out"
    checked(
        grid,
        "n0",
        "restore",
        backup["snapshot_id"],
        "--to",
        str(out),
        "--path",
        "tree/owners",
        "--numeric-owner",
    )
    for name in ("numeric.txt", "named.txt", "setuid", "setgid", "shared-dir"):
        a, b = os.lstat(tree / "owners" / name), os.lstat(out / "tree" / "owners" / name)
        assert (b.st_uid, b.st_gid, b.st_mode) == (a.st_uid, a.st_gid, a.st_mode), name


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory a normal user can reach (pytest's own temp dirs are root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="gridnode-user-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _can_run_as_nobody() -> bool:
    probe = subprocess.run(
        [*AS_NOBODY, sys.executable, "-c", "import gridnode.cli"], capture_output=True
    )
    return probe.returncode == 0


def test_every_kind_of_entry_as_a_normal_user(
    grid: LocalGrid, shared_dir: Path, tmp_path: Path
) -> None:
    if not _can_run_as_nobody():
        pytest.skip("this checkout is not readable by another user, so no node can run as one")
    tree = make_fidelity_tree(shared_dir / "src")
    home = shared_dir / "home"
    port = free_port()
    spec = NodeSpec(name="user", location=CITIES[5], wrapper=AS_NOBODY)
    invite = ("--invite", grid.invite())  # the grid's authority admits it
    grid.init_node(spec, home, f"127.0.0.1:{port}", [grid.nodes["n1"].address], invite)
    for path in [home, *home.rglob("*")]:
        os.lchown(path, NOBODY, NOBODY)
    grid.nodes["user"] = NodeProc(spec=spec, home=home, port=port)
    grid.start("user")
    grid.wait_ready("user")
    grid.wait_converged(timeout=60)

    code, backup, err = run_cli(grid, "user", "backup", str(tree), *REDUNDANCY)
    assert code == 3, err
    assert any("tree/unreadable.txt" in n for n in backup["notes"])
    out = shared_dir / "out"
    out.mkdir()
    os.chown(out, NOBODY, NOBODY)
    restored = checked(grid, "user", "restore", backup["snapshot_id"], "--to", str(out))
    notes = "\n".join(restored["notes"])
    assert "tree/dev/null: chardev 1,3 not made" in notes
    assert "tree/owners/setuid: setuid bit dropped" in notes
    assert "tree/owners/setgid: setgid bit dropped" in notes

    # What a normal user can give back is given back; the rest is as the notes say.
    expected = without(describe(tree), b".", b"unreadable.txt", b"dev/socket")
    del expected[b"dev/null"], expected[b"dev/loop9"]
    for props in expected.values():
        props["uid"] = props["gid"] = NOBODY  # files belong to the restoring user
        if "mode" in props:
            props["mode"] &= ~(
                stat.S_ISUID | (stat.S_ISGID if props["type"] != stat.S_IFDIR else 0)
            )
        # trusted.* is not even visible to a normal user; security.* needs privilege to set
        props["xattrs"] = {
            k: v for k, v in props["xattrs"].items() if k.startswith((b"user.", b"system."))
        }
    actual = without(describe(out / "tree"), b".")
    assert diff_trees(expected, actual) == []
    assert link_groups(out / "tree") == link_groups(tree)
    assert allocated(out / "tree/sparse.img") < 8 * MiB
