"""Delegated repair: members that rebuild an owner's lost packets when the owner is gone.

Only the source could repair its packets, because only its catalog says which packet of
which chunk sits where.  A backup exists for the day the source is destroyed, and from
that day nothing was repaired.  So the owner (the *source*, claim element "source node")
hands ``repair_delegates`` chosen members a **repair capability**:

- **What it holds.**  For every chunk in use: an opaque *handle* (a keyed hash of the
  chunk id and policy, so the capability names no chunk id a dedup domain could match),
  the erasure parameters (k, n, ciphertext size), the chunk's placement rules, and per
  packet its share number, packet id, holder and delete tag (the hash of the owner's
  per-packet delete secret, never the secret).  Plus the owner's location, the origin
  of the backup-proximity band.  No key, no file name, no plaintext size: repair works
  on ciphertext packets (``packing.rebuild_shares``), which need none of them.
- **How it is sealed.**  The body is msgpack encrypted to the holder's Curve25519 key
  (converted from its Ed25519 node id; libsodium sealed box), so only the holder reads
  it.  The owner signs the *grant* with its node key: owner, delegate, version, issue
  time, lease end (``expires``), hand-on horizon (``until``) and the hash of the body in
  clear, so the body is the owner's whoever seals it.  A delegate takes a capability
  from its owner's own authenticated session, addressed to itself, unexpired, with a
  lease no longer than ``MAX_LEASE_S``, and never older than the one it holds.
- **The lease.**  It runs until ``expires``; the owner renews it at half-time and
  whenever its catalog changed.  It binds while the owner is in the member view: an
  owner that is around and stops renewing has dropped the delegate.  While the owner is
  away, the capability holds until ``until`` (``HANDON_S``, five years after the grant,
  at most ``MAX_CHARTER_S``): the owner pre-signed that its data be repaired that long
  after it is gone, as the durability model needs (docs/DURABILITY.md).
- **Hand-on.**  A delegate cannot sign in the owner's name, so it never issues a grant:
  it passes the owner's signed grant on with a *link* (giver, taker, time) signed by
  its own key over the grant's digest and the link's place in the chain, and seals the
  owner's body, unchanged, to the taker.  The taker checks the owner's signature, each
  link (signed by the holder before it, no member twice, at most ``MAX_HOPS``), that
  the sender is the last giver, and that the body hashes to what the owner signed.
  When the owner has been gone ``repair_after_s`` and fewer of its delegates than it
  chose are left (each gone ``repair_after_s``), the acting delegate hands on to the
  members first in the owner's own ranking, carrying its moves not yet taken in (the
  taker checks each against the map and the receipt and signs it again as its own).
  So repair outlives the owner *and* its first delegates, until ``until``.  The chain
  (``Authority``) travels with the move records: the owner, back or recovered from its
  key, trusts the moves of a member it never chose because the chain starts with its
  own signature; it asks its known delegates and the members first in its ranking.
- **Moves.**  A repairer acts only while the owner has been out of the member view for
  ``repair_after_s`` (a live owner repairs for itself), and only the first of the
  delegates it knows of, in the owner's ranking, that is in the view.  It counts a
  holder gone once not seen for ``repair_after_s``, from last-seen times kept on disk
  (a restart does not reset them); repairs a chunk once the owner's ``repair_threshold``
  of its holders are gone; rebuilds those holders' packets only, places them under the
  chunk's own rules (the owner as origin, the surviving holders fixed), stores them
  with the owner's delete tag and signs a **move record** per packet: owner, repairer,
  number, handle, share, packet id, size, old holder, new holder, and the new holder's
  signed receipt.  The owner (alive again, or recovered from its key) fetches the
  records, checks each one (``check_move``) and takes it into its catalog.

What a hand-on costs the security model: a delegate can pass the map (holders and sizes,
never data or names) to a member of its choosing, which it could leak anyway; a chain
can only start with a grant the owner signed and end past ``until`` never; a taker's
moves are checked by the owner against receipts like any delegate's.  A delegate the
owner dropped keeps repairing while the owner is away (until ``until``): the owner
chose that horizon when it signed.

The owner side is ``Delegator``; the delegate side is ``Repairer``.  What a repairer
learns and what it could do if it lied: docs/ARCHITECTURE.md, "Delegated repair".
"""

from __future__ import annotations

from .capability import Authority, Capability, build_capability, verify_authority
from .delegator import Delegator, Grant
from .moves import (
    apply_moves,
    asked_for_moves,
    check_move,
    fetch_moves,
    fetch_moves_with_authority,
    gather_moves,
    rank_for,
)
from .records import (
    HANDON_S,
    MAX_HOPS,
    MAX_LEASE_S,
    CapabilityRefused,
    HeldChunk,
    HeldPacket,
    MoveRecord,
    MoveRejected,
    chunk_handle,
)
from .repairer import Repairer

__all__ = [
    "HANDON_S",
    "MAX_HOPS",
    "MAX_LEASE_S",
    "Authority",
    "Capability",
    "CapabilityRefused",
    "Delegator",
    "Grant",
    "HeldChunk",
    "HeldPacket",
    "MoveRecord",
    "MoveRejected",
    "Repairer",
    "apply_moves",
    "asked_for_moves",
    "build_capability",
    "check_move",
    "chunk_handle",
    "fetch_moves",
    "fetch_moves_with_authority",
    "gather_moves",
    "rank_for",
    "verify_authority",
]
