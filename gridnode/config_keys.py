"""Every node config key, declared once: its name in ``gridnode.toml``, type, default,
bounds, validation, one-line help, and whether ``--set`` may give it.

``gridnode.config`` derives from this table the reader (``build_config``), the writer
(only keys that differ from their default are written, so a changed default reaches
existing nodes), ``gridnode config show`` and the NodeConfig defaults; ``gridnode init``
and ``gridnode run`` derive their flags and ``--set`` checks from it; ``docs/CONFIG.md``
is generated from it (``gridnode config reference``).  Keys used to be listed in several
places that drifted (``init --set max_frame_bytes=...`` was accepted and never written).

The CLI's parser imports this module for the flags' choices and help, so it stays light:
the standard library and ``gridnode.errors``/``units`` only; the few validators that need
the grid's logic (redundancy, proximity bands, city names) import it when they run.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from .errors import UserError
from .schedules import SCHEDULE_FIELDS, ScheduleError, parse_schedules
from .units import parse_size

__all__ = [
    "CONFIG_FORMAT",
    "CONFIG_KEYS",
    "KEYS_BY_NAME",
    "LOCATION_CHECKS",
    "LOG_LEVELS",
    "ConfigError",
    "ConfigKey",
    "check_metrics_address",
    "check_settable",
    "field_defaults",
    "flag_of",
    "migrate_values",
    "parse_address",
    "reference_markdown",
]

LOCATION_CHECKS: Final = ("enforce", "warn", "off")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
#: The config file's format, written in every file (``config_format``).  A file of a
#: newer format is refused (its keys may mean what this version cannot know); an older
#: one is migrated in memory on load and written in this format when next saved.
CONFIG_FORMAT: Final = 1
#: ``CONFIG_MIGRATIONS[i]`` takes a file's values from format ``i + 1`` to ``i + 2``
#: (keys renamed, values respelled).  None yet: format 1 is every file so far, those
#: written before the key existed included.
CONFIG_MIGRATIONS: Final[tuple[Callable[[dict[str, Any]], dict[str, Any]], ...]] = ()


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


# -- value parsers: (key, raw value) -> the validated value, or ConfigError naming the key


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


_TRUE: Final = ("true", "yes", "1", "on")
_FALSE: Final = ("false", "no", "0", "off")


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (*_TRUE, *_FALSE):
        return value.lower() in _TRUE
    raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(choices)}")
    return value


def _optional_address(key: str, value: Any) -> str:
    """An address that may be left empty (``""`` is the default: none)."""
    text = str(value)
    if text:
        parse_address(text, key=key)
    return text


def _seeds(key: str, value: Any) -> tuple[str, ...]:
    seeds = _str_list(key, value)
    for seed in seeds:
        parse_address(seed, key=key)
    return seeds


def _labels(key: str, value: Any) -> tuple[str, ...]:
    labels = _str_list(key, value)
    for label in labels:
        if "=" not in label:
            raise ConfigError(f"config key {key!r}: {label!r} is not NAME=VALUE")
        if label.partition("=")[0].strip().startswith("gridnode."):
            # gridnode.state=leaving marks a node that drains to leave (gridnode.leave).
            raise ConfigError(f"config key {key!r}: label names gridnode.* are reserved")
    return labels


def _size(key: str, value: Any) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"config key {key!r}: {exc}") from None


def _redundancy(key: str, value: Any) -> str:
    from .logic.packing import ErasureParams  # only when a config is read: the CLI is lazy

    try:
        return str(ErasureParams.parse(str(value)))
    except ValueError as exc:
        raise ConfigError(f"config key {key!r}: {exc}") from None


def _band(key: str, value: Any) -> str:
    text = str(value)
    if text:
        from .logic.distance import parse_band  # only when a config is read

        try:
            parse_band(text)
        except ValueError as exc:
            raise ConfigError(f"config key {key!r}: {exc}") from None
    return text


def _storage_dir(key: str, value: Any) -> str:
    """A directory path, kept as given (``NodeConfig.packet_root`` resolves it)."""
    if not isinstance(value, str):
        raise ConfigError(f"config key {key!r}: expected a directory path, got {value!r}")
    text = value.strip()
    if "\x00" in text:
        raise ConfigError(f"config key {key!r}: a path cannot hold a NUL character")
    return text


def _dedup_group(key: str, value: Any) -> str:
    text = str(value)
    if text:
        from .dedup_group import check_group_name  # only when a config is read

        try:
            check_group_name(text)
        except ValueError as exc:
            raise ConfigError(f"config key {key!r}: {exc}") from None
    return text


def _authority_key(key: str, value: Any) -> str:
    text = str(value)
    if not text:
        return ""
    try:
        grid_key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"config key {key!r}: not hex") from None
    if len(grid_key) != 32:
        raise ConfigError(f"config key {key!r}: must be 32 bytes (64 hex digits)")
    return grid_key.hex()


def _grid_id(key: str, value: Any) -> bytes:
    try:
        return bytes.fromhex(str(value))
    except ValueError:
        raise ConfigError(f"config key {key!r}: not hex") from None


def _metrics_listen(key: str, value: Any) -> str:
    text = str(value)
    if text:
        check_metrics_address(text)
    return text


def migrate_values(raw: dict[str, Any]) -> dict[str, Any]:
    """A config file's values in this version's format (``CONFIG_FORMAT``): a file
    without ``config_format`` is format 1; a newer one is a ConfigError."""
    found = raw.get("config_format", 1)
    if type(found) is not int or found < 1:
        raise ConfigError(f"config key 'config_format': {found!r} is not a format number")
    if found > CONFIG_FORMAT:
        raise ConfigError(
            f"config key 'config_format': this file is format {found}, written by a newer "
            f"gridnode; this one reads formats up to {CONFIG_FORMAT} (upgrade gridnode)"
        )
    values = dict(raw)
    for step in CONFIG_MIGRATIONS[found - 1 :]:
        values = step(values)
    values["config_format"] = CONFIG_FORMAT
    return values


def _read_config_format(key: str, value: Any) -> dict[str, Any]:
    if value != CONFIG_FORMAT:  # migrate_values has run: only a hand-built mapping gets here
        raise ConfigError(f"config key {key!r}: format {value!r}, expected {CONFIG_FORMAT}")
    return {}


def resolve_location(text: str) -> tuple[float, float, str]:
    """``"CITY"`` or ``"LAT,LON"`` -> (lat, lon, display name)."""
    from .logic.cities import parse_location  # the city table loads only when needed

    try:
        lat, lon, city = parse_location(text)
    except ValueError as exc:
        raise ConfigError(f"config key 'location': {exc}") from None
    return lat, lon, city or ""


class ConfigKey(NamedTuple):
    """One key of ``gridnode.toml``.

    ``read`` turns the file's value into NodeConfig field values (most keys fill one
    field; ``listen`` fills two, the ``location`` alias three); ``write`` gives the
    file's value back from a NodeConfig.  ``default`` is in the file's spelling, ``None``
    when the key has none (it is then left out of the file)."""

    name: str
    kind: str
    default: Any
    help: str
    read: Callable[[str, Any], dict[str, Any]]
    write: Callable[[Any], Any]
    bounds: str = ""
    #: ``--set KEY=VALUE`` may give it (to ``init`` and ``run``); the grid file's keys may
    #: not: a node that overrides its grid's id or authority joins no grid.
    settable: bool = True
    #: Written even at its default (the grid file's keys: a reader sees whose node it is).
    always: bool = False
    #: Input only (``location``): read, never written nor shown.
    alias: bool = False
    #: A flag of its own: "run" (``init`` and ``run``), "init" (``init`` only) or "".
    flag: str = ""
    #: Keys this one replaces when given (``location`` sets city, latitude, longitude).
    replaces: tuple[str, ...] = ()
    #: The values a choice may take (also the flag's choices).
    choices: tuple[str, ...] = ()
    #: Why ``--set`` may not give it, when the reason is not the grid file.
    not_settable: str = ""
    #: The flag's spelling when it is not ``--`` + the name (``--storage``).
    flag_name: str = ""


def flag_of(key: ConfigKey) -> str:
    """The command-line flag of a key declared with one: ``--log-level`` for
    ``log_level`` unless the key names its own (``storage_dir`` is ``--storage``)."""
    return key.flag_name or "--" + key.name.replace("_", "-")


def _one(
    field: str, parse: Callable[[str, Any], Any]
) -> tuple[Callable[[str, Any], dict[str, Any]], Callable[[Any], Any]]:
    """read/write for a key that is one NodeConfig field, written as it is held."""

    def read(key: str, value: Any) -> dict[str, Any]:
        return {field: parse(key, value)}

    def write(config: Any) -> Any:
        held = getattr(config, field)
        return list(held) if isinstance(held, tuple) else held

    return read, write


def _key(
    name: str,
    kind: str,
    default: Any,
    help: str,
    parse: Callable[[str, Any], Any],
    *,
    field: str = "",
    **more: Any,
) -> ConfigKey:
    read, write = _one(field or name, parse)
    return ConfigKey(name, kind, default, help, read, write, **more)


def _text(key: str, value: Any) -> str:
    return str(value)


def _plain(number: float) -> str:
    """A number as the reference page shows it: ``2592000``, not ``2.592e+06``."""
    return str(int(number)) if float(number).is_integer() else repr(number)


def _number(name: str, default: float, lo: float, hi: float, help: str) -> ConfigKey:
    def parse(key: str, value: Any) -> float:
        return _float(key, value, lo, hi)

    return _key(name, "number", default, help, parse, bounds=f"{_plain(lo)}..{_plain(hi)}")


def _integer(name: str, default: int, lo: int, hi: int, help: str) -> ConfigKey:
    def parse(key: str, value: Any) -> int:
        return _int(key, value, lo, hi)

    return _key(name, "integer", default, help, parse, bounds=f"{lo}..{hi}")


def _choices(
    name: str, default: str, choices: tuple[str, ...], help: str, *, lower: bool, **more: Any
) -> ConfigKey:
    def parse(key: str, value: Any) -> str:
        text = str(value)
        return _choice(key, text.lower() if lower else text, choices)

    return _key(
        name, "choice", default, help, parse, bounds=" | ".join(choices), choices=choices, **more
    )


def _read_listen(key: str, value: Any) -> dict[str, Any]:
    host, port = parse_address(str(value), key=key)
    return {"listen_host": host, "listen_port": port}


def _write_listen(config: Any) -> str:
    return f"{config.listen_host}:{config.listen_port}"


def _read_location(key: str, value: Any) -> dict[str, Any]:
    lat, lon, city = resolve_location(str(value))
    return {"lat": lat, "lon": lon, "city": city}


def _schedule_rule(where: str, key: str, text: str) -> str:
    """A schedule's ``redundancy`` (normalised) or distance band, checked as the node's."""
    from .logic.distance import parse_band  # only when a config is read: the CLI is lazy
    from .logic.packing import ErasureParams

    try:
        if key == "redundancy":
            return str(ErasureParams.parse(text))
        parse_band(text)
    except ValueError as exc:
        raise ScheduleError(f"{where} key {key!r}: {exc}") from None
    return text


def _read_schedules(key: str, value: Any) -> dict[str, Any]:
    try:
        return {"schedules": parse_schedules(value, check=_schedule_rule)}
    except ScheduleError as exc:
        raise ConfigError(f"config key {key!r}: {exc}") from None


_DAY: Final = 86400.0

#: Every key, in the order ``gridnode config show`` lists them.
CONFIG_KEYS: Final[tuple[ConfigKey, ...]] = (
    ConfigKey(
        "grid_id",
        "hex",
        None,
        "the grid's id, from the grid file (required)",
        lambda key, value: {"grid_id": _grid_id(key, value)},
        lambda config: config.grid_id.hex(),
        settable=False,
        always=True,
    ),
    _key(
        "grid_name",
        "string",
        "",
        "the grid's name, from the grid file",
        _text,
        settable=False,
        always=True,
    ),
    ConfigKey(
        "config_format",
        "integer",
        CONFIG_FORMAT,
        "the format of this file, written by gridnode: a newer one is refused, an older "
        "one migrated on load",
        _read_config_format,
        lambda config: CONFIG_FORMAT,
        settable=False,
        always=True,
        not_settable="--set config_format: gridnode writes the file's format itself",
    ),
    ConfigKey(
        "listen",
        "HOST:PORT",
        "127.0.0.1:7400",
        "HOST:PORT to listen on for peers",
        _read_listen,
        _write_listen,
        bounds="port 0..65535",
        flag="run",
    ),
    _key(
        "advertise",
        "HOST:PORT",
        "",
        "HOST:PORT other members dial (required with a wildcard listen such as 0.0.0.0)",
        _optional_address,
        flag="run",
    ),
    _key("seeds", "list of HOST:PORT", [], "members to join through", _seeds),
    _key("city", "string", "", "the node's city, as shown to members", _text),
    _key(
        "latitude",
        "number",
        None,
        "the node's latitude (with longitude)",
        lambda key, value: _float(key, value, -90.0, 90.0),
        field="lat",
        bounds="-90..90",
    ),
    _key(
        "longitude",
        "number",
        None,
        "the node's longitude (with latitude)",
        lambda key, value: _float(key, value, -180.0, 180.0),
        field="lon",
        bounds="-180..180",
    ),
    ConfigKey(
        "location",
        '"CITY" or LAT,LON',
        None,
        "where the node is, a city or LAT,LON; read as city, latitude and longitude",
        _read_location,
        lambda config: None,
        alias=True,
        flag="run",
        replaces=("city", "latitude", "longitude"),
    ),
    ConfigKey(
        "allocate",
        "size",
        "10GB",
        "storage to offer the grid, e.g. 50GB or 1.5TiB",
        lambda key, value: {"allocated_bytes": _size(key, value)},
        lambda config: str(config.allocated_bytes),
        bounds="at most the storage disk's free space (checked by init, which fits the default)",
        flag="run",
    ),
    # The packets held for others may live on another disk than the home (issue 12);
    # holdings.sqlite stays in HOME/storage (gridnode/storage/location.py says why).
    _key(
        "storage_dir",
        "path",
        "",
        "directory of the packets held for others, e.g. on another disk; empty: HOME/storage",
        _storage_dir,
        bounds="a directory (init makes it); relative in the file: to the home",
        flag="init",
        flag_name="--storage",
    ),
    # Info by default: a long-running node says what it does (members, jobs, a periodic
    # summary); warning keeps only what needs a look.
    _choices(
        "log_level",
        "info",
        LOG_LEVELS,
        "how much the node logs to stderr",
        lower=True,
        flag="run",
    ),
    _choices(
        "location_check",
        "enforce",
        LOCATION_CHECKS,
        "check members' claimed locations against round-trip times",
        lower=False,
        flag="run",
    ),
    _key("labels", "list of NAME=VALUE", [], "failure-domain labels", _labels),
    # 10-of-30 keeps a 100 GB backup on home machines (up a third of the day) under a 1 %
    # yearly chance of losing any file (docs/DURABILITY.md); a grid needs at least N
    # members besides the source.
    _key(
        "redundancy",
        "K/N",
        "10/30",
        "default K/N erasure coding of backups",
        _redundancy,
        flag="init",
    ),
    _key(
        "backup_proximity",
        "MIN:MAX",
        "",
        "default distance band source->targets (km or mi)",
        _band,
        flag="init",
    ),
    _key(
        "packet_proximity",
        "MIN:MAX",
        "",
        "default distance band between targets (km or mi)",
        _band,
        flag="init",
    ),
    # Opt-in (claims 4, 5, 20; gridnode/dedup_group.py): members share chunk ids, keys and
    # placement of data chunks, and can learn which chunks the others stored.
    _key(
        "dedup_group",
        "name",
        "",
        "dedup group whose members store shared data once (empty: none); "
        "given with --convergence-secret-file at init",
        _dedup_group,
        flag="init",
        settable=False,
        not_settable="--set dedup_group: a node joins a dedup group at `gridnode init "
        "--dedup-group NAME --convergence-secret-file FILE`, which puts the group's key in "
        "the home beside it",
    ),
    _key("seal_payloads", "boolean", False, "seal packet payloads", _bool),
    _integer("bandwidth_bps", 100_000_000, 0, 10**13, "upload bandwidth in bits per second"),
    # Unused since the control channel became a Unix socket (gridnode/control.py); still
    # read so that existing config files load unchanged.
    _integer("control_port", 0, 0, 65535, "unused (the control channel is a Unix socket)"),
    _key(
        "metrics_listen",
        "HOST:PORT",
        "",
        "loopback HOST:PORT for the Prometheus endpoint; empty turns it off",
        _metrics_listen,
        bounds="loopback only",
    ),
    # gridnode.dashboard: port 0 lets the kernel pick a free port (`gridnode dashboard`
    # prints the URL); every page needs the one-time login link's cookie, even on loopback.
    _key(
        "dashboard_listen",
        "HOST:PORT",
        "127.0.0.1:0",
        "HOST:PORT of the browser dashboard (port 0: any free port); empty turns it off",
        _optional_address,
        bounds="login token always",
    ),
    _number(
        "summary_interval_s",
        600.0,
        0.0,
        _DAY,
        "seconds between the node's summary log lines (node_summary); 0 turns them off",
    ),
    _number("grace_period_s", 3.0, 0.0, 60.0, "seconds a stopping node gives its work"),
    _number("request_timeout_s", 30.0, 0.1, 3600.0, "seconds a request to a member may take"),
    # A stranger that sends nothing, or drips, is cut off after it.
    _number(
        "handshake_timeout_s",
        10.0,
        0.5,
        120.0,
        "seconds for a new connection's websocket upgrade and session handshake",
    ),
    _integer("max_frame_bytes", 16 * 1024 * 1024, 4096, 64 << 20, "largest frame accepted"),
    _number("gossip_probe_interval_s", 1.0, 0.05, 60.0, "seconds between membership probes"),
    _number("gossip_sync_interval_s", 30.0, 0.5, 3600.0, "seconds between membership syncs"),
    _number("gossip_dead_reap_s", 120.0, 1.0, _DAY * 7, "seconds a dead member is remembered"),
    # Also capped by the descriptor limit.
    _integer(
        "max_sessions",
        512,
        2,
        1 << 20,
        "authenticated sessions kept at once; at the cap the quietest gives way",
    ),
    _number("session_idle_s", 120.0, 0.1, _DAY, "seconds before an idle session is closed"),
    # Counted from the holder's last-seen time, kept in the catalog across restarts.  A
    # week rides out the nights and holidays of home machines; an hour would move every
    # packet nightly.
    _number(
        "repair_after_s",
        604800.0,
        0.0,
        _DAY * 365,
        "seconds unseen before a holder's packets are rebuilt elsewhere; 0 turns it off",
    ),
    # 1 repairs at the first gone holder; 2 halves the repair traffic for little loss.
    # The reader lowers the default to N - K for a thinner code.
    _integer(
        "repair_threshold",
        2,
        1,
        256,
        "gone holders of a chunk that trigger its repair (at most N - K; default min(2, N - K))",
    ),
    # gridnode.delegation: two survive one delegate leaving with the source.
    _integer(
        "repair_delegates",
        2,
        0,
        16,
        "members holding a repair capability for this node's snapshots; 0 turns it off",
    ),
    _number(
        "repair_lease_s",
        30 * _DAY,
        2.0,
        _DAY * 90,
        "seconds a delegate keeps a capability without renewal (repair outlives the source)",
    ),
    # gridnode.audit: a proof is about 1.5 KiB, so 8 a minute is some 200 bytes a second
    # per source however much it stores; a holder that drops a tenth of what it holds
    # is caught within the hour for a few hundred packets.
    _number(
        "audit_interval_s",
        60.0,
        0.0,
        _DAY,
        "seconds between storage audit rounds (challenges to holders); 0 turns audits off",
    ),
    _integer("audit_batch", 8, 1, 1024, "packets challenged per storage audit round"),
    # A score is the weighted mean of recent outcomes (pass 1, fail 0, miss 0.5), so a
    # holder that is only offline settles at 0.5 and stays trusted: only failed proofs
    # (packets lost or rotten) bring it below.  Four failures in a row do from 1.0.
    _number(
        "audit_threshold",
        0.5,
        0.0,
        1.0,
        "audit score below which a holder gets no new packets and its packets move; 0 turns it off",
    ),
    # gridnode.leases: a laptop off for weeks keeps its packets (60 days), renewed weekly
    # (about 70 bytes a packet a week); a source gone for good stops costing anyone space
    # a lease and a grace later.
    _number(
        "lease_s",
        60 * _DAY,
        2.0,
        _DAY * 730,
        "seconds a holder keeps a packet after its last lease renewal (asked and granted)",
    ),
    _number(
        "lease_renew_interval_s",
        7 * _DAY,
        1.0,
        _DAY * 365,
        "seconds between renewals of this node's leases (at most half of lease_s is used)",
    ),
    _number(
        "lease_grace_s",
        _DAY,
        0.0,
        _DAY * 30,
        "seconds a holder waits after a lease ended before it reclaims the packet",
    ),
    _number(
        "lease_sweep_interval_s",
        3600.0,
        0.0,
        _DAY,
        "seconds between runs of the collector (leases, retried deletes, orphans); 0: never",
    ),
    # A backup interrupted tonight is usually resumed tomorrow and reuses what it stored.
    _number(
        "orphan_grace_s",
        3 * _DAY,
        0.0,
        _DAY * 365,
        "seconds before packets of a backup that never completed are released",
    ),
    _key(
        "authority_key",
        "hex",
        "",
        "the grid authority's public key, from the grid file; empty on an open grid",
        _authority_key,
        bounds="32 bytes",
        settable=False,
    ),
    _key(
        "authority_address",
        "HOST:PORT",
        "",
        "where to subscribe to the grid authority, from the grid file",
        _optional_address,
        settable=False,
    ),
    _number(
        "certificate_lifetime_s",
        30 * _DAY,
        2.0,
        _DAY * 3650,
        "authority: seconds a certificate it issues is valid (nodes renew at half)",
    ),
    _number(
        "revocation_poll_s",
        300.0,
        0.2,
        _DAY,
        "seconds between asking the authority for revocations",
    ),
    _number(
        "log_forward_s",
        300.0,
        0.2,
        _DAY,
        "seconds between forwarding the backup log to the authority (also after each job)",
    ),
    _number(
        "billing_period_s", 30 * _DAY, 1.0, _DAY * 3650, "the billing period of metering and fees"
    ),
    _number(
        "usage_report_interval_s",
        3600.0,
        1.0,
        _DAY * 31,
        "seconds between signed usage reports to the authority",
    ),
    # gridnode.scheduler runs them; the table's keys are listed below the key table.
    ConfigKey(
        "schedule",
        "array of tables",
        [],
        "backups the node runs by itself ([[schedule]] tables: see Schedules below)",
        _read_schedules,
        lambda config: [schedule.to_toml() for schedule in config.schedules],
        bounds="unique names",
        settable=False,
        not_settable="--set schedule: schedules are tables; write them in HOME/gridnode.toml "
        "as [[schedule]] (docs/CONFIG.md, Schedules)",
    ),
)

KEYS_BY_NAME: Final = {key.name: key for key in CONFIG_KEYS}


def field_defaults() -> dict[str, Any]:
    """NodeConfig's field defaults, read from the declared defaults (so they are the
    same value as a file without the key gives).  Runs the validators, some of which
    import the grid's logic: ``gridnode.config`` calls it, the CLI's parser never."""
    fields: dict[str, Any] = {"lat": None, "lon": None}
    for key in CONFIG_KEYS:
        if key.default is not None and not key.alias:
            fields.update(key.read(key.name, key.default))
    return fields


def check_settable(name: str) -> ConfigKey:
    """The declaration ``--set NAME=...`` may give, or ConfigError saying why not."""
    key = KEYS_BY_NAME.get(name)
    if key is None:
        import difflib  # only on this error path: the CLI's parser imports this module

        close = difflib.get_close_matches(name, KEYS_BY_NAME, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"--set {name}: unknown config key ({hint}`gridnode config reference` lists them)"
        )
    if not key.settable and key.not_settable:
        raise ConfigError(key.not_settable)
    if not key.settable:
        raise ConfigError(
            f"--set {name}: config key {name!r} comes from the grid file and cannot be set "
            "(init the node again with the right --grid FILE)"
        )
    return key


def _shown(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, int | float):
        return _plain(value)
    return str(value)


def reference_markdown() -> str:
    """``docs/CONFIG.md``: the reference page, generated from the declarations (a test
    fails when the page and the declarations differ)."""
    lines = [
        "# Node configuration reference",
        "",
        "<!-- Generated from gridnode/config_keys.py by `gridnode config reference`;"
        " do not edit. -->",
        "",
        "Each node reads `HOME/gridnode.toml`, written by `gridnode init`.  The file holds",
        "only the keys that differ from their default (and the grid file's keys), so a",
        "changed default reaches existing nodes.  `gridnode init` and `gridnode run` take",
        "`--set KEY=VALUE` for any key marked settable; `gridnode config show --home DIR`",
        "prints every key as the node reads it.",
        "",
        "| key | type | default | bounds | `--set` | description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key in CONFIG_KEYS:
        settable = "yes" if key.settable else "no"
        flag = f" (flag `{flag_of(key)}`)" if key.flag else ""
        cells = (
            f"`{key.name}`",
            key.kind,
            _shown(key.default).replace("|", "\\|"),
            key.bounds.replace("|", "\\|"),
            settable,
            f"{key.help}{flag}".replace("|", "\\|"),
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Schedules",
        "",
        "Each `[[schedule]]` table is a backup the node runs by itself, one at a time;",
        "`gridnode schedule list --home DIR` shows when each runs next and how its last run",
        "went.  A schedule that never ran runs when the node starts (`every`) or at its",
        "next time (`at`); one whose time passed while the node was off runs soon after it",
        "comes back, once.  A failed run is tried again at the next time.  After a",
        "successful run, `keep` forgets the schedule's older snapshots (restic's rules, as",
        "`gridnode forget --keep-*`; other snapshots are never touched).",
        "",
        "```toml",
        "[[schedule]]",
        'name = "home"',
        'paths = ["~/Documents", "/etc"]',
        'exclude = ["*.tmp"]',
        'every = "6h"',
        "keep = { last = 7, daily = 7, weekly = 4 }",
        "```",
        "",
        "| key | type | description |",
        "| --- | --- | --- |",
    ]
    for name, kind, text in SCHEDULE_FIELDS:
        lines.append(f"| `{name}` | {kind} | {text} |")
    return "\n".join(lines) + "\n"
