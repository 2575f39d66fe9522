"""Storage audits (issue 10): sources challenge the holders of their packets.

Both sides of a proof of possession (``logic.audit_proof``):

* **Holder.** ``answer_audit`` answers an ``AuditPacket`` from the packet directory: it
  reads the packet (checked against its id, so rotten bytes are quarantined, as a fetch
  would), and returns the asked 1 KiB chunk with its BLAKE3 path.  Like ``FetchPacket``
  it answers any admitted peer: a proof reveals at most 1 KiB of bytes that peer could
  fetch whole, and the holder does not record which source stored which packet.
* **Source.** The ``Auditor`` wakes every ``audit_interval_s``, draws ``audit_batch``
  packets of chunks in use (a random holder, then a random chunk of it, then a fresh
  random chunk index), challenges them concurrently with a timeout, checks each proof
  against the packet id and size in the catalog, and keeps per-holder counts and a
  reliability score in ``audits.json`` in the home (written atomically).  Audit traffic
  is bounded: at most ``audit_batch`` proofs (about 1.5 KiB each) per interval, and a
  round never overlaps the next.

The score is an exponentially weighted mean of outcomes (pass 1, fail 0, miss 0.5):
recent behaviour counts most, a holder that starts dropping packets falls within a few
rounds, and an offline holder (whose packets ``repair_after_s`` rebuilds anyway) drifts
down more slowly than one caught without the bytes.

Trust: a holder whose score is below ``audit_threshold`` after at least ``MIN_AUDITS``
audits is *distrusted* by this source (``AuditScores.distrusted``).  Placement leaves it
out (``TrustedView``: no new packets from this source) and the automatic repair treats
it as gone at once (``repair.AutoRepair``): its packets are rebuilt elsewhere.  Misses
alone never bring a score below 0.5 (they pull it towards 0.5), so with the shipped
threshold only failed proofs distrust a holder; a holder merely switched off is left to
``repair_after_s``.  The judgement is this source's own: nothing is gossiped.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import attrs
import trio

from protocol import (
    AuditPacket,
    PacketAudited,
    format_node_id,
    parse_node_id,
    short_node_id,
)

from .errors import GridError, PeerError, RemoteError
from .fsutil import atomic_write
from .log import get_logger
from .logic import audit_proof
from .logic.placement import Member
from .storage.catalog import Catalog
from .storage.packets import PacketDirectory
from .transport import PeerLink

__all__ = [
    "AUDITS_FILE",
    "MIN_AUDITS",
    "NOT_HELD",
    "AuditScores",
    "AuditTarget",
    "Auditor",
    "HolderAudits",
    "Outcome",
    "TrustedView",
    "answer_audit",
    "pick_targets",
]

_log = get_logger()

#: Per-holder audit results, in the node's home.
AUDITS_FILE: Final = "audits.json"
#: The weight of the newest outcome in a holder's score.
SCORE_WEIGHT: Final = 0.2
#: What each outcome counts in the score.
OUTCOME_VALUE: Final = {"passed": 1.0, "failed": 0.0, "missed": 0.5}
#: Refusals that say nothing about the packet (the asking source is not admitted, the
#: holder is starting): a miss, not a failure.
_NOT_A_FAILURE: Final = frozenset({"not_admitted", "not_ready", "unsupported"})
#: Error code of a holder asked for a packet it does not hold (intact).
NOT_HELD: Final = "packet_not_held"
#: Audits a holder has had before its score can distrust it: one lost packet on a
#: newcomer is not a verdict.
MIN_AUDITS: Final = 3

Outcome = Literal["passed", "failed", "missed"]


# --- holder side -----------------------------------------------------------------------------


async def answer_audit(
    packets: PacketDirectory,
    msg: AuditPacket,
    *,
    disk_limiter: trio.CapacityLimiter,
    cpu_limiter: trio.CapacityLimiter,
) -> PacketAudited:
    """The proof for ``msg``: the packet is read (and checked against its id) under the
    disk limiter, the tree computed under the CPU limiter, both in worker threads."""
    data = await trio.to_thread.run_sync(packets.get, msg.packet_id, limiter=disk_limiter)
    if data is None:
        raise RemoteError(NOT_HELD, "packet not held here (or failed verification)")
    if msg.index >= audit_proof.chunk_count(len(data)):
        raise RemoteError("bad_index", f"the packet has no chunk {msg.index}")
    proof = await trio.to_thread.run_sync(audit_proof.prove, data, msg.index, limiter=cpu_limiter)
    return PacketAudited(request_id=msg.request_id, chunk=proof.chunk, path=b"".join(proof.path))


# --- what to challenge -------------------------------------------------------------------------


@attrs.frozen
class AuditTarget:
    """One packet to challenge: who holds it, its id, and its size (every packet of a
    chunk is ``ceil(cipher_size / k)`` bytes)."""

    holder: bytes
    packet_id: bytes
    size: int


def pick_targets(catalog: Catalog, count: int, rng: random.Random) -> list[AuditTarget]:
    """Up to ``count`` packets of chunks in use: a random holder each, then the first of
    its chunks after a random id (chunk ids are keyed hashes, so that is a uniform draw),
    then one of its packets on that holder.  Holders are drawn alike, however much each
    holds, so every holder's score rests on as many audits.  Blocking: run in a thread."""
    holders = sorted(catalog.holders())
    picked: list[AuditTarget] = []
    for _ in range(count if holders else 0):
        holder = rng.choice(holders)
        after = (rng.randbytes(32), "")
        chunks = catalog.chunks_on_page([holder], after=after, limit=1)
        if not chunks:  # past the last chunk id: wrap around
            chunks = catalog.chunks_on_page([holder], limit=1)
        if not chunks:
            continue
        chunk = chunks[0]
        mine = [p for p in chunk.packets if p.target == holder]
        if not mine:
            continue
        packet = rng.choice(mine)
        size = -(-chunk.cipher_size // chunk.k)
        target = AuditTarget(holder, packet.packet_id, size)
        if target not in picked:  # a packet drawn twice is challenged once
            picked.append(target)
    return picked


# --- scores ------------------------------------------------------------------------------------


@attrs.define
class HolderAudits:
    """One holder's audit record."""

    passed: int = 0
    failed: int = 0
    missed: int = 0
    score: float = 1.0
    last_audit: float = 0.0
    last_failure: float = 0.0
    #: When a proof last passed (``gridnode check`` counts holders that passed lately).
    last_passed: float = 0.0

    @property
    def audits(self) -> int:
        return self.passed + self.failed + self.missed

    def note(self, outcome: Outcome, now: float) -> None:
        if outcome == "passed":
            self.passed += 1
            self.last_passed = now
        elif outcome == "failed":
            self.failed += 1
            self.last_failure = now
        else:
            self.missed += 1
        self.score += SCORE_WEIGHT * (OUTCOME_VALUE[outcome] - self.score)
        self.last_audit = now


@attrs.define
class AuditScores:
    """Per-holder results, kept in ``path`` (JSON, replaced atomically after each round).

    The distrusted set is kept up to date as outcomes are noted, with a version that
    moves whenever it changes: the sequencer caches its placement view by version
    (``TrustedView``), so asking costs nothing per chunk."""

    path: Path
    holders: dict[bytes, HolderAudits] = attrs.field(factory=dict)
    #: Score below which a holder with ``MIN_AUDITS`` audits is distrusted (0: never).
    threshold: float = 0.0
    #: Moves whenever the distrusted set changes.
    trust_version: int = attrs.field(default=0, init=False)
    _distrusted: frozenset[bytes] = attrs.field(default=frozenset(), init=False)

    @classmethod
    def load(cls, path: Path, *, threshold: float = 0.0) -> AuditScores:
        """The scores in ``path``; none if it is missing or unreadable (audits start over)."""
        scores = cls(path, threshold=threshold)
        try:
            raw = json.loads(path.read_text())
            for entry in raw.get("holders", []):
                scores.holders[parse_node_id(entry["node_id"])] = HolderAudits(
                    passed=int(entry["passed"]),
                    failed=int(entry["failed"]),
                    missed=int(entry["missed"]),
                    score=float(entry["score"]),
                    last_audit=float(entry.get("last_audit") or 0.0),
                    last_failure=float(entry.get("last_failure") or 0.0),
                    last_passed=float(entry.get("last_passed") or 0.0),
                )
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            _log.warning("audit_scores_unreadable", path=str(path), error=str(exc))
            scores.holders.clear()
        for node_id, entry in scores.holders.items():
            scores._judge(node_id, entry)
        return scores

    def note(self, holder: bytes, outcome: Outcome, now: float) -> None:
        entry = self.holders.setdefault(holder, HolderAudits())
        entry.note(outcome, now)
        self._judge(holder, entry)

    def is_distrusted(self, entry: HolderAudits) -> bool:
        return self.threshold > 0 and entry.audits >= MIN_AUDITS and entry.score < self.threshold

    def _judge(self, holder: bytes, entry: HolderAudits) -> None:
        """Update the distrusted set for one holder's new record (O(1) per outcome)."""
        if self.is_distrusted(entry) != (holder in self._distrusted):
            self._distrusted = self._distrusted ^ {holder}
            self.trust_version += 1

    def distrusted(self) -> frozenset[bytes]:
        """Holders this source places nothing new on and moves its packets away from."""
        return self._distrusted

    def score(self, holder: bytes) -> float:
        """The holder's reliability in [0, 1]; 1 for a holder never audited."""
        entry = self.holders.get(holder)
        return 1.0 if entry is None else entry.score

    def status(self) -> list[dict[str, Any]]:
        """Per holder, the record kept in ``audits.json`` (facts only: whether they make
        a holder distrusted depends on the threshold configured now, see ``report``)."""
        return [
            {
                "node_id": format_node_id(node_id),
                "short_id": short_node_id(node_id),
                "passed": entry.passed,
                "failed": entry.failed,
                "missed": entry.missed,
                "score": round(entry.score, 4),
                "last_audit": entry.last_audit,
                "last_failure": entry.last_failure or None,
                "last_passed": entry.last_passed or None,
            }
            for node_id, entry in sorted(self.holders.items())
        ]

    def report(self) -> list[dict[str, Any]]:
        """Per holder, for ``gridnode status --json``'s ``audits``: the record and
        whether it makes the holder ``distrusted``."""
        return [
            {**entry, "distrusted": node_id in self._distrusted}
            for node_id, entry in zip(sorted(self.holders), self.status(), strict=True)
        ]

    def save(self) -> None:
        body = {"version": 1, "holders": self.status()}
        atomic_write(self.path, (json.dumps(body, indent=1) + "\n").encode(), mode=0o600)


# --- placement ---------------------------------------------------------------------------------


@attrs.frozen
class TrustedView:
    """The gossip placement view as this source's placement should see it: distrusted
    holders are marked not alive, so the sequencer gives them no new packet.

    Marked rather than dropped: a chunk completed around holders that keep their packets
    (``PlaceChunk.fixed``, as a manual repair or an upload retry does) may count a
    distrusted holder among them, and the pairwise rules are still checked against it.
    The version pairs gossip's with the scores' ``trust_version``, so the sequencer's
    cached view is rebuilt when either the members or the distrusted set change."""

    view: Callable[[], tuple[int, Sequence[Member]]]
    gossip_version: Callable[[], int]
    scores: AuditScores

    def members(self) -> tuple[tuple[int, int], Sequence[Member]]:
        """(version, members): the sequencer's ``view``."""
        gossip, members = self.view()
        distrusted = self.scores.distrusted()
        if distrusted:
            members = [
                attrs.evolve(m, alive=False) if m.node_id in distrusted else m for m in members
            ]
        return (gossip, self.scores.trust_version), members

    def version(self) -> tuple[int, int]:
        """The sequencer's ``version``: cheap, no member list built."""
        return self.gossip_version(), self.scores.trust_version


# --- the auditor -------------------------------------------------------------------------------


@attrs.define
class Auditor:
    """The source side: one bounded round of challenges every ``interval_s``."""

    catalog: Catalog
    link_for: Callable[[bytes], Awaitable[PeerLink]]
    scores: AuditScores
    disk_limiter: trio.CapacityLimiter
    interval_s: float
    batch: int
    timeout_s: float
    rng: random.Random = attrs.field(factory=random.SystemRandom)
    stats: dict[str, int] = attrs.field(factory=dict)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.interval_s <= 0:
            return
        while True:
            # Jittered, so the sources of a grid do not audit in step.
            await trio.sleep(self.interval_s * self.rng.uniform(0.75, 1.25))
            try:
                await self.audit_round()
            except (GridError, OSError, sqlite3.Error) as exc:  # the next round may fare better
                _log.warning("audit_round_failed", error=str(exc))

    async def audit_round(self) -> dict[AuditTarget, Outcome]:
        """Challenge up to ``batch`` packets now; record and return each outcome."""
        targets = await trio.to_thread.run_sync(
            pick_targets, self.catalog, self.batch, self.rng, limiter=self.disk_limiter
        )
        outcomes: dict[AuditTarget, Outcome] = {}

        async def one(target: AuditTarget) -> None:
            outcomes[target] = await self.challenge(target)

        async with trio.open_nursery() as nursery:
            for target in targets:
                nursery.start_soon(one, target)
        now = time.time()
        for target, outcome in outcomes.items():
            self.scores.note(target.holder, outcome, now)
            self.stats[f"audits_{outcome}"] = self.stats.get(f"audits_{outcome}", 0) + 1
            if outcome != "passed":
                _log.warning(
                    "audit_" + outcome,
                    holder=short_node_id(target.holder),
                    packet=target.packet_id.hex()[:16],
                )
        if outcomes:
            await trio.to_thread.run_sync(self.scores.save, limiter=self.disk_limiter)
        return outcomes

    async def challenge(self, target: AuditTarget) -> Outcome:
        """One challenge: a fresh random chunk index, answered within ``timeout_s``."""
        index = self.rng.randrange(audit_proof.chunk_count(target.size))
        with trio.move_on_after(self.timeout_s):
            try:
                link = await self.link_for(target.holder)
                answer = await link.request(
                    lambda rid: AuditPacket(
                        request_id=rid, packet_id=target.packet_id, index=index
                    ),
                    timeout_s=self.timeout_s,
                )
            except RemoteError as exc:
                return "missed" if exc.code in _NOT_A_FAILURE else "failed"
            except (PeerError, OSError):
                return "missed"
            if not isinstance(answer, PacketAudited) or len(answer.path) % 32:
                return "failed"
            path = tuple(answer.path[i : i + 32] for i in range(0, len(answer.path), 32))
            proof = audit_proof.Proof(chunk=answer.chunk, path=path)
            valid = await trio.to_thread.run_sync(
                audit_proof.verify, target.packet_id, target.size, index, proof
            )
            return "passed" if valid else "failed"
        return "missed"
