"""Issue 12's operator leftovers at function level: the packet store on another
directory (``storage_dir``, ``init --storage``) and the checks that keep a node from
starting empty on the wrong one; the default home under ``$XDG_DATA_HOME``; the backup
summary in 80 columns.  Real directories, real packet stores, real ``gridnode``
processes for the CLI; no mocks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from blake3 import blake3

from gridnode.cli import build_parser, iter_commands
from gridnode.cli_common import SUMMARY_WIDTH, CliError, backup_summary
from gridnode.config import CONFIG_NAME, build_config, load_config
from gridnode.home_layout import DEFAULT_HOME_TEXT, default_home
from gridnode.storage.location import (
    LOCATION_RECORD,
    StorageLocationError,
    check_packet_root,
    open_packet_directory,
)
from gridnode.storage.packets import FORMAT_NAME

GRID = {"grid_id": "00" * 16}


def _packet(n: int) -> tuple[bytes, bytes]:
    data = f"packet {n} ".encode() * 100
    return blake3(data).digest(), data


def _new_home(tmp_path: Path, name: str = "home") -> Path:
    home = tmp_path / name
    (home / "storage").mkdir(parents=True)  # as the node makes it (holdings live there)
    return home


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# -- storage_dir --------------------------------------------------------------------------


def test_the_config_key_resolves_the_packet_root(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert build_config(home, GRID).packet_root == home / "storage"
    assert build_config(home, {**GRID, "storage_dir": "/mnt/bulk/gn"}).packet_root == Path(
        "/mnt/bulk/gn"
    )
    # Relative in the file: to the home, wherever the node is started from.
    assert build_config(home, {**GRID, "storage_dir": "../bulk"}).packet_root == (
        home / ".." / "bulk"
    )
    with pytest.raises(ValueError, match="config key 'storage_dir'"):
        build_config(home, {**GRID, "storage_dir": 5})


def test_a_store_on_another_directory_keeps_its_packets_across_opens(tmp_path: Path) -> None:
    home = _new_home(tmp_path)
    bulk = tmp_path / "bulk"
    bulk.mkdir()
    store = open_packet_directory(home, bulk, 10**6)
    packet_id, data = _packet(1)
    assert store.put(packet_id, data)
    assert (bulk / FORMAT_NAME).is_file() and store.path_for(packet_id).is_file()
    assert str(store.path_for(packet_id)).startswith(str(bulk))
    assert not (home / "storage" / "packets").exists()  # nothing in the home
    assert (home / "storage" / LOCATION_RECORD).read_text() == f"{bulk}\n"
    again = open_packet_directory(home, bulk, 10**6)
    assert again.get(packet_id) == data and again.used_bytes == len(data)


def test_a_missing_or_unmounted_store_is_refused_not_started_empty(tmp_path: Path) -> None:
    home = _new_home(tmp_path)
    bulk = tmp_path / "bulk"
    bulk.mkdir()
    store = open_packet_directory(home, bulk, 10**6)
    store.put(*_packet(1))
    # The disk is not mounted: the mount point is an empty directory.
    for part in (FORMAT_NAME, "packets", "incoming", "quarantine"):
        path = bulk / part
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    with pytest.raises(StorageLocationError, match="is its disk mounted") as refused:
        open_packet_directory(home, bulk, 10**6)
    assert str(home / "storage" / LOCATION_RECORD) in str(refused.value)  # the way out
    assert _tree(bulk) == []  # nothing was made there
    # Not even the mount point: the directory is gone.
    bulk.rmdir()
    with pytest.raises(StorageLocationError, match="is not a directory"):
        open_packet_directory(home, bulk, 10**6)
    assert not bulk.exists()


def test_a_new_storage_dir_is_refused_while_the_old_one_holds_packets(tmp_path: Path) -> None:
    home = _new_home(tmp_path)
    old = home / "storage"
    store = open_packet_directory(home, old, 10**6)  # the default: HOME/storage
    packet_id, data = _packet(2)
    store.put(packet_id, data)
    (old / LOCATION_RECORD).unlink()  # a home from before the record: still recognised
    new = tmp_path / "bulk"
    new.mkdir()
    with pytest.raises(StorageLocationError) as refused:
        open_packet_directory(home, new, 10**6)
    message = str(refused.value)
    assert "holds no packet store" in message and str(old) in message
    assert "stop the node, move FORMAT, packets, quarantine" in message
    assert _tree(new) == []
    # Moved as docs/OPERATING.md says: the store opens there, holdings stay.
    (old / "holdings.sqlite").write_bytes(b"")
    for part in (FORMAT_NAME, "packets", "quarantine"):
        (old / part).rename(new / part)
    moved = open_packet_directory(home, new, 10**6)
    assert moved.get(packet_id) == data
    assert (old / LOCATION_RECORD).read_text() == f"{new}\n"
    # And back to the default later: refused while it holds nothing and new holds all.
    with pytest.raises(StorageLocationError, match=re.escape(str(new))):
        open_packet_directory(home, old, 10**6)


def test_an_old_store_without_packets_lets_the_node_start_over(tmp_path: Path) -> None:
    home = _new_home(tmp_path)
    old = home / "storage"
    store = open_packet_directory(home, old, 10**6)
    packet_id, data = _packet(3)
    store.put(packet_id, data)
    store.delete(packet_id)  # its fan-out directories stay: they hold nothing
    assert (old / "packets" / packet_id.hex()[:2]).is_dir()
    new = tmp_path / "bulk"
    new.mkdir()
    open_packet_directory(home, new, 10**6).put(packet_id, data)
    assert (old / LOCATION_RECORD).read_text() == f"{new}\n"
    # Now the new one holds a packet: another empty directory is refused.
    (tmp_path / "other-empty").mkdir()
    with pytest.raises(StorageLocationError, match="this node's packets are in"):
        open_packet_directory(home, tmp_path / "other-empty", 10**6)


def test_holdings_moved_along_or_a_busy_directory_are_refused(tmp_path: Path) -> None:
    home = _new_home(tmp_path)
    moved_whole = tmp_path / "whole"
    moved_whole.mkdir()
    (moved_whole / "holdings.sqlite").write_bytes(b"")
    with pytest.raises(StorageLocationError, match=r"holdings\.sqlite, which stays in the home"):
        check_packet_root(home, moved_whole)
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "taxes.pdf").write_bytes(b"%PDF")
    (documents / "incoming").mkdir()  # the store empties its incoming/ at every start
    (documents / "incoming" / "mine.txt").write_bytes(b"keep me")
    with pytest.raises(StorageLocationError, match=r"not empty \(taxes.pdf\)"):
        open_packet_directory(home, documents, 10**6)
    assert (documents / "incoming" / "mine.txt").read_bytes() == b"keep me"
    mount = tmp_path / "mount"
    (mount / "lost+found").mkdir(parents=True)  # a fresh file system's root is fine
    open_packet_directory(home, mount, 10**6)


def _gridnode(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridnode", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=cwd,
    )


def test_init_storage_makes_the_directory_and_checks_its_disk(tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    assert _gridnode("grid", "create", "t", "--out", str(grid), "--open").returncode == 0
    (tmp_path / "bulk").mkdir()
    home = tmp_path / "home"
    common = ("init", "--home", str(home), "--grid", str(grid), "--listen", "127.0.0.1:0")
    # The allocation is checked against the disk of the storage directory (its nearest
    # existing parent), not the home's.
    done = _gridnode(*common, "--storage", "bulk/gn", "--allocate", "500PB", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"more than the disk of {tmp_path / 'bulk'} can give" in done.stderr
    assert not home.exists() and not (tmp_path / "bulk" / "gn").exists()
    done = _gridnode(*common, "--storage", "bulk/gn", "--allocate", "1GB", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    on_disk = tomllib.loads((home / CONFIG_NAME).read_text(encoding="utf-8"))
    # Relative on the command line: to where it ran, written absolute.
    assert on_disk["storage_dir"] == str(tmp_path / "bulk" / "gn")
    assert (tmp_path / "bulk" / "gn").is_dir()
    assert load_config(home).packet_root == tmp_path / "bulk" / "gn"
    assert f'"storage_dir": "{tmp_path / "bulk" / "gn"}"' in done.stdout
    # A directory of someone's files is refused by init too.
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    other = ("init", "--home", str(tmp_path / "h2"), "--grid", str(grid), "--allocate", "1GB")
    done = _gridnode(*other, "--storage", str(tmp_path / "docs"))
    assert done.returncode == 1 and "is not empty (a.txt)" in done.stderr


# -- the default home ---------------------------------------------------------------------


def test_the_default_home_follows_gridnode_home_then_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    monkeypatch.delenv("GRIDNODE_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert default_home() == tmp_path / "me" / ".local" / "share" / "gridnode"
    monkeypatch.setenv("XDG_DATA_HOME", "")  # empty: as unset (the XDG specification)
    assert default_home() == tmp_path / "me" / ".local" / "share" / "gridnode"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")  # invalid: ignored
    assert default_home() == tmp_path / "me" / ".local" / "share" / "gridnode"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_home() == tmp_path / "data" / "gridnode"
    monkeypatch.setenv("GRIDNODE_HOME", str(tmp_path / "gn"))
    assert default_home() == tmp_path / "gn"


def test_a_command_finds_its_home_under_xdg_data_home(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRIDNODE_HOME"}
    env |= {"HOME": str(tmp_path / "me"), "XDG_DATA_HOME": str(tmp_path / "data")}
    grid = tmp_path / "grid.toml"
    assert _gridnode("grid", "create", "t", "--out", str(grid), "--open").returncode == 0
    done = _gridnode("init", "--grid", str(grid), "--allocate", "1GB", env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "gridnode" / CONFIG_NAME).is_file()
    assert not (tmp_path / "me" / ".local").exists()
    done = _gridnode("status", env=env)  # the home is found; its node is not running: 5
    assert done.returncode == 5 and str(tmp_path / "data" / "gridnode") in done.stderr


def test_every_help_that_names_the_default_home_says_the_rule() -> None:
    named = 0
    for words, command in iter_commands(build_parser()):
        for action in command._actions:
            if "--home" in action.option_strings:
                assert action.help is not None and DEFAULT_HOME_TEXT in action.help, words
                named += 1
    assert named > 25
    assert "XDG_DATA_HOME" in DEFAULT_HOME_TEXT


# -- the backup summary -------------------------------------------------------------------


def _result(**more: object) -> dict[str, object]:
    return {
        "snapshot_id": "3f2a9c1b7d6e5f40",
        "files": 12,
        "bytes": 2_000_000,
        "files_unchanged": 0,
        "bytes_uploaded": 6_000_000,
        "packets_uploaded": 30,
        "seconds": 1.25,
        **more,
    }


def test_the_backup_summary_fits_80_columns() -> None:
    assert backup_summary(_result()) == (
        "snapshot 3f2a9c1b7d6e5f40: 12 files, 1.91 MiB (0 unchanged)\n"
        "  uploaded 5.72 MiB in 30 packets, 1.2 s"
    )
    big = _result(
        files=1_234_567,
        bytes=1_234_567_890_123,
        files_unchanged=1_234_000,
        bytes_uploaded=987_654_321_000,
        packets_uploaded=3_456_789,
        seconds=12_345.6,
    )
    one_line = backup_summary(big).replace("\n ", ",")
    assert len(one_line) > SUMMARY_WIDTH  # the line the issue saw wrap
    huge = _result(files=9_999_999_999, files_unchanged=9_999_999_999, seconds=99_999_999.9)
    for result in (_result(), big, huge):
        lines = backup_summary(result).splitlines()
        assert len(lines) == 2 and all(len(line) <= SUMMARY_WIDTH for line in lines), lines
        assert lines[0].startswith(f"snapshot {result['snapshot_id']}: {result['files']} files")
        assert lines[1].startswith("  uploaded ")
        assert f"in {result['packets_uploaded']} packets" in lines[1]
    noted = backup_summary(_result(notes=["skipped /x: permission denied"]))
    assert noted.endswith("1.2 s\n  note: skipped /x: permission denied")


# -- the default allocation on a small disk -----------------------------------------------


def _small_disk(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    """A disk with ``free`` bytes free: the one edge faked here, because a small filesystem
    cannot be mounted without root."""
    real = shutil.disk_usage

    def usage(path: str | os.PathLike[str]) -> tuple[int, int, int]:
        actual = real(path)
        return actual._replace(used=actual.total - free, free=free)

    monkeypatch.setattr("gridnode.home_cli.shutil.disk_usage", usage)


def _init_in_process(*args: str) -> int:
    """``gridnode init`` in this process, so that the faked disk applies; its error on
    stderr as the CLI prints it.  Not through ``main``: that configures logging onto this
    test's captured stderr, which later tests of the worker would then write to closed."""
    parsed = build_parser().parse_args(list(args))
    try:
        parsed.fn(parsed)
    except CliError as exc:
        print(f"gridnode: error: {exc}", file=sys.stderr)
        return exc.code
    return 0


def test_a_default_allocation_is_fitted_to_a_small_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # CI once failed `gridnode recover` on a disk with 8 GB free: the 10 GB default, a flag
    # nobody typed, was refused. Left unnamed, the allocation now fits the disk.
    grid = tmp_path / "grid.toml"
    assert _gridnode("grid", "create", "t", "--out", str(grid), "--open").returncode == 0
    _small_disk(monkeypatch, 5_000_000_000)
    home = tmp_path / "home"
    code = _init_in_process("init", "--home", str(home), "--grid", str(grid), "--json")
    out = capsys.readouterr()
    assert code == 0, out.err
    assert '"allocated_bytes": 4500000000' in out.out
    assert '"allocation_fitted": true' in out.out
    assert load_config(home).allocated_bytes == 4_500_000_000  # kept in the config
    # Named, it is still the user's word: too much is refused, not fitted.
    code = _init_in_process(
        "init", "--home", str(tmp_path / "h2"), "--grid", str(grid), "--allocate", "6GB"
    )
    assert code == 1
    assert "--allocate 5.59 GiB is more than the disk" in capsys.readouterr().err
    # A disk with room for the default keeps it, and says nothing about fitting.
    _small_disk(monkeypatch, 50_000_000_000)
    code = _init_in_process("init", "--home", str(tmp_path / "h3"), "--grid", str(grid))
    out = capsys.readouterr()
    assert code == 0 and "fitted" not in out.out
    assert load_config(tmp_path / "h3").allocated_bytes == 10_000_000_000
    # A nearly full disk gets no token allocation: the user is asked to decide.
    _small_disk(monkeypatch, 100_000_000)
    code = _init_in_process("init", "--home", str(tmp_path / "h4"), "--grid", str(grid))
    err = capsys.readouterr().err
    assert code == 1 and "too little to offer the grid" in err and "--allocate" in err
    assert not (tmp_path / "h4").exists()
