"""gridsim: grids of real ``gridnode`` processes on this machine, and scenarios run on them.

``gridsim up``, ``down`` and ``run``; the reference (commands, scenario format,
invariants, network) is :data:`~.manual.MANUAL` in ``manual.py``.  The modules, in the
order a run goes through them:

- ``manual``: the reference text; ``cli`` (with ``__main__``): the command line;
- ``model`` and ``parser``: the scenario file, parsed and validated;
- ``workload``: the data backup steps generate, and the manifests restores are
  compared with;
- ``network``: loopback or one network namespace per node;
- ``cluster``: running ``gridnode`` commands, starting nodes, waiting for views;
- ``world``: what a run knows about its grid; ``simulation``: setup, teardown, and
  dispatching steps and checks;
- ``steps_data`` and ``steps_grid``: one handler per step action;
- ``survival``: the model of which packets a restore can still get;
- ``invariants``: the ``restore``, ``rules`` and ``processes`` checks;
- ``report``: the JSON and text report; ``runner``: a whole scenario run;
- ``supervisor``: the detached owner of an ``up`` grid.
"""

from __future__ import annotations

from .cli import main
from .model import DATA_KINDS, DataSpec, NodeDef, Scenario, ScenarioError, Step
from .network import Network
from .parser import load_scenario, parse_scenario
from .runner import run_scenario
from .simulation import Simulation
from .supervisor import pid_alive
from .workload import build_manifest, compare_manifest, generate_data
from .world import BackupState

__all__ = [
    "DATA_KINDS",
    "BackupState",
    "DataSpec",
    "Network",
    "NodeDef",
    "Scenario",
    "ScenarioError",
    "Simulation",
    "Step",
    "build_manifest",
    "compare_manifest",
    "generate_data",
    "load_scenario",
    "main",
    "parse_scenario",
    "pid_alive",
    "run_scenario",
]
