"""Where a node's home is and what names its config: the two facts the CLI needs before
anything else, on the standard library alone (``gridnode.config`` needs attrs, and the
CLI must start in milliseconds)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["CONFIG_NAME", "default_home"]

CONFIG_NAME: Final = "gridnode.toml"


def default_home() -> Path:
    env = os.environ.get("GRIDNODE_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "gridnode"
