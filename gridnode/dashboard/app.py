"""The dashboard's ASGI application: pages, their JSON, and a stream of live updates.

Plain ASGI (no framework): a handful of routes, all ``GET``.

- ``/login?token=T`` trades a one-time login token for a session cookie
  (``gridnode.dashboard.access``) and redirects to the map.  Every other route answers
  401 without a valid session cookie, whatever address the server is bound to.
- ``/`` the grid map, ``/snapshots`` the snapshots; ``/static/NAME`` their scripts,
  style and the bundled coastlines (read into memory at start, served by name from a
  fixed list: no path ever reaches the file system).
- ``/api/map`` and ``/api/snapshots``: the data the pages draw (``gridnode.dashboard.data``).
- ``/api/events``: server-sent events, ``map`` when the map's data changed (checked
  every ``tick_s``), with ``?snapshots=1`` ``snapshots`` when the list or its health
  did (checked every ``SNAPSHOT_TICKS`` ticks), with ``?jobs=1`` ``jobs`` (running
  transfers and their progress, every ``JOB_TICK_S``).  The browser's EventSource
  reconnects by itself, so a stream ends after ``STREAM_MAX_S`` and when a send stalls
  for ``SEND_TIMEOUT_S``; at most ``MAX_STREAMS`` run at once.

Every answer forbids caching and framing and carries a Content-Security-Policy of
``'self'`` only: the pages load nothing from anywhere else, and could not if a bug tried.
"""

from __future__ import annotations

import collections
import json
import math
import re
import shutil
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, quote

import attrs
import trio

from ..control import ControlError
from ..log import get_logger
from ..restore import SnapshotNotFound
from ..storage.catalog import Catalog
from .access import Access
from .data import (
    HEALTH_CHUNK_LIMIT,
    LOG_ENTRIES_LISTED,
    account_view,
    log_view,
    map_view,
    placement_view,
    present_holders,
    snapshot_health,
    snapshots_view,
)
from .files import DownloadRefused, Submit, children, restore_one
from .held import Place, RulesCheck, places_from_status
from .jobs import JobBoard

__all__ = ["MAX_STREAMS", "DashboardApp", "DataSource", "Scope"]

_log = get_logger(actor="dashboard")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: A control method: ``async fn(params, emit) -> JSON`` (``gridnode.actors.request``).
Method = Callable[[dict[str, Any], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[Any]]

#: Live-update streams served at once; more get 503.
MAX_STREAMS: Final = 8
#: Seconds one stream lasts before the browser is made to reconnect.
STREAM_MAX_S: Final = 600.0
#: Seconds one event may take to leave before the stream is dropped.
SEND_TIMEOUT_S: Final = 10.0
#: Snapshots are checked every this many ticks (health reads the catalog).
SNAPSHOT_TICKS: Final = 5
#: Seconds between looks at the running jobs, on a page that follows them.
JOB_TICK_S: Final = 0.25
#: Bytes of a download read and sent at a time.
DOWNLOAD_PIECE: Final = 256 * 1024
#: Seconds snapshot health is reused while nothing it depends on changed.
HEALTH_MAX_AGE_S: Final = 60.0
#: A comment line keeps idle proxies and the browser from closing a quiet stream.
KEEPALIVE_S: Final = 15.0

#: The pages and assets, by URL path, with their content types.
PAGES: Final = {
    "/": "map.html",
    "/snapshots": "snapshots.html",
    "/placement": "placement.html",
    "/browse": "browse.html",
    "/log": "log.html",
    "/account": "account.html",
    "/transfers": "transfers.html",
}
#: The brand and navigation every page shares, put where a page says ``NAV_MARKER``.
NAV_PARTIAL: Final = "_nav.html"
NAV_MARKER: Final = b"  <!--#nav-->"
_NAV_COMMENT: Final = re.compile(rb"<!--.*?-->\n", re.DOTALL)


def with_nav(page: bytes, nav: bytes, name: str) -> bytes:
    """``page`` with the shared navigation in place of its one marker.  The seven pages
    each carried their own copy, and a new page meant seven edits that could drift; a
    page without the marker (or with two) is a packaging mistake, refused at start."""
    if page.count(NAV_MARKER) != 1:
        raise ValueError(f"dashboard page {name} must hold {NAV_MARKER.decode()!r} once")
    return page.replace(NAV_MARKER, nav)


ASSETS: Final = {
    "dashboard.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "geo.js": "text/javascript; charset=utf-8",
    "map.js": "text/javascript; charset=utf-8",
    "placement.js": "text/javascript; charset=utf-8",
    "browse.js": "text/javascript; charset=utf-8",
    "log.js": "text/javascript; charset=utf-8",
    "account.js": "text/javascript; charset=utf-8",
    "transfers.js": "text/javascript; charset=utf-8",
    "snapshots.js": "text/javascript; charset=utf-8",
    "land-110m.json": "application/json",
    "LICENSE-world-atlas.txt": "text/plain; charset=utf-8",
}
_SECURITY_HEADERS: Final = [
    (b"cache-control", b"no-store"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
#: ``Sec-Fetch-Site`` values of requests started by another site's page.
_OTHER_SITES: Final = frozenset({"same-site", "cross-site"})
#: A snapshot as the pages name it: an id, a prefix of one, or ``latest``.
_SNAPSHOT_NAME: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_UNAUTHORISED: Final = (
    b"<!doctype html><meta charset=utf-8><title>gridnode dashboard: log in</title>"
    b"<p>This dashboard needs a login. Run <code>gridnode dashboard --home DIR</code> on the "
    b"node's machine and open the one-time link it prints.</p>\n"
)


async def _no_events(event: dict[str, Any]) -> None:
    """Queries send no progress events; nothing to do with one."""


@attrs.frozen
class DataSource:
    """Where the pages' data comes from: the node's own control methods (the answers of
    ``gridnode status`` and ``snapshots``), its catalog for snapshot health, run in a
    worker thread by ``run_db`` (``Services.db``), and its default backup band."""

    methods: Mapping[str, Method]
    catalog: Catalog
    run_db: Callable[..., Awaitable[Any]]
    backup_proximity: str
    #: Runs a control job as the CLI would (``Node._control_job``): logged and counted.
    submit: Submit
    #: Where downloads are restored (``files.clear_restore_dir``).
    restore_dir: Path
    #: The node's running jobs and their progress (``Node.jobs``).
    jobs: JobBoard
    clock: Callable[[], float] = trio.current_time
    #: The last health computed: (what it depends on, when, the health).
    _health: list[tuple[Any, float, dict[str, Any]]] = attrs.field(factory=list)

    async def status(self) -> dict[str, Any]:
        # Without the peers' round trips: the map does not show them, and a page open for
        # an hour would otherwise ping every session every tick.
        result: dict[str, Any] = await self.methods["status"]({"peers": False}, _no_events)
        return result

    async def map(self) -> dict[str, Any]:
        return map_view(await self.status(), self.backup_proximity)

    async def snapshots(self, status: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.methods["snapshots"]({}, _no_events)
        status = status if status is not None else await self.status()
        present, distrusted = present_holders(status)
        ids = [str(r["snapshot_id"]) for r in rows if r.get("complete")]
        places = places_from_status(status)
        return snapshots_view(rows, await self._health_of(ids, present, distrusted, places))

    async def placement(self, snapshot: str) -> dict[str, Any]:
        answer = await self.methods["placement"]({"snapshot": snapshot}, _no_events)
        return placement_view(answer)

    async def log(self) -> dict[str, Any]:
        """Streamed, keeping only the entries the page lists: a year of hourly backups is
        thousands of entries, and asked in one piece the whole log was held at once."""
        newest: collections.deque[Mapping[str, Any]] = collections.deque(maxlen=LOG_ENTRIES_LISTED)

        async def keep(event: dict[str, Any]) -> None:
            if event.get("event") == "log":
                newest.extend(event.get("entries", ()))

        return log_view(await self.methods["log"]({"stream": True}, keep), newest)

    async def account(self) -> dict[str, Any]:
        """The account (it asks the authority, so only when the page is opened)."""
        try:
            answer = await self.methods["account"]({}, _no_events)
        except ControlError as exc:
            if exc.code == "open_grid":
                return {"open_grid": True, "message": str(exc)}
            raise
        return account_view(answer)

    async def entries(self, snapshot: str, path: str) -> list[dict[str, Any]]:
        """``gridnode ls``'s entries of ``path`` (all of the snapshot for ``""``)."""
        params = {"snapshot": snapshot, **({"path": path} if path.strip("/") else {})}
        result: list[dict[str, Any]] = await self.methods["ls"](params, _no_events)
        return result

    async def listing(self, snapshot: str, path: str) -> dict[str, Any]:
        """One directory's entries: the node streams the subtree a page at a time and
        only the entries directly under ``path`` are kept, so opening the top of a
        snapshot of a million files holds one directory, not the million."""
        prefix = path.strip("/")
        depth = prefix.count("/") + 1 if prefix else 0
        found: list[dict[str, Any]] = []

        async def keep(event: dict[str, Any]) -> None:
            if event.get("event") == "entries":
                found.extend(
                    e for e in event["entries"] if str(e["path"]).strip("/").count("/") == depth
                )

        params = {"snapshot": snapshot, "stream": True, **({"path": path} if prefix else {})}
        await self.methods["ls"](params, keep)
        return children(found, path)

    async def _health_of(
        self,
        ids: list[str],
        present: frozenset[str],
        distrusted: frozenset[str],
        places: tuple[Place, dict[str, Place]],
    ) -> dict[str, Any]:
        """Snapshot health, read again when the snapshots, the holders present or the
        members' places changed, and at least every ``HEALTH_MAX_AGE_S`` (a repair moves
        packets): it reads every chunk record of every snapshot, which a page open for
        hours must not do each tick."""
        source, where = places
        key = (tuple(ids), present, distrusted, source, tuple(sorted(where.items())))
        now = self.clock()
        if (
            self._health
            and self._health[0][0] == key
            and now - self._health[0][1] < HEALTH_MAX_AGE_S
        ):
            return self._health[0][2]
        check = RulesCheck(source, where)
        health = await self.run_db(
            snapshot_health, self.catalog, ids, present, distrusted, HEALTH_CHUNK_LIMIT, check
        )
        self._health[:] = [(key, now, health)]
        return dict(health)


def _header(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers", []) if k == name]


def _cookie(scope: Scope, name: str) -> str | None:
    """The value of cookie ``name``, read by hand: a strict parser would drop the whole
    header over another site's odd cookie on the same host, and lock the owner out."""
    for header in _header(scope, b"cookie"):
        for part in header.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value.strip().strip('"')
    return None


def _json(value: Any) -> bytes:
    def clean(v: Any) -> Any:  # JSON has no NaN or infinity; a browser's parser refuses them
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), separators=(",", ":"), sort_keys=True).encode()


@attrs.define
class DashboardApp:
    """The ASGI app.  ``cookie_name`` carries the node's short id: cookies are not kept
    apart by port, and two nodes on one machine must not log each other out."""

    source: DataSource
    access: Access
    cookie_name: str
    tick_s: float = 1.0
    streams: int = 0
    _files: dict[str, bytes] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        folder = resources.files(__package__) / "static"
        for name in ASSETS:
            self._files[name] = (folder / name).read_bytes()
        nav = _NAV_COMMENT.sub(b"", (folder / NAV_PARTIAL).read_bytes()).strip(b"\n")
        for name in PAGES.values():
            self._files[name] = with_nav((folder / name).read_bytes(), nav, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        for _ in range(2):  # startup, then shutdown
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path == "/login":
            await self._login(scope, send)
            return
        if not self.access.valid_session(_cookie(scope, self.cookie_name)):
            await _respond(send, 401, _UNAUTHORISED, "text/html; charset=utf-8")
            return
        if any(site in _OTHER_SITES for site in _header(scope, b"sec-fetch-site")):
            # A page on another port of this host is "same-site" and gets the cookie; the
            # browser says where a request comes from, and only ours may use the session.
            await _respond(send, 403, b"only this dashboard's pages may ask\n", "text/plain")
            return
        if scope["method"] != "GET":
            await _respond(send, 405, b"only GET here\n", "text/plain", [(b"allow", b"GET")])
            return
        page = PAGES.get(path)
        if page is not None:
            await _respond(send, 200, self._files[page], "text/html; charset=utf-8")
        elif path.startswith("/static/") and path[8:] in ASSETS:
            await _respond(send, 200, self._files[path[8:]], ASSETS[path[8:]])
        elif path == "/api/map":
            await self._api(send, self.source.map)
        elif path == "/api/snapshots":
            await self._api(send, self.source.snapshots)
        elif path == "/api/jobs":
            await self._api(send, self._jobs)
        elif path == "/api/log":
            await self._api(send, self.source.log)
        elif path == "/api/account":
            await self._api(send, self.source.account)
        elif path in ("/api/placement", "/api/ls", "/api/file"):
            query = parse_qs(scope.get("query_string", b"").decode("utf-8", "replace"))
            snapshot = (query.get("snapshot") or [""])[0]
            inner = (query.get("path") or [""])[0]
            if not _SNAPSHOT_NAME.fullmatch(snapshot) or len(inner) > 4096 or "\0" in inner:
                await _respond(
                    send, 400, _json({"error": "bad snapshot or path"}), "application/json"
                )
            elif path == "/api/placement":
                await self._api(send, lambda: self.source.placement(snapshot))
            elif path == "/api/ls":
                await self._api(send, lambda: self.source.listing(snapshot, inner))
            else:
                await self._download(send, snapshot, inner)
        elif path == "/api/events":
            asked = scope.get("query_string", b"").split(b"&")
            topics = frozenset(t for t in ("snapshots", "jobs") if f"{t}=1".encode() in asked)
            await self._events(receive, send, topics=topics)
        else:
            await _respond(send, 404, b"not found\n", "text/plain")

    async def _login(self, scope: Scope, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        token = (query.get("token") or [""])[0]
        session = self.access.redeem(token)
        if session is None:
            _log.info("dashboard_login_refused")
            await _respond(send, 401, _UNAUTHORISED, "text/html; charset=utf-8")
            return
        _log.info("dashboard_login", sessions=self.access.sessions)
        cookie = f"{self.cookie_name}={session}; Path=/; HttpOnly; SameSite=Strict"
        await _respond(
            send, 303, b"", "text/plain", [(b"location", b"/"), (b"set-cookie", cookie.encode())]
        )

    async def _api(self, send: Send, read: Callable[[], Awaitable[Any]]) -> None:
        try:
            value = await read()
        except Exception as exc:  # a query that failed: the page shows it and retries
            code = 404 if isinstance(exc, SnapshotNotFound | LookupError) else 503
            log = _log.info if code == 404 else _log.warning  # a wrong name is no trouble
            log("dashboard_query_failed", error=f"{type(exc).__name__}: {exc}")
            await _respond(send, code, _json({"error": str(exc)}), "application/json")
            return
        await _respond(send, 200, _json(value), "application/json")

    async def _jobs(self) -> dict[str, Any]:
        return self.source.jobs.view()

    async def _download(self, send: Send, snapshot: str, path: str) -> None:
        """One file of a snapshot, restored by a real restore job and streamed."""
        source = self.source
        try:
            entries = await source.entries(snapshot, path)
            scratch, file = await restore_one(
                source.submit, source.restore_dir, snapshot, path, entries
            )
        except DownloadRefused as exc:
            await _respond(send, 400, _json({"error": str(exc)}), "application/json")
            return
        except Exception as exc:
            _log.warning("dashboard_download_failed", error=f"{type(exc).__name__}: {exc}")
            code = 404 if isinstance(exc, SnapshotNotFound | LookupError) else 503
            await _respond(send, code, _json({"error": str(exc)}), "application/json")
            return
        try:
            size = (await trio.Path(file).stat()).st_size
            name = path.strip("/").rsplit("/", 1)[-1]
            fallback = "".join(
                c if (c.isascii() and c.isalnum()) or c in "._-" else "_" for c in name
            )
            disposition = (
                f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
            )
            headers = [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(size).encode()),
                (b"content-disposition", disposition.encode()),
                *_SECURITY_HEADERS,
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async with await trio.open_file(file, "rb") as stream:
                for _ in range(size // DOWNLOAD_PIECE + 2):  # bounded by the file's size
                    piece = await stream.read(DOWNLOAD_PIECE)
                    if not piece:
                        break
                    with trio.fail_after(SEND_TIMEOUT_S):
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))

    async def _events(self, receive: Receive, send: Send, *, topics: frozenset[str]) -> None:
        if self.streams >= MAX_STREAMS:
            await _respond(send, 503, b"too many live pages open\n", "text/plain")
            return
        self.streams += 1
        try:
            async with trio.open_nursery() as nursery:

                async def until_gone() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until_gone)
                await self._stream(send, topics=topics)
                nursery.cancel_scope.cancel()
        finally:
            self.streams -= 1

    async def _stream(self, send: Send, *, topics: frozenset[str]) -> None:
        """Sends ``map`` events, and the ``snapshots`` and ``jobs`` events a page asked
        for (``?snapshots=1&jobs=1``), when they change, until the stream's time is up, a
        send stalls, or (by cancellation) the browser goes away.  Jobs are read every
        ``JOB_TICK_S`` (from memory: a transfer's progress should move smoothly), the map
        every ``tick_s``, snapshots every ``SNAPSHOT_TICKS`` map ticks."""
        headers = [(b"content-type", b"text/event-stream"), *_SECURITY_HEADERS]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
        last: dict[str, bytes] = {}
        quiet_since = trio.current_time()
        step = min(self.tick_s, JOB_TICK_S) if "jobs" in topics else self.tick_s
        per_map = max(1, round(self.tick_s / step))
        for tick in range(max(1, math.ceil(STREAM_MAX_S / step))):  # bounded: STREAM_MAX_S
            values: dict[str, Any] = {}
            if "jobs" in topics:
                values["jobs"] = self.source.jobs.view()
            try:
                if tick % per_map == 0:
                    status = await self.source.status()
                    values["map"] = map_view(status, self.source.backup_proximity)
                    if "snapshots" in topics and tick % (per_map * SNAPSHOT_TICKS) == 0:
                        values["snapshots"] = await self.source.snapshots(status)
            except Exception as exc:
                _log.warning("dashboard_query_failed", error=f"{type(exc).__name__}: {exc}")
            chunk = b""
            for event, value in values.items():
                data = _json(value)
                if last.get(event) != data:
                    last[event] = data
                    chunk += b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
            now = trio.current_time()
            if not chunk and now - quiet_since >= KEEPALIVE_S:
                chunk = b": keep-alive\n\n"
            if chunk:
                quiet_since = now
                with trio.move_on_after(SEND_TIMEOUT_S) as timer:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if timer.cancelled_caught:
                    return
            await trio.sleep(step)
        with trio.move_on_after(SEND_TIMEOUT_S):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *_SECURITY_HEADERS,
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
