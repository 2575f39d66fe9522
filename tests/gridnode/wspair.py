"""One real websocket on 127.0.0.1, both ends in the test's process: for tests of what
the transport does to frames on an actual socket (``test_ws_framing``,
``test_whole_frames``)."""

from __future__ import annotations

import trio
import trio_websocket


async def websocket_pair(
    nursery: trio.Nursery,
) -> tuple[trio_websocket.WebSocketConnection, trio_websocket.WebSocketConnection]:
    """The server and the client end of a fresh websocket (their reader tasks run in
    ``nursery``); the listener is closed once both are connected."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    ends: dict[str, trio_websocket.WebSocketConnection] = {}

    async def accept() -> None:
        request = await trio_websocket.wrap_server_stream(nursery, await listener.accept())
        ends["server"] = await request.accept()

    async def dial() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        ends["client"] = await trio_websocket.wrap_client_stream(nursery, stream, "127.0.0.1", "/")

    async with trio.open_nursery() as handshake:
        handshake.start_soon(accept)
        handshake.start_soon(dial)
    await listener.aclose()
    return ends["server"], ends["client"]
