"""Merging updates into the view (Rules 2a, 3, 4, 5a and 5c).

Records are owner-signed.  A record newer than the one held is verified before it
is used; a bad signature is dropped and counted, an older record ignored.  ``left``
needs the owner's own record with ``leaving`` set.  Suspect and dead claims are
signed by their reporter; a claim counts only when its proof verifies and its
reporter is a member held alive or suspect here, other than the subject; each
reporter counts once per suspicion.  A claim about ourselves is always refuted.
Every signature check comes before any change of state, so an update over budget
(Rule 4a) is simply retried whole.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol import MemberRecord, MemberUpdate

from .accusers import Accusers
from .context import Context
from .digest import DigestIndex
from .dissemination import Dissemination
from .location import Locations
from .own import OwnRecord
from .records import ALIVE, CLAIMS, GONE, LEFT, SUSPECT, Member
from .suspicion import Suspicions
from .table import MemberTable
from .verify import OverBudget, Verifier

__all__ = ["Merger"]


class Merger:
    """Applies gossip updates to the member table and starts what they call for."""

    def __init__(
        self,
        *,
        ctx: Context,
        table: MemberTable,
        verifier: Verifier,
        accusers: Accusers,
        suspicions: Suspicions,
        dissemination: Dissemination,
        digest: DigestIndex,
        locations: Locations,
        own: OwnRecord,
    ) -> None:
        self._ctx = ctx
        self._table = table
        self._verifier = verifier
        self._accusers = accusers
        self._susp = suspicions
        self._diss = dissemination
        self._digest = digest
        self._loc = locations
        self._own = own
        #: Rule 5c: the updates being applied came in a state or digest answer.
        self._quietly = False

    def apply_all(
        self,
        now: float,
        sender: bytes | None,
        updates: Iterable[MemberUpdate],
        quietly: bool = False,
    ) -> None:
        """``quietly``: records from a state or digest answer (Rule 5c)."""
        self._quietly = quietly
        try:
            for update in updates:
                try:
                    self.apply(now, update)
                except OverBudget:
                    self._verifier.defer(sender, update)
        finally:
            self._quietly = False

    def apply(self, now: float, update: MemberUpdate) -> None:
        """Merge one update.  Every signature check comes before any change of state
        (Rule 4a: an update over budget is retried whole)."""
        record = update.record
        node_id = record.node_id
        if node_id == self._ctx.node_id:
            self._apply_about_self(now, update)
            return
        member = self._table.overlay.get(node_id)
        if member is None:
            if node_id not in self._table.forgotten:
                shared = self._table.shared.updates.get(node_id)
                if shared is not None:
                    if update is shared or update == shared:
                        return
                    member = self._table.materialize(node_id)
        elif update is member.update:
            return
        state = update.state
        if record.leaving:
            state = LEFT  # the owner's own word outranks anyone's claim
        elif state == LEFT:
            self._ctx.n["invalid"] += 1  # "left" without the owner's signed leaving record
            return
        if member is None:
            self._learn(now, update, state)
            return
        known = member.record
        record_version = (record.incarnation, record.sequence)
        known_version = (known.incarnation, known.sequence)
        newer = False
        if record_version > known_version:
            if not self._verifier.verified(record):
                return
            newer = True
        elif record_version == known_version:
            if record is not known and record != known:
                # Same version, other content: a forgery, or an owner signing twice.
                if self._verifier.verified(record):
                    self._ctx.n["stale"] += 1
                return
        elif not (state in CLAIMS and record.incarnation == known.incarnation):
            self._ctx.n["stale"] += 1
            if state in CLAIMS and member.state == ALIVE:
                self._diss.regossip(node_id)
            return
        self._merge(now, node_id, member, update, state, newer)

    def _learn(self, now: float, update: MemberUpdate, state: str) -> None:
        """A member we do not know: only its owner's "alive" is worth keeping.

        Claims about unknown members are ignored (as memberlist does): otherwise a
        member reaped here but not yet elsewhere would come back as a suspect and
        bounce between the views for as long as the reapers are out of step.
        """
        if state != ALIVE:
            return
        record = update.record
        if not self._verifier.verified(record):
            return
        node_id = record.node_id
        member = Member(record=record, state=ALIVE, state_since=now)
        self._table.overlay[node_id] = member
        if node_id in self._table.forgotten:
            self._table.forgotten.discard(node_id)
        elif node_id not in self._table.shared and node_id not in self._table.extra_set:
            self._table.extra_set.add(node_id)
            self._table.extra_ids.append(node_id)
        self._table.counts[ALIVE] += 1
        self._ctx.version += 1
        self._digest.touch(node_id)
        member.update = update if update.state == ALIVE and not update.reporter else None
        if not self._quietly:
            self._diss.queue_update(node_id, b"")

    def _judge_claim(
        self, now: float, node_id: bytes, current: str, update: MemberUpdate
    ) -> bool | None:
        """Rules 2a and 2b: does this suspect/dead claim count, the subject being
        ``current`` here?

        False: it changes nothing (already counted, a reporter we do not hold alive or
        suspect, a rate-limited one); None: forged, and nothing of the update is used.
        The cheap tests come first, so only a claim that would count costs a check.
        """
        reporter = update.reporter
        if current in GONE or reporter == self._ctx.node_id:
            return False
        if current == SUSPECT:
            suspicion = self._susp.suspicions.get(node_id)
            if suspicion is None or not suspicion.would_confirm(reporter):
                return False
        if reporter == node_id or self._table.state_of(reporter) not in (ALIVE, SUSPECT):
            return False
        if self._accusers.limited(now, reporter):
            self._ctx.n["rate_limited"] += 1
            return False
        if not self._verifier.claim_verified(update):
            return None
        return True

    def _merge(
        self,
        now: float,
        node_id: bytes,
        member: Member,
        update: MemberUpdate,
        state: str,
        newer: bool,
    ) -> None:
        record = update.record
        current = member.state
        refutes = newer and (record.incarnation > member.record.incarnation or current == LEFT)
        # A claim about a newer incarnation than the suspicion or death held here: the
        # subject has refuted since, so what we hold is over (its claims are signed for
        # the old incarnation) and this claim is news about a live member.
        renewed = refutes and state in CLAIMS and current in CLAIMS
        counts: bool | None = False
        if state in CLAIMS:
            counts = self._judge_claim(now, node_id, ALIVE if renewed else current, update)
            if counts is None:
                return
        if newer:
            self._set_record(member, record)
        if renewed:
            self._susp.refuted(now, node_id, member, current)
            current = ALIVE
        if state == ALIVE:
            if not newer:
                return
            if current != ALIVE and refutes:
                self._susp.refuted(now, node_id, member, current)
            if refutes or current != ALIVE or self._diss.relays_refreshes():
                self._diss.queue_update(node_id, member.reporter)
        elif state in CLAIMS:
            # A "dead" claim counts as one more confirmation: Rule 2.
            if counts:
                claim = (update.state, update.proof)
                if current == ALIVE:
                    self._susp.suspect(now, node_id, member, update.reporter, claim)
                else:
                    suspicion = self._susp.suspicions.get(node_id)
                    if suspicion is not None and suspicion.confirm(update.reporter, claim):
                        self._diss.queue_update(node_id, update.reporter)
                self._accusers.heard(now, update.reporter)
            elif newer and current not in GONE:
                self._diss.queue_update(node_id, member.reporter)
        else:  # left
            if current == LEFT and not newer:
                return
            self._susp.set_state(now, node_id, member, LEFT)
            self._diss.queue_update(node_id, b"")
        if self._is_held(member, update):
            member.update = update

    @staticmethod
    def _is_held(member: Member, update: MemberUpdate) -> bool:
        """Is ``update`` exactly what we would gossip about ``member`` (so it is reused)?"""
        if update.record is not member.record:
            return False
        if member.state in CLAIMS:
            return (
                update.reporter == member.reporter
                and update.state == member.claim_state
                and update.proof == member.proof
            )
        return update.state == member.state and not update.reporter and not update.proof

    def _apply_about_self(self, now: float, update: MemberUpdate) -> None:
        """Rule 3: refute suspicion, death, a stale leave or a record of a past life."""
        if self._ctx.leaving:
            return
        record = update.record
        mine = self._ctx.self_record
        version = (record.incarnation, record.sequence)
        mine_version = (mine.incarnation, mine.sequence)
        # Newer than ours, or the same version with other content: a record signed in
        # a previous life of this node (a restart that lost its counters).
        if version > mine_version or (
            version == mine_version and record is not mine and record != mine
        ):
            if self._verifier.verified(record):
                self._own.refute(record.incarnation)
            return
        claim = update.state in CLAIMS and not record.leaving
        if not claim and not record.leaving:
            return
        if record.incarnation < mine.incarnation:
            self._diss.regossip(self._ctx.node_id)  # its sender missed our refutation
            return
        if claim:
            # Always refuted when genuine, even from a rate-limited reporter (Rule 2b):
            # others may have heard it.  Unsigned or forged, it costs us nothing more.
            if update.reporter == self._ctx.node_id or not self._verifier.claim_verified(update):
                return
            self._own.refute(record.incarnation)
            if self._table.state_of(update.reporter) is not None:
                self._accusers.strike(now, update.reporter)
        elif self._verifier.verified(record):  # a leave of ours, signed in a past life
            self._own.refute(record.incarnation)

    def _set_record(self, member: Member, record: MemberRecord) -> None:
        old = member.record
        member.record = record
        self._ctx.version += 1
        self._digest.touch(record.node_id)
        if member.rtts_ms and (old.lat, old.lon) != (record.lat, record.lon):
            self._loc.recheck(member)
