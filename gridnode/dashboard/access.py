"""Who may see the dashboard: one-time login links and the sessions they open.

Every route but ``/login`` needs a session cookie, on loopback too.  A loopback TCP port
is not private to the node's owner: every user of the machine can connect to it, and a
web page in the owner's browser can reach it by DNS rebinding.  The control channel is a
Unix socket for that reason (``gridnode.control``); the dashboard cannot be, so it asks
for a login instead, and binding it beyond loopback changes nothing about who gets in.

A login link comes only from ``gridnode dashboard``, which asks the node over its control
channel (owner token, peer uid checked), so only the owner gets one.  The link's token is
good once and for ``LOGIN_TTL_S``; opening it trades it for a session cookie (HttpOnly,
SameSite=Strict), kept in memory only: a restart logs everyone out.  Tokens and sessions
are 32 random bytes; the tables hold their SHA-256, so a dump of memory shows no usable
cookie, and both tables are bounded (the oldest entry goes first).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import attrs

__all__ = ["LOGIN_TTL_S", "MAX_LOGINS", "MAX_SESSIONS", "SESSION_TTL_S", "Access"]

#: How long a login link may wait before it is opened.
LOGIN_TTL_S: Final = 600.0
#: How long a session lasts (it never outlives the node process).
SESSION_TTL_S: Final = 12 * 3600.0
#: Unused login links kept; a new one past this drops the oldest.
MAX_LOGINS: Final = 16
#: Sessions kept; a new login past this ends the oldest session.
MAX_SESSIONS: Final = 32


def _new_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


@attrs.define
class Access:
    """The login links handed out and the sessions open, with their expiry times."""

    clock: Callable[[], float] = time.monotonic
    _logins: OrderedDict[bytes, float] = attrs.field(factory=OrderedDict)
    _sessions: OrderedDict[bytes, float] = attrs.field(factory=OrderedDict)

    def new_login(self) -> str:
        """A one-time login token (for ``/login?token=...``)."""
        self._expire()
        token = _new_secret()
        self._logins[_digest(token)] = self.clock() + LOGIN_TTL_S
        while len(self._logins) > MAX_LOGINS:
            self._logins.popitem(last=False)
        return token

    def redeem(self, token: str) -> str | None:
        """A new session secret for a valid, unused login token (which is used up), or
        None: unknown, used or expired."""
        self._expire()
        if not token or len(token) > 128:
            return None
        if self._logins.pop(_digest(token), None) is None:
            return None
        session = _new_secret()
        self._sessions[_digest(session)] = self.clock() + SESSION_TTL_S
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def valid_session(self, session: str | None) -> bool:
        if not session or len(session) > 128:
            return False
        expires = self._sessions.get(_digest(session))
        if expires is None:
            return False
        if expires <= self.clock():
            del self._sessions[_digest(session)]
            return False
        return True

    @property
    def sessions(self) -> int:
        self._expire()
        return len(self._sessions)

    def _expire(self) -> None:
        now = self.clock()
        for table in (self._logins, self._sessions):
            for key in [k for k, expires in table.items() if expires <= now]:
                del table[key]
