"""Dedup groups (claims 4, 5, 20): one copy on the grid for data two sources both have.

The pieces in process (the group key, its file, share assignment, placement under the
group's key, adoption in the holdings), then real node processes on loopback: two
members of a group back up the same tree and the holders' disks grow by one copy; two
nodes outside a group share nothing.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from gridnode.actors.calls import Call
from gridnode.actors.sequencer import PlaceChunk, Sequencer
from gridnode.dedup_group import (
    GROUP_KEY_FILE,
    DedupGroup,
    DedupGroupError,
    adopt_held,
    adopt_on,
    assign_shares,
    install_group,
    load_group,
    prepare_group,
    read_secret_file,
    write_new_secret,
)
from gridnode.identity import NodeIdentity
from gridnode.logic.packing import ErasureParams, encode_chunk
from gridnode.logic.placement import Member, PlacementRules, Source
from gridnode.recovery import RecoveryFailed, check_group
from gridnode.recovery_root import group_of
from gridnode.storage.holdings import Holdings
from gridnode.storage.packets import PacketDirectory
from gridnode.testing.localgrid import GridCommandError, LocalGrid, NodeProc, NodeSpec, free_port
from protocol import (
    AdoptPackets,
    Message,
    PacketPart,
    PacketsAdopted,
    PartStored,
    receipt_payload,
    sign,
)

from ..cities import CITIES
from .views import some_members

MiB = 1024 * 1024
SECRET = b"correct horse battery staple, twice: correct horse"


@pytest.fixture(scope="module")
def group() -> DedupGroup:
    return DedupGroup.from_secret("family", SECRET)


# --- the group key ---------------------------------------------------------------------------


def test_group_key_is_the_secret_and_the_name(group: DedupGroup) -> None:
    assert DedupGroup.from_secret("family", SECRET).key == group.key  # every member alike
    other_name = DedupGroup.from_secret("office", SECRET)
    assert other_name.key != group.key  # one passphrase, two groups: unrelated keys
    secrets = {group.data_secret, group.sequence_key, group.assignment_key, group.key}
    assert len(secrets) == 4
    assert len(group.fingerprint) == 12


def test_secret_files_are_checked(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"x" * 31)
    with pytest.raises(DedupGroupError, match="at least 32 bytes"):
        read_secret_file(short)
    dull = tmp_path / "dull"
    dull.write_bytes(b"ab" * 40)
    with pytest.raises(DedupGroupError, match="distinct bytes"):
        read_secret_file(dull)
    with pytest.raises(DedupGroupError, match="No such file"):
        read_secret_file(tmp_path / "missing")
    with pytest.raises(DedupGroupError, match="not a regular file"):
        read_secret_file(tmp_path)
    typed = tmp_path / "typed"
    typed.write_bytes(SECRET + b"\r\n")
    assert read_secret_file(typed) == SECRET  # the editor's newline is not the secret's

    made = tmp_path / "new.secret"
    secret = write_new_secret(made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    assert read_secret_file(made) == secret and len(secret) == 64
    with pytest.raises(DedupGroupError, match="exists"):
        write_new_secret(made)


def test_init_puts_the_key_in_the_home_and_keeps_a_homes_domain(
    tmp_path: Path, group: DedupGroup
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    secret = tmp_path / "family.secret"
    secret.write_bytes(SECRET)
    with pytest.raises(DedupGroupError, match="needs the group's secret"):
        prepare_group(home, "family", None, None)
    with pytest.raises(DedupGroupError, match="goes with --dedup-group"):
        prepare_group(home, "", str(secret), None)
    made = prepare_group(home, "family", str(secret), None)
    assert made == group
    install_group(home, made)
    key_file = home / GROUP_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert SECRET not in key_file.read_bytes()  # the derived key, not the passphrase
    assert load_group(home, "family") == group
    assert load_group(home, "") is None
    with pytest.raises(DedupGroupError, match="holds the key of group 'family'"):
        load_group(home, "office")
    key_file.chmod(0o644)
    with pytest.raises(DedupGroupError, match="readable by other users"):
        load_group(home, "family")
    key_file.chmod(0o600)

    # A home with backups keeps its domain: its chunks are keyed by it.
    (home / "catalog.sqlite").write_bytes(b"")
    assert prepare_group(home, "family", str(secret), None) == group  # the same group: fine
    with pytest.raises(DedupGroupError, match="cannot join, leave or change"):
        prepare_group(home, "", None, None)
    with pytest.raises(DedupGroupError, match="cannot join, leave or change"):
        prepare_group(home, "office", str(secret), None)


def test_identity_in_a_group_shares_data_keys_only(group: DedupGroup) -> None:
    one, two = NodeIdentity.generate(), NodeIdentity.generate()
    a, b = one.in_group(group), two.in_group(group)
    assert one.in_group(None) is one
    assert a.dedup_secret == b.dedup_secret == group.data_secret != one.dedup_secret
    assert a.shared_sequence_key == b.shared_sequence_key == group.sequence_key
    assert one.shared_sequence_key is None
    # Everything private stays the node's own.
    assert a.sequence_key == one.sequence_key != b.sequence_key
    assert a.record_key == one.record_key != b.record_key
    assert a.node_id == one.node_id
    packet = b"p" * 32
    assert a.packet_owner_tag(packet, "4/6") != b.packet_owner_tag(packet, "4/6")
    chunk = os.urandom(100_000)
    params = ErasureParams(4, 6)
    first = encode_chunk(chunk, dedup_secret=a.dedup_secret, params=params)
    second = encode_chunk(chunk, dedup_secret=b.dedup_secret, params=params)
    alone = encode_chunk(chunk, dedup_secret=one.dedup_secret, params=params)
    assert first.packet_ids == second.packet_ids
    assert not set(first.packet_ids) & set(alone.packet_ids)


# --- placement -----------------------------------------------------------------------------------


def test_share_assignment_moves_little_when_the_set_differs_in_one_member() -> None:
    key = os.urandom(32)
    rng = random.Random(5)
    moved: list[int] = []
    for _ in range(200):
        chunk = rng.randbytes(32)
        common = [rng.randbytes(32) for _ in range(9)]
        first = assign_shares(key, chunk, [*common, rng.randbytes(32)])
        assert assign_shares(key, chunk, sorted(first)) == first  # the set decides, not order
        second = assign_shares(key, chunk, [*common, rng.randbytes(32)])
        moved.append(sum(x != y for x, y in zip(first, second, strict=True)))
    # In rank order every share after the differing member would move (about half).
    assert sum(moved) / len(moved) < 3.0
    assert min(moved) >= 1  # the differing member's own share always moves


def _sequencer(
    node_key: bytes, source: bytes, members: list[Member], shared_key: bytes | None
) -> Sequencer:
    _send, receive = trio.open_memory_channel[Call[Any]](1)
    return Sequencer(
        key=node_key,
        inbound=receive,
        view=lambda: (1, list(members)),
        source=lambda: Source(node_id=source, lat=47.0, lon=8.0),
        shared_key=shared_key,
    )


def test_members_place_a_shared_chunk_alike_and_a_private_one_apart(group: DedupGroup) -> None:
    members = some_members(40)
    seen_by_b = [  # B saw the members' free space a little later: a few packets stored
        Member(
            node_id=m.node_id,
            lat=m.lat,
            lon=m.lon,
            free_bytes=m.free_bytes - random.Random(i).randrange(50 * MiB),
        )
        for i, m in enumerate(members)
    ]
    a = _sequencer(os.urandom(32), b"a" * 32, members, group.sequence_key)
    b = _sequencer(os.urandom(32), b"b" * 32, seen_by_b, group.sequence_key)
    rules = PlacementRules()
    same = differ = 0
    for _ in range(50):
        chunk = os.urandom(32)
        shared = PlaceChunk(chunk_id=chunk, n=10, packet_bytes=MiB, rules=rules, shared=True)
        assert a.place(shared) == b.place(shared)
        private = PlaceChunk(chunk_id=chunk, n=10, packet_bytes=MiB, rules=rules)
        if a.place(private) == b.place(private):
            same += 1
        else:
            differ += 1
    assert differ > 45  # each node's own key orders its private chunks its own way


# --- the holder's side of AdoptPackets -------------------------------------------------------


def test_a_holder_adopts_only_packets_it_holds_verified(tmp_path: Path) -> None:
    packets = PacketDirectory(tmp_path / "packets", 100 * MiB)
    holdings = Holdings(tmp_path / "holdings.sqlite")
    lock = threading.Lock()
    data = os.urandom(64 * 1024)
    encoded = encode_chunk(data, dedup_secret=os.urandom(32), params=ErasureParams(2, 3))
    held, untagged, rotten = encoded.packet_ids
    for packet_id, packet in zip(encoded.packet_ids, encoded.packets, strict=True):
        packets.put(packet_id, packet)
    size = len(encoded.packets[0])
    holdings.add_tags([(held, b"A" * 32), (rotten, b"A" * 32)], [(b"a", size), (b"a", size)])
    path = packets.path_for(rotten)
    raw = bytearray(path.read_bytes())
    raw[10] ^= 1
    path.write_bytes(bytes(raw))
    parts = [
        PacketPart(packet_id=held, owner_tag=b"B" * 32, size_bytes=size),
        PacketPart(packet_id=untagged, owner_tag=b"B" * 32, size_bytes=size),
        PacketPart(packet_id=rotten, owner_tag=b"B" * 32, size_bytes=size),
        PacketPart(packet_id=held, owner_tag=b"C" * 32, size_bytes=size + 1),
        PacketPart(packet_id=os.urandom(32), owner_tag=b"B" * 32, size_bytes=size),
    ]
    codes = adopt_held(
        packets, holdings, lock, parts, source=b"b", quota=None, expires=time.time() + 60
    )
    assert codes == ["", "not_held", "not_held", "not_held", "not_held"]
    assert holdings.source_bytes(b"b") == size  # charged as a store would be
    # The packet goes only with its last tag.
    assert holdings.remove_tag(held, b"A" * 32) == (True, 1)
    assert holdings.remove_tag(held, b"B" * 32, source=b"b", size=size) == (True, 0)
    # Over the sender's quota: refused, nothing charged.
    holdings.add_tags([(held, b"A" * 32)], [(b"a", size)])
    over = adopt_held(packets, holdings, lock, parts[:1], source=b"b", quota=size - 1, expires=None)
    assert over == ["over_quota"]
    assert holdings.source_bytes(b"b") == 0


class _FakeLink:
    """A peer link that answers AdoptPackets as ``answer`` says (real messages, real
    receipts), or speaks a protocol without it."""

    def __init__(self, speaks: bool, signer: NodeIdentity, forge: bool = False) -> None:
        self._speaks = speaks
        self._signer = signer
        self._forge = forge
        self.requests: list[AdoptPackets] = []

    def speaks(self, msg: type[Message]) -> bool:
        return self._speaks

    async def request(self, build: Any, *, timeout_s: float) -> Message:
        msg = build(7)
        assert isinstance(msg, AdoptPackets)
        self.requests.append(msg)
        results = []
        for index, part in enumerate(msg.parts):
            if index % 2:
                results.append(PartStored(packet_id=part.packet_id, code="not_held"))
                continue
            size = part.size_bytes + 1 if self._forge else part.size_bytes
            receipt = sign(self._signer.signing_key, receipt_payload(part.packet_id, size))
            results.append(PartStored(packet_id=part.packet_id, receipt=receipt))
        return PacketsAdopted(request_id=msg.request_id, results=tuple(results))


def test_a_source_adopts_only_with_a_receipt_and_only_from_protocol_4() -> None:
    holder = NodeIdentity.generate()
    parts = [(os.urandom(32), os.urandom(32), 1000 + i) for i in range(20)]

    async def run(link: _FakeLink) -> dict[bytes, bytes]:
        async def link_for(node_id: bytes) -> _FakeLink:
            assert node_id == holder.node_id
            return link

        return await adopt_on(link_for, holder.node_id, parts, timeout_s=5)

    good = _FakeLink(True, holder)
    taken = trio.run(run, good)
    assert sorted(taken) == sorted(p for p, _, _ in parts[::2])  # the "held" ones
    assert [len(r.parts) for r in good.requests] == [16, 4]  # batches within the bound
    old = _FakeLink(False, holder)
    assert trio.run(run, old) == {} and old.requests == []  # an older peer: upload
    forged = _FakeLink(True, holder, forge=True)
    assert trio.run(run, forged) == {}  # a receipt over another size is no receipt


# --- real nodes ------------------------------------------------------------------------------


def _stored_bytes(grid: LocalGrid, holders: list[str]) -> int:
    """Bytes of packets on the holders' disks (their packet stores, summed)."""
    total = 0
    for name in holders:
        root = grid.node(name).home / "storage" / "packets"
        total += sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return total


def _add_source(
    grid: LocalGrid, name: str, seed: str, location: str, *group_flags: str
) -> NodeProc:
    """A source that holds nothing for others (so the holders' disks are what is
    measured), with the dedup group flags ``gridnode init`` is given."""
    spec = NodeSpec(name=name, location=location, allocate="0")
    home = grid.root / name
    port = free_port()
    more = ("--invite", grid.invite(), *group_flags)
    grid.init_node(spec, home, f"127.0.0.1:{port}", [seed], more)
    node = NodeProc(spec=spec, home=home, port=port)
    grid.nodes[name] = node
    return node


def _make_tree(root: Path, seed: int) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "photos").mkdir()
    for index, size in enumerate((5 * MiB, 4 * MiB, 3 * MiB)):
        (root / "photos" / f"img{index}.raw").write_bytes(rng.randbytes(size))
    for index in range(40):
        (root / f"note{index}.txt").write_text(f"note {index} " * rng.randrange(10, 200))
    return root


def _same_tree(left: Path, right: Path) -> None:
    names = sorted(p.relative_to(left).as_posix() for p in left.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(right).as_posix() for p in right.rglob("*") if p.is_file())
    for name in names:
        assert (left / name).read_bytes() == (right / name).read_bytes(), name


def _wait_bytes_at_most(grid: LocalGrid, holders: list[str], limit: int) -> int:
    deadline = time.monotonic() + 30
    while True:
        now = _stored_bytes(grid, holders)
        if now <= limit or time.monotonic() > deadline:
            return now
        time.sleep(0.5)


@pytest.mark.slow
def test_two_members_store_one_copy_and_two_strangers_two(tmp_path: Path) -> None:
    secret = tmp_path / "family.secret"
    with LocalGrid(tmp_path / "grid") as grid:
        holders = [f"h{i}" for i in range(7)]
        grid.add_many(
            [NodeSpec(name=n, location=CITIES[i], allocate="1GB") for i, n in enumerate(holders)]
        )
        seed = grid.node("h0").address
        # The first member makes the group's secret, the second is given the file.
        a = _add_source(
            grid,
            "a",
            seed,
            CITIES[8],
            "--dedup-group",
            "family",
            "--new-convergence-secret",
            str(secret),
        )
        _add_source(
            grid,
            "b",
            seed,
            CITIES[9],
            "--dedup-group",
            "family",
            "--convergence-secret-file",
            str(secret),
        )
        _add_source(grid, "c", seed, CITIES[10])
        _add_source(grid, "d", seed, CITIES[11])
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert (a.home / GROUP_KEY_FILE).exists()
        assert "family" in (a.home / "gridnode.toml").read_text()
        assert secret.read_text().strip() not in (a.home / "gridnode.toml").read_text()
        grid.start_all()
        grid.wait_converged(timeout=90)
        groups = [grid.status(name)["dedup_group"] for name in "abc"]
        assert groups[0] == groups[1] == {"name": "family", "fingerprint": groups[0]["fingerprint"]}
        assert groups[2] is None

        tree = _make_tree(tmp_path / "tree", seed=7)
        copies = {}
        for name in "abcd":
            copies[name] = tmp_path / name / "data"
            shutil.copytree(tree, copies[name])

        before = _stored_bytes(grid, holders)
        first = grid.cli("a", "backup", str(copies["a"]), timeout=600)
        after_a = _stored_bytes(grid, holders)
        second = grid.cli("b", "backup", str(copies["b"]), timeout=600)
        after_b = _stored_bytes(grid, holders)
        one_copy = after_a - before
        assert one_copy > 12 * MiB * 6 // 4  # 12 MiB of random data at 4-of-6
        # The second member's data is already there: its own records only (about 1%).
        assert after_b - after_a < 0.05 * one_copy
        assert second["bytes_uploaded"] < 0.05 * first["bytes_uploaded"]
        assert second["packets_adopted"] >= 6 * 3  # every packet of the three large files
        assert first["packets_adopted"] == 0

        # Both restore byte-equal.
        for name, result in (("a", first), ("b", second)):
            out = tmp_path / f"restored-{name}"
            grid.cli(name, "restore", result["snapshot_id"], "--to", str(out), timeout=600)
            _same_tree(tree, out / "data")

        # One forgets: the other still restores, and the shared copy stays.
        grid.cli("a", "forget", first["snapshot_id"], timeout=300)
        assert _stored_bytes(grid, holders) > before + 0.9 * one_copy
        out = tmp_path / "restored-b-again"
        grid.cli("b", "restore", second["snapshot_id"], "--to", str(out), timeout=600)
        _same_tree(tree, out / "data")
        # Both forget: the packets go with the last tag.
        grid.cli("b", "forget", second["snapshot_id"], timeout=300)
        left = _wait_bytes_at_most(grid, holders, before)
        assert left <= before, f"{left - before} bytes left on the holders"

        # Two nodes outside any group share nothing: two copies.
        base = _stored_bytes(grid, holders)
        grid.cli("c", "backup", str(copies["c"]), timeout=600)
        after_c = _stored_bytes(grid, holders)
        third = grid.cli("d", "backup", str(copies["d"]), timeout=600)
        after_d = _stored_bytes(grid, holders)
        assert after_c - base > 0.9 * one_copy
        assert after_d - after_c > 0.9 * one_copy
        assert third["packets_adopted"] == 0


def _recover(grid: LocalGrid, home: Path, phrase: str, seed: str, *group_flags: str) -> str:
    """``gridnode recover``'s JSON line when it succeeds, else what it printed to stderr."""
    try:
        result = grid.gridnode(
            "recover", "--home", str(home), "--key", "-", "--grid", str(grid.grid_file),
            "--seed", seed, *group_flags, "--json", stdin=phrase + "\n", timeout=120,
        )  # fmt: skip
    except GridCommandError as exc:
        return exc.stderr
    return json.dumps(result)


@pytest.mark.slow
def test_a_member_recovers_with_its_key_and_the_groups_secret_only(tmp_path: Path) -> None:
    """The group's secret keys a member's data chunks and the key phrase does not hold
    it: a recovery without it (or with another group's) is refused before it imports
    anything, leaves no home behind, and with it the member restores byte-equal."""
    secret = tmp_path / "family.secret"
    other = tmp_path / "other.secret"
    other.write_bytes(os.urandom(32))
    with LocalGrid(tmp_path / "grid") as grid:
        holders = [f"h{i}" for i in range(4)]
        grid.add_many(
            [NodeSpec(name=n, location=CITIES[i], allocate="1GB") for i, n in enumerate(holders)]
        )
        seed = grid.node("h0").address
        a = _add_source(
            grid, "a", seed, CITIES[8], "--dedup-group", "family", "--new-convergence-secret",
            str(secret),
        )  # fmt: skip
        grid.start_all()
        grid.wait_converged(timeout=90)
        fingerprint = grid.status("a")["dedup_group"]["fingerprint"]
        tree = tmp_path / "tree"
        tree.mkdir()
        rng = random.Random(3)
        (tree / "big.bin").write_bytes(rng.randbytes(3 * MiB))
        for index in range(10):
            (tree / f"note{index}.txt").write_text(f"note {index} " * rng.randrange(10, 200))
        snap = grid.cli("a", "backup", str(tree), "--redundancy", "2/3")["snapshot_id"]

        phrase = grid.gridnode("key", "phrase", "--home", str(a.home), json_out=False).strip()
        grid.kill("a")
        shutil.rmtree(a.home)
        home = tmp_path / "recovered"

        without = _recover(grid, home, phrase, seed)
        assert "dedup group 'family'" in without and f"fingerprint {fingerprint}" in without
        assert "--dedup-group family --convergence-secret-file" in without
        assert not home.exists()  # the same command can run again as it is

        wrong = _recover(
            grid, home, phrase, seed, "--dedup-group", "family", "--convergence-secret-file",
            str(other),
        )  # fmt: skip
        assert f"fingerprint {fingerprint}" in wrong and "check the group's name" in wrong
        assert not home.exists()

        right = _recover(
            grid, home, phrase, seed, "--dedup-group", "family", "--convergence-secret-file",
            str(secret),
        )  # fmt: skip
        assert json.loads(right)["snapshots"] == [snap]
        grid.nodes["recovered"] = NodeProc(spec=NodeSpec(name="recovered"), home=home, port=0)
        grid.start("recovered")
        grid.wait_ready("recovered")
        assert grid.status("recovered")["dedup_group"]["fingerprint"] == fingerprint
        out = tmp_path / "out"
        grid.cli("recovered", "restore", snap, "--to", str(out), timeout=600)
        _same_tree(tree, out / "tree")


def test_a_root_names_the_group_and_recovery_checks_it(group: DedupGroup) -> None:
    other = DedupGroup.from_secret("family", SECRET[::-1])
    named = {"dedup_group": group_of(group)}
    assert named["dedup_group"] == {"name": "family", "fingerprint": group.fingerprint}
    assert group.key.hex() not in json.dumps(named)  # the root never holds the key
    check_group(named, group)
    check_group({"dedup_group": None}, None)
    check_group({}, None)  # a root from before roots named the group: nothing to check
    check_group({}, group)
    for root, given, says in (
        (named, None, "--dedup-group family --convergence-secret-file"),
        (named, other, f"fingerprint {other.fingerprint}"),
        ({"dedup_group": None}, group, "without --dedup-group"),
    ):
        with pytest.raises(RecoveryFailed, match=re.escape(says)):
            check_group(root, given)
