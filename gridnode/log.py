"""structlog configuration: human on a terminal, JSON lines otherwise.

Configured once per process (style.md 5.6/5.7).  A running node logs at info unless its
``log_level`` key or ``run --log-level`` says otherwise: what it does (members coming
and going, jobs, a periodic ``node_summary``, see ``gridnode.summary``) is what its
operator reads.  The CLI's one-shot commands log at warning (``GRIDNODE_LOG_LEVEL``):
their output is their result.  Every actor binds ``node``,
``actor`` and, per connection, ``peer`` so one grep follows one request across
actors; bindings flow down to child tasks through contextvars, never up.

Tracebacks are rendered without the frames' local variables, in both formats: a node's
frames hold its seed, its dedup secret and packet keys, and a log is read, shipped and
kept by people who must never see those.  structlog's defaults would print them (its
dict transformer shows locals unless told not to, and the console picks rich or
better-exceptions, which do too, whenever they happen to be installed), so both
renderers are pinned here rather than left to whatever is importable.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


#: ``exc_info`` as structured frames (file, line, function), never their locals.
_JSON_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def level_number(name: str) -> int:
    try:
        return _LEVELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r} (use {', '.join(_LEVELS)})") from None


def configure_logging(
    level: str = "warning", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Set up structlog for this process.  ``json=None`` picks by whether stderr is a TTY."""
    out = stream if stream is not None else sys.stderr
    use_json = (not out.isatty()) if json is None else json
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors += [_JSON_TRACEBACKS, structlog.processors.JSONRenderer()]
    else:
        processors += [
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level_number(level)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(**bindings: Any) -> Any:
    """A lazy logger: modules create theirs at import, before ``configure_logging`` runs,
    so it must resolve the configuration on first use, not now (``bind()`` on structlog's
    proxy would freeze the defaults: info level, console format)."""
    return structlog.get_logger(**bindings)
