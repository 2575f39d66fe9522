"""Errors the node's I/O raises to its actors and CLI.

Transport failures collapse into a few types (tractor's ``TransportClosed`` lesson) so
that callers decide by meaning, not by which library raised: a peer that vanished, a
request that timed out, a peer that answered "no" with a code.
"""

from __future__ import annotations

__all__ = [
    "GridError",
    "HandshakeFailed",
    "PeerError",
    "PeerGone",
    "RemoteError",
    "RequestTimeout",
    "UserError",
]


class GridError(Exception):
    """Base class of gridnode's own errors; ``str(e)`` is a sentence for the user."""


class UserError(Exception):
    """A value someone gave (a config key, a key file) that cannot be used: the message is
    for them as it is.  ``ConfigError`` and ``KeyError_`` are also ``ValueError``s; this
    base lets the CLI catch them without importing the modules that define them."""


class PeerError(GridError):
    """A request to a peer did not produce an answer."""

    def __init__(self, message: str, *, peer: str = "") -> None:
        super().__init__(message)
        self.peer = peer


class PeerGone(PeerError):
    """The connection closed (or could not be opened) before the answer arrived."""


class RequestTimeout(PeerError):
    """The peer did not answer within the request's deadline."""


class HandshakeFailed(PeerError):
    """The peer could not be authenticated (wrong grid, bad signature, ...)."""

    def __init__(self, message: str, *, peer: str = "", code: str = "handshake") -> None:
        super().__init__(message, peer=peer)
        self.code = code


class RemoteError(PeerError):
    """The peer answered with an ``Error`` message: ``code`` is machine-readable."""

    def __init__(self, code: str, message: str, *, peer: str = "") -> None:
        super().__init__(f"{message} ({code})" if message else code, peer=peer)
        self.code = code
        self.remote_message = message
