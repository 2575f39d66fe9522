"""The node's side of the subscription: get a certificate, keep it, renew it in time.

A node of a grid with an authority holds one certificate, ``HOME/certificate`` (the
encoded ``protocol.Certificate``, mode 0600, written atomically).  It gets it by
subscribing with an invite code (``gridnode init --invite`` leaves the code in
``HOME/invite.json`` and the node uses it on its first start; ``gridnode subscribe``
asks the running node to use one now), and renews it at half its lifetime, well before
it expires, so a grid whose authority is down keeps working for half a lifetime at the
least.  Every certificate received is checked (grid, node, signature under the grid
key from the grid file) before it is kept: a node that dials a false authority keeps
nothing.

The authority's own node asks its local subscription manager instead of dialling.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import trio

from protocol import Certificate, Message, RenewCertificate, Subscribe, Subscribed

from ..errors import GridError, PeerError, RemoteError
from ..fsutil import atomic_write
from ..log import get_logger
from . import CERTIFICATE_NAME, PENDING_INVITE_NAME
from .subscriptions import SubscriptionError, SubscriptionManager

__all__ = [
    "SubscriptionClient",
    "SubscriptionFailed",
    "read_certificate",
    "save_pending_invite",
    "write_certificate",
]

_log = get_logger()

#: Answers from the authority that a retry cannot change: stop asking until told again.
#: How often a node waiting for hand approval asks again.
APPROVAL_POLL_S: Final = 60.0
_FINAL_CODES: Final = frozenset(
    {"bad_invite", "invite_used", "unknown_plan", "wrong_plan", "revoked", "not_subscribed"}
)


class SubscriptionFailed(GridError):
    """Subscribing or renewing did not give this node a certificate; ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def read_certificate(home: Path) -> Certificate | None:
    """The certificate this node holds, or None (none yet, or an unreadable file)."""
    try:
        raw = (home / CERTIFICATE_NAME).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Certificate.decode(raw)
    except ValueError as exc:
        _log.warning("certificate_unreadable", path=str(home / CERTIFICATE_NAME), error=str(exc))
        return None


def write_certificate(home: Path, cert: Certificate) -> None:
    atomic_write(home / CERTIFICATE_NAME, cert.encode(), mode=0o600)


def save_pending_invite(home: Path, invite: str, plan: str = "") -> None:
    """An invite for the node to use on its next start (``gridnode init --invite``)."""
    text = json.dumps({"invite": invite, "plan": plan})
    atomic_write(home / PENDING_INVITE_NAME, text.encode("utf-8"), mode=0o600)


def _pending_invite(home: Path) -> tuple[str, str] | None:
    try:
        data = json.loads((home / PENDING_INVITE_NAME).read_text(encoding="utf-8"))
        return str(data["invite"]), str(data.get("plan", ""))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        _log.warning("pending_invite_unreadable", path=str(home / PENDING_INVITE_NAME))
        return None


class SubscriptionClient:
    def __init__(
        self,
        *,
        home: Path,
        grid_id: bytes,
        node_id: bytes,
        authority_key: bytes,
        authority_address: str,
        connect: Callable[[str], Awaitable[Any]],
        local: SubscriptionManager | None = None,
        request_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.home = home
        self.grid_id = grid_id
        self.node_id = node_id
        self.authority_key = authority_key
        self.authority_address = authority_address
        self.connect = connect
        self.local = local
        self.request_timeout_s = request_timeout_s
        self.clock = clock
        self._wake = trio.Event()
        self.last_error: str | None = None
        self.certificate: Certificate | None = None
        held = read_certificate(home)
        # A held certificate that is not ours (another grid, another key) is ignored; an
        # expired one is kept: it still names our plan, and renewal replaces it.
        if held is not None and held.problem(
            authority_key=authority_key, grid_id=grid_id, node_id=node_id, now=held.issued
        ):
            _log.warning("certificate_not_ours", path=str(home / CERTIFICATE_NAME))
            held = None
        self.certificate = held

    # --- asking the authority ---------------------------------------------------------------

    async def _ask(self, build: Callable[[int], Message]) -> Certificate:
        link: Any = None
        try:
            if self.local is not None:
                answer = await self.local.serve(build(0), self.node_id)
            else:
                link = await self.connect(self.authority_address)
                answer = await link.request(build, timeout_s=self.request_timeout_s)
        except RemoteError as exc:
            raise SubscriptionFailed(exc.code, f"the grid authority refused: {exc}") from None
        except PeerError as exc:
            raise SubscriptionFailed(
                "unreachable", f"cannot reach the grid authority at {self.authority_address}: {exc}"
            ) from None
        if not isinstance(answer, Subscribed):
            raise SubscriptionFailed("bad_answer", f"the authority answered {answer.KIND}")
        try:
            cert = Certificate.decode(answer.certificate)
        except ValueError as exc:
            raise SubscriptionFailed("bad_certificate", str(exc)) from None
        problem = cert.problem(
            authority_key=self.authority_key,
            grid_id=self.grid_id,
            node_id=self.node_id,
            now=self.clock(),
        )
        if problem is not None:
            raise SubscriptionFailed("bad_certificate", f"the authority's answer: {problem}")
        await trio.to_thread.run_sync(write_certificate, self.home, cert)
        self.certificate = cert
        self.last_error = None
        self._wake.set()
        if link is not None and link.session.certificate != answer.certificate:
            # The authority knows this session as one without (this) certificate and lets
            # nothing but subscriptions through it: the next use reconnects with it.
            await link.aclose("certificate", "reconnecting with the new certificate")
        return cert

    async def subscribe(self, invite: str, plan: str = "") -> Certificate:
        cert = await self._ask(lambda rid: Subscribe(request_id=rid, invite=invite, plan=plan))
        _log.info("subscribed", plan=cert.plan, expires=cert.expires, serial=cert.serial)
        return cert

    async def renew(self) -> Certificate:
        cert = await self._ask(lambda rid: RenewCertificate(request_id=rid))
        _log.info("certificate_renewed", expires=cert.expires, serial=cert.serial)
        return cert

    # --- in the background -------------------------------------------------------------------

    def renew_at(self, cert: Certificate) -> float:
        """Half the lifetime: the authority may be away for the other half."""
        return cert.issued + (cert.expires - cert.issued) / 2

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        failures = 0
        while True:  # a background task: every pass ends in a sleep
            self._wake = trio.Event()
            try:
                delay = await self._step()
                failures = 0
            except SubscriptionFailed as exc:
                self.last_error = str(exc)
                if exc.code in _FINAL_CODES:
                    _log.error("subscription_refused", code=exc.code, error=str(exc))
                    if self.certificate is None:  # the pending invite will never work
                        (self.home / PENDING_INVITE_NAME).unlink(missing_ok=True)
                    delay = 3600.0
                else:
                    _log.warning("subscription_retry", code=exc.code, error=str(exc))
                    failures += 1
                    delay = self._retry_delay(failures)
            except OSError as exc:  # the certificate could not be kept (a full disk): retry
                self.last_error = str(exc)
                _log.warning("subscription_retry", code="os_error", error=str(exc))
                failures += 1
                delay = self._retry_delay(failures)
            with trio.move_on_after(max(0.05, delay)):
                await self._wake.wait()

    def _retry_delay(self, failures: int) -> float:
        """Doubling from 1 s to a minute while the node has no certificate (it cannot take
        part until it has one); with one, from a twentieth to a quarter of its lifetime
        (bounded to 0.5-30 s and 1-600 s), so a short-lived one is retried in time."""
        cert = self.certificate
        if cert is None:
            first, cap = 1.0, 60.0
        else:
            lifetime = cert.expires - cert.issued
            first, cap = min(30.0, max(0.5, lifetime / 20)), max(1.0, min(600.0, lifetime / 4))
        return float(min(first * 2 ** min(failures - 1, 10), cap))

    async def _step(self) -> float:
        """Do what is due now; return how long to sleep before the next look."""
        cert = self.certificate
        if cert is None:
            pending = await trio.to_thread.run_sync(_pending_invite, self.home)
            if pending is not None:
                await self.subscribe(*pending)
                (self.home / PENDING_INVITE_NAME).unlink(missing_ok=True)
            elif self.local is not None:
                local = self.local
                try:
                    cert = await trio.to_thread.run_sync(local.enrol, self.node_id)
                except SubscriptionError as exc:
                    raise SubscriptionFailed(exc.code, str(exc)) from None
                await trio.to_thread.run_sync(write_certificate, self.home, cert)
                self.certificate = cert
            else:
                # A node recovered from its key has lost its certificate, not its contract:
                # a renewal brings it back.  A node never subscribed is told to subscribe.
                # A node never subscribed has now asked to join: it asks again every
                # minute, and the operator's approval reaches it with the next answer.
                try:
                    await self.renew()
                except SubscriptionFailed as exc:
                    if exc.code == "awaiting_approval":
                        self.last_error = (
                            "awaiting the operator's approval "
                            "(or run gridnode subscribe --invite CODE)"
                        )
                        _log.warning(
                            "awaiting_approval",
                            hint="the grid's operator approves with `gridnode authority approve`",
                        )
                        return APPROVAL_POLL_S
                    if exc.code != "not_subscribed":  # (an authority of an older version)
                        raise
                    self.last_error = "not subscribed: run gridnode subscribe --invite CODE"
                    _log.warning("not_subscribed", hint="gridnode subscribe --invite CODE")
                    return 3600.0  # until `gridnode subscribe` wakes us
            assert self.certificate is not None
            return max(0.0, self.renew_at(self.certificate) - self.clock())
        due = self.renew_at(cert)
        now = self.clock()
        if now < due:
            return due - now
        fresh = await self.renew()
        return max(0.0, self.renew_at(fresh) - self.clock())

    def status_json(self) -> dict[str, Any] | None:
        cert = self.certificate
        if cert is None:
            return None
        return {
            "plan": cert.plan,
            "issued": cert.issued,
            "expires": cert.expires,
            "serial": cert.serial,
            "allocations": cert.allocations.to_json(),
            "valid": cert.problem(
                authority_key=self.authority_key,
                grid_id=self.grid_id,
                node_id=self.node_id,
                now=self.clock(),
            )
            is None,
            "last_error": self.last_error,
        }
