"""The node config file carries its format (issue 12, safe upgrades): every file is
written with ``config_format``; a file from a newer gridnode is refused with a clear
message, an older one (a file without the key: every file before it) is migrated in
memory and written in this format when next saved."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from gridnode import config_keys
from gridnode.config import build_config, load_config
from gridnode.config_keys import CONFIG_FORMAT, ConfigError, check_settable, migrate_values
from gridnode.home_layout import CONFIG_NAME

GRID = {"grid_id": "00" * 16}


def _write(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / CONFIG_NAME).write_text(text, encoding="utf-8")


def test_every_file_names_its_format(tmp_path: Path) -> None:
    build_config(tmp_path, GRID).save()
    on_disk = tomllib.loads((tmp_path / CONFIG_NAME).read_text(encoding="utf-8"))
    assert on_disk["config_format"] == CONFIG_FORMAT == 1


def test_a_file_from_before_the_key_reads_as_format_1_and_is_saved_with_it(
    tmp_path: Path,
) -> None:
    _write(tmp_path, f'grid_id = "{"00" * 16}"\nallocate = "2000000000"\n')
    config = load_config(tmp_path)
    assert config.allocated_bytes == 2_000_000_000
    config.save()
    on_disk = tomllib.loads((tmp_path / CONFIG_NAME).read_text(encoding="utf-8"))
    assert on_disk["config_format"] == CONFIG_FORMAT


def test_a_file_from_a_newer_gridnode_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, f'grid_id = "{"00" * 16}"\nconfig_format = {CONFIG_FORMAT + 1}\n')
    with pytest.raises(ConfigError, match="newer gridnode") as info:
        load_config(tmp_path)
    assert f"format {CONFIG_FORMAT + 1}" in str(info.value)
    for bad in ("1", 0, True):
        with pytest.raises(ConfigError, match="config_format"):
            build_config(tmp_path, {**GRID, "config_format": bad})


def test_an_older_format_is_migrated_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a format 2 whose migration renames a key, a format-1 file still loads."""

    def rename(values: dict[str, Any]) -> dict[str, Any]:
        values = dict(values)
        values["allocate"] = values.pop("space")
        return values

    monkeypatch.setattr(config_keys, "CONFIG_FORMAT", 2)
    monkeypatch.setattr(config_keys, "CONFIG_MIGRATIONS", (rename,))
    migrated = migrate_values({**GRID, "config_format": 1, "space": "2GB"})
    assert migrated == {**GRID, "config_format": 2, "allocate": "2GB"}
    assert migrate_values({**GRID, "config_format": 2, "allocate": "1GB"})["allocate"] == "1GB"


def test_the_format_cannot_be_set() -> None:
    with pytest.raises(ConfigError, match="writes the file's format itself"):
        check_settable("config_format")
