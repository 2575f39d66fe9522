"""The Prometheus endpoint (issue 12): loopback only, the figures an operator graphs,
collected on the node's own loop at each scrape."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import trio

from gridnode.config import ConfigError
from gridnode.control import ControlError
from gridnode.metrics import check_metrics_address, serve_metrics

from .inproc import open_grid


async def _get(port: int, path: str = "/metrics") -> tuple[str, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return head.split("\r\n")[0], body


def _value(body: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", body, re.M)
    assert match, f"{name} not in the scrape"
    return float(match.group(1))


def test_only_loopback_addresses_are_accepted() -> None:
    assert check_metrics_address("127.0.0.1:9474") == ("127.0.0.1", 9474)
    assert check_metrics_address("[::1]:9474") == ("::1", 9474)
    for bad in ("0.0.0.0:9474", "10.0.0.5:9474", "example.com:9474"):
        with pytest.raises(ConfigError, match="loopback"):
            check_metrics_address(bad)


async def test_a_scrape_shows_storage_members_sessions_and_backup_age(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f.bin").write_bytes(os.urandom(200_000))
    async with open_grid(tmp_path / "grid", 7) as grid, trio.open_nursery() as nursery:
        holder = grid.nodes[1]
        port = await nursery.start(serve_metrics, holder, "127.0.0.1:0")
        status, body = await _get(port)
        assert status == "HTTP/1.1 200 OK"
        assert _value(body, 'gridnode_members{state="alive"}') == 6
        assert _value(body, 'gridnode_storage_bytes{kind="allocated"}') == 1e9
        assert _value(body, "gridnode_packets_held") == 0
        assert "gridnode_last_backup_age_seconds" not in body
        await grid.call(0, "backup", paths=[str(tree)])
        await grid.call(1, "backup", paths=[str(tree)])
        _, body = await _get(port)
        held = _value(body, "gridnode_packets_held")
        assert held == holder.packets.statistics().packet_count > 0
        assert _value(body, 'gridnode_storage_bytes{kind="used"}') > 0
        assert 0 <= _value(body, "gridnode_last_backup_age_seconds") < 60
        assert _value(body, "gridnode_sessions") >= 1
        assert re.search(r'^gridnode_store_events_total\{event="packets_stored"\} \d', body, re.M)
        assert (await _get(port, "/other"))[0] == "HTTP/1.1 404 Not Found"
        nursery.cancel_scope.cancel()


async def test_the_node_serves_metrics_when_configured(tmp_path: Path) -> None:
    async with open_grid(tmp_path / "grid", 2, settings={"metrics_listen": "127.0.0.1:0"}) as grid:
        port = grid.nodes[0].metrics_port
        assert port is not None
        status, body = await _get(port)
        assert status == "HTTP/1.1 200 OK" and "gridnode_members" in body
    with pytest.raises(ConfigError, match="loopback"):
        from gridnode.config import build_config

        build_config(tmp_path / "x", {"grid_id": "00" * 16, "metrics_listen": "0.0.0.0:9474"})


async def test_a_scrape_counts_jobs_by_outcome_and_what_repairs_did(tmp_path: Path) -> None:
    """Jobs ended by method and outcome, and the repair runs' outcomes (issue 12): a
    packet lost by its holder is rebuilt by a repair, and the scrape says so."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f.bin").write_bytes(os.urandom(200_000))
    async with open_grid(tmp_path / "grid", 7) as grid, trio.open_nursery() as nursery:
        source = grid.nodes[0]
        port = await nursery.start(serve_metrics, source, "127.0.0.1:0")
        _, body = await _get(port)
        assert _value(body, 'gridnode_repair_runs_total{result="complete"}') == 0
        assert _value(body, "gridnode_repair_packets_rebuilt_total") == 0
        assert "gridnode_jobs_total{" not in body
        done = await grid.call(0, "backup", paths=[str(tree)])
        with pytest.raises(ControlError):
            await grid.call(0, "verify", snapshot="nosuchsnapshot")
        chunk = next(iter(source.catalog.iter_chunks_of(done["snapshot_id"])))
        lost = chunk.packets[0]
        holder = next(n for n in grid.nodes if n.identity.node_id == lost.target)
        holder.packets.path_for(lost.packet_id).unlink()
        repaired = await grid.call(0, "repair")
        assert repaired["chunks_repaired"] == 1 and repaired["packets_rebuilt"] == 1
        await grid.call(0, "status")  # a query: not a job
        _, body = await _get(port)
        assert _value(body, 'gridnode_jobs_total{method="backup",outcome="ok"}') == 1
        assert _value(body, 'gridnode_jobs_total{method="verify",outcome="failed"}') == 1
        assert _value(body, 'gridnode_jobs_total{method="repair",outcome="ok"}') == 1
        assert 'method="status"' not in body
        assert _value(body, 'gridnode_repair_runs_total{result="complete"}') == 1
        assert _value(body, 'gridnode_repair_runs_total{result="incomplete"}') == 0
        assert _value(body, 'gridnode_repair_chunks_total{outcome="repaired"}') == 1
        assert _value(body, 'gridnode_repair_chunks_total{outcome="lost"}') == 0
        assert _value(body, "gridnode_repair_packets_rebuilt_total") == 1
        assert _value(body, "gridnode_packets_held") == source.packets.statistics().packet_count
        assert _value(body, 'gridnode_storage_bytes{kind="free"}') == source.packets.free_bytes
        nursery.cancel_scope.cancel()


async def test_a_scrape_counts_audit_outcomes_and_distrusted_holders(tmp_path: Path) -> None:
    """Audit outcomes and distrusted holders (issue 12's "audit outcomes"): a holder
    whose packet files rot fails its audits, and the scrape says so."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "random.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    settings = {"audit_interval_s": 0}  # rounds run by hand, below
    async with (
        open_grid(tmp_path / "grid", 4, settings=settings) as grid,
        trio.open_nursery() as nursery,
    ):
        source = grid.nodes[0]
        port = await nursery.start(serve_metrics, source, "127.0.0.1:0")
        _, body = await _get(port)
        assert _value(body, 'gridnode_audits_total{outcome="passed"}') == 0
        assert _value(body, "gridnode_audited_holders") == 0
        await grid.call(0, "backup", paths=[str(tree)], redundancy="2/3")
        auditor = source.auditor
        assert auditor is not None
        auditor.batch = 30
        await auditor.audit_round()
        _, body = await _get(port)
        passed = _value(body, 'gridnode_audits_total{outcome="passed"}')
        assert passed > 0 and _value(body, "gridnode_audited_holders") == 3
        assert _value(body, 'gridnode_audits_total{outcome="failed"}') == 0
        assert _value(body, "gridnode_distrusted_holders") == 0
        rotten = next(n for n in grid.nodes[1:] if list(n.packets.iter_ids()))
        for packet_id in rotten.packets.iter_ids():
            path = rotten.packets.path_for(packet_id)
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x40
            path.write_bytes(bytes(data))
        for _ in range(4):
            await auditor.audit_round()
        _, body = await _get(port)
        assert _value(body, 'gridnode_audits_total{outcome="failed"}') > 0
        assert _value(body, 'gridnode_audits_total{outcome="passed"}') > passed
        assert _value(body, "gridnode_distrusted_holders") == 1
        nursery.cancel_scope.cancel()
