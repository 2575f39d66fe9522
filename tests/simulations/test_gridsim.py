"""gridsim: scenario parsing, the invariant model, data generation, netns plans, and two
end-to-end runs on real node processes (the smoke scenario, and up/down)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridnode.logic.distance import haversine_km
from simulations.gridsim import (
    DATA_KINDS,
    BackupState,
    DataSpec,
    Network,
    ScenarioError,
    Simulation,
    build_manifest,
    compare_manifest,
    generate_data,
    load_scenario,
    parse_scenario,
    pid_alive,
)
from simulations.netns import NETEM_LIMIT, link_delay_ms, plan_netns

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "simulations" / "scenarios"

NODES4 = """
[[nodes]]
name = "paris"
city = "Paris"
[[nodes]]
name = "berlin"
city = "Berlin"
[[nodes]]
name = "madrid"
city = "Madrid"
[[nodes]]
name = "rome"
city = "Rome"
"""
BACKUP = """
[[steps]]
action = "backup"
name = "docs"
node = "paris"
redundancy = "2/3"
generate = { size = "1MB" }
"""


def _gridsim(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulations.gridsim", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


# --- parsing ---------------------------------------------------------------------------------


def test_every_shipped_scenario_parses_and_documents_its_format() -> None:
    names = {p.name for p in SCENARIOS.glob("*.toml")}
    assert {"smoke.toml", "loss.toml", "partition.toml", "slow-peer.toml", "full.toml"} <= names
    for path in SCENARIOS.glob("*.toml"):
        scenario = load_scenario(path)
        assert scenario.steps, path
        text = path.read_text()
        assert text.startswith("#") and "Scenario format" in text, path
    smoke = load_scenario(SCENARIOS / "smoke.toml")
    assert 3 <= len(smoke.nodes) <= 5
    assert [s.action for s in smoke.steps] == ["backup", "kill", "restore"]


def test_a_valid_scenario_gets_defaults_and_resolved_locations() -> None:
    scenario = parse_scenario(
        {
            "scenario": {"name": "t", "redundancy": "2/3"},
            "defaults": {"allocation": "3GB", "set": {"request_timeout_s": 10}},
            "nodes": [
                {"name": "a", "city": "Paris", "labels": {"site": "x"}},
                {"name": "b", "lat": 52.5, "lon": 13.4, "allocation": "1GB"},
                {"name": "c", "city": "Madrid", "seeds": ["b"]},
                {"name": "d", "city": "Rome", "location_check": "off"},
            ],
            "steps": [
                {"action": "backup", "node": "a", "generate": {"size": "2MB", "kind": "text"}},
                {"action": "kill", "holders_of": "backup-1", "count": 2},
                {"action": "restore", "backup": "backup-1"},
            ],
        }
    )
    a, b, c, d = scenario.nodes
    assert a.allocation == "3GB" and b.allocation == "1GB"
    assert a.settings == ("request_timeout_s=10",)
    assert a.labels == ("site=x",) and a.label("site") == "x" and b.label("site") is None
    assert a.seeds == () and b.seeds == ("a",) and c.seeds == ("b",)
    assert a.city.startswith("Paris") and abs(b.lat - 52.5) < 1e-9
    assert a.location_check == "auto" and d.location_check == "off"
    backup, kill, restore = scenario.steps
    assert backup.redundancy == "2/3" and backup.data is not None
    assert backup.data.size == 2_000_000 and backup.data.kind == "text"
    assert kill.holders_of == "backup-1" and kill.count == 2
    assert restore.expect == "auto"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (NODES4 + BACKUP + '[[steps]]\naction = "explode"\n', "step 2: unknown action 'explode'"),
        (
            NODES4 + BACKUP + '[[steps]]\naction = "kill"\nnode = "lyon"\n',
            "step 2 (kill): unknown node 'lyon'",
        ),
        (
            NODES4 + BACKUP + '[[steps]]\naction = "kill"\nnodez = "rome"\n',
            "step 2 (kill): unknown key 'nodez'",
        ),
        (NODES4 + BACKUP + '[[steps]]\naction = "kill"\n', "exactly one of 'node', 'nodes'"),
        (
            NODES4 + '[[steps]]\naction = "restore"\nbackup = "docs"\n' + BACKUP,
            "step 1 (restore): backup 'docs' does not name an earlier backup step",
        ),
        (NODES4 + BACKUP.replace('"1MB"', '"5 parsecs"'), "'generate.size'"),
        (
            NODES4
            + BACKUP.replace(
                'redundancy = "2/3"', 'backup_proximity = "300km"\nredundancy = "2/3"'
            ),
            "backup_proximity: cannot read distance",
        ),
        (NODES4 + BACKUP.replace('"2/3"', '"4/6"'), "redundancy 4/6 needs 6 target nodes"),
        (NODES4 + BACKUP.replace('redundancy = "2/3"\n', ""), "the default redundancy 4/6 needs"),
        (NODES4.replace('"Rome"', '"Atlantis"'), "node 4 (rome): unknown city 'Atlantis'"),
        (NODES4.replace('"berlin"', '"paris"'), "duplicate node name 'paris'"),
        (NODES4.replace('"berlin"', '"authority"'), "'authority' is reserved"),
        (
            NODES4.replace('city = "Berlin"', 'city = "Berlin"\nseeds = ["rome"]'),
            "seed 'rome' is not a node defined above",
        ),
        (NODES4.replace('city = "Rome"', 'city = "Rome"\nlat = 1.0'), "either 'city' or both"),
        (NODES4 + '[[steps]]\naction = "heal"\n', "no partition to heal"),
        (
            NODES4 + '[[steps]]\naction = "partition"\ngroups = [["paris", "rome"], ["rome"]]\n',
            "non-empty and disjoint",
        ),
        (NODES4 + '[[steps]]\naction = "wait"\n', "give 'seconds', 'until', or both"),
        (
            NODES4 + '[[steps]]\naction = "kill"\nnode = "rome"\ncount = 1\n',
            "'count' goes with 'holders_of'",
        ),
        ('[scenario]\nname = "x"\n', "at least one [[nodes]]"),
        (NODES4 + "[[steps]\n", "not valid TOML"),
    ],
)
def test_a_bad_scenario_is_refused_naming_the_problem(
    tmp_path: Path, body: str, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_missing_scenario_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.toml")


# --- data -------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(DATA_KINDS),
    size=st.integers(1, 40_000),
    files=st.one_of(st.none(), st.integers(1, 12)),
    seed=st.integers(0, 3),
)
def test_generated_data_has_the_size_asked_and_is_reproducible(
    tmp_path_factory: pytest.TempPathFactory, kind: str, size: int, files: int | None, seed: int
) -> None:
    base = tmp_path_factory.mktemp("gen")
    spec = DataSpec(size=size, kind=kind, files=files, seed=seed)
    generate_data(base / "one", spec)
    generate_data(base / "two", spec)
    one, two = build_manifest(base / "one"), build_manifest(base / "two")
    assert one == two
    assert compare_manifest(one, two) == []
    assert sum(v[1] for v in one.values() if v[0] == "file") == size
    if files is not None and kind != "small-files":
        assert sum(v[0] == "file" for v in one.values()) == files


def test_compare_manifest_finds_every_kind_of_difference(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    generate_data(root, DataSpec(size=20_000, kind="small-files", files=8))
    os.symlink("d000", root / "link")
    expected = build_manifest(root)
    victim = next(p for p in sorted(root.rglob("*.bin")))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    problems = compare_manifest(expected, build_manifest(root))
    assert problems == [f"{victim.relative_to(root).as_posix()}: content differs"]
    victim.unlink()
    (root / "extra.txt").write_text("x")
    (root / "link").unlink()
    os.symlink("elsewhere", root / "link")
    problems = compare_manifest(expected, build_manifest(root))
    assert f"{victim.relative_to(root).as_posix()}: missing" in problems
    assert "extra.txt: not in the backup" in problems
    assert "link: content differs" in problems
    many = {f"f{i}": ("file", 1, "x") for i in range(9)}
    assert compare_manifest(many, {}, limit=3)[-1] == "... and 6 more"


# --- the invariant model ------------------------------------------------------------------


def _simulation(tmp_path: Path, labels: dict[str, str] | None = None) -> Simulation:
    nodes: list[dict[str, Any]] = [
        {"name": n, "city": c}
        for n, c in (
            ("paris", "Paris"),
            ("brussels", "Brussels"),
            ("berlin", "Berlin"),
            ("madrid", "Madrid"),
            ("rome", "Rome"),
        )
    ]
    for raw in nodes:
        if labels and raw["name"] in labels:
            raw["labels"] = {"site": labels[raw["name"]]}
    scenario = parse_scenario({"scenario": {"redundancy": "2/3"}, "nodes": nodes})
    sim = Simulation(scenario, tmp_path, Network("loopback"), lambda text: None)
    for name, node in sim.nodes.items():
        node.node_id = f"id-{name}"
        sim.by_id[node.node_id] = name
    return sim


def _placement(
    sim: Simulation, chunks: list[list[str]], *, k: int = 2, rules: dict[str, Any] | None = None
) -> dict[str, Any]:
    paris = sim.nodes["paris"].defn
    out = []
    for i, targets in enumerate(chunks):
        packets = []
        for j, name in enumerate(targets):
            node = sim.nodes[name].defn
            packets.append(
                {
                    "packet_id": f"{i:02d}{j:02d}" + "0" * 60,
                    "target": f"id-{name}",
                    "distance_km": round(haversine_km(paris.lat, paris.lon, node.lat, node.lon), 1),
                }
            )
        out.append({"chunk_id": f"{i:064x}", "k": k, "n": len(targets), "packets": packets})
    none = {"min_km": None, "max_km": None}
    return {
        "rules": rules or {"backup_proximity": none, "packet_proximity": none, "distinct": []},
        "chunks": out,
    }


def _backup(sim: Simulation, placement: dict[str, Any]) -> BackupState:
    return BackupState(
        name="docs",
        source="paris",
        snapshot_id="s",
        root=Path("/x"),
        manifest={},
        placement=placement,
    )


def test_survival_counts_dead_paused_separated_and_damaged_holders(tmp_path: Path) -> None:
    sim = _simulation(tmp_path)
    backup = _backup(
        sim, _placement(sim, [["berlin", "madrid", "rome"], ["brussels", "berlin", "madrid"]])
    )
    model = sim.survival(backup)
    assert (model["restore"], model["healthy"], model["degraded"], model["lost"]) == ("ok", 2, 0, 0)
    sim.nodes["berlin"].state = "killed"
    model = sim.survival(backup)
    assert (model["restore"], model["healthy"], model["degraded"], model["min_spare"]) == (
        "ok",
        0,
        2,
        0,
    )
    sim.damaged[("id-madrid", backup.placement["chunks"][0]["packets"][1]["packet_id"])] = "x"
    model = sim.survival(backup)
    assert (model["all_chunks_ok"], model["lost"], model["degraded"]) == (False, 1, 1)
    # Until a restore has said how many chunks it reads, a lost chunk may be the record's.
    assert model["restore"] == "either" and model["record_chunks"] is None
    backup.data_chunks = 1
    assert sim.survival(backup)["restore"] == "either"  # one record chunk: maybe that one
    backup.data_chunks = 2
    assert sim.survival(backup)["restore"] == "either"  # reads both: no record chunk known
    backup.data_chunks = 1
    sim.nodes["berlin"].state = "up"
    sim.nodes["brussels"].state = "paused"
    assert sim.survival(backup)["restore"] == "ok"
    # A real partition cuts Paris off from Madrid and Rome: chunk 0 keeps only Berlin.
    sim.partition = (frozenset({"paris", "berlin", "brussels"}), frozenset({"madrid", "rome"}))
    model = sim.survival(backup)
    assert (model["lost"], model["record_chunks"], model["restore"]) == (2, 1, "fail")
    # Emulated, the minority is stopped (its state says so) rather than cut off.
    sim.emulated_partition = True
    assert sim.survival(backup)["lost"] == 0


def test_rule_check_recomputes_distances_and_names_the_breach(tmp_path: Path) -> None:
    sim = _simulation(tmp_path, labels={"berlin": "a", "madrid": "a", "rome": "b", "brussels": "b"})
    fine = _placement(
        sim,
        [["berlin", "madrid", "rome"]],
        rules={
            "backup_proximity": {"min_km": 300.0, "max_km": None},
            "packet_proximity": {"min_km": 500.0, "max_km": 3000.0},
            "distinct": [],
        },
    )
    assert sim.rule_problems(_backup(sim, fine)) == []
    near = _placement(sim, [["brussels", "madrid", "rome"]], rules=fine["rules"])
    problems = sim.rule_problems(_backup(sim, near))
    assert any(
        "brussels is 264 km from the source, outside backup proximity at least 300 km" in p
        for p in problems
    )
    tight = dict(fine["rules"], packet_proximity={"min_km": 1500.0, "max_km": None})
    problems = sim.rule_problems(
        _backup(sim, _placement(sim, [["berlin", "madrid", "rome"]], rules=tight))
    )
    assert any("berlin and rome are" in p and "packet proximity" in p for p in problems)
    labelled = dict(fine["rules"], distinct=["site"])
    problems = sim.rule_problems(_backup(sim, fine | {"rules": labelled}))
    assert any("distinct 'site' labels" in p for p in problems)
    lying = _placement(sim, [["berlin", "madrid", "rome"]])
    lying["chunks"][0]["packets"][0]["distance_km"] = 10.0
    assert any(
        "placement says berlin is 10.0 km" in p for p in sim.rule_problems(_backup(sim, lying))
    )
    twice = _placement(sim, [["berlin", "berlin", "paris"]])
    problems = sim.rule_problems(_backup(sim, twice))
    assert any("two packets on one target" in p for p in problems)
    assert any("on the source itself" in p for p in problems)


# --- netns plans ---------------------------------------------------------------------------------


def test_netns_plan_for_four_cities() -> None:
    cities = [
        ("paris", 48.8534, 2.3488),
        ("berlin", 52.5244, 13.4105),
        ("madrid", 40.4165, -3.7026),
        ("rome", 41.8919, 12.5113),
    ]
    plan = plan_netns(cities, tag="gs42")
    assert [n.namespace for n in plan.nodes] == ["gs42-0", "gs42-1", "gs42-2", "gs42-3"]
    assert [n.address for n in plan.nodes] == [f"10.77.0.{i}:7400" for i in range(1, 5)]
    assert len(plan.links) == 6
    paris_berlin = plan.links[0]
    assert {paris_berlin.a.name, paris_berlin.b.name} == {"paris", "berlin"}
    assert paris_berlin.delay_ms == pytest.approx(878.4 / 200, abs=0.01)
    setup = plan.setup_commands(delay=True)
    netem = [c for c in setup if "netem" in c]
    assert len(netem) == 12  # both ends of six links
    assert [
        "tc",
        "-n",
        "gs42-0",
        "qdisc",
        "replace",
        "dev",
        "gsv1",
        "root",
        "netem",
        "delay",
        f"{round(paris_berlin.delay_ms * 1000)}us",
        "limit",
        str(NETEM_LIMIT),
    ] in setup
    assert not any("netem" in c for c in plan.setup_commands(delay=False))
    assert [
        "ip",
        "-n",
        "gs42-0",
        "route",
        "add",
        "10.77.0.2/32",
        "dev",
        "gsv1",
        "src",
        "10.77.0.1",
    ] in setup
    assert plan.teardown_commands() == [["ip", "netns", "del", f"gs42-{i}"] for i in range(4)]
    assert plan.exec_prefix("rome") == ["ip", "netns", "exec", "gs42-3"]
    assert link_delay_ms(100.0) == 0.5  # 1 ms of round trip per 100 km
    with pytest.raises(ValueError, match="unique"):
        plan_netns(cities + cities[:1], tag="gs")
    with pytest.raises(ValueError, match="tag"):
        plan_netns(cities, tag="bad tag")


@settings(max_examples=30, deadline=None)
@given(
    coords=st.lists(st.tuples(st.floats(-60, 60), st.floats(-170, 170)), min_size=2, max_size=12),
    split=st.integers(1, 11),
    delay=st.booleans(),
)
def test_netns_partition_touches_exactly_the_links_between_the_groups(
    coords: list[tuple[float, float]], split: int, delay: bool
) -> None:
    nodes = [(f"n{i}", lat, lon) for i, (lat, lon) in enumerate(coords)]
    plan = plan_netns(nodes, tag="gs1")
    count = len(nodes)
    assert len(plan.links) == count * (count - 1) // 2
    for node in plan.nodes:
        devices = [link.dev_a for link in plan.links if link.a == node] + [
            link.dev_b for link in plan.links if link.b == node
        ]
        assert len(devices) == len(set(devices)) == count - 1
        assert all(len(d) <= 15 for d in devices)
    left = {name for name, _, _ in nodes[: min(split, count - 1)]}
    right = {name for name, _, _ in nodes} - left
    cut = plan.cut_commands(left, right)
    assert len(cut) == 2 * len(left) * len(right)
    assert all(c[-3:] == ["pfifo", "limit", "0"] for c in cut)
    mend = plan.mend_commands(left, right, delay=delay)
    assert [(c[2], c[6]) for c in mend] == [(c[2], c[6]) for c in cut]
    assert all(("netem" in c) == delay for c in mend)


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_scenario_on_the_command_line_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(NODES4 + '[[steps]]\naction = "kill"\nnode = "lyon"\n')
    done = _gridsim("run", str(path), "--json", timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"gridsim: error: {path}: step 1 (kill): unknown node 'lyon' "
        "(nodes: paris, berlin, madrid, rome)"
    ]


@pytest.mark.slow
def test_smoke_scenario_end_to_end(tmp_path: Path) -> None:
    done = _gridsim(
        "run",
        str(SCENARIOS / "smoke.toml"),
        "--json",
        "--quiet",
        "--dir",
        str(tmp_path / "run"),
        timeout=240,
    )
    report = json.loads(done.stdout)
    assert done.returncode == 0, report["problems"]
    assert report["ok"] is True and report["problems"] == []
    assert report["network"]["mode"] == "loopback"
    assert report["network"]["location_check"] == "off"
    assert report["setup"]["ok"] is True
    # The secure path: an authority created the grid, and it ran to the end.
    assert report["grid"]["authority"] is True
    authority = report["grid"]["authority_node"]
    assert authority["state"] == "stopped" and len(authority["pids"]) == 1
    assert [(s["action"], s["name"], s["status"]) for s in report["steps"]] == [
        ("backup", "docs", "passed"),
        ("kill", "kill-holder", "passed"),
        ("restore", "restore-docs", "passed"),
    ]
    backup, kill, restore = report["steps"]
    assert backup["detail"]["snapshot_id"]
    holders = backup["detail"]["holders"]
    assert set(holders) == {"berlin", "madrid", "rome"}  # 2-of-3: every other node
    [victim] = kill["detail"]["nodes"]
    assert holders[victim] == max(holders.values())
    assert restore["detail"]["predicted"] == "ok"
    assert restore["detail"]["differences"] == []
    for step in report["steps"]:
        assert [(c["name"], c["ok"]) for c in step["invariants"]] == [
            ("restore", True),
            ("rules", True),
            ("processes", True),
        ]
    running = [n for n in report["nodes"] if n["name"] != victim]
    assert all(n["state"] == "up" for n in running)
    # Every process gridsim started is gone once it returns.
    pids = [pid for node in report["nodes"] for pid in node["pids"]]
    assert len(pids) == 4
    assert not any(pid_alive(pid) for pid in [*pids, *authority["pids"]])


@pytest.mark.slow
def test_up_and_down_three_nodes(tmp_path: Path) -> None:
    directory = tmp_path / "grid"
    up = _gridsim("up", "--dir", str(directory), "--nodes", "3", timeout=150)
    try:
        assert up.returncode == 0, up.stderr
        assert "location check is off" in up.stderr
        result = json.loads(up.stdout)
        nodes = result["nodes"]
        assert [n["city"] for n in nodes] == ["Paris", "Berlin", "Madrid"]
        for node in nodes:
            assert {"name", "home", "address", "pid", "city"} <= set(node)
            assert pid_alive(node["pid"])
            assert Path(node["home"], "node.key").exists()
        authority = result["authority"]
        assert pid_alive(authority["pid"])
        assert Path(authority["home"], "authority.key").exists()
        state = json.loads((directory / "gridsim.json").read_text())
        assert [n["pid"] for n in state["nodes"]] == [n["pid"] for n in nodes]
        assert pid_alive(state["supervisor_pid"])
        status = subprocess.run(
            [sys.executable, "-m", "gridnode", "status", "--home", nodes[0]["home"], "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        alive = {
            m["address"] for m in json.loads(status.stdout)["members"] if m["state"] == "alive"
        }
        # The other two nodes, and the authority every node subscribed with.
        assert alive == {nodes[1]["address"], nodes[2]["address"], authority["address"]}
        assert json.loads(status.stdout)["subscription"]["plan"] == "harness"
    finally:
        down = _gridsim("down", "--dir", str(directory), timeout=90)
    assert down.returncode == 0, down.stderr
    summary = json.loads(down.stdout)
    assert summary["stopped"] is True and summary["via"] == "supervisor"
    assert [(n["name"], n["exit_code"]) for n in summary["nodes"]] == [
        (n["name"], 0) for n in nodes
    ]
    assert summary["authority"]["exit_code"] == 0
    assert not any(pid_alive(n["pid"]) for n in [*nodes, authority])
    assert not pid_alive(state["supervisor_pid"])
    again = _gridsim("down", "--dir", str(directory), timeout=60)
    assert again.returncode == 0 and json.loads(again.stdout)["already_stopped"] is True
