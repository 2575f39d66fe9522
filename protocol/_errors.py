"""The protocol's error taxonomy (after h11's ``_util.py``).

Two kinds, because the caller must react differently: a ``RemoteProtocolError``
means the peer sent something we refuse (close the session, log the peer), a
``LocalProtocolError`` means our own code misused the API (a bug: crash loudly).
Both carry a machine-readable ``code`` so the I/O layer can put it on the wire
in an ``Error``/``Goodbye`` message and tests can assert on it.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class; ``code`` is stable and machine-readable, ``str(e)`` is for humans."""

    def __init__(self, message: str, *, code: str = "protocol_error") -> None:
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class LocalProtocolError(ProtocolError):
    """Our own code tried something the protocol forbids (send before ready, bad field)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes we refuse: malformed, oversized, unauthenticated, replayed."""
