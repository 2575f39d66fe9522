"""What every part of one member's protocol reads and writes: config, clock, counters, self.

``Membership`` is split into collaborators (member table, dissemination, probes,
suspicions, anti-entropy, ...); the state they all share lives here, once, rather
than being copied into each or reached through the facade.  Nothing here does I/O:
``send`` only appends to the caller's list of ``Outgoing``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final, TypeVar

import nacl.signing

from protocol import MemberRecord, MemberUpdate, Message, encoded_size

from .config import GossipConfig
from .records import ALIVE, LEFT, Outgoing

__all__ = ["PEER_TABLE_MAX", "Context", "trim"]

_PROBE_ID_WRAP: Final = 1 << 62
#: Bounds on the per-peer tables (buckets, accusers, sync answers): above this many
#: entries the idle ones are purged, then the oldest.
PEER_TABLE_MAX: Final = 4096

#: The statistics counters (``MembershipStatistics`` maps them to its fields).
_COUNTERS: Final = (
    "forged",
    "unadmitted",
    "stale",
    "invalid",
    "probes_sent",
    "probes_failed",
    "indirect_sent",
    "relays",
    "suspicions",
    "suspicions_refuted",
    "refutations",
    "deaths",
    "reaped",
    "syncs_sent",
    "syncs_answered",
    "forged_claims",
    "false_accusations",
    "rate_limited",
    "deferred",
    "over_budget",
    "sync_refused",
    "relay_refused",
)

_K = TypeVar("_K")
_V = TypeVar("_V")


def trim(table: dict[_K, _V], idle: Callable[[_V], bool]) -> None:
    """Keep a per-peer table under ``PEER_TABLE_MAX``: idle entries go, then the oldest."""
    if len(table) < PEER_TABLE_MAX:
        return
    for key in [key for key, value in table.items() if idle(value)]:
        del table[key]
    while len(table) >= PEER_TABLE_MAX:
        del table[next(iter(table))]


class Context:
    """The shared state of one ``Membership``: who we are, the time, and the counters.

    ``now`` is the time of the call being served (``now`` must not go backwards);
    ``version`` increments on any change placement caches care about; ``awareness``
    is Lifeguard's local health score (raised by failed probes and refutations,
    lowered by successful probes); ``leaving`` stops probing and anti-entropy.
    """

    def __init__(
        self,
        *,
        signing_key: nacl.signing.SigningKey,
        self_record: MemberRecord,
        config: GossipConfig,
        rng: random.Random,
        now: float,
    ) -> None:
        self.key = signing_key
        self.cfg = config
        self.rng = rng
        self.node_id = self_record.node_id
        self.now = now
        self.next_id = rng.randrange(1 << 31)
        self.awareness = 0
        self.leaving = False
        self.version = 0
        self.n: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self.sent_msgs: dict[str, int] = {}
        self.sent_bytes: dict[str, int] = {}
        self.recv_msgs: dict[str, int] = {}
        self.recv_bytes: dict[str, int] = {}
        self.self_record = self_record
        self.self_update = MemberUpdate(
            record=self_record, state=LEFT if self_record.leaving else ALIVE
        )
        #: Called as (node id, old state, new state) on every change of a member's
        #: state here: the simulation counts false suspicions and deaths with it.
        self.on_state_change: Callable[[bytes, str, str], None] | None = None

    def new_id(self) -> int:
        """A fresh probe or sync id (random start, so restarts do not reuse ids)."""
        self.next_id = (self.next_id + 1) % _PROBE_ID_WRAP
        return self.next_id

    def send(self, out: list[Outgoing], node_id: bytes | None, address: str, msg: Message) -> None:
        """Queue ``msg`` for the driver and count it."""
        kind = msg.KIND
        self.sent_msgs[kind] = self.sent_msgs.get(kind, 0) + 1
        self.sent_bytes[kind] = self.sent_bytes.get(kind, 0) + encoded_size(msg)
        out.append(Outgoing(node_id=node_id, address=address, message=msg))
