"""The CLI as a new user meets it (issue 12's first findings): ``--version``, a southern
latitude as an option value, ``key export`` without ``--out``, and ``stop`` on a running
node, each through the real ``gridnode`` command in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from gridnode import __version__
from gridnode.config import load_config
from simulations.harness import free_port

GRIDNODE = [sys.executable, "-m", "gridnode"]


def gridnode(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GRIDNODE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_version_coordinates_key_export_and_stop(tmp_path: Path) -> None:
    done = gridnode("--version")
    assert done.returncode == 0 and done.stdout.startswith(f"gridnode {__version__} (protocol ")
    grid, home = tmp_path / "grid.toml", tmp_path / "home"
    assert gridnode("grid", "create", "t", "--out", str(grid), "--open").returncode == 0
    port = free_port()
    done = gridnode(
        "init", "--home", str(tmp_path / "big"), "--grid", str(grid), "--listen",
        f"127.0.0.1:{port}", "--location", "Paris", "--allocate", "500PB",
    )  # fmt: skip
    assert done.returncode == 1 and "more than the disk" in done.stderr
    assert not (tmp_path / "big").exists()  # refused before anything was written
    done = gridnode(
        "init", "--home", str(home), "--grid", str(grid), "--listen", f"127.0.0.1:{port}",
        "--location", "-33.87,151.21", "--allocate", "1GB",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = load_config(home)
    assert (config.lat, config.lon) == (-33.87, 151.21)
    done = gridnode("config", "show", "--home", str(home), "--json")
    shown = json.loads(done.stdout)
    assert shown["values"]["latitude"] == -33.87 and shown["values"]["redundancy"] == "10/30"
    assert "latitude" in shown["changed"] and "redundancy" not in shown["changed"]
    done = gridnode("key", "export", "--home", str(home))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "needs --out" in done.stderr
    done = gridnode("status", "--home", str(home))  # a home, but no node running: 5
    assert done.returncode == 5 and "gridnode run --home" in done.stderr
    done = gridnode("status", "--home", str(tmp_path / "nowhere"))  # no home at all: 4
    assert done.returncode == 4 and "gridnode init" in done.stderr
    node = subprocess.Popen(
        [*GRIDNODE, "run", "--home", str(home)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (home / "run" / "control.sock").exists():  # bounded by the deadline
            assert time.monotonic() < deadline and node.poll() is None
            time.sleep(0.1)
        time.sleep(0.3)
        done = gridnode("stop", "--home", str(home))
        assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "node stopping", "")
        assert node.wait(timeout=20) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
