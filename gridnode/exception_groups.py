"""Exception groups at a job's boundary: helpers shared by actors and jobs.

trio wraps every exception that leaves a nursery in an ``ExceptionGroup`` (strict
exception groups).  Inside one job, a nursery is an implementation detail: the caller
wants "the chunk is unavailable", not a group of one.  ``collapse_groups`` turns a group
whose only non-cancellation member is one exception back into that exception, so
``except ChunkUnavailable`` works at the job boundary.  Groups that are all
cancellations are left alone for trio to handle.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["collapse_groups", "leaves"]


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            out.extend(leaves(inner))
        return out
    return [exc]


@contextmanager
def collapse_groups() -> Iterator[None]:
    try:
        yield
    except BaseExceptionGroup as group:
        real = [e for e in leaves(group) if not isinstance(e, trio.Cancelled)]
        if not real:
            raise
        first = real[0]
        raise first from (group if len(real) > 1 else None)
