"""Secrets never reach logs: a traceback is logged without the frames' local variables.

structlog's traceback renderers can print every local of every frame (its dict
transformer does by default, rich and better-exceptions on a console too), and a node's
frames hold keys: the node seed, the dedup secret, a packet's cipher key.  A log file is
read, shipped and kept by people who must never hold those.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator

import pytest

from gridnode.log import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore_suite_logging() -> Iterator[None]:
    yield
    configure_logging("warning", json=False)  # what tests/conftest.py sets for the suite


def _seal(chunk: bytes, key: bytes) -> bytes:
    key_hex = key.hex()  # a second local form of the key, as code often holds one
    if len(chunk) < len(key_hex):
        raise ValueError("chunk too short to seal")
    return chunk


def _forms(key: bytes) -> list[str]:
    """How the key would look in a line: hex, and the start of its repr (as printed and as
    JSON escapes it); the start survives structlog's truncation of long locals."""
    fragment = repr(key)[2:26]
    return [key.hex(), fragment, fragment.replace("\\", "\\\\")]


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "console"])
def test_a_logged_traceback_shows_no_key_bytes(as_json: bool) -> None:
    out = io.StringIO()
    configure_logging("info", json=as_json, stream=out)
    key = secrets.token_bytes(32)
    try:
        _seal(b"short", key)
    except ValueError:
        get_logger(actor="test").exception("sealing_failed")
    text = out.getvalue()
    # The traceback itself is there (where it failed and why): only the locals are not.
    assert "sealing_failed" in text
    assert "chunk too short to seal" in text
    assert "_seal" in text
    for form in _forms(key):
        assert form not in text
