"""The global backup log and revocation polling (issue 9, claims 2, 3, 31): the authority
checks every forwarded entry, finds entries changed in its database, refuses gaps and
reordering; a node recovered from its key continues its chain; a revocation reaches the
other nodes in seconds, not at the certificate's expiry."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from nacl.signing import SigningKey

from gridnode.authority import AUTHORITY_DB_NAME
from gridnode.authority.client import write_certificate
from gridnode.authority.globallog import GlobalLog, LogEntryWire, LogRefused
from gridnode.authority.pricebook import DEFAULT_PRICE_BOOK_TOML
from gridnode.authority.revocations import revocations_since
from gridnode.authority.subscriptions import SubscriptionManager, create_authority_home
from gridnode.cli import main
from gridnode.config import build_config
from gridnode.errors import PeerError, RemoteError
from gridnode.identity import NodeIdentity
from gridnode.log import configure_logging
from gridnode.node import Node
from gridnode.recovery import recover_catalog
from gridnode.recovery_root import fetch_root, log_head_of
from gridnode.storage.backup_log import LOG_GENESIS, log_entry_hash
from gridnode.storage.catalog import Catalog
from protocol import GetRevocations, Revocation, SpreadRevocations, issue_revocation

from .inproc import open_authority_grid
from .test_authority import control

# --- the authority's checks, without a network -------------------------------------------------


def authority(home: Path) -> SubscriptionManager:
    create_authority_home(
        home,
        grid_id=os.urandom(16),
        key=SigningKey.generate(),
        price_book_text=DEFAULT_PRICE_BOOK_TOML,
        now=1_800_000_000.0,
    )
    return SubscriptionManager(home)


def node_log(path: Path, events: int) -> tuple[NodeIdentity, Catalog, list[bytes]]:
    """A node's catalog with ``events`` log entries, and those entries as forwarded."""
    identity = NodeIdentity.generate()
    catalog = Catalog(path, signing_key=identity.signing_key)
    for i in range(events):
        catalog.log("backup_complete", f"snap{i}", files=i, note="x" * i)
    return (
        identity,
        catalog,
        [LogEntryWire.from_row(r).encode() for r in catalog.log_rows_after(0, 100)],
    )


def test_forwarded_entries_are_kept_and_a_change_in_the_database_is_found(tmp_path: Path) -> None:
    manager = authority(tmp_path / "auth")
    glog = GlobalLog(manager.db)
    one, _, entries = node_log(tmp_path / "one.sqlite", 4)
    two, _, others = node_log(tmp_path / "two.sqlite", 2)
    assert glog.accept(one.node_id, entries[:2])[0] == 2
    # A resend of what is held (its answer was lost) is accepted again, byte for byte.
    seq, head = glog.accept(one.node_id, entries)
    assert seq == 4 and head == glog.head(one.node_id)[1]
    glog.accept(two.node_id, others)
    report = glog.report()
    assert report["verified"] is True and report["problems"] == []
    assert len(report["entries"]) == 6
    assert all(e["verified"] for e in report["entries"])
    assert {n["head_seq"] for n in report["nodes"]} == {4, 2}
    manager.close()

    # Someone with access to the authority's database edits an entry after the fact.
    with sqlite3.connect(tmp_path / "auth" / AUTHORITY_DB_NAME) as db:
        db.execute(
            "UPDATE global_log SET detail = ? WHERE node_id = ? AND seq = 3",
            (json.dumps({"files": 999}), one.node_id),
        )
    report = GlobalLog(SubscriptionManager(tmp_path / "auth").db).report()
    assert report["verified"] is False
    [problem] = report["problems"]
    assert problem["code"] == "log_tampered" and problem["seq"] == 3
    assert problem["node_id"] == next(n for n in report["nodes"] if not n["ok"])["node_id"]

    # ... or deletes one: the chain has a hole.
    with sqlite3.connect(tmp_path / "auth" / AUTHORITY_DB_NAME) as db:
        db.execute("DELETE FROM global_log WHERE node_id = ? AND seq = 2", (one.node_id,))
    codes = {
        p["code"] for p in GlobalLog(SubscriptionManager(tmp_path / "auth").db).report()["problems"]
    }
    assert codes == {"log_tampered", "log_gap"}


def test_a_tampered_missing_reordered_or_foreign_entry_is_refused_and_recorded(
    tmp_path: Path,
) -> None:
    manager = authority(tmp_path / "auth")
    glog = GlobalLog(manager.db)
    one, _, entries = node_log(tmp_path / "one.sqlite", 5)
    glog.accept(one.node_id, entries[:1])

    def refused(node_id: bytes, batch: list[bytes]) -> str:
        with pytest.raises(LogRefused) as err:
            glog.accept(node_id, batch)
        return err.value.code

    # A field changed on the way: the hash no longer covers it.
    forged = attrs.evolve(LogEntryWire.decode(entries[1]), event="forget")
    assert refused(one.node_id, [forged.encode()]) == "log_tampered"
    # A hash recomputed over the change still needs the node's signature.
    rehashed = attrs.evolve(
        forged,
        hash=log_entry_hash(
            forged.prev_hash, 2, forged.at, "forget", forged.snapshot_id, forged.detail
        ),
    )
    assert refused(one.node_id, [rehashed.encode()]) == "log_bad_signature"
    # Entry 2 missing: 3 does not follow 1.
    assert refused(one.node_id, [entries[2]]) == "log_gap"
    # Out of order in one message.
    assert refused(one.node_id, [entries[1], entries[3], entries[2]]) == "log_reordered"
    assert refused(one.node_id, [entries[1], entries[2], entries[1]]) == "log_reordered"
    # Entries of another node's chain sent over this node's session.
    two, _, _ = node_log(tmp_path / "two.sqlite", 1)
    assert refused(two.node_id, entries[:1]) == "log_bad_signature"
    # A different entry 1 from the same key (a rewritten history).
    other_catalog = Catalog(tmp_path / "fork.sqlite", signing_key=one.signing_key)
    other_catalog.log("backup_complete", "other")
    fork = LogEntryWire.from_row(other_catalog.log_rows_after(0, 1)[0]).encode()
    assert refused(one.node_id, [fork]) == "log_conflict"

    # The valid prefixes of the reordered messages (entries 2, 3) were kept, nothing else.
    assert glog.head(one.node_id)[0] == 3
    report = glog.report()
    assert report["verified"] is True  # what is stored checks; the refusals are reported
    refusals = [(p["code"], p["seq"]) for p in report["problems"] if p["kind"] == "refused"]
    assert ("log_tampered", 2) in refusals and ("log_gap", 3) in refusals
    assert ("log_reordered", 4) in refusals and ("log_reordered", 2) in refusals
    assert ("log_conflict", 1) in refusals
    # The same refusal again is one problem, not two.
    refused(one.node_id, [entries[4]])
    refused(one.node_id, [entries[4]])
    again = [p for p in glog.report()["problems"] if p["code"] == "log_gap" and p["seq"] == 5]
    assert len(again) == 1
    # The rest, in order, is accepted.
    assert glog.accept(one.node_id, entries[2:])[0] == 5


def test_the_authority_log_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manager = authority(tmp_path / "auth")
    one, _, entries = node_log(tmp_path / "one.sqlite", 2)
    GlobalLog(manager.db).accept(one.node_id, entries)
    manager.close()

    def run(*args: str) -> int:
        try:
            with pytest.raises(SystemExit) as exit_:
                main(list(args))
        finally:
            # main() points logging at the captured stderr, which pytest closes afterwards.
            configure_logging("warning", json=False, stream=sys.__stderr__)
        return int(exit_.value.code or 0)

    assert run("authority", "log", "--home", str(tmp_path / "auth"), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is True
    assert [(e["seq"], e["event"], e["snapshot_id"]) for e in report["entries"]] == [
        (1, "backup_complete", "snap0"),
        (2, "backup_complete", "snap1"),
    ]
    assert {"node_id", "at"} <= set(report["entries"][0])
    with sqlite3.connect(tmp_path / "auth" / AUTHORITY_DB_NAME) as db:
        db.execute("UPDATE global_log SET event = 'forget' WHERE seq = 1")
    assert run("authority", "log", "--home", str(tmp_path / "auth"), "--json") == 1
    assert "fails verification" in capsys.readouterr().err


def test_a_seeded_catalog_continues_the_chain(tmp_path: Path) -> None:
    identity, catalog, _ = node_log(tmp_path / "old.sqlite", 3)
    seq, head = catalog.log_head()
    fresh = Catalog(tmp_path / "new.sqlite", signing_key=identity.signing_key)
    assert fresh.log_head() == (0, LOG_GENESIS)
    assert fresh.seed_log(seq, head) is True
    assert fresh.seed_log(seq + 5, head) is True  # forward only, and only while empty
    assert fresh.seed_log(seq, head) is False
    fresh2 = Catalog(tmp_path / "new2.sqlite", signing_key=identity.signing_key)
    fresh2.seed_log(seq, head)
    entry = fresh2.log("recover")
    assert (entry.seq, entry.prev_hash) == (4, head)
    assert fresh2.verify_log() == (True, "1 entries verified")
    assert fresh2.seed_log(10, head) is False  # it has an entry of its own now
    assert fresh2.profile()["log_forwarded"] == 3


def test_revocations_are_served_in_the_order_they_were_recorded(tmp_path: Path) -> None:
    manager = authority(tmp_path / "auth")
    first, second = NodeIdentity.generate().node_id, NodeIdentity.generate().node_id
    manager.enrol(first)  # serial 1
    manager.enrol(second)  # serial 2
    manager.revoke(second)
    page, position = revocations_since(manager.db, 0)
    assert [Revocation.decode(r).node_id for r in page] == [second]
    # Revoked later, with a lower serial: a node that polled already still gets it.
    manager.revoke(first)
    page, after = revocations_since(manager.db, position)
    assert [Revocation.decode(r).node_id for r in page] == [first]
    assert revocations_since(manager.db, after) == ([], after)


# --- in process: real sessions between an authority node and subscribed members ------------


@asynccontextmanager
async def certified_grid(
    tmp_path: Path, count: int, **settings: Any
) -> AsyncIterator[tuple[list[Node], SubscriptionManager, trio.Nursery, dict[str, Any]]]:
    """An authority node and ``count`` members, each enrolled before it starts."""
    managers: list[SubscriptionManager] = []

    def enrol(home: Path, identity: NodeIdentity) -> None:
        if not managers:  # the authority's home exists once the first node is made
            managers.append(SubscriptionManager(tmp_path / "auth"))
        write_certificate(home, managers[0].enrol(identity.node_id))

    grid_settings = {"gossip_sync_interval_s": 2, "allocate": "1GB", **settings}
    try:
        async with open_authority_grid(tmp_path, count, grid_settings, before_start=enrol) as (
            nodes,
            nursery,
            common,
        ):
            with trio.fail_after(20):
                while any(len(n.gossiper.alive()) < count for n in nodes):  # type: ignore[union-attr]
                    await trio.sleep(0.05)
            yield nodes, managers[0], nursery, common
    finally:
        for manager in managers:
            manager.close()


async def wait_forwarded(node: Node, manager: SubscriptionManager) -> tuple[int, bytes]:
    """Until the authority holds this node's whole chain (forwarded after each job)."""
    glog = GlobalLog(manager.db)
    with trio.fail_after(10):
        while True:
            head = node.catalog.log_head()
            if await trio.to_thread.run_sync(glog.head, node.identity.node_id) == head:
                return head
            await trio.sleep(0.05)


async def test_jobs_are_forwarded_and_a_node_recovered_from_its_key_continues_its_chain(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data.bin").write_bytes(os.urandom(300_000))
    async with certified_grid(tmp_path / "g", 4) as (nodes, manager, nursery, common):
        source = nodes[1]
        backup = {"paths": [str(tree)], "redundancy": "2/3", "tags": ["weekly"]}
        snap = (await control(source, "backup", **backup))["snapshot_id"]
        root_head = source.catalog.log_head()
        # A job after the root was published: its entry is in the global log, not the root.
        await control(source, "verify", snapshot=snap)
        head = await wait_forwarded(source, manager)
        assert head[0] == root_head[0] + 1
        assert source.catalog.profile()["log_forwarded"] == head[0]
        fetched = await fetch_root(source.services)
        assert fetched is not None and log_head_of(fetched[1]) == root_head

        # The machine is lost; the same key comes back in a fresh home.
        identity = source.identity
        source.shutdown()
        with trio.fail_after(10):
            await source.stopped.wait()
        values = {**common, "listen": "127.0.0.1:0", "seeds": [nodes[0].transport.address]}
        config = build_config(tmp_path / "recovered", values)
        config.home.mkdir()
        write_certificate(config.home, manager.renew(identity.node_id))
        again = Node(config, identity)
        await nursery.start(again.run)
        nodes.append(again)
        with trio.fail_after(20):
            while len(again.gossiper.alive()) < 3:  # type: ignore[union-attr]
                await trio.sleep(0.05)
        assert again.log_forwarder is not None
        result = await recover_catalog(again.services, again.log_forwarder.authority_head)
        assert result["snapshots"] == [snap]
        recovered = again.catalog.snapshot(snap)
        assert recovered is not None and recovered.tags == ("weekly",)  # via the root's JSON
        # It continues after the authority's head, later than the root's.
        assert result["log_continues_after"] == head[0]
        [entry] = again.catalog.log_entries()
        assert (entry.seq, entry.prev_hash, entry.event) == (head[0] + 1, head[1], "recover")
        assert again.catalog.verify_log()[0] is True
        await again.log_forwarder.forward()
        report = await trio.to_thread.run_sync(GlobalLog(manager.db).report)
        assert report["verified"] is True and report["problems"] == []
        mine = [e for e in report["entries"] if e["node_id"] == source.identity.printable_id]
        assert [e["seq"] for e in mine] == list(range(1, head[0] + 2))
        assert mine[-1]["event"] == "recover"


async def test_a_revoked_node_is_cut_off_within_seconds(tmp_path: Path) -> None:
    async with certified_grid(tmp_path, 2, revocation_poll_s=0.5) as (nodes, manager, _, _c):
        auth, one, two = nodes
        await one.transport.connect(two.transport.address, expect=two.identity.node_id)
        assert one.transport.link(two.identity.node_id) is not None
        await trio.to_thread.run_sync(manager.revoke, two.identity.node_id)
        # Well before the certificate sweep (10 s) and the certificate's expiry (30 days).
        # (The authority lets it dial in again, to be told "revoked" if it asks to renew.)
        with trio.fail_after(4):
            while one.transport.link(two.identity.node_id) is not None:
                await trio.sleep(0.05)
        assert one.revocation_poller is not None and one.revocation_poller.applied == 1
        # It is refused at the handshake, whoever dials.
        with pytest.raises(PeerError):
            await two.transport.connect(one.transport.address, expect=one.identity.node_id)
        with pytest.raises(PeerError):
            await one.transport.connect(two.transport.address, expect=two.identity.node_id)
        # The authority lets it in (to be told "revoked" should it ask for a certificate)
        # but answers nothing else.
        link = await two.transport.connect(auth.transport.address)
        with pytest.raises(RemoteError, match="not_admitted"):
            await link.request(lambda rid: GetRevocations(request_id=rid, since=0))


async def test_revocations_spread_from_peer_to_peer_without_polling(tmp_path: Path) -> None:
    """Members poll only hourly here: the revocation reaches them from the authority's
    node and from each other (SpreadRevocations), checked under the grid key; a spread
    signed by anyone else revokes nothing and is not passed on."""
    async with certified_grid(tmp_path, 3, revocation_poll_s=3600) as (nodes, manager, _, _c):
        auth, one, two, three = nodes
        for member in (one, three):
            await member.transport.connect(two.transport.address, expect=two.identity.node_id)
        # Only `three` has a session with the authority (the others lose theirs), so
        # `one` can learn it only from `three`.
        link = one.transport.link(auth.identity.node_id)
        if link is not None:
            await link.aclose("test", "only three talks to the authority here")
        await one.transport.connect(three.transport.address, expect=three.identity.node_id)
        await three.transport.connect(auth.transport.address, expect=auth.identity.node_id)
        assert one.revocation_poller is not None and three.revocation_poller is not None
        polled_at = one.revocation_poller.position
        # A forged revocation from a member: checked, refused, not applied.
        forged = protocol_revocation(SigningKey.generate(), auth.config.grid_id, one)
        three_link = three.transport.link(one.identity.node_id)
        assert three_link is not None
        await three_link.send(SpreadRevocations(revocations=(forged,)))
        with trio.fail_after(5):
            while one.revocation_poller.refused == 0:
                await trio.sleep(0.05)
        assert one.transport.link(three.identity.node_id) is not None
        await trio.to_thread.run_sync(manager.revoke, two.identity.node_id)
        with trio.fail_after(8):  # the authority reads its database every 2 s
            while any(m.transport.link(two.identity.node_id) for m in (one, three)):
                await trio.sleep(0.05)
        assert one.revocation_poller.position == polled_at  # it did not poll: it was told
        assert one.revocation_poller.applied == 1 and one.revocation_poller.spread_received >= 1
        with pytest.raises(PeerError):
            await two.transport.connect(one.transport.address, expect=one.identity.node_id)


def protocol_revocation(key: SigningKey, grid_id: bytes, victim: Node) -> bytes:
    """A revocation of ``victim`` signed by ``key`` (not the grid's authority)."""
    return issue_revocation(
        key, grid_id=grid_id, node_id=victim.identity.node_id, serial=1, revoked_at=1
    ).encode()
