"""Metering with real node processes (issue 9): usage reports, a short billing period,
`gridnode account`, and the authority killed for longer than a billing period."""

from __future__ import annotations

import itertools
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from gridnode.authority import AUTHORITY_DB_NAME
from simulations.harness import LocalGrid, NodeSpec

pytestmark = pytest.mark.slow

FAST = ("usage_report_interval_s=1",)


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded by the deadline
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError(f"{what} within {timeout} s")


def credited(account: dict[str, Any]) -> bool:
    """An invoice whose statement credits target storage held for others."""
    for invoice in account["invoices"]:
        lines = {line["kind"]: line for line in invoice["statement"]["credits"]}
        if invoice["verified"] and lines["target_storage"]["basis"] > 0:
            return True
    return False


def test_account_shows_usage_credits_and_invoices_and_survives_an_authority_outage(
    tmp_path: Path,
) -> None:
    with LocalGrid(tmp_path / "g", name="metered", authority=True) as grid:
        grid.add_authority(
            NodeSpec(name="auth", location="Paris", extra=(*FAST, "billing_period_s=3"))
        )
        auth = grid.nodes["auth"].address
        for name, city in (("n1", "Lyon"), ("n2", "Rome")):
            grid.add(
                NodeSpec(name=name, location=city, extra=FAST),
                seeds=[auth],
                invite=grid.invite("auth"),
            )
        grid.start_all()
        for name in ("n1", "n2"):
            wait_for(lambda n=name: grid.status(n).get("subscription"), 20, f"{name} subscribed")
        wait_for(lambda: len(grid.status("n1")["members"]) >= 2, 30, "n1 sees the grid")
        tree = tmp_path / "tree"
        tree.mkdir()
        (tree / "data.bin").write_bytes(os.urandom(1 << 20))  # 1 MiB, incompressible
        grid.cli("n1", "backup", str(tree), "--redundancy", "1/2")

        # n1 stores as a source; n2 (or the authority) holds its packets and is credited.
        account = wait_for(
            lambda: (a := grid.cli("n1", "account"))["usage"]["source_bytes"] > 0 and a,
            20,
            "n1's usage shows its source bytes",
        )
        assert account["subscription"]["plan"] and account["subscription"]["expires"]
        assert account["usage"]["sent_bytes"] > 1_000_000
        holders = [n for n in ("n2", "auth") if grid.cli(n, "account")["usage"]["target_bytes"]]
        assert holders, "nobody reports holding n1's packets"
        holder = wait_for(
            lambda: credited(a := grid.cli(holders[0], "account")) and a,
            20,
            f"{holders[0]} gets an invoice crediting its target storage",
        )
        statement = holder["statement"]
        assert {"period", "charges", "credits", "balance", "currency"} <= set(statement)
        n1_id = grid.status("n1")["node_id"]

        def agreed() -> bool:
            """The authority's record of n1 equals n1's own account (both move while n1's
            reports catch up with its backup's last record pieces: compare them settled)."""
            clients = {c["node_id"]: c for c in grid.cli("auth", "authority", "clients")}
            mine = grid.cli("n1", "account")["usage"]["source_bytes"]
            return bool(clients[n1_id]["usage"]["source_bytes"] == mine > 0)

        wait_for(agreed, 20, "the authority's record of n1's usage matches n1's account")

        # n1's own account once it has an invoice: what it shows while the authority is
        # down is the last account it fetched.
        wait_for(lambda: grid.cli("n1", "account")["invoices"], 20, "n1 gets an invoice")
        # The authority is killed for longer than a billing period: reports queue.
        grid.kill("auth")
        down = wait_for(
            lambda: (a := grid.cli("n1", "account"))["pending_reports"] >= 3 and a,
            15,
            "n1 queues its reports while the authority is down",
        )
        assert down["stale"] and down["authority_error"]
        assert down["invoices"]  # the last account fetched, shown while it is down
        grid.start("auth")
        grid.wait_ready("auth")
        wait_for(
            lambda: grid.cli("n1", "account")["pending_reports"] == 0,
            30,
            "n1's queued reports are delivered",
        )

        # Nothing lost, nothing counted twice: each node's reports are numbered 1..N
        # without a gap and tile time without overlap, and each period has one invoice.
        db = sqlite3.connect(grid.nodes["auth"].home / AUTHORITY_DB_NAME)
        try:
            nodes = [row[0] for row in db.execute("SELECT DISTINCT node_id FROM usage_reports")]
            assert len(nodes) == 3
            for node in nodes:
                rows = db.execute(
                    "SELECT sequence, start_s, end_s FROM usage_reports WHERE node_id = ? "
                    "ORDER BY sequence",
                    (node,),
                ).fetchall()
                assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
                assert all(a[2] == b[1] for a, b in itertools.pairwise(rows))
            periods = db.execute(
                "SELECT node_id, period_start, COUNT(*) FROM invoices GROUP BY node_id, "
                "period_start HAVING COUNT(*) > 1"
            ).fetchall()
            assert periods == []
        finally:
            db.close()
