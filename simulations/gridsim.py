"""gridsim: grids of real ``gridnode`` processes on this machine, and scenarios run on them.

Three commands (their flags and JSON keys are a stable interface, see the README):

``gridsim up --dir DIR --nodes N [--cities CITY,CITY,...] [--open]``
    Starts N ``gridnode run`` processes in the background, one per city (European
    capitals by default) and prints one JSON object, ``{"nodes": [{"name", "home",
    "address", "pid", "city", ...}], "authority": {...}, ...}``, once every node sees
    every other alive.  The grid has an authority (see below) unless ``--open``.
    The nodes belong to a small detached supervisor process (its pid is in
    ``DIR/gridsim.json`` with theirs): it reaps them, so ``down`` can report their
    real exit codes, and it stops them after ``--lifetime`` (a day by default) so a
    forgotten grid does not run forever.  All nodes are on 127.0.0.1, so the
    speed-of-light location check is off unless ``--location-check`` is given.

``gridsim down --dir DIR``
    Stops that grid: SIGTERM, SIGKILL after a grace period; prints a JSON summary with
    each node's exit code; exits 0.

``gridsim run SCENARIO.toml [--json] [--dir DIR] [--netns] [--keep]``
    Starts the scenario's nodes, runs its steps in order, checks the invariants after
    each step, stops every process it started (also on Ctrl-C, SIGTERM or a failure),
    and prints a readable report (or, with ``--json``, one JSON object).  Exit code 0
    only if every step and every invariant check passed; 1 otherwise; 2 for a bad
    scenario file; 130 when interrupted.

Scenario files (TOML)
=====================

::

    [scenario]
    name = "loss"                  # default: the file name
    description = "..."
    redundancy = "4/6"             # default K/N for backups (else the nodes' default, 4/6)
    seed = 1                       # generated data and random choices
    timeout_s = 900                # the whole run, setup included
    log_level = "info"             # of the nodes (their logs are HOME/node.log)
    invariants = ["restore", "rules", "processes"]   # checked after each step

    [defaults]                     # for every node, unless the node says otherwise
    allocation = "1GB"
    location_check = "auto"        # auto | enforce | warn | off
    set = { request_timeout_s = 10 }   # any `gridnode init --set KEY=VALUE`

    [[nodes]]
    name = "paris"                 # letters, digits, - and _
    city = "Paris"                 # or: lat = 48.85, lon = 2.35
    allocation = "2GB"
    seeds = ["berlin"]             # names of nodes defined *above*; default: the first node
    labels = { site = "a" }        # or ["site=a"]: failure-domain labels (`--distinct`)
    location_check = "off"

    [[steps]]
    action = "backup"              # see the actions below
    name = "docs"                  # optional, unique; restore and friends refer to it
    check = true                   # check the invariants after this step (default true)

Actions and their keys:

- ``backup``: ``node``; ``path`` (a directory, relative to the scenario file; it must
  not change during the run) or ``generate = {size = "4MB", kind = "random" | "text" |
  "small-files", files = N, seed = S}`` (the seed defaults to one per step, so two
  steps generate different data unless they share a seed); ``redundancy``,
  ``backup_proximity``, ``packet_proximity`` (``"MIN:MAX"``, km or mi), ``distinct``
  (label names); ``expect = "ok" | "fail"`` (default ok); ``not_on = ["x"]``: no *new*
  packet may land on these nodes (chunks deduplicated against an earlier backup keep
  their old packets, wherever those are).
- ``restore``: ``backup`` (an earlier backup step's name), restored on its source node
  and compared byte for byte; ``expect = "auto" | "ok" | "fail"`` (auto: from the
  survival model below); ``max_seconds`` (fail if slower, e.g. to show hedging).
- ``verify``: ``gridnode verify`` of ``backup`` (or of every backup), compared with the
  survival model: ``ok``, and chunks healthy / degraded / lost.
- ``repair``: ``gridnode repair`` of ``backup`` (or of every backup) on its source: lost
  packets rebuilt on new holders under the backup's rules.  Checked against the model:
  a chunk the model counts lost must be reported lost, no other; afterwards the model
  reads the new placement, and with enough nodes up every chunk is back to n packets.
- ``kill`` (SIGKILL), ``stop`` (SIGTERM; exit code 0 expected), ``pause`` (SIGSTOP),
  ``resume`` (SIGCONT), ``restart`` (start a killed or stopped node again, its disk
  intact; ``allocation`` restarts it with another ``--allocate``): the nodes are
  ``node = "x"``, ``nodes = ["x", "y"]``, or ``holders_of = "docs"`` with ``count = N``
  (the N running nodes other than the source that hold most packets of that backup;
  among equals, those holding the lowest share numbers, which a restore asks first).
- ``partition``: ``groups = [["a", "b"], ["c", "d"]]``; ``heal`` ends it.
- ``corrupt`` / ``delete``: ``node``, ``packets = N``, optional ``backup``: flip bytes in
  (or delete) N packet files under ``HOME/storage/packets/`` on that node.
- ``fill``: ``node``, ``free = "0"``: restart the node with ``--allocate`` equal to what
  it already stores plus ``free``, and wait until the grid has heard.
- ``wait``: ``seconds``; with ``until = "converged"`` (every running node sees every
  reachable running node alive) or ``"settled"`` (and sees every other node not alive),
  ``seconds`` is the time limit instead of a sleep; ``nodes = [...]`` limits whose view
  counts (say, one side of a partition).

The grid and its authority
==========================

Every grid gridsim starts is created with an authority, so what a scenario shows runs
on the secure path: ``gridnode authority init`` makes an authority node (``HOME`` under
``authority/``, not one of the scenario's nodes; the name is reserved), and every node
subscribes with a one-time invite from it before it may join the gossip or back up.
The authority allocates no storage, so it never holds packets and placement is that of
the scenario's nodes; it is a gossip member, and the ``processes`` invariant watches it
too.  Its one plan is larger than any allocation (see ``simulations/harness.py``).  The
report's ``grid`` says so: ``{"authority": true, "authority_node": {"address", "pids",
...}}``.  With ``--netns`` the grid is open (the authority has no namespace yet), and
the report says that instead.

Invariants, after every step with ``check = true``
===================================================

1. ``restore``: every backup the scenario made (of a running source) is listed
   complete and is restored and compared with what was backed up, byte for byte.  The
   expected outcome comes from a survival model: a chunk's packet survives if its
   target (from ``gridnode placement --json``) is running, not paused, on the source's
   side of a partition, and the packet was not corrupted or deleted by a step.  With at
   least k survivors for every chunk the restore must succeed byte-equal; otherwise it
   must fail cleanly (non-zero exit, a one-line ``gridnode: error:``).  One caveat:
   placement also lists the chunks of the snapshot record, which a restore does not
   read, without marking them; their number is known (placement's chunks minus the
   restore's ``chunks``), so failure is required only when more chunks are lost than
   that, and with fewer either clean outcome passes, with a note.
2. ``rules``: every packet of every such snapshot obeys the snapshot's rules
   (``rules`` in the placement): backup proximity from the source and packet proximity
   between targets, recomputed from the nodes' own locations; distinct targets, none
   the source; distinct values of the ``distinct`` labels.
3. ``processes``: every node a step did not kill or stop is still running, and no
   node log contains a ``Traceback``; the same for the grid's authority node.

Network
=======

By default every node listens on 127.0.0.1, where the location check cannot work
(``location_check = "auto"`` means off), and a partition is *emulated*: without root
nothing can drop packets between two loopback sockets, so the smaller group is stopped
(SIGTERM) and restarted on ``heal``; the report says so.  With ``--netns`` (root,
iproute2) each node gets a network namespace, links delayed by distance and real,
packet-dropping partitions: see ``simulations/netns.py``.  When that is impossible the
run says why and falls back to loopback; when netem is missing the links carry no delay
and the location check stays off.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import hashlib
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import attrs

from gridnode.logic.cities import parse_location
from gridnode.logic.distance import Band, haversine_km, parse_band
from gridnode.logic.packing import ErasureParams
from gridnode.units import parse_size

from .harness import AUTHORITY_NAME, SAMPLE_WORDS, LocalGrid, NodeSpec

if TYPE_CHECKING:
    from .netns import Netns

__all__ = [
    "DataSpec",
    "NodeDef",
    "Scenario",
    "ScenarioError",
    "Step",
    "build_manifest",
    "compare_manifest",
    "generate_data",
    "load_scenario",
    "main",
    "parse_scenario",
    "run_scenario",
]

T = TypeVar("T")

EUROPEAN_CAPITALS: Final = (
    "Paris",
    "Berlin",
    "Madrid",
    "Rome",
    "Vienna",
    "Amsterdam",
    "Warsaw",
    "Prague",
    "Lisbon",
    "Stockholm",
    "Brussels",
    "Dublin",
    "Athens",
    "Budapest",
    "Copenhagen",
    "Helsinki",
    "Oslo",
    "Bern",
    "Bucharest",
    "Sofia",
)
INVARIANTS: Final = ("restore", "rules", "processes")
DATA_KINDS: Final = ("random", "text", "small-files")
LOCATION_CHECKS: Final = ("auto", "enforce", "warn", "off")
WAIT_UNTIL: Final = ("converged", "settled")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_NODE_SELECT: Final = frozenset({"node", "nodes", "holders_of", "count"})
_COMMON: Final = frozenset({"action", "name", "check"})
ACTION_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "backup": frozenset(
        {
            "node",
            "path",
            "generate",
            "redundancy",
            "backup_proximity",
            "packet_proximity",
            "distinct",
            "expect",
            "not_on",
        }
    ),
    "restore": frozenset({"backup", "expect", "max_seconds"}),
    "verify": frozenset({"backup"}),
    "repair": frozenset({"backup"}),
    "kill": _NODE_SELECT,
    "stop": _NODE_SELECT,
    "pause": _NODE_SELECT,
    "resume": _NODE_SELECT,
    "restart": _NODE_SELECT | {"allocation"},
    "partition": frozenset({"groups"}),
    "heal": frozenset(),
    "corrupt": frozenset({"node", "packets", "backup"}),
    "delete": frozenset({"node", "packets", "backup"}),
    "fill": frozenset({"node", "free"}),
    "wait": frozenset({"seconds", "until", "nodes"}),
}
_CLI_TIMEOUT_S: Final = 180.0
_READY_TIMEOUT_S: Final = 60.0
_CONVERGE_TIMEOUT_S: Final = 90.0
_POLL_S: Final = 0.3


# --- the scenario model ------------------------------------------------------------------------


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file, the place and why."""


@attrs.frozen
class NodeDef:
    name: str
    location: str  # a city name or "LAT,LON", as `gridnode init --location` takes it
    lat: float
    lon: float
    city: str
    allocation: str
    seeds: tuple[str, ...]
    labels: tuple[str, ...]  # NAME=VALUE
    location_check: str
    settings: tuple[str, ...]  # KEY=VALUE

    def label(self, name: str) -> str | None:
        for item in self.labels:
            key, _, value = item.partition("=")
            if key == name:
                return value
        return None


@attrs.frozen
class DataSpec:
    """Generated data (``size`` bytes of ``kind``) or an existing directory (``path``)."""

    path: Path | None = None
    size: int = 0
    kind: str = "random"
    files: int | None = None
    seed: int = 1

    def describe(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"{self.size / 1e6:g} MB of {self.kind}"


@attrs.frozen
class Step:
    index: int  # 1-based, in file order
    action: str
    name: str
    check: bool = True
    node: str | None = None
    nodes: tuple[str, ...] = ()
    holders_of: str | None = None
    count: int = 1
    data: DataSpec | None = None
    redundancy: str | None = None
    backup_proximity: str | None = None
    packet_proximity: str | None = None
    distinct: tuple[str, ...] = ()
    not_on: tuple[str, ...] = ()
    expect: str = "ok"
    backup: str | None = None
    max_seconds: float | None = None
    packets: int = 1
    allocation: str | None = None
    free: int = 0
    groups: tuple[tuple[str, ...], ...] = ()
    seconds: float | None = None
    until: str | None = None

    def title(self) -> str:
        who = (
            self.node
            or ", ".join(self.nodes)
            or (f"{self.count} holder(s) of {self.holders_of}" if self.holders_of else "")
        )
        parts = {
            "backup": f"backup {self.name} on {self.node}: "
            f"{self.data.describe() if self.data else ''}",
            "restore": f"restore {self.backup} and compare",
            "verify": f"verify {self.backup or 'every backup'}",
            "repair": f"repair {self.backup or 'every backup'}",
            "partition": "partition " + " | ".join(",".join(g) for g in self.groups),
            "heal": "heal the partition",
            "corrupt": f"corrupt {self.packets} packet(s) on {self.node}",
            "delete": f"delete {self.packets} packet(s) on {self.node}",
            "fill": f"fill {self.node}'s allocation",
            "wait": (
                f"wait until {self.until}"
                f"{' in the views of ' + ', '.join(self.nodes) if self.nodes else ''}"
                f" (at most {self.seconds or 60:g} s)"
                if self.until
                else f"wait {self.seconds or 0:g} s"
            ),
        }
        return parts.get(self.action, f"{self.action} {who}")


@attrs.frozen
class Scenario:
    name: str
    description: str
    path: Path | None
    nodes: tuple[NodeDef, ...]
    steps: tuple[Step, ...]
    redundancy: str | None = None
    seed: int = 1
    timeout_s: float = 900.0
    log_level: str = "info"
    invariants: tuple[str, ...] = INVARIANTS

    def node(self, name: str) -> NodeDef:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


class _Where:
    """Prefixes every parse error with the file and the place in it."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, place: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {place}: {message}")


def _table(where: _Where, place: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise where.error(place, f"expected a table, got {type(value).__name__}")
    return value


def _check_keys(
    where: _Where, place: str, table: Mapping[str, Any], allowed: frozenset[str] | set[str]
) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise where.error(
            place, f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed)) or 'none'})"
        )


def _get(
    where: _Where,
    place: str,
    table: Mapping[str, Any],
    key: str,
    kind: type[T],
    default: T | None = None,
    *,
    required: bool = False,
) -> T | None:
    if key not in table:
        if required:
            raise where.error(place, f"missing key {key!r}")
        return default
    value = table[key]
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise where.error(place, f"{key!r} must be {kind.__name__}, got {value!r}")
    return cast(T, value)


def _str_list(where: _Where, place: str, value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise where.error(place, f"{key!r} must be a list of strings, got {value!r}")
    return tuple(value)


def _size(where: _Where, place: str, key: str, value: Any) -> int:
    try:
        return parse_size(value)
    except (ValueError, TypeError) as exc:
        raise where.error(place, f"{key!r}: {exc}") from None


def _pairs(where: _Where, place: str, key: str, value: Any) -> tuple[str, ...]:
    """A TOML table ``{a = 1}`` or a list ``["a=1"]`` as ``("a=1",)``."""
    if isinstance(value, dict):
        out = []
        for name, item in value.items():
            if isinstance(item, bool):
                item = "true" if item else "false"
            if not isinstance(item, str | int | float):
                raise where.error(place, f"{key!r}: {name} must be a plain value")
            out.append(f"{name}={item}")
        return tuple(out)
    items = _str_list(where, place, value, key)
    for item in items:
        if "=" not in item or item.startswith("="):
            raise where.error(place, f"{key!r}: expected NAME=VALUE, got {item!r}")
    return items


def _parse_node(
    where: _Where, index: int, raw: Any, defaults: Mapping[str, Any], earlier: Sequence[str]
) -> NodeDef:
    place = f"node {index}"
    table = _table(where, place, raw)
    name = _get(where, place, table, "name", str, required=True)
    assert name is not None
    place = f"node {index} ({name})"
    if not _NAME_RE.match(name):
        raise where.error(place, "a node name is 1-40 letters, digits, - or _")
    if name in earlier:
        raise where.error(place, f"duplicate node name {name!r}")
    if name == AUTHORITY_NAME:
        raise where.error(place, f"{name!r} is reserved for the grid's authority node")
    _check_keys(
        where,
        place,
        table,
        {"name", "city", "lat", "lon", "allocation", "seeds", "labels", "location_check", "set"},
    )
    city_text = _get(where, place, table, "city", str)
    has_coords = "lat" in table or "lon" in table
    if (city_text is None) == (not has_coords):
        raise where.error(place, "give either 'city' or both 'lat' and 'lon'")
    if city_text is not None:
        location = city_text
    else:
        lat_in = _get(where, place, table, "lat", float, required=True)
        lon_in = _get(where, place, table, "lon", float, required=True)
        location = f"{lat_in},{lon_in}"
    try:
        lat, lon, city = parse_location(location)
    except ValueError as exc:
        raise where.error(place, str(exc)) from None
    allocation = str(table.get("allocation", defaults.get("allocation", "1GB")))
    _size(where, place, "allocation", allocation)
    if "seeds" in table:
        seeds = _str_list(where, place, table["seeds"], "seeds")
        for seed in seeds:
            if seed not in earlier:
                raise where.error(place, f"seed {seed!r} is not a node defined above this one")
    else:
        seeds = (earlier[0],) if earlier else ()
    labels = _pairs(where, place, "labels", table.get("labels", []))
    check = str(table.get("location_check", defaults.get("location_check", "auto")))
    if check not in LOCATION_CHECKS:
        raise where.error(
            place, f"location_check {check!r} is not one of {', '.join(LOCATION_CHECKS)}"
        )
    settings = _pairs(where, place, "set", defaults.get("set", {})) + _pairs(
        where, place, "set", table.get("set", {})
    )
    return NodeDef(
        name=name,
        location=location,
        lat=lat,
        lon=lon,
        city=city or "",
        allocation=allocation,
        seeds=seeds,
        labels=labels,
        location_check=check,
        settings=settings,
    )


def _parse_data(
    where: _Where, place: str, table: Mapping[str, Any], base_dir: Path, seed: int
) -> DataSpec:
    if ("path" in table) == ("generate" in table):
        raise where.error(place, "a backup needs either 'path' or 'generate'")
    if "path" in table:
        text = _get(where, place, table, "path", str, required=True)
        assert text is not None
        path = Path(text).expanduser()
        return DataSpec(path=path if path.is_absolute() else (base_dir / path).absolute())
    gen = _table(where, place + " generate", table["generate"])
    _check_keys(where, place + " generate", gen, {"size", "kind", "files", "seed"})
    if "size" not in gen:
        raise where.error(place, "generate needs a 'size' (e.g. \"4MB\")")
    size = _size(where, place, "generate.size", gen["size"])
    if not 0 < size <= 8 * 1000**3:
        raise where.error(place, f"generate.size must be between 1 byte and 8 GB, got {size}")
    kind = _get(where, place, gen, "kind", str, "random")
    if kind not in DATA_KINDS:
        raise where.error(place, f"generate.kind {kind!r} is not one of {', '.join(DATA_KINDS)}")
    files = _get(where, place, gen, "files", int)
    if files is not None and not 1 <= files <= 100_000:
        raise where.error(place, f"generate.files must be 1..100000, got {files}")
    data_seed = _get(where, place, gen, "seed", int, seed)
    assert kind is not None and data_seed is not None
    return DataSpec(size=size, kind=kind, files=files, seed=data_seed)


def _parse_step(
    where: _Where,
    index: int,
    raw: Any,
    scenario_nodes: Sequence[NodeDef],
    earlier: Sequence[Step],
    state: dict[str, Any],
    base_dir: Path,
) -> Step:
    place = f"step {index}"
    table = _table(where, place, raw)
    action = _get(where, place, table, "action", str, required=True)
    assert action is not None
    if action not in ACTION_KEYS:
        raise where.error(place, f"unknown action {action!r} (actions: {', '.join(ACTION_KEYS)})")
    place = f"step {index} ({action})"
    _check_keys(where, place, table, ACTION_KEYS[action] | _COMMON)
    name = _get(where, place, table, "name", str, f"{action}-{index}")
    assert name is not None
    if not _NAME_RE.match(name):
        raise where.error(place, "a step name is 1-40 letters, digits, - or _")
    if any(s.name == name for s in earlier):
        raise where.error(place, f"duplicate step name {name!r}")
    names = [n.name for n in scenario_nodes]
    backups = [s.name for s in earlier if s.action == "backup"]

    def node_ref(value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise where.error(place, f"{key!r} must be a node name, got {value!r}")
        if value not in names:
            raise where.error(place, f"unknown node {value!r} (nodes: {', '.join(names)})")
        return value

    def backup_ref(key: str) -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or value not in backups:
            raise where.error(
                place,
                f"{key} {value!r} does not name an earlier backup step"
                f" (backups so far: {', '.join(backups) or 'none'})",
            )
        return value

    kwargs: dict[str, Any] = {
        "index": index,
        "action": action,
        "name": name,
        "check": _get(where, place, table, "check", bool, True),
    }
    if "node" in table:
        kwargs["node"] = node_ref(table["node"], "node")
    if "nodes" in table:
        kwargs["nodes"] = tuple(
            node_ref(v, "nodes") for v in _str_list(where, place, table["nodes"], "nodes")
        )
        if not kwargs["nodes"]:
            raise where.error(place, "'nodes' is empty")
    if "holders_of" in table:
        kwargs["holders_of"] = backup_ref("holders_of")
    if "count" in table:
        if "holders_of" not in table:
            raise where.error(place, "'count' goes with 'holders_of'")
        count = _get(where, place, table, "count", int)
        assert count is not None
        if not 1 <= count < len(names):
            raise where.error(place, f"count must be 1..{len(names) - 1}, got {count}")
        kwargs["count"] = count
    if action in ("kill", "stop", "pause", "resume", "restart"):
        chosen = sum(k in table for k in ("node", "nodes", "holders_of"))
        if chosen != 1:
            raise where.error(
                place, "name the nodes with exactly one of 'node', 'nodes', 'holders_of'"
            )
    elif action in ("backup", "corrupt", "delete", "fill") and "node" not in table:
        raise where.error(place, "missing key 'node'")

    if action == "backup":
        kwargs["data"] = _parse_data(where, place, table, base_dir, state["seed"] * 1000 + index)
        redundancy = _get(where, place, table, "redundancy", str, state["redundancy"])
        if redundancy is not None:
            try:
                params = ErasureParams.parse(redundancy)
            except ValueError as exc:
                raise where.error(place, str(exc)) from None
            if params.n > len(names) - 1:
                raise where.error(
                    place,
                    f"redundancy {redundancy} needs {params.n} target "
                    f"nodes besides the source, but the scenario has only "
                    f"{len(names)} nodes",
                )
            kwargs["redundancy"] = redundancy
        elif len(names) - 1 < 6:
            raise where.error(
                place,
                f"the default redundancy 4/6 needs 7 nodes, the "
                f"scenario has {len(names)}: set 'redundancy'",
            )
        for key in ("backup_proximity", "packet_proximity"):
            band = _get(where, place, table, key, str)
            if band is not None:
                try:
                    parse_band(band)
                except ValueError as exc:
                    raise where.error(place, f"{key}: {exc}") from None
                kwargs[key] = band
        if "distinct" in table:
            kwargs["distinct"] = _str_list(where, place, table["distinct"], "distinct")
        if "not_on" in table:
            kwargs["not_on"] = tuple(
                node_ref(v, "not_on") for v in _str_list(where, place, table["not_on"], "not_on")
            )
        expect = _get(where, place, table, "expect", str, "ok")
        if expect not in ("ok", "fail"):
            raise where.error(place, f"expect must be 'ok' or 'fail', got {expect!r}")
        kwargs["expect"] = expect
    elif action in ("restore", "verify", "repair"):
        kwargs["backup"] = backup_ref("backup")
        if action == "restore":
            if kwargs["backup"] is None:
                raise where.error(place, "missing key 'backup'")
            expect = _get(where, place, table, "expect", str, "auto")
            if expect not in ("auto", "ok", "fail"):
                raise where.error(place, f"expect must be auto, ok or fail, got {expect!r}")
            kwargs["expect"] = expect
            limit = _get(where, place, table, "max_seconds", float)
            if limit is not None and limit <= 0:
                raise where.error(place, "max_seconds must be positive")
            kwargs["max_seconds"] = limit
    elif action == "restart" and "allocation" in table:
        kwargs["allocation"] = str(table["allocation"])
        _size(where, place, "allocation", kwargs["allocation"])
    elif action == "partition":
        if state["partitioned"]:
            raise where.error(place, "a partition is already in effect: heal it first")
        groups = table.get("groups")
        if not isinstance(groups, list) or len(groups) != 2:
            raise where.error(place, "'groups' must be two lists of node names")
        parsed = tuple(
            tuple(node_ref(v, "groups") for v in _str_list(where, place, g, "groups"))
            for g in groups
        )
        if not all(parsed) or set(parsed[0]) & set(parsed[1]):
            raise where.error(place, "the two groups must be non-empty and disjoint")
        kwargs["groups"] = parsed
        state["partitioned"] = True
    elif action == "heal":
        if not state["partitioned"]:
            raise where.error(place, "no partition to heal")
        state["partitioned"] = False
    elif action in ("corrupt", "delete"):
        packets = _get(where, place, table, "packets", int, 1)
        assert packets is not None
        if not 1 <= packets <= 100_000:
            raise where.error(place, f"packets must be 1..100000, got {packets}")
        kwargs["packets"] = packets
        kwargs["backup"] = backup_ref("backup")
    elif action == "fill":
        kwargs["free"] = _size(where, place, "free", table.get("free", 0))
    elif action == "wait":
        seconds = _get(where, place, table, "seconds", float)
        until = _get(where, place, table, "until", str)
        if seconds is None and until is None:
            raise where.error(place, "give 'seconds', 'until', or both")
        if seconds is not None and not 0 <= seconds <= 3600:
            raise where.error(place, f"seconds must be 0..3600, got {seconds}")
        if until is not None and until not in WAIT_UNTIL:
            raise where.error(place, f"until must be one of {', '.join(WAIT_UNTIL)}")
        kwargs["seconds"], kwargs["until"] = seconds, until
    return Step(**kwargs)


def parse_scenario(
    data: Mapping[str, Any],
    *,
    source: str = "<scenario>",
    base_dir: Path | None = None,
    path: Path | None = None,
) -> Scenario:
    """Validate a decoded scenario.

    Raises:
        ScenarioError: naming the file, the node or step, and the problem.
    """
    where = _Where(source)
    _check_keys(where, "top level", data, {"scenario", "defaults", "nodes", "steps"})
    head = _table(where, "[scenario]", data.get("scenario", {}))
    _check_keys(
        where,
        "[scenario]",
        head,
        {"name", "description", "redundancy", "seed", "timeout_s", "log_level", "invariants"},
    )
    defaults = _table(where, "[defaults]", data.get("defaults", {}))
    _check_keys(where, "[defaults]", defaults, {"allocation", "location_check", "set"})
    seed = _get(where, "[scenario]", head, "seed", int, 1)
    timeout = _get(where, "[scenario]", head, "timeout_s", float, 900.0)
    assert seed is not None and timeout is not None
    if not 10 <= timeout <= 86_400:
        raise where.error("[scenario]", f"timeout_s must be 10..86400, got {timeout}")
    redundancy = _get(where, "[scenario]", head, "redundancy", str)
    if redundancy is not None:
        try:
            ErasureParams.parse(redundancy)
        except ValueError as exc:
            raise where.error("[scenario]", str(exc)) from None
    invariants = _str_list(
        where, "[scenario]", head.get("invariants", list(INVARIANTS)), "invariants"
    )
    for name in invariants:
        if name not in INVARIANTS:
            raise where.error(
                "[scenario]", f"unknown invariant {name!r} (invariants: {', '.join(INVARIANTS)})"
            )
    log_level = _get(where, "[scenario]", head, "log_level", str, "info")
    if log_level not in ("debug", "info", "warning", "error"):
        raise where.error(
            "[scenario]", f"log_level {log_level!r} is not debug, info, warning or error"
        )
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise where.error("nodes", "a scenario needs at least one [[nodes]] entry")
    if len(raw_nodes) > 64:
        raise where.error("nodes", f"at most 64 nodes, got {len(raw_nodes)}")
    nodes: list[NodeDef] = []
    for i, raw in enumerate(raw_nodes, 1):
        nodes.append(_parse_node(where, i, raw, defaults, [n.name for n in nodes]))
    raw_steps = data.get("steps", [])
    if not isinstance(raw_steps, list):
        raise where.error("steps", "steps must be an array of tables ([[steps]])")
    steps: list[Step] = []
    state: dict[str, Any] = {"partitioned": False, "seed": seed, "redundancy": redundancy}
    for i, raw in enumerate(raw_steps, 1):
        steps.append(_parse_step(where, i, raw, nodes, steps, state, base_dir or Path.cwd()))
    default_name = path.stem if path is not None else "scenario"
    title = _get(where, "[scenario]", head, "name", str, default_name)
    description = _get(where, "[scenario]", head, "description", str, "")
    assert title is not None and description is not None and log_level is not None
    return Scenario(
        name=title,
        description=description,
        path=path,
        nodes=tuple(nodes),
        steps=tuple(steps),
        redundancy=redundancy,
        seed=seed,
        timeout_s=timeout,
        log_level=log_level,
        invariants=invariants,
    )


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file.

    Raises:
        ScenarioError: the file is missing, is not TOML, or does not validate.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    return parse_scenario(data, source=str(path), base_dir=path.parent.absolute(), path=path)


# --- data: generation and comparison ---------------------------------------------------------

Manifest = dict[str, tuple[Any, ...]]


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _text(rng: random.Random, size: int) -> bytes:
    out = bytearray()
    for _ in range(size // 8 + 2):  # every round adds at least 8 bytes
        if len(out) >= size:
            break
        out += (" ".join(rng.choices(SAMPLE_WORDS, k=64)) + "\n").encode()
    return bytes(out[:size])


def generate_data(root: Path, spec: DataSpec) -> None:
    """Write ``spec.size`` bytes into the new directory ``root``, reproducibly from the seed.

    ``random`` is incompressible (a few large files), ``text`` compresses well (words),
    ``small-files`` is many small files (half text, half random) in sub-directories of
    64, which is what stresses per-file overheads.
    """
    rng = random.Random(spec.seed)
    root.mkdir(parents=True, exist_ok=False)
    if spec.kind == "random":
        for i, size in enumerate(_split(spec.size, spec.files or 2)):
            (root / f"blob-{i:03d}.bin").write_bytes(rng.randbytes(size))
    elif spec.kind == "text":
        for i, size in enumerate(_split(spec.size, spec.files or 4)):
            (root / f"text-{i:03d}.txt").write_bytes(_text(rng, size))
    elif spec.kind == "small-files":
        count = spec.files or max(1, spec.size // 4096)
        for i, size in enumerate(_split(spec.size, count)):
            folder = root / f"d{i // 64:03d}"
            folder.mkdir(exist_ok=True)
            data = _text(rng, size) if i % 2 else rng.randbytes(size)
            (folder / f"f{i:05d}.{'txt' if i % 2 else 'bin'}").write_bytes(data)
    else:
        raise ValueError(f"unknown data kind {spec.kind!r}")


def _digest(path: Path) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def build_manifest(root: Path) -> Manifest:
    """What a byte-equal restore must reproduce: every file's size and hash, dirs, links."""
    out: Manifest = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir",)
            elif path.is_file():
                out[rel] = ("file", path.stat().st_size, _digest(path))
    return out


def compare_manifest(expected: Manifest, actual: Manifest, *, limit: int = 5) -> list[str]:
    """Differences in words, at most ``limit`` of them plus a count of the rest."""
    problems: list[str] = []
    for rel in sorted(set(expected) | set(actual)):
        want, got = expected.get(rel), actual.get(rel)
        if want == got:
            continue
        if got is None:
            problems.append(f"{rel}: missing")
        elif want is None:
            problems.append(f"{rel}: not in the backup")
        elif want[0] != got[0]:
            problems.append(f"{rel}: a {got[0]}, expected a {want[0]}")
        elif want[0] == "file" and want[1] != got[1]:
            problems.append(f"{rel}: {got[1]} bytes, expected {want[1]}")
        else:
            problems.append(f"{rel}: content differs")
    if len(problems) > limit:
        problems = [*problems[:limit], f"... and {len(problems) - limit} more"]
    return problems


# --- running the CLI --------------------------------------------------------------------------


@attrs.frozen
class CliResult:
    returncode: int | None  # None: timed out
    value: Any
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def error(self) -> str:
        """The one-line reason of a failure, as the CLI printed it."""
        if self.returncode is None:
            return self.stderr
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        if isinstance(self.value, dict) and self.value.get("event") == "error":
            return str(self.value.get("message", ""))
        return lines[-1] if lines else f"exit code {self.returncode}"

    @property
    def failed_cleanly(self) -> bool:
        """Non-zero exit, no traceback, and a final ``gridnode: error:`` line."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return (
            self.returncode not in (None, 0)
            and "Traceback" not in self.stderr + self.stdout
            and bool(lines)
            and lines[-1].startswith("gridnode: error:")
        )


def run_cli(
    grid: LocalGrid,
    home: Path,
    *args: str,
    timeout: float = _CLI_TIMEOUT_S,
) -> CliResult:
    """``gridnode ARGS --home HOME --json``, never raising for the command's own failure."""
    argv = grid.command(*args, "--home", str(home), "--json")
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, env=grid.env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return CliResult(
            None,
            None,
            "",
            f"gridnode {args[0]} timed out after {timeout:g} s",
            time.monotonic() - started,
        )
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    value: Any = None
    lines = [line for line in out.splitlines() if line.strip()]
    if lines:
        with contextlib.suppress(ValueError):
            value = json.loads(lines[-1])
    return CliResult(proc.returncode, value, out, err, time.monotonic() - started)


def parallel(calls: Sequence[Callable[[], T]], *, workers: int = 4) -> list[T]:
    """Run blocking calls (CLI processes, mostly) side by side; results in order."""
    if len(calls) <= 1:
        return [call() for call in calls]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(calls)))
    try:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def add_nodes(grid: LocalGrid, specs: Sequence[tuple[NodeSpec, Sequence[str]]]) -> None:
    """``gridnode init`` for every node, side by side wherever the seeds allow.

    ``specs`` pairs each node with the *names* of its seeds; a node is initialised once
    its seeds have addresses.  The grid's node order stays the order given.
    """
    pending = list(specs)
    for _ in range(len(specs)):
        if not pending:
            break
        ready = [
            (spec, seeds) for spec, seeds in pending if all(seed in grid.nodes for seed in seeds)
        ]
        if not ready:
            raise ValueError("node seeds refer to nodes that are never added")

        def init(spec: NodeSpec, seeds: Sequence[str]) -> None:
            grid.add(spec, seeds=[grid.nodes[s].address for s in seeds])

        parallel([functools.partial(init, spec, seeds) for spec, seeds in ready])
        pending = [item for item in pending if item not in ready]
    order = [spec.name for spec, _ in specs]
    grid.nodes = {name: grid.nodes[name] for name in order}


def wait_ready(
    grid: LocalGrid,
    name: str,
    timeout: float = _READY_TIMEOUT_S,
) -> dict[str, Any]:
    """Until the node answers ``status``; returns it.

    The node writes ``HOME/run/control.json`` with its pid once its control channel
    listens, so this watches for that file (cheap) before spending a CLI process on
    ``status``: on two cores, polling seven starting nodes with CLI calls slows them all.
    """
    node = grid.nodes[name]
    info_path = node.home / "run" / "control.json"
    deadline = time.monotonic() + timeout
    last_error = "no control.json yet"
    for _ in range(int(timeout / 0.05) + 1):
        proc = node.process
        if proc is None or proc.poll() is not None:
            code = proc.returncode if proc is not None else None
            raise RuntimeError(f"node {name} exited with {code}: {grid.log_tail(name, 5)}")
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            info = {}
        if info.get("pid") == proc.pid:
            status = run_cli(grid, node.home, "status", timeout=30)
            if status.ok and isinstance(status.value, dict):
                return dict(status.value)
            last_error = status.error
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise TimeoutError(f"node {name} not ready after {timeout:g} s: {last_error}")


def start_nodes(
    grid: LocalGrid, names: Sequence[str], *extra: str, timeout: float = _READY_TIMEOUT_S
) -> list[dict[str, Any]]:
    """Start the nodes and wait until each answers ``status``; returns their statuses."""
    for name in names:
        grid.start(name, *extra)
    return parallel(
        [functools.partial(wait_ready, grid, name, timeout=timeout) for name in names],
        workers=len(names),
    )


def _alive_addresses(status: Mapping[str, Any]) -> set[str]:
    return {m["address"] for m in status.get("members", []) if m.get("state") == "alive"}


def wait_views(
    grid: LocalGrid, expect: Mapping[str, tuple[set[str], set[str]]], timeout: float
) -> tuple[float, dict[str, dict[str, Any]]]:
    """Until each observer sees the first set of addresses alive and none of the second.

    Returns the seconds it took and the last status of every observer.

    Raises:
        TimeoutError: naming who does not see whom.
    """
    started = time.monotonic()
    deadline = started + timeout
    names = list(expect)
    missing: list[str] = []
    for _ in range(int(timeout / _POLL_S) + 2):
        results = parallel(
            [
                functools.partial(run_cli, grid, grid.nodes[name].home, "status", timeout=30)
                for name in names
            ]
        )
        statuses: dict[str, dict[str, Any]] = {}
        missing = []
        for name, result in zip(names, results, strict=True):
            if not result.ok or not isinstance(result.value, dict):
                missing.append(f"{name} does not answer ({result.error})")
                continue
            statuses[name] = result.value
            alive = _alive_addresses(result.value)
            want_alive, want_gone = expect[name]
            if not want_alive <= alive:
                missing.append(f"{name} does not see {', '.join(sorted(want_alive - alive))}")
            if want_gone & alive:
                missing.append(f"{name} still sees {', '.join(sorted(want_gone & alive))} alive")
        if not missing:
            return time.monotonic() - started, statuses
        if time.monotonic() > deadline:
            break
        time.sleep(_POLL_S)
    raise TimeoutError(f"not converged within {timeout:g} s: {'; '.join(missing[:4])}")


# --- the network: loopback or namespaces --------------------------------------------------------


@attrs.define
class Network:
    """How nodes are connected, and what that means for the location check and partitions."""

    mode: str  # loopback | netns
    delay: bool = False
    notes: list[str] = attrs.field(factory=list)
    netns: Netns | None = None  # set up by the simulation when mode == "netns"

    @property
    def location_check(self) -> str:
        """What ``location_check = "auto"`` means here."""
        return "enforce" if self.delay else "off"


def choose_network(want_netns: bool) -> Network:
    if not want_netns:
        return Network(
            "loopback",
            notes=[
                "all nodes on 127.0.0.1: round trips are microseconds, so the speed-of-light "
                "location check is off (use --netns as root for real delays)",
                "partitions are emulated: without a firewall nothing can drop packets between "
                "loopback sockets, so the smaller group is stopped (SIGTERM) and restarted on "
                "heal",
            ],
        )
    from .netns import probe_support

    support = probe_support()
    if not support.usable:
        return Network(
            "loopback",
            notes=[
                f"--netns not possible: {support.reason}; running on 127.0.0.1 instead, so the "
                "location check is off and partitions are emulated (the smaller group is "
                "stopped)"
            ],
        )
    notes = [
        "each node in its own network namespace, a veth pair per pair of nodes; "
        "partitions drop packets on the links between the groups (pfifo limit 0)"
    ]
    if support.delay:
        notes.append(
            "links delayed by distance (netem, distance/200 ms each way, so "
            "1 ms of round trip per 100 km): the location check is enforced"
        )
    else:
        notes.append(f"no link delay: {support.reason}; the location check is off")
    return Network("netns", delay=support.delay, notes=notes)


# --- reports -------------------------------------------------------------------------------------


@attrs.define
class Check:
    name: str
    ok: bool = True
    problems: list[str] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    detail: dict[str, Any] = attrs.field(factory=dict)

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "problems": self.problems,
            "notes": self.notes,
            "detail": self.detail,
        }


@attrs.define
class StepReport:
    index: int
    action: str
    name: str
    title: str
    status: str = "skipped"  # passed | failed | skipped
    action_ok: bool | None = None
    seconds: float = 0.0
    check_seconds: float = 0.0
    summary: str = ""
    error: str | None = None
    detail: dict[str, Any] = attrs.field(factory=dict)
    notes: list[str] = attrs.field(factory=list)
    invariants: list[Check] = attrs.field(factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "passed"

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "action": self.action,
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "ok": self.ok,
            "action_ok": self.action_ok,
            "seconds": round(self.seconds, 3),
            "check_seconds": round(self.check_seconds, 3),
            "summary": self.summary,
            "error": self.error,
            "detail": self.detail,
            "notes": self.notes,
            "invariants": [c.to_json() for c in self.invariants],
        }


@attrs.define
class Report:
    scenario: Scenario
    network: Network
    started: float = attrs.field(factory=time.monotonic)
    setup_ok: bool = False
    setup_seconds: float = 0.0
    setup_error: str | None = None
    nodes: list[dict[str, Any]] = attrs.field(factory=list)
    steps: list[StepReport] = attrs.field(factory=list)
    interrupted: bool = False
    dir: str | None = None
    seconds: float = 0.0
    notes: list[str] = attrs.field(factory=list)
    #: ``{"authority": bool, "authority_node": {...} | None, "note": str}``
    grid: dict[str, Any] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        return self.setup_ok and not self.interrupted and all(step.ok for step in self.steps)

    def problems(self) -> list[str]:
        out = [f"setup: {self.setup_error}"] if self.setup_error else []
        for step in self.steps:
            if step.status == "failed":
                if step.action_ok is False:
                    out.append(f"step {step.index} ({step.name}): {step.error}")
                for check in step.invariants:
                    out += [
                        f"step {step.index} ({step.name}) {check.name}: {p}" for p in check.problems
                    ]
        if self.interrupted:
            out.append("interrupted")
        return out

    def to_json(self) -> dict[str, Any]:
        scenario = self.scenario
        return {
            "scenario": {
                "name": scenario.name,
                "description": scenario.description,
                "file": str(scenario.path) if scenario.path else None,
            },
            "ok": self.ok,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
            "dir": self.dir,
            "network": {
                "mode": self.network.mode,
                "delay": self.network.delay,
                "location_check": self.network.location_check,
                "notes": self.network.notes,
            },
            "setup": {
                "ok": self.setup_ok,
                "seconds": round(self.setup_seconds, 3),
                "error": self.setup_error,
            },
            "grid": self.grid,
            "nodes": self.nodes,
            "steps": [step.to_json() for step in self.steps],
            "problems": self.problems(),
            "notes": self.notes,
        }


def render_text(report: Report) -> str:
    scenario = report.scenario
    lines = [
        f"gridsim scenario {scenario.name!r}: {len(scenario.nodes)} nodes, "
        f"{len(scenario.steps)} steps"
    ]
    if scenario.description:
        lines.append(f"  {scenario.description}")
    lines.append(
        f"network: {report.network.mode}"
        f"{' with distance delays' if report.network.delay else ''}, "
        f"location check {report.network.location_check}"
    )
    lines += [f"  - {note}" for note in report.network.notes]
    if report.grid.get("note"):
        lines.append(f"grid: {report.grid['note']}")
    if report.setup_ok:
        lines.append(
            f"setup: {len(report.nodes)} nodes started and converged in "
            f"{report.setup_seconds:.1f} s"
        )
        for node in report.nodes:
            lines.append(
                f"  {node['name']:<12} {node['city'] or '':<18} "
                f"{node['address']:<22} {node['short_id'] or ''}"
            )
    else:
        lines.append(f"setup FAILED after {report.setup_seconds:.1f} s: {report.setup_error}")
    for step in report.steps:
        mark = {"passed": "ok", "failed": "FAILED", "skipped": "skipped"}[step.status]
        lines.append(f"step {step.index:>2} [{mark}] {step.title} ({step.seconds:.1f} s)")
        if step.summary:
            lines.append(f"         {step.summary}")
        if step.error:
            lines.append(f"         error: {step.error}")
        lines += [f"         note: {note}" for note in step.notes]
        if step.invariants:
            parts = [
                f"{c.name} {'ok' if c.ok else 'FAILED'}"
                + (f" ({c.detail['summary']})" if c.detail.get("summary") else "")
                for c in step.invariants
            ]
            lines.append(f"         invariants ({step.check_seconds:.1f} s): " + "; ".join(parts))
            for check in step.invariants:
                lines += [f"           {check.name}: {p}" for p in check.problems]
                lines += [f"           {check.name} note: {n}" for n in check.notes]
    lines += [f"note: {note}" for note in report.notes]
    if report.dir:
        lines.append(f"files kept in {report.dir}")
    verdict = "PASSED" if report.ok else ("INTERRUPTED" if report.interrupted else "FAILED")
    failed = sum(step.status == "failed" for step in report.steps)
    lines.append(
        f"result: {verdict}: {len(report.steps)} steps, {failed} failed, {report.seconds:.1f} s"
    )
    return "\n".join(lines)


# --- the simulation ------------------------------------------------------------------------------


class StepFailed(Exception):
    """A step's action did not do what the scenario expected; the message says how."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, turned into an exception so every ``finally`` runs."""


@attrs.define
class SimNode:
    defn: NodeDef
    state: str = "up"  # up | paused | killed | stopped | cut (emulated partition)
    node_id: str = ""
    short_id: str = ""
    address: str = ""
    run_args: tuple[str, ...] = ()
    pids: list[int] = attrs.field(factory=list)  # every process started for this node
    log_offset: int = 0
    tracebacks: list[str] = attrs.field(factory=list)


@attrs.define
class BackupState:
    name: str
    source: str
    snapshot_id: str
    root: Path
    manifest: Manifest
    placement: dict[str, Any]
    #: Chunks a restore reads (its result's ``chunks``); the rest of the placement's
    #: chunks hold the snapshot record, which a restore does not need.
    data_chunks: int | None = None


def _band(wire: Any) -> Band:
    try:
        return Band.from_wire(wire)
    except ValueError:
        return Band()


class Simulation:
    """One scenario run: the grid, what the steps did to it, and the invariant checks."""

    def __init__(
        self, scenario: Scenario, base: Path, network: Network, progress: Callable[[str], None]
    ) -> None:
        self.scenario = scenario
        self.base = base
        self.network = network
        self.progress = progress
        self.rng = random.Random(scenario.seed)
        self.grid: LocalGrid | None = None
        self.nodes: dict[str, SimNode] = {n.name: SimNode(defn=n) for n in scenario.nodes}
        self.by_id: dict[str, str] = {}
        self.backups: dict[str, BackupState] = {}
        self.damaged: dict[tuple[str, str], str] = {}  # (node id, packet id) -> what
        self.partition: tuple[frozenset[str], frozenset[str]] | None = None
        self.emulated_partition = False
        self._restores = itertools.count(1)
        #: The authority node's processes and log scan (a grid with an authority).
        self.authority = SimNode(
            defn=NodeDef(
                name=AUTHORITY_NAME,
                location="",
                lat=math.nan,
                lon=math.nan,
                city="",
                allocation="0",
                seeds=(),
                labels=(),
                location_check="off",
                settings=(),
            )
        )

    # --- setup and teardown ---------------------------------------------------------------

    def _node_check(self, node: NodeDef) -> str:
        return self.network.location_check if node.location_check == "auto" else node.location_check

    def setup(self) -> dict[str, Any]:
        root = self.base / "grid"
        if self.network.mode == "netns":
            from .netns import Netns, NetnsGrid, plan_netns

            plan = plan_netns(
                [(n.name, n.lat, n.lon) for n in self.scenario.nodes], tag=f"gs{os.getpid()}"
            )
            netns = Netns(plan, delay=self.network.delay)
            self.network.netns = netns
            netns.open()
            # NetnsGrid places scenario nodes in namespaces; the authority has none yet.
            self.grid = NetnsGrid(
                root,
                netns,
                name=self.scenario.name,
                log_level=self.scenario.log_level,
                authority=False,
            )
        else:
            self.grid = LocalGrid(root, name=self.scenario.name, log_level=self.scenario.log_level)
        for node in self.scenario.nodes:
            if node.location_check == "enforce" and not self.network.delay:
                self.network.notes.append(
                    f"{node.name} enforces the location check without real delays: it will "
                    "distrust every peer's distance"
                )
        started = time.monotonic()
        add_nodes(
            self.grid,
            [
                (
                    NodeSpec(
                        name=n.name,
                        location=n.location,
                        allocate=n.allocation,
                        location_check=self._node_check(n),
                        labels=n.labels,
                        extra=n.settings,
                    ),
                    n.seeds,
                )
                for n in self.scenario.nodes
            ],
        )
        initialised = time.monotonic()
        self.progress(
            f"setup: {len(self.nodes)} homes initialised in {initialised - started:.1f} s"
            + (", with the grid's authority" if self.grid.authority_node is not None else "")
        )
        statuses = self._start_processes(list(self.nodes))
        ready = time.monotonic()
        self.progress(f"setup: {len(self.nodes)} nodes answering in {ready - initialised:.1f} s")
        for name, status in zip(self.nodes, statuses, strict=True):
            sim_node = self.nodes[name]
            sim_node.node_id = status["node_id"]
            sim_node.short_id = status.get("short_id", "")
            sim_node.address = self.grid.nodes[name].address
            self.by_id[sim_node.node_id] = name
        seconds = self.converge(_CONVERGE_TIMEOUT_S)
        self.progress(f"setup: converged in {seconds:.1f} s")
        return {
            "init_s": round(initialised - started, 2),
            "start_s": round(ready - initialised, 2),
            "converged_s": round(seconds, 2),
        }

    def close(self) -> None:
        if self.grid is not None:
            self._note_authority_pid()
            self.grid.close()
            self.authority.state = "stopped"
        if self.network.netns is not None:
            self.network.netns.close()

    def _note_authority_pid(self) -> None:
        node = self.grid.authority_node if self.grid is not None else None
        if (
            node is not None
            and node.process is not None
            and node.process.pid not in self.authority.pids
        ):
            self.authority.pids.append(node.process.pid)

    def grid_row(self) -> dict[str, Any]:
        """What kind of grid this is, for the report."""
        node = self.grid.authority_node if self.grid is not None else None
        if node is None:
            why = "--netns" if self.network.mode == "netns" else "no authority"
            return {
                "authority": False,
                "authority_node": None,
                "note": f"open ({why}): any node that can reach a member may join",
            }
        self._note_authority_pid()
        if node.running:
            status = "up"
        else:  # stopped by close(), or it died (the processes check says so)
            status = "stopped" if self.authority.state == "stopped" else "not running"
        return {
            "authority": True,
            "authority_node": {
                "name": AUTHORITY_NAME,
                "address": node.address,
                "home": str(node.home),
                "state": status,
                "pids": list(self.authority.pids),
            },
            "note": f"with an authority at {node.address}: every node subscribed with a "
            "one-time invite and holds a certificate (the authority stores no packets)",
        }

    def node_rows(self) -> list[dict[str, Any]]:
        rows = []
        for name, node in self.nodes.items():
            proc = self.grid.nodes.get(name) if self.grid else None
            rows.append(
                {
                    "name": name,
                    "city": node.defn.city or None,
                    "lat": node.defn.lat,
                    "lon": node.defn.lon,
                    "address": node.address or (proc.address if proc else None),
                    "node_id": node.node_id or None,
                    "short_id": node.short_id or None,
                    "allocation": node.defn.allocation,
                    "location_check": self._node_check(node.defn),
                    "labels": list(node.defn.labels),
                    "state": node.state,
                    "pids": list(node.pids),
                }
            )
        return rows

    # --- helpers --------------------------------------------------------------------------

    @property
    def g(self) -> LocalGrid:
        assert self.grid is not None
        return self.grid

    def cli(self, name: str, *args: str, timeout: float = _CLI_TIMEOUT_S) -> CliResult:
        return run_cli(self.g, self.g.nodes[name].home, *args, timeout=timeout)

    def separated(self, a: str, b: str) -> bool:
        if self.partition is None or self.emulated_partition:
            return False
        left, right = self.partition
        return (a in left and b in right) or (a in right and b in left)

    def up(self) -> list[str]:
        return [name for name, node in self.nodes.items() if node.state == "up"]

    def converge(
        self, timeout: float, *, settled: bool = False, observers: Sequence[str] = ()
    ) -> float:
        """Until every running node sees the nodes it can reach alive (and, settled, no others).

        ``observers`` limits whose view must get there (default: every running node).
        """
        up = self.up()
        expect: dict[str, tuple[set[str], set[str]]] = {}
        for name in up:
            if observers and name not in observers:
                continue
            reach = {self.nodes[o].address for o in up if o != name and not self.separated(name, o)}
            others = {n.address for o, n in self.nodes.items() if o != name} - reach
            expect[name] = (reach, others if settled else set())
        seconds, _ = wait_views(self.g, expect, timeout)
        return seconds

    def select(self, step: Step, *, states: Sequence[str]) -> list[str]:
        if step.node:
            chosen = [step.node]
        elif step.nodes:
            chosen = list(step.nodes)
        else:
            assert step.holders_of is not None
            backup = self.backups.get(step.holders_of)
            if backup is None:
                raise StepFailed(f"backup {step.holders_of} made no snapshot")
            counts = self.holder_counts(backup)
            shares = self.share_sums(backup)
            # Most packets first; among equals, the lowest shares: a restore asks for
            # shares in order, so those holders are the ones it meets first.
            candidates = sorted(
                (
                    name
                    for name in counts
                    if name != backup.source and self.nodes[name].state in states
                ),
                key=lambda n: (-counts[n], shares.get(n, 0), n),
            )
            if len(candidates) < step.count:
                raise StepFailed(
                    f"only {len(candidates)} node(s) in state "
                    f"{'/'.join(states)} hold packets of {backup.name}"
                )
            chosen = candidates[: step.count]
        for name in chosen:
            if self.nodes[name].state not in states:
                raise StepFailed(f"{name} is {self.nodes[name].state}, not {' or '.join(states)}")
        return chosen

    def holder_counts(self, backup: BackupState) -> dict[str, int]:
        counts: dict[str, int] = {}
        for chunk in backup.placement.get("chunks", []):
            for packet in chunk["packets"]:
                name = self.by_id.get(packet["target"])
                if name is not None:
                    counts[name] = counts.get(name, 0) + 1
        return counts

    def share_sums(self, backup: BackupState) -> dict[str, int]:
        sums: dict[str, int] = {}
        for chunk in backup.placement.get("chunks", []):
            for packet in chunk["packets"]:
                name = self.by_id.get(packet["target"])
                if name is not None:
                    sums[name] = sums.get(name, 0) + int(packet.get("share", 0))
        return sums

    def chunk_survivors(self, backup: BackupState, chunk: dict[str, Any]) -> int:
        """Packets of one chunk (from a placement report) a restore on the source can get."""
        alive = 0
        for packet in chunk["packets"]:
            name = self.by_id.get(packet["target"])
            if (
                name is not None
                and self.nodes[name].state == "up"
                and not self.separated(backup.source, name)
                and (packet["target"], packet["packet_id"]) not in self.damaged
            ):
                alive += 1
        return alive

    def survival(self, backup: BackupState) -> dict[str, Any]:
        """The model: how many packets of each chunk a restore on the source can still get."""
        per_chunk: list[tuple[int, int, int]] = [  # (survivors, k, n)
            (self.chunk_survivors(backup, chunk), int(chunk["k"]), int(chunk["n"]))
            for chunk in backup.placement.get("chunks", [])
        ]
        lost = sum(alive < k for alive, k, _ in per_chunk)
        healthy = sum(alive == n for alive, _, n in per_chunk)
        # Placement does not say which chunks hold the snapshot record (needed to
        # recover, not to restore), only how many there are: more lost chunks than
        # that, and some data chunk is lost for sure.  (A restore counts a chunk that
        # recurs, non-adjacent, in the tree twice; generated data never does that.)
        spare = len(per_chunk) - backup.data_chunks if backup.data_chunks is not None else 0
        record_chunks = spare if spare > 0 else None
        if lost == 0:
            restore = "ok"
        elif record_chunks is not None and lost > record_chunks:
            restore = "fail"
        else:
            restore = "either"
        return {
            "chunks": len(per_chunk),
            "record_chunks": record_chunks,
            "lost": lost,
            "healthy": healthy,
            "degraded": len(per_chunk) - lost - healthy,
            "min_survivors": min((a for a, _, _ in per_chunk), default=None),
            "min_spare": min((a - k for a, k, _ in per_chunk), default=None),
            "all_chunks_ok": lost == 0,
            "restore": restore,
        }

    def packet_path(self, name: str, packet_id: str) -> Path:
        return (
            self.g.nodes[name].home
            / "storage"
            / "packets"
            / packet_id[:2]
            / packet_id[2:4]
            / packet_id
        )

    def signal_name(self, name: str, sig: signal.Signals) -> None:
        proc = self.g.nodes[name].process
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    # --- steps ----------------------------------------------------------------------------

    def run_step(self, step: Step, report: StepReport) -> None:
        handler = getattr(self, f"step_{step.action}")
        handler(step, report)

    def step_backup(self, step: Step, report: StepReport) -> None:
        assert step.node is not None and step.data is not None
        self._need_up(step.node)
        if step.data.path is not None:
            root = step.data.path
            if not root.is_dir():
                raise StepFailed(f"{root} is not a directory")
        else:
            root = self.base / "data" / step.name
            generate_data(root, step.data)
        manifest = build_manifest(root)
        files = sum(1 for v in manifest.values() if v[0] == "file")
        size = sum(v[1] for v in manifest.values() if v[0] == "file")
        args = ["backup", str(root)]
        for flag, value in (
            ("--redundancy", step.redundancy),
            ("--backup-proximity", step.backup_proximity),
            ("--packet-proximity", step.packet_proximity),
        ):
            if value is not None:
                args += [flag, value]
        for label in step.distinct:
            args += ["--distinct", label]
        result = self.cli(step.node, *args)
        report.detail.update(
            {
                "source": step.node,
                "root": str(root),
                "files": files,
                "bytes": size,
                "expect": step.expect,
                "outcome": "ok" if result.ok else "fail",
            }
        )
        if not result.ok:
            report.detail["error"] = result.error
            report.summary = f"backup failed: {result.error}"
            if step.expect == "ok":
                raise StepFailed(f"backup failed: {result.error}")
            return
        value = result.value
        earlier = {
            c["chunk_id"] for b in self.backups.values() for c in b.placement.get("chunks", [])
        }
        placement = self.cli(step.node, "placement", value["snapshot_id"])
        if not placement.ok:
            raise StepFailed(f"placement of {value['snapshot_id']} failed: {placement.error}")
        backup = BackupState(
            name=step.name,
            source=step.node,
            snapshot_id=value["snapshot_id"],
            root=root,
            manifest=manifest,
            placement=placement.value,
        )
        self.backups[step.name] = backup
        holders = self.holder_counts(backup)
        report.detail.update(
            {
                "snapshot_id": value["snapshot_id"],
                "bytes_uploaded": value.get("bytes_uploaded"),
                "packets_uploaded": value.get("packets_uploaded"),
                "packets_replaced": value.get("packets_replaced"),
                "node_seconds": value.get("seconds"),
                "chunks": len(placement.value["chunks"]),
                "holders": holders,
            }
        )
        report.summary = (
            f"snapshot {value['snapshot_id']}: {files} files, {size / 1e6:.2f} MB, "
            f"{len(placement.value['chunks'])} chunks, "
            f"{value.get('packets_uploaded')} packets on "
            + ", ".join(f"{n} {c}" for n, c in sorted(holders.items()))
        )
        if step.expect == "fail":
            raise StepFailed("the backup succeeded, but the scenario expected it to fail")
        # Deduplicated chunks keep the packets placed by an earlier backup.
        fresh: dict[str, int] = {}
        for chunk in placement.value["chunks"]:
            if chunk["chunk_id"] not in earlier:
                for packet in chunk["packets"]:
                    name = self.by_id.get(packet["target"], packet["target"])
                    fresh[name] = fresh.get(name, 0) + 1
        report.detail["new_packets_on"] = fresh
        wrong = {name: fresh[name] for name in step.not_on if fresh.get(name)}
        if wrong:
            raise StepFailed(f"new packets went to nodes the scenario excludes: {wrong}")

    def _need_up(self, name: str) -> None:
        if self.nodes[name].state != "up":
            raise StepFailed(f"{name} is {self.nodes[name].state}, not up")

    def restore_and_compare(self, backup: BackupState) -> dict[str, Any]:
        """Restore on the source into a fresh directory; compare; keep it only if different."""
        out = self.base / "restores" / f"{backup.name}-{next(self._restores)}"
        result = self.cli(backup.source, "restore", backup.snapshot_id, "--to", str(out))
        outcome: dict[str, Any] = {
            "ok": result.ok,
            "seconds": round(result.seconds, 3),
            "clean_failure": result.failed_cleanly,
        }
        if result.ok:
            differences = compare_manifest(backup.manifest, build_manifest(out / backup.root.name))
            outcome["differences"] = differences
            value = result.value if isinstance(result.value, dict) else {}
            outcome["node_seconds"] = value.get("seconds")
            if isinstance(value.get("chunks"), int):
                backup.data_chunks = value["chunks"]
            if differences:
                outcome["kept"] = str(out)
                return outcome
        else:
            outcome["error"] = result.error
        shutil.rmtree(out, ignore_errors=True)
        return outcome

    def step_restore(self, step: Step, report: StepReport) -> None:
        assert step.backup is not None
        backup = self.backups.get(step.backup)
        if backup is None:
            raise StepFailed(f"backup {step.backup} made no snapshot")
        self._need_up(backup.source)
        model = self.survival(backup)
        predicted = model["restore"]
        expect = predicted if step.expect == "auto" else step.expect
        if predicted == "either":
            report.notes.append(
                f"{model['lost']} chunk(s) have fewer than k surviving "
                "packets, but they may all be snapshot-record chunks, which a "
                "restore does not read: either outcome is possible"
            )
        elif expect != predicted:
            report.notes.append(
                f"the survival model predicts {predicted}, the scenario expects {expect}"
            )
        outcome = self.restore_and_compare(backup)
        report.detail.update({"expect": expect, "predicted": predicted, "model": model, **outcome})
        took = outcome["seconds"]
        if outcome["ok"]:
            if outcome["differences"]:
                raise StepFailed("restored data differs: " + "; ".join(outcome["differences"]))
            report.summary = f"restored byte-equal in {took:.1f} s (model: {predicted})"
            if expect == "fail":
                raise StepFailed("the restore succeeded, but the scenario expected it to fail")
        else:
            report.summary = f"restore failed in {took:.1f} s: {outcome['error']}"
            if expect == "ok":
                raise StepFailed(f"restore failed: {outcome['error']}")
            if not outcome["clean_failure"]:
                raise StepFailed("restore failed, but not cleanly (no one-line error)")
        if step.max_seconds is not None and took > step.max_seconds:
            raise StepFailed(f"restore took {took:.1f} s, more than {step.max_seconds:g} s")

    def backups_to_check(
        self, step: Step, report: StepReport, problems: list[str], verb: str
    ) -> Iterator[tuple[str, BackupState]]:
        """The step's backup (or every one) whose source is up to run ``verb`` on."""
        for name in [step.backup] if step.backup else list(self.backups):
            backup = self.backups.get(name)
            if backup is None:
                problems.append(f"backup {name} made no snapshot")
            elif self.nodes[backup.source].state != "up":
                report.notes.append(f"{name}: source {backup.source} is not up; not {verb}")
            else:
                yield name, backup

    def step_verify(self, step: Step, report: StepReport) -> None:
        results: dict[str, Any] = {}
        problems: list[str] = []
        for name, backup in self.backups_to_check(step, report, problems, "verified"):
            model = self.survival(backup)
            result = self.cli(backup.source, "verify", backup.snapshot_id)
            value = result.value if isinstance(result.value, dict) else {}
            if "ok" not in value:
                problems.append(f"{name}: verify gave no result: {result.error}")
                continue
            got = {
                "ok": value["ok"],
                "lost": value.get("chunks_lost"),
                "healthy": value.get("chunks_healthy"),
                "degraded": value.get("chunks_degraded"),
            }
            want = {
                "ok": model["all_chunks_ok"],
                "lost": model["lost"],
                "healthy": model["healthy"],
                "degraded": model["degraded"],
            }
            results[name] = {"verify": got, "model": want}
            if got != want:
                problems.append(f"{name}: verify says {got}, the model {want}")
        report.detail["backups"] = results
        report.summary = "; ".join(
            f"{n}: ok={r['verify']['ok']} healthy={r['verify']['healthy']} "
            f"degraded={r['verify']['degraded']} lost={r['verify']['lost']}"
            for n, r in results.items()
        )
        if problems:
            raise StepFailed("; ".join(problems))

    def step_repair(self, step: Step, report: StepReport) -> None:
        problems: list[str] = []
        results: dict[str, Any] = {}
        for name, backup in self.backups_to_check(step, report, problems, "repaired"):
            model = self.survival(backup)
            result = self.cli(backup.source, "repair", backup.snapshot_id)
            value = result.value if isinstance(result.value, dict) else {}
            if "chunks_lost" not in value:
                problems.append(f"{name}: repair gave no result: {result.error}")
                continue
            if value["chunks_unrepaired"] == 0:
                # Every chunk that still had k packets now has n: a damaged copy was
                # rewritten (on its holder, when that answered) or moved elsewhere.
                for chunk in backup.placement.get("chunks", []):
                    if self.chunk_survivors(backup, chunk) >= int(chunk["k"]):
                        for packet in chunk["packets"]:
                            self.damaged.pop((packet["target"], packet["packet_id"]), None)
            placement = self.cli(backup.source, "placement", backup.snapshot_id, timeout=60)
            if placement.ok and isinstance(placement.value, dict):
                backup.placement = placement.value
            after = self.survival(backup)
            results[name] = {
                "repaired": value["chunks_repaired"],
                "packets_rebuilt": value["packets_rebuilt"],
                "lost": value["chunks_lost"],
                "unrepaired": value["chunks_unrepaired"],
                "model_lost_before": model["lost"],
                "degraded_after": after["degraded"],
            }
            if value["chunks_lost"] != model["lost"]:
                problems.append(
                    f"{name}: repair found {value['chunks_lost']} chunks lost, "
                    f"the model {model['lost']}"
                )
            up_targets = sum(
                1 for n, node in self.nodes.items() if node.state == "up" and n != backup.source
            )
            widest = max((int(c["n"]) for c in backup.placement.get("chunks", [])), default=0)
            if model["lost"] == 0 and up_targets >= widest and after["degraded"]:
                problems.append(
                    f"{name}: {after['degraded']} chunks still short of n packets after "
                    f"repair with {up_targets} nodes up"
                )
        report.detail["backups"] = results
        report.summary = "; ".join(
            f"{n}: {r['repaired']} chunks repaired ({r['packets_rebuilt']} packets), "
            f"{r['lost']} lost"
            for n, r in results.items()
        )
        if problems:
            raise StepFailed("; ".join(problems))

    def step_kill(self, step: Step, report: StepReport) -> None:
        chosen = self.select(step, states=("up", "paused"))
        for name in chosen:
            self.g.kill(name)
            self.nodes[name].state = "killed"
        report.detail["nodes"] = chosen
        report.summary = f"killed {', '.join(chosen)} (SIGKILL)"

    def step_stop(self, step: Step, report: StepReport) -> None:
        chosen = self.select(step, states=("up", "paused"))
        codes = self._stop(chosen, "stopped")
        report.detail.update({"nodes": chosen, "exit_codes": codes})
        report.summary = "stopped " + ", ".join(f"{n} (exit {c})" for n, c in codes.items())
        bad = {n: c for n, c in codes.items() if c != 0}
        if bad:
            raise StepFailed(f"SIGTERM did not stop cleanly: {bad}")

    def _stop(self, names: Sequence[str], state: str) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for name in names:
            self.signal_name(name, signal.SIGCONT)
            codes[name] = self.g.stop(name, timeout=10)
            self.nodes[name].state = state
        return codes

    def step_pause(self, step: Step, report: StepReport) -> None:
        chosen = self.select(step, states=("up",))
        for name in chosen:
            self.g.pause(name)
            self.nodes[name].state = "paused"
        report.detail["nodes"] = chosen
        report.summary = f"paused {', '.join(chosen)} (SIGSTOP)"

    def step_resume(self, step: Step, report: StepReport) -> None:
        chosen = self.select(step, states=("paused",))
        for name in chosen:
            self.g.resume(name)
            self.nodes[name].state = "up"
        report.detail["nodes"] = chosen
        report.summary = f"resumed {', '.join(chosen)} (SIGCONT)"

    def _start_processes(
        self,
        names: Sequence[str],
        extra: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        try:
            return start_nodes(self.g, names, *extra)
        finally:
            for name in names:
                proc = self.g.nodes[name].process
                if proc is not None and proc.pid not in self.nodes[name].pids:
                    self.nodes[name].pids.append(proc.pid)

    def _start(self, names: Sequence[str], extra: Sequence[str] = ()) -> float:
        for name in names:
            self.nodes[name].run_args = tuple(extra)
        self._start_processes(names, extra)
        for name in names:
            self.nodes[name].state = "up"
        return self.converge(_CONVERGE_TIMEOUT_S)

    def step_restart(self, step: Step, report: StepReport) -> None:
        chosen = self.select(step, states=("killed", "stopped"))
        extra = ("--allocate", step.allocation) if step.allocation else ()
        seconds = self._start(chosen, extra)
        report.detail.update(
            {"nodes": chosen, "converged_s": round(seconds, 2), "run_args": list(extra)}
        )
        report.summary = f"restarted {', '.join(chosen)}; converged in {seconds:.1f} s"

    def step_partition(self, step: Step, report: StepReport) -> None:
        left, right = (frozenset(g) for g in step.groups)
        self.partition = (left, right)
        if self.network.netns is not None:
            self.network.netns.cut(left, right)
            self.emulated_partition = False
            report.detail.update({"emulated": False, "groups": [sorted(left), sorted(right)]})
            report.summary = (
                f"links between {','.join(sorted(left))} and "
                f"{','.join(sorted(right))} drop every packet"
            )
            return
        self.emulated_partition = True
        minority = right if len(right) <= len(left) else left
        stopped = [n for n in sorted(minority) if self.nodes[n].state == "up"]
        codes = self._stop(stopped, "cut")
        report.detail.update(
            {
                "emulated": True,
                "groups": [sorted(left), sorted(right)],
                "stopped": stopped,
                "exit_codes": codes,
            }
        )
        report.notes.append(
            "emulated partition (loopback, no packet filter): the smaller "
            f"group {', '.join(sorted(minority))} is stopped until heal, so "
            "it cannot act on its own side meanwhile"
        )
        report.summary = f"emulated: stopped {', '.join(stopped) or 'nothing'}"

    def step_heal(self, step: Step, report: StepReport) -> None:
        if self.network.netns is not None and not self.emulated_partition:
            self.network.netns.mend()
            self.partition = None
            seconds = self.converge(_CONVERGE_TIMEOUT_S)
            report.summary = f"links restored; converged in {seconds:.1f} s"
        else:
            cut = [n for n, node in self.nodes.items() if node.state == "cut"]
            self.partition = None
            self.emulated_partition = False
            seconds = self._start(cut, ()) if cut else self.converge(_CONVERGE_TIMEOUT_S)
            report.summary = (
                f"restarted {', '.join(cut) or 'nothing'}; converged in {seconds:.1f} s"
            )
        report.detail["converged_s"] = round(seconds, 2)

    def _packets_on(self, name: str, backup: str | None) -> list[str]:
        node_id = self.nodes[name].node_id
        chosen = [self.backups[backup]] if backup else list(self.backups.values())
        ids = {
            p["packet_id"]
            for b in chosen
            for c in b.placement.get("chunks", [])
            for p in c["packets"]
            if p["target"] == node_id
        }
        return sorted(
            i
            for i in ids
            if (node_id, i) not in self.damaged and self.packet_path(name, i).is_file()
        )

    def _damage(self, step: Step, report: StepReport, what: str) -> None:
        assert step.node is not None
        if step.backup is not None and step.backup not in self.backups:
            raise StepFailed(f"backup {step.backup} made no snapshot")
        candidates = self._packets_on(step.node, step.backup)
        if len(candidates) < step.packets:
            raise StepFailed(
                f"{step.node} holds only {len(candidates)} undamaged packet(s) "
                f"of {step.backup or 'the scenario backups'}"
            )
        chosen = sorted(self.rng.sample(candidates, step.packets))
        node_id = self.nodes[step.node].node_id
        for packet_id in chosen:
            path = self.packet_path(step.node, packet_id)
            if what == "corrupted":
                with path.open("r+b") as fh:
                    size = path.stat().st_size
                    offset = max(0, size // 2 - 8)
                    fh.seek(offset)
                    original = fh.read(16)
                    fh.seek(offset)
                    fh.write(bytes(b ^ 0xFF for b in original))
            else:
                path.unlink()
            self.damaged[(node_id, packet_id)] = what
        report.detail.update({"node": step.node, "packets": chosen})
        report.summary = f"{what} {len(chosen)} packet file(s) on {step.node}"

    def step_corrupt(self, step: Step, report: StepReport) -> None:
        self._damage(step, report, "corrupted")

    def step_delete(self, step: Step, report: StepReport) -> None:
        self._damage(step, report, "deleted")

    def step_fill(self, step: Step, report: StepReport) -> None:
        assert step.node is not None
        self._need_up(step.node)
        status = self.cli(step.node, "status", timeout=30)
        if not status.ok:
            raise StepFailed(f"status of {step.node} failed: {status.error}")
        used = int(status.value["storage"]["used_bytes"])
        allocation = used + step.free
        codes = self._stop([step.node], "stopped")
        if codes[step.node] != 0:
            raise StepFailed(f"{step.node} did not stop cleanly: exit {codes[step.node]}")
        seconds = self._start([step.node], ("--allocate", str(allocation)))
        address = self.nodes[step.node].address
        heard = time.monotonic()
        waited = self._wait_free(address, step.free, _CONVERGE_TIMEOUT_S)
        report.detail.update(
            {
                "used_bytes": used,
                "allocation_bytes": allocation,
                "converged_s": round(seconds, 2),
                "heard_s": round(time.monotonic() - heard, 2),
            }
        )
        report.summary = (
            f"restarted {step.node} with --allocate {allocation} (stores {used} "
            f"bytes); every node heard in {waited:.1f} s"
        )

    def _wait_free(self, address: str, free: int, timeout: float) -> float:
        """Until every running node's view gives ``address`` at most ``free`` free bytes."""
        started = time.monotonic()
        names = [n for n in self.up() if self.nodes[n].address != address]
        for _ in range(int(timeout / _POLL_S) + 2):
            results = parallel(
                [functools.partial(self.cli, n, "status", timeout=30) for n in names]
            )
            if all(
                r.ok
                and any(
                    m["address"] == address and (m.get("free_bytes") or 0) <= free
                    for m in r.value.get("members", [])
                )
                for r in results
            ):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                break
            time.sleep(_POLL_S)
        raise StepFailed(f"the grid did not hear within {timeout:g} s that {address} is full")

    def step_wait(self, step: Step, report: StepReport) -> None:
        if step.until is None:
            time.sleep(step.seconds or 0)
            report.summary = f"slept {step.seconds or 0:g} s"
            return
        seconds = self.converge(
            step.seconds or 60.0, settled=step.until == "settled", observers=step.nodes
        )
        report.detail[f"{step.until}_s"] = round(seconds, 2)
        report.summary = f"{step.until} in {seconds:.1f} s"

    # --- invariants -----------------------------------------------------------------------

    def check_invariants(self) -> list[Check]:
        wanted = self.scenario.invariants
        checks: list[Check] = []
        if "restore" in wanted or "rules" in wanted:
            checks += self._check_snapshots(restore="restore" in wanted, rules="rules" in wanted)
        if "processes" in wanted:
            checks.append(self._check_processes())
        return checks

    def _check_snapshots(self, *, restore: bool, rules: bool) -> list[Check]:
        restore_check, rules_check = Check("restore"), Check("rules")
        by_source: dict[str, list[BackupState]] = {}
        for backup in self.backups.values():
            if self.nodes[backup.source].state == "up":
                by_source.setdefault(backup.source, []).append(backup)
            else:
                note = (
                    f"{backup.name}: source {backup.source} is "
                    f"{self.nodes[backup.source].state}; not checked"
                )
                restore_check.notes.append(note)
                rules_check.notes.append(note)

        def snapshots_of(source: str) -> CliResult:
            return self.cli(source, "snapshots", timeout=60)

        def per_backup(backup: BackupState) -> tuple[CliResult, dict[str, Any] | None]:
            placement = self.cli(backup.source, "placement", backup.snapshot_id, timeout=60)
            if placement.ok and isinstance(placement.value, dict):
                backup.placement = placement.value
            outcome = self.restore_and_compare(backup) if restore else None
            return placement, outcome

        backups = [b for group in by_source.values() for b in group]
        sources = list(by_source)
        tasks: list[Callable[[], Any]] = [functools.partial(snapshots_of, s) for s in sources]
        tasks += [functools.partial(per_backup, b) for b in backups]
        results = parallel(tasks)
        listings: dict[str, CliResult] = dict(zip(sources, results[: len(sources)], strict=True))
        checked: list[tuple[CliResult, dict[str, Any] | None]] = results[len(sources) :]
        restored = good_rules = 0
        for backup, (placement, outcome) in zip(backups, checked, strict=True):
            listing = listings[backup.source]
            rows = listing.value if listing.ok and isinstance(listing.value, list) else []
            row = next((r for r in rows if r.get("snapshot_id") == backup.snapshot_id), None)
            if row is None or row.get("complete") is not True:
                restore_check.fail(
                    f"{backup.name}: snapshot {backup.snapshot_id} is not "
                    f"listed complete on {backup.source}"
                )
            if not placement.ok:
                rules_check.fail(f"{backup.name}: placement failed: {placement.error}")
            elif rules:
                problems = self.rule_problems(backup)
                for problem in problems[:5]:
                    rules_check.fail(f"{backup.name}: {problem}")
                if len(problems) > 5:
                    rules_check.fail(f"{backup.name}: ... and {len(problems) - 5} more")
                good_rules += not problems
            if outcome is not None:
                restored += self._judge_restore(backup, outcome, restore_check)
        restore_check.detail["summary"] = f"{restored}/{len(backups)} as expected"
        rules_check.detail["summary"] = f"{good_rules}/{len(backups)} snapshots"
        out = []
        if restore:
            out.append(restore_check)
        if rules:
            out.append(rules_check)
        return out

    def _judge_restore(self, backup: BackupState, outcome: dict[str, Any], check: Check) -> bool:
        model = self.survival(backup)
        check.detail[backup.name] = {"model": model, **outcome}
        if outcome["ok"]:
            if outcome["differences"]:
                check.fail(
                    f"{backup.name}: restored data differs: " + "; ".join(outcome["differences"])
                )
                return False
            if model["restore"] == "fail":
                check.fail(
                    f"{backup.name}: restored although {model['lost']} chunk(s) have "
                    f"fewer than k surviving packets, more than the "
                    f"{model['record_chunks']} snapshot-record chunk(s)"
                )
                return False
            if model["restore"] == "either":
                check.notes.append(
                    f"{backup.name}: restored byte-equal with {model['lost']} chunk(s) below "
                    "k surviving packets: they must be snapshot-record chunks, which a "
                    "restore does not read"
                )
            return True
        if model["restore"] == "ok":
            check.fail(
                f"{backup.name}: restore failed although every chunk has at least k "
                f"surviving packets (fewest spare: {model['min_spare']}): "
                f"{outcome['error']}"
            )
            return False
        if not outcome["clean_failure"]:
            check.fail(
                f"{backup.name}: restore failed, as the model predicts, but not cleanly:"
                f" {outcome['error']}"
            )
            return False
        return True

    def rule_problems(self, backup: BackupState) -> list[str]:
        """Rule breaches in ``backup``'s placement, distances recomputed from our locations."""
        placement = backup.placement
        rules = placement.get("rules") or {}
        near = _band(rules.get("backup_proximity"))
        pair = _band(rules.get("packet_proximity"))
        distinct = list(rules.get("distinct") or [])
        source = self.nodes[backup.source].defn
        source_id = self.nodes[backup.source].node_id
        problems: list[str] = []
        for chunk in placement.get("chunks", []):
            cid = chunk["chunk_id"][:12]
            packets = chunk["packets"]
            targets = [p["target"] for p in packets]
            if len(packets) != int(chunk["n"]):
                problems.append(f"chunk {cid}: {len(packets)} packets, n is {chunk['n']}")
            if len(set(targets)) != len(targets):
                problems.append(f"chunk {cid}: two packets on one target")
            if source_id in targets:
                problems.append(f"chunk {cid}: a packet on the source itself")
            defs: list[NodeDef] = []
            for packet in packets:
                name = self.by_id.get(packet["target"])
                if name is None:
                    problems.append(
                        f"chunk {cid}: target {packet['target'][:10]} is not a scenario node"
                    )
                    continue
                target = self.nodes[name].defn
                defs.append(target)
                km = haversine_km(source.lat, source.lon, target.lat, target.lon)
                if not near.contains(km):
                    problems.append(
                        f"chunk {cid}: {name} is {km:.0f} km from the source, "
                        f"outside backup proximity {near.describe()}"
                    )
                reported = packet.get("distance_km")
                if reported is not None and abs(reported - km) > 1 + km * 1e-3:
                    problems.append(
                        f"chunk {cid}: placement says {name} is {reported} km "
                        f"away, it is {km:.1f} km"
                    )
            for a, b in itertools.combinations(defs, 2):
                km = haversine_km(a.lat, a.lon, b.lat, b.lon)
                if not pair.contains(km):
                    problems.append(
                        f"chunk {cid}: {a.name} and {b.name} are {km:.0f} km "
                        f"apart, outside packet proximity {pair.describe()}"
                    )
            for label in distinct:
                values = [d.label(label) for d in defs]
                if None in values or len(set(values)) != len(values):
                    problems.append(
                        f"chunk {cid}: targets do not have distinct {label!r} labels: {values}"
                    )
        return problems

    def _check_processes(self) -> Check:
        check = Check("processes")
        authority = self.g.authority_node
        if authority is not None:
            self._note_authority_pid()
            if not authority.running:
                code = authority.process.returncode if authority.process is not None else None
                check.fail(
                    f"the authority node is not running (exit code {code}): "
                    f"{self.g.log_tail(AUTHORITY_NAME, 3)}"
                )
            self._scan_log(AUTHORITY_NAME, self.authority)
            if self.authority.tracebacks:
                check.fail(f"the authority's log has a Traceback: {self.authority.tracebacks[0]}")
        running = 0
        for name, node in self.nodes.items():
            proc = self.g.nodes[name]
            alive = proc.running
            if node.state in ("up", "paused"):
                if alive:
                    running += 1
                else:
                    code = proc.process.returncode if proc.process is not None else None
                    check.fail(
                        f"{name} is not running (exit code {code}); nothing stopped it"
                        f": {self.g.log_tail(name, 3)}"
                    )
                    node.state = "crashed"
            elif alive:
                check.fail(f"{name} should be {node.state} but is running")
            self._scan_log(name, node)
            if node.tracebacks:
                check.fail(f"{name}'s log has a Traceback: {node.tracebacks[0]}")
        check.detail["summary"] = f"{running} running"
        return check

    def _scan_log(self, name: str, node: SimNode) -> None:
        """Read the log from where the last scan stopped; remember Traceback lines."""
        path = self.g.node(name).home / "node.log"
        if not path.exists():
            return
        with path.open("rb") as fh:
            fh.seek(node.log_offset)
            data = fh.read()
        # Only whole lines: a line being written now is read next time.
        end = data.rfind(b"\n") + 1
        node.log_offset += end
        for line in data[:end].decode(errors="replace").splitlines():
            if "Traceback" in line and len(node.tracebacks) < 5:
                node.tracebacks.append(line.strip()[:300])


# --- running a scenario ------------------------------------------------------------------------


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Interrupted`, so cleanup runs as for Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Cleanup is bounded; a second Ctrl-C must not leave nodes behind."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_scenario(
    scenario: Scenario, *, base: Path, network: Network, progress: Callable[[str], None]
) -> Report:
    """Run every step, checking invariants after each; always stops what it started."""
    report = Report(scenario=scenario, network=network)
    report.steps = [
        StepReport(index=step.index, action=step.action, name=step.name, title=step.title())
        for step in scenario.steps
    ]
    sim = Simulation(scenario, base, network, progress)
    deadline = report.started + scenario.timeout_s
    try:
        with _signals_raise():
            try:
                progress(f"setup: {len(scenario.nodes)} nodes ({network.mode})")
                sim.setup()
                report.setup_ok = True
            except Exception as exc:
                report.setup_error = f"{type(exc).__name__}: {exc}"
            except KeyboardInterrupt:
                report.setup_error = "interrupted"
                raise
            finally:
                report.setup_seconds = time.monotonic() - report.started
                report.nodes = sim.node_rows()
                report.grid = sim.grid_row()
            aborted: str | None = None if report.setup_ok else "setup failed"
            for step, entry in zip(scenario.steps, report.steps, strict=True):
                if aborted is None and time.monotonic() > deadline:
                    aborted = f"scenario timeout ({scenario.timeout_s:g} s) reached"
                if aborted is not None:
                    entry.error = f"skipped: {aborted}"
                    continue
                progress(f"step {step.index}/{len(scenario.steps)}: {entry.title}")
                started = time.monotonic()
                entry.error = "interrupted while running"  # unless it ends normally
                try:
                    sim.run_step(step, entry)
                    entry.action_ok, entry.error = True, None
                except StepFailed as exc:
                    entry.action_ok, entry.error = False, str(exc)
                except Exception as exc:
                    entry.action_ok, entry.error = False, f"{type(exc).__name__}: {exc}"
                    aborted = f"step {step.index} raised {type(exc).__name__}"
                entry.seconds = time.monotonic() - started
                if step.check and aborted is None:
                    checked = time.monotonic()
                    try:
                        entry.invariants = sim.check_invariants()
                    except Exception as exc:
                        failed = Check("checks")
                        failed.fail(f"{type(exc).__name__}: {exc}")
                        entry.invariants = [failed]
                    entry.check_seconds = time.monotonic() - checked
                entry.status = (
                    "passed"
                    if entry.action_ok and all(c.ok for c in entry.invariants)
                    else "failed"
                )
                if entry.status == "failed":
                    progress(f"  step {step.index} FAILED: " + "; ".join(report.problems()[-3:]))
    except KeyboardInterrupt:
        report.interrupted = True
        for entry in report.steps:
            if entry.status != "skipped":
                continue
            if entry.action_ok:
                entry.error = "interrupted during the invariant checks"
            elif entry.error is None:
                entry.error = "interrupted"
    finally:
        report.nodes = sim.node_rows()
        report.grid = sim.grid_row()
        with _signals_ignored():
            progress("stopping every node")
            sim.close()
        report.grid = sim.grid_row()  # every pid, the authority's state as it was
        report.seconds = time.monotonic() - report.started
    return report


def cmd_run(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(Path(args.scenario))
    except ScenarioError as exc:
        print(f"gridsim: error: {exc}", file=sys.stderr)
        return 2
    if args.dir:
        base = Path(args.dir).absolute()
        if base.exists() and any(base.iterdir()):
            print(
                f"gridsim: error: {base} is not empty; give a new or empty --dir", file=sys.stderr
            )
            return 2
        base.mkdir(parents=True, exist_ok=True)
    else:
        base = Path(tempfile.mkdtemp(prefix=f"gridsim-{scenario.name}-"))
    keep = bool(args.dir) or args.keep
    network = choose_network(args.netns)

    def progress(text: str) -> None:
        if not args.quiet:
            print(f"gridsim: {text}", file=sys.stderr, flush=True)

    try:
        report = run_scenario(scenario, base=base, network=network, progress=progress)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    report.dir = str(base) if keep else None
    if args.json:
        print(json.dumps(report.to_json()), flush=True)
    else:
        print(render_text(report), flush=True)
    if report.interrupted:
        return 130
    return 0 if report.ok else 1


# --- up and down: a grid that outlives the command -----------------------------------------------

STATE_FILE: Final = "gridsim.json"
_DOWN_GRACE_S: Final = 10.0


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    path = directory / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def _read_state(directory: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def pid_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[:1]
    return bool(state) and state[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _node_name(city: str, taken: set[str]) -> str:
    from gridnode.logic.cities import fold_name

    base = fold_name(city).replace(" ", "-") or "node"
    name = base
    for i in range(2, len(taken) + 3):
        if name not in taken:
            break
        name = f"{base}-{i}"
    taken.add(name)
    return name


def _up_cities(args: argparse.Namespace) -> list[str]:
    # Commas separate cities, unless there is a semicolon: then "Oslo;59.9,10.7" works.
    separator = ";" if args.cities and ";" in args.cities else ","
    cities = (
        [c.strip() for c in args.cities.split(separator) if c.strip()]
        if args.cities
        else list(EUROPEAN_CAPITALS)
    )
    if not cities:
        raise ValueError("--cities is empty")
    for city in set(cities):
        parse_location(city)  # fail before starting anything
    return [cities[i % len(cities)] for i in range(args.nodes)]


def cmd_up(args: argparse.Namespace) -> int:
    directory = Path(args.dir).absolute()
    if args.nodes < 1 or args.nodes > 64:
        print("gridsim: error: --nodes must be 1..64", file=sys.stderr)
        return 2
    try:
        _up_cities(args)
    except ValueError as exc:
        print(f"gridsim: error: {exc}", file=sys.stderr)
        return 2
    previous = _read_state(directory)
    if previous is not None:
        running = pid_alive(int(previous.get("supervisor_pid", 0)))
        print(
            f"gridsim: error: {directory} already holds a grid"
            f"{' that is running; gridsim down --dir first' if running else ''}; "
            "use another --dir",
            file=sys.stderr,
        )
        return 1
    directory.mkdir(parents=True, exist_ok=True)
    if args.location_check == "off":
        print(
            "gridsim: all nodes listen on 127.0.0.1: the speed-of-light location check "
            "is off (give --location-check to change it)",
            file=sys.stderr,
            flush=True,
        )
    argv = [
        sys.executable,
        "-m",
        "simulations.gridsim",
        "_supervise",
        "--dir",
        str(directory),
        "--nodes",
        str(args.nodes),
        "--location-check",
        args.location_check,
        "--allocate",
        args.allocate,
        "--lifetime",
        str(args.lifetime),
        "--timeout",
        str(args.timeout),
        "--log-level",
        args.log_level,
    ]
    if args.cities:
        argv += ["--cities", args.cities]
    if args.open:
        argv.append("--open")
    with (directory / "gridsim-supervisor.log").open("ab") as log:
        supervisor = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + args.timeout + 60
    state: dict[str, Any] | None = None
    try:
        for _ in range(int((args.timeout + 60) / 0.2) + 1):
            state = _read_state(directory)
            if state is not None and state.get("state") in ("ready", "failed", "stopped"):
                break
            if supervisor.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        supervisor.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            supervisor.wait(timeout=_DOWN_GRACE_S + 10)
        print("gridsim: interrupted; the grid was stopped", file=sys.stderr)
        return 130
    if state is None or state.get("state") != "ready":
        why = (state or {}).get("error") or "the supervisor did not report a ready grid"
        if supervisor.poll() is None:
            supervisor.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                supervisor.wait(timeout=_DOWN_GRACE_S + 10)
        print(
            f"gridsim: error: grid did not start: {why} (see "
            f"{directory / 'gridsim-supervisor.log'})",
            file=sys.stderr,
        )
        return 1
    print(
        json.dumps(
            {
                k: state[k]
                for k in (
                    "dir",
                    "grid_file",
                    "supervisor_pid",
                    "nodes",
                    "authority",
                    "location_check",
                    "converged_s",
                )
            }
        ),
        flush=True,
    )
    return 0


class _Stop(BaseException):
    """The supervisor was asked to stop (SIGTERM, SIGINT, SIGHUP)."""


def cmd_supervise(args: argparse.Namespace) -> int:
    """The detached owner of an ``up`` grid: starts it, reaps it, stops it on SIGTERM."""
    directory = Path(args.dir).absolute()
    state: dict[str, Any] = {
        "state": "starting",
        "dir": str(directory),
        "supervisor_pid": os.getpid(),
        "nodes": [],
        "location_check": args.location_check,
        "lifetime_s": args.lifetime,
        "started_at": time.time(),
    }
    _write_state(directory, state)

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Stop()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)
    grid = LocalGrid(directory, name="gridsim", log_level=args.log_level, authority=not args.open)
    state["grid_file"] = str(grid.grid_file)
    cities = _up_cities(args)
    taken: set[str] = {AUTHORITY_NAME}
    names = [
        _node_name(city if parse_location(city)[2] else f"node {i + 1}", taken)
        for i, city in enumerate(cities)
    ]
    exited: dict[str, int] = {}
    try:
        try:
            first = names[0]
            add_nodes(
                grid,
                [
                    (
                        NodeSpec(
                            name=name,
                            location=city,
                            allocate=args.allocate,
                            location_check=args.location_check,
                        ),
                        [first] if name != first else [],
                    )
                    for name, city in zip(names, cities, strict=True)
                ],
            )
            statuses = start_nodes(grid, names)
            # Every node sees every other, and the authority (a member too), alive.
            extra = {grid.authority_address} if grid.authority_address else set()
            seconds, _ = wait_views(
                grid,
                {
                    n: ({grid.nodes[o].address for o in names if o != n} | extra, set())
                    for n in names
                },
                args.timeout,
            )
        except Exception as exc:
            state.update(state="failed", error=f"{type(exc).__name__}: {exc}")
            _write_state(directory, state)
            return 1
        pids = {
            name: proc.pid
            for name, node in grid.all_nodes().items()
            if (proc := node.process) is not None
        }
        authority = grid.authority_node
        state["authority"] = (
            {
                "name": AUTHORITY_NAME,
                "home": str(authority.home),
                "address": authority.address,
                "pid": pids.get(AUTHORITY_NAME),
            }
            if authority is not None
            else None
        )
        state["nodes"] = [
            {
                "name": name,
                "home": str(grid.nodes[name].home),
                "address": grid.nodes[name].address,
                "pid": pids.get(name),
                "city": city,
                "node_id": status["node_id"],
                "lat": status.get("lat"),
                "lon": status.get("lon"),
            }
            for name, city, status in zip(names, cities, statuses, strict=True)
        ]
        state.update(state="ready", converged_s=round(seconds, 2))
        _write_state(directory, state)
        for _ in range(int(args.lifetime / 0.5) + 1):
            time.sleep(0.5)
            for name, node in grid.all_nodes().items():
                if (
                    name not in exited
                    and node.process is not None
                    and node.process.poll() is not None
                ):
                    exited[name] = node.process.returncode
                    state.setdefault("exited", {})[name] = node.process.returncode
                    _write_state(directory, state)
        state["stopped_because"] = f"lifetime of {args.lifetime:g} s reached"
    except _Stop:
        state["stopped_because"] = "signal"
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        down = _stop_children(grid, exited)
        state["down"] = [entry for entry in down if entry["name"] != AUTHORITY_NAME]
        state["down_authority"] = next(
            (entry for entry in down if entry["name"] == AUTHORITY_NAME), None
        )
        state["state"] = "stopped"
        _write_state(directory, state)
    return 0


def _stop_children(grid: LocalGrid, exited: Mapping[str, int]) -> list[dict[str, Any]]:
    """SIGTERM every node, SIGKILL what is left after the grace period; their exit codes."""
    summary: dict[str, dict[str, Any]] = {}
    nodes = grid.all_nodes()
    for name, node in nodes.items():
        proc = node.process
        if proc is None:
            continue
        summary[name] = {"name": name, "pid": proc.pid}
        if proc.poll() is not None:
            summary[name].update(
                exit_code=proc.returncode, how="exited before down" if name in exited else "exited"
            )
            continue
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        summary[name]["how"] = "SIGTERM"
    deadline = time.monotonic() + _DOWN_GRACE_S
    for name, node in nodes.items():
        proc = node.process
        if proc is None or "exit_code" in summary[name]:
            continue
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            summary[name]["how"] = "SIGKILL after SIGTERM"
        summary[name]["exit_code"] = proc.returncode
    return list(summary.values())


def cmd_down(args: argparse.Namespace) -> int:
    directory = Path(args.dir).absolute()
    state = _read_state(directory)
    if state is None:
        print(f"gridsim: error: no grid in {directory} ({STATE_FILE} missing)", file=sys.stderr)
        return 1
    supervisor = int(state.get("supervisor_pid") or 0)
    via = "supervisor"
    already = state.get("state") == "stopped"
    if (
        state.get("state") != "stopped"
        and supervisor
        and pid_alive(supervisor)
        and "_supervise" in _cmdline(supervisor)
        and str(directory) in _cmdline(supervisor)
    ):
        os.kill(supervisor, signal.SIGTERM)
        for _ in range(int((_DOWN_GRACE_S + 20) / 0.1)):
            if not pid_alive(supervisor):
                break
            time.sleep(0.1)
        state = _read_state(directory) or state
    if state.get("state") != "stopped":
        via = "direct (the supervisor was gone)"
        state["down"] = _stop_pids(state.get("nodes", []))
        authority = state.get("authority")
        state["down_authority"] = _stop_pids([authority])[0] if authority else None
        state["state"] = "stopped"
        _write_state(directory, state)
    summary = {
        "dir": str(directory),
        "stopped": True,
        "via": via,
        "already_stopped": already,
        "nodes": state.get("down", []),
        "authority": state.get("down_authority"),
    }
    print(json.dumps(summary), flush=True)
    return 0


def _stop_pids(nodes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Without the supervisor: signal the recorded pids that still run our nodes."""
    out: list[dict[str, Any]] = []
    live: list[tuple[dict[str, Any], int]] = []
    for node in nodes:
        pid = int(node.get("pid") or 0)
        entry: dict[str, Any] = {"name": node.get("name"), "pid": pid, "exit_code": None}
        out.append(entry)
        if pid and pid_alive(pid) and str(node.get("home")) in _cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
            entry["how"] = "SIGTERM"
            live.append((entry, pid))
        else:
            entry["how"] = "not running"
    for _ in range(int(_DOWN_GRACE_S / 0.1)):
        if not any(pid_alive(pid) for _, pid in live):
            break
        time.sleep(0.1)
    for entry, pid in live:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            entry["how"] = "SIGKILL after SIGTERM"
    return out


# --- the command line -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridsim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{up,down,run}")

    def grid_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", required=True, help="where the grid's homes and state live")
        p.add_argument("--nodes", type=int, required=True)
        p.add_argument(
            "--cities",
            help="comma-separated, or semicolon-separated to mix in "
            "LAT,LON (default: European capitals)",
        )
        p.add_argument(
            "--location-check",
            nargs="?",
            const="enforce",
            default="off",
            choices=["enforce", "warn", "off"],
            help="default off: every node is on 127.0.0.1",
        )
        p.add_argument("--allocate", default="2GB")
        p.add_argument(
            "--lifetime",
            type=float,
            default=86_400.0,
            help="stop the grid after this many seconds (default a day)",
        )
        p.add_argument(
            "--timeout", type=float, default=120.0, help="seconds to wait for the grid to converge"
        )
        p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        p.add_argument(
            "--open",
            action="store_true",
            help="an open grid, without an authority: admits anyone who can reach a node",
        )

    up = sub.add_parser("up", help="start a grid in the background")
    grid_options(up)
    up.set_defaults(fn=cmd_up)
    supervise = sub.add_parser("_supervise")  # started by `up`, not by people
    grid_options(supervise)
    supervise.set_defaults(fn=cmd_supervise)

    down = sub.add_parser("down", help="stop a grid started by `up`")
    down.add_argument("--dir", required=True)
    down.set_defaults(fn=cmd_down)

    run = sub.add_parser("run", help="run a scenario file")
    run.add_argument("scenario")
    run.add_argument("--json", action="store_true", help="one JSON report on stdout")
    run.add_argument("--dir", help="keep the grid's files here (new or empty directory)")
    run.add_argument("--keep", action="store_true", help="keep the temporary directory")
    run.add_argument(
        "--netns",
        action="store_true",
        help="one network namespace per node, delays from distance (root)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress on stderr")
    run.set_defaults(fn=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.fn(args))
    except KeyboardInterrupt:
        print("gridsim: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
