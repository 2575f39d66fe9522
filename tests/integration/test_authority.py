"""Issue 9, first slice, with real node processes: a grid created by its authority, a node
that joins with an invite, a reused invite refused, a revocation, a renewal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from simulations.harness import GridCommandError, LocalGrid, NodeSpec

pytestmark = pytest.mark.slow


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded by the deadline
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} within {timeout} s")


def test_invite_subscribe_revoke_renew(tmp_path: Path) -> None:
    with LocalGrid(tmp_path / "g", name="office", authority=True) as grid:
        # Certificates of 6 s: nodes renew every 3 s, so a renewal shows within the test.
        fast = ("certificate_lifetime_s=6",)
        grid.add_authority(NodeSpec(name="auth", location="Paris", extra=fast))
        grid_file = grid.grid_file.read_text()
        assert "authority_key" in grid_file and "open" not in grid_file
        auth = grid.nodes["auth"].address
        invite = grid.invite("auth", plan="small")
        grid.add(NodeSpec(name="n1", location="Lyon"), seeds=[auth], invite=invite)
        grid.add(NodeSpec(name="n2", location="Rome"), seeds=[auth])
        grid.start_all()

        # n1 subscribes on its first start and shows its subscription.
        sub = wait_for(lambda: grid.status("n1").get("subscription"), 15, "n1 has no certificate")
        assert sub["plan"] == "small" and sub["allocations"]["target_bytes"] == 40 * 10**9
        n1_id = grid.status("n1")["node_id"]

        # The same invite for another node is refused, with the authority's reason.
        with pytest.raises(GridCommandError) as err:
            grid.cli("n2", "subscribe", "--invite", invite)
        assert "already been used" in err.value.stderr and err.value.returncode == 1
        assert "Traceback" not in err.value.stderr
        assert "subscription" not in grid.status("n2")

        # Renewal in the background gives a later expiry.
        first = sub["expires"]
        wait_for(
            lambda: grid.status("n1")["subscription"]["expires"] > first,
            12,
            "n1's certificate was not renewed",
        )

        # Revoking marks the client revoked in the global profile.
        grid.cli("auth", "authority", "revoke", n1_id)
        clients = {c["node_id"]: c for c in grid.cli("auth", "authority", "clients")}
        assert clients[n1_id]["status"] == "revoked"
        assert clients[n1_id]["plan"] == "small" and "usage" in clients[n1_id]
        assert {c["status"] for k, c in clients.items() if k != n1_id} == {"active"}


def test_only_subscribed_nodes_take_part(tmp_path: Path) -> None:
    """A fresh key that knows the grid id (n3: inited from the grid file, never
    subscribed) gets no session with members and no place in their member tables; the
    subscribed nodes mesh and exchange packets."""
    with LocalGrid(tmp_path / "g", name="office", authority=True) as grid:
        grid.add_authority(NodeSpec(name="auth", location="Paris"))
        auth = grid.nodes["auth"].address
        for name, city in (("n1", "Lyon"), ("n2", "Rome")):
            grid.add(NodeSpec(name=name, location=city), seeds=[auth], invite=grid.invite("auth"))
        grid.add(NodeSpec(name="n3", location="Milan"), seeds=[auth, grid.nodes["n1"].address])
        grid.start_all()
        for name in ("n1", "n2"):
            wait_for(lambda n=name: grid.status(n).get("subscription"), 20, f"{name} subscribed")
        members = {n: grid.status(n)["node_id"] for n in ("auth", "n1", "n2", "n3")}

        def alive(observer: str) -> set[str]:
            return {m["node_id"] for m in grid.status(observer)["members"] if m["state"] == "alive"}

        wait_for(
            lambda: (
                {members["n2"], members["auth"]} <= alive("n1")
                and {members["n1"], members["auth"]} <= alive("n2")
            ),
            40,
            "the subscribed nodes did not mesh",
        )
        time.sleep(3)  # n3 has been trying to join all along
        for observer in ("auth", "n1", "n2"):
            assert members["n3"] not in alive(observer), observer
        assert alive("n3") == set()  # nobody let it in, so it learned nobody
        refused = grid.status("n1")["counters"]["refused_handshakes"]
        assert refused >= 1
        # The subscribed nodes still do their job: a backup from n1, 1-of-2, lands on the
        # authority and n2, never on n3.
        tree = tmp_path / "tree"
        tree.mkdir()
        (tree / "f.txt").write_text("subscribed data\n" * 100)
        result = grid.cli("n1", "backup", str(tree), "--redundancy", "1/2")
        placement = grid.cli("n1", "placement", result["snapshot_id"])
        targets = {p["target"] for c in placement["chunks"] for p in c["packets"]}
        assert members["n3"] not in targets
