"""LocalGrid: real ``gridnode run`` processes on 127.0.0.1, driven through the CLI.

Used by ``gridnode demo`` (:mod:`gridnode.demo`), the integration tests, ``gridsim`` and
the benchmarks, so that all of them exercise exactly what a user runs: separate
processes, separate homes, real websockets, real SQLite files, the CLI's ``--json``
interface.  It lives in the product because the demo is a product command and the
product never imports ``simulations/``; ``simulations.harness`` re-exports it for the
tests, gridsim and the benchmarks.

A grid has an authority unless asked otherwise, so that what the tests, gridsim and
the benchmarks show runs on the secure path: adding the first node creates it
(``gridnode authority init`` in ``ROOT/authority``, started at once so that its start
overlaps the nodes' ``init``), and every node added subscribes with a one-time invite
from it.  That authority node allocates no storage (it is never a placement target, so
placement counts stay those of the nodes a test adds) and is not one of ``nodes``
(tests iterate their own nodes), but it is a gossip member: views list it, at
``authority_address``.  Its price book has one generous plan, ``harness``, so that no
test's backup meets a quota or a bandwidth cap it did not ask for.  ``authority=False``
builds an open grid (``gridnode grid create --open``), for tests of open-grid behaviour.

Every process it starts is stopped when the grid is closed (also on an exception or
Ctrl-C, via the context manager); a node that does not stop within its grace period
after SIGTERM is killed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from ..authority.subscriptions import SubscriptionManager

__all__ = [
    "AUTHORITY_NAME",
    "HARNESS_PRICE_BOOK",
    "SAMPLE_WORDS",
    "GridCommandError",
    "LocalGrid",
    "NodeProc",
    "NodeSpec",
    "free_port",
]

#: The name (and home directory under the grid's root) of the automatic authority node.
AUTHORITY_NAME: Final = "authority"

#: The automatic authority's price book: one plan, larger than any allocation a test or
#: scenario gives a node (the certificate caps a member's advertised free space at its
#: ``target_bytes``) and a bandwidth no loopback transfer reaches, so that the secure
#: path changes no figure a test asserts.  Quotas are tested with their own books.
HARNESS_PRICE_BOOK: Final = """\
# The LocalGrid harness's price book (gridnode/testing/localgrid.py): one generous plan.
currency = "EUR"
exponent = 2
default_plan = "harness"

[prices]
source_gb_month = "0.4"
transfer_gb = "0.1"
minimum_charge = "100"

[credits]
target_gb_month = "0.2"
served_gb = "0.05"

[plans.harness]
source_bytes = "100TB"
target_bytes = "100TB"
bandwidth_bps = 100_000_000_000
network_bytes_month = "10PB"
cpu_seconds_month = 1_000_000_000
"""


class GridCommandError(RuntimeError):
    def __init__(self, message: str, *, returncode: int, stderr: str, stdout: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout


#: Words for generated English-like sample text (the demo's tree, gridsim's text data).
SAMPLE_WORDS: Final = (
    "grid",
    "backup",
    "packet",
    "sequence",
    "target",
    "source",
    "proximity",
    "redundancy",
    "restore",
    "chunk",
    "erasure",
    "gossip",
    "member",
    "distance",
    "encrypt",
    "compress",
    "archive",
    "ledger",
    "city",
    "river",
    "mountain",
    "harbour",
    "winter",
    "letter",
    "report",
    "invoice",
    "photo",
)


_handed_out: set[int] = set()
_port_lock = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _worker_slice(start: int, stop: int) -> tuple[int, int]:
    """This pytest-xdist worker's share of ``start..stop`` (all of it outside xdist):
    worker ``gwN`` of M gets the N-th of M equal, disjoint parts."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit()):
        return start, stop
    parts = max(1, int(count))
    width = (stop - start) // parts
    if width < 256:  # too many workers for the range: shared, as before
        return start, stop
    first = start + (int(worker[2:]) % parts) * width
    return first, first + width


def free_port() -> int:
    """A loopback port that is free now and will stay free until a node binds it.

    A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, which is
    also where every outgoing connection gets its local port. Between ``init`` and ``run``
    another node's dial can take that very port and the node then fails with EADDRINUSE
    (seen in CI). So ports come from below the ephemeral range, chosen at random so that
    two harnesses on one machine rarely meet, and never twice from one process.

    Two processes can still pick the same port in the seconds between this check and
    the node's bind: pytest-xdist's workers did (CI: a node exited with "Address already
    in use").  So each worker draws from its own slice of the range.
    """
    low, high = _ephemeral_range()
    start, stop = _worker_slice(*((10000, low - 1) if low > 11000 else (high + 1, 65535)))
    with _port_lock:  # nodes are added from threads (add_many, gridsim)
        for _ in range(200):
            port = random.randrange(start, stop)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free loopback port in {start}..{stop}")


@attrs.define
class NodeSpec:
    name: str
    location: str = ""
    allocate: str = "2GB"
    location_check: str = "off"
    labels: tuple[str, ...] = ()
    #: The node's default K/N: the shipped 10/30 needs 31 members, a harness grid is a
    #: handful.  ``extra`` may still set it (a later ``--set`` wins).
    redundancy: str = "4/6"
    extra: tuple[str, ...] = ()  # more `--set KEY=VALUE` for init
    #: A command the node process runs under, e.g. ``("setpriv", "--reuid", "65534", ...)``
    #: to run it as another user or with fewer capabilities.
    wrapper: tuple[str, ...] = ()


@attrs.define
class NodeProc:
    spec: NodeSpec
    home: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalGrid:
    """A grid of node processes under ``root``; use as a context manager."""

    def __init__(
        self,
        root: Path,
        *,
        name: str = "local",
        log_level: str = "info",
        env: dict[str, str] | None = None,
        probe_interval_s: float = 0.5,
        authority: bool = True,
    ) -> None:
        """``authority=True`` (the default): the first ``add`` creates the grid with an
        authority node of its own (see the module docstring), unless ``add_authority``
        made one first (then nothing is automatic: the caller hands out invites).
        ``authority=False``: an open grid, created here."""
        self.root = root
        self.name = name
        self.log_level = log_level
        self.probe_interval_s = probe_interval_s
        self.authority = authority
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.nodes: dict[str, NodeProc] = {}
        #: The automatic authority node (None: an open grid, or one from add_authority).
        self.authority_node: NodeProc | None = None
        self.grid_file = root / "grid.toml"
        # add() may run in threads (gridsim, the benchmarks): one creates the authority,
        # and invites are written one at a time.
        self._authority_lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)
        if not self.grid_file.exists() and not authority:
            self.gridnode(
                "grid", "create", name, "--out", str(self.grid_file), "--open", json_out=False
            )

    @property
    def authority_address(self) -> str | None:
        """Where the automatic authority listens (its address in every member view)."""
        return self.authority_node.address if self.authority_node is not None else None

    def without_authority(self, entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Members (or peers) of a status but the automatic authority: what a test that
        counts its own nodes compares."""
        address = self.authority_address
        return [entry for entry in entries if address is None or entry["address"] != address]

    def node(self, name: str) -> NodeProc:
        """A node by name: one of ``nodes``, or the automatic authority (``authority``)."""
        if name == AUTHORITY_NAME and self.authority_node is not None:
            return self.authority_node
        return self.nodes[name]

    def all_nodes(self) -> dict[str, NodeProc]:
        """``nodes`` and the automatic authority: every process the grid may run."""
        extra = {AUTHORITY_NAME: self.authority_node} if self.authority_node is not None else {}
        return {**extra, **self.nodes}

    # --- running the CLI ---------------------------------------------------------------------

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gridnode", *args]

    def gridnode(
        self,
        *args: str,
        json_out: bool = True,
        timeout: float = 300,
        stdin: str | None = None,
        check: bool = True,
    ) -> Any:
        proc = subprocess.run(
            self.command(*args),
            capture_output=True,
            env=self.env,
            timeout=timeout,
            input=stdin.encode() if stdin else None,
        )
        out, err = proc.stdout.decode(), proc.stderr.decode()
        if check and proc.returncode != 0:
            raise GridCommandError(
                f"gridnode {' '.join(args[:3])} failed ({proc.returncode}): {err.strip()[-500:]}",
                returncode=proc.returncode,
                stderr=err,
                stdout=out,
            )
        if not json_out:
            return out
        lines = [line for line in out.splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None

    def cli(self, name: str, *args: str, **kwargs: Any) -> Any:
        """``gridnode ARGS --home HOME --json`` against node ``name``; returns the last JSON."""
        return self.gridnode(*args, "--home", str(self.node(name).home), "--json", **kwargs)

    def events(self, name: str, *args: str, timeout: float = 600) -> list[dict[str, Any]]:
        """All JSON lines of a long job (progress events and the final result)."""
        out = self.gridnode(
            *args, "--home", str(self.node(name).home), "--json", json_out=False, timeout=timeout
        )
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # --- nodes ---------------------------------------------------------------------------------

    def add(
        self,
        spec: NodeSpec,
        *,
        seeds: Sequence[str] = (),
        invite: str | None = None,
        subscribe: bool = True,
    ) -> NodeProc:
        """``invite``: subscribe with this code on first start (a grid with an authority).
        On a grid with an automatic authority every node gets one, unless ``subscribe``
        is False (a node that is to subscribe later, or never)."""
        if self.authority and self.authority_node is None:
            self._create_authority()  # or learn, under its lock, that there is none to make
        if self.authority_node is not None:
            if spec.name == AUTHORITY_NAME:
                raise ValueError(f"{AUTHORITY_NAME!r} is the automatic authority's name")
            if invite is None and subscribe:
                invite = self._new_invite()
        home = self.root / spec.name
        port = free_port()
        more = ("--invite", invite) if invite else ()
        self.init_node(spec, home, f"127.0.0.1:{port}", seeds, more)
        node = NodeProc(spec=spec, home=home, port=port)
        self.nodes[spec.name] = node
        return node

    def _create_authority(self) -> None:
        """The automatic authority: ``gridnode authority init`` with the harness's price
        book and no storage, started at once (its start overlaps the other inits)."""
        with self._authority_lock:
            if self.authority_node is not None or self.grid_file.exists():
                return  # made by another thread, or by add_authority (nothing automatic)
            price_book = self.root / "price-book.toml"
            price_book.write_text(HARNESS_PRICE_BOOK)
            spec = NodeSpec(name=AUTHORITY_NAME, allocate="0")
            home = self.root / AUTHORITY_NAME
            port = free_port()
            more = ["--out", str(self.grid_file), "--name", self.name]
            more += ["--price-book", str(price_book)]
            self.init_node(spec, home, f"127.0.0.1:{port}", (), more, command=("authority", "init"))
            self.authority_node = NodeProc(spec=spec, home=home, port=port)
            self.start(AUTHORITY_NAME)

    def _new_invite(self) -> str:
        """A one-time invite from the automatic authority's database.

        The same call ``gridnode authority invite`` makes, in this process: a CLI process
        per node would add a Python start to every node's setup (``invite`` above, and
        the authority tests, run the command itself).
        """
        assert self.authority_node is not None
        with self._authority_lock:
            manager = SubscriptionManager(self.authority_node.home)
            try:
                return manager.create_invite()
            finally:
                manager.close()

    def add_authority(self, spec: NodeSpec) -> NodeProc:
        """The grid's authority node (``gridnode authority init``), which writes the grid
        file; the grid must have been opened with ``authority=True``."""
        home = self.root / spec.name
        port = free_port()
        out = ("--out", str(self.grid_file), "--name", self.name)
        self.init_node(spec, home, f"127.0.0.1:{port}", (), out, command=("authority", "init"))
        node = NodeProc(spec=spec, home=home, port=port)
        self.nodes[spec.name] = node
        return node

    def invite(self, authority: str = AUTHORITY_NAME, plan: str | None = None) -> str:
        """A one-time invite code from the authority node's home (``gridnode authority
        invite``)."""
        more = ("--plan", plan) if plan else ()
        return str(self.cli(authority, "authority", "invite", *more)["invite"])

    def init_node(
        self,
        spec: NodeSpec,
        home: Path,
        listen: str,
        seeds: Sequence[str],
        more: Sequence[str] = (),
        *,
        command: Sequence[str] = ("init",),
    ) -> None:
        """``gridnode init`` with the harness's fast gossip settings and the spec's extras."""
        args = [
            *command,
            *more,
            "--home",
            str(home),
            "--listen",
            listen,
            *(("--grid", str(self.grid_file)) if tuple(command) == ("init",) else ()),
            "--allocate",
            spec.allocate,
            "--location-check",
            spec.location_check,
            "--set",
            f"gossip_probe_interval_s={self.probe_interval_s}",
            "--set",
            "gossip_sync_interval_s=5",
            "--set",
            "gossip_dead_reap_s=600",
            "--set",
            "grace_period_s=2",
            "--set",
            f"redundancy={spec.redundancy}",
        ]
        for seed in seeds:
            args += ["--seed", seed]
        if spec.location:
            args += ["--location", spec.location]
        for label in spec.labels:
            args += ["--label", label]
        for item in spec.extra:
            args += ["--set", item]
        self.gridnode(*args, json_out=False)

    def add_many(self, specs: Sequence[NodeSpec]) -> list[NodeProc]:
        """The first node is every other node's seed.

        The others are initialised side by side: each ``init`` is a Python start, and
        a grid's setup was mostly spent waiting for them one after the other (which
        also pays for the authority's own ``init``).  ``nodes`` keeps the order given.
        """
        first = self.add(specs[0])
        rest = specs[1:]
        if rest:
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, len(rest))) as pool:
                futures = [pool.submit(self.add, spec, seeds=[first.address]) for spec in rest]
                for future in futures:
                    future.result()
        names = [spec.name for spec in specs]
        self.nodes = {
            **{name: node for name, node in self.nodes.items() if name not in names},
            **{name: self.nodes[name] for name in names},
        }
        return [self.nodes[name] for name in names]

    def start(self, name: str, *extra: str) -> NodeProc:
        node = self.node(name)
        if node.running:
            return node
        node.log_path = node.home / "node.log"
        log = open(node.log_path, "ab")  # noqa: SIM115 - owned by the child process
        node.process = subprocess.Popen(
            [
                *node.spec.wrapper,
                *self.command(
                    "run",
                    "--home",
                    str(node.home),
                    "--quiet",
                    "--log-level",
                    self.log_level,
                    *extra,
                ),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()
        return node

    def wait_ready(self, name: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        node = self.node(name)
        last_error = ""
        while time.monotonic() < deadline:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(
                    f"node {name} exited with {node.process.returncode}: {self.log_tail(name)}"
                )
            try:
                return dict(self.cli(name, "status", timeout=20))
            except GridCommandError as exc:
                last_error = exc.stderr.strip()
            time.sleep(0.2)
        raise TimeoutError(f"node {name} not ready after {timeout} s: {last_error}")

    def start_all(self, timeout: float = 60) -> None:
        """Every node, the automatic authority first (the others subscribe with it)."""
        for name in self.all_nodes():
            self.start(name)
        for name in self.all_nodes():
            self.wait_ready(name, timeout=timeout)

    def stop(self, name: str, *, timeout: float = 10) -> int | None:
        node = self.node(name)
        if node.process is None:
            return None
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        code = node.process.returncode
        node.process = None
        return code

    def kill(self, name: str) -> None:
        node = self.node(name)
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()
        node.process = None

    def pause(self, name: str) -> None:
        proc = self.node(name).process
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        proc = self.node(name).process
        assert proc is not None
        proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        for node in self.all_nodes().values():
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGCONT)
                    node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for node in self.all_nodes().values():
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
            node.process = None

    def __enter__(self) -> LocalGrid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- observation -----------------------------------------------------------------------------

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.cli(name, "status", timeout=30))

    def running(self) -> Iterator[str]:
        return (name for name, node in self.nodes.items() if node.running)

    def wait_converged(self, timeout: float = 60, *, names: Sequence[str] | None = None) -> float:
        """Until every running node sees every other running node alive; returns seconds."""
        start = time.monotonic()
        deadline = start + timeout
        wanted = list(names) if names is not None else list(self.running())
        while True:
            ok = True
            for name in wanted:
                status = self.status(name)
                alive = {m["address"] for m in status["members"] if m["state"] == "alive"}
                others = {self.nodes[o].address for o in wanted if o != name}
                if not others <= alive:
                    ok = False
                    break
            if ok:
                return time.monotonic() - start
            if time.monotonic() > deadline:
                raise TimeoutError(f"grid did not converge within {timeout} s")
            time.sleep(0.3)

    def wait_state(self, observer: str, subject: str, state: str, timeout: float = 60) -> float:
        start = time.monotonic()
        address = self.nodes[subject].address
        while time.monotonic() - start < timeout:
            for member in self.status(observer)["members"]:
                if member["address"] == address and member["state"] == state:
                    return time.monotonic() - start
            time.sleep(0.3)
        raise TimeoutError(f"{observer} did not see {subject} {state} within {timeout} s")

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.node(name).log_path
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
