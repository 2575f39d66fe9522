"""``gridnode recover``: a fresh home from the key alone, the catalog from the grid.

It writes a node home with the given key (as ``init`` would), starts that node in this
process, joins the grid through the seed, waits until the member view stops growing
(every member that might hold the recovery root is then known), rebuilds the catalog,
and stops.  Afterwards ``gridnode run`` starts the node normally and ``restore`` works.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Any

import trio

from .cli_common import CliError, resolve_home
from .config import CONFIG_NAME, load_config
from .home_cli import init_home
from .identity import read_key_argument
from .log import configure_logging

__all__ = ["recover"]

#: The member view must stay unchanged this long before the grid is asked for the root.
SETTLE_S = 2.0


def recover(args: argparse.Namespace) -> dict[str, Any]:
    home = resolve_home(args)
    if (home / CONFIG_NAME).exists():
        raise CliError(f"{home} is already a node home; recover into a new directory")
    stdin = sys.stdin.read() if args.key == "-" else None
    identity = read_key_argument(args.key, stdin)
    configure_logging("warning")
    made = not home.exists()
    info = init_home(home, args, identity)
    try:
        config = load_config(home)
        result = trio.run(_recover_async, config, identity, args.timeout)
    except BaseException:
        # A home this call made and could not fill is taken away again, so the next
        # try (with the missing flag, a reachable seed) runs the same command.  One
        # that existed before is left as it is: it is not ours to delete.
        if made:
            shutil.rmtree(home, ignore_errors=True)
        raise
    result["home"] = str(home)
    result["node_id"] = info["node_id"]
    return result


async def _recover_async(config: Any, identity: Any, timeout_s: float) -> dict[str, Any]:
    from .node import Node
    from .recovery import recover_catalog

    node = Node(config, identity)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert node.gossiper is not None
        with trio.move_on_after(timeout_s) as scope:
            last_count, stable_since = -1, trio.current_time()
            while True:
                count = len(node.gossiper.alive())
                now = trio.current_time()
                if count != last_count:
                    last_count, stable_since = count, now
                elif count > 0 and now - stable_since >= SETTLE_S:
                    break
                await trio.sleep(0.2)
        if scope.cancelled_caught:
            node.shutdown()
            raise CliError(
                f"could not reach the grid through {', '.join(config.seeds)} within {timeout_s:g} s"
            )
        try:
            forwarder = node.log_forwarder
            result = await recover_catalog(
                node.services, forwarder.authority_head if forwarder is not None else None
            )
        finally:
            node.shutdown()
    return result
