"""The harness's loopback ports: pytest-xdist's workers draw from disjoint slices, since
two workers once handed out the same port and a node exited with "Address already in
use" in CI (the check binds and releases; the node binds seconds later)."""

from __future__ import annotations

import pytest

from gridnode.testing.localgrid import _worker_slice, free_port


def test_xdist_workers_draw_ports_from_disjoint_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    drawn: dict[str, list[int]] = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        assert _worker_slice(10000, 32768) == {"gw0": (10000, 21384), "gw1": (21384, 32768)}[worker]
        drawn[worker] = [free_port() for _ in range(20)]
    assert max(drawn["gw0"]) < min(drawn["gw1"])
    assert len(set(drawn["gw0"] + drawn["gw1"])) == 40  # never twice from one process


def test_outside_xdist_the_whole_range_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert _worker_slice(10000, 32768) == (10000, 32768)
    # Too many workers for the range to split usefully: shared, as before.
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "500")
    assert _worker_slice(10000, 32768) == (10000, 32768)
