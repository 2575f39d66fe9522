"""The dashboard's backup log page on a long log: the newest entries and the true count,
without the whole log held at once (it is read as the CLI reads it, page by page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from gridnode.dashboard.data import LOG_ENTRIES_LISTED

from ..gridnode.inproc import open_grid
from .test_rules_held import node_source

LOGGED = 1_300  # three pages of the log method's stream, and more than the page lists


def test_the_log_page_lists_the_newest_entries_and_counts_them_all(tmp_path: Path) -> None:
    async def main() -> None:
        async with open_grid(tmp_path / "grid", 1) as grid:
            (node,) = grid.nodes

            def write_log() -> None:
                for number in range(LOGGED):
                    node.catalog.log("test_event", None, number=number)

            await node.services.db(write_log)
            seen: list[dict[str, Any]] = []
            method = node.request.methods["log"]

            async def log(params: dict[str, Any], emit: Any) -> Any:
                seen.append(params)
                return await method(params, emit)

            source = node_source(node, tmp_path / "restore", {"log": log})
            page = await source.log()
            full = await grid.call(0, "log")

        assert seen == [{"stream": True}]  # streamed, never asked for in one piece
        assert page["verified"] is True
        assert page["total"] == len(full["entries"]) >= LOGGED
        newest = full["entries"][::-1][:LOG_ENTRIES_LISTED]
        assert [e["seq"] for e in page["entries"]] == [e["seq"] for e in newest]
        assert page["entries"][0]["event"] == "test_event"

    trio.run(main)
