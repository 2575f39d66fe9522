"""``gridnode ls``, ``find`` and ``diff``: what a snapshot holds, printed from the node's
answers (the node reads its catalog: ``gridnode.listing``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .cli_common import CliError, call, print_json

__all__ = ["cmd_diff", "cmd_find", "cmd_ls"]


def cmd_ls(args: argparse.Namespace) -> None:
    """Rows are printed as the node streams them, a page at a time, so a listing of
    any size neither waits for the whole nor sits in memory; ``--json`` still prints
    one JSON list, written as it comes."""
    params: dict[str, Any] = {"snapshot": args.snapshot, "stream": True}
    if args.path:
        params["path"] = args.path
    listing = _Listing(args.json, args.long)
    answer = call(args, "ls", params, on_event=listing.event)
    if isinstance(answer, list):  # a node from before streaming answers with the rows
        listing.rows(answer)
    # Only a complete listing is closed: a JSON list cut short by an error stays invalid.
    listing.close()


class _Listing:
    """``ls`` output, row by row: text lines, or one JSON list written piecewise (the
    same bytes ``print_json`` gives for the whole list)."""

    def __init__(self, as_json: bool, long: bool) -> None:
        self.as_json = as_json
        self.long = long
        self.count = 0

    def event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "entries" and isinstance(event.get("entries"), list):
            self.rows(event["entries"])

    def rows(self, rows: list[dict[str, Any]]) -> None:
        out = sys.stdout
        for r in rows:
            if self.as_json:
                out.write(("[" if self.count == 0 else ", ") + json.dumps(r))
            elif self.long:
                owner = f"{r.get('user') or r.get('uid')}/{r.get('group') or r.get('gid')}"
                target = f" -> {r['link_target']}" if "link_target" in r else ""
                out.write(
                    f"{_TYPE_LETTER.get(r['type'], '?')}{r['mode']} {owner:>16} "
                    f"{r['size']:>12} {r['mtime'][:19].replace('T', ' ')} {r['path']}{target}\n"
                )
            else:
                out.write(f"{r['path']}\n")
            self.count += 1
        out.flush()

    def close(self) -> None:
        if self.as_json:
            sys.stdout.write(("[" if self.count == 0 else "") + "]\n")
            sys.stdout.flush()


_TYPE_LETTER = {
    "file": "-",
    "dir": "d",
    "symlink": "l",
    "fifo": "p",
    "chardev": "c",
    "blockdev": "b",
    "socket": "s",
}


def cmd_find(args: argparse.Namespace) -> None:
    result = call(args, "find", {"pattern": args.pattern, "snapshots": list(args.snapshots)})
    if args.json:
        print_json(result)
        return
    for m in result["matches"]:
        print(
            f"{m['snapshot_id']}  {m['mtime'][:19].replace('T', ' ')} {m['size']:>12}  {m['path']}"
        )
    if result["truncated"]:
        print(f"... {result['total'] - len(result['matches'])} more matches not shown")


def cmd_diff(args: argparse.Namespace) -> None:
    """The node streams the lists in pages (``diff`` events); they are put back
    together here, so ``--json`` prints the same object as before."""
    lists: dict[str, list[Any]] = {"added": [], "removed": [], "changes": []}

    def gather(event: dict[str, Any]) -> None:
        if event.get("event") == "diff":
            for key, found in lists.items():
                page = event.get(key)
                if isinstance(page, list):
                    found.extend(page)

    answer = call(
        args, "diff", {"from": args.first, "to": args.second, "stream": True}, on_event=gather
    )
    result = answer
    if isinstance(answer.get("added"), int):  # streamed: the answer counts the pages' items
        for key, found in lists.items():
            if len(found) != answer[key]:
                raise CliError(f"the node sent {len(found)} of {answer[key]} {key} entries")
        result = {
            "event": answer["event"],
            "from": answer["from"],
            "to": answer["to"],
            "added": lists["added"],
            "removed": lists["removed"],
            "changed": [c["path"] for c in lists["changes"]],
            "changes": lists["changes"],
        }
    if args.json:
        print_json(result)
        return
    fields = {c["path"]: ",".join(c["fields"]) for c in result["changes"]}
    for mark, key in (("+", "added"), ("-", "removed"), ("M", "changed")):
        for path in result[key]:
            print(f"{mark} {path}" + (f"  ({fields[path]})" if mark == "M" else ""))
