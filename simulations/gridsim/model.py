"""The scenario model: what a parsed scenario file says, as frozen values.

:mod:`.parser` builds these from TOML; everything else reads them.  The vocabularies
(invariants, data kinds, location checks, wait conditions) live here because both the
parser and the report name them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import attrs

__all__ = [
    "DATA_KINDS",
    "INVARIANTS",
    "LOCATION_CHECKS",
    "WAIT_UNTIL",
    "DataSpec",
    "NodeDef",
    "Scenario",
    "ScenarioError",
    "Step",
]

INVARIANTS: Final = ("restore", "rules", "processes")
DATA_KINDS: Final = ("random", "text", "small-files")
LOCATION_CHECKS: Final = ("auto", "enforce", "warn", "off")
WAIT_UNTIL: Final = ("converged", "settled")


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
