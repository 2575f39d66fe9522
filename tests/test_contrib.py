"""The operator kit in contrib/: systemd units that systemd accepts, and a Dockerfile
that installs this project and runs a node as a non-root user on the default port.

``systemd-analyze verify`` checks the units for real (unknown keys, bad values, a
command that is not executable): each is verified with its ``gridnode`` path pointed at
this environment's.  Docker cannot build here (no daemon, no registry), so the
Dockerfile is checked for what makes it work: it copies every package pyproject.toml
installs, and runs ``gridnode run`` on a volume as a non-root user.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from gridnode.config import NodeConfig

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "contrib" / "systemd"


def test_systemd_accepts_every_unit(tmp_path: Path) -> None:
    gridnode = Path(sys.executable).parent / "gridnode"
    assert gridnode.exists()
    names = sorted(p.name for p in UNITS.iterdir())
    assert {"gridnode.service", "gridnode-backup.service", "gridnode-backup.timer"} <= set(names)
    for name in names:
        text = (UNITS / name).read_text()
        text = text.replace("/usr/local/bin/gridnode", str(gridnode))
        text = text.replace("%h/.local/bin/gridnode", str(gridnode))
        (tmp_path / name).write_text(text)
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, ".ci/run installs systemd for systemd-analyze"
    done = subprocess.run(
        [analyze, "verify", *(str(tmp_path / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Warnings (an unknown key, say) leave the exit code at 0: any line about our files
    # is a failure too.
    ours = [line for line in (done.stdout + done.stderr).splitlines() if str(tmp_path) in line]
    assert done.returncode == 0 and ours == [], done.stdout + done.stderr


def test_the_service_runs_the_node_and_the_timer_its_backups() -> None:
    service = (UNITS / "gridnode.service").read_text()
    assert "ExecStart=/usr/local/bin/gridnode run --home /var/lib/gridnode" in service
    assert "ReadWritePaths=/var/lib/gridnode" in service and "User=gridnode" in service
    backup = (UNITS / "gridnode-backup.service").read_text()
    assert "SuccessExitStatus=3" in backup  # a backup that skipped unreadable files
    assert "Persistent=yes" in (UNITS / "gridnode-backup.timer").read_text()


def _instructions(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_dockerfile_installs_the_project_and_runs_a_node() -> None:
    steps = _instructions((ROOT / "contrib" / "Dockerfile").read_text())
    kinds = [kind for kind, _ in steps]
    assert kinds[0] == "FROM" and steps[0][1].startswith("python:3.11")
    copied = {
        Path(part).name for kind, rest in steps if kind == "COPY" for part in rest.split()[:-1]
    }
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= copied and {"pyproject.toml", "README.md"} <= copied
    for name in copied:
        assert (ROOT / name).exists(), name
    user = [rest for kind, rest in steps if kind == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert ("ENTRYPOINT", '["gridnode"]') in steps
    assert ("CMD", '["run", "--home", "/data"]') in steps
    assert ("EXPOSE", str(NodeConfig.__attrs_attrs__.listen_port.default)) in steps  # type: ignore[attr-defined]
