"""Suite-wide settings: structlog quiet (warnings and errors still show)."""

from __future__ import annotations

from gridnode.log import configure_logging

configure_logging("warning", json=False)
