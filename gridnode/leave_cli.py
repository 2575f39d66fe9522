"""``gridnode leave`` on the command line (the node's side is ``gridnode.leave``).

Imported only when the command runs (``cli_common.lazy``); like every command that asks
the node, it imports no trio, protocol, structlog, nacl or attrs.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Final

from .cli_common import EXIT_INCOMPLETE, CliError, call, finish, resolve_home
from .control_client import call as control_call
from .control_files import ControlError, NodeNotRunning
from .units import parse_duration

__all__ = ["cmd_leave"]

#: How long ``gridnode leave`` waits for the node to stop after its hand-over.
LEAVE_STOP_WAIT_S: Final = 30.0


def _leave_summary(r: dict[str, Any]) -> str:
    if r["ok"]:
        return f"hand-over complete ({r['packets_at_start']} packets moved); the node has left"
    text = (
        f"{r['packets_held']} of {r['packets_at_start']} packets still held after "
        f"{r['timeout_s']:.0f} s: their owners did not move them (away, or no room "
        "under their rules)"
    )
    if r["left"]:
        return text + "; left anyway (--force): their owners' repair will rebuild them"
    return text + (
        "; the node keeps draining: run `gridnode leave` again to wait longer, "
        "--force to leave anyway, or --cancel to stay"
    )


def cmd_leave(args: argparse.Namespace) -> None:
    if args.cancel:
        if args.force:
            raise CliError("give --force or --cancel, not both")
        result = call(args, "leave", {"cancel": True})
        finish(args, result, lambda r: "draining cancelled: the node takes packets again")
        return
    try:
        timeout_s = parse_duration(args.timeout)
    except ValueError as exc:
        raise CliError(f"--timeout: {exc}") from None
    params = {"timeout_s": timeout_s, "force": bool(args.force)}
    result = call(args, "leave", params, long_job=True)
    if result["left"]:
        # Returns once the node has announced its departure and stopped: a script may go
        # on to switch the machine off or wipe the home.
        home = resolve_home(args)
        deadline = time.monotonic() + LEAVE_STOP_WAIT_S
        while time.monotonic() < deadline:  # bounded by the deadline
            try:
                control_call(home, "status", timeout_s=5)
            except (NodeNotRunning, ControlError, OSError):
                break
            time.sleep(0.2)
    finish(args, result, _leave_summary)
    if not result["ok"] and not result["left"]:
        raise CliError("the hand-over is not complete; the node has not left", EXIT_INCOMPLETE)
