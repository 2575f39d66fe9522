"""Every config key is declared once (``gridnode.config_keys``) and everything else is
derived from it: the reader, the writer (only non-default keys), NodeConfig's defaults,
the ``init``/``run`` flags and ``--set``, and ``docs/CONFIG.md`` (issue 12)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

from gridnode.cli import build_parser, iter_commands
from gridnode.config import (
    CONFIG_NAME,
    ConfigError,
    GridFile,
    NodeConfig,
    build_config,
    dump_toml,
    load_config,
)
from gridnode.config_keys import CONFIG_KEYS, KEYS_BY_NAME, field_defaults, reference_markdown

ROOT = Path(__file__).resolve().parents[2]
GRID = {"grid_id": "00" * 16}

#: A value other than the default for every key (with the keys it must go with), and
#: how ``to_values`` spells it back.
SAMPLES: dict[str, tuple[dict[str, Any], Any]] = {
    "grid_id": ({"grid_id": "ab" * 16}, "ab" * 16),
    "grid_name": ({"grid_name": "office"}, "office"),
    "config_format": ({}, 1),  # only gridnode writes it; tests/gridnode/test_config_format.py
    "listen": ({"listen": "127.0.0.1:9000"}, "127.0.0.1:9000"),
    "advertise": ({"advertise": "10.0.0.7:7400"}, "10.0.0.7:7400"),
    "seeds": ({"seeds": ["127.0.0.1:9001", "[::1]:9002"]}, ["127.0.0.1:9001", "[::1]:9002"]),
    "city": ({"city": "Atlantis"}, "Atlantis"),
    "latitude": ({"latitude": -33.87, "longitude": 151.21}, -33.87),
    "longitude": ({"latitude": 10, "longitude": -20.5}, -20.5),
    "allocate": ({"allocate": "2GB"}, "2000000000"),
    "storage_dir": ({"storage_dir": "/mnt/bulk/gridnode"}, "/mnt/bulk/gridnode"),
    "log_level": ({"log_level": "WARNING"}, "warning"),
    "location_check": ({"location_check": "warn"}, "warn"),
    "labels": ({"labels": ["site=a", "rack=b"]}, ["site=a", "rack=b"]),
    "redundancy": ({"redundancy": "4/6"}, "4/6"),
    "backup_proximity": ({"backup_proximity": "100km:3000km"}, "100km:3000km"),
    "packet_proximity": ({"packet_proximity": "10km:500km"}, "10km:500km"),
    "dedup_group": ({"dedup_group": "family.home"}, "family.home"),
    "seal_payloads": ({"seal_payloads": "yes"}, True),
    "bandwidth_bps": ({"bandwidth_bps": "5000"}, 5000),
    "control_port": ({"control_port": 7401}, 7401),
    "metrics_listen": ({"metrics_listen": "127.0.0.1:9100"}, "127.0.0.1:9100"),
    "dashboard_listen": ({"dashboard_listen": ""}, ""),
    "summary_interval_s": ({"summary_interval_s": 0}, 0.0),
    "grace_period_s": ({"grace_period_s": 2}, 2.0),
    "request_timeout_s": ({"request_timeout_s": "12.5"}, 12.5),
    "handshake_timeout_s": ({"handshake_timeout_s": 3}, 3.0),
    "max_frame_bytes": ({"max_frame_bytes": 8192}, 8192),
    "gossip_probe_interval_s": ({"gossip_probe_interval_s": 0.2}, 0.2),
    "gossip_sync_interval_s": ({"gossip_sync_interval_s": 5}, 5.0),
    "gossip_dead_reap_s": ({"gossip_dead_reap_s": 600}, 600.0),
    "max_sessions": ({"max_sessions": 64}, 64),
    "session_idle_s": ({"session_idle_s": 60}, 60.0),
    "repair_after_s": ({"repair_after_s": 0}, 0.0),
    "repair_threshold": ({"repair_threshold": 5}, 5),
    "repair_delegates": ({"repair_delegates": 0}, 0),
    "repair_lease_s": ({"repair_lease_s": 100}, 100.0),
    "audit_interval_s": ({"audit_interval_s": 0}, 0.0),
    "audit_batch": ({"audit_batch": 3}, 3),
    "audit_threshold": ({"audit_threshold": 0.25}, 0.25),
    "lease_s": ({"lease_s": 86400}, 86400.0),
    "lease_renew_interval_s": ({"lease_renew_interval_s": 3600}, 3600.0),
    "lease_grace_s": ({"lease_grace_s": 0}, 0.0),
    "lease_sweep_interval_s": ({"lease_sweep_interval_s": 60}, 60.0),
    "orphan_grace_s": ({"orphan_grace_s": 600}, 600.0),
    "authority_key": (
        {"authority_key": "11" * 32, "authority_address": "10.0.0.5:7400"},
        "11" * 32,
    ),
    "authority_address": (
        {"authority_key": "22" * 32, "authority_address": "10.0.0.6:7400"},
        "10.0.0.6:7400",
    ),
    "certificate_lifetime_s": ({"certificate_lifetime_s": 3600}, 3600.0),
    "revocation_poll_s": ({"revocation_poll_s": 1}, 1.0),
    "log_forward_s": ({"log_forward_s": 2}, 2.0),
    "billing_period_s": ({"billing_period_s": 3}, 3.0),
    "usage_report_interval_s": ({"usage_report_interval_s": 60}, 60.0),
    "schedule": (
        {"schedule": [{"name": "home", "paths": ["/home/me"], "every": "6h", "keep": {"last": 7}}]},
        [{"name": "home", "paths": ["/home/me"], "every": "6h", "keep": {"last": 7}}],
    ),
}


def test_every_key_has_a_sample_and_every_field_a_key() -> None:
    written = {key.name for key in CONFIG_KEYS if not key.alias}
    assert set(SAMPLES) == written
    fields = {f.name for f in attrs.fields(NodeConfig)} - {"home"}
    assert set(field_defaults()) | {"grid_id"} == fields
    assert len(KEYS_BY_NAME) == len(CONFIG_KEYS), "a key is declared twice"


def test_nodeconfig_defaults_are_the_declared_ones(tmp_path: Path) -> None:
    fields = attrs.fields_dict(NodeConfig)
    for name, value in field_defaults().items():
        assert fields[name].default == value, name
    config = build_config(tmp_path, GRID)
    for key in CONFIG_KEYS:
        if key.default is not None and not key.alias:
            again = build_config(tmp_path, {**GRID, key.name: key.default}).to_values()
            assert again[key.name] == config.to_values()[key.name], key.name


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_key_round_trips_through_the_file(tmp_path: Path, name: str) -> None:
    values, shown = SAMPLES[name]
    config = build_config(tmp_path, {**GRID, **values})
    assert config.to_values()[name] == shown
    config.save()
    on_disk = tomllib.loads((tmp_path / CONFIG_NAME).read_text(encoding="utf-8"))
    assert on_disk[name] == shown
    assert load_config(tmp_path) == config


def test_only_keys_that_differ_from_their_default_are_written(tmp_path: Path) -> None:
    build_config(tmp_path, GRID).save()
    text = (tmp_path / CONFIG_NAME).read_text(encoding="utf-8")
    assert set(tomllib.loads(text)) == {"grid_id", "grid_name", "config_format"}
    config = build_config(
        tmp_path, {**GRID, "allocate": "2GB", "redundancy": "2/3", "log_level": "info"}
    )
    assert config.repair_threshold == 1  # the default follows the redundancy: N - K
    config.save()
    on_disk = tomllib.loads((tmp_path / CONFIG_NAME).read_text(encoding="utf-8"))
    assert set(on_disk) == {"grid_id", "grid_name", "config_format", "allocate", "redundancy"}
    assert load_config(tmp_path) == config


def test_a_file_with_every_key_still_loads(tmp_path: Path) -> None:
    """Files written before only non-default keys were written hold every key."""
    config = build_config(tmp_path, {**GRID, "location": "Zürich", "allocate": "3GB"})
    (tmp_path / CONFIG_NAME).write_text(dump_toml(config.to_values()), encoding="utf-8")
    assert load_config(tmp_path) == config


def test_unknown_and_invalid_keys_are_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / CONFIG_NAME).write_text(
        dump_toml({**GRID, "max_frame_byte": 4096}), encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r"unknown config key.*max_frame_byte"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="config key 'max_frame_bytes': 1 is outside"):
        build_config(tmp_path, {**GRID, "max_frame_bytes": 1})
    with pytest.raises(ConfigError, match="config key 'allocate': "):
        build_config(tmp_path, {**GRID, "allocate": "5 parsecs"})


def test_the_reference_page_is_up_to_date() -> None:
    page = (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert page == reference_markdown(), (
        "docs/CONFIG.md is out of date: run `gridnode config reference > docs/CONFIG.md`"
    )
    for key in CONFIG_KEYS:
        assert f"`{key.name}`" in page


def test_the_init_and_run_flags_are_the_declared_ones() -> None:
    commands = dict(iter_commands(build_parser()))
    flagged = {key.name: key for key in CONFIG_KEYS if key.flag}
    for command, flags in (("init", {"run", "init"}), ("run", {"run"})):
        actions = {a.dest: a for a in commands[(command,)]._actions}
        for name, key in flagged.items():
            assert (name in actions) == (key.flag in flags), (command, name)
            if name in actions and key.choices:
                assert tuple(actions[name].choices or ()) == key.choices


def _gridnode(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "gridnode", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _grid(tmp_path: Path, name: str = "lab") -> Path:
    out = tmp_path / "grid.toml"
    _gridnode("grid", "create", name, "--out", str(out), "--open")
    return out


def test_init_set_is_written_and_grid_keys_cannot_be_set(tmp_path: Path) -> None:
    grid = _grid(tmp_path)
    home = tmp_path / "home"
    common = ("init", "--home", str(home), "--grid", str(grid), "--allocate", "1GB")
    refused = _gridnode(*common, "--set", "grid_id=" + "00" * 16, check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "--set grid_id" in refused.stderr and "grid file" in refused.stderr
    unknown = _gridnode(*common, "--set", "max_frame_byte=8192", check=False)
    assert unknown.returncode != 0 and "max_frame_byte" in unknown.stderr
    assert not (home / CONFIG_NAME).exists()
    _gridnode(*common, "--set", "max_frame_bytes=8192")
    on_disk = tomllib.loads((home / CONFIG_NAME).read_text(encoding="utf-8"))
    assert on_disk["max_frame_bytes"] == 8192 and on_disk["allocate"] == "1000000000"
    assert "gossip_probe_interval_s" not in on_disk  # left at its default
    assert load_config(home).max_frame_bytes == 8192
    run = _gridnode("run", "--home", str(home), "--set", "authority_key=" + "11" * 32, check=False)
    assert run.returncode != 0 and "--set authority_key" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_grid_name_with_control_characters_round_trips(tmp_path: Path) -> None:
    name = 'bell\x07 and\nnewline "quoted" \\ back'
    path = tmp_path / "g.toml"
    GridFile(name=name, grid_id=bytes(16)).save(path)
    assert GridFile.load(path).name == name
    grid = _grid(tmp_path, name)
    assert GridFile.load(grid).name == name
    home = tmp_path / "home"
    _gridnode("init", "--home", str(home), "--grid", str(grid), "--allocate", "1GB")
    assert load_config(home).grid_name == name
    shown = json.loads(_gridnode("config", "show", "--home", str(home), "--json").stdout)
    assert shown["values"]["grid_name"] == name
    assert set(shown) == {"home", "values", "changed"}
    assert shown["changed"] == ["allocate", "grid_name"]
