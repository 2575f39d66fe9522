"""Config validation names the key; identities survive their key file or phrase alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gridnode.config import ConfigError, GridFile, build_config, load_config, parse_address
from gridnode.identity import KeyError_, NodeIdentity, load_identity, parse_recovery_phrase
from gridnode.units import format_bytes, parse_size

GRID = {"grid_id": "00" * 16}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("50GB", 50 * 10**9),
        ("1.5TiB", int(1.5 * 2**40)),
        ("4096", 4096),
        ("10 MiB", 10 * 2**20),
        (7, 7),
    ],
)
def test_sizes(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "12XB", "-5", "five", "1.2.3GB"])
def test_bad_sizes(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1536) == "1.5 KiB"
    # 1000 to 1023 of a unit: digits, never "1e+03 MiB" (seen on a 1 GB backup's progress).
    assert format_bytes(1010 * 1024**2) == "1010 MiB"
    assert format_bytes(999.4 * 1024**3) == "999 GiB"
    assert format_bytes(5000 * 1024**4) == "5000 TiB"


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"listen": "nowhere"}, "'listen'"),
        ({"allocate": "lots"}, "'allocate'"),
        ({"location": "Atlantis Prime"}, "'location'"),
        ({"location_check": "maybe"}, "'location_check'"),
        ({"latitude": 91, "longitude": 0}, "'latitude'"),
        ({"latitude": 10}, "'latitude' and 'longitude'"),
        ({"redundancy": "7/3"}, "'redundancy'"),
        ({"backup_proximity": "100"}, "'backup_proximity'"),
        ({"labels": ["norack"]}, "'labels'"),
        ({"log_level": "loud"}, "'log_level'"),
        ({"no_such_key": 1}, "no_such_key"),
        ({"seeds": ["x"]}, "'seeds'"),
        ({"repair_after_s": -1}, "'repair_after_s'"),
        ({"max_frame_bytes": 100}, "'max_frame_bytes'"),
        ({"authority_key": "11" * 32}, "'authority_key' and 'authority_address'"),
        ({"metrics_listen": "10.0.0.1:9100"}, "'metrics_listen'"),
    ],
)
def test_invalid_values_name_their_key(tmp_path: Path, values: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(tmp_path, {**GRID, **values})
    assert key in str(info.value)


def test_config_round_trips_through_toml(tmp_path: Path) -> None:
    config = build_config(
        tmp_path,
        {
            **GRID,
            "listen": "127.0.0.1:9000",
            "location": "Zürich",
            "allocate": "2GB",
            "seeds": ["127.0.0.1:9001"],
            "labels": ["site=a"],
            "location_check": "warn",
        },
    )
    assert config.city.startswith("Z") and 47 < (config.lat or 0) < 48
    config.save()
    again = load_config(tmp_path)
    assert again == config
    overridden = load_config(tmp_path, {"listen": "127.0.0.1:9100", "allocate": "1TB"})
    assert overridden.listen_port == 9100 and overridden.allocated_bytes == 10**12


def test_address_parsing() -> None:
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address("example.org:7400") == ("example.org", 7400)
    with pytest.raises(ConfigError):
        parse_address("127.0.0.1:99999")


@pytest.mark.parametrize("name", ["g", 'a "grid"\twith\x07control\ncharacters\x7f\\'])
def test_grid_file_round_trip(tmp_path: Path, name: str) -> None:
    grid = GridFile(name=name, grid_id=os.urandom(16), seeds=("127.0.0.1:1",))
    grid.save(tmp_path / "g.toml")
    assert GridFile.load(tmp_path / "g.toml") == grid


def test_key_file_is_private_and_recovers_every_secret(tmp_path: Path) -> None:
    identity = NodeIdentity.generate()
    path = tmp_path / "node.key"
    identity.write_key_file(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    again = load_identity(path)
    for attr in ("node_id", "dedup_secret", "sequence_key", "record_key", "root_locator"):
        assert getattr(again, attr) == getattr(identity, attr)
    assert (
        len(
            {
                identity.dedup_secret,
                identity.sequence_key,
                identity.record_key,
                identity.root_locator,
            }
        )
        == 4
    )
    os.chmod(path, 0o644)
    with pytest.raises(KeyError_) as info:
        load_identity(path)
    assert "chmod 600" in str(info.value)


def test_recovery_phrase_round_trip_and_typo_detection() -> None:
    identity = NodeIdentity.generate()
    phrase = identity.recovery_phrase()
    assert parse_recovery_phrase(phrase.lower().replace("-", " ")).node_id == identity.node_id
    typo = ("B" if phrase[0] != "B" else "C") + phrase[1:]
    with pytest.raises(KeyError_):
        parse_recovery_phrase(typo)
    with pytest.raises(KeyError_):
        parse_recovery_phrase("too-short")


def test_wildcard_listen_needs_an_advertised_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(tmp_path, {**GRID, "listen": "0.0.0.0:7400"})
    assert "'advertise'" in str(info.value)
    config = build_config(
        tmp_path, {**GRID, "listen": "0.0.0.0:7400", "advertise": "10.0.0.7:7400"}
    )
    assert config.advertise == "10.0.0.7:7400"
