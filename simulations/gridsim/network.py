"""The network a scenario runs on: loopback (the default) or one namespace per node.

What that choice means for the location check and for partitions is said once here,
in the notes every report carries.
"""

from __future__ import annotations

import attrs

from ..netns import Netns, probe_support

__all__ = ["Network", "choose_network"]


@attrs.define
class Network:
    """How nodes are connected, and what that means for the location check and partitions."""

    mode: str  # loopback | netns
    delay: bool = False
    notes: list[str] = attrs.field(factory=list)
    netns: Netns | None = None  # set up by the simulation when mode == "netns"

    @property
    def location_check(self) -> str:
        """What ``location_check = "auto"`` means here."""
        return "enforce" if self.delay else "off"


def choose_network(want_netns: bool) -> Network:
    """Loopback, or namespaces when ``--netns`` is asked for and possible; the notes say what that
    means."""
    if not want_netns:
        return Network(
            "loopback",
            notes=[
                "all nodes on 127.0.0.1: round trips are microseconds, so the speed-of-light "
                "location check is off (use --netns as root for real delays)",
                "partitions are emulated: without a firewall nothing can drop packets between "
                "loopback sockets, so the smaller group is stopped (SIGTERM) and restarted on "
                "heal",
            ],
        )
    support = probe_support()
    if not support.usable:
        return Network(
            "loopback",
            notes=[
                f"--netns not possible: {support.reason}; running on 127.0.0.1 instead, so the "
                "location check is off and partitions are emulated (the smaller group is "
                "stopped)"
            ],
        )
    notes = [
        "each node in its own network namespace, a veth pair per pair of nodes; "
        "partitions drop packets on the links between the groups (pfifo limit 0)"
    ]
    if support.delay:
        notes.append(
            "links delayed by distance (netem, distance/200 ms each way, so "
            "1 ms of round trip per 100 km): the location check is enforced"
        )
    else:
        notes.append(f"no link delay: {support.reason}; the location check is off")
    return Network("netns", delay=support.delay, notes=notes)
