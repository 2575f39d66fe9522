"""Building test trees and comparing restored trees with their originals."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

from simulations.harness import LocalGrid, NodeProc, NodeSpec


def make_mixed_tree(
    root: Path, *, big_bytes: int = 20 * 1024 * 1024, small_files: int = 200, seed: int = 1
) -> Path:
    rng = random.Random(seed)
    tree = root / "tree"
    (tree / "nested" / "deeper" / "deepest").mkdir(parents=True)
    (tree / "empty-dir").mkdir()
    (tree / "small").mkdir()
    (tree / "empty.txt").write_bytes(b"")
    (tree / "big.bin").write_bytes(rng.randbytes(big_bytes))
    for i in range(small_files):
        (tree / "small" / f"f{i:04d}.txt").write_text(f"small file {i}\n" * rng.randint(1, 300))
    (tree / "nested" / "deeper" / "deepest" / "note.md").write_text("# deep\n" * 100)
    (tree / "naïve café ünïcødé.txt").write_text("unicode name\n")
    (tree / "with space in name.txt").write_text("spaces\n")
    (tree / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(tree / "script.sh", 0o755)
    (tree / "secret.txt").write_text("only me\n")
    os.chmod(tree / "secret.txt", 0o600)
    os.symlink("nested/deeper/deepest/note.md", tree / "link-to-note")
    os.symlink("/etc/hostname-outside-tree", tree / "dangling-link")
    os.chmod(tree / "nested" / "deeper", 0o750)
    stamp = 1_600_000_000_123_456_789
    for i, path in enumerate(sorted(tree.rglob("*"))):
        if not path.is_symlink():
            os.utime(path, ns=(stamp + i * 1_000_000_000, stamp + i * 1_000_000_000))
    os.utime(tree, ns=(stamp, stamp))
    return tree


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a restore must reproduce: kind, content, mode, mtime, link target."""
    out: dict[str, tuple[object, ...]] = {}
    for path in sorted([root, *root.rglob("*")]):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", st.st_mode & 0o7777, st.st_mtime_ns)
        else:
            out[rel] = ("file", path.read_bytes(), st.st_mode & 0o7777, st.st_mtime_ns)
    return out


def assert_same_tree(original: Path, restored: Path) -> None:
    a, b = describe(original), describe(restored)
    assert sorted(a) == sorted(b), f"paths differ: {sorted(set(a) ^ set(b))[:10]}"
    for rel in a:
        if a[rel] != b[rel]:
            left, right = a[rel], b[rel]
            raise AssertionError(f"{rel!r} differs: {str(left)[:120]} != {str(right)[:120]}")


def lose_and_recover(grid: LocalGrid, name: str, new_home: Path, *, seed: str) -> Any:
    """The machine of node ``name`` is lost (killed, home deleted); a new node comes back
    from the recovery phrase alone as node "recovered".  Returns `recover`'s JSON."""
    phrase = grid.gridnode(
        "key", "phrase", "--home", str(grid.nodes[name].home), json_out=False
    ).strip()
    grid.kill(name)
    shutil.rmtree(grid.nodes[name].home)
    result = grid.gridnode(
        "recover",
        "--home",
        str(new_home),
        "--key",
        "-",
        "--grid",
        str(grid.grid_file),
        "--seed",
        grid.nodes[seed].address,
        "--json",
        stdin=phrase + "\n",
        timeout=120,
    )
    grid.nodes["recovered"] = NodeProc(spec=NodeSpec(name="recovered"), home=new_home, port=0)
    grid.start("recovered")
    grid.wait_ready("recovered")
    return result
