"""File names are bytes; people and JSON read text.  This module is the one bridge.

A Linux file name is any byte string without ``/`` and NUL, and nothing obliges it to be
UTF-8: a directory called ``bad-\\xff-name`` is a perfectly good directory.  So a backup
carries every path as bytes from the scanner through the catalog and the data assembly
record to the restore, and only turns a name into text to *show* it.

The text form (:func:`escape`) is UTF-8 where the bytes are valid UTF-8, ``\\xHH`` for
each byte that is not, and ``\\\\`` for a backslash, so that it round-trips exactly
(:func:`unescape`): what ``ls --json`` prints can be given back to ``ls`` or
``restore --path``.  A name that is valid UTF-8 and has no backslash (nearly all of them)
looks the same in both forms.
"""

from __future__ import annotations

import os
import re
from typing import Final

__all__ = ["escape", "from_arg", "unescape"]

_ESCAPE: Final = re.compile(rb"\\(\\|x[0-9a-fA-F]{2})")


def escape(name: bytes) -> str:
    """The display (and JSON) form of a path: lossless, readable, pure text."""
    return name.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def unescape(text: str) -> bytes:
    """The bytes an escaped path stands for; the inverse of :func:`escape`.

    A string that came from the command line may hold undecodable bytes as surrogates
    (Python's ``surrogateescape``); those are turned back into the bytes they were.
    """
    raw = os.fsencode(text)

    def one(match: re.Match[bytes]) -> bytes:
        body = match.group(1)
        return b"\\" if body == b"\\" else bytes([int(body[1:], 16)])

    return _ESCAPE.sub(one, raw)


def from_arg(text: str, known: set[bytes] | None = None) -> bytes:
    """A path a user typed: the literal bytes when they name something, else unescaped.

    ``$'bad-\\xff'`` in a shell hands the real byte to the program, while a name copied from
    ``ls`` output arrives escaped; both must find the same entry.  ``known`` is the set of
    paths to try the literal form against (without it, the literal form is taken only when
    it holds no escape at all).
    """
    literal = os.fsencode(text)
    if known is not None and literal in known:
        return literal
    if known is None and not _ESCAPE.search(literal):
        return literal
    return unescape(text)
