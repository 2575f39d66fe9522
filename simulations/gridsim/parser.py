"""The scenario parser: TOML in, a validated :class:`~.model.Scenario` out.

Every error names the file, the node or step, and what is wrong (a
:class:`~.model.ScenarioError`), so that ``gridsim run`` can exit 2 with one line before
it starts anything.  The format itself is described in :mod:`.manual`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from gridnode.logic.cities import parse_location
from gridnode.logic.distance import parse_band
from gridnode.logic.packing import ErasureParams
from gridnode.units import parse_size

from ..harness import AUTHORITY_NAME
from .model import (
    DATA_KINDS,
    INVARIANTS,
    LOCATION_CHECKS,
    WAIT_UNTIL,
    DataSpec,
    NodeDef,
    Scenario,
    ScenarioError,
    Step,
)

__all__ = ["ACTION_KEYS", "load_scenario", "parse_scenario"]

T = TypeVar("T")

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
