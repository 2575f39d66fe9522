"""Node configuration: one TOML file per node home, every value overridable.

``gridnode init`` writes ``HOME/gridnode.toml``; ``gridnode run`` reads it and applies
command-line overrides on top.  Every key is declared once in ``gridnode.config_keys``
(type, default, bounds, validation, help); this module derives from those declarations
the reader, the writer and the defaults of ``NodeConfig``.  Validation happens here, once,
with errors that name the key ("config key 'allocate': not a size: '5 parsecs'"), so a
typo never starts a node that then misbehaves.  Only keys that differ from their default
are written, so a changed default reaches existing nodes; files written by older versions
(every key) load unchanged.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import tomli_w

from .config_keys import (
    CONFIG_KEYS,
    KEYS_BY_NAME,
    LOCATION_CHECKS,
    LOG_LEVELS,
    ConfigError,
    check_metrics_address,
    field_defaults,
    migrate_values,
    parse_address,
    resolve_location,
)
from .fsutil import atomic_write
from .home_layout import CONFIG_NAME, default_home
from .logic.packing import ErasureParams
from .schedules import Schedule

__all__ = [
    "CONFIG_NAME",
    "LOCATION_CHECKS",
    "LOG_LEVELS",
    "ConfigError",
    "GridFile",
    "NodeConfig",
    "build_config",
    "check_metrics_address",
    "default_home",
    "dump_toml",
    "load_config",
    "parse_address",
    "resolve_location",
]


def dump_toml(values: Mapping[str, Any], header: str = "") -> str:
    """TOML text from a flat mapping, by a real writer (``tomli_w``): strings with control
    characters are escaped as TOML wants, so what is written always reads back (a grid
    name with a control character once wrote a file ``init`` then refused).  ``None``
    values are left out (TOML has no null)."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + tomli_w.dumps({k: v for k, v in values.items() if v is not None})


@attrs.frozen
class GridFile:
    """What a node needs to join a grid: its id, its name and where to find members.

    A grid has an authority (``authority_key``, the grid key's public half, and
    ``authority_address``, where nodes subscribe: ``gridnode authority init``) or is
    ``open`` (``gridnode grid create --open``): it admits anyone who can reach a node.
    A grid file with neither predates authorities and is read as open."""

    name: str
    grid_id: bytes
    seeds: tuple[str, ...] = ()
    authority_key: bytes = b""
    authority_address: str = ""

    @property
    def open(self) -> bool:
        return not self.authority_key

    @classmethod
    def load(cls, path: Path) -> GridFile:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"no grid file at {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"grid file {path}: {exc}") from None
        try:
            grid_id = bytes.fromhex(str(data["grid_id"]))
        except (KeyError, ValueError):
            raise ConfigError(f"grid file {path}: key 'grid_id' missing or not hex") from None
        if not 8 <= len(grid_id) <= 32:
            raise ConfigError(f"grid file {path}: key 'grid_id' must be 8-32 bytes")
        seeds = data.get("seeds", [])
        if not isinstance(seeds, list) or not all(isinstance(s, str) for s in seeds):
            raise ConfigError(f"grid file {path}: key 'seeds' must be a list of HOST:PORT")
        for seed in seeds:
            parse_address(seed, key="seeds")
        try:
            authority_key = bytes.fromhex(str(data.get("authority_key", "")))
        except ValueError:
            raise ConfigError(f"grid file {path}: key 'authority_key' is not hex") from None
        if authority_key and len(authority_key) != 32:
            raise ConfigError(f"grid file {path}: key 'authority_key' must be 32 bytes")
        authority_address = str(data.get("authority_address", ""))
        if authority_address:
            parse_address(authority_address, key="authority_address")
        if bool(authority_key) != bool(authority_address):
            raise ConfigError(
                f"grid file {path}: keys 'authority_key' and 'authority_address' go together"
            )
        return cls(
            name=str(data.get("name", "")),
            grid_id=grid_id,
            seeds=tuple(seeds),
            authority_key=authority_key,
            authority_address=authority_address,
        )

    def save(self, path: Path) -> None:
        values: dict[str, Any] = {
            "name": self.name,
            "grid_id": self.grid_id.hex(),
            "seeds": list(self.seeds),
        }
        if self.authority_key:
            values["authority_key"] = self.authority_key.hex()
            values["authority_address"] = self.authority_address
        else:
            values["open"] = True
        text = dump_toml(
            values,
            header="gridnode grid file: give it to every node that should join this grid.",
        )
        atomic_write(path, text.encode("utf-8"))


#: NodeConfig's defaults, read from the declarations (``gridnode.config_keys``).
_DEFAULTS: Final = field_defaults()
_WILDCARDS: Final = ("0.0.0.0", "::", "*")


@attrs.frozen(kw_only=True)
class NodeConfig:
    """A node's validated settings; built by ``load_config``, never by hand in production.

    One field per value the node uses; what each means, its default and bounds are
    declared with its config key in ``gridnode.config_keys`` (``docs/CONFIG.md``)."""

    home: Path
    grid_id: bytes
    grid_name: str = _DEFAULTS["grid_name"]
    listen_host: str = _DEFAULTS["listen_host"]
    listen_port: int = _DEFAULTS["listen_port"]
    advertise: str = _DEFAULTS["advertise"]
    seeds: tuple[str, ...] = _DEFAULTS["seeds"]
    lat: float | None = _DEFAULTS["lat"]
    lon: float | None = _DEFAULTS["lon"]
    city: str = _DEFAULTS["city"]
    allocated_bytes: int = _DEFAULTS["allocated_bytes"]
    #: Where the packets held for others live ("" : HOME/storage); see ``packet_root``.
    storage_dir: str = _DEFAULTS["storage_dir"]
    log_level: str = _DEFAULTS["log_level"]
    location_check: str = _DEFAULTS["location_check"]
    labels: tuple[str, ...] = _DEFAULTS["labels"]
    redundancy: str = _DEFAULTS["redundancy"]
    backup_proximity: str = _DEFAULTS["backup_proximity"]
    packet_proximity: str = _DEFAULTS["packet_proximity"]
    dedup_group: str = _DEFAULTS["dedup_group"]
    seal_payloads: bool = _DEFAULTS["seal_payloads"]
    bandwidth_bps: int = _DEFAULTS["bandwidth_bps"]
    control_port: int = _DEFAULTS["control_port"]
    metrics_listen: str = _DEFAULTS["metrics_listen"]
    dashboard_listen: str = _DEFAULTS["dashboard_listen"]
    summary_interval_s: float = _DEFAULTS["summary_interval_s"]
    grace_period_s: float = _DEFAULTS["grace_period_s"]
    request_timeout_s: float = _DEFAULTS["request_timeout_s"]
    handshake_timeout_s: float = _DEFAULTS["handshake_timeout_s"]
    max_frame_bytes: int = _DEFAULTS["max_frame_bytes"]
    gossip_probe_interval_s: float = _DEFAULTS["gossip_probe_interval_s"]
    gossip_sync_interval_s: float = _DEFAULTS["gossip_sync_interval_s"]
    gossip_dead_reap_s: float = _DEFAULTS["gossip_dead_reap_s"]
    max_sessions: int = _DEFAULTS["max_sessions"]
    session_idle_s: float = _DEFAULTS["session_idle_s"]
    repair_after_s: float = _DEFAULTS["repair_after_s"]
    #: The declared 2; ``build_config`` lowers it to N - K for a thinner code.
    repair_threshold: int = _DEFAULTS["repair_threshold"]
    repair_delegates: int = _DEFAULTS["repair_delegates"]
    repair_lease_s: float = _DEFAULTS["repair_lease_s"]
    audit_interval_s: float = _DEFAULTS["audit_interval_s"]
    audit_batch: int = _DEFAULTS["audit_batch"]
    audit_threshold: float = _DEFAULTS["audit_threshold"]
    lease_s: float = _DEFAULTS["lease_s"]
    lease_renew_interval_s: float = _DEFAULTS["lease_renew_interval_s"]
    lease_grace_s: float = _DEFAULTS["lease_grace_s"]
    lease_sweep_interval_s: float = _DEFAULTS["lease_sweep_interval_s"]
    orphan_grace_s: float = _DEFAULTS["orphan_grace_s"]
    authority_key: str = _DEFAULTS["authority_key"]
    authority_address: str = _DEFAULTS["authority_address"]
    certificate_lifetime_s: float = _DEFAULTS["certificate_lifetime_s"]
    revocation_poll_s: float = _DEFAULTS["revocation_poll_s"]
    log_forward_s: float = _DEFAULTS["log_forward_s"]
    billing_period_s: float = _DEFAULTS["billing_period_s"]
    usage_report_interval_s: float = _DEFAULTS["usage_report_interval_s"]
    #: Backups the node runs by itself (``[[schedule]]``; ``gridnode.scheduler``).
    schedules: tuple[Schedule, ...] = _DEFAULTS["schedules"]

    @property
    def listen_address(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    @property
    def key_path(self) -> Path:
        return self.home / "node.key"

    @property
    def packet_root(self) -> Path:
        """The packet store's directory (``storage_dir``; a relative one is under the
        home, so a config file means the same wherever the node is started from)."""
        if not self.storage_dir:
            return self.home / "storage"
        return (self.home / Path(self.storage_dir).expanduser()).absolute()

    def to_values(self) -> dict[str, Any]:
        """Every key as the config file spells it (``gridnode config show`` too)."""
        return {key.name: key.write(self) for key in CONFIG_KEYS if not key.alias}

    def file_values(self) -> dict[str, Any]:
        """The keys the config file holds: those that differ from what a file without
        them reads as (their default), and the grid file's keys.  A default changed by a
        later version then reaches this node; a value set on purpose stays."""
        grid_id = self.grid_id.hex()
        baseline = build_config(self.home, {"grid_id": grid_id}).to_values()
        # repair_threshold's default follows the redundancy: min(2, N - K).
        baseline["repair_threshold"] = build_config(
            self.home, {"grid_id": grid_id, "redundancy": self.redundancy}
        ).repair_threshold
        return {
            name: value
            for name, value in self.to_values().items()
            if value is not None and (KEYS_BY_NAME[name].always or value != baseline[name])
        }

    def to_toml(self) -> str:
        return dump_toml(
            self.file_values(),
            header="gridnode node configuration (written by gridnode init); keys left out\n"
            "have their default: docs/CONFIG.md",
        )

    def save(self) -> None:
        atomic_write(self.config_path, self.to_toml().encode("utf-8"))


def build_config(home: Path, raw: Mapping[str, Any]) -> NodeConfig:
    """Validate a merged mapping (file values with overrides applied) into a NodeConfig:
    each key by its declaration, then the rules that tie keys together."""
    raw = migrate_values(dict(raw))  # an older file's format, brought up to date
    unknown = sorted(set(raw) - set(KEYS_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    if "grid_id" not in raw:
        raise ConfigError("config key 'grid_id' is missing (run gridnode init --grid FILE)")
    given = {name: value for name, value in raw.items() if value is not None}  # None: not given
    location = KEYS_BY_NAME["location"]
    if given.get(location.name):
        for name in location.replaces:
            given.pop(name, None)
    else:
        given.pop(location.name, None)
    kwargs: dict[str, Any] = {"home": home}
    for key in CONFIG_KEYS:
        if key.name in given:
            kwargs.update(key.read(key.name, given[key.name]))
    _check_relations(kwargs, set(given))
    return NodeConfig(**kwargs)


def _check_relations(kwargs: dict[str, Any], given: set[str]) -> None:
    """The rules between keys (fills in ``repair_threshold``'s derived default)."""
    if kwargs.get("listen_host", _DEFAULTS["listen_host"]) in _WILDCARDS and not kwargs.get(
        "advertise"
    ):
        raise ConfigError(
            "config key 'advertise': required when listening on all interfaces "
            "(the address other members should dial, e.g. 10.0.0.5:7400)"
        )
    if ("lat" in kwargs) != ("lon" in kwargs):
        raise ConfigError("config keys 'latitude' and 'longitude' must be set together")
    if bool(kwargs.get("authority_key")) != bool(kwargs.get("authority_address")):
        raise ConfigError(
            "config keys 'authority_key' and 'authority_address' must be set together"
        )
    params = ErasureParams.parse(str(kwargs.get("redundancy", _DEFAULTS["redundancy"])))
    spare = max(1, params.n - params.k)  # losses a chunk survives; 1 for a k-of-k code
    if "repair_threshold" in given:
        threshold = kwargs["repair_threshold"]
        if threshold > spare:
            raise ConfigError(
                f"config key 'repair_threshold': {threshold} gone holders is more than a "
                f"{params} chunk survives; use 1..{spare}"
            )
    else:
        kwargs["repair_threshold"] = min(_DEFAULTS["repair_threshold"], spare)


def read_config_file(home: Path) -> dict[str, Any]:
    path = home / CONFIG_NAME
    try:
        return dict(tomllib.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ConfigError(f"no node configuration at {path} (run gridnode init first)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_config(home: Path, overrides: Mapping[str, Any] | None = None) -> NodeConfig:
    raw = read_config_file(home)
    if overrides:
        raw.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(home, raw)
