"""A backup and a restore leave no packet or chunk to the cyclic garbage collector.

Data the pipeline holds must go when its last user lets go of it: anything a reference
cycle keeps (closures that name each other, an exception whose traceback holds the
frame that holds it) lives on until the collector's next run of its generation, which
may be long after, and a window that bounds what is held in flight then bounds nothing.
The retriever's per-chunk closures did so: a tree restore held 18 MiB of packets, twice
its prefetch window (issue 11).  Here every node of a real in-process grid runs with the
collector saving what it finds instead of freeing it, and nothing it found may hold a
buffer of a packet's size.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from gridnode.errors import RemoteError
from protocol import Message, StorePacket, StorePackets

from .inproc import open_grid

#: Smaller buffers (frames of control messages, names) are not the pipeline's data.
BIG = 64 * 1024


def _big_buffers(garbage: list[object]) -> Iterator[tuple[str, int]]:
    """(what holds it, size) of every large buffer a garbage object refers to."""
    for holder in garbage:
        for ref in gc.get_referents(holder):
            if isinstance(ref, bytes | bytearray | memoryview):
                size = ref.nbytes if isinstance(ref, memoryview) else len(ref)
                if size >= BIG:
                    yield type(holder).__qualname__, size


@contextlib.contextmanager
def _collector_saving() -> Iterator[None]:
    """The cyclic collector keeps what it finds in ``gc.garbage`` instead of freeing it."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def _collected() -> list[tuple[str, int]]:
    """Run the collector: the large buffers in what it found (which is then dropped)."""
    gc.collect()
    found = list(_big_buffers(gc.garbage))
    gc.garbage.clear()
    return found


def _random_files(data: Path, mib: list[int]) -> None:
    data.mkdir()
    for index, size in enumerate(mib):
        (data / f"f{index}.bin").write_bytes(os.urandom(size * 1024 * 1024))


def test_packets_and_chunks_are_freed_without_the_cycle_collector(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _random_files(data, [3, 4, 5])  # several chunks per file, and chunks of several sizes
    found: list[tuple[str, int]] = []

    async def main() -> None:
        async with open_grid(tmp_path / "grid", 7) as grid:
            _collected()  # what starting the grid left is not the jobs'
            backup = await grid.call(0, "backup", paths=[str(data)])
            restored = await grid.call(
                0, "restore", snapshot=backup["snapshot_id"], to=str(tmp_path / "out")
            )
            assert restored["files"] == 3
            found.extend(_collected())

    with _collector_saving():
        trio.run(main)
    for index in range(3):
        out = tmp_path / "out" / "data" / f"f{index}.bin"
        assert out.read_bytes() == (data / f"f{index}.bin").read_bytes()
    assert found == []


class _RefuseStores:
    """A target whose disk refuses every packet: the source must find others."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.refused = 0

    async def handle_request(self, link: Any, msg: Message, digest: bytes | None) -> Message:
        if isinstance(msg, StorePacket | StorePackets):
            self.refused += 1
            raise RemoteError("storage_error", "read-only file system")
        result: Message = await self.node.handle_request(link, msg, digest)
        return result

    def handle_oneway(self, link: Any, msg: Message) -> None:
        self.node.handle_oneway(link, msg)


def test_packets_sent_again_elsewhere_are_freed_without_the_cycle_collector(
    tmp_path: Path,
) -> None:
    """A failed store's error is kept as a value to report; with its traceback it held the
    frames that sent the packets, in a cycle (the frame held the error), so every packet
    whose first target refused it waited for the collector."""
    data = tmp_path / "data"
    _random_files(data, [3, 3, 3])
    refusing: list[_RefuseStores] = []

    def wrap(node: Any) -> Any:
        if node.config.home.name == "n2":
            refusing.append(_RefuseStores(node))
            return refusing[0]
        return node

    found: list[tuple[str, int]] = []
    replaced: list[int] = []

    async def main() -> None:
        async with open_grid(tmp_path / "grid", 8, wrap_handler=wrap) as grid:
            _collected()
            backup = await grid.call(0, "backup", paths=[str(data)])
            replaced.append(backup["packets_replaced"])
            found.extend(_collected())

    with _collector_saving():
        trio.run(main)
    assert refusing[0].refused > 0 and replaced[0] > 0  # the retry path was taken
    assert found == []
