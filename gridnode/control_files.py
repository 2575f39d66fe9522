"""The control channel's files and checks, on the standard library alone.

Where a home's control socket and token live, how the token is read safely, whose node
the CLI may talk to, and who is at the other end of the socket.  Both the node's control
server (``gridnode.control``) and the CLI's synchronous client
(``gridnode.control_client``) use these, and the client must start in milliseconds, so
nothing here imports trio, the protocol package or a third-party library.  The reasons
for each check are in ``gridnode.control``'s docstring.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Protocol

from .errors import GridError
from .fsutil import atomic_write

__all__ = [
    "ANSWER_PARTS_PARAM",
    "ANSWER_PART_CHARS",
    "SUN_PATH_MAX",
    "ControlError",
    "NodeNotRunning",
    "ensure_token",
    "node_owner",
    "peer_uid",
    "read_token",
    "rotate_token",
    "run_info_path",
    "socket_name",
    "socket_path",
    "token_path",
]

#: A call's parameter by which a client says it joins answers sent in parts (the node
#: takes it out before the method sees the parameters), and the key of the answer that
#: then counts the parts.  Answers past one control message (4 MiB: every snapshot of
#: years of hourly backups, a placement report of a big snapshot) get through whole.
ANSWER_PARTS_PARAM: Final = "answer_parts"
#: Characters of an answer per ``answer_part`` event: with escaping at most twice as
#: many bytes, well inside one control message.
ANSWER_PART_CHARS: Final = 1024 * 1024


class _Socket(Protocol):
    """A stdlib socket or a trio one: all ``peer_uid`` needs."""

    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes: ...


#: The longest socket name bound or connected directly (``sun_path`` is 108 bytes).
SUN_PATH_MAX: Final = 107


class NodeNotRunning(GridError):
    pass


class ControlError(GridError):
    """A control call failed with a machine-readable ``code``: the node answered with an
    error, or the CLI refused to go on before sending the token (``unsafe_token``,
    ``foreign_socket``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def token_path(home: Path) -> Path:
    return home / "control.token"


def run_info_path(home: Path) -> Path:
    return home / "run" / "control.json"


def socket_path(home: Path) -> Path:
    return home / "run" / "control.sock"


def ensure_token(home: Path) -> bytes:
    path = token_path(home)
    if not path.exists():
        return rotate_token(home)
    return read_token(home)


def rotate_token(home: Path) -> bytes:
    """A fresh token for this run; the previous one stops working."""
    token = secrets.token_hex(32).encode("ascii")
    atomic_write(token_path(home), token, mode=0o600)
    return token


def read_token(home: Path) -> bytes:
    """The token, only from a file nobody but this user could have read or written."""
    path = token_path(home)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NodeNotRunning(f"no control token in {home} (is this a node home?)") from None
    except PermissionError:
        raise NodeNotRunning(f"cannot read {path}: only the node's owner may") from None
    except OSError as exc:  # ELOOP: a symbolic link where the token should be
        raise ControlError("unsafe_token", f"refusing {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        me = node_owner(home)
        if not stat.S_ISREG(info.st_mode):
            raise ControlError("unsafe_token", f"refusing {path}: not a regular file")
        if info.st_uid != me:
            raise ControlError(
                "unsafe_token",
                f"refusing {path}: owned by uid {info.st_uid}, not by the node's owner (uid {me})",
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ControlError(
                "unsafe_token",
                f"refusing {path}: mode {mode:04o} lets others read it; it must be 0600 "
                "(chmod 600 it; the node writes a new token when it restarts)",
            )
        return os.read(fd, 4096).strip()
    finally:
        os.close(fd)


@contextlib.contextmanager
def socket_name(path: Path) -> Iterator[str]:
    """A name for ``path`` that fits in ``sun_path`` (see the module docstring)."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield str(path)
        return
    if not os.path.isdir("/proc/self/fd"):
        raise GridError(
            f"{path} is too long for a Unix socket ({len(os.fsencode(path))} bytes, at most "
            f"{SUN_PATH_MAX}) and /proc is not there to reach it another way; "
            "use a shorter --home"
        )
    flags = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
    fd = os.open(path.parent, flags)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def node_owner(home: Path) -> int:
    """Whose node the CLI may talk to: its own user's, or, for root (an administrator
    driving a service account's node), the owner of the home's 0700 ``run`` directory,
    where only that user or root can have put a socket or a token."""
    me = os.geteuid()
    if me != 0:
        return me
    try:
        return socket_path(home).parent.lstat().st_uid
    except OSError:
        return me


def peer_uid(sock: _Socket) -> int | None:
    """The uid of the process at the other end, from the kernel (None where the platform
    has no ``SO_PEERCRED``; the socket directory's permissions still hold there)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)
