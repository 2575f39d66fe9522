"""Where a node's home is and what names its config: the two facts the CLI needs before
anything else, on the standard library alone (``gridnode.config`` needs attrs, and the
CLI must start in milliseconds)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["CONFIG_NAME", "DEFAULT_HOME_TEXT", "default_home"]

CONFIG_NAME: Final = "gridnode.toml"

#: The rule of :func:`default_home` in words, for every help text that names it.
DEFAULT_HOME_TEXT: Final = (
    "$GRIDNODE_HOME, else $XDG_DATA_HOME/gridnode, else ~/.local/share/gridnode"
)


def default_home() -> Path:
    """``$GRIDNODE_HOME``; else ``$XDG_DATA_HOME/gridnode`` (the XDG base directory
    specification's place for user data, so a desktop that moves its data directory
    moves the node's home with it); else ``~/.local/share/gridnode``, the
    specification's default for an unset or empty ``XDG_DATA_HOME``.  A relative
    ``XDG_DATA_HOME`` is invalid under the specification and ignored."""
    env = os.environ.get("GRIDNODE_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "gridnode"
    return Path.home() / ".local" / "share" / "gridnode"
