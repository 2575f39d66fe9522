"""The commands that work on a node's home itself rather than asking its running node:
``grid create``, ``init``, ``run``, ``key``.  They need the node's machinery (the config
and its validation, the identity's keys, trio, the node), so ``gridnode.cli`` imports this
module only when one of them runs."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import trio

from .cli_common import CliError, print_json, resolve_home
from .config import CONFIG_NAME, GridFile, build_config, load_config, parse_address
from .config_keys import CONFIG_KEYS, check_settable, reference_markdown
from .dedup_group import install_group, prepare_group
from .exception_groups import collapse_groups
from .identity import NodeIdentity, load_identity, read_key_argument
from .log import configure_logging
from .storage.location import check_packet_root
from .units import format_bytes

__all__ = [
    "cmd_config_reference",
    "cmd_config_show",
    "cmd_grid_create",
    "cmd_init",
    "cmd_key",
    "cmd_run",
    "init_home",
    "init_values",
]


def cmd_grid_create(args: argparse.Namespace) -> None:
    if not args.open:
        raise CliError(
            "a grid is created with `gridnode authority init` (its authority admits nodes by "
            "invitation); `gridnode grid create NAME --out FILE --open` writes an open grid, "
            "which admits anyone who can reach one of its nodes"
        )
    grid = GridFile(name=args.name, grid_id=os.urandom(16), seeds=tuple(args.seed or ()))
    for seed in grid.seeds:
        parse_address(seed, key="seed")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise CliError(f"{out} exists; use --force to overwrite")
    grid.save(out)
    if args.json:
        print_json(
            {"name": grid.name, "grid_id": grid.grid_id.hex(), "file": str(out), "open": True}
        )
    else:
        print(f"open grid {grid.name!r} ({grid.grid_id.hex()}) written to {out}")


#: Flags that map one to one onto config keys (declared in ``gridnode.config_keys``):
#: those of ``init`` and ``run``, and those of ``init`` alone.
_RUN_KEYS = tuple(key.name for key in CONFIG_KEYS if key.flag == "run")
_INIT_KEYS = (*_RUN_KEYS, *(key.name for key in CONFIG_KEYS if key.flag == "init"))


def _given(args: argparse.Namespace, keys: Sequence[str]) -> dict[str, Any]:
    """The config values given as flags (a flag left out keeps the file's value)."""
    return {key: value for key in keys if (value := getattr(args, key, None)) is not None}


def _set_items(args: argparse.Namespace) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs for any key declared settable (the grid file's are not);
    the values are validated with the rest of the config."""
    values: dict[str, Any] = {}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--set expects KEY=VALUE, got {item!r}")
        values[check_settable(key.strip()).name] = value.strip()
    return values


def _absolute_storage(values: dict[str, Any]) -> dict[str, Any]:
    """A ``storage_dir`` given on the command line is relative to where the command
    runs, as a shell user means it; the file's own relative value is the home's."""
    given = values.get("storage_dir")
    if isinstance(given, str) and given.strip():
        values["storage_dir"] = os.path.abspath(os.path.expanduser(given.strip()))
    return values


def init_values(args: argparse.Namespace, grid: GridFile) -> dict[str, Any]:
    values: dict[str, Any] = {
        "grid_id": grid.grid_id.hex(),
        "grid_name": grid.name,
        "seeds": list(args.seed or grid.seeds),
        "authority_key": grid.authority_key.hex(),
        "authority_address": grid.authority_address,
        **_given(args, _INIT_KEYS),
    }
    if getattr(args, "label", None):
        values["labels"] = list(args.label)
    return _absolute_storage(values | _set_items(args))


#: A default allocation is fitted to at most this share of what the disk can give, so
#: that the node's own catalog, logs and the machine's other users keep some room.
_DEFAULT_FIT_SHARE = 0.9
#: Below this, a fitted default would offer the grid too little to be worth joining with;
#: the user is asked to decide (``--allocate``) rather than given a token allocation.
_DEFAULT_FIT_FLOOR = 256 * 1024 * 1024


class DiskRoom(NamedTuple):
    """What an allocation for the packet store at a path can count on: the disk's free
    bytes plus what is already stored there (``probe``: the existing path measured)."""

    probe: Path
    free: int
    held: int


def disk_room(where: Path) -> DiskRoom:
    """Measured once per init: ``held`` walks the whole packet store."""
    probe = where
    for _ in range(64):  # bounded: a path has fewer parts than this
        if probe.exists() or probe == probe.parent:
            break
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    held = _tree_bytes(where) if where.exists() else 0
    return DiskRoom(probe, free, held)


def fit_default_allocation(room: DiskRoom, default: int) -> int:
    """The allocation a node gets when the user named none: the shipped default, or, on a
    disk that cannot give that much, 90% of what it can give (rounded down to whole MB).
    Before, an init or a ``gridnode recover`` without ``--allocate`` on a disk with less
    than 10 GB free was refused over a flag the user had never typed; recovering one's
    data must not hinge on a default."""
    can_give = room.free + room.held
    if default <= can_give:
        return default
    fitted = int(can_give * _DEFAULT_FIT_SHARE) // 1_000_000 * 1_000_000
    if fitted < _DEFAULT_FIT_FLOOR:
        raise CliError(
            f"the disk of {room.probe} has {format_bytes(room.free)} free, too little to "
            "offer the grid "
            f"(the default allocation is {format_bytes(default)}); free space, or name an "
            "allocation with --allocate"
        )
    return fitted


def check_allocation(room: DiskRoom, allocated: int) -> None:
    """Refuse an allocation the disk cannot hold: ``--allocate 500TB`` on a small disk was
    accepted, and the grid then placed packets on a node that could not keep them.
    Counted (``room``, from ``disk_room``): the free space of the disk the packets go to
    (the packet store's directory: ``storage_dir`` or ``HOME/storage``, or its nearest
    existing parent) plus what is already stored there."""
    probe, free, held = room
    if allocated > free + held:
        raise CliError(
            f"--allocate {format_bytes(allocated)} is more than the disk of {probe} can give "
            f"({format_bytes(free)} free"
            + (f", plus {format_bytes(held)} the node already holds" if held else "")
            + "); allocate less, or free space first"
        )


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):  # gone since the walk listed it
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def init_home(
    home: Path, args: argparse.Namespace, identity: NodeIdentity, *, grid: GridFile | None = None
) -> dict[str, Any]:
    """Create a node home (config, key, control token); ``grid`` defaults to ``--grid``."""
    if grid is None:
        grid = GridFile.load(Path(args.grid))
    values = init_values(args, grid)
    config = build_config(home, values)
    room = disk_room(config.packet_root)
    allocation_fitted = False
    if "allocate" not in values:
        fitted = fit_default_allocation(room, config.allocated_bytes)
        if fitted != config.allocated_bytes:
            values["allocate"] = str(fitted)  # written to the config: the node keeps it
            config = build_config(home, values)
            allocation_fitted = True
    check_allocation(room, config.allocated_bytes)
    if config.storage_dir:
        # Made here, so that a run finds it; a run never makes it (a directory missing
        # then is a disk not mounted, and the node must not start empty on its mount point).
        config.packet_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_packet_root(home, config.packet_root)
    group = prepare_group(
        home,
        config.dedup_group,
        getattr(args, "convergence_secret_file", None),
        getattr(args, "new_convergence_secret", None),
    )
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    identity.write_key_file(config.key_path)
    install_group(home, group)  # the group's key: in the home (0600), never in the config
    config.save()
    from .control import ensure_token

    ensure_token(home)
    return {
        "home": str(home),
        "node_id": identity.printable_id,
        "short_id": identity.short_id,
        "grid_id": grid.grid_id.hex(),
        "listen": config.listen_address,
        "city": config.city,
        "lat": config.lat,
        "lon": config.lon,
        "allocated_bytes": config.allocated_bytes,
        "allocation_fitted": allocation_fitted,
        "storage_dir": str(config.packet_root),
        "key_file": str(config.key_path),
        "redundancy": config.redundancy,
        "dedup_group": group.name if group else None,
        "dedup_group_fingerprint": group.fingerprint if group else None,
    }


def cmd_init(args: argparse.Namespace) -> None:
    home = resolve_home(args)
    if (home / CONFIG_NAME).exists() and not args.force:
        raise CliError(f"{home} is already a node home; use --force to overwrite its config")
    if args.key:
        stdin = sys.stdin.read() if args.key == "-" else None
        identity = read_key_argument(args.key, stdin)
    elif (home / "node.key").exists():
        identity = load_identity(home / "node.key")
    else:
        identity = NodeIdentity.generate()
    if args.invite and GridFile.load(Path(args.grid)).open:
        raise CliError("--invite: this grid file is an open grid's; it has no authority")
    if args.plan and not args.invite:
        raise CliError("--plan goes with --invite")
    info = init_home(home, args, identity)
    if args.invite:
        from .authority.client import save_pending_invite

        # Used on the node's first start: subscribing needs the node running.
        save_pending_invite(home, args.invite, args.plan or "")
        info["invite_pending"] = True
    if args.json:
        print_json(info)
    else:
        print(f"node {info['short_id']} initialised in {home}")
        print(
            f"  listen {info['listen']}, location {info['city'] or info['lat']}, "
            f"allocation {format_bytes(info['allocated_bytes'])}"
            + (" (fitted to the disk's free space)" if info["allocation_fitted"] else "")
        )
        print(f"  packets held for others go to {info['storage_dir']}")
        n = int(str(info["redundancy"]).split("/")[1])
        print(
            f"  backups default to {info['redundancy']} erasure coding: they need a grid of "
            f"{n + 1} members or more (on a smaller grid, back up with --redundancy K/N)"
        )
        print(
            f"  key file {info['key_file']}: keep a copy off this machine "
            f"(or run `gridnode key phrase --home {home}` and write the phrase down)"
        )
        if info["dedup_group"]:
            print(
                f"  dedup group {info['dedup_group']} (fingerprint "
                f"{info['dedup_group_fingerprint']}): data the members share is stored once; "
                "keep the group's secret with the key (a recovery needs both)"
            )


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = _given(args, _RUN_KEYS)
    if getattr(args, "seed", None):
        values["seeds"] = list(args.seed)
    return _absolute_storage(values | _set_items(args))


async def serve_until_signalled(node_run: Callable[..., Any]) -> None:
    """Run a node until SIGINT/SIGTERM, then shut it down gracefully (exit code 0)."""
    async with trio.open_nursery() as nursery:
        node = await nursery.start(node_run)

        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    node.shutdown()
                    return

        nursery.start_soon(watch)
        await node.stopped.wait()
        nursery.cancel_scope.cancel()


def cmd_run(args: argparse.Namespace) -> None:
    from .memory import tune_allocator
    from .node import Node

    tune_allocator()
    home = resolve_home(args)
    config = load_config(home, _run_overrides(args))
    configure_logging(config.log_level)
    identity = load_identity(config.key_path)
    node = Node(config, identity)
    if not args.quiet:
        print(
            f"gridnode {identity.short_id} starting on {config.listen_address} "
            f"(home {home}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
    # A node that cannot start (another one answers on this home's control socket, a
    # port in use) says why in one line, not as a group of one from the root nursery.
    with collapse_groups():
        trio.run(serve_until_signalled, node.run)


def cmd_key(args: argparse.Namespace) -> None:
    home = resolve_home(args)
    identity = load_identity(home / "node.key")
    if args.action == "phrase":
        print(identity.recovery_phrase())
    elif args.action == "export":
        if not args.out:
            raise CliError(
                "key export needs --out FILE: the key is secret, so it goes to a new file "
                "(mode 600), never to the terminal; `gridnode key phrase` prints the "
                "words to write down instead"
            )
        out = Path(args.out)
        if out.exists():
            raise CliError(f"{out} exists")
        identity.write_key_file(out)
        print(f"key written to {out} (mode 600)")
    else:
        print(identity.printable_id)


def cmd_config_show(args: argparse.Namespace) -> None:
    """The home's configuration as the node reads it: every key, and which ones differ
    from the defaults of this version (what a changed default will not reach)."""
    home = resolve_home(args)
    if not (home / CONFIG_NAME).exists():
        raise CliError(f"{home} is not a node home (no {CONFIG_NAME}); `gridnode init` makes one")
    config = load_config(home)
    values = config.to_values()
    defaults = build_config(home, {"grid_id": config.grid_id.hex()}).to_values()
    changed = sorted(k for k, v in values.items() if defaults.get(k) != v)
    if args.json:
        print_json({"home": str(home), "values": values, "changed": changed})
        return
    for key, value in values.items():
        mark = "*" if key in changed else " "
        print(f"{mark} {key} = {value!r}")
    print("(* differs from this version's default)")


def cmd_config_reference(args: argparse.Namespace) -> None:
    """Every config key with its type, default, bounds and help: ``docs/CONFIG.md``."""
    print(reference_markdown(), end="")
