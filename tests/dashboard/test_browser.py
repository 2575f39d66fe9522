"""The dashboard in headless Chromium against a real local grid of node processes.

Playwright for Python drives Debian's chromium (``/usr/bin/chromium``; no browser is
downloaded): its locators wait with a deadline by themselves (``expect``), which is
what "turns dead within the gossip timeout, without a reload" needs, and it sees every
request the page makes, so the test can show that none leaves the dashboard's origin.

Without chromium the tests skip, unless ``GRIDNODE_REQUIRE_BROWSER`` is set (CI sets
it: there a missing browser is a failure).  Screenshots of each page are written to
``$GRIDNODE_ARTIFACTS/dashboard`` (default: the test's temporary directory; the path is
printed); ``GRIDNODE_UPDATE_SCREENSHOT=1`` also writes the map with a killed member
to docs/dashboard.png (the README's picture).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridnode.identity import load_identity
from simulations.harness import LocalGrid, NodeSpec

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
PROBE_INTERVAL_S = 0.5
#: The band around the observer (Paris): London (344 km) and Berlin (878 km) inside.
BAND = "300km:1200km"
#: Holders of one chunk at least this far apart: London and Berlin are 930 km apart.
PACKET_BAND = "500km:"
#: The colours of a pair line (dashboard.css: --alive, --dead) as the browser reports them.
GREEN, RED = "rgb(46, 157, 87)", "rgb(208, 52, 44)"
OTHER_OWNER_FILE = "other-owners-private-name.txt"
#: The backup whose progress the transfers page shows.
BIG_BYTES = 128 << 20


def _require_browser() -> None:
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        if os.environ.get("GRIDNODE_REQUIRE_BROWSER"):
            pytest.fail(f"GRIDNODE_REQUIRE_BROWSER is set and {CHROMIUM} is missing")
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")


def artefacts(tmp_root: Path) -> Path:
    base = os.environ.get("GRIDNODE_ARTIFACTS")
    folder = (Path(base) if base else tmp_root) / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {folder}")
    return folder


class Setup:
    """The grid (observer n0 in Paris with a backup band), a snapshot of n0 and one of
    n1, and a logged-in browser page on n0's dashboard."""

    def __init__(self, grid: LocalGrid, page: Any, base: str, shots: Path) -> None:
        self.grid = grid
        self.page = page
        self.base = base
        self.shots = shots
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.snapshot: dict[str, Any] = {}
        self.other_snapshot: dict[str, Any] = {}
        self.other_root = ""
        self.mine = Path()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("dash")
    shots = artefacts(tmp)
    with LocalGrid(tmp / "grid", probe_interval_s=PROBE_INTERVAL_S) as grid:
        grid.add_many(
            [
                NodeSpec(name="n0", location="Paris", redundancy="1/2",
                         extra=(f"backup_proximity={BAND}", f"packet_proximity={PACKET_BAND}")),
                NodeSpec(name="n1", location="London", redundancy="1/2"),
                NodeSpec(name="n2", location="Berlin", redundancy="1/2"),
            ]
        )  # fmt: skip
        grid.start_all()
        grid.wait_converged(timeout=60)
        mine = tmp / "mine"
        mine.mkdir()
        for i in range(3):
            (mine / f"file{i}.txt").write_text(f"paris {i}\n" * 200)
        theirs = tmp / "theirs"
        theirs.mkdir()
        (theirs / OTHER_OWNER_FILE).write_text("not for n0's dashboard\n")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(
                    viewport={"width": 1280, "height": 900}, accept_downloads=True
                )
                page = context.new_page()
                link = grid.cli("n0", "dashboard")  # `gridnode dashboard --json`
                assert link["config_key"] == "dashboard_listen"
                assert link["url"].startswith(link["base_url"] + "/login?token=")
                state = Setup(grid, page, link["base_url"], shots)
                state.snapshot = grid.cli("n0", "backup", str(mine))
                state.other_snapshot = grid.cli("n1", "backup", str(theirs))
                state.other_root = str(theirs)
                state.mine = mine
                page.on("request", lambda r: state.requests.append(r.url))
                page.on("pageerror", lambda e: state.errors.append(str(e)))
                page.on(
                    "console",
                    lambda m: state.errors.append(m.text) if m.type == "error" else None,
                )
                page.goto(link["url"])
                yield state
            finally:
                browser.close()


def test_the_map_shows_every_member(setup: Setup) -> None:
    from playwright.sync_api import expect

    page, grid = setup.page, setup.grid
    status = grid.status("n0")
    expected = {m["short_id"]: m for m in status["members"]}
    expected[status["short_id"]] = {**status, "state": "self"}
    assert page.url == setup.base + "/"
    rows = page.locator("#member-table tbody tr")
    expect(rows).to_have_count(len(expected), timeout=10_000)
    for short_id, member in expected.items():
        row = page.locator(f'#member-table tr[data-member="{short_id}"]')
        expect(row).to_have_attribute("data-state", member["state"])
        dot = page.locator(f'#members circle[data-member="{short_id}"]')
        if member.get("lat") is None:  # the authority has no location: listed, not drawn
            expect(dot).to_have_count(0)
            continue
        expect(dot).to_have_count(1)
        box = dot.bounding_box()
        frame = page.locator("#map").bounding_box()
        assert box is not None and frame is not None
        assert frame["x"] <= box["x"] and box["x"] + box["width"] <= frame["x"] + frame["width"]
    # The coastlines are drawn, and so is the band: two rings around this node.
    land = page.locator("#land path").get_attribute("d")
    assert land is not None and land.count("M") > 50
    expect(page.locator("#band path.band-ring")).to_have_count(2)
    expect(page.locator("#band-line")).to_contain_text("300 km to 1200 km")
    # London and Berlin are drawn inside the band, this node (Paris) is not.
    others = [m for m in expected if m != status["short_id"] and expected[m].get("lat")]
    selector = ", ".join(f'#members circle[data-member="{m}"]' for m in others)
    assert page.evaluate(INSIDE_BAND_JS, selector) == [True] * len(others)
    assert page.evaluate(
        INSIDE_BAND_JS, f'#members circle[data-member="{status["short_id"]}"]'
    ) == [False]
    # The band's rings are centred on this node.
    self_box = page.locator(f'#members circle[data-member="{status["short_id"]}"]').bounding_box()
    ring_box = page.locator("#band path.band-ring").nth(1).bounding_box()
    assert self_box is not None and ring_box is not None
    centre_x = self_box["x"] + self_box["width"] / 2
    assert math.isclose(centre_x, ring_box["x"] + ring_box["width"] / 2, abs_tol=3)
    # Free storage sizes the dots: the authority (no location) aside, all have room.
    radius = page.locator(f'#members circle[data-member="{status["short_id"]}"]')
    assert float(radius.get_attribute("r") or 0) > 4
    page.screenshot(path=str(setup.shots / "map.png"))


def test_the_snapshots_page_lists_size_files_and_health(setup: Setup) -> None:
    from playwright.sync_api import expect

    page = setup.page
    page.click('nav a[data-nav="snapshots"]')
    page.wait_for_url(setup.base + "/snapshots")
    snapshot_id = setup.snapshot["snapshot_id"]
    row = page.locator(f'#snapshot-table tr[data-snapshot="{snapshot_id}"]')
    expect(row).to_have_count(1, timeout=10_000)
    listed = {s["snapshot_id"]: s for s in setup.grid.cli("n0", "snapshots")}
    assert row.locator("td").nth(3).inner_text() == str(listed[snapshot_id]["files"])
    assert row.locator("td[data-bytes]").get_attribute("data-bytes") == str(
        listed[snapshot_id]["bytes"]
    )
    expect(row.locator("[data-health]")).to_have_attribute("data-health", "healthy")
    expect(row.locator("[data-health]")).to_contain_text("weakest 2/2 (needs 1)")
    expect(row.locator("[data-rules-held]")).to_have_attribute("data-rules-held", "yes")
    expect(page.locator("#snapshot-table tbody tr")).to_have_count(len(listed))
    page.screenshot(path=str(setup.shots / "snapshots.png"))


#: True when the point (cx, cy) of each circle of ``selector`` is inside the drawn band:
#: the band's fill is the ring between its two circles (even-odd rule), so this is the
#: drawing's own answer, not the distances' numbers.
INSIDE_BAND_JS = """(selector) => {
    const band = document.querySelector('#band path.band-fill');
    return [...document.querySelectorAll(selector)].map((c) => band.isPointInFill(
        new DOMPoint(Number(c.getAttribute('cx')), Number(c.getAttribute('cy')))));
}"""


#: Each pair line of the placement map: its verdict, its drawn colour, whether both its
#: ends sit on the centres of holders' dots, and whether its km meets the rule's minimum.
PAIR_JS = """() => [...document.querySelectorAll('#pairs line.pair-line')].map((l) => {
    const dot = (id) => document.querySelector(`#members circle[data-target="${id}"]`);
    const near = (c, p, e) => Math.abs(Number(c.getAttribute(p)) - Number(l.getAttribute(e)));
    const on = (c, x, y) => c !== null && near(c, 'cx', x) < 0.2 && near(c, 'cy', y) < 0.2;
    return {
        ok: l.dataset.ok,
        stroke: getComputedStyle(l).stroke,
        ends_on_holders: on(dot(l.dataset.a), 'x1', 'y1') && on(dot(l.dataset.b), 'x2', 'y2'),
        km_ok: Number(l.dataset.km) >= 500,
    };
})"""


def test_the_placement_view_shows_every_target_inside_the_ring(setup: Setup) -> None:
    from playwright.sync_api import expect

    page = setup.page
    snapshot_id = setup.snapshot["snapshot_id"]
    page.click(f'tr[data-snapshot="{snapshot_id}"] a')
    page.wait_for_url(f"{setup.base}/placement?snapshot={snapshot_id}")
    expect(page.locator("#map")).to_have_attribute("data-ready", "1", timeout=10_000)
    placement = setup.grid.cli("n0", "placement", snapshot_id)
    holders = {p["target_short"] for c in placement["chunks"] for p in c["packets"]}
    assert len(holders) == 2  # London and Berlin: 1-of-2, both in the band
    dots = page.locator("#members circle[data-target]")
    expect(dots).to_have_count(len(holders))
    assert {dots.nth(i).get_attribute("data-target") for i in range(len(holders))} == holders
    assert page.evaluate(INSIDE_BAND_JS, "#members circle[data-target]") == [True, True]
    # The source itself is inside the inner ring, so not in the band: the check can fail.
    assert page.evaluate(INSIDE_BAND_JS, "#members circle[data-source]") == [False]
    for holder in holders:
        row = page.locator(f'#target-table tr[data-target="{holder}"]')
        expect(row).to_have_attribute("data-in-band", "true")
    expect(page.locator("#rules-line")).to_contain_text("300 km to 1200 km")
    expect(page.locator("#chunk-table tbody tr")).to_have_count(len(placement["chunks"]))
    # The first chunk's two holders joined by one line, from dot to dot, green: London
    # and Berlin are farther apart than the packet-proximity minimum.
    pair = page.locator("#pairs line.pair-line")
    expect(pair).to_have_count(1)
    assert page.evaluate(PAIR_JS) == [
        {"ok": "true", "stroke": GREEN, "ends_on_holders": True, "km_ok": True}
    ]
    expect(page.locator('#chunk-table tr[data-chunk="0"]')).to_have_attribute(
        "data-selected", "true"
    )
    page.screenshot(path=str(setup.shots / "placement.png"))

    # A pair the server says breaks the rule is drawn red and named too close: the same
    # answer with the first pair's verdict turned (the drawing, not the check, is tested
    # here; test_rules_held breaks the rule with a moved holder).
    def too_close(route: Any) -> None:
        answer = route.fetch().json()
        answer["chunks"][0]["pairs"][0].update(ok=False, km=120.0)
        route.fulfill(json=answer)

    page.route("**/api/placement?*", too_close)
    try:
        page.reload()
        expect(page.locator("#map")).to_have_attribute("data-ready", "1", timeout=10_000)
        assert page.evaluate(PAIR_JS) == [
            {"ok": "false", "stroke": RED, "ends_on_holders": True, "km_ok": False}
        ]
        expect(page.locator("#pairs text.pair-bad")).to_contain_text("too close")
    finally:
        page.unroute("**/api/placement?*", too_close)
    answer = page.context.request.get(f"{setup.base}/api/placement?snapshot=no-such-snapshot")
    assert answer.status == 404


def test_a_file_restored_from_the_tree_browser_is_byte_equal(setup: Setup) -> None:
    from playwright.sync_api import expect

    page = setup.page
    page.goto(setup.base + "/snapshots")
    snapshot_id = setup.snapshot["snapshot_id"]
    page.click(f'tr[data-snapshot="{snapshot_id}"] a[data-browse]')
    wanted = page.locator('#entry-table tr[data-entry$="/file1.txt"]')
    for _ in range(20):  # down the tree, one directory a page, to the backed-up folder
        expect(page.locator("#entry-table")).to_have_attribute("data-ready", "1")
        if wanted.count():
            break
        folders = page.locator('#entry-table tr[data-type="dir"] a')
        assert folders.count() == 1, page.inner_text("#entry-table")
        folders.first.click()
        page.wait_for_load_state()
    expect(wanted).to_have_count(1)
    expect(page.locator('#entry-table tr[data-type="file"]')).to_have_count(3)
    page.screenshot(path=str(setup.shots / "browse.png"))
    with page.expect_download(timeout=30_000) as info:
        wanted.locator("a[data-restore]").click()
    download = info.value
    assert download.suggested_filename == "file1.txt"
    restored = Path(download.path()).read_bytes()
    assert restored == (setup.mine / "file1.txt").read_bytes()
    # The restore ran as a job (logged like the CLI's) and left nothing behind.
    log = setup.grid.node("n0").log_path
    assert log is not None and "restore_finished" in log.read_text()
    scratch = setup.grid.node("n0").home / "dashboard-restore"
    deadline = time.monotonic() + 5  # removed once the answer's last byte is sent
    while any(scratch.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(scratch.iterdir()) == []


def test_the_backup_log_and_the_account(setup: Setup) -> None:
    from playwright.sync_api import expect

    page = setup.page
    page.click('nav a[data-nav="log"]')
    page.wait_for_url(setup.base + "/log")
    log = setup.grid.cli("n0", "log")
    expect(page.locator("#log-verified")).to_have_attribute("data-verified", "true")
    expect(page.locator("#log-table tbody tr")).to_have_count(len(log["entries"]))
    newest = log["entries"][-1]
    expect(page.locator("#log-table tbody tr").first).to_have_attribute(
        "data-seq", str(newest["seq"])
    )
    page.screenshot(path=str(setup.shots / "log.png"))
    page.click('nav a[data-nav="account"]')
    page.wait_for_url(setup.base + "/account")
    expect(page.locator("#account-parts")).to_have_attribute("data-state", "loaded", timeout=15_000)
    plan = setup.grid.cli("n0", "account")["subscription"]["plan"]
    expect(page.locator('#account-parts tr[data-key="plan"] td')).to_have_text(plan)
    page.screenshot(path=str(setup.shots / "account.png"))


def test_nothing_private_and_nothing_from_elsewhere(setup: Setup) -> None:
    """The node's keys, its control token, and another owner's snapshot and names are
    in no page or API answer; every request the pages made went to the dashboard."""
    home = setup.grid.node("n0").home
    identity = load_identity(home / "node.key")
    secrets = [
        identity.sequence_key.hex(),
        identity.dedup_secret.hex(),
        identity.record_key.hex(),
        bytes(identity.signing_key).hex(),
        identity.recovery_phrase(),
        (home / "control.token").read_bytes().hex(),
        setup.other_snapshot["snapshot_id"],
        OTHER_OWNER_FILE,
        setup.other_root,
    ]
    placement = setup.grid.cli("n0", "placement", setup.snapshot["snapshot_id"])
    secrets += [p["packet_id"] for c in placement["chunks"] for p in c["packets"]]
    request = setup.page.context.request
    routes = ["/", "/snapshots", "/log", "/account", "/api/map", "/api/snapshots", "/api/log"]
    routes.append(f"/api/placement?snapshot={setup.snapshot['snapshot_id']}")
    for route in routes:
        answer = request.get(setup.base + route)
        assert answer.status == 200, route
        text = answer.text()
        for secret in secrets:
            assert secret not in text, (route, secret[:12])
    assert setup.snapshot["snapshot_id"] in request.get(setup.base + "/api/snapshots").text()
    assert setup.requests
    assert all(url.startswith(setup.base + "/") for url in setup.requests), setup.requests
    assert not setup.errors


def test_without_the_login_every_route_answers_401(setup: Setup) -> None:
    page = setup.page.context.browser.new_page()  # a new context: no cookie
    try:
        answer = page.goto(setup.base + "/")
        assert answer is not None and answer.status == 401
        assert "gridnode dashboard --home" in page.inner_text("body")
    finally:
        page.close()
    for route in ("/", "/snapshots", "/api/map", "/api/snapshots", "/api/events",
                  "/static/map.js", "/static/land-110m.json", "/missing"):  # fmt: skip
        try:
            urllib.request.urlopen(setup.base + route, timeout=5)
            raise AssertionError(f"{route} answered without a login")
        except urllib.error.HTTPError as exc:
            with exc:  # it holds the connection: closed now, not whenever it is collected
                assert exc.code == 401, route


#: Records every value the running backup's row shows, as the page redraws it.
WATCH_PROGRESS_JS = """() => {
    window.__seen = [];
    const table = document.querySelector('#running-table tbody');
    new MutationObserver(() => {
        for (const row of table.querySelectorAll('tr[data-method="backup"]')) {
            const [done, total] = [row.dataset.done, row.dataset.total];
            if (done) window.__seen.push([Number(done), Number(total)]);
        }
    }).observe(table, {childList: true, subtree: true});
}"""


def test_a_backups_progress_moves_on_the_transfers_page(setup: Setup) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    """A backup of 128 MiB (some seconds even on a quiet machine: the page looks every
    quarter second, the backup reports every half) moves forward on the page, live."""
    page, grid = setup.page, setup.grid
    page.goto(setup.base + "/transfers")
    page.wait_for_selector('#live[data-live="live"]')
    before = max(
        [
            0,
            *(
                int(r.get_attribute("data-job") or 0)
                for r in page.locator("#recent-table tr[data-job]").all()
            ),
        ]
    )
    page.evaluate(WATCH_PROGRESS_JS)
    big = setup.mine.parent / "big"
    big.mkdir()
    (big / "random.bin").write_bytes(os.urandom(BIG_BYTES))
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(grid.cli("n0", "backup", str(big))))
    worker.start()
    try:
        with contextlib.suppress(PlaywrightTimeout):  # a picture mid-way, if it is quick
            page.wait_for_selector(
                '#running-table tr[data-method="backup"] progress', timeout=20_000
            )
            page.screenshot(path=str(setup.shots / "transfers-running.png"))
        page.wait_for_function(
            f"""() => [...document.querySelectorAll('#recent-table tr[data-outcome="ok"]')]
                .some((r) => Number(r.dataset.job) > {before})""",
            timeout=120_000,
        )
    finally:
        worker.join(timeout=120)
    assert results and results[0]["bytes"] == BIG_BYTES
    seen = page.evaluate("window.__seen")
    done = sorted({value for value, _ in seen})
    print(f"progress values seen on the page: {len(done)}")
    assert len(done) >= 2, seen  # it moved while the page watched
    assert done[0] < BIG_BYTES and all(total == BIG_BYTES for _, total in seen if total)
    assert [value for value, _ in seen] == sorted(value for value, _ in seen)  # never back
    page.screenshot(path=str(setup.shots / "transfers.png"))


def test_a_killed_node_turns_dead_on_the_page_without_a_reload(setup: Setup) -> None:
    from playwright.sync_api import expect

    page, grid = setup.page, setup.grid
    page.click('nav a[data-nav="map"]')
    page.wait_for_url(setup.base + "/")
    victim = grid.status("n2")["short_id"]
    row = page.locator(f'#member-table tr[data-member="{victim}"]')
    expect(row).to_have_attribute("data-state", "alive", timeout=10_000)
    page.evaluate("window.__sameDocument = 42")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    members = len(grid.status("n0")["members"]) + 1
    # The longest a lone suspicion lasts (gridnode.logic.swim: 6 x 4 x log10(N) probes),
    # and some probes to start suspecting.
    bound_s = 6 * 4 * max(1.0, math.log10(members)) * PROBE_INTERVAL_S + 6
    grid.kill("n2")
    killed = time.monotonic()
    expect(row).to_have_attribute("data-state", "dead", timeout=bound_s * 1000)
    took = time.monotonic() - killed
    dot = page.locator(f'#members circle[data-member="{victim}"]')
    expect(dot).to_have_attribute("data-state", "dead")
    assert page.evaluate("window.__sameDocument") == 42 and not navigations
    print(f"killed node shown dead after {took:.1f} s (bound {bound_s:.0f} s)")
    page.screenshot(path=str(setup.shots / "map-after-kill.png"))
    if os.environ.get("GRIDNODE_UPDATE_SCREENSHOT"):  # the README's picture
        page.screenshot(path=str(ROOT / "docs" / "dashboard.png"))
    # Its packets are now away: the snapshot's health says so, live too.
    page.click('nav a[data-nav="snapshots"]')
    health = page.locator(f'tr[data-snapshot="{setup.snapshot["snapshot_id"]}"] [data-health]')
    expect(health).to_have_attribute("data-health", "degraded", timeout=15_000)
    page.screenshot(path=str(setup.shots / "snapshots-after-kill.png"))
    # Over every page of this module: no script error, no request anywhere else.
    assert json.dumps(setup.errors) == "[]"
    assert all(url.startswith(setup.base + "/") for url in setup.requests), setup.requests
