"""The reference text of gridsim: its commands, the scenario format, the invariants.

The one place that says what gridsim does and what a scenario file may contain; the
package docstring points here, the command line takes its description from the first
line, and the scenario files in ``simulations/scenarios/`` refer to it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MANUAL"]

MANUAL: Final = """\
gridsim: grids of real ``gridnode`` processes on this machine, and scenarios run on them.

Three commands (their flags and JSON keys are a stable interface, see the README):

``gridsim up --dir DIR --nodes N [--cities CITY,CITY,...] [--open]``
    Starts N ``gridnode run`` processes in the background, one per city (European
    capitals by default) and prints one JSON object, ``{"nodes": [{"name", "home",
    "address", "pid", "city", ...}], "authority": {...}, ...}``, once every node sees
    every other alive.  The grid has an authority (see below) unless ``--open``.
    The nodes belong to a small detached supervisor process (its pid is in
    ``DIR/gridsim.json`` with theirs): it reaps them, so ``down`` can report their
    real exit codes, and it stops them after ``--lifetime`` (a day by default) so a
    forgotten grid does not run forever.  All nodes are on 127.0.0.1, so the
    speed-of-light location check is off unless ``--location-check`` is given.

``gridsim down --dir DIR``
    Stops that grid: SIGTERM, SIGKILL after a grace period; prints a JSON summary with
    each node's exit code; exits 0.

``gridsim run SCENARIO.toml [--json] [--dir DIR] [--netns] [--keep]``
    Starts the scenario's nodes, runs its steps in order, checks the invariants after
    each step, stops every process it started (also on Ctrl-C, SIGTERM or a failure),
    and prints a readable report (or, with ``--json``, one JSON object).  Exit code 0
    only if every step and every invariant check passed; 1 otherwise; 2 for a bad
    scenario file; 130 when interrupted.

Scenario files (TOML)
=====================

::

    [scenario]
    name = "loss"                  # default: the file name
    description = "..."
    redundancy = "4/6"             # default K/N for backups (else the nodes' default, 4/6)
    seed = 1                       # generated data and random choices
    timeout_s = 900                # the whole run, setup included
    log_level = "info"             # of the nodes (their logs are HOME/node.log)
    invariants = ["restore", "rules", "processes"]   # checked after each step

    [defaults]                     # for every node, unless the node says otherwise
    allocation = "1GB"
    location_check = "auto"        # auto | enforce | warn | off
    set = { request_timeout_s = 10 }   # any `gridnode init --set KEY=VALUE`

    [[nodes]]
    name = "paris"                 # letters, digits, - and _
    city = "Paris"                 # or: lat = 48.85, lon = 2.35
    allocation = "2GB"
    seeds = ["berlin"]             # names of nodes defined *above*; default: the first node
    labels = { site = "a" }        # or ["site=a"]: failure-domain labels (`--distinct`)
    location_check = "off"

    [[steps]]
    action = "backup"              # see the actions below
    name = "docs"                  # optional, unique; restore and friends refer to it
    check = true                   # check the invariants after this step (default true)

Actions and their keys:

- ``backup``: ``node``; ``path`` (a directory, relative to the scenario file; it must
  not change during the run) or ``generate = {size = "4MB", kind = "random" | "text" |
  "small-files", files = N, seed = S}`` (the seed defaults to one per step, so two
  steps generate different data unless they share a seed); ``redundancy``,
  ``backup_proximity``, ``packet_proximity`` (``"MIN:MAX"``, km or mi), ``distinct``
  (label names); ``expect = "ok" | "fail"`` (default ok); ``not_on = ["x"]``: no *new*
  packet may land on these nodes (chunks deduplicated against an earlier backup keep
  their old packets, wherever those are).
- ``restore``: ``backup`` (an earlier backup step's name), restored on its source node
  and compared byte for byte; ``expect = "auto" | "ok" | "fail"`` (auto: from the
  survival model below); ``max_seconds`` (fail if slower, e.g. to show hedging).
- ``verify``: ``gridnode verify`` of ``backup`` (or of every backup), compared with the
  survival model: ``ok``, and chunks healthy / degraded / lost.
- ``repair``: ``gridnode repair`` of ``backup`` (or of every backup) on its source: lost
  packets rebuilt on new holders under the backup's rules.  Checked against the model:
  a chunk the model counts lost must be reported lost, no other; afterwards the model
  reads the new placement, and with enough nodes up every chunk is back to n packets.
- ``kill`` (SIGKILL), ``stop`` (SIGTERM; exit code 0 expected), ``pause`` (SIGSTOP),
  ``resume`` (SIGCONT), ``restart`` (start a killed or stopped node again, its disk
  intact; ``allocation`` restarts it with another ``--allocate``): the nodes are
  ``node = "x"``, ``nodes = ["x", "y"]``, or ``holders_of = "docs"`` with ``count = N``
  (the N running nodes other than the source that hold most packets of that backup;
  among equals, those holding the lowest share numbers, which a restore asks first).
- ``partition``: ``groups = [["a", "b"], ["c", "d"]]``; ``heal`` ends it.
- ``corrupt`` / ``delete``: ``node``, ``packets = N``, optional ``backup``: flip bytes in
  (or delete) N packet files under ``HOME/storage/packets/`` on that node.
- ``fill``: ``node``, ``free = "0"``: restart the node with ``--allocate`` equal to what
  it already stores plus ``free``, and wait until the grid has heard.
- ``wait``: ``seconds``; with ``until = "converged"`` (every running node sees every
  reachable running node alive) or ``"settled"`` (and sees every other node not alive),
  ``seconds`` is the time limit instead of a sleep; ``nodes = [...]`` limits whose view
  counts (say, one side of a partition).

The grid and its authority
==========================

Every grid gridsim starts is created with an authority, so what a scenario shows runs
on the secure path: ``gridnode authority init`` makes an authority node (``HOME`` under
``authority/``, not one of the scenario's nodes; the name is reserved), and every node
subscribes with a one-time invite from it before it may join the gossip or back up.
The authority allocates no storage, so it never holds packets and placement is that of
the scenario's nodes; it is a gossip member, and the ``processes`` invariant watches it
too.  Its one plan is larger than any allocation (see ``gridnode/testing/localgrid.py``).  The
report's ``grid`` says so: ``{"authority": true, "authority_node": {"address", "pids",
...}}``.  With ``--netns`` the grid is open (the authority has no namespace yet), and
the report says that instead.

Invariants, after every step with ``check = true``
===================================================

1. ``restore``: every backup the scenario made (of a running source) is listed
   complete and is restored and compared with what was backed up, byte for byte.  The
   expected outcome comes from a survival model: a chunk's packet survives if its
   target (from ``gridnode placement --json``) is running, not paused, on the source's
   side of a partition, and the packet was not corrupted or deleted by a step.  With at
   least k survivors for every chunk the restore must succeed byte-equal; otherwise it
   must fail cleanly (non-zero exit, a one-line ``gridnode: error:``).  One caveat:
   placement also lists the chunks of the snapshot record, which a restore does not
   read, without marking them; their number is known (placement's chunks minus the
   restore's ``chunks``), so failure is required only when more chunks are lost than
   that, and with fewer either clean outcome passes, with a note.
2. ``rules``: every packet of every such snapshot obeys the snapshot's rules
   (``rules`` in the placement): backup proximity from the source and packet proximity
   between targets, recomputed from the nodes' own locations; distinct targets, none
   the source; distinct values of the ``distinct`` labels.
3. ``processes``: every node a step did not kill or stop is still running, and no
   node log contains a ``Traceback``; the same for the grid's authority node.

Network
=======

By default every node listens on 127.0.0.1, where the location check cannot work
(``location_check = "auto"`` means off), and a partition is *emulated*: without root
nothing can drop packets between two loopback sockets, so the smaller group is stopped
(SIGTERM) and restarted on ``heal``; the report says so.  With ``--netns`` (root,
iproute2) each node gets a network namespace, links delayed by distance and real,
packet-dropping partitions: see ``simulations/netns.py``.  When that is impossible the
run says why and falls back to loopback; when netem is missing the links carry no delay
and the location check stays off.
"""
