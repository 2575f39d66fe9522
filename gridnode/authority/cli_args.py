"""The arguments of ``gridnode authority ...``, ``gridnode subscribe`` and ``gridnode
account``.  The parser lists every command, so these are declared apart from the
commands themselves (``gridnode.authority.cli``), which are imported only when one runs:
they need the subscription manager, keys and the protocol, and ``gridnode status`` must
not pay for them."""

from __future__ import annotations

from typing import Any, Final

from ..cli_common import add_convergence_secret, add_home, add_json, add_node_settings, lazy

__all__ = ["add_account_parser", "add_parsers"]

_COMMANDS: Final = "gridnode.authority.cli"


def add_parsers(sub: Any) -> None:
    """The ``authority`` and ``subscribe`` commands (``sub``: the top-level subparsers)."""
    authority = sub.add_parser("authority", help="the grid authority: create a grid, invite")
    asub = authority.add_subparsers(dest="authority_command", required=True)

    p = asub.add_parser("init", help="create a grid with an authority (this home runs it)")
    add_home(p)
    p.add_argument("--out", required=True, help="the grid file to write (give it to nodes)")
    p.add_argument("--name", help="the grid's name (default: the home's name)")
    p.add_argument("--price-book", help="TOML price book with [plans.NAME] (default: built in)")
    p.add_argument("--force", action="store_true", help="overwrite an existing grid file")
    add_node_settings(p, init=True)
    add_convergence_secret(p)  # with --dedup-group, as for `gridnode init`
    add_json(p)
    p.set_defaults(fn=lazy(_COMMANDS, "cmd_authority_init"))

    p = asub.add_parser("invite", help="a one-time invite code for one node")
    add_home(p)
    p.add_argument("--plan", help="the plan the invite is for (default: the node's choice)")
    add_json(p)
    p.set_defaults(fn=lazy(_COMMANDS, "cmd_authority_invite"))

    p = asub.add_parser("revoke", help="end a node's subscription (signed revocations)")
    add_home(p)
    p.add_argument("node_id", help="the node id as `gridnode status` prints it")
    add_json(p)
    p.set_defaults(fn=lazy(_COMMANDS, "cmd_authority_revoke"))

    p = asub.add_parser("clients", help="subscribed nodes, their plans and status")
    add_home(p)
    add_json(p)
    p.set_defaults(fn=lazy(_COMMANDS, "cmd_authority_clients"))

    p = asub.add_parser("log", help="the global backup log: every node's chain, checked")
    add_home(p)
    add_json(p)
    p.set_defaults(fn=lazy(_COMMANDS, "cmd_authority_log"))

    p = asub.add_parser("requests", help="nodes that asked to join, waiting for approval")
    add_home(p)
    add_json(p)
    p.set_defaults(fn=lazy(_COMMANDS, "cmd_authority_requests"))

    p = asub.add_parser("approve", help="subscribe a node that asked to join")
    add_home(p)
    p.add_argument("node_id", help="the node id as `authority requests` lists it")
    p.add_argument("--plan", help="plan name from the price book (default: the default plan)")
    add_json(p)
    p.set_defaults(fn=lazy(_COMMANDS, "cmd_authority_approve"))

    p = asub.add_parser("deny", help="forget a node's request to join")
    add_home(p)
    p.add_argument("node_id", help="the node id as `authority requests` lists it")
    add_json(p)
    p.set_defaults(fn=lazy(_COMMANDS, "cmd_authority_deny"))

    p = sub.add_parser("subscribe", help="subscribe this node with an invite code")
    add_home(p)
    p.add_argument("--invite", required=True, help="the code from `gridnode authority invite`")
    p.add_argument("--plan", help="plan name from the grid's price book")
    add_json(p)
    p.set_defaults(fn=lazy(_COMMANDS, "cmd_subscribe"))


def add_account_parser(sub: Any) -> None:
    """``gridnode account`` (``sub``: the top-level subparsers)."""
    p = sub.add_parser("account", help="usage, statement and invoices from the grid authority")
    add_home(p)
    add_json(p)
    p.set_defaults(fn=lazy(_COMMANDS, "cmd_account"))
