"""The grid authority's first slice (issue 9): the subscription manager and its database,
the node's subscription client, the CLI checks, and in-process subscribe/renew/revoke
over real sessions."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

import protocol
from gridnode.authority import AUTHORITY_DB_NAME, AUTHORITY_KEY_NAME, CERTIFICATE_NAME
from gridnode.authority.client import read_certificate, save_pending_invite
from gridnode.authority.pricebook import DEFAULT_PRICE_BOOK_TOML
from gridnode.authority.subscriptions import (
    MAX_JOIN_REQUESTS,
    SubscriptionError,
    SubscriptionManager,
    create_authority_home,
    hash_invite,
    load_authority_key,
)
from gridnode.cli import main
from gridnode.config import ConfigError, GridFile, build_config
from gridnode.control import ControlError
from gridnode.identity import KeyError_, NodeIdentity
from gridnode.log import configure_logging
from gridnode.node import Node
from protocol import Certificate, Revocation
from simulations.harness import free_port

from .inproc import open_authority_grid


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_authority(
    home: Path, *, lifetime_s: float = 100.0, clock: Clock | None = None
) -> SubscriptionManager:
    key = SigningKey.generate()
    create_authority_home(
        home,
        grid_id=os.urandom(16),
        key=key,
        price_book_text=DEFAULT_PRICE_BOOK_TOML,
        now=1_800_000_000.0,
    )
    return SubscriptionManager(home, lifetime_s=lifetime_s, clock=clock or Clock())


def node_id() -> bytes:
    return NodeIdentity.generate().node_id


# --- the subscription manager --------------------------------------------------------------


def test_invite_gives_a_certificate_signed_with_the_grid_key(tmp_path: Path) -> None:
    clock = Clock()
    auth = make_authority(tmp_path / "a", clock=clock)
    node = node_id()
    cert = auth.subscribe(node, auth.create_invite(), "small")
    assert cert.node_id == node and cert.plan == "small"
    assert cert.expires - cert.issued == 100
    assert cert.allocations == auth.price_book.plans["small"]
    assert (
        cert.problem(authority_key=auth.public_key, grid_id=auth.grid_id, node_id=node, now=clock())
        is None
    )
    # It decodes from what goes on the wire, and another grid key does not accept it.
    again = Certificate.decode(cert.encode())
    other = bytes(SigningKey.generate().verify_key)
    assert again.problem(authority_key=other, grid_id=auth.grid_id, node_id=node, now=clock())


def test_an_invite_is_used_once_and_stored_only_as_a_hash(tmp_path: Path) -> None:
    auth = make_authority(tmp_path / "a")
    code = auth.create_invite()
    first = node_id()
    auth.subscribe(first, code)
    with pytest.raises(SubscriptionError) as err:
        auth.subscribe(node_id(), code)
    assert err.value.code == "invite_used"
    # The node that used it may ask again (its answer was lost) and keeps its contract.
    assert auth.subscribe(first, code).node_id == first
    with pytest.raises(SubscriptionError) as err:
        auth.subscribe(node_id(), "inv-nosuchcode")
    assert err.value.code == "bad_invite"
    auth.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "a").glob(AUTHORITY_DB_NAME + "*"))
    assert code.encode() not in raw
    with sqlite3.connect(tmp_path / "a" / AUTHORITY_DB_NAME) as db:
        hashes = [bytes(r[0]) for r in db.execute("SELECT code_hash FROM invites")]
    assert hashes == [hash_invite(code)]


def test_two_nodes_racing_for_one_invite_get_one_certificate(tmp_path: Path) -> None:
    auth = make_authority(tmp_path / "a")
    code = auth.create_invite()
    outcomes: list[str] = []

    def use() -> None:
        try:
            auth.subscribe(node_id(), code)
            outcomes.append("ok")
        except SubscriptionError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=use) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["invite_used"] * 5 + ["ok"]


def test_plans_are_checked(tmp_path: Path) -> None:
    auth = make_authority(tmp_path / "a")
    with pytest.raises(SubscriptionError) as err:
        auth.subscribe(node_id(), auth.create_invite(), "platinum")
    assert err.value.code == "unknown_plan"
    with pytest.raises(SubscriptionError) as err:
        auth.subscribe(node_id(), auth.create_invite("large"), "small")
    assert err.value.code == "wrong_plan"
    assert auth.subscribe(node_id(), auth.create_invite("large")).plan == "large"
    assert auth.subscribe(node_id(), auth.create_invite()).plan == auth.price_book.default_plan
    with pytest.raises(SubscriptionError):
        auth.create_invite("platinum")


def test_renew_revoke_and_the_clients_list(tmp_path: Path) -> None:
    clock = Clock()
    auth = make_authority(tmp_path / "a", clock=clock)
    a, b, c = node_id(), node_id(), node_id()
    for n in (a, b, c):
        auth.subscribe(n, auth.create_invite(), "small")
    stranger = node_id()
    with pytest.raises(SubscriptionError) as err:
        auth.renew(stranger)
    assert err.value.code == "awaiting_approval"  # and recorded as a request to join
    assert [r["node_id"] for r in auth.join_requests()] == [protocol.format_node_id(stranger)]
    assert auth.deny(stranger) and auth.join_requests() == []
    clock.now += 60
    renewed = auth.renew(a)
    assert renewed.expires == int(clock.now) + 100 and renewed.plan == "small"
    revocations = auth.revoke(b)
    assert [r.node_id for r in revocations] == [b]
    decoded = Revocation.decode(revocations[0].encode())
    assert decoded.valid(authority_key=auth.public_key, grid_id=auth.grid_id)
    with pytest.raises(SubscriptionError) as err:
        auth.renew(b)
    assert err.value.code == "revoked"
    with pytest.raises(SubscriptionError) as err:
        auth.subscribe(b, auth.create_invite())
    assert err.value.code == "revoked"
    clock.now += 50  # c's certificate (issued 110 s ago, lifetime 100 s) has expired
    rows = {protocol.parse_node_id(r["node_id"]): r for r in auth.clients()}
    assert {n: rows[n]["status"] for n in (a, b, c)} == {
        a: "active",
        b: "revoked",
        c: "expired",
    }
    assert rows[a]["expires"] == renewed.expires and rows[a]["plan"] == "small"
    assert rows[a]["usage"]["source_bytes"] == 0


def test_the_authority_key_file_is_private(tmp_path: Path) -> None:
    make_authority(tmp_path / "a").close()
    path = tmp_path / "a" / AUTHORITY_KEY_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    load_authority_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyError_, match="readable by other users"):
        load_authority_key(path)


# --- grid files, config, CLI ----------------------------------------------------------------


def test_grid_file_with_an_authority_round_trips(tmp_path: Path) -> None:
    grid = GridFile(
        name="g",
        grid_id=os.urandom(16),
        seeds=("127.0.0.1:1",),
        authority_key=os.urandom(32),
        authority_address="127.0.0.1:1",
    )
    grid.save(tmp_path / "g.toml")
    loaded = GridFile.load(tmp_path / "g.toml")
    assert loaded == grid and not loaded.open
    GridFile(name="o", grid_id=os.urandom(16)).save(tmp_path / "o.toml")
    assert "open = true" in (tmp_path / "o.toml").read_text()
    assert GridFile.load(tmp_path / "o.toml").open
    base = {"grid_id": os.urandom(16).hex()}
    with pytest.raises(ConfigError, match="together"):
        build_config(tmp_path, {**base, "authority_key": os.urandom(32).hex()})
    with pytest.raises(ConfigError, match="certificate_lifetime_s"):
        build_config(tmp_path, {**base, "certificate_lifetime_s": "0"})
    config = build_config(tmp_path, {**base, "billing_period_s": "5"})
    assert config.billing_period_s == 5.0 and config.certificate_lifetime_s == 30 * 86400


def run_cli(*args: str) -> int:
    try:
        with pytest.raises(SystemExit) as exit_:
            main(list(args))
    finally:
        # main() points logging at the captured stderr, which pytest closes afterwards.
        configure_logging("warning", json=False, stream=sys.__stderr__)
    return int(exit_.value.code or 0)


def test_grid_create_needs_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "g.toml"
    assert run_cli("grid", "create", "g", "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "gridnode authority init" in err and "--open" in err and not out.exists()
    assert run_cli("grid", "create", "g", "--out", str(out), "--open") == 0
    assert GridFile.load(out).open


def test_authority_init_and_invite_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, out = tmp_path / "auth", tmp_path / "grid.toml"
    port = free_port()
    assert (
        run_cli(
            "authority", "init", "--home", str(home), "--out", str(out),
            "--listen", f"127.0.0.1:{port}", "--name", "office", "--json",
        )
        == 0
    )  # fmt: skip
    capsys.readouterr()
    grid = GridFile.load(out)
    assert grid.authority_address == f"127.0.0.1:{port}" and grid.seeds == (grid.authority_address,)
    key = load_authority_key(home / AUTHORITY_KEY_NAME)
    assert bytes(key.verify_key) == grid.authority_key
    cert = read_certificate(home)
    assert cert is not None and cert.grid_id == grid.grid_id
    assert (home / "gridnode.toml").exists() and (home / "pricebook.toml").exists()
    assert (home / CERTIFICATE_NAME).stat().st_mode & 0o777 == 0o600
    # A second init into the same home is refused; so is a node --invite on an open grid.
    assert run_cli("authority", "init", "--home", str(home), "--out", str(out), "--listen",
                   f"127.0.0.1:{port}") == 1  # fmt: skip
    assert "already a node home" in capsys.readouterr().err
    assert run_cli("authority", "invite", "--home", str(home), "--plan", "large", "--json") == 0
    assert '"invite": "inv-' in capsys.readouterr().out
    assert run_cli("authority", "invite", "--home", str(tmp_path), "--json") == 1
    assert "not a grid authority" in capsys.readouterr().err
    assert run_cli("authority", "revoke", "--home", str(home), "nonsense") == 1
    assert "not a node id" in capsys.readouterr().err


# --- in process: real sessions between an authority node and members ---------------------------


@asynccontextmanager
async def authority_grid(
    tmp_path: Path, count: int, *, lifetime_s: float = 100.0
) -> AsyncIterator[list[Node]]:
    """An authority node and ``count`` nodes of its grid, none of them subscribed."""
    settings = {"certificate_lifetime_s": lifetime_s}
    async with open_authority_grid(tmp_path, count, settings) as (nodes, _, _):
        yield nodes


async def control(node: Node, method: str, **params: Any) -> Any:
    async def emit(event: dict[str, Any]) -> None:
        pass

    return await node._control_job(method, params, emit)


async def test_subscribe_renew_and_revoke_over_the_grid(tmp_path: Path) -> None:
    async with authority_grid(tmp_path, 2, lifetime_s=3.0) as (auth_node, one, two):
        manager = auth_node.authority
        assert manager is not None
        # The authority's own node enrols itself on start.
        with trio.fail_after(5):
            while auth_node.subscription is None or auth_node.subscription.certificate is None:
                await trio.sleep(0.05)
        code = await trio.to_thread.run_sync(manager.create_invite)
        result = await control(one, "subscribe", invite=code, plan="small")
        assert result["plan"] == "small"
        status = await control(one, "status")
        assert status["subscription"]["plan"] == "small"
        assert status["subscription"]["allocations"]["target_bytes"] == 40 * 10**9
        held = read_certificate(one.config.home)
        assert held is not None and held.node_id == one.identity.node_id
        # The same code from another node is refused with the authority's reason.
        with pytest.raises(ControlError) as err:
            await control(two, "subscribe", invite=code)
        assert err.value.code == "invite_used"
        assert "subscription" not in await control(two, "status")
        # Renewal at half the lifetime (1.5 s) gives a later expiry, in the background.
        first = held.expires
        with trio.fail_after(6):
            while (c := one.subscription.certificate) is None or c.expires <= first:  # type: ignore[union-attr]
                await trio.sleep(0.1)
        # Once revoked, renewal is refused and the node keeps no fresh certificate.
        await trio.to_thread.run_sync(manager.revoke, one.identity.node_id)
        with trio.fail_after(6):
            while one.subscription.last_error is None:  # type: ignore[union-attr]
                await trio.sleep(0.1)
        assert "revoked" in str(one.subscription.last_error)  # type: ignore[union-attr]


async def test_a_node_keeps_no_certificate_from_a_false_authority(tmp_path: Path) -> None:
    async with authority_grid(tmp_path, 1) as (auth_node, one):
        assert one.subscription is not None and auth_node.authority is not None
        code = await trio.to_thread.run_sync(auth_node.authority.create_invite)
        # The node trusts another grid key: the real authority's answer does not verify.
        one.subscription.authority_key = bytes(SigningKey.generate().verify_key)
        with pytest.raises(ControlError) as err:
            await control(one, "subscribe", invite=code)
        assert err.value.code == "bad_certificate"
        assert read_certificate(one.config.home) is None


async def test_a_pending_invite_is_used_on_start(tmp_path: Path) -> None:
    async with authority_grid(tmp_path, 1) as (auth_node, one):
        assert one.subscription is not None and auth_node.authority is not None
        code = await trio.to_thread.run_sync(auth_node.authority.create_invite, "large")
        save_pending_invite(one.config.home, code)
        one.subscription._wake.set()
        with trio.fail_after(5):
            while one.subscription.certificate is None:
                await trio.sleep(0.05)
        assert one.subscription.certificate.plan == "large"
        assert not (one.config.home / "invite.json").exists()


async def test_only_the_authority_answers_subscribe(tmp_path: Path) -> None:
    async with authority_grid(tmp_path, 1) as (auth_node, one):
        link = await auth_node.transport.connect(one.transport.address)
        with pytest.raises(Exception, match="not_authority"):
            await link.request(lambda rid: protocol.Subscribe(request_id=rid, invite="x"))


def test_message_bound_matches_the_certificate_bound() -> None:
    from protocol._messages import _MAX_CERTIFICATE_BYTES

    assert _MAX_CERTIFICATE_BYTES == protocol.MAX_CERTIFICATE_BYTES


async def test_a_node_of_an_open_grid_warns_at_start(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    config = build_config(
        tmp_path / "n", {"grid_id": os.urandom(16).hex(), "listen": "127.0.0.1:0"}
    )
    config.home.mkdir()
    node = Node(config, NodeIdentity.generate())
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            node.shutdown()
    warnings = [e for e in logs if e["event"] == "open_grid"]
    assert warnings and warnings[0]["log_level"] == "warning"
    assert "admits anyone" in warnings[0]["message"]
    assert node.subscription is None and node.authority is None


async def test_a_node_that_lost_its_certificate_renews_its_contract(tmp_path: Path) -> None:
    async with authority_grid(tmp_path, 1) as (auth_node, one):
        assert one.subscription is not None and auth_node.authority is not None
        code = await trio.to_thread.run_sync(auth_node.authority.create_invite)
        first = await one.subscription.subscribe(code)
        # As after `gridnode recover`: the key survives, the certificate file does not.
        (one.config.home / CERTIFICATE_NAME).unlink()
        one.subscription.certificate = None
        one.subscription._wake.set()
        with trio.fail_after(5):
            while one.subscription.certificate is None:
                await trio.sleep(0.05)
        assert one.subscription.certificate.serial > first.serial
        assert read_certificate(one.config.home) == one.subscription.certificate


def test_requests_to_join_are_bounded_and_approved_by_hand(tmp_path: Path) -> None:
    clock = Clock()
    auth = make_authority(tmp_path / "a", clock=clock)
    asker = node_id()
    for _ in range(3):  # asking again updates the one row
        clock.now += 1
        with pytest.raises(SubscriptionError):
            auth.renew(asker)
    (row,) = auth.join_requests()
    assert row["times"] == 3 and row["last_asked"] - row["first_asked"] == 2
    with pytest.raises(SubscriptionError) as err:  # never asked: a typo is not approved
        auth.approve(node_id())
    assert err.value.code == "no_request"
    cert = auth.approve(asker, "small")
    assert cert.plan == "small" and auth.join_requests() == []
    assert auth.renew(asker).plan == "small"  # what the node's next ask gets
    # A flood of fresh keys keeps at most MAX_JOIN_REQUESTS rows, the newest.
    for _ in range(MAX_JOIN_REQUESTS + 5):
        clock.now += 1
        with pytest.raises(SubscriptionError):
            auth.renew(node_id())
    assert len(auth.join_requests()) == MAX_JOIN_REQUESTS
    # A revoked node cannot be approved back in.
    auth.revoke(asker)
    with pytest.raises(SubscriptionError):
        auth.renew(asker)
    assert protocol.format_node_id(asker) not in {r["node_id"] for r in auth.join_requests()}


async def test_a_node_without_an_invite_joins_once_the_operator_approves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with authority_grid(tmp_path, 1) as (auth_node, one):
        client = one.subscription
        assert client is not None
        with trio.fail_after(10):
            while "approval" not in str(client.last_error):
                await trio.sleep(0.05)
        assert client.certificate is None
        home = str(auth_node.config.home)
        assert run_cli("authority", "requests", "--home", home, "--json") == 0
        listed = json.loads(capsys.readouterr().out)
        assert [r["node_id"] for r in listed] == [protocol.format_node_id(one.identity.node_id)]
        args = ("authority", "approve", "--home", home, listed[0]["node_id"], "--plan", "small")
        assert await trio.to_thread.run_sync(lambda: run_cli(*args, "--json")) == 0
        assert json.loads(capsys.readouterr().out)["plan"] == "small"
        client._wake.set()  # (the node asks again within a minute by itself)
        with trio.fail_after(10):
            while client.certificate is None:
                await trio.sleep(0.05)
        assert client.certificate.plan == "small"
        assert run_cli("authority", "deny", "--home", home, listed[0]["node_id"]) == 1
        assert "has not asked" in capsys.readouterr().err
