"""Reading from peers against a node-wide byte budget, under the websocket layer.

trio-websocket assembles a whole message before the node sees it, and its reader task
keeps reading while the node is busy: left alone, each authenticated peer could make
the node hold about three frames of up to ``max_frame_bytes`` (one being assembled, one
queued, one being handled), 48 MiB at the default, and a hundred hostile members
several GiB.  So the TCP stream under every link's websocket is a ``MeteredStream``:

- each link may hold ``free_bytes`` (1 MiB) read but not yet handled without asking
  anyone, so probes, acks and answers to this node's own requests always flow;
- beyond that, every byte it reads is granted from one ``ByteBudget`` shared by all
  links (256 MiB by default); when it is spent, links that want more stop reading, and
  TCP pushes back on their senders;
- the link hands bytes back as it finishes each message (``consumed``: an answer or a
  one-way message at once, a request once it has been served), and whenever the
  websocket has nothing buffered it settles the count exactly (``all_consumed``), so
  framing overhead and control frames never leak budget.

So all peers together hold at most ``budget + links × free_bytes``: with 100 members,
356 MiB, whatever they send.
"""

from __future__ import annotations

from typing import Any, Final

import trio

from ..byte_budget import ByteBudget

__all__ = ["FREE_BYTES_PER_LINK", "INBOUND_BUDGET_BYTES", "MeteredStream"]

INBOUND_BUDGET_BYTES: Final = 256 * 1024 * 1024
FREE_BYTES_PER_LINK: Final = 1024 * 1024


class MeteredStream(trio.abc.Stream):
    """A stream whose reads beyond ``free_bytes`` unhandled bytes need ``budget``."""

    def __init__(
        self, inner: trio.SocketStream, budget: ByteBudget, free_bytes: int = FREE_BYTES_PER_LINK
    ) -> None:
        self.inner = inner
        self.socket = inner.socket  # for callers that look at the addresses
        self.budget = budget
        self.free_bytes = free_bytes
        #: Read from the socket and not yet handed back by the link's reader.
        self.held = 0
        #: The part of ``held`` above ``free_bytes``, granted by ``budget``.
        self.granted = 0
        self.closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        want = max_bytes or 65536
        room = self.free_bytes + self.granted - self.held
        if room <= 0:  # past the free allowance: wait for the shared budget
            got = await self.budget.acquire(want)  # not ``granted += await``: it may change
            self.granted += got  # while this read waits
            room = self.free_bytes + self.granted - self.held
        if self.closed:  # the link ended while this read waited for the budget
            self._settle()
            raise trio.ClosedResourceError("the link is closed")
        try:
            data = await self.inner.receive_some(max(1, min(want, room)))
        except BaseException:
            self._settle()
            raise
        self.held += len(data)
        self._settle()
        return data

    def consumed(self, size: int) -> None:
        """The link's reader finished a message of ``size`` bytes."""
        self.held = max(0, self.held - size)
        self._settle()

    def all_consumed(self, still_held: int = 0) -> None:
        """The websocket buffers nothing: what is read is handled, but for ``still_held``
        bytes of requests still being served."""
        self.held = still_held
        self._settle()

    def _settle(self) -> None:
        excess = self.granted - max(0, self.held - self.free_bytes)
        if excess > 0:
            self.granted -= excess
            self.budget.release(excess)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    def release_all(self) -> None:
        """The link is over: nothing it read is held any more, nor will be."""
        self.closed = True
        self.all_consumed()

    async def aclose(self) -> None:
        self.release_all()
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:  # setsockopt and friends
        return getattr(self.inner, name)
