"""``gridnode check``: how close each snapshot is to loss, without downloading a packet.

``verify`` fetches every packet of a snapshot: the truth, at the price of a full
download.  ``check`` answers from what this node already knows:

* the **member view** (gossip): a holder counts only while it is alive there, suspect
  included (a suspicion is a missed probe, refuted within seconds by a live member: the
  automatic repair counts such a holder present too); a member declared dead, one that
  left and one the view does not have do not count;
* the **storage audits** (``gridnode.audit``): a holder the audits distrust counts as
  not holding anything, present or not (it lost or spoiled packets it was given), and of
  the packets that count, those on holders whose latest proof passed within
  ``AUDIT_WINDOW_S`` (and no failure since) are reported as *audited*: seen held lately,
  not merely promised by a live member;
* the **catalog**: which holder has which packet of which chunk, and each chunk's k-of-n.

For every complete snapshot it reports its weakest chunk (fewest surviving packets
beyond its k) and how many of its chunks reached the repair threshold: as many
packets gone as ``repair_threshold`` (at most n - k), the point where the automatic
repair (``gridnode.repair``) acts once the holders have been gone ``repair_after_s``.
The counting is one SQL pass over the catalog in a worker thread
(``gridnode.storage.survival``).

``--repair`` then runs the existing targeted repair (``repair.repair_holders``, the
automatic repair's own) on the holders that did not count, for the chunks at the
threshold, and checks again: the result says what was rebuilt and which snapshots are
still below.  A chunk with fewer losses keeps them, as the automatic repair would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from protocol import format_node_id, short_node_id

from .audit import AuditScores
from .job_services import Services
from .log import get_logger
from .repair import repair_holders
from .storage.records import SnapshotRecord
from .storage.survival import SnapshotSurvival, Survival

__all__ = ["AUDIT_WINDOW_S", "Checker", "HolderVerdicts", "passed_lately"]

_log = get_logger(actor="request")

#: How recent a passed proof must be for the packets of its holder to count as audited.
AUDIT_WINDOW_S: Final = 86400.0
#: Problems of a repair run repeated in the result (the backup log has the run).
_PROBLEMS_SHOWN: Final = 20


def passed_lately(scores: AuditScores, now: float, window_s: float) -> frozenset[bytes]:
    """Holders whose latest proof passed within ``window_s`` of ``now``, with no failed
    proof since."""
    since = now - window_s
    return frozenset(
        node_id
        for node_id, entry in scores.holders.items()
        if entry.last_passed >= since and entry.last_passed >= entry.last_failure
    )


@attrs.frozen
class HolderVerdicts:
    """This node's view of the grid at one moment: who is alive in the member view, whom
    the audits distrust, who passed an audit lately."""

    alive: frozenset[bytes]
    distrusted: frozenset[bytes]
    audited: frozenset[bytes]

    def survivors(self) -> dict[bytes, bool]:
        """Holders whose packets count, each with whether it passed an audit lately."""
        return {h: h in self.audited for h in self.alive - self.distrusted}


@attrs.define
class Checker:
    """One ``check`` call: the verdicts, the count, and with ``repair`` the repair."""

    services: Services
    #: Node ids alive (or suspect) in the member view, this node's own included.
    alive: Callable[[], set[bytes]]
    #: A member's state in the view (``alive``, ``suspect``, ...), None if unknown.
    state_of: Callable[[bytes], str | None]
    #: The storage audits' scores; None when the node runs no auditor.
    scores: AuditScores | None
    #: ``repair_threshold``: packets gone that make a chunk due for repair.
    threshold: int
    #: Told each repair run's result (the node's repair totals and metrics).
    on_repair: Callable[[Mapping[str, Any]], None] | None = None
    window_s: float = AUDIT_WINDOW_S
    clock: Callable[[], float] = time.time

    def verdicts(self) -> HolderVerdicts:
        scores = self.scores
        now = self.clock()
        return HolderVerdicts(
            alive=frozenset(self.alive()),
            distrusted=scores.distrusted() if scores is not None else frozenset(),
            audited=(
                passed_lately(scores, now, self.window_s) if scores is not None else frozenset()
            ),
        )

    async def run(self, *, repair: bool = False) -> dict[str, Any]:
        """Check every complete snapshot; with ``repair``, repair the chunks at the
        threshold and check again."""
        started = time.monotonic()
        verdicts = self.verdicts()
        report, lost = await self.survey(verdicts)
        repaired: dict[str, Any] | None = None
        if repair and not report["ok"]:
            _log.info("check_repair", holders=[h.hex()[:12] for h in lost])
            result = await repair_holders(
                self.services, lost, threshold=self.threshold, automatic=False
            )
            if self.on_repair is not None:
                self.on_repair(result)
            repaired = {
                key: result[key]
                for key in (
                    "ok",
                    "chunks_checked",
                    "chunks_repaired",
                    "chunks_lost",
                    "chunks_unrepaired",
                    "packets_rebuilt",
                    "records_rewritten",
                )
            }
            repaired["problems"] = result["problems"][:_PROBLEMS_SHOWN]
            before = {s["snapshot_id"]: s for s in report["snapshots"]}
            report, _ = await self.survey(self.verdicts())
            for snap in report["snapshots"]:
                was = before.get(snap["snapshot_id"])
                snap["repaired"] = (
                    bool(was and was["below_threshold"]) and not snap["below_threshold"]
                )
                if was is not None:
                    snap["weakest_chunk_packets_before"] = was["weakest_chunk_packets"]
        report["repaired"] = repaired
        report["seconds"] = round(time.monotonic() - started, 3)
        return report

    async def survey(self, verdicts: HolderVerdicts) -> tuple[dict[str, Any], list[bytes]]:
        """The report for ``verdicts`` and the holders that did not count (gone or
        distrusted); the counting runs in a worker thread."""
        catalog = self.services.catalog
        survivors = verdicts.survivors()
        counted: Survival = await self.services.db(catalog.survival, survivors, self.threshold)
        snaps: list[SnapshotRecord] = await self.services.db(catalog.snapshots)
        by_id = {row.snapshot_id: row for row in counted.snapshots}
        lost_in = counted.lost_by_snapshot
        snapshots = [
            self._snapshot(snap, by_id.get(snap.snapshot_id), lost_in, verdicts)
            for snap in snaps
            if snap.complete
        ]
        gone = [h for h in counted.lost_holders if h not in verdicts.distrusted]
        distrusted = [h for h in counted.lost_holders if h in verdicts.distrusted]
        report = {
            "event": "result",
            "ok": not any(s["below_threshold"] for s in snapshots),
            "threshold": self.threshold,
            "audit_window_s": self.window_s,
            "snapshots": snapshots,
            "holders_gone": [self._holder(h, counted.lost_holders[h]) for h in sorted(gone)],
            "holders_distrusted": [
                self._holder(h, counted.lost_holders[h]) for h in sorted(distrusted)
            ],
        }
        return report, sorted(counted.lost_holders)

    def _holder(self, node_id: bytes, packets: int) -> dict[str, Any]:
        entry = self.scores.holders.get(node_id) if self.scores is not None else None
        return {
            "node_id": format_node_id(node_id),
            "short_id": short_node_id(node_id),
            "state": self.state_of(node_id) or "unknown",
            "packets": packets,
            "score": round(entry.score, 4) if entry is not None else None,
        }

    def _snapshot(
        self,
        snap: SnapshotRecord,
        row: SnapshotSurvival | None,
        lost_in: Mapping[str, set[bytes]],
        verdicts: HolderVerdicts,
    ) -> dict[str, Any]:
        if row is None:  # a snapshot with no chunk: nothing of it can be lost
            k_text, _, n_text = snap.params.partition("/")
            k, n = int(k_text), int(n_text)
            row = SnapshotSurvival(snap.snapshot_id, n, 0, k, n, 0, 0, 0, 0, 0, 0)
        lost = lost_in.get(snap.snapshot_id, set())
        return {
            "snapshot_id": snap.snapshot_id,
            "created": snap.created,
            "weakest_chunk_packets": row.weakest_surviving,
            "weakest_chunk_audited": row.weakest_audited,
            "k": row.k,
            "n": row.n,
            "below_threshold": row.chunks_below_threshold > 0,
            "chunks": row.chunks,
            "chunks_below_threshold": row.chunks_below_threshold,
            "chunks_lost": row.chunks_lost,
            "packets": row.packets,
            "packets_surviving": row.packets_surviving,
            "audited_packets": row.packets_audited,
            "holders_gone": len(lost - verdicts.distrusted),
            "holders_distrusted": len(lost & verdicts.distrusted),
            "repaired": False,
        }
