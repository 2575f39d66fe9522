"""The grid authority (issue 9): who may join a grid and under which plan.

The authority is a role of an ordinary node: a node home that also holds the grid's
signing key (``authority.key``) serves the subscription manager (claims 21, 26, 27, 34)
over the grid transport.  Its modules:

- ``pricebook``: the plans (allocations, claims 22-25, 35) and the prices, one TOML file;
- ``db``: the authority's SQLite database (plans, invites, contracts, certificates issued,
  revocations);
- ``subscriptions``: the subscription manager (invites, subscribe, renew, revoke, clients);
- ``client``: the node side (subscribe, keep ``HOME/certificate``, renew in the background);
- ``globallog``: the global backup log (nodes forward their chained log, the authority
  checks and keeps it);
- ``revocations``: nodes poll the authority for revocations;
- ``fees``: statements and signed invoices from a usage history (pure);
- ``metering``: the authority's side of usage reports, the history, billing periods;
- ``reporting``: the node's side (measure, sign, queue, deliver) and ``gridnode account``;
- ``cli``: ``gridnode authority ...`` and ``gridnode subscribe``.
"""

from __future__ import annotations

AUTHORITY_KEY_NAME = "authority.key"
AUTHORITY_DB_NAME = "authority.sqlite"
PRICE_BOOK_NAME = "pricebook.toml"
CERTIFICATE_NAME = "certificate"
PENDING_INVITE_NAME = "invite.json"

__all__ = [
    "AUTHORITY_DB_NAME",
    "AUTHORITY_KEY_NAME",
    "CERTIFICATE_NAME",
    "PENDING_INVITE_NAME",
    "PRICE_BOOK_NAME",
]
