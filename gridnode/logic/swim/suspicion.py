"""Suspicion and death (Rules 2 and 7), with Lifeguard's dynamic suspicion timeout.

A suspicion refers to the subject's incarnation.  It expires into ``dead`` after a
timeout that starts at ``suspicion_max_timeout_mult`` times the minimum and shrinks
towards the minimum (``suspicion_mult * log10(N) * probe_interval``) with each
independent confirmation.  Only this member's own timer declares a death.  Dead and
left members are forgotten ``dead_reap_s`` after the transition (Rule 7).  Every
change of a member's state goes through ``set_state``, which keeps the counts, the
digest and the reaping schedule in step.
"""

from __future__ import annotations

import math

from protocol import sign_claim

from .accusers import Accusers
from .context import Context
from .digest import DigestIndex
from .dissemination import Dissemination
from .records import ALIVE, DEAD, GONE, SUSPECT, Member, Suspicion
from .table import MemberTable

__all__ = ["Suspicions"]


class Suspicions:
    """The Lifeguard timers (``suspicions``, shared with dissemination) and the reaper.

    ``reap_at`` holds when each dead or left member is forgotten.
    """

    def __init__(
        self,
        ctx: Context,
        table: MemberTable,
        digest: DigestIndex,
        dissemination: Dissemination,
        accusers: Accusers,
        suspicions: dict[bytes, Suspicion],
    ) -> None:
        self._ctx = ctx
        self._table = table
        self._digest = digest
        self._diss = dissemination
        self._accusers = accusers
        self.suspicions = suspicions
        self.reap_at: dict[bytes, float] = {}

    def refuted(self, now: float, node_id: bytes, member: Member, current: str) -> None:
        """The subject signed a higher incarnation: alive again, its accusers were wrong."""
        if current == SUSPECT:
            self._ctx.n["suspicions_refuted"] += 1
            self._strike_suspectors(now, node_id)
        self.set_state(now, node_id, member, ALIVE)

    def _strike_suspectors(self, now: float, node_id: bytes) -> None:
        """The subject refuted: everyone who suspected or confirmed it was wrong."""
        suspicion = self.suspicions.get(node_id)
        if suspicion is not None:
            for reporter in suspicion.reporters:
                if reporter != self._ctx.node_id:
                    self._accusers.strike(now, reporter)

    def own_claim(self, member: Member, state: str) -> tuple[str, bytes]:
        record = member.record
        return state, sign_claim(self._ctx.key, record.node_id, record.incarnation, state)

    def set_state(
        self,
        now: float,
        node_id: bytes,
        member: Member,
        state: str,
        reporter: bytes = b"",
        claim: tuple[str, bytes] = ("", b""),
    ) -> None:
        old = member.state
        member.reporter = reporter
        member.claim_state, member.proof = claim
        if old == state:
            return
        self._table.counts[old] -= 1
        self._table.counts[state] += 1
        member.state = state
        member.state_since = now
        self._ctx.version += 1
        self._digest.touch(node_id)
        if self._ctx.on_state_change is not None:
            self._ctx.on_state_change(node_id, old, state)
        if old == SUSPECT:
            self.suspicions.pop(node_id, None)
        if state in GONE:
            self.reap_at[node_id] = now + self._ctx.cfg.dead_reap_s
        elif old in GONE:
            self.reap_at.pop(node_id, None)

    def suspect(
        self,
        now: float,
        node_id: bytes,
        member: Member,
        reporter: bytes,
        claim: tuple[str, bytes],
    ) -> None:
        """Rule 2: start a Lifeguard suspicion timer."""
        cfg = self._ctx.cfg
        n = self._table.member_count()
        min_s = cfg.suspicion_mult * max(1.0, math.log10(max(1, n))) * cfg.probe_interval_s
        max_s = cfg.suspicion_max_timeout_mult * min_s
        wanted = cfg.suspicion_mult - 2
        if n - 2 < wanted:
            wanted = 0
        timeout = min_s if wanted < 1 else max_s
        self.set_state(now, node_id, member, SUSPECT, reporter, claim)
        self.suspicions[node_id] = Suspicion(
            start=now,
            min_s=min_s,
            max_s=max_s,
            wanted=wanted,
            reporters={reporter: claim},
            confirmations=0,
            deadline=now + timeout,
        )
        self._ctx.n["suspicions"] += 1
        self._diss.queue_update(node_id, reporter)

    def expire(self, now: float, node_id: bytes) -> None:
        member = self._table.overlay.get(node_id)
        self.suspicions.pop(node_id, None)
        if member is None or member.state != SUSPECT:
            return
        self._ctx.n["deaths"] += 1
        self.set_state(now, node_id, member, DEAD, self._ctx.node_id, self.own_claim(member, DEAD))
        self._diss.queue_update(node_id, self._ctx.node_id)

    def forget(self, node_id: bytes) -> None:
        """Rule 7."""
        del self.reap_at[node_id]
        member = self._table.overlay.pop(node_id, None)
        if member is None:
            return
        self._table.counts[member.state] -= 1
        if node_id in self._table.shared:
            self._table.forgotten.add(node_id)
        else:
            self._table.extra_set.discard(node_id)
            if len(self._table.extra_ids) > 2 * len(self._table.extra_set) + 64:
                self._table.extra_ids = [
                    i for i in self._table.extra_ids if i in self._table.extra_set
                ]
        self._ctx.n["reaped"] += 1
        self._ctx.version += 1
        self._digest.touch(node_id)
