"""The transfers board: every event still reaches the job's client, the latest progress
of running jobs is kept, queries are not jobs, and a failure is an outcome."""

from __future__ import annotations

from typing import Any

import pytest

from gridnode.dashboard.jobs import RECENT, JobBoard


async def test_progress_is_kept_and_every_event_forwarded() -> None:
    board = JobBoard(clock=lambda: 100.0)
    got: list[dict[str, Any]] = []

    async def client(event: dict[str, Any]) -> None:
        got.append(event)

    with board.track("backup", client) as emit:
        await emit({"event": "started", "bytes_total": 10, "files_total": 1})
        await emit({"event": "progress", "bytes_read": 4, "bytes_total": 10, "secret": "x"})
        running = board.view()["running"]
        assert [j["method"] for j in running] == ["backup"]
        assert running[0]["progress"] == {"bytes_read": 4, "bytes_total": 10}
    assert len(got) == 2 and got[1]["secret"] == "x"  # the client's events are unchanged
    view = board.view()
    assert view["running"] == [] and view["recent"][0]["outcome"] == "ok"

    with board.track("status", client) as emit:  # a query: passed through, not listed
        assert emit is client
    assert len(board.view()["recent"]) == 1


async def test_a_failed_job_is_listed_failed_and_the_list_is_bounded() -> None:
    board = JobBoard()

    async def client(event: dict[str, Any]) -> None:
        raise ConnectionError("client gone")

    with pytest.raises(ConnectionError), board.track("restore", client) as emit:
        await emit({"event": "progress", "bytes": 1})
    assert board.view()["recent"][0]["outcome"] == "failed"
    for _ in range(RECENT + 3):
        with board.track("verify", client):
            pass
    assert len(board.view()["recent"]) == RECENT
