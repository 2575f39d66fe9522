"""Node configuration: one TOML file per node home, every value overridable.

``gridnode init`` writes ``HOME/gridnode.toml``; ``gridnode run`` reads it and applies
command-line overrides on top.  Validation happens here, once, with errors that name
the key ("config key 'allocate': not a size: '5 parsecs'"), so a typo never starts a
node that then misbehaves.
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from .errors import UserError
from .fsutil import atomic_write
from .home_layout import CONFIG_NAME, default_home
from .units import parse_size

__all__ = [
    "CONFIG_NAME",
    "ConfigError",
    "GridFile",
    "NodeConfig",
    "default_home",
    "dump_toml",
    "load_config",
    "parse_address",
]

LOCATION_CHECKS: Final = ("enforce", "warn", "off")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


class ConfigError(UserError, ValueError):
    """A configuration value that cannot be used; the message names the key."""


def parse_address(text: str, *, key: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"config key {key!r}: expected HOST:PORT, got {text!r}")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ConfigError(f"config key {key!r}: port {number} out of range")
    return host, number


def check_metrics_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` on a loopback address, or ConfigError naming the key: the metrics
    say which members a node talks to and how much it holds (``gridnode.metrics``)."""
    host, port = parse_address(address, key="metrics_listen")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ConfigError(
            f"config key 'metrics_listen': {address!r} is not a loopback address; the "
            "metrics endpoint serves only this machine (127.0.0.1 or ::1)"
        )
    return host, port


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(values: Mapping[str, Any], header: str = "") -> str:
    """A flat TOML writer (tomllib only reads); ``None`` values are left out."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


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


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(choices)}")
    return value


@attrs.frozen(kw_only=True)
class NodeConfig:
    """A node's validated settings; built by ``load_config``, never by hand in production."""

    home: Path
    grid_id: bytes
    grid_name: str = ""
    listen_host: str = "127.0.0.1"
    listen_port: int = 7400
    #: The address other members dial; needed when listening on a wildcard address.
    advertise: str = ""
    seeds: tuple[str, ...] = ()
    lat: float | None = None
    lon: float | None = None
    city: str = ""
    allocated_bytes: int = 10 * 1000**3
    log_level: str = "warning"
    location_check: str = "enforce"
    labels: tuple[str, ...] = ()
    #: K/N erasure coding of backups.  10-of-30 keeps a 100 GB backup on home machines
    #: (up a third of the day) under a 1 % yearly chance of losing any file
    #: (docs/DURABILITY.md); a grid needs at least N members besides the source.
    redundancy: str = "10/30"
    backup_proximity: str = ""
    packet_proximity: str = ""
    seal_payloads: bool = False
    bandwidth_bps: int = 100_000_000
    #: Unused since the control channel became a Unix socket (``gridnode/control.py``);
    #: still read and written so that existing config files load unchanged.
    control_port: int = 0
    #: ``HOST:PORT`` on loopback for the Prometheus endpoint (``gridnode.metrics``);
    #: empty turns it off.
    metrics_listen: str = ""
    grace_period_s: float = 3.0
    request_timeout_s: float = 30.0
    #: Time a new connection gets for the websocket upgrade and the session handshake
    #: together; a stranger that sends nothing, or drips, is cut off after it.
    handshake_timeout_s: float = 10.0
    max_frame_bytes: int = 16 * 1024 * 1024
    gossip_probe_interval_s: float = 1.0
    gossip_sync_interval_s: float = 30.0
    gossip_dead_reap_s: float = 120.0
    #: Authenticated sessions kept at once (also capped by the descriptor limit); at the
    #: cap the session quiet longest gives way to a new one.
    max_sessions: int = 512
    #: A session that carried nothing either way for this long is closed.
    session_idle_s: float = 120.0
    #: A holder of this node's packets that the grid has not seen for this long is taken
    #: for gone (counted from its last-seen time, kept in the catalog across restarts):
    #: its packets are rebuilt on other holders (0 turns it off).  A week rides out the
    #: nights and holidays of home machines; an hour would move every packet nightly.
    repair_after_s: float = 604800.0
    #: A chunk is repaired once this many of its holders are gone (1 repairs at the
    #: first; 2 halves the repair traffic for little loss).  At most N - K; the default
    #: is 2, or N - K for a thinner code.
    repair_threshold: int = 2
    #: How many members hold a repair capability for this node's snapshots, so that its
    #: packets are repaired when this node is gone (``gridnode.delegation``); 0 turns
    #: delegation off.  Two survive one delegate leaving with the source.
    repair_delegates: int = 2
    #: How long a delegate keeps a capability without renewal (renewed at half-time
    #: while this node runs): how long repair outlives the source.
    repair_lease_s: float = 30 * 86400.0
    #: The grid authority (from the grid file): the grid key's public half (hex) and where
    #: to subscribe.  Empty on an open grid (``gridnode grid create --open``).
    authority_key: str = ""
    authority_address: str = ""
    #: Authority side: how long a certificate it issues is valid (nodes renew at half).
    certificate_lifetime_s: float = 30 * 86400.0
    #: How often a node asks the authority for new revocations (a revoked peer is refused
    #: within about this long, not when its certificate expires).
    revocation_poll_s: float = 300.0
    #: How often a node forwards its backup log to the authority's global log (also
    #: after each job).
    log_forward_s: float = 300.0
    #: The billing period of metering and fees (one month by default).
    billing_period_s: float = 30 * 86400.0
    #: How often a node of a grid with an authority sends it a signed usage report.
    usage_report_interval_s: float = 3600.0

    @property
    def listen_address(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    @property
    def key_path(self) -> Path:
        return self.home / "node.key"

    def to_values(self) -> dict[str, Any]:
        """Every key as the config file spells it (``gridnode config show`` too)."""
        return {
            "grid_id": self.grid_id.hex(),
            "grid_name": self.grid_name,
            "listen": self.listen_address,
            "advertise": self.advertise,
            "seeds": list(self.seeds),
            "city": self.city,
            "latitude": self.lat,
            "longitude": self.lon,
            "allocate": str(self.allocated_bytes),
            "log_level": self.log_level,
            "location_check": self.location_check,
            "labels": list(self.labels),
            "redundancy": self.redundancy,
            "backup_proximity": self.backup_proximity,
            "packet_proximity": self.packet_proximity,
            "seal_payloads": self.seal_payloads,
            "bandwidth_bps": self.bandwidth_bps,
            "control_port": self.control_port,
            "metrics_listen": self.metrics_listen,
            "grace_period_s": self.grace_period_s,
            "request_timeout_s": self.request_timeout_s,
            "handshake_timeout_s": self.handshake_timeout_s,
            "gossip_probe_interval_s": self.gossip_probe_interval_s,
            "gossip_sync_interval_s": self.gossip_sync_interval_s,
            "gossip_dead_reap_s": self.gossip_dead_reap_s,
            "max_sessions": self.max_sessions,
            "session_idle_s": self.session_idle_s,
            "repair_after_s": self.repair_after_s,
            "repair_threshold": self.repair_threshold,
            "repair_delegates": self.repair_delegates,
            "repair_lease_s": self.repair_lease_s,
            "authority_key": self.authority_key,
            "authority_address": self.authority_address,
            "certificate_lifetime_s": self.certificate_lifetime_s,
            "revocation_poll_s": self.revocation_poll_s,
            "log_forward_s": self.log_forward_s,
            "billing_period_s": self.billing_period_s,
            "usage_report_interval_s": self.usage_report_interval_s,
        }

    def to_toml(self) -> str:
        return dump_toml(
            self.to_values(), header="gridnode node configuration (written by gridnode init)"
        )

    def save(self) -> None:
        atomic_write(self.config_path, self.to_toml().encode("utf-8"))


def _float(key: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"config key {key!r}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise ConfigError(f"config key {key!r}: {number} is outside {lo}..{hi}")
    return number


def _int(key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}") from None
    if not lo <= number <= hi:
        raise ConfigError(f"config key {key!r}: {number} is outside {lo}..{hi}")
    return number


def _str_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in (s.strip() for s in value.split(",")) if v]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"config key {key!r}: expected a list of strings")
    return tuple(value)


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "true",
        "yes",
        "1",
        "on",
        "false",
        "no",
        "0",
        "off",
    ):
        return value.lower() in ("true", "yes", "1", "on")
    raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")


def resolve_location(text: str) -> tuple[float, float, str]:
    """``"CITY"`` or ``"LAT,LON"`` -> (lat, lon, display name)."""
    from .logic.cities import parse_location

    try:
        lat, lon, city = parse_location(text)
    except ValueError as exc:
        raise ConfigError(f"config key 'location': {exc}") from None
    return lat, lon, city or ""


def build_config(home: Path, raw: Mapping[str, Any]) -> NodeConfig:
    """Validate a merged mapping (file values with overrides applied) into a NodeConfig."""
    known = {f.name for f in attrs.fields(NodeConfig)} | {
        "listen",
        "latitude",
        "longitude",
        "allocate",
        "location",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    if "grid_id" not in raw:
        raise ConfigError("config key 'grid_id' is missing (run gridnode init --grid FILE)")
    try:
        grid_id = bytes.fromhex(str(raw["grid_id"]))
    except ValueError:
        raise ConfigError("config key 'grid_id': not hex") from None
    kwargs: dict[str, Any] = {"home": home, "grid_id": grid_id}
    if "grid_name" in raw:
        kwargs["grid_name"] = str(raw["grid_name"])
    if "listen" in raw:
        kwargs["listen_host"], kwargs["listen_port"] = parse_address(
            str(raw["listen"]), key="listen"
        )
    if raw.get("advertise"):
        parse_address(str(raw["advertise"]), key="advertise")
        kwargs["advertise"] = str(raw["advertise"])
    if kwargs.get("listen_host", "127.0.0.1") in ("0.0.0.0", "::", "*") and not kwargs.get(
        "advertise"
    ):
        raise ConfigError(
            "config key 'advertise': required when listening on all interfaces "
            "(the address other members should dial, e.g. 10.0.0.5:7400)"
        )
    if "seeds" in raw:
        seeds = _str_list("seeds", raw["seeds"])
        for seed in seeds:
            parse_address(seed, key="seeds")
        kwargs["seeds"] = seeds
    lat, lon, city = raw.get("latitude"), raw.get("longitude"), str(raw.get("city", ""))
    if raw.get("location"):
        lat, lon, city = resolve_location(str(raw["location"]))
    if (lat is None) != (lon is None):
        raise ConfigError("config keys 'latitude' and 'longitude' must be set together")
    if lat is not None:
        kwargs["lat"] = _float("latitude", lat, -90.0, 90.0)
        kwargs["lon"] = _float("longitude", lon, -180.0, 180.0)
    kwargs["city"] = city
    if "allocate" in raw:
        try:
            kwargs["allocated_bytes"] = parse_size(raw["allocate"])
        except ValueError as exc:
            raise ConfigError(f"config key 'allocate': {exc}") from None
    if "log_level" in raw:
        kwargs["log_level"] = _check_choice("log_level", str(raw["log_level"]).lower(), LOG_LEVELS)
    if "location_check" in raw:
        kwargs["location_check"] = _check_choice(
            "location_check", str(raw["location_check"]), LOCATION_CHECKS
        )
    if "labels" in raw:
        labels = _str_list("labels", raw["labels"])
        for label in labels:
            if "=" not in label:
                raise ConfigError(f"config key 'labels': {label!r} is not NAME=VALUE")
        kwargs["labels"] = labels
    if "redundancy" in raw:
        from .logic.packing import ErasureParams

        try:
            kwargs["redundancy"] = str(ErasureParams.parse(str(raw["redundancy"])))
        except ValueError as exc:
            raise ConfigError(f"config key 'redundancy': {exc}") from None
    for key in ("backup_proximity", "packet_proximity"):
        if key in raw:
            from .logic.distance import parse_band

            text = str(raw[key])
            if text:
                try:
                    parse_band(text)
                except ValueError as exc:
                    raise ConfigError(f"config key {key!r}: {exc}") from None
            kwargs[key] = text
    if raw.get("authority_key"):
        try:
            grid_key = bytes.fromhex(str(raw["authority_key"]))
        except ValueError:
            raise ConfigError("config key 'authority_key': not hex") from None
        if len(grid_key) != 32:
            raise ConfigError("config key 'authority_key': must be 32 bytes (64 hex digits)")
        kwargs["authority_key"] = grid_key.hex()
    if raw.get("authority_address"):
        parse_address(str(raw["authority_address"]), key="authority_address")
        kwargs["authority_address"] = str(raw["authority_address"])
    if bool(kwargs.get("authority_key")) != bool(kwargs.get("authority_address")):
        raise ConfigError(
            "config keys 'authority_key' and 'authority_address' must be set together"
        )
    if "seal_payloads" in raw:
        kwargs["seal_payloads"] = _bool("seal_payloads", raw["seal_payloads"])
    if "bandwidth_bps" in raw:
        kwargs["bandwidth_bps"] = _int("bandwidth_bps", raw["bandwidth_bps"], 0, 10**13)
    if "control_port" in raw:
        kwargs["control_port"] = _int("control_port", raw["control_port"], 0, 65535)
    if raw.get("metrics_listen"):
        check_metrics_address(str(raw["metrics_listen"]))
        kwargs["metrics_listen"] = str(raw["metrics_listen"])
    from .logic.packing import ErasureParams

    defaults = attrs.fields(NodeConfig)
    params = ErasureParams.parse(str(kwargs.get("redundancy", defaults.redundancy.default)))
    spare = max(1, params.n - params.k)  # losses a chunk survives; 1 for a k-of-k code
    if "repair_threshold" in raw:
        threshold = _int("repair_threshold", raw["repair_threshold"], 1, 256)
        if threshold > spare:
            raise ConfigError(
                f"config key 'repair_threshold': {threshold} gone holders is more than a "
                f"{params} chunk survives; use 1..{spare}"
            )
        kwargs["repair_threshold"] = threshold
    else:
        kwargs["repair_threshold"] = min(int(str(defaults.repair_threshold.default)), spare)
    if "repair_delegates" in raw:
        kwargs["repair_delegates"] = _int("repair_delegates", raw["repair_delegates"], 0, 16)
    if "max_sessions" in raw:
        kwargs["max_sessions"] = _int("max_sessions", raw["max_sessions"], 2, 1 << 20)
    if "max_frame_bytes" in raw:
        kwargs["max_frame_bytes"] = _int("max_frame_bytes", raw["max_frame_bytes"], 4096, 64 << 20)
    for key, lo, hi in (
        ("grace_period_s", 0.0, 60.0),
        ("request_timeout_s", 0.1, 3600.0),
        ("handshake_timeout_s", 0.5, 120.0),
        ("gossip_probe_interval_s", 0.05, 60.0),
        ("gossip_sync_interval_s", 0.5, 3600.0),
        ("gossip_dead_reap_s", 1.0, 86400.0 * 7),
        ("session_idle_s", 0.1, 86400.0),
        ("repair_after_s", 0.0, 86400.0 * 365),
        ("repair_lease_s", 2.0, 86400.0 * 90),
        ("certificate_lifetime_s", 2.0, 86400.0 * 3650),
        ("revocation_poll_s", 0.2, 86400.0),
        ("log_forward_s", 0.2, 86400.0),
        ("billing_period_s", 1.0, 86400.0 * 3650),
        ("usage_report_interval_s", 1.0, 86400.0 * 31),
    ):
        if key in raw:
            kwargs[key] = _float(key, raw[key], lo, hi)
    return NodeConfig(**kwargs)


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
