"""``gridnode authority init|invite|requests|approve|deny|revoke|clients|log`` and
``gridnode subscribe``.

The ``authority`` commands work on the authority's home directly (its database, its key),
so an operator can hand out invites or revoke a node whether or not the authority node
runs; SQLite transactions keep them safe beside a running node.  ``subscribe`` asks the
running node of a home to subscribe with an invite (it dials the authority).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from protocol import format_node_id, parse_node_id

from ..cli_common import CliError, call, print_json, resolve_home, table
from ..config import CONFIG_NAME, ConfigError, GridFile, build_config, load_config, parse_address
from ..home_cli import init_home, init_values
from . import AUTHORITY_KEY_NAME, CERTIFICATE_NAME
from .client import write_certificate
from .pricebook import DEFAULT_PRICE_BOOK_TOML, PriceBook, PriceBookError
from .subscriptions import SubscriptionError, SubscriptionManager, create_authority_home

__all__ = [
    "cmd_account",
    "cmd_authority_approve",
    "cmd_authority_clients",
    "cmd_authority_deny",
    "cmd_authority_init",
    "cmd_authority_invite",
    "cmd_authority_log",
    "cmd_authority_requests",
    "cmd_authority_revoke",
    "cmd_subscribe",
]


def _manager(home: Path) -> SubscriptionManager:
    if not (home / AUTHORITY_KEY_NAME).exists():
        raise CliError(
            f"{home} is not a grid authority's home (no {AUTHORITY_KEY_NAME}; "
            "a grid with an authority is created with `gridnode authority init`)"
        )
    try:
        lifetime = load_config(home).certificate_lifetime_s
    except ConfigError:
        lifetime = 30 * 86400.0
    try:
        return SubscriptionManager(home, lifetime_s=lifetime)
    except PriceBookError as exc:
        raise CliError(str(exc)) from None


def cmd_authority_init(args: argparse.Namespace) -> None:
    home = resolve_home(args)
    if (home / AUTHORITY_KEY_NAME).exists() or (home / CONFIG_NAME).exists():
        raise CliError(f"{home} is already a node home; choose an empty directory")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise CliError(f"{out} exists; use --force to overwrite")
    if not args.listen:
        raise CliError("--listen HOST:PORT is required (the authority's address)")
    address = args.advertise or args.listen
    host, port = parse_address(address, key="advertise" if args.advertise else "listen")
    if port == 0 or host in ("0.0.0.0", "::", "*"):
        raise CliError(
            f"{address} cannot be dialled: nodes subscribe there (give --advertise HOST:PORT)"
        )
    if args.price_book:
        try:
            price_text = Path(args.price_book).read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot read price book {args.price_book}: {exc}") from None
    else:
        price_text = DEFAULT_PRICE_BOOK_TOML
    try:
        book = PriceBook.parse(price_text, source=args.price_book or "default price book")
    except PriceBookError as exc:
        raise CliError(str(exc)) from None
    key = SigningKey.generate()
    grid = GridFile(
        name=args.name or home.name,
        grid_id=os.urandom(16),
        seeds=(address,),
        authority_key=bytes(key.verify_key),
        authority_address=address,
    )
    from ..identity import NodeIdentity

    identity = NodeIdentity.generate()
    # Check every node setting before anything is written (a typo leaves no half grid).
    config = build_config(home, init_values(args, grid))
    create_authority_home(
        home, grid_id=grid.grid_id, key=key, price_book_text=price_text, now=time.time()
    )
    info = init_home(home, args, identity, grid=grid)
    manager = SubscriptionManager(home, lifetime_s=config.certificate_lifetime_s)
    try:
        # The authority's node is a member like any other: it holds a certificate too.
        write_certificate(home, manager.enrol(identity.node_id))
    finally:
        manager.close()
    grid.save(out)
    result = {
        **info,
        "grid_file": str(out),
        "grid_name": grid.name,
        "authority_key": grid.authority_key.hex(),
        "authority_address": address,
        "plans": sorted(book.plans),
        "default_plan": book.default_plan,
        "certificate": str(home / CERTIFICATE_NAME),
    }
    if args.json:
        print_json(result)
    else:
        print(f"grid {grid.name!r} ({grid.grid_id.hex()}) created; grid file {out}")
        print(f"  authority node {info['short_id']} in {home}, at {address}")
        print(f"  run it with: gridnode run --home {home}")
        print(f"  back up {home}: {AUTHORITY_KEY_NAME} signs every certificate of the grid")


def cmd_authority_invite(args: argparse.Namespace) -> None:
    manager = _manager(resolve_home(args))
    try:
        code = manager.create_invite(args.plan)
        plan = args.plan or manager.price_book.default_plan
    finally:
        manager.close()
    if args.json:
        print_json({"invite": code, "plan": plan})
    else:
        print(code)


def cmd_authority_revoke(args: argparse.Namespace) -> None:
    try:
        node_id = parse_node_id(args.node_id)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    manager = _manager(resolve_home(args))
    try:
        revocations = manager.revoke(node_id)
    finally:
        manager.close()
    result = {
        "node_id": format_node_id(node_id),
        "status": "revoked",
        "revoked_serials": [r.serial for r in revocations],
    }
    if args.json:
        print_json(result)
    else:
        print(f"node {result['node_id']} revoked ({len(revocations)} certificate(s))")


def cmd_authority_clients(args: argparse.Namespace) -> None:
    manager = _manager(resolve_home(args))
    try:
        rows = manager.clients()
    finally:
        manager.close()
    if args.json:
        print_json(rows)
        return
    print(
        table(
            [
                (
                    r["short_id"],
                    r["plan"],
                    r["status"],
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["expires"]))
                    if r["expires"]
                    else "",
                )
                for r in rows
            ],
            ["node", "plan", "status", "expires"],
        )
    )


def cmd_authority_log(args: argparse.Namespace) -> None:
    """The global backup log, every stored chain checked again; exit 1 when one fails."""
    from .globallog import GlobalLog

    manager = _manager(resolve_home(args))
    try:
        report = GlobalLog(manager.db).report()
    finally:
        manager.close()
    if args.json:
        print_json(report)
    else:
        for node in report["nodes"]:
            state = "ok" if node["ok"] else "BROKEN"
            print(f"{node['node_id']}: {node['entries']} entries, head {node['head_seq']}, {state}")
        for problem in report["problems"]:
            where = f" entry {problem['seq']}" if problem["seq"] is not None else ""
            print(f"problem ({problem['kind']}): {problem['node_id']}{where}: {problem['message']}")
        print("verified" if report["verified"] else "NOT verified")
    if not report["verified"]:
        first = report["problems"][0]
        raise CliError(
            f"the global backup log fails verification: node {first['node_id']}: {first['message']}"
        )


def cmd_authority_requests(args: argparse.Namespace) -> None:
    """Nodes that asked to join without an invite, for approval by hand."""
    manager = _manager(resolve_home(args))
    try:
        rows = manager.join_requests()
    finally:
        manager.close()
    if args.json:
        print_json(rows)
        return
    if not rows:
        print("no node is waiting for approval")
        return
    print(
        table(
            [
                (
                    r["node_id"],
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["first_asked"])),
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["last_asked"])),
                    str(r["times"]),
                )
                for r in rows
            ],
            ["node", "first asked", "last asked", "times"],
        )
    )


def _node_id_arg(args: argparse.Namespace) -> bytes:
    try:
        return parse_node_id(args.node_id)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def cmd_authority_approve(args: argparse.Namespace) -> None:
    node_id = _node_id_arg(args)
    manager = _manager(resolve_home(args))
    try:
        cert = manager.approve(node_id, args.plan or "")
    except SubscriptionError as exc:
        raise CliError(str(exc)) from None
    finally:
        manager.close()
    result = {
        "node_id": format_node_id(node_id),
        "status": "active",
        "plan": cert.plan,
        "expires": cert.expires,
    }
    if args.json:
        print_json(result)
    else:
        print(
            f"node {result['node_id']} approved under plan {cert.plan!r}; "
            "it receives its certificate when it next asks (within a minute)"
        )


def cmd_authority_deny(args: argparse.Namespace) -> None:
    node_id = _node_id_arg(args)
    manager = _manager(resolve_home(args))
    try:
        found = manager.deny(node_id)
    finally:
        manager.close()
    if not found:
        raise CliError(f"node {format_node_id(node_id)} has not asked to join")
    if args.json:
        print_json({"node_id": format_node_id(node_id), "status": "denied"})
    else:
        print(f"request of node {format_node_id(node_id)} denied")


def cmd_subscribe(args: argparse.Namespace) -> None:
    result = call(args, "subscribe", {"invite": args.invite, "plan": args.plan or ""})
    if args.json:
        print_json(result)
    else:
        expires = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result["expires"]))
        print(f"subscribed under plan {result['plan']!r}; certificate valid until {expires}")


# --- `gridnode account` ---------------------------------------------------------------------


def cmd_account(args: Any) -> None:
    """Print the node's account (``--json``: one object; see the README)."""
    from .fees import format_amount

    result = call(args, "account")
    if args.json:
        print_json(result)
        return
    sub = result.get("subscription") or {}
    usage = result.get("usage") or {}
    print(f"plan {sub.get('plan', '?')}; certificate valid until {sub.get('expires', '?')}")
    print(
        f"usage: source {usage.get('source_bytes', 0)} B, target {usage.get('target_bytes', 0)} B,"
        f" sent {usage.get('sent_bytes', 0)} B, received {usage.get('received_bytes', 0)} B"
    )
    statement = result.get("statement")
    if statement:
        exp = int(statement["exponent"])
        print(
            f"this period: charges {format_amount(statement['charges_total'], exp)}, credits "
            f"{format_amount(statement['credits_total'], exp)}, balance "
            f"{format_amount(statement['balance'], exp)} {statement['currency']}"
        )
    for invoice in result.get("invoices", []):
        st = invoice["statement"]
        print(
            f"invoice {invoice['number']}: balance {st['balance_text']} {st['currency']}"
            f"{'' if invoice.get('verified') else ' (signature does not verify!)'}"
        )
    if result.get("pending_reports"):
        print(f"{result['pending_reports']} usage report(s) waiting for the authority")
    if result.get("stale"):
        print(f"the authority could not be reached: {result.get('authority_error')}")
