"""The ``gridnode`` command line.

Every command exits 0 on success and non-zero with one line on stderr
(``gridnode: error: ...``) otherwise.  ``--json`` prints machine output on stdout: for
long jobs, progress events as JSON lines and then one final object with
``"event": "result"`` (or ``"event": "error"`` with a ``message``).  Without ``--json``,
long jobs draw a progress bar on a terminal and print a short summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

from . import __version__
from .check_cli import EXAMPLE as CHECK_EXAMPLE
from .check_cli import add_check_parser
from .cli_common import (
    EXIT_ERROR,
    EXIT_INCOMPLETE,
    EXIT_NO_HOME,
    EXIT_NOT_RUNNING,
    CliError,
    absolute,
    add_convergence_secret,
    add_home,
    add_json,
    add_node_settings,
    backup_summary,
    call,
    finish,
    lazy,
    print_json,
    table,
)
from .config_keys import LOCATION_CHECKS
from .control_client import PROTOCOL_VERSION
from .errors import GridError, UserError
from .logic.tags import TagError, check_tags, parse_filter
from .units import format_bytes

__all__ = ["main"]


def cmd_status(args: argparse.Namespace) -> None:
    status = call(args, "status")
    if args.json:
        print_json(status)
        return
    print(
        f"node {status['short_id']} at {status['address']} "
        f"({status['city'] or 'no location'}), grid {status['grid_id'][:16]}"
    )
    st = status["storage"]
    print(
        f"storage: {format_bytes(st['used_bytes'])} used of "
        f"{format_bytes(st['allocated_bytes'])}, {st['packets']} packets"
    )
    if st.get("dir"):
        print(f"  in {st['dir']}")
    audits = status.get("audits") or []
    if audits:  # storage audits of this node's holders (gridnode.audit)
        distrusted = [a["short_id"] for a in audits if a.get("distrusted")]
        print(
            f"audits: {len(audits)} holders audited, {len(distrusted)} distrusted"
            + (f" ({', '.join(distrusted)})" if distrusted else "")
        )
    if status["members"]:
        print(
            table(
                [
                    (
                        m["short_id"],
                        m["address"],
                        m["state"],
                        m["city"],
                        m["distance_km"],
                        format_bytes(m["free_bytes"]),
                        m["rtt_ms"],
                        "yes" if m["trusted"] else "NO",
                    )
                    for m in status["members"]
                ],
                ["member", "address", "state", "city", "km", "free", "rtt ms", "trusted"],
            )
        )
    else:
        print("no other members known yet")


def _dry_run_summary(r: dict[str, Any]) -> str:
    quota = r.get("quota")
    fits = ""
    if quota and "fits" in quota:
        fits = "; it fits the source quota" if quota["fits"] else "; it would NOT fit the quota"
    return (
        f"dry run: {r['files']} files, {format_bytes(r['bytes'])}; {r['files_changed']} new "
        f"or changed ({format_bytes(r['bytes_changed'])}) since "
        f"{r['parent'] or 'no earlier snapshot'}; would store at most "
        f"{format_bytes(r['would_store_at_most'])} on the grid{fits}; nothing uploaded"
        + "".join(f"\n  note: {n}" for n in r.get("notes", [])[:10])
    )


def read_exclude_file(path: str) -> list[str]:
    """One glob per line; blank lines and lines starting with ``#`` are ignored (as in
    restic's and borg's exclude files)."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read the exclude file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"the exclude file {path} is not UTF-8 text") from None
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


_T = TypeVar("_T")


def _checked(check: Callable[[Sequence[str]], _T], values: Sequence[str]) -> _T:
    """A tag check whose ``TagError`` is a usage error, not a traceback."""
    try:
        return check(values)
    except TagError as exc:
        raise CliError(str(exc)) from None


def cmd_backup(args: argparse.Namespace) -> None:
    excludes = list(args.exclude or [])
    for path in args.exclude_file or []:
        excludes += read_exclude_file(path)
    params: dict[str, Any] = {
        "paths": [absolute(p) for p in args.paths],
        "excludes": excludes,
        "one_file_system": bool(args.one_file_system),
        "dry_run": bool(args.dry_run),
    }
    if args.tag:
        params["tags"] = list(_checked(check_tags, args.tag))
    if args.redundancy:
        params["redundancy"] = args.redundancy
    if args.backup_proximity is not None:
        params["backup_proximity"] = args.backup_proximity
    if args.packet_proximity is not None:
        params["packet_proximity"] = args.packet_proximity
    if args.distinct:
        params["distinct"] = list(args.distinct)
    result = call(args, "backup", params, long_job=True)
    if args.dry_run:
        finish(args, result, _dry_run_summary)
        return
    finish(args, result, backup_summary)  # 80 columns at most (cli_common)
    if result.get("skipped"):
        # Completed, but not everything is in it: a script must be able to tell.
        print(
            f"gridnode: warning: {result['skipped']} entries could not be read and are not "
            "in the snapshot (see the notes)",
            file=sys.stderr,
        )
        sys.exit(EXIT_INCOMPLETE)


def cmd_snapshots(args: argparse.Namespace) -> None:
    rows = call(args, "snapshots")
    if args.json:
        print_json(rows)
        return
    print(
        table(
            [
                (
                    r["snapshot_id"],
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])),
                    r["state"],
                    r["files"],
                    format_bytes(r["bytes"]),
                    " ".join(r["roots"]),
                    ",".join(r.get("tags") or ()),
                )
                for r in rows
            ],
            ["snapshot", "created", "state", "files", "size", "paths", "tags"],
        )
    )


def _local_time(when: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when else None


def cmd_schedule_list(args: argparse.Namespace) -> None:
    rows = call(args, "schedules")
    if args.json:
        print_json(rows)
        return
    if not rows:
        print("no schedules: add [[schedule]] tables to the home's gridnode.toml and restart")
        return
    print(
        table(
            [
                (
                    r["name"],
                    f"every {r['every']}" if r["every"] else f"at {r['at']}",
                    "running" if r["running"] else _local_time(r["next_run"]),
                    _local_time(r["last_run"]),
                    r["last_result"],
                    r["last_snapshot"],
                    " ".join(r["paths"]),
                )
                for r in rows
            ],
            ["schedule", "when", "next run", "last run", "result", "snapshot", "paths"],
        )
    )
    for r in rows:
        if r["last_error"]:
            print(f"{r['name']}: {r['last_error']}")


def cmd_restore(args: argparse.Namespace) -> None:
    params: dict[str, Any] = {"snapshot": args.snapshot, "to": absolute(args.to)}
    if args.path:
        params["path"] = args.path
    if args.numeric_owner:
        params["numeric_owner"] = True
    result = call(args, "restore", params, long_job=True)
    finish(
        args,
        result,
        lambda r: (
            f"restored {r['files']} files, {format_bytes(r['bytes'])} to {r['to']} "
            f"in {r['seconds']:.1f} s" + "".join(f"\n  note: {n}" for n in r.get("notes", [])[:10])
        ),
    )


def cmd_verify(args: argparse.Namespace) -> None:
    result = call(args, "verify", {"snapshot": args.snapshot}, long_job=True)
    finish(
        args,
        result,
        lambda r: (
            f"snapshot {r['snapshot_id']}: {'OK' if r['ok'] else 'DAMAGED'}: "
            f"{r['chunks_healthy']} chunks healthy, {r['chunks_degraded']} degraded, "
            f"{r['chunks_lost']} lost (fewest spare packets: {r['min_spare_packets']})"
        ),
    )
    if not result["ok"]:
        raise CliError(f"snapshot {result['snapshot_id']} cannot be fully restored")


#: ``forget --keep-*`` options and the policy keys they set (gridnode.logic.retention).
_KEEP_OPTIONS: Final = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def _policy(args: argparse.Namespace) -> dict[str, int]:
    policy = {
        f"keep_{name}": value
        for name in _KEEP_OPTIONS
        if (value := getattr(args, f"keep_{name}")) is not None
    }
    if args.keep_within is not None:
        from .units import parse_duration

        try:
            policy["keep_within_s"] = int(parse_duration(args.keep_within))
        except ValueError as exc:
            raise CliError(f"--keep-within: {exc}") from None
    return policy


def cmd_forget(args: argparse.Namespace) -> None:
    policy = _policy(args)
    if policy:
        if args.snapshot:
            raise CliError("give a snapshot or --keep-* options, not both")
        params: dict[str, Any] = {"policy": policy, "dry_run": bool(args.dry_run)}
        if args.tag:
            _checked(parse_filter, args.tag)
            params["tags"] = list(args.tag)
        result = call(args, "forget", params, long_job=True)
        finish(args, result, _policy_summary)
        return
    if not args.snapshot:
        raise CliError("forget what? give a snapshot, or a policy such as --keep-daily 7")
    if args.dry_run:
        raise CliError("--dry-run goes with --keep-* options")
    if args.tag:
        raise CliError("--tag goes with --keep-* options")
    result = call(args, "forget", {"snapshot": args.snapshot}, long_job=True)
    finish(
        args,
        result,
        lambda r: (
            f"forgot {r['snapshot_id']}: {r['chunks_freed']} chunks freed, "
            f"{r['packets_deleted']} packets deleted"
        ),
    )


def _policy_summary(r: dict[str, Any]) -> str:
    lines = [f"keep {k['snapshot_id']} ({', '.join(k['reasons'])})" for k in r["keep"]] + [
        f"{'would forget' if r['dry_run'] else 'forgot'} {sid}" for sid in r["forget"]
    ]
    if not r["dry_run"]:
        lines.append(
            f"{r['chunks_freed']} chunks freed, {r['packets_deleted']} packets deleted"
            + (f", {r['packets_unreachable']} unreachable" if r["packets_unreachable"] else "")
        )
    return "\n".join(lines)


def cmd_prune(args: argparse.Namespace) -> None:
    result = call(args, "prune", {}, long_job=True)
    finish(
        args,
        result,
        lambda r: (
            f"released {r['packets_released']} packets ({format_bytes(r['bytes_freed'])}), "
            f"{r['orphan_chunks_released']} orphan chunks; "
            f"{r['packets_pending']} deletes wait for holders that are away"
        ),
    )


def cmd_repair(args: argparse.Namespace) -> None:
    params = {} if args.snapshot in (None, "all") else {"snapshot": args.snapshot}
    result = call(args, "repair", params, long_job=True)
    finish(
        args,
        result,
        lambda r: (
            f"checked {r['chunks_checked']} chunks: {r['chunks_healthy']} healthy, "
            f"{r['chunks_repaired']} repaired ({r['packets_rebuilt']} packets rebuilt), "
            f"{r['chunks_lost']} lost, {r['chunks_unrepaired']} could not be repaired; "
            f"{len(r['records_rewritten'])} snapshot records rewritten"
        ),
    )
    if not result["ok"]:
        raise CliError("some chunks could not be brought back to full redundancy")


def cmd_placement(args: argparse.Namespace) -> None:
    result = call(args, "placement", {"snapshot": args.snapshot})
    if args.json:
        print_json(result)
        return
    src = result["source"]
    print(
        f"snapshot {result['snapshot_id']} from {src['city'] or 'source'} "
        f"({src['lat']}, {src['lon']}); rules {result['rules']}"
    )
    for chunk in result["chunks"]:
        print(
            f"chunk {chunk['chunk_id'][:12]} ({chunk['k']}/{chunk['n']}): pairwise "
            f"{chunk['pairwise_min_km']}-{chunk['pairwise_max_km']} km"
        )
        for p in chunk["packets"]:
            print(
                f"  packet {p['packet_id'][:12]} -> {p['target_short']} "
                f"{p['city'] or ''} {p['distance_km']} km"
            )


def cmd_log(args: argparse.Namespace) -> None:
    """The node streams the entries (``log`` events); they are gathered here, so
    ``--json`` prints the same object as when they came in one answer."""
    entries: list[dict[str, Any]] = []

    def gather(event: dict[str, Any]) -> None:
        if event.get("event") == "log" and isinstance(event.get("entries"), list):
            entries.extend(event["entries"])

    result = call(args, "log", {"stream": True}, on_event=gather)
    if isinstance(result.get("entries"), int):  # streamed: the answer counts them
        if len(entries) != result["entries"]:
            raise CliError(f"the node sent {len(entries)} of {result['entries']} log entries")
        result = {**result, "entries": entries}
    if args.json:
        print_json(result)
    else:
        for e in result["entries"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
            print(
                f"{e['seq']:5d} {when} {e['event']:<18} {e['snapshot_id'] or ''} "
                f"{json.dumps(e['detail'])}"
            )
        print(f"chain: {'verified' if result['verified'] else 'BROKEN'} ({result['detail']})")
    if not result["verified"]:
        raise CliError(f"the backup log fails verification: {result['detail']}")


def cmd_dashboard(args: argparse.Namespace) -> None:
    """A fresh one-time login link to the node's dashboard (``gridnode.dashboard``)."""
    result = call(args, "dashboard")
    if args.json:
        print_json(result)
    else:
        print(f"open {result['url']}")
        print(
            f"(a one-time link, valid for {int(result['expires_in_s'] // 60)} minutes; the "
            f"dashboard listens on {result['base_url']}, config key {result['config_key']})"
        )


def cmd_stop(args: argparse.Namespace) -> None:
    call(args, "shutdown")
    if not getattr(args, "json", False):
        print("node stopping")


def cmd_recover(args: argparse.Namespace) -> None:
    from .recover_cli import recover

    result = recover(args)
    if args.json:
        print_json(result)
    else:
        print(
            f"recovered {len(result['snapshots'])} snapshot(s) from recovery root "
            f"version {result['root_version']} into {result['home']}"
        )


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    ok = run_demo(args)
    if not ok:
        raise CliError("demo failed: the restored data did not match")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridnode",
        description="gridnode: back up to a peer-to-peer grid of other people's machines",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"gridnode {__version__} (protocol {PROTOCOL_VERSION})",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    grid = sub.add_parser("grid", help="grid files")
    grid_sub = grid.add_subparsers(dest="grid_command", required=True)
    create = grid_sub.add_parser("create", help="create a new grid file")
    create.add_argument("name", help="the grid's name")
    create.add_argument("--out", required=True, help="the grid file to write")
    create.add_argument("--seed", action="append", help="HOST:PORT of a first member")
    create.add_argument("--force", action="store_true", help="overwrite an existing file")
    create.add_argument(
        "--open",
        action="store_true",
        help="an open grid, without an authority: admits anyone who can reach a node",
    )
    add_json(create)
    create.set_defaults(fn=lazy("gridnode.home_cli", "cmd_grid_create"))

    p = sub.add_parser("init", help="create a node home")
    add_home(p)
    p.add_argument(
        "--grid",
        required=True,
        help="grid file from `gridnode authority init` (or `gridnode grid create --open`)",
    )
    p.add_argument("--key", help="reuse a key file (or - for a recovery phrase on stdin)")
    p.add_argument("--force", action="store_true", help="reuse a directory that is not empty")
    p.add_argument("--invite", help="invite code from the grid authority (used on first start)")
    p.add_argument("--plan", help="plan to subscribe under (with --invite)")
    add_node_settings(p, init=True)
    add_convergence_secret(p)
    add_json(p)
    p.set_defaults(fn=lazy("gridnode.home_cli", "cmd_init"))

    from .authority.cli_args import add_account_parser
    from .authority.cli_args import add_parsers as add_authority_parsers

    add_authority_parsers(sub)
    add_account_parser(sub)

    config = sub.add_parser("config", help="this home's configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    p = config_sub.add_parser(
        "show", help="every key as the node reads it, and which differ from the defaults"
    )
    add_home(p)
    add_json(p)
    p.set_defaults(fn=lazy("gridnode.home_cli", "cmd_config_show"))
    p = config_sub.add_parser(
        "reference", help="every config key: type, default, bounds, help (docs/CONFIG.md)"
    )
    p.set_defaults(fn=lazy("gridnode.home_cli", "cmd_config_reference"))

    p = sub.add_parser("run", help="run the node until SIGINT/SIGTERM")
    add_home(p)
    add_node_settings(p, init=False)
    p.add_argument("--quiet", action="store_true", help="do not print the start-up line")
    p.set_defaults(fn=lazy("gridnode.home_cli", "cmd_run"))

    for name, fn, helptext in (
        ("status", cmd_status, "this node and what it sees"),
        ("snapshots", cmd_snapshots, "list snapshots"),
        ("log", cmd_log, "the signed backup log"),
        ("dashboard", cmd_dashboard, "a one-time login link to the node's browser dashboard"),
        ("stop", cmd_stop, "stop the running node"),
    ):
        p = sub.add_parser(name, help=helptext)
        add_home(p)
        add_json(p)
        p.set_defaults(fn=fn)

    p = sub.add_parser(
        "leave",
        help="leave the grid for good: owners move this node's packets first",
    )
    add_home(p)
    p.add_argument(
        "--timeout",
        default="1h",
        help="how long to wait for the owners, e.g. 3600, 30m, 2d (default 1h)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="leave at the timeout even with packets still held (their owners repair them)",
    )
    p.add_argument(
        "--cancel", action="store_true", help="stop draining: take packets again and stay"
    )
    add_json(p)
    p.set_defaults(fn=lazy("gridnode.leave_cli", "cmd_leave"))

    schedule = sub.add_parser(
        "schedule", help="backups the node runs by itself ([[schedule]] in gridnode.toml)"
    )
    schedule_sub = schedule.add_subparsers(dest="schedule_command", required=True)
    p = schedule_sub.add_parser("list", help="each schedule's next run, last run and result")
    add_home(p)
    add_json(p)
    p.set_defaults(fn=cmd_schedule_list)

    p = sub.add_parser("backup", help="back up paths")
    add_home(p)
    p.add_argument("paths", nargs="+", help="files and directories to back up")
    p.add_argument("--redundancy", help="K/N erasure coding, e.g. 4/6")
    p.add_argument("--exclude", action="append", help="glob to skip (name or path)")
    p.add_argument(
        "--exclude-file",
        action="append",
        metavar="FILE",
        help="read globs to skip from FILE, one per line (# starts a comment)",
    )
    p.add_argument(
        "--one-file-system",
        action="store_true",
        help="record mount points but do not enter other file systems",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="walk and compare with the last snapshot; upload and record nothing",
    )
    p.add_argument(
        "--tag",
        action="append",
        metavar="TAG",
        help="label the snapshot (repeatable; 1-64 printable characters, no spaces or commas)",
    )
    p.add_argument("--backup-proximity", help="MIN:MAX distance source->targets (km or mi)")
    p.add_argument("--packet-proximity", help="MIN:MAX distance between targets")
    p.add_argument("--distinct", action="append", help="label whose values must all differ")
    add_json(p)
    p.set_defaults(fn=cmd_backup)

    p = sub.add_parser("restore", help="restore a snapshot (or one path of it)")
    add_home(p)
    p.add_argument("snapshot", help="snapshot id, unique prefix, or latest")
    p.add_argument("--to", required=True, help="directory to restore into (made if missing)")
    p.add_argument("--path", help="one file or sub-tree (as `ls` shows it; \\xHH for a byte)")
    p.add_argument(
        "--numeric-owner",
        action="store_true",
        help="as root, set owners by recorded number, not by user and group name",
    )
    add_json(p)
    p.set_defaults(fn=cmd_restore)

    p = sub.add_parser("ls", help="list what a snapshot holds (or one path of it)")
    add_home(p)
    p.add_argument("snapshot", help="snapshot id, unique prefix, or latest")
    p.add_argument("path", nargs="?", help="a file or sub-tree (as `ls` shows it)")
    p.add_argument("--long", "-l", action="store_true", help="type, mode, owner, size, mtime")
    add_json(p)
    p.set_defaults(fn=lazy("gridnode.listing_cli", "cmd_ls"))

    p = sub.add_parser(
        "find",
        help="find files by name or path glob in snapshots",
        description="Entries whose name (or, for a pattern with '/', whose path) matches "
        "PATTERN, in the given snapshots or all complete ones, newest first.  Example: "
        "gridnode find '*.pdf' latest",
    )
    add_home(p)
    p.add_argument("pattern", help="a glob: '*.pdf', 'home/*/taxes/*'")
    p.add_argument("snapshots", nargs="*", help="snapshot ids, prefixes or latest (default: all)")
    add_json(p)
    p.set_defaults(fn=lazy("gridnode.listing_cli", "cmd_find"))

    p = sub.add_parser("diff", help="what changed between two snapshots")
    add_home(p)
    p.add_argument("first", help="the older snapshot (id, prefix or latest)")
    p.add_argument("second", help="the newer snapshot (id, prefix or latest)")
    add_json(p)
    p.set_defaults(fn=lazy("gridnode.listing_cli", "cmd_diff"))

    p = sub.add_parser(
        "prune",
        help="free space now: send queued deletes, release orphaned packets",
        description="Send every delete a holder has not confirmed yet (a forget while it "
        "was away) and release the packets of backups that never completed, past "
        "orphan_grace_s. The node also does this by itself every lease_sweep_interval_s.",
    )
    add_home(p)
    add_json(p)
    p.set_defaults(fn=cmd_prune)

    p = sub.add_parser(
        "forget",
        help="drop a snapshot, or all but those a retention policy keeps, and free packets",
        description="Forget one snapshot, or apply a retention policy (restic's rules) to "
        "the complete snapshots of each set of backed-up paths: the newest snapshot of each "
        "of the last N hours/days/weeks/months/years with one is kept, and the N newest "
        "with --keep-last.",
    )
    add_home(p)
    p.add_argument("snapshot", nargs="?", help="snapshot id, unique prefix, or latest")
    for name in _KEEP_OPTIONS:
        p.add_argument(
            f"--keep-{name}",
            type=int,
            metavar="N",
            help=f"keep the newest snapshot of each of the last N {name} periods"
            if name != "last"
            else "keep the N newest snapshots",
        )
    p.add_argument(
        "--keep-within",
        metavar="DURATION",
        help="keep every snapshot within DURATION of the newest (30d, 12h)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list what the policy keeps and forgets; forget nothing",
    )
    p.add_argument(
        "--tag",
        action="append",
        metavar="TAG[,TAG...]",
        help="apply the policy only to snapshots with these tags (all of one --tag's "
        "comma-separated tags; repeat for either/or); the others are left alone",
    )
    add_json(p)
    p.set_defaults(fn=cmd_forget)

    for name, fn, helptext in (
        ("verify", cmd_verify, "fetch and check every packet"),
        ("placement", cmd_placement, "where each packet went"),
    ):
        p = sub.add_parser(name, help=helptext)
        add_home(p)
        p.add_argument("snapshot", help="snapshot id, unique prefix, or latest")
        add_json(p)
        p.set_defaults(fn=fn)

    p = sub.add_parser("repair", help="rebuild lost packets on new holders, under the rules")
    add_home(p)
    p.add_argument("snapshot", nargs="?", help="one snapshot (default: every complete one)")
    add_json(p)
    p.set_defaults(fn=cmd_repair)
    add_check_parser(sub)

    p = sub.add_parser("key", help="show or export this node's key")
    add_home(p)
    p.add_argument(
        "action",
        choices=["id", "phrase", "export"],
        help="id: the node id; phrase: the recovery phrase that holds the key; export: a key file",
    )
    p.add_argument("--out", help="the key file to write (export; mode 600)")
    p.set_defaults(fn=lazy("gridnode.home_cli", "cmd_key"))

    p = sub.add_parser("recover", help="rebuild a lost node's catalog from the grid")
    add_home(p)
    p.add_argument("--key", required=True, help="key file, or - for the phrase on stdin")
    p.add_argument("--grid", required=True, help="the grid file the node belonged to")
    p.add_argument("--seed", action="append", required=True, help="HOST:PORT of a member to ask")
    p.add_argument(
        "--listen", default="127.0.0.1:0", help="HOST:PORT for the recovered node's home"
    )
    p.add_argument("--advertise", help="HOST:PORT other members dial")
    p.add_argument("--location", help='"CITY" or LAT,LON of the new machine')
    p.add_argument("--allocate", help="storage to offer the grid, e.g. 50GB")
    p.add_argument(
        "--location-check",
        choices=LOCATION_CHECKS,
        help="check members' claimed locations (default enforce)",
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the grid (default 60)"
    )
    p.add_argument("--dedup-group", help="the dedup group the lost node was in")
    add_convergence_secret(p)
    add_json(p)
    p.set_defaults(fn=cmd_recover)

    p = sub.add_parser("demo", help="a local grid in European cities: back up, lose, restore")
    p.add_argument("--dir", help="where to put the demo grid (default: a temp dir)")
    p.add_argument("--nodes", type=int, default=8, help="how many nodes (default 8)")
    p.add_argument("--keep", action="store_true", help="leave the grid's files behind")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("completion", help="shell completion script (bash, zsh or tcsh)")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell to complete for")
    p.set_defaults(fn=cmd_completion)

    p = sub.add_parser("manpage", help="the man page, in roff (man -l <(gridnode manpage))")
    p.set_defaults(fn=cmd_manpage)
    _add_examples(parser)
    return parser


#: The exit codes, for the man page (the README lists the same).
EXIT_CODES: Final = (
    (0, "done"),
    (EXIT_ERROR, "an error; the line on stderr says which"),
    (2, "a usage error"),
    (3, "a backup completed but could not read some entries (named in its notes)"),
    (EXIT_NO_HOME, "no such home (no gridnode.toml): gridnode init makes one"),
    (EXIT_NOT_RUNNING, "the home's node is not running: gridnode run starts it"),
    (6, "check: a snapshot is below the repair threshold (and was not repaired)"),
    (130, "interrupted"),
)


def cmd_completion(args: argparse.Namespace) -> None:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))


def cmd_manpage(args: argparse.Namespace) -> None:
    from .manpage import render

    parser = build_parser()
    print(
        render(
            parser,
            list(iter_commands(parser)),
            dict(EXAMPLES),
            version=f"{__version__} (protocol {PROTOCOL_VERSION})",
            exit_codes=EXIT_CODES,
        ),
        end="",
    )


#: One example per command, shown under its --help (and in the man page).
EXAMPLES: Final = {
    "grid create": "gridnode grid create lab --out lab-grid.toml --open",
    "init": "gridnode init --home ~/gn --grid office-grid.toml --listen 0.0.0.0:7400 "
    '--advertise 10.0.0.7:7400 --location "Zürich" --allocate 500GB --invite inv-...',
    "authority init": "gridnode authority init --home ~/gn-auth --out office-grid.toml "
    "--listen 0.0.0.0:7400 --advertise 10.0.0.5:7400 --name office",
    "authority invite": "gridnode authority invite --home ~/gn-auth --plan small",
    "authority requests": "gridnode authority requests --home ~/gn-auth",
    "authority approve": "gridnode authority approve --home ~/gn-auth NODE_ID --plan small",
    "authority deny": "gridnode authority deny --home ~/gn-auth NODE_ID",
    "authority revoke": "gridnode authority revoke --home ~/gn-auth NODE_ID",
    "authority clients": "gridnode authority clients --home ~/gn-auth --json",
    "authority log": "gridnode authority log --home ~/gn-auth",
    "subscribe": "gridnode subscribe --home ~/gn --invite inv-...",
    "account": "gridnode account --home ~/gn",
    "run": "gridnode run --home ~/gn --log-level info",
    "config show": "gridnode config show --home ~/gn",
    "config reference": "gridnode config reference > docs/CONFIG.md",
    "status": "gridnode status --home ~/gn",
    "snapshots": "gridnode snapshots --home ~/gn",
    "log": "gridnode log --home ~/gn",
    "dashboard": "gridnode dashboard --home ~/gn",
    "schedule list": "gridnode schedule list --home ~/gn --json",
    "stop": "gridnode stop --home ~/gn",
    "leave": "gridnode leave --home ~/gn --timeout 2d",
    "backup": "gridnode backup --home ~/gn ~/Documents --exclude-file ~/.gridnode-excludes "
    "--backup-proximity 100km:3000km --tag documents",
    "restore": "gridnode restore --home ~/gn latest --to /tmp/restore --path Documents/taxes",
    "ls": "gridnode ls --home ~/gn latest Documents --long",
    "find": "gridnode find --home ~/gn '*.pdf' latest",
    "diff": "gridnode diff --home ~/gn SNAP_A SNAP_B",
    "verify": "gridnode verify --home ~/gn latest",
    "forget": "gridnode forget --home ~/gn --keep-daily 7 --keep-weekly 4 --keep-monthly 12 "
    "--tag documents",
    "prune": "gridnode prune --home ~/gn --json",
    "placement": "gridnode placement --home ~/gn latest",
    "repair": "gridnode repair --home ~/gn",
    "check": CHECK_EXAMPLE,
    "key": "gridnode key phrase --home ~/gn",
    "recover": "gridnode recover --home ~/gn2 --key - --grid office-grid.toml --seed 10.0.0.5:7400",
    "demo": "gridnode demo --nodes 8",
}


def iter_commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every leaf command's words and parser (``("authority", "init")``, ...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from iter_commands(child, (*prefix, name))
            return
    if prefix:
        yield prefix, parser


def _add_examples(parser: argparse.ArgumentParser) -> None:
    for words, command in iter_commands(parser):
        example = EXAMPLES.get(" ".join(words))
        if example:
            command.epilog = f"example:\n  {example}"
            command.formatter_class = argparse.RawDescriptionHelpFormatter


#: Options whose value may be coordinates, and coordinates with a leading minus.
_COORDINATE_OPTIONS: Final = frozenset({"--location"})


_NEGATIVE_COORDINATES: Final = re.compile(r"^-\d+(\.\d+)?\s*,\s*-?\d+(\.\d+)?$")


def _join_negative_coordinates(argv: Sequence[str]) -> list[str]:
    """``--location -33.87,151.21`` as ``--location=-33.87,151.21``: argparse takes any
    word starting with ``-`` that is not a plain number for an option, so every
    southern-hemisphere latitude was refused."""
    out: list[str] = []
    words = list(argv)
    i = 0
    while i < len(words):  # bounded: i grows every pass
        word = words[i]
        if (
            word in _COORDINATE_OPTIONS
            and i + 1 < len(words)
            and _NEGATIVE_COORDINATES.match(words[i + 1])
        ):
            out.append(f"{word}={words[i + 1]}")
            i += 2
            continue
        out.append(word)
        i += 1
    return out


#: Commands that log nothing themselves: ``run`` sets its own level, the others only ask
#: the running node, and skip importing structlog (their speed is the point).
_NO_LOGGING: Final = frozenset(
    {
        "run", "status", "snapshots", "log", "stop", "backup", "restore", "ls", "find",
        "diff", "verify", "forget", "prune", "placement", "repair", "completion", "manpage",
        "schedule", "leave", "dashboard", "check",
    }
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> NoReturn:
    words = sys.argv[1:] if argv is None else list(argv)
    if words == ["--version"]:  # answered before the whole parser is built
        print(f"gridnode {__version__} (protocol {PROTOCOL_VERSION})")
        sys.exit(0)
    parser = build_parser()
    args = parser.parse_args(_join_negative_coordinates(words))
    if args.command not in _NO_LOGGING:
        from .log import configure_logging

        configure_logging(os.environ.get("GRIDNODE_LOG_LEVEL", "warning"))
    try:
        args.fn(args)
    except (CliError, GridError, UserError) as exc:
        print(f"gridnode: error: {exc}", file=sys.stderr)
        sys.exit(exc.code if isinstance(exc, CliError) else EXIT_ERROR)
    except KeyboardInterrupt:
        print("gridnode: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # `gridnode ls ... | head`: the reader has what it wanted.  Point stdout at
        # /dev/null so the interpreter's final flush does not complain (Python's docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_ERROR)
    except OSError as exc:
        print(
            f"gridnode: error: {exc.strerror or exc}"
            f"{': ' + str(exc.filename) if exc.filename else ''}",
            file=sys.stderr,
        )
        sys.exit(1)
    sys.exit(0)
