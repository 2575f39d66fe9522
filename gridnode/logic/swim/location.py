"""Location plausibility (Rule 8) and the member views placement reads.

Probe round trips are recorded; a member whose claimed distance could not be
covered by light in fibre within its best recent round trip has an implausible
location: untrusted under ``enforce``, flagged under ``warn``, ignored under
``off``.  Under ``enforce`` a member is not trusted on location either until it has
at least one round-trip sample: a claim nothing has measured is no better than an
implausible one for a distance rule.
"""

from __future__ import annotations

from gridnode.logic.distance import haversine_km
from protocol import MemberRecord

from .context import Context
from .records import ALIVE, Member, MemberView
from .table import MemberTable

__all__ = ["Locations"]


class Locations:
    """Round-trip samples, the plausibility verdicts they give, and ``MemberView``s."""

    def __init__(self, ctx: Context, table: MemberTable) -> None:
        self._ctx = ctx
        self._table = table

    def _plausible(self, record: MemberRecord, rtts_ms: list[float] | None) -> bool:
        """Rule 8: can light in fibre cover the claimed distance in the best round trip?"""
        if self._ctx.cfg.location_check == "off" or not rtts_ms:
            return True
        distance = self.distance(record)
        if distance is None:
            return True
        return min(rtts_ms) * self._ctx.cfg.fibre_km_per_ms_rtt >= distance

    def distance(self, record: MemberRecord) -> float | None:
        mine = self._ctx.self_record
        if mine.lat is None or mine.lon is None or record.lat is None or record.lon is None:
            return None
        return haversine_km(mine.lat, mine.lon, record.lat, record.lon)

    def recheck(self, member: Member) -> None:
        plausible = self._plausible(member.record, member.rtts_ms)
        if plausible != member.plausible:
            member.plausible = plausible
            self._ctx.version += 1

    def recheck_all(self) -> None:
        self._ctx.version += 1  # every distance from us changed
        for member in self._table.overlay.values():
            if member.rtts_ms:
                self.recheck(member)

    def record_rtt(self, node_id: bytes, rtt_s: float) -> None:
        member = self._table.materialize(node_id)
        if member is None:
            return
        if not member.rtts_ms and self._ctx.cfg.location_check == "enforce":
            self._ctx.version += 1  # a first sample makes the location trustworthy (Rule 8)
        if member.rtts_ms is None:
            member.rtts_ms = []
        member.rtts_ms.append(rtt_s * 1000.0)
        if len(member.rtts_ms) > self._ctx.cfg.rtt_samples:
            del member.rtts_ms[0]
        self.recheck(member)

    def view(self, member: Member) -> MemberView:
        rtt = min(member.rtts_ms) if member.rtts_ms else None
        return MemberView(
            record=member.record,
            state=member.state,
            rtt_ms=rtt,
            distance_km=self.distance(member.record),
            location_trusted=self._ctx.cfg.location_check != "enforce"
            or (member.plausible and bool(member.rtts_ms)),
            location_plausible=member.plausible,
            state_since=member.state_since,
        )

    def view_of_shared(self, record: MemberRecord) -> MemberView:
        return MemberView(
            record=record,
            state=ALIVE,
            rtt_ms=None,
            distance_km=self.distance(record),
            # Never probed: nothing backs the claimed location yet (Rule 8).
            location_trusted=self._ctx.cfg.location_check != "enforce",
            location_plausible=True,
            state_since=self._table.t0,
        )
