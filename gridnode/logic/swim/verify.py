"""Signature checks within budgets (Rules 4 and 4a).

Signature checks are the expensive part of gossip, so they are budgeted: at most
``max_verifications_per_message`` per message (or per tick), and token buckets per
authenticated sender (``peer_verify_per_s``, ``peer_verify_burst``) and overall
(``verify_per_s``, ``verify_burst``).  An update that would exceed a budget waits in
a bounded queue (``max_pending_per_peer``, ``max_pending_updates``) and is applied
by later ticks; beyond that it is dropped and counted (anti-entropy brings it
again).  Verdicts are cached by digest: validity is a property of the bytes.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, MutableMapping
from typing import Final

import attrs

from protocol import (
    MemberRecord,
    MemberUpdate,
    claim_digest,
    claim_is_valid,
    record_digest,
    record_is_valid,
)

from .context import Context, trim

__all__ = ["Bucket", "OverBudget", "Verifier"]

_OWN_VERIFY_CACHE_MAX: Final = 1 << 16


@attrs.define(slots=True)
class Bucket:
    """A token bucket: ``tokens`` as of time ``at``."""

    tokens: float
    at: float

    def refill(self, now: float, rate: float, burst: float) -> None:
        if now > self.at:
            self.tokens = min(burst, self.tokens + (now - self.at) * rate)
            self.at = now

    def ready_at(self, rate: float) -> float:
        """When one token will be there (``at`` itself when one already is)."""
        return self.at if self.tokens >= 1.0 else self.at + (1.0 - self.tokens) / rate


class OverBudget(Exception):
    """A signature check would exceed a budget (Rule 4a): the update has to wait."""


class Verifier:
    """Rule 4a's budgets, the verdict cache and the queue of updates waiting for both.

    ``sender`` and ``msg_budget`` describe the message (or tick) being served: who
    caused the checks now being made, and how many more it may cause.
    """

    def __init__(
        self,
        ctx: Context,
        verify_cache: MutableMapping[bytes, bool] | None,
        admit: Callable[[MemberRecord], bool] | None,
    ) -> None:
        cfg = ctx.cfg
        self._ctx = ctx
        self._own_cache = verify_cache is None
        self.cache: MutableMapping[bytes, bool] = verify_cache if verify_cache is not None else {}
        #: The grid's admission rule for member records (a valid subscription
        #: certificate); None admits every correctly signed record (an open grid).
        self._admit = admit
        self.sender: bytes | None = None
        self.msg_budget = cfg.max_verifications_per_message
        self._buckets: dict[bytes | None, Bucket] = {}
        self._global_bucket = Bucket(tokens=float(cfg.verify_burst), at=ctx.now)
        self.pending: dict[bytes | None, collections.deque[MemberUpdate]] = {}
        self.pending_total = 0

    def start(self, sender: bytes | None) -> None:
        """A new message from ``sender``: its checks get a fresh per-message budget."""
        self.sender = sender
        self.msg_budget = self._ctx.cfg.max_verifications_per_message

    def verify(self, key: bytes, check: Callable[[], bool]) -> bool:
        """A signature verdict from the cache, or checked now within the budgets (Rule 4a).

        Raises:
            OverBudget: a fresh check would exceed this message's, the sender's or the
                node's budget.  Callers check signatures before they change anything,
                so the whole update can simply be applied again later.
        """
        cache = self.cache
        ok = cache.get(key)
        if ok is not None:
            return ok
        self._spend()
        if self._own_cache and len(cache) >= _OWN_VERIFY_CACHE_MAX:
            cache.clear()
        ok = check()
        cache[key] = ok
        return ok

    def _spend(self) -> None:
        cfg = self._ctx.cfg
        now = self._ctx.now
        if self.msg_budget < 1:
            raise OverBudget
        overall = self._global_bucket
        overall.refill(now, cfg.verify_per_s, cfg.verify_burst)
        bucket = self._buckets.get(self.sender)
        if bucket is None:
            bucket = Bucket(tokens=float(cfg.peer_verify_burst), at=now)
        else:
            bucket.refill(now, cfg.peer_verify_per_s, cfg.peer_verify_burst)
        if overall.tokens < 1.0 or bucket.tokens < 1.0:
            raise OverBudget
        overall.tokens -= 1.0
        bucket.tokens -= 1.0
        self.msg_budget -= 1
        if self.sender not in self._buckets:

            def idle(b: Bucket) -> bool:
                b.refill(now, cfg.peer_verify_per_s, cfg.peer_verify_burst)
                return b.tokens >= cfg.peer_verify_burst

            trim(self._buckets, idle)
            self._buckets[self.sender] = bucket

    def verified(self, record: MemberRecord) -> bool:
        ok = self.verify(record_digest(record), lambda: record_is_valid(record))
        if not ok:
            self._ctx.n["forged"] += 1
        elif self._admit is not None and not self._admit(record):
            self._ctx.n["unadmitted"] += 1
            return False
        return ok

    def claim_verified(self, update: MemberUpdate) -> bool:
        ok = self.verify(claim_digest(update), lambda: claim_is_valid(update))
        if not ok:
            self._ctx.n["forged_claims"] += 1
        return ok

    def defer(self, sender: bytes | None, update: MemberUpdate) -> None:
        """Rule 4a: keep an update until the budgets allow its signature checks."""
        cfg = self._ctx.cfg
        queue = self.pending.get(sender)
        if self.pending_total >= cfg.max_pending_updates or (
            queue is not None and len(queue) >= cfg.max_pending_per_peer
        ):
            self._ctx.n["over_budget"] += 1
            return
        if queue is None:
            queue = self.pending[sender] = collections.deque()
        queue.append(update)
        self.pending_total += 1
        self._ctx.n["deferred"] += 1

    def drain(self, now: float, apply: Callable[[float, MemberUpdate], None]) -> None:
        """Apply waiting updates, one sender after another, within one tick's budget."""
        self.msg_budget = self._ctx.cfg.max_verifications_per_message
        # Bounded: every pass applies at least one update or ends the loop.
        for _ in range(self.pending_total):
            progressed = False
            for sender in list(self.pending):
                queue = self.pending[sender]
                self.sender = sender
                try:
                    apply(now, queue[0])
                except OverBudget:
                    continue
                queue.popleft()
                self.pending_total -= 1
                progressed = True
                if not queue:
                    del self.pending[sender]
            if not progressed or not self.pending:
                break
        self.sender = None

    def ready_at(self) -> float:
        """When a waiting update may next get a signature check."""
        cfg = self._ctx.cfg
        now = self._ctx.now
        overall = self._global_bucket
        overall.refill(now, cfg.verify_per_s, cfg.verify_burst)
        soonest = math.inf
        for sender in self.pending:
            bucket = self._buckets.get(sender)
            if bucket is None:
                soonest = now
                break
            bucket.refill(now, cfg.peer_verify_per_s, cfg.peer_verify_burst)
            soonest = min(soonest, bucket.ready_at(cfg.peer_verify_per_s))
        return max(soonest, overall.ready_at(cfg.verify_per_s))
