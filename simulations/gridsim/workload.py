"""Workload generation and comparison: the data a backup step writes, and what a
byte-equal restore must reproduce.

Generated data is reproducible from its seed; a manifest (size and hash of every file,
directories, links) is what the restore check compares.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

from ..harness import SAMPLE_WORDS
from .model import DataSpec

__all__ = ["Manifest", "build_manifest", "compare_manifest", "generate_data"]

Manifest = dict[str, tuple[Any, ...]]


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _text(rng: random.Random, size: int) -> bytes:
    out = bytearray()
    for _ in range(size // 8 + 2):  # every round adds at least 8 bytes
        if len(out) >= size:
            break
        out += (" ".join(rng.choices(SAMPLE_WORDS, k=64)) + "\n").encode()
    return bytes(out[:size])


def generate_data(root: Path, spec: DataSpec) -> None:
    """Write ``spec.size`` bytes into the new directory ``root``, reproducibly from the seed.

    ``random`` is incompressible (a few large files), ``text`` compresses well (words),
    ``small-files`` is many small files (half text, half random) in sub-directories of
    64, which is what stresses per-file overheads.
    """
    rng = random.Random(spec.seed)
    root.mkdir(parents=True, exist_ok=False)
    if spec.kind == "random":
        for i, size in enumerate(_split(spec.size, spec.files or 2)):
            (root / f"blob-{i:03d}.bin").write_bytes(rng.randbytes(size))
    elif spec.kind == "text":
        for i, size in enumerate(_split(spec.size, spec.files or 4)):
            (root / f"text-{i:03d}.txt").write_bytes(_text(rng, size))
    elif spec.kind == "small-files":
        count = spec.files or max(1, spec.size // 4096)
        for i, size in enumerate(_split(spec.size, count)):
            folder = root / f"d{i // 64:03d}"
            folder.mkdir(exist_ok=True)
            data = _text(rng, size) if i % 2 else rng.randbytes(size)
            (folder / f"f{i:05d}.{'txt' if i % 2 else 'bin'}").write_bytes(data)
    else:
        raise ValueError(f"unknown data kind {spec.kind!r}")


def _digest(path: Path) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def build_manifest(root: Path) -> Manifest:
    """What a byte-equal restore must reproduce: every file's size and hash, dirs, links."""
    out: Manifest = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir",)
            elif path.is_file():
                out[rel] = ("file", path.stat().st_size, _digest(path))
    return out


def compare_manifest(expected: Manifest, actual: Manifest, *, limit: int = 5) -> list[str]:
    """Differences in words, at most ``limit`` of them plus a count of the rest."""
    problems: list[str] = []
    for rel in sorted(set(expected) | set(actual)):
        want, got = expected.get(rel), actual.get(rel)
        if want == got:
            continue
        if got is None:
            problems.append(f"{rel}: missing")
        elif want is None:
            problems.append(f"{rel}: not in the backup")
        elif want[0] != got[0]:
            problems.append(f"{rel}: a {got[0]}, expected a {want[0]}")
        elif want[0] == "file" and want[1] != got[1]:
            problems.append(f"{rel}: {got[1]} bytes, expected {want[1]}")
        else:
            problems.append(f"{rel}: content differs")
    if len(problems) > limit:
        problems = [*problems[:limit], f"... and {len(problems) - limit} more"]
    return problems
