"""``gridnode check``: the command's arguments and its output (the node's side is
``gridnode.check``).

Standard library and ``cli_common`` only: like every command that asks the running
node, it must start in milliseconds (no trio, protocol, structlog, nacl or attrs).
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from .cli_common import EXIT_BELOW_THRESHOLD, CliError, add_home, add_json, call, finish, table

__all__ = ["add_check_parser", "check_summary", "cmd_check"]

EXAMPLE: Final = "gridnode check --home ~/gn --repair"
#: Holders named in the summary line; the rest are counted.
_NAMED: Final = 3


def add_check_parser(sub: Any) -> None:
    """``gridnode check`` on ``sub`` (the top-level subparsers)."""
    p = sub.add_parser(
        "check",
        help="each snapshot's weakest chunk, from the member view and the audits (no download)",
        description="For every complete snapshot: the surviving packets of its weakest "
        "chunk (holders alive in the member view and not distrusted by the storage "
        "audits; how many of those passed an audit in the last day) and whether any chunk "
        "reached the repair threshold (repair_threshold packets gone).  Nothing is "
        "downloaded: `verify` fetches every packet.  With --repair, the chunks at the "
        "threshold are rebuilt on new holders (as the automatic repair does) and checked "
        f"again.  Exit code {EXIT_BELOW_THRESHOLD} when a snapshot stays below the threshold.",
    )
    add_home(p)
    p.add_argument(
        "--repair",
        action="store_true",
        help="rebuild the chunks at the repair threshold now, then check again",
    )
    add_json(p)
    p.set_defaults(fn=cmd_check)


def _state(snap: dict[str, Any]) -> str:
    if snap["chunks_lost"]:
        return "LOST"
    if snap["below_threshold"]:
        return "below"
    return "repaired" if snap.get("repaired") else "ok"


def _holders(kind: str, holders: list[dict[str, Any]]) -> str:
    names = ", ".join(h["short_id"] for h in holders[:_NAMED])
    more = f" and {len(holders) - _NAMED} more" if len(holders) > _NAMED else ""
    return f"holders {kind}: {len(holders)} ({names}{more})"


def check_summary(r: dict[str, Any]) -> str:
    """One line per snapshot (a table that fits 80 columns for counts up to ten digits),
    then what did not count and what a repair did."""
    rows = [
        (
            s["snapshot_id"],
            f"{s['weakest_chunk_packets']}/{s['n']}",
            s["k"],
            s["weakest_chunk_audited"],
            s["chunks"],
            s["chunks_below_threshold"],
            _state(s),
        )
        for s in r["snapshots"]
    ]
    headers = ("snapshot", "weakest", "k", "audited", "chunks", "below", "state")
    lines = [table(rows, headers)] if rows else ["no complete snapshot"]
    if r["holders_gone"]:
        lines.append(_holders("gone", r["holders_gone"]))
    if r["holders_distrusted"]:
        lines.append(_holders("distrusted", r["holders_distrusted"]))
    repaired = r.get("repaired")
    if repaired:
        lines.append(
            f"repair: {repaired['chunks_repaired']} chunks repaired "
            f"({repaired['packets_rebuilt']} packets rebuilt), {repaired['chunks_lost']} "
            f"lost, {repaired['chunks_unrepaired']} could not be repaired"
        )
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> None:
    result = call(args, "check", {"repair": bool(args.repair)}, long_job=True)
    finish(args, result, check_summary)
    below = [s["snapshot_id"] for s in result["snapshots"] if s["below_threshold"]]
    if below:
        hint = "" if args.repair else "; `gridnode check --repair` rebuilds them"
        raise CliError(
            f"{len(below)} snapshot(s) below the repair threshold ({', '.join(below[:3])}"
            f"{', ...' if len(below) > 3 else ''}){hint}",
            EXIT_BELOW_THRESHOLD,
        )
