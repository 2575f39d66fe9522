"""Real distance between local nodes, as root: one network namespace per node.

On 127.0.0.1 every peer answers in microseconds, so the speed-of-light location check
would call every distance claim a lie and has to be turned off.  With ``gridsim run
--netns`` each node instead runs in its own network namespace, and every pair of nodes
is joined by its own veth pair (a full mesh, not a bridge: a bridge port has one delay
for all traffic leaving it, but the delay we want depends on *which* two nodes talk).
Each node's address lives on its namespace's loopback (``10.77.X.Y/32``) and a host
route sends traffic for each peer down the veth to that peer, so no veth needs an
address of its own.

Delay: both ends of a link get ``tc qdisc ... netem delay D`` with ``D = distance/200``
ms, so a round trip over the link costs ``distance/100`` ms: what light in fibre needs
(about 200 km per ms one way).  The node's location check (``rtt * 100 km/ms >=
distance``) then passes for true claims, barely, as on a real continent, and fails for
a claim to be much farther away than the delay allows.

Partition: both ends of every link that joins the two groups get a ``pfifo limit 0``
root qdisc, which drops every packet silently (no RST, no ICMP): what a cut cable or a
firewall that drops looks like to TCP.  Healing puts the link's normal qdisc back.
This needs only the ``pfifo`` qdisc, not netem, nft or iptables.

Requirements, checked by :func:`probe_support` before anything is changed: root (or
CAP_NET_ADMIN and CAP_SYS_ADMIN), the ``ip`` and ``tc`` tools (iproute2), and for the
delays the ``sch_netem`` kernel module.  Without netem the namespaces, links and
partitions still work, the links just carry no added delay, and the caller is told so.

The command lists are built by pure functions (:class:`NetnsPlan`) so they can be
tested without root; :class:`Netns` applies them and always tears down what it built.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from gridnode.logic.distance import haversine_km

from .harness import LocalGrid, NodeProc, NodeSpec

__all__ = [
    "NODE_PORT",
    "NetnsError",
    "NetnsGrid",
    "NetnsLink",
    "NetnsNode",
    "NetnsPlan",
    "Support",
    "link_delay_ms",
    "plan_netns",
    "probe_support",
]

#: Every node listens on this port: each has a namespace, and so an address, of its own.
NODE_PORT: Final = 7400
#: Light in fibre covers about 200 km per ms one way (2/3 of c).
FIBRE_KM_PER_MS_ONE_WAY: Final = 200.0
#: Enough packets in flight for a 1 Gbit/s link with 50 ms of delay.
NETEM_LIMIT: Final = 10_000
#: Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
MAX_IFNAME: Final = 15
_SUBNET: Final = "10.77"
_MAX_NODES: Final = 250 * 250

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[bytes]"]


class NetnsError(RuntimeError):
    """A namespace command failed; the message names the command and its stderr."""


def link_delay_ms(distance_km: float) -> float:
    """One-way delay for each end of a link: distance/200 ms, so an RTT is distance/100 ms."""
    if distance_km < 0:
        raise ValueError(f"a distance cannot be negative: {distance_km}")
    return distance_km / FIBRE_KM_PER_MS_ONE_WAY


@attrs.frozen
class NetnsNode:
    name: str
    index: int
    namespace: str
    ip: str
    lat: float
    lon: float

    @property
    def address(self) -> str:
        return f"{self.ip}:{NODE_PORT}"


@attrs.frozen
class NetnsLink:
    """One veth pair: ``dev_a`` sits in ``a``'s namespace and faces ``b``."""

    a: NetnsNode
    b: NetnsNode
    dev_a: str
    dev_b: str
    distance_km: float

    @property
    def delay_ms(self) -> float:
        return link_delay_ms(self.distance_km)

    def joins(self, left: Collection[str], right: Collection[str]) -> bool:
        return (self.a.name in left and self.b.name in right) or (
            self.a.name in right and self.b.name in left
        )


def _ip(index: int) -> str:
    return f"{_SUBNET}.{index // 250}.{index % 250 + 1}"


def _device(peer_index: int) -> str:
    name = f"gsv{peer_index}"
    assert len(name) <= MAX_IFNAME
    return name


@attrs.frozen
class NetnsPlan:
    """The namespaces, addresses and links of one grid, and the commands that build them."""

    nodes: tuple[NetnsNode, ...]
    links: tuple[NetnsLink, ...]

    def node(self, name: str) -> NetnsNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} in this plan")

    def exec_prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.node(name).namespace]

    def setup_commands(self, *, delay: bool) -> list[list[str]]:
        """Namespaces with loopback up and the node address on it, then the links."""
        commands: list[list[str]] = []
        for node in self.nodes:
            ns = node.namespace
            commands += [
                ["ip", "netns", "add", ns],
                ["ip", "-n", ns, "link", "set", "lo", "up"],
                ["ip", "-n", ns, "addr", "add", f"{node.ip}/32", "dev", "lo"],
            ]
        for link in self.links:
            a, b = link.a, link.b
            commands += [
                [
                    "ip",
                    "link",
                    "add",
                    link.dev_a,
                    "netns",
                    a.namespace,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    link.dev_b,
                    "netns",
                    b.namespace,
                ],
                ["ip", "-n", a.namespace, "link", "set", link.dev_a, "up"],
                ["ip", "-n", b.namespace, "link", "set", link.dev_b, "up"],
                [
                    "ip",
                    "-n",
                    a.namespace,
                    "route",
                    "add",
                    f"{b.ip}/32",
                    "dev",
                    link.dev_a,
                    "src",
                    a.ip,
                ],
                [
                    "ip",
                    "-n",
                    b.namespace,
                    "route",
                    "add",
                    f"{a.ip}/32",
                    "dev",
                    link.dev_b,
                    "src",
                    b.ip,
                ],
            ]
            if delay:
                commands += self._normal_qdisc(link, delay=True)
        return commands

    def teardown_commands(self) -> list[list[str]]:
        """Deleting a namespace destroys its end of every veth, and so the whole pair."""
        return [["ip", "netns", "del", node.namespace] for node in self.nodes]

    def cut_commands(self, left: Collection[str], right: Collection[str]) -> list[list[str]]:
        """Drop every packet on every link between the two groups, both directions."""
        commands: list[list[str]] = []
        for link in self.links:
            if link.joins(left, right):
                for ns, dev in ((link.a.namespace, link.dev_a), (link.b.namespace, link.dev_b)):
                    commands.append(
                        [
                            "tc",
                            "-n",
                            ns,
                            "qdisc",
                            "replace",
                            "dev",
                            dev,
                            "root",
                            "pfifo",
                            "limit",
                            "0",
                        ]
                    )
        return commands

    def mend_commands(
        self, left: Collection[str], right: Collection[str], *, delay: bool
    ) -> list[list[str]]:
        """Undo :meth:`cut_commands`: each link gets its normal qdisc back."""
        commands: list[list[str]] = []
        for link in self.links:
            if link.joins(left, right):
                commands += self._normal_qdisc(link, delay=delay)
        return commands

    @staticmethod
    def _normal_qdisc(link: NetnsLink, *, delay: bool) -> list[list[str]]:
        out: list[list[str]] = []
        for ns, dev in ((link.a.namespace, link.dev_a), (link.b.namespace, link.dev_b)):
            if delay:
                micros = max(1, round(link.delay_ms * 1000))
                out.append(
                    [
                        "tc",
                        "-n",
                        ns,
                        "qdisc",
                        "replace",
                        "dev",
                        dev,
                        "root",
                        "netem",
                        "delay",
                        f"{micros}us",
                        "limit",
                        str(NETEM_LIMIT),
                    ]
                )
            else:
                # The veth default (noqueue) comes back when the root qdisc is deleted.
                out.append(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"])
        return out


def plan_netns(nodes: Sequence[tuple[str, float, float]], *, tag: str) -> NetnsPlan:
    """A full mesh for ``(name, lat, lon)`` nodes; ``tag`` keeps namespace names unique.

    Raises:
        ValueError: duplicate names, too many nodes, or a tag that would make a
            namespace name unusable.
    """
    names = [name for name, _, _ in nodes]
    if len(set(names)) != len(names):
        raise ValueError("node names must be unique")
    if len(nodes) > _MAX_NODES:
        raise ValueError(f"at most {_MAX_NODES} nodes fit in {_SUBNET}.0.0/16")
    if not tag or not all(c.isalnum() or c in "-_" for c in tag):
        raise ValueError(f"namespace tag must be letters, digits, - or _: {tag!r}")
    planned = tuple(
        NetnsNode(name=name, index=i, namespace=f"{tag}-{i}", ip=_ip(i), lat=lat, lon=lon)
        for i, (name, lat, lon) in enumerate(nodes)
    )
    links = tuple(
        NetnsLink(
            a=a,
            b=b,
            dev_a=_device(b.index),
            dev_b=_device(a.index),
            distance_km=haversine_km(a.lat, a.lon, b.lat, b.lon),
        )
        for a, b in itertools.combinations(planned, 2)
    )
    return NetnsPlan(nodes=planned, links=links)


# --- checking and applying ----------------------------------------------------------------


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), capture_output=True, timeout=30, check=False)


@attrs.frozen
class Support:
    """What this machine allows: ``usable`` (namespaces), ``delay`` (netem), and why not."""

    usable: bool
    delay: bool
    reason: str


def probe_support(run: Runner = _run) -> Support:
    """Check root, iproute2, namespaces and netem, changing nothing that outlives the call."""
    if os.geteuid() != 0:
        return Support(
            False,
            False,
            "not running as root: network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)",
        )
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return Support(False, False, f"{' and '.join(missing)} not found: install iproute2")
    probe = f"gsprobe-{os.getpid()}"
    try:
        made = run(["ip", "netns", "add", probe])
        if made.returncode != 0:
            return Support(
                False,
                False,
                "cannot create a network namespace: "
                + made.stderr.decode(errors="replace").strip(),
            )
        run(["ip", "-n", probe, "link", "set", "lo", "up"])
        netem = run(
            ["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]
        )
        if netem.returncode != 0:
            why = netem.stderr.decode(errors="replace").strip().splitlines()
            return Support(
                True,
                False,
                "the kernel has no netem qdisc (sch_netem) "
                f"({why[0] if why else 'tc failed'}): links carry no added delay",
            )
        return Support(True, True, "namespaces and netem delays available")
    except (OSError, subprocess.SubprocessError) as exc:
        return Support(False, False, f"cannot run ip/tc: {exc}")
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            run(["ip", "netns", "del", probe])


class Netns:
    """Applies a plan; a context manager that always deletes its namespaces."""

    def __init__(self, plan: NetnsPlan, *, delay: bool, run: Runner = _run) -> None:
        self.plan = plan
        self.delay = delay
        self._run = run
        self.commands_run = 0
        self._cut: list[tuple[frozenset[str], frozenset[str]]] = []

    def _apply(self, commands: Sequence[Sequence[str]]) -> None:
        for argv in commands:
            done = self._run(argv)
            self.commands_run += 1
            if done.returncode != 0:
                raise NetnsError(
                    f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace').strip()}"
                )

    def open(self) -> None:
        try:
            self._apply(self.plan.setup_commands(delay=self.delay))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for argv in self.plan.teardown_commands():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self._run(argv)

    def cut(self, left: Collection[str], right: Collection[str]) -> None:
        self._apply(self.plan.cut_commands(left, right))
        self._cut.append((frozenset(left), frozenset(right)))

    def mend(self) -> None:
        """Heal every cut made so far."""
        for left, right in self._cut:
            self._apply(self.plan.mend_commands(left, right, delay=self.delay))
        self._cut.clear()

    def __enter__(self) -> Netns:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- a LocalGrid whose nodes live in the namespaces ------------------------------------------


@attrs.define
class NetnsNodeProc(NodeProc):
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class NetnsGrid(LocalGrid):
    """Like :class:`LocalGrid`, but each node listens on, and is driven inside, its namespace.

    The node's control channel is on 127.0.0.1 *inside* its namespace, so every CLI
    call against a node runs there too (``ip netns exec``); the file system is shared,
    so homes and restore targets are ordinary paths.
    """

    def __init__(self, root: Path, netns: Netns, **kwargs: Any) -> None:
        self.netns = netns
        self._namespace_of_home: dict[str, str] = {}
        kwargs.setdefault("authority", False)  # see add()
        super().__init__(root, **kwargs)

    def command(self, *args: str) -> list[str]:
        base = super().command(*args)
        for flag, value in itertools.pairwise(args):
            if flag == "--home" and value in self._namespace_of_home:
                return ["ip", "netns", "exec", self._namespace_of_home[value], *base]
        return base

    def add(
        self,
        spec: NodeSpec,
        *,
        seeds: Sequence[str] = (),
        invite: str | None = None,
        subscribe: bool = True,
    ) -> NodeProc:
        """Only an explicit ``invite``: the automatic authority has no namespace (gridsim
        builds its netns grids open)."""
        planned = self.netns.plan.node(spec.name)
        home = self.root / spec.name
        self._namespace_of_home[str(home)] = planned.namespace
        more = ("--invite", invite) if invite else ()
        self.init_node(spec, home, planned.address, seeds, more)
        node = NetnsNodeProc(spec=spec, home=home, port=NODE_PORT, host=planned.ip)
        self.nodes[spec.name] = node
        return node
