"""Metering (issue 9): signed usage reports, the append-only history, the cross-check of
claimed holdings, billing periods closed into signed invoices, the node's queue of
reports, and the same over real sessions between in-process nodes."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from gridnode.authority import AUTHORITY_DB_NAME
from gridnode.authority.fees import Invoice, UsageSample
from gridnode.authority.metering import Metering, MeteringError, SignedUsage, sign_usage
from gridnode.authority.pricebook import DEFAULT_PRICE_BOOK_TOML
from gridnode.authority.reporting import REPORTS_NAME, TrafficMeter, UsageReporter
from gridnode.authority.subscriptions import SubscriptionManager, create_authority_home
from gridnode.errors import PeerGone, RemoteError
from gridnode.node import Node
from protocol import Message, UsageReport

from .inproc import open_authority_grid

T0 = 1_800_000_000


class Clock:
    def __init__(self, now: float = float(T0)) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def authority(home: Path, clock: Clock, period_s: float = 100) -> tuple[Metering, bytes]:
    grid_id = os.urandom(16)
    create_authority_home(
        home,
        grid_id=grid_id,
        key=SigningKey.generate(),
        price_book_text=DEFAULT_PRICE_BOOK_TOML,
        now=clock(),
    )
    return Metering(home, billing_period_s=period_s, clock=clock), grid_id


def enrol(home: Path, clock: Clock, plan: str = "small") -> SigningKey:
    key = SigningKey.generate()
    manager = SubscriptionManager(home, clock=clock)
    try:
        manager.enrol(bytes(key.verify_key), plan)
    finally:
        manager.close()
    return key


def report(
    key: SigningKey, grid_id: bytes, seq: int, start: int, end: int, **figures: Any
) -> bytes:
    placed = figures.pop("placed", {})
    return sign_usage(
        key,
        grid_id=grid_id,
        sequence=seq,
        sample=UsageSample(start, end, **figures),
        placed=placed.items(),
    ).encode()


def make_reporter(
    home: Path,
    grid: bytes,
    key: SigningKey,
    metering: Metering,
    clock: Clock,
    connect: Any,
    **settings: Any,
) -> UsageReporter:
    """A node's reporter against ``metering``, reached through ``connect``."""
    values: dict[str, Any] = {"target_bytes": lambda: 0, **settings}
    return UsageReporter(
        home=home,
        grid_id=grid,
        signing_key=key,
        authority_key=metering.public_key,
        authority_address="127.0.0.1:1",
        connect=connect,
        traffic=TrafficMeter(),
        interval_s=1,
        clock=clock,
        **values,
    )


def refused(fn: Any, *args: Any) -> str:
    with pytest.raises(MeteringError) as err:
        fn(*args)
    return err.value.code


# --- the authority's checks --------------------------------------------------------------------


def test_replayed_out_of_order_overlapping_and_forged_reports_are_refused(tmp_path: Path) -> None:
    clock = Clock()
    metering, grid = authority(tmp_path / "a", clock)
    key = enrol(tmp_path / "a", clock)
    node = bytes(key.verify_key)
    first = report(key, grid, 1, T0 - 20, T0 - 10, source_bytes=5)
    assert metering.accept(node, first) == 1
    assert refused(metering.accept, node, first) == "replayed"
    assert metering.accept(node, report(key, grid, 3, T0 - 10, T0 - 5)) == 3
    # 2 was never stored, but 3 was: it comes too late.
    assert refused(metering.accept, node, report(key, grid, 2, T0 - 5, T0 - 4)) == "out_of_order"
    # The same seconds twice would be billed twice.
    assert refused(metering.accept, node, report(key, grid, 4, T0 - 6, T0)) == "overlapping"
    # Signed by another key while naming this node; naming a node other than the sender.
    forged = SignedUsage.decode(report(SigningKey.generate(), grid, 4, T0 - 5, T0))
    forged = SignedUsage(grid, node, 4, forged.sample, (), forged.signature)
    assert refused(metering.accept, node, forged.encode()) == "bad_signature"
    other = enrol(tmp_path / "a", clock)
    assert refused(metering.accept, node, report(other, grid, 1, T0 - 5, T0)) == "wrong_node"
    assert refused(metering.accept, node, report(key, os.urandom(16), 4, T0 - 5, T0)) == (
        "wrong_grid"
    )
    stranger = SigningKey.generate()
    assert (
        refused(metering.accept, bytes(stranger.verify_key), report(stranger, grid, 1, 0, 1))
        == "not_subscribed"
    )
    assert refused(metering.accept, node, b"\x93\x01\x02") == "bad_report"
    assert refused(metering.accept, node, report(key, grid, 4, T0, T0 + 3600)) == (
        "from_the_future"
    )
    # Only the two accepted reports are in the history, and it cannot be edited.
    assert [s.source_bytes for s in metering.history(node)] == [5, 0]
    db = sqlite3.connect(tmp_path / "a" / AUTHORITY_DB_NAME)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE usage_reports SET source_bytes = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM usage_reports")
    db.close()


def test_periods_close_into_signed_invoices_that_recompute_identically(tmp_path: Path) -> None:
    clock = Clock()
    metering, grid = authority(tmp_path / "a", clock, period_s=100)
    source, target = enrol(tmp_path / "a", clock), enrol(tmp_path / "a", clock)
    s_id, t_id = bytes(source.verify_key), bytes(target.verify_key)
    gb = 10**9
    # The source placed 30 GB with the target; the target says it holds 30 GB.
    metering.accept(
        s_id, report(source, grid, 1, T0, T0 + 100, source_bytes=30 * gb, placed={t_id: 30 * gb})
    )
    metering.accept(t_id, report(target, grid, 1, T0, T0 + 60, target_bytes=30 * gb, sent_bytes=gb))
    clock.now = T0 + 101
    # The target has not reported past the period's end, and the settle time has not
    # passed: nothing closes yet.
    assert metering.close_periods() == []
    metering.accept(t_id, report(target, grid, 2, T0 + 60, T0 + 101, target_bytes=30 * gb))
    invoices = {inv.node_id: inv for inv in metering.close_periods()}
    assert set(invoices) == {s_id, t_id}
    assert metering.close_periods() == []  # closed once
    inv = invoices[t_id]
    assert inv.verify(metering.public_key)
    assert (inv.statement.period_start, inv.statement.period_end) == (T0, T0 + 100)
    credit = {line.kind: line for line in inv.statement.credits}["target_storage"]
    assert credit.basis == 30 * gb * 100  # byte-seconds inside the period only
    assert inv.statement.usage.sent_bytes == gb
    # Recomputed from the stored history: the same bytes, signature included.
    assert metering.recompute(inv.number).encode() == inv.encode()
    assert metering.recompute(invoices[s_id].number) == invoices[s_id]
    account = metering.account(t_id)
    assert [i["number"] for i in account["invoices"]] == [inv.number]
    assert Invoice.decode(bytes.fromhex(account["invoices"][0]["encoded"])) == inv
    assert account["usage"]["target_bytes"] == 30 * gb and account["usage"]["last_sequence"] == 2
    assert account["flags"] == []


def test_a_target_claiming_holdings_no_source_placed_is_flagged(tmp_path: Path) -> None:
    clock = Clock()
    metering, grid = authority(tmp_path / "a", clock)
    source, honest, liar = (enrol(tmp_path / "a", clock) for _ in range(3))
    h_id, l_id = bytes(honest.verify_key), bytes(liar.verify_key)
    gb = 10**9
    metering.accept(
        bytes(source.verify_key),
        report(source, grid, 1, T0 - 10, T0, source_bytes=4 * gb, placed={h_id: 2 * gb}),
    )
    metering.accept(h_id, report(honest, grid, 1, T0 - 10, T0, target_bytes=2 * gb))
    # 30 GB claimed, none placed by anyone; and over the small plan's 40 GB allotment too.
    metering.accept(l_id, report(liar, grid, 1, T0 - 10, T0, target_bytes=50 * gb))
    flags = metering.flags()
    assert flags.get(h_id) is None
    assert flags[l_id] == ["unvouched_holdings", "over_allotment"]
    manager = SubscriptionManager(tmp_path / "a", clock=clock)
    rows = {r["short_id"]: r for r in manager.clients()}
    manager.close()
    liar_row = next(r for r in rows.values() if r["flags"])
    assert liar_row["usage"]["target_bytes"] == 50 * gb
    assert liar_row["flags"] == ["unvouched_holdings", "over_allotment"]


# --- the node's queue ----------------------------------------------------------------------------


class FakeLink:
    """The authority behind a link that can go down, or lose its answers."""

    def __init__(self, metering: Metering, node_id: bytes) -> None:
        self.metering, self.node_id = metering, node_id
        self.down = False
        self.lose_answers = False

    async def request(self, build: Any, timeout_s: float = 0) -> Message:
        if self.down:
            raise PeerGone("connection refused")
        answer = await self.metering.serve(build(7), self.node_id)
        if self.lose_answers:
            raise PeerGone("the connection broke before the answer")
        return answer


async def test_reports_queue_while_the_authority_is_down_and_count_once(tmp_path: Path) -> None:
    clock = Clock()
    metering, grid = authority(tmp_path / "a", clock)
    key = enrol(tmp_path / "a", clock)
    node = bytes(key.verify_key)
    link = FakeLink(metering, node)

    async def connect(address: str) -> FakeLink:
        return link

    home = tmp_path / "n"
    home.mkdir()

    def reporter() -> UsageReporter:
        return make_reporter(home, grid, key, metering, clock, connect, target_bytes=lambda: 1234)

    rep = reporter()
    link.down = True
    for _ in range(3):
        clock.now += 10
        assert rep.make_report() is not None
        with pytest.raises(Exception, match="cannot reach"):
            await rep.deliver()
    assert rep.pending == 3 and metering.history(node) == []
    # A restart keeps the queue (one file, written atomically).
    rep = reporter()
    assert rep.pending == 3
    # Back up, but the first answer is lost: the report is stored, the node resends it,
    # hears "replayed" and drops it.  Nothing is stored twice.
    link.down, link.lose_answers = False, True
    with pytest.raises(Exception, match="cannot reach"):
        await rep.deliver()
    link.lose_answers = False
    assert await rep.deliver() == 3
    assert rep.pending == 0
    history = metering.history(node)
    assert [(s.start, s.end) for s in history] == [
        (T0, T0 + 10),
        (T0 + 10, T0 + 20),
        (T0 + 20, T0 + 30),
    ]
    assert {s.target_bytes for s in history} == {1234}
    assert json.loads((home / REPORTS_NAME).read_text())["pending"] == []
    # A home restored from an old copy restarts at sequence 1: it renumbers after the
    # authority's last report instead of being refused forever.
    (home / REPORTS_NAME).unlink()
    rep = reporter()
    clock.now += 10
    rep.make_report()
    assert await rep.deliver() == 1
    assert [s for s in metering.history(node)][-1].end == int(clock.now)
    assert metering.usage(node)["last_sequence"] == 4


# --- over real sessions ----------------------------------------------------------------------


@asynccontextmanager
async def metered_grid(tmp_path: Path, count: int, **settings: Any) -> AsyncIterator[list[Node]]:
    """An authority node and ``count`` nodes, each subscribed."""
    async with open_authority_grid(tmp_path, count, settings) as (nodes, _, _):
        manager = nodes[0].authority
        assert manager is not None
        for node in nodes[1:]:
            assert node.subscription is not None
            await node.subscription.subscribe(await trio.to_thread.run_sync(manager.create_invite))
        yield nodes


async def test_forged_and_replayed_reports_are_refused_over_the_grid(tmp_path: Path) -> None:
    async with metered_grid(tmp_path, 2, usage_report_interval_s=600) as (auth, one, two):
        assert auth.metering is not None
        grid = auth.config.grid_id
        link = await one.transport.connect(auth.transport.address)

        async def send(raw: bytes) -> str:
            try:
                await link.request(lambda rid: UsageReport(request_id=rid, report=raw))
            except RemoteError as exc:
                return exc.code
            return "accepted"

        key = one.identity.signing_key
        now = int(auth.metering.clock())
        good = report(key, grid, 1, now - 10, now - 5)
        assert await send(good) == "accepted"
        assert await send(good) == "replayed"
        assert await send(report(key, grid, 3, now - 5, now - 4)) == "accepted"
        assert await send(report(key, grid, 2, now - 4, now - 3)) == "out_of_order"
        # A report of node two's, correctly signed by two, sent over one's session.
        theirs = report(two.identity.signing_key, grid, 1, now - 10, now)
        assert await send(theirs) == "wrong_node"
        forged = SignedUsage.decode(report(SigningKey.generate(), grid, 4, now - 3, now))
        forged = SignedUsage(grid, one.identity.node_id, 4, forged.sample, (), forged.signature)
        assert await send(forged.encode()) == "bad_signature"
        assert len(auth.metering.history(one.identity.node_id)) == 2
        assert auth.metering.history(two.identity.node_id) == []


async def test_nodes_report_and_their_account_shows_an_invoice(tmp_path: Path) -> None:
    async with metered_grid(tmp_path, 1, usage_report_interval_s=1, billing_period_s=2) as nodes:
        auth, one = nodes
        assert one.reporter is not None and one.subscription is not None
        with trio.fail_after(15):
            while True:
                account = await one.reporter.account(one.subscription.status_json())
                if account["invoices"] and account["usage"]["reports"] >= 2:
                    break
                await trio.sleep(0.25)
        assert not account["stale"] and account["subscription"]["plan"]
        assert account["usage"]["sent_bytes"] > 0 and account["usage"]["received_bytes"] > 0
        invoice = account["invoices"][0]
        assert invoice["verified"] and invoice["statement"]["currency"] == "EUR"
        assert account["statement"]["period"]["end"] - account["statement"]["period"]["start"] == 2
        # The authority's own node reports too (to itself, without a session).
        assert auth.metering is not None
        assert auth.metering.usage(auth.identity.node_id)["reports"] >= 1


def test_served_bytes_are_reported_once_and_survive_a_restart(tmp_path: Path) -> None:
    """Bytes a target served to others are counted from the node's own running total
    (the packet store's), carried across a restart, and reported once."""
    clock = Clock()
    metering, grid = authority(tmp_path / "a", clock)
    key = enrol(tmp_path / "a", clock)
    home = tmp_path / "n"
    home.mkdir()
    served = [0]

    async def connect(address: str) -> Any:
        raise AssertionError("not delivered in this test")

    def reporter() -> UsageReporter:
        return make_reporter(
            home, grid, key, metering, clock, connect, served_bytes=lambda: served[0]
        )

    rep = reporter()
    served[0] = 5_000
    clock.now += 10
    rep.state.sent = 100_000  # (sessions' frames; served packets are part of them)
    first = rep.make_report()
    assert first is not None and first.sample.served_bytes == 5_000
    served[0] = 7_000
    rep._fold()  # measured, carried in the file, not yet reported...
    rep._save(rep.state)
    served[0] = 0  # ...and the process restarts: its running total starts again at 0
    rep = reporter()
    served[0] = 1_000
    clock.now += 10
    rep.state.sent = 100_000
    second = rep.make_report()
    assert second is not None and second.sample.served_bytes == 2_000 + 1_000
    for raw in rep.state.pending:
        metering.accept(bytes(key.verify_key), raw)
    assert metering.usage(bytes(key.verify_key))["served_bytes"] == 5_000 + 3_000


def test_a_report_claiming_more_served_than_sent_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    metering, grid = authority(tmp_path / "a", clock)
    key = enrol(tmp_path / "a", clock)
    raw = report(key, grid, 1, T0 - 10, T0, sent_bytes=1_000, served_bytes=10**12)
    assert refused(metering.accept, bytes(key.verify_key), raw) == "bad_report"
    assert metering.history(bytes(key.verify_key)) == []


def test_a_report_arriving_after_its_period_closed_is_billed_once_in_the_next(
    tmp_path: Path,
) -> None:
    """A laptop off for two periods reports on return: the time and traffic of the
    closed periods go into the next invoice, once, and every invoice still recomputes."""
    clock = Clock()
    metering, grid = authority(tmp_path / "a", clock, period_s=100)
    node, other = enrol(tmp_path / "a", clock), enrol(tmp_path / "a", clock)
    n_id, o_id = bytes(node.verify_key), bytes(other.verify_key)
    gb = 10**9
    metering.accept(n_id, report(node, grid, 1, T0, T0 + 50, source_bytes=gb))
    # Past the settle time the first two periods close without the laptop's report.
    clock.now = T0 + 301
    metering.accept(o_id, report(other, grid, 1, T0, T0 + 301))
    closed = metering.close_periods()
    assert sorted((i.statement.period_start, i.node_id == n_id) for i in closed) == [
        (T0, False), (T0, True), (T0 + 100, False), (T0 + 100, True),
    ]  # fmt: skip
    # Back: one report for [T0+50, T0+300), traffic included.  Everyone has now reported
    # past the third period's end, so it closes at once.
    metering.accept(n_id, report(node, grid, 2, T0 + 50, T0 + 300, source_bytes=gb, sent_bytes=7))
    (late,) = [i.statement for i in metering.close_periods() if i.node_id == n_id]
    assert (late.period_start, late.period_end) == (T0 + 200, T0 + 300)
    assert late.usage.source_byte_seconds == gb * 250  # 150 s it missed + its own 100 s
    assert late.usage.sent_bytes == 7
    invoices = metering.invoices(n_id)
    assert len(invoices) == 3
    total = sum(inv.statement.usage.source_byte_seconds for inv in invoices)
    assert total == gb * 300  # every second of both reports, once
    for inv in invoices:
        assert metering.recompute(inv.number).encode() == inv.encode()
    # The next period bills nothing of it again.
    clock.now = T0 + 411
    metering.accept(n_id, report(node, grid, 3, T0 + 300, T0 + 410))
    metering.accept(o_id, report(other, grid, 2, T0 + 301, T0 + 410))
    (fourth,) = [i.statement for i in metering.close_periods() if i.node_id == n_id]
    assert fourth.period_start == T0 + 300
    assert fourth.usage.source_byte_seconds == 0 and fourth.usage.sent_bytes == 0
