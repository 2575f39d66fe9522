"""The grid key's file: the authority's Ed25519 signing key, which signs every
certificate, revocation and invoice of the grid.

Kept apart from the subscription manager so that every part of the authority (the
manager, metering, the global log) can load it without importing the others.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Final

from nacl.signing import SigningKey

from ..fsutil import atomic_write

__all__ = ["load_authority_key", "write_authority_key"]

_KEY_HEADER: Final = "gridnode-authority-key-v1"


def write_authority_key(path: Path, key: SigningKey) -> None:
    """The grid's signing key, mode 0600, written atomically: whoever holds it can admit
    anyone to the grid, so it is as secret as a node key and never half-written."""
    text = (
        "# gridnode grid authority key: it signs every certificate of this grid.\n"
        "# Keep it secret; back it up with authority.sqlite and pricebook.toml.\n"
        f"# public key: {bytes(key.verify_key).hex()}\n"
        f"{_KEY_HEADER}:{bytes(key).hex()}\n"
    )
    atomic_write(path, text.encode("ascii"), mode=0o600)


def load_authority_key(path: Path) -> SigningKey:
    from ..identity import KeyError_

    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyError_(f"no authority key at {path} (run gridnode authority init)") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyError_(
            f"authority key {path} is readable by other users "
            f"(mode {stat.S_IMODE(info.st_mode):o}); run: chmod 600 {path}"
        )
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        if line.startswith(_KEY_HEADER + ":"):
            try:
                seed = bytes.fromhex(line.split(":", 1)[1].strip())
            except ValueError:
                break
            if len(seed) == 32:
                return SigningKey(seed)
            break
    raise KeyError_(f"{path} is not a gridnode authority key file")
