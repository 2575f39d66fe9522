"""False accusers (Rule 2b): strikes, and the rate limit they earn.

A reporter is struck for a false accusation when a suspicion it made or confirmed
is refuted, or when it accuses this member.  With ``accuser_strike_limit`` strikes
inside ``accuser_strike_window_s`` its claims are accepted at most once per
``accuser_cooldown_s`` (none for that long after a strike) and the rest are dropped
and counted.
"""

from __future__ import annotations

import collections
import math

import attrs

from .context import Context, trim

__all__ = ["Accuser", "Accusers"]


@attrs.define(slots=True)
class Accuser:
    """Rule 2b: when one reporter's latest false accusations were, and when its next
    claim may count."""

    strikes: collections.deque[float]
    allowed_at: float = -math.inf


class Accusers:
    """The reporters with recent false accusations, bounded like every per-peer table."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._accusers: dict[bytes, Accuser] = {}

    def _at_limit(self, accuser: Accuser, now: float) -> bool:
        strikes = accuser.strikes
        return (
            len(strikes) >= self._ctx.cfg.accuser_strike_limit
            and now - strikes[0] < self._ctx.cfg.accuser_strike_window_s
        )

    def limited(self, now: float, reporter: bytes) -> bool:
        accuser = self._accusers.get(reporter)
        return accuser is not None and self._at_limit(accuser, now) and now < accuser.allowed_at

    def heard(self, now: float, reporter: bytes) -> None:
        """A claim of ``reporter`` counted: a limited reporter waits before the next."""
        accuser = self._accusers.get(reporter)
        if accuser is not None and self._at_limit(accuser, now):
            accuser.allowed_at = now + self._ctx.cfg.accuser_cooldown_s

    def strike(self, now: float, reporter: bytes) -> None:
        cfg = self._ctx.cfg
        accuser = self._accusers.get(reporter)
        if accuser is None:
            window = cfg.accuser_strike_window_s
            trim(self._accusers, lambda a: not a.strikes or now - a.strikes[-1] >= window)
            accuser = Accuser(strikes=collections.deque(maxlen=cfg.accuser_strike_limit))
            self._accusers[reporter] = accuser
        accuser.strikes.append(now)
        self._ctx.n["false_accusations"] += 1
        if self._at_limit(accuser, now):
            accuser.allowed_at = max(accuser.allowed_at, now + cfg.accuser_cooldown_s)
