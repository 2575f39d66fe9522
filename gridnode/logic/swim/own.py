"""Our own record (Rule 3): changes, refutations and the graceful leave, all re-signed here.

A member that hears itself suspected or declared dead at its current incarnation
(or newer, a leftover of a previous life) refutes: it signs its record again with a
higher incarnation and gossips it.  Own changes (``update_self``) are disseminated
at most once per ``self_update_min_interval_s``; the latest value wins.
"""

from __future__ import annotations

import math
from typing import Any, Final

import attrs

from protocol import (
    GossipLeave,
    LocalProtocolError,
    MemberRecord,
    MemberUpdate,
    encode,
    sign_record,
)

from .context import Context
from .digest import DigestIndex
from .dissemination import Dissemination
from .location import Locations
from .records import ALIVE, LEFT, SUSPECT, Outgoing
from .table import MemberTable

__all__ = ["RECORD_FIELDS", "UNSETTABLE", "OwnRecord", "check_wire", "record_fields"]

UNSETTABLE: Final = frozenset({"node_id", "signature", "sequence", "incarnation", "leaving"})
RECORD_FIELDS: Final = tuple(f.name for f in attrs.fields(MemberRecord) if f.name != "signature")


def check_wire(record: MemberRecord) -> None:
    """Our own record must pass the bounds we impose on everyone else's, or no peer
    would ever accept it; better to refuse it here than fail on every send."""
    try:
        encode(GossipLeave(record=record))
    except LocalProtocolError as exc:
        raise ValueError(f"member record refused by the wire format: {exc}") from None


def record_fields(rec: MemberRecord) -> dict[str, Any]:
    return {name: getattr(rec, name) for name in RECORD_FIELDS}


class OwnRecord:
    """Signs and announces our own record; ``dirty`` marks a change not yet sent."""

    def __init__(
        self,
        ctx: Context,
        table: MemberTable,
        digest: DigestIndex,
        dissemination: Dissemination,
        locations: Locations,
    ) -> None:
        self._ctx = ctx
        self._table = table
        self._digest = digest
        self._diss = dissemination
        self._loc = locations
        self.dirty = False
        self.sent_at = -math.inf

    def due_at(self) -> float:
        """When a held-back change of our record may go out (inf when there is none)."""
        if not self.dirty:
            return math.inf
        return self.sent_at + self._ctx.cfg.self_update_min_interval_s

    def set_record(self, record: MemberRecord) -> None:
        self._ctx.self_record = record
        self._ctx.self_update = MemberUpdate(record=record, state=LEFT if record.leaving else ALIVE)
        self._digest.touch(self._ctx.node_id)

    def disseminate(self, now: float) -> None:
        self.dirty = False
        self.sent_at = now
        self._diss.self_broadcast = self._ctx.self_update
        self._diss.queue_update(self._ctx.node_id, b"")

    def refute(self, incarnation: int) -> None:
        fields = record_fields(self._ctx.self_record)
        fields["incarnation"] = max(fields["incarnation"], incarnation) + 1
        fields["sequence"] += 1
        self.set_record(sign_record(self._ctx.key, **fields))
        self._ctx.n["refutations"] += 1
        # Being suspected hints that our own network or CPU is struggling (Lifeguard).
        self._ctx.awareness = min(
            self._ctx.awareness + 1, self._ctx.cfg.awareness_max_multiplier - 1
        )
        self.disseminate(self._ctx.now)

    def update_self(self, now: float, **changes: Any) -> None:
        """Change our own record (``free_bytes=...``); re-signed with ``sequence + 1``.

        Dissemination is rate-limited to once per ``self_update_min_interval_s``; the
        latest value wins.

        Raises:
            ValueError: for identity, ordering or leave fields, which are not ours to set
                here, unknown fields, or values outside the wire format's bounds.
        """
        self._ctx.now = now
        bad = sorted(set(changes) & UNSETTABLE)
        if bad:
            raise ValueError(f"update_self cannot change {', '.join(bad)}")
        unknown = sorted(set(changes) - set(RECORD_FIELDS))
        if unknown:
            raise ValueError(f"unknown member record field(s) {', '.join(unknown)}")
        current = record_fields(self._ctx.self_record)
        fields = {**current, **changes}
        if fields == current:
            return
        fields["sequence"] = current["sequence"] + 1
        moved = (fields["lat"], fields["lon"]) != (current["lat"], current["lon"])
        record = sign_record(self._ctx.key, **fields)
        check_wire(record)
        self.set_record(record)
        if moved:
            self._loc.recheck_all()
        if now >= self.sent_at + self._ctx.cfg.self_update_min_interval_s:
            self.disseminate(now)
        else:
            self.dirty = True

    def leave(self, now: float) -> list[Outgoing]:
        """Announce a graceful leave: sign ``leaving=True`` and push it to some members.

        Probing and anti-entropy stop; gossip rounds go on so the news spreads while
        the driver lets the node linger.
        """
        self._ctx.now = now
        out: list[Outgoing] = []
        if self._ctx.leaving:
            return out
        self._ctx.leaving = True
        fields = record_fields(self._ctx.self_record)
        fields["sequence"] += 1
        fields["leaving"] = True
        self.set_record(sign_record(self._ctx.key, **fields))
        self.disseminate(now)
        message = GossipLeave(record=self._ctx.self_record)
        for node_id in self._table.random_members(self._diss.retransmit_limit(), (ALIVE, SUSPECT)):
            self._table.send_to_member(out, node_id, message)
        return out
