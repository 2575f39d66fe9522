"""Revocations reach nodes before certificates expire.

``gridnode authority revoke`` records a signed revocation (``protocol.Revocation``) for
every live certificate of the node in the authority's database.  Certificates live
``certificate_lifetime_s`` (30 days by default), far too long to wait: every node polls
the authority every ``revocation_poll_s`` (300 s by default) with ``GetRevocations``
and gets what was recorded since its last poll, in the order it was recorded
(``revocation_feed``; a certificate serial is not that order).  Each one is checked
under the grid key by ``Admission.revoke`` before it counts, so a false authority (or a
tampered answer) revokes nothing; the node then closes its sessions with the revoked
peer, and its handshake refuses it from then on.

Polling alone leaves a revoked node in the grid for up to a poll interval at every
member.  So revocations are also gossiped: a node that applies a revocation it did not
know passes it on to every peer it has a session with (``SpreadRevocations``, one-way),
and each of them checks it under the grid key, applies it and passes it on in turn when
it was new.  The authority's own node reads its database every few seconds (a count
query), so a revocation made with ``gridnode authority revoke`` starts spreading from
it at once.  A member cannot revoke anyone with a spread: only the grid key signs
revocations, and one already known is dropped, not passed on again.

The list lives in memory (``Admission``), so a node starts each run from position 0:
the feed holds one short entry per revoked certificate, small beside anything else.
The authority's own node reads its database directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from protocol import (
    MAX_REVOCATIONS_PER_MESSAGE,
    MAX_SPREAD_REVOCATIONS,
    GetRevocations,
    Message,
    Revocation,
    Revocations,
    SpreadRevocations,
    short_node_id,
)

from ..admission import Admission
from ..errors import PeerError, RemoteError
from ..log import get_logger
from .db import AuthorityDB

__all__ = ["RevocationPoller", "revocations_since", "serve_revocations"]

_log = get_logger()

#: Pages one poll reads at most (512 revocations each); the rest comes with the next.
MAX_PAGES_PER_POLL: Final = 64
#: The authority's node reads its own database this often at least (a count query).
LOCAL_POLL_S: Final = 2.0
#: Spreads waiting to be checked; more are dropped (the poll still brings them).
SPREAD_QUEUE: Final = 64
#: Time given to one peer to take a spread before the next peer's turn.
SPREAD_SEND_S: Final = 2.0


def revocations_since(
    db: AuthorityDB, since: int, limit: int = MAX_REVOCATIONS_PER_MESSAGE
) -> tuple[list[bytes], int]:
    """The encoded revocations recorded after feed position ``since`` (at most
    ``limit``), and the position to ask from next.

    Revocations that ``revoke`` recorded since the last call get their feed positions
    first, in one transaction (only when there are any: the usual poll is a read)."""
    reader = db._db()
    fed, recorded = reader.execute(
        "SELECT (SELECT count(*) FROM revocation_feed), (SELECT count(*) FROM revocations)"
    ).fetchone()
    if fed != recorded:
        with db.transaction() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO revocation_feed(serial) SELECT serial FROM revocations "
                "WHERE serial NOT IN (SELECT serial FROM revocation_feed) "
                "ORDER BY revoked_at, serial"
            )
    rows = reader.execute(
        "SELECT f.position, r.encoded FROM revocation_feed AS f "
        "JOIN revocations AS r ON r.serial = f.serial "
        "WHERE f.position > ? ORDER BY f.position LIMIT ?",
        (since, max(1, min(limit, MAX_REVOCATIONS_PER_MESSAGE))),
    ).fetchall()
    if not rows:
        return [], since
    return [bytes(encoded) for _, encoded in rows], int(rows[-1][0])


async def serve_revocations(
    db: AuthorityDB, msg: Message, limiter: trio.CapacityLimiter | None = None
) -> Message:
    """Answer a ``GetRevocations`` (any certified member may ask: revocations are public
    to the grid, that is their point)."""
    if not isinstance(msg, GetRevocations):
        raise RemoteError("unsupported", f"{msg.KIND} is not for the revocation list")
    since = msg.since
    encoded, position = await trio.to_thread.run_sync(
        lambda: revocations_since(db, since), limiter=limiter
    )
    return Revocations(request_id=msg.request_id, revocations=tuple(encoded), next=position)


class RevocationPoller:
    """A node's background task: fetch new revocations, apply them, close the sessions
    of the peers they revoke."""

    def __init__(
        self,
        *,
        admission: Admission,
        authority_address: str,
        connect: Callable[[str], Awaitable[Any]],
        on_revoked: Callable[[set[bytes]], Awaitable[None]],
        local: AuthorityDB | None = None,
        interval_s: float = 300.0,
        request_timeout_s: float = 30.0,
        peers: Callable[[], list[Any]] = list,
    ) -> None:
        self.admission = admission
        #: The live links a new revocation is passed on to.
        self.peers = peers
        self.authority_address = authority_address
        self.connect = connect
        self.on_revoked = on_revoked
        self.local = local
        self.interval_s = min(interval_s, LOCAL_POLL_S) if local is not None else interval_s
        self.request_timeout_s = request_timeout_s
        #: The feed position after the last revocation applied.
        self.position = 0
        self.applied = 0
        self.refused = 0
        self.last_error: str | None = None
        self.spread_received = 0
        self._wake = trio.Event()
        self._spread_in, self._spread_queue = trio.open_memory_channel[tuple[bytes, ...]](
            SPREAD_QUEUE
        )

    def received(self, revocations: tuple[bytes, ...]) -> None:
        """A peer's ``SpreadRevocations`` (the node's one-way handler): queued for the
        background task; dropped when the queue is full."""
        try:
            self._spread_in.send_nowait(revocations)
        except trio.WouldBlock:
            _log.info("revocation_spread_dropped", count=len(revocations))

    def wake(self) -> None:
        self._wake.set()

    async def _page(self, since: int) -> tuple[list[bytes], int]:
        if self.local is not None:
            local = self.local
            return await trio.to_thread.run_sync(revocations_since, local, since)
        link = await self.connect(self.authority_address)
        answer = await link.request(
            lambda rid: GetRevocations(request_id=rid, since=since),
            timeout_s=self.request_timeout_s,
        )
        if not isinstance(answer, Revocations):
            raise RemoteError("bad_answer", f"the authority answered {answer.KIND}")
        return list(answer.revocations), answer.next

    def _apply(self, encoded: list[bytes] | tuple[bytes, ...]) -> list[bytes]:
        """Check and apply; returns the encoded revocations that were new here."""
        fresh: list[bytes] = []
        for raw in encoded:
            try:
                revocation = Revocation.decode(raw)
            except ValueError as exc:
                self.refused += 1
                _log.warning("revocation_malformed", error=str(exc))
                continue
            if self.admission.knows(revocation):
                continue
            if self.admission.revoke(revocation):
                fresh.append(raw)
                self.applied += 1
            else:  # not signed by this grid's authority: it revokes nothing
                self.refused += 1
                _log.warning("revocation_not_signed", peer=short_node_id(revocation.node_id))
        return fresh

    async def _settle(self, fresh: list[bytes]) -> set[bytes]:
        """Cut the revoked peers off and pass what was new on to every other peer."""
        if not fresh:
            return set()
        revoked = {Revocation.decode(raw).node_id for raw in fresh}
        _log.info("revocations_applied", peers=[short_node_id(n) for n in sorted(revoked)])
        await self.on_revoked(revoked)
        for start in range(0, len(fresh), MAX_SPREAD_REVOCATIONS):
            part = tuple(fresh[start : start + MAX_SPREAD_REVOCATIONS])
            for link in self.peers():
                if link.peer_id in revoked or not link.is_open:
                    continue
                # A peer that went away polls when it comes back.
                with trio.move_on_after(SPREAD_SEND_S), contextlib.suppress(PeerError):
                    await link.send(SpreadRevocations(revocations=part))
        return revoked

    async def poll(self) -> set[bytes]:
        """Fetch and apply what is new; returns the node ids it revoked.  Raises
        ``PeerError`` when the authority cannot be asked."""
        fresh: list[bytes] = []
        for _ in range(MAX_PAGES_PER_POLL):
            encoded, position = await self._page(self.position)
            fresh += self._apply(encoded)
            if position <= self.position or len(encoded) < MAX_REVOCATIONS_PER_MESSAGE:
                self.position = max(self.position, position)
                break
            self.position = position
        return await self._settle(fresh)

    async def _take_spreads(self) -> None:
        async for revocations in self._spread_queue:
            self.spread_received += 1
            await self._settle(self._apply(revocations))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._take_spreads)
            task_status.started()
            await self._poll_forever()

    async def _poll_forever(self) -> None:
        while True:  # a background task: every pass ends in a wait
            self._wake = trio.Event()
            try:
                await self.poll()
                self.last_error = None
            except PeerError as exc:
                self.last_error = str(exc)
                _log.info("revocation_poll_failed", error=str(exc))
            with trio.move_on_after(self.interval_s):
                await self._wake.wait()
