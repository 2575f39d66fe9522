"""Who may take part in this grid: the node's side of the subscription rules.

A grid created with an authority (``gridnode authority init``) admits only subscribed
nodes: each holds a certificate signed by the grid key (``protocol.Certificate``), shows
it in its sealed Hello and carries it in its gossiped member record.  This module is
the one place that decides, for the transport, the gossip state machine and placement:

- ``check(node_id, certificate)``: may this peer open a session?  (Called inside the
  handshake, before this side reveals itself to an initiator.)  The authority also lets
  a node without a valid certificate in, so that it can subscribe or renew; such a link
  may send nothing else (``certified`` says which links are).
- ``admits_record(record)``: gossip keeps only members whose record carries a valid
  certificate for the record's own node id, so the member table holds subscribed nodes
  only and one sync page cannot add thousands of members.
- ``allotted_bytes(record)``: placement weighs a member by at most the target storage
  its certificate allots, whatever free space it claims.

An open grid (``gridnode grid create --open``) has no authority key: everything is
admitted, and the node says so at start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from protocol import Allocations, Certificate, Revocation
from protocol._gossip import MemberRecord

from .errors import GridError
from .log import get_logger

__all__ = ["CERTIFICATE_FILE", "Admission"]

#: Where a subscribed node keeps its certificate (written atomically by ``subscribe``).
CERTIFICATE_FILE = "certificate"

_log = get_logger(actor="admission")


class NotSubscribed(GridError):
    pass


class Admission:
    def __init__(
        self,
        *,
        grid_id: bytes,
        authority_key: bytes | None,
        home: Path,
        node_id: bytes,
        is_authority: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.grid_id = grid_id
        self.authority_key = authority_key
        self.home = home
        self.node_id = node_id
        self.clock = clock
        #: The authority's own node lets uncertified nodes in, to subscribe.
        self._is_authority = is_authority
        self._revoked: set[tuple[bytes, int]] = set()
        self._decoded: dict[bytes, Certificate | None] = {}
        #: Certificates (by their bytes) whose signature verified under ``_signed_by``:
        #: a target checks its peer's certificate on every request, and an Ed25519
        #: verification per packet stored was 4% of a busy target's event loop.
        self._signed: set[bytes] = set()
        self._signed_by: bytes | None = None
        self._own: bytes = b""
        self._own_mtime: float = -1.0
        self.refused = 0

    @property
    def open(self) -> bool:
        return self.authority_key is None

    @property
    def is_authority(self) -> bool:
        return self._is_authority

    # --- this node's certificate ------------------------------------------------------------

    def own_certificate(self) -> bytes:
        """This node's current certificate (re-read when ``subscribe`` or a renewal wrote
        a new one); empty until it has subscribed."""
        if self.open:
            return b""
        path = self.home / CERTIFICATE_FILE
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return b""
        if mtime != self._own_mtime:
            self._own = path.read_bytes()
            self._own_mtime = mtime
        return self._own

    def own_allocations(self) -> Allocations | None:
        """What this node's subscription allots it (None on an open grid).

        Raises:
            NotSubscribed: the grid has an authority and this node holds no valid
                certificate (never subscribed, expired, revoked).
        """
        if self.open:
            return None
        raw = self.own_certificate()
        problem = self.problem(self.node_id, raw)
        if problem is not None:
            raise NotSubscribed(f"no active subscription: {problem}")
        cert = self.certificate(raw)
        assert cert is not None
        return cert.allocations

    # --- checking others ----------------------------------------------------------------------

    def certificate(self, raw: bytes) -> Certificate | None:
        """A parsed certificate (cached by its bytes), or None when it does not parse."""
        if raw in self._decoded:
            return self._decoded[raw]
        try:
            cert: Certificate | None = Certificate.decode(raw)
        except ValueError:
            cert = None
        if len(self._decoded) > 65536:
            self._decoded.clear()
        self._decoded[raw] = cert
        return cert

    def problem(self, node_id: bytes, raw: bytes) -> str | None:
        """Why ``raw`` does not admit ``node_id`` now, or None."""
        if self.authority_key is None:
            return None
        if not raw:
            return "no subscription certificate"
        cert = self.certificate(raw)
        if cert is None:
            return "malformed subscription certificate"
        if self._signed_by != self.authority_key:
            self._signed, self._signed_by = set(), self.authority_key
        problem = cert.problem(
            authority_key=self.authority_key,
            grid_id=self.grid_id,
            node_id=node_id,
            now=self.clock(),
            signature_checked=raw in self._signed,
        )
        if problem is None:
            if len(self._signed) > 65536:
                self._signed.clear()
            self._signed.add(raw)
        if problem is None and (node_id, cert.serial) in self._revoked:
            problem = "certificate revoked"
        return problem

    def check(self, node_id: bytes, raw: bytes) -> str | None:
        """For the handshake: why this peer may not open a session, or None."""
        if self.is_authority:
            return None  # a node coming to subscribe or renew: it may ask nothing else
        problem = self.problem(node_id, raw)
        if problem is not None:
            self.refused += 1
            _log.info("peer_not_admitted", reason=problem)
        return problem

    def certified(self, node_id: bytes, raw: bytes) -> bool:
        return self.problem(node_id, raw) is None

    def admits_record(self, record: MemberRecord) -> bool:
        return self.problem(record.node_id, record.certificate) is None

    def allotted_bytes(self, record: MemberRecord) -> int | None:
        """The target storage the member's certificate allots (None on an open grid)."""
        if self.open:
            return None
        cert = self.certificate(record.certificate)
        return cert.allocations.target_bytes if cert is not None else 0

    def knows(self, revocation: Revocation) -> bool:
        """True when this revocation was applied already (so it is not passed on again)."""
        return (revocation.node_id, revocation.serial) in self._revoked

    def revoke(self, revocation: Revocation) -> bool:
        """Take a signed revocation into account; False when it is not the authority's."""
        if self.authority_key is None or not revocation.valid(
            authority_key=self.authority_key, grid_id=self.grid_id
        ):
            return False
        self._revoked.add((revocation.node_id, revocation.serial))
        return True
