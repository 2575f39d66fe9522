"""protocol/ must stay sans-IO: no trio, no sockets, no clock, no filesystem."""

from __future__ import annotations

import ast
from pathlib import Path

import protocol

FORBIDDEN = {
    "trio",
    "trio_websocket",
    "socket",
    "asyncio",
    "time",
    "os",
    "pathlib",
    "io",
    "shutil",
    "tempfile",
    "selectors",
    "datetime",
    "open",
    "subprocess",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and (node.func.id == "open")
        ):
            names.add("open")
    return names


def test_protocol_modules_do_no_io() -> None:
    root = Path(protocol.__file__).parent
    files = sorted(root.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        bad = _imports(path) & FORBIDDEN
        assert not bad, f"{path.name} uses {sorted(bad)}"


def test_the_check_itself_catches_an_import(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import trio\nfrom os import path\nopen('f')\n")
    assert _imports(sample) & FORBIDDEN == {"trio", "os", "open"}
