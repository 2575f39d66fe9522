"""Snapshot tags: short labels a backup is given (``backup --tag``) and a retention policy
can be limited to (``forget --keep-... --tag``), as in restic.

A tag is 1-64 printable characters without whitespace or commas: the comma is what
``forget --tag a,b`` splits on (a snapshot must carry both), so a tag cannot hold one.
The scheduler tags each snapshot it makes ``schedule:NAME`` (``SCHEDULE_PREFIX``): a
prefix rather than the bare name, so a tag a user types (``--tag home``) never pulls a
typed backup into a schedule's retention.  Such a tag may be ``len(SCHEDULE_PREFIX)``
longer than 64, since a schedule's name may itself be 64 characters.

Pure functions with no imports beyond the standard library: the thin CLI checks a tag
before it asks the node, and the node checks again (a control client need not be ours).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

__all__ = [
    "MAX_TAG_CHARS",
    "SCHEDULE_PREFIX",
    "TagError",
    "check_tag",
    "check_tags",
    "matches_filter",
    "parse_filter",
    "schedule_of",
    "schedule_tag",
]

MAX_TAG_CHARS: Final = 64
#: The tag the scheduler gives the snapshots of schedule ``NAME``: ``schedule:NAME``.
SCHEDULE_PREFIX: Final = "schedule:"


class TagError(ValueError):
    """A tag or tag filter that cannot be used; the message names it."""


def check_tag(tag: str) -> str:
    """``tag`` if it is a valid tag, else ``TagError``."""
    limit = MAX_TAG_CHARS + (len(SCHEDULE_PREFIX) if tag.startswith(SCHEDULE_PREFIX) else 0)
    if not 1 <= len(tag) <= limit:
        raise TagError(f"tag {tag!r}: must be 1-{MAX_TAG_CHARS} characters")
    if "," in tag or any(c.isspace() or not c.isprintable() for c in tag):
        raise TagError(f"tag {tag!r}: printable characters only, without whitespace or commas")
    return tag


def check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Each tag checked, duplicates dropped, order kept (as given)."""
    return tuple(dict.fromkeys(check_tag(t) for t in tags))


def parse_filter(values: Iterable[str]) -> tuple[frozenset[str], ...]:
    """``--tag`` values as restic reads them: each value is a group of comma-separated
    tags a snapshot must all carry; a snapshot matches when any group matches."""
    return tuple(frozenset(check_tags(v.split(","))) for v in values)


def matches_filter(tags: Sequence[str], groups: Sequence[frozenset[str]]) -> bool:
    """Whether a snapshot with ``tags`` passes the filter; no groups: every snapshot."""
    return not groups or any(group <= set(tags) for group in groups)


def schedule_tag(name: str) -> str:
    """The tag of the snapshots schedule ``name`` makes."""
    return check_tag(SCHEDULE_PREFIX + name)


def schedule_of(tags: Iterable[str]) -> str | None:
    """The name of the schedule a snapshot's tags say made it (None: none)."""
    for tag in tags:
        if tag.startswith(SCHEDULE_PREFIX) and len(tag) > len(SCHEDULE_PREFIX):
            return tag[len(SCHEDULE_PREFIX) :]
    return None
