"""The subscription manager (claims 21, 26, 27, 34): invites, contracts, certificates.

A node subscribes by presenting a one-time invite code over its authenticated session;
the manager records the contract (node id, plan, the plan's allocations) and issues a
certificate signed with the grid key: node id, plan, allocations, expiry.  Certificates
live ``certificate_lifetime_s`` (30 days by default) and nodes renew them at half their
lifetime, so the grid keeps working that long while the authority is down.  A revoked
node gets no renewal and each of its certificates gets a signed revocation (which
gossip spreads; see ``protocol/_authority.py``).

Everything here is synchronous and works on the authority's home alone, so the CLI
(``gridnode authority invite|revoke|clients``) uses it without the node running; the
running node calls it through ``trio.to_thread`` (``serve``).  SQLite transactions keep
the two safe side by side.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import blake3
import trio
from nacl.signing import SigningKey

from protocol import (
    Allocations,
    Certificate,
    Message,
    RenewCertificate,
    Revocation,
    Subscribe,
    Subscribed,
    format_node_id,
    issue_certificate,
    issue_revocation,
    short_node_id,
)

from ..errors import GridError, RemoteError
from ..fsutil import atomic_write
from ..log import get_logger
from . import AUTHORITY_DB_NAME, AUTHORITY_KEY_NAME, PRICE_BOOK_NAME
from .db import AuthorityDB, allocations_text
from .keys import load_authority_key, write_authority_key
from .pricebook import PriceBook, PriceBookError

__all__ = [
    "DEFAULT_CERTIFICATE_LIFETIME_S",
    "SubscriptionError",
    "SubscriptionManager",
    "create_authority_home",
    "hash_invite",
    "load_authority_key",
    "new_invite_code",
    "write_authority_key",
]

_log = get_logger()

DEFAULT_CERTIFICATE_LIFETIME_S: Final = 30 * 86400.0
#: Requests to join kept for the operator at most (the newest; one row is ~60 bytes).
MAX_JOIN_REQUESTS: Final = 1000
_INVITE_PREFIX: Final = "inv-"


class SubscriptionError(GridError):
    """A subscription request refused; ``code`` goes on the wire in the ``Error``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- the grid key -------------------------------------------------------------------------------


def create_authority_home(
    home: Path, *, grid_id: bytes, key: SigningKey, price_book_text: str, now: float
) -> None:
    """The authority's files in ``home``: the price book, the database (grid id, public
    key, plans) and, last, the key, whose presence makes a node home an authority's."""
    book = PriceBook.parse(price_book_text)
    home.mkdir(parents=True, exist_ok=True)
    atomic_write(home / PRICE_BOOK_NAME, price_book_text.encode("utf-8"), mode=0o600)
    db = AuthorityDB(home / AUTHORITY_DB_NAME)
    try:
        db.set_meta({"grid_id": grid_id.hex(), "authority_key": bytes(key.verify_key).hex()})
        db.sync_plans(book.plans, now)
    finally:
        db.close()
    write_authority_key(home / AUTHORITY_KEY_NAME, key)


# --- invite codes ---------------------------------------------------------------------------


def new_invite_code() -> str:
    """160 random bits as lowercase base32: copyable, and not guessable."""
    return _INVITE_PREFIX + base64.b32encode(os.urandom(20)).decode("ascii").lower()


def hash_invite(code: str) -> bytes:
    """What the database keeps of a code: its hash (a stolen database admits nobody)."""
    return blake3.blake3(b"gridnode invite\x00" + code.strip().lower().encode("utf-8")).digest()


# --- the manager ------------------------------------------------------------------------------


class SubscriptionManager:
    def __init__(
        self,
        home: Path,
        *,
        lifetime_s: float = DEFAULT_CERTIFICATE_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.home = home
        self.lifetime_s = lifetime_s
        self.clock = clock
        self.key = load_authority_key(home / AUTHORITY_KEY_NAME)
        self.db = AuthorityDB(home / AUTHORITY_DB_NAME)
        grid_hex = self.db.meta("grid_id")
        if grid_hex is None:
            raise SubscriptionError("setup", f"{home / AUTHORITY_DB_NAME} names no grid id")
        self.grid_id = bytes.fromhex(grid_hex)
        self.price_book = PriceBook.load(home / PRICE_BOOK_NAME)
        self.db.sync_plans(self.price_book.plans, self.clock())

    @property
    def public_key(self) -> bytes:
        return bytes(self.key.verify_key)

    def close(self) -> None:
        self.db.close()

    def _reload_price_book(self) -> PriceBook:
        """The price book as it is now: an operator may add a plan while the node runs."""
        try:
            book = PriceBook.load(self.home / PRICE_BOOK_NAME)
        except PriceBookError as exc:
            _log.warning("price_book_unreadable", error=str(exc))
            return self.price_book
        if book.plans != self.price_book.plans:
            self.db.sync_plans(book.plans, self.clock())
        self.price_book = book
        return book

    # --- invites ------------------------------------------------------------------------------

    def create_invite(self, plan: str | None = None) -> str:
        if plan is not None and plan not in self._reload_price_book().plans:
            raise SubscriptionError("unknown_plan", f"no plan {plan!r} in the price book")
        code = new_invite_code()
        self.db.add_invite(hash_invite(code), plan, self.clock())
        return code

    # --- subscribing and renewing --------------------------------------------------------------

    def _issue(
        self, db: Any, node_id: bytes, plan: str, allocations: Allocations, now: float
    ) -> Certificate:
        """Record and sign one certificate inside the caller's transaction."""
        issued = int(now)
        expires = issued + max(1, int(self.lifetime_s))
        cursor = db.execute(
            "INSERT INTO certificates(node_id, plan, allocations, issued, expires) "
            "VALUES (?, ?, ?, ?, ?)",
            (node_id, plan, allocations_text(allocations), issued, expires),
        )
        serial = int(cursor.lastrowid)
        cert = issue_certificate(
            self.key,
            grid_id=self.grid_id,
            node_id=node_id,
            serial=serial,
            plan=plan,
            allocations=allocations,
            issued=issued,
            expires=expires,
        )
        db.execute("UPDATE certificates SET encoded = ? WHERE serial = ?", (cert.encode(), serial))
        return cert

    def subscribe(self, node_id: bytes, invite: str, plan: str = "") -> Certificate:
        """Use ``invite`` for ``node_id``: one transaction checks the code is unused, marks
        it used, records the contract and issues the certificate.  The same node asking
        again with its own code (its answer was lost) gets a certificate again."""
        book = self._reload_price_book()
        now = self.clock()
        code_hash = hash_invite(invite)
        with self.db.transaction() as db:
            row = db.execute(
                "SELECT plan, used_by FROM invites WHERE code_hash = ?", (code_hash,)
            ).fetchone()
            if row is None:
                raise SubscriptionError("bad_invite", "unknown invite code")
            invite_plan, used_by = row
            if used_by is not None and bytes(used_by) != node_id:
                raise SubscriptionError("invite_used", "this invite code has already been used")
            contract = AuthorityDB.subscription_in(db, node_id)
            if contract is not None and contract.status == "revoked":
                raise SubscriptionError("revoked", "this node's subscription was revoked")
            if invite_plan and plan and plan != invite_plan:
                raise SubscriptionError(
                    "wrong_plan", f"this invite is for plan {invite_plan!r}, not {plan!r}"
                )
            chosen = plan or invite_plan or book.default_plan
            if used_by is not None and contract is not None:
                chosen, allocations = contract.plan, contract.allocations
            elif chosen not in book.plans:
                raise SubscriptionError("unknown_plan", f"no plan {chosen!r} in the price book")
            else:
                allocations = book.plans[chosen]
            db.execute(
                "UPDATE invites SET used_by = ?, used_at = ? WHERE code_hash = ?",
                (node_id, now, code_hash),
            )
            self._record_contract(db, node_id, chosen, allocations, code_hash, now)
            cert = self._issue(db, node_id, chosen, allocations, now)
        _log.info("node_subscribed", peer=short_node_id(node_id), plan=chosen, serial=cert.serial)
        return cert

    @staticmethod
    def _record_contract(
        db: Any,
        node_id: bytes,
        plan: str,
        allocations: Allocations,
        invite_hash: bytes | None,
        now: float,
    ) -> None:
        db.execute(
            "INSERT INTO subscriptions(node_id, plan, allocations, invite_hash, created, "
            "updated, status) VALUES (?, ?, ?, ?, ?, ?, 'active') "
            "ON CONFLICT(node_id) DO UPDATE SET plan = excluded.plan, "
            "allocations = excluded.allocations, invite_hash = excluded.invite_hash, "
            "updated = excluded.updated",
            (node_id, plan, allocations_text(allocations), invite_hash, now, now),
        )

    def enrol(self, node_id: bytes, plan: str = "") -> Certificate:
        """Subscribe a node without an invite (the operator's own decision: the authority's
        own node at ``authority init``, or a request approved by hand)."""
        book = self._reload_price_book()
        chosen = plan or book.default_plan
        if chosen not in book.plans:
            raise SubscriptionError("unknown_plan", f"no plan {chosen!r} in the price book")
        now = self.clock()
        with self.db.transaction() as db:
            contract = AuthorityDB.subscription_in(db, node_id)
            if contract is not None and contract.status == "revoked":
                raise SubscriptionError("revoked", "this node's subscription was revoked")
            self._record_contract(db, node_id, chosen, book.plans[chosen], None, now)
            return self._issue(db, node_id, chosen, book.plans[chosen], now)

    def renew(self, node_id: bytes) -> Certificate:
        """A new certificate under the node's existing contract (same plan, allocations).

        A node with no contract is recorded as a request to join (the operator approves
        it by hand with ``gridnode authority approve``, and the node's next renewal gets
        its certificate); it is told ``awaiting_approval``.
        """
        now = self.clock()
        with self.db.transaction() as db:
            contract = AuthorityDB.subscription_in(db, node_id)
            if contract is None:  # recorded in this transaction, refused after its commit
                self._record_request(db, node_id, now)
            else:
                if contract.status == "revoked":
                    raise SubscriptionError("revoked", "this node's subscription was revoked")
                cert = self._issue(db, node_id, contract.plan, contract.allocations, now)
        if contract is None:
            raise SubscriptionError(
                "awaiting_approval",
                "this node has no subscription; its request to join waits for the "
                "operator (`gridnode authority approve "
                f"{format_node_id(node_id)}`), or subscribe with an invite code",
            )
        _log.info("certificate_renewed", peer=short_node_id(node_id), serial=cert.serial)
        return cert

    # --- revoking ------------------------------------------------------------------------------

    @staticmethod
    def _record_request(db: Any, node_id: bytes, now: float) -> None:
        """One row per node; past ``MAX_JOIN_REQUESTS`` the oldest request is forgotten:
        anyone who can reach the authority can ask, so asking must cost it little."""
        db.execute(
            "INSERT INTO join_requests(node_id, first_asked, last_asked) VALUES (?, ?, ?) "
            "ON CONFLICT(node_id) DO UPDATE SET last_asked = excluded.last_asked, "
            "times = times + 1",
            (node_id, now, now),
        )
        db.execute(
            "DELETE FROM join_requests WHERE node_id NOT IN (SELECT node_id FROM "
            "join_requests ORDER BY last_asked DESC LIMIT ?)",
            (MAX_JOIN_REQUESTS,),
        )

    def join_requests(self) -> list[dict[str, Any]]:
        """Nodes waiting for approval, oldest request first."""
        rows = self.db._db().execute(
            "SELECT node_id, first_asked, last_asked, times FROM join_requests "
            "ORDER BY first_asked, node_id"
        )
        return [
            {
                "node_id": format_node_id(bytes(node)),
                "short_id": short_node_id(bytes(node)),
                "first_asked": first,
                "last_asked": last,
                "times": times,
            }
            for node, first, last, times in rows
        ]

    def approve(self, node_id: bytes, plan: str = "") -> Certificate:
        """Subscribe a node that asked to join (``gridnode authority approve``)."""
        db = self.db._db()
        if (
            db.execute("SELECT 1 FROM join_requests WHERE node_id = ?", (node_id,)).fetchone()
            is None
        ):
            raise SubscriptionError(
                "no_request", f"node {format_node_id(node_id)} has not asked to join"
            )
        cert = self.enrol(node_id, plan)
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM join_requests WHERE node_id = ?", (node_id,))
        _log.info("join_approved", peer=short_node_id(node_id), plan=cert.plan)
        return cert

    def deny(self, node_id: bytes) -> bool:
        """Forget a node's request to join; False when there was none.  (It may ask again:
        revoke a node to keep it out for good.)"""
        with self.db.transaction() as db:
            gone = db.execute("DELETE FROM join_requests WHERE node_id = ?", (node_id,)).rowcount
        return bool(gone)

    def revoke(self, node_id: bytes) -> list[Revocation]:
        """End a node's subscription: every certificate of it that has not expired gets a
        signed revocation, and no renewal is granted any more."""
        now = self.clock()
        revocations: list[Revocation] = []
        with self.db.transaction() as db:
            contract = AuthorityDB.subscription_in(db, node_id)
            if contract is None:
                raise SubscriptionError(
                    "not_subscribed", f"node {format_node_id(node_id)} has no subscription"
                )
            db.execute(
                "UPDATE subscriptions SET status = 'revoked', revoked_at = ?, updated = ? "
                "WHERE node_id = ?",
                (now, now, node_id),
            )
            rows = db.execute(
                "SELECT serial FROM certificates WHERE node_id = ? AND expires > ? "
                "AND serial NOT IN (SELECT serial FROM revocations)",
                (node_id, int(now)),
            ).fetchall()
            for (serial,) in rows:
                rev = issue_revocation(
                    self.key,
                    grid_id=self.grid_id,
                    node_id=node_id,
                    serial=int(serial),
                    revoked_at=int(now),
                )
                db.execute(
                    "INSERT INTO revocations(serial, node_id, revoked_at, encoded) "
                    "VALUES (?, ?, ?, ?)",
                    (int(serial), node_id, int(now), rev.encode()),
                )
                revocations.append(rev)
        _log.info("node_revoked", peer=short_node_id(node_id), certificates=len(revocations))
        return revocations

    # --- the clients, as the global client profile will show them --------------------------

    def clients(self) -> list[dict[str, Any]]:
        from .metering import holdings_flags, usage_figures

        now = self.clock()
        db = self.db._db()
        flags = holdings_flags(db, {s.node_id: s.allocations for s in self.db.subscriptions()})
        out: list[dict[str, Any]] = []
        for sub in self.db.subscriptions():
            cert = self.db.latest_certificate(sub.node_id)
            if sub.status == "revoked":
                status = "revoked"
            elif cert is None or cert.expires <= now:
                status = "expired"
            else:
                status = "active"
            out.append(
                {
                    "node_id": format_node_id(sub.node_id),
                    "short_id": short_node_id(sub.node_id),
                    "plan": sub.plan,
                    "status": status,
                    "allocations": sub.allocations.to_json(),
                    "subscribed": sub.created,
                    "issued": cert.issued if cert else None,
                    "expires": cert.expires if cert else None,
                    "serial": cert.serial if cert else None,
                    "revoked_at": sub.revoked_at,
                    # The latest usage report's figures (``metering``), and what the
                    # cross-check of claimed holdings found.
                    "usage": usage_figures(db, sub.node_id),
                    "flags": flags.get(sub.node_id, []),
                }
            )
        return out

    # --- the wire side -------------------------------------------------------------------------

    async def serve(
        self, msg: Message, peer_id: bytes, limiter: trio.CapacityLimiter | None = None
    ) -> Message:
        """Answer a ``Subscribe`` or ``RenewCertificate`` from the authenticated ``peer_id``
        (the certificate binds the session's node id, never an id the message names)."""
        try:
            if isinstance(msg, Subscribe):
                invite, plan = msg.invite, msg.plan
                cert = await trio.to_thread.run_sync(
                    lambda: self.subscribe(peer_id, invite, plan), limiter=limiter
                )
            elif isinstance(msg, RenewCertificate):
                cert = await trio.to_thread.run_sync(self.renew, peer_id, limiter=limiter)
            else:
                raise SubscriptionError("unsupported", f"{msg.KIND} is not for the authority")
        except SubscriptionError as exc:
            _log.info("subscription_refused", peer=short_node_id(peer_id), code=exc.code)
            raise RemoteError(exc.code, str(exc)) from None
        return Subscribed(request_id=getattr(msg, "request_id", 0), certificate=cert.encode())
