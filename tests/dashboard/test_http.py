"""The dashboard's HTTP side on real nodes (in one trio run, real sockets on 127.0.0.x):
who gets in, what the API answers hold, and the live stream.

The rule tested is the one the dashboard has (``gridnode.dashboard.access``): every
route but ``/login`` answers 401 without a session cookie, whatever address the server
is bound to, loopback included, because a loopback port is open to every user of the
machine.  So it is tested bound to 127.0.0.1 (the default) and to 127.0.0.2, another
loopback address standing in for a bind beyond 127.0.0.1; the suite binds no address
outside 127.0.0.0/8.
"""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from gridnode.control import ControlError
from gridnode.dashboard.access import Access
from gridnode.dashboard.app import ASSETS, MAX_STREAMS, NAV_MARKER, NAV_PARTIAL, PAGES, with_nav
from gridnode.dashboard.data import MEMBER_FIELDS, map_view

from ..gridnode.inproc import open_grid

#: Every route the app serves, and some it does not: all 401 without a session.
ROUTES = [
    *PAGES,
    *(f"/static/{name}" for name in ASSETS),
    "/api/map",
    "/api/snapshots",
    "/api/log",
    "/api/account",
    "/api/events",
    "/api/placement?snapshot=latest",
    "/api/ls?snapshot=latest",
    "/api/file?snapshot=latest&path=a",
    "/nothing-here",
    "/static/../app.py",
    "/login/../api/map",
]


def _get(url: str, opener: urllib.request.OpenerDirector | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET; ``urllib`` in a worker thread, so the node's loop runs."""
    open_url = (opener or urllib.request.build_opener()).open
    try:
        with open_url(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the connection: closed now, not whenever it is collected
            return exc.code, exc.read()


async def get(url: str, opener: urllib.request.OpenerDirector | None = None) -> tuple[int, bytes]:
    return await trio.to_thread.run_sync(_get, url, opener)


def session_opener(jar: http.cookiejar.CookieJar | None = None) -> urllib.request.OpenerDirector:
    """A client that keeps cookies (in ``jar``, to share them with another client)."""
    cookies = jar if jar is not None else http.cookiejar.CookieJar()
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2"])
async def test_every_route_but_the_login_needs_the_login(tmp_path: Path, host: str) -> None:
    async with open_grid(tmp_path, 2, settings={"dashboard_listen": f"{host}:0"}) as grid:
        link = await grid.call(0, "dashboard")
        assert link["config_key"] == "dashboard_listen"
        base = link["base_url"]
        assert base.startswith(f"http://{host}:")
        assert link["url"].startswith(f"{base}/login?token=")
        for route in ROUTES:
            status, body = await get(base + route)
            assert status == 401, (route, status)
            assert b"gridnode dashboard" in body
        # A made-up token, a made-up cookie and another node's cookie name get nowhere.
        assert (await get(f"{base}/login?token=made-up"))[0] == 401
        forged = urllib.request.build_opener()
        forged.addheaders = [("Cookie", f"gridnode_{grid.nodes[0].identity.short_id}=x")]
        assert (await get(base + "/api/map", forged))[0] == 401

        # The one-time link opens a session (cookie) and sends the browser to the map.
        jar = http.cookiejar.CookieJar()
        browser = session_opener(jar)
        status, body = await get(link["url"], browser)
        assert status == 200 and b"grid map" in body
        for route in ROUTES[: len(PAGES) + len(ASSETS) + 4]:  # pages, assets, map ... account
            status, body = await get(base + route, browser)
            assert status == 200, route
            if route in PAGES:  # the shared navigation, once, in place of the marker
                assert body.count(b"<nav>") == 1 and NAV_MARKER not in body, route
                assert body.count(b' data-nav="') == 5, route
        assert (await get(base + "/static/" + NAV_PARTIAL, browser))[0] == 404  # not an asset
        # No snapshot yet: the snapshot routes say so; a bad name is refused before any query.
        assert (await get(base + "/api/ls?snapshot=latest", browser))[0] == 404
        assert (await get(base + "/api/placement?snapshot=a%20b", browser))[0] == 400
        assert (await get(base + "/nothing-here", browser))[0] == 404
        assert (await get(base + "/static/../app.py", browser))[0] == 404
        # A page on another port of this host is "same-site" and would send the cookie;
        # the browser's Sec-Fetch-Site tells, and the request is refused.
        cross = session_opener(jar)
        for site, expected in (
            ("same-site", 403),
            ("cross-site", 403),
            ("same-origin", 200),
            ("none", 200),
        ):
            cross.addheaders = [("Sec-Fetch-Site", site)]
            assert (await get(base + "/api/map", cross))[0] == expected, site
        # The link is spent: opening it again (another browser) is refused.
        assert (await get(link["url"], session_opener()))[0] == 401
        # A second node's dashboard does not take the first one's session.
        other = await grid.call(1, "dashboard")
        assert (await get(other["base_url"] + "/api/map", browser))[0] == 401


async def test_api_answers_hold_only_what_the_pages_draw(tmp_path: Path) -> None:
    """No key of the node, nor a field the map does not draw (addresses, labels,
    counters, other owners' delegations), reaches the browser."""
    async with open_grid(tmp_path, 3, settings={"dashboard_listen": "127.0.0.1:0"}) as grid:
        node = grid.nodes[0]
        link = await grid.call(0, "dashboard")
        browser = session_opener()
        assert (await get(link["url"], browser))[0] == 200
        status, body = await get(link["base_url"] + "/api/map", browser)
        assert status == 200
        answer = json.loads(body)
        assert set(answer) == {"node", "members", "membership_version"}
        members = answer["members"]
        assert {m["short_id"] for m in members} == {n.identity.short_id for n in grid.nodes}
        assert [m["state"] for m in members if m["short_id"] == node.identity.short_id] == ["self"]
        for member in members:
            assert set(member) == {*MEMBER_FIELDS, "audit_distrusted"}
        identity = node.identity
        secrets = [
            identity.sequence_key,
            identity.dedup_secret,
            identity.record_key,
            bytes(identity.signing_key),
        ]
        text = body.decode()
        for secret in secrets:
            assert secret.hex() not in text
        for other in grid.nodes[1:]:
            assert other.transport.address not in text  # no network addresses


def test_a_page_without_its_nav_marker_is_refused() -> None:
    nav = b"<nav>the pages</nav>"
    assert with_nav(b"<header>\n" + NAV_MARKER + b"\n</header>", nav, "a.html").count(nav) == 1
    for page in (b"<header></header>", NAV_MARKER + NAV_MARKER):
        with pytest.raises(ValueError, match=r"a\.html must hold"):
            with_nav(page, nav, "a.html")


def test_map_view_is_an_allow_list() -> None:
    """A field added to ``status`` later never reaches the page unless named."""
    status: dict[str, Any] = {
        "node_id": "SELF",
        "short_id": "SELF",
        "city": "Paris",
        "lat": 48.86,
        "lon": 2.35,
        "storage": {"allocated_bytes": 10, "free_bytes": 5, "used_bytes": 5, "packets": 1},
        "members": [
            {
                "node_id": "OTHER",
                "short_id": "OTHER",
                "address": "10.0.0.9:7400",
                "labels": ["site=home"],
                "state": "alive",
                "secret": "s3cret",
                "lat": 1.0,
                "lon": 2.0,
                "trusted": True,
            }
        ],
        "audits": [{"node_id": "OTHER", "distrusted": True}],
        "delegated_to_me": [{"owner": "THIRD", "snapshots": 4}],
        "counters": {"x": 1},
    }
    text = json.dumps(map_view(status, "100km:900km"))
    for leak in ("10.0.0.9", "site=home", "s3cret", "THIRD", "counters"):
        assert leak not in text
    view = map_view(status, "100km:900km")
    assert view["node"]["backup_proximity"] == {"min_km": 100.0, "max_km": 900.0}
    other = next(m for m in view["members"] if m["short_id"] == "OTHER")
    assert other["audit_distrusted"] is True


async def test_events_stream_and_its_cap(tmp_path: Path) -> None:
    """The live stream sends the map at once, and at most MAX_STREAMS run together."""
    async with open_grid(tmp_path, 2, settings={"dashboard_listen": "127.0.0.1:0"}) as grid:
        link = await grid.call(0, "dashboard")
        browser = session_opener()
        assert (await get(link["url"], browser))[0] == 200
        base = link["base_url"]

        def first_event() -> dict[str, Any]:
            with browser.open(base + "/api/events", timeout=10) as stream:
                assert stream.headers["Content-Type"] == "text/event-stream"
                lines: list[bytes] = []
                for _ in range(50):  # bounded: the first event comes within a tick
                    line = stream.readline()
                    lines.append(line)
                    if line.startswith(b"data: ") and lines[-2] == b"event: map\n":
                        return dict(json.loads(line[6:]))
                raise AssertionError(f"no map event in {lines}")

        event = await trio.to_thread.run_sync(first_event)
        assert {m["state"] for m in event["members"]} == {"self", "alive"}

        # MAX_STREAMS pages may stream at once; one more is told to come back later.
        def open_streams() -> list[Any]:
            return [browser.open(base + "/api/events", timeout=10) for _ in range(MAX_STREAMS)]

        streams = await trio.to_thread.run_sync(open_streams)
        try:
            status, body = await get(base + "/api/events", browser)
            assert status == 503 and b"too many" in body
        finally:
            for stream in streams:
                stream.close()
        with trio.fail_after(10):  # closed streams are noticed and free their places
            while (await get(base + "/api/map", browser))[0] == 200 and (
                await trio.to_thread.run_sync(_stream_status, base, browser)
            ) != 200:
                await trio.sleep(0.2)


def _stream_status(base: str, browser: urllib.request.OpenerDirector) -> int:
    try:
        with browser.open(base + "/api/events", timeout=10) as stream:
            return int(stream.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


def test_login_links_are_one_time_bounded_and_expire() -> None:
    now = [0.0]
    access = Access(clock=lambda: now[0])
    token = access.new_login()
    session = access.redeem(token)
    assert session is not None and access.valid_session(session)
    assert access.redeem(token) is None  # one time
    assert not access.valid_session("x" * 43)
    stale = access.new_login()
    now[0] += 601
    assert access.redeem(stale) is None  # expired after ten minutes
    assert access.valid_session(session)
    now[0] += 12 * 3600
    assert not access.valid_session(session)  # sessions end too
    tokens = [access.new_login() for _ in range(20)]
    assert access.redeem(tokens[0]) is None  # only the newest 16 are kept
    assert access.redeem(tokens[-1]) is not None


async def test_a_node_with_the_dashboard_off_says_which_key_turns_it_on(tmp_path: Path) -> None:
    async with open_grid(tmp_path, 1, settings={"dashboard_listen": ""}) as grid:
        assert grid.nodes[0].dashboard is None
        with pytest.raises(ControlError, match="dashboard_listen") as caught:
            await grid.call(0, "dashboard")
        assert caught.value.code == "dashboard_off"
