"""Benchmarks that compare with tools the project does not depend on (Tahoe-LAFS, restic).

Those tools are found at run time, never installed by the project: a machine without
them still runs the rest of the suite, and the runner reports such a benchmark as
skipped with the reason, not as failed.  This module imports nothing of gridnode, so
the runner can name :class:`Unavailable` before the benchmarks configure logging.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["Unavailable", "find_tool"]


class Unavailable(Exception):
    """An optional benchmark cannot run here (its tool is absent): skipped, not failed."""


def find_tool(env_var: str, name: str) -> Path:
    """The executable named by ``env_var``, else ``name`` on ``PATH``.

    Raises :class:`Unavailable` when neither is there.  A variable that names a missing
    file means "absent" rather than silently falling back to ``PATH``, so
    ``GRIDNODE_TAHOE=/nonexistent`` skips the comparison on a machine that has the tool.
    """
    named = os.environ.get(env_var)
    if named:
        path = Path(named)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise Unavailable(f"{env_var}={named} is not an executable file: {name} not measured")
    found = shutil.which(name)
    if found is None:
        raise Unavailable(f"no {name} on PATH and {env_var} unset: {name} not measured")
    return Path(found)
