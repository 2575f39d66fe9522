"""Numbered schema migrations for the node's SQLite files, in one place.

The catalog, the holdings and the authority's database each keep a tuple of SQL
scripts; script ``i`` takes a file from ``PRAGMA user_version`` ``i`` to ``i + 1``, in one
``BEGIN IMMEDIATE`` transaction with the version bump, so a crash mid-migration leaves
the old schema whole.  A file from newer software is refused rather than misread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

__all__ = ["apply_migrations", "statements"]


def statements(script: str) -> list[str]:
    """A migration's statements, cut where SQLite says one is complete: a trigger's body
    holds semicolons of its own, which a plain split on ``;`` would cut through."""
    out: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                out.append(pending)
            pending = ""
    if pending.strip(" \n;"):
        out.append(pending)
    return out


def apply_migrations(
    db: sqlite3.Connection, migrations: Sequence[str], *, what: str, path: Path
) -> None:
    """Bring the file behind ``db`` (opened with ``isolation_level=None``) up to date."""
    current = int(db.execute("PRAGMA user_version").fetchone()[0])
    if current > len(migrations):
        raise RuntimeError(
            f"{what} {path} has schema version {current}, newer than this software "
            f"({len(migrations)}); upgrade gridnode"
        )
    for version in range(current, len(migrations)):
        with db:
            db.execute("BEGIN IMMEDIATE")
            for statement in statements(migrations[version]):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {version + 1}")
