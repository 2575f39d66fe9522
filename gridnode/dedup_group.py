"""Dedup groups (claims 4, 5, 20): one copy on the grid for data two sources both have.

Without a group every node is its own dedup domain: the unique data identifier, the
convergent encryption key and the keyed rendezvous that places packets all derive from
the node's own seed (``gridnode.identity``), so the same file on two nodes becomes two
unrelated sets of packets.  Nodes that opt into one group share a **group key** and
derive from it, for their *data* chunks only:

- the data secret: keys the chunk id and the convergent encryption
  (``logic.packing``), so the same chunk gives the same packets, bit for bit, on every
  member (the policy, k-of-n, is part of what makes the packets);
- the placement key: keys the sequencer's rendezvous for those chunks, with member
  weights rounded down to a power of two (``coarse_members``), so two members that see
  (nearly) the same view choose the same targets; and the share-to-target assignment
  (``assign_shares``), keyed scores over the chosen set, so a set that differs in one
  member (a source is never its own target) moves only a few shares.

Everything else stays per node: the catalog and the data assembly records (sealed with
the node's record key, placed under its own sequence key), the recovery root, and each
packet's delete secret and owner tag.  A holder therefore keeps one copy of a shared
packet with one tag per source (``storage.holdings``), and the packet goes only when
the last tag is withdrawn or its lease ends.

Before uploading a shared chunk a member asks each chosen target whether it holds the
packet placed there (``AdoptPackets``, protocol 4): where it does, the holder verifies
the bytes, adds this source's tag and charges it as a store would, and signs the usual
receipt; only the other packets are uploaded.  A peer of protocol 3 or older gets the
full upload.

The privacy trade-off (README, "Dedup groups"): a member can learn whether another
member already stored a chunk it has itself (an adoption that succeeds uploads nothing),
which is why groups are opt-in and meant for machines that trust each other (one
household, one team).  Outsiders learn nothing new: the group key is needed to compute
any chunk id, key or placement.

The group key: ``gridnode init --dedup-group NAME --convergence-secret-file FILE`` reads
the secret (32 random bytes, or a passphrase of at least 32 characters), stretches it
with Argon2id (salted with the group's name, so one passphrase used for two groups gives
two unrelated keys) and writes the 32-byte result to ``HOME/dedup-group.key`` (mode
0600).  The home keeps the derived key, not a reference to FILE: the node must not
depend on a file elsewhere that can move, change or be deleted (every shared chunk's id
and key hang on it), and the passphrase itself need not stay on the machine.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import Any, Final

import attrs
import blake3
import nacl.pwhash.argon2id as argon2id
from nacl.signing import SigningKey

from protocol import (
    MAX_PACKETS_PER_BATCH,
    AdoptPackets,
    PacketPart,
    PacketsAdopted,
    PartStored,
    receipt_payload,
    sign,
    verify,
)

from .errors import PeerError, UserError
from .fsutil import atomic_write
from .logic.placement import Member
from .storage.holdings import Holdings
from .storage.packets import PacketDirectory
from .transport.link import PeerLink

__all__ = [
    "GROUP_KEY_FILE",
    "MIN_SECRET_BYTES",
    "DedupGroup",
    "DedupGroupError",
    "adopt_held",
    "adopt_on",
    "adopted_answer",
    "assign_shares",
    "check_group_name",
    "coarse_members",
    "install_group",
    "load_group",
    "prepare_group",
    "read_secret_file",
    "write_new_secret",
]

#: The group key in a node's home.
GROUP_KEY_FILE: Final = "dedup-group.key"
_HEADER: Final = "gridnode-dedup-group-v1"
_CTX: Final = "gridnode 2026-12 dedup group {} v1"
#: A secret shorter than this is refused: 32 random bytes, or a passphrase of 32
#: characters or more (six diceware words), which Argon2id then stretches.
MIN_SECRET_BYTES: Final = 32
MAX_SECRET_BYTES: Final = 64 * 1024
_MIN_DISTINCT_BYTES: Final = 8
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
#: Argon2id's limits (libsodium's "moderate": 3 passes over 256 MiB, about a second):
#: run once, at init.  Every member must use the same, so they are written out here as
#: part of the group key's format (v1), not taken from the library's current defaults.
_OPSLIMIT: Final = 3
_MEMLIMIT: Final = 256 * 1024 * 1024


class DedupGroupError(UserError, ValueError):
    """A group name, secret or group key file that cannot be used; says why."""


def check_group_name(name: str) -> str:
    """1-64 characters: letters, digits, '.', '_', '-' (not first)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise DedupGroupError(
            f"dedup group name {name!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _derive(key: bytes, purpose: str) -> bytes:
    return blake3.blake3(key, derive_key_context=_CTX.format(purpose)).digest()


@attrs.frozen
class DedupGroup:
    """A dedup group: its name and the 32-byte group key every member holds."""

    name: str
    key: bytes = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        check_group_name(self.name)
        if len(self.key) != 32:
            raise DedupGroupError("a dedup group key is 32 bytes")

    @classmethod
    def from_secret(cls, name: str, secret: bytes) -> DedupGroup:
        """The group key from the shared secret: Argon2id, salted with the name."""
        check_group_name(name)
        _check_secret(secret)
        salt = blake3.blake3(name.encode("ascii"), derive_key_context=_CTX.format("salt")).digest(
            length=argon2id.SALTBYTES
        )
        key = argon2id.kdf(32, secret, salt, opslimit=_OPSLIMIT, memlimit=_MEMLIMIT)
        return cls(name, bytes(key))

    @property
    def data_secret(self) -> bytes:
        """Keys the chunk ids and the convergent encryption of the group's data chunks."""
        return _derive(self.key, "data secret")

    @property
    def sequence_key(self) -> bytes:
        """Keys the rendezvous that places the group's data chunks."""
        return _derive(self.key, "placement key")

    @property
    def assignment_key(self) -> bytes:
        """Keys which share of a shared chunk goes to which of its chosen targets."""
        return _derive(self.key, "share assignment key")

    @property
    def fingerprint(self) -> str:
        """Shown by init and status: two members are in one group when theirs agree."""
        return _derive(self.key, "fingerprint")[:6].hex()

    def key_file_text(self) -> str:
        return (
            "# gridnode dedup group key: every member of this group holds the same.\n"
            "# Keep it secret: with it a member can tell which chunks the others stored.\n"
            f"# group {self.name}, fingerprint {self.fingerprint}\n"
            f"{_HEADER}:{self.name}:{self.key.hex()}\n"
        )

    def write(self, home: Path) -> Path:
        path = home / GROUP_KEY_FILE
        atomic_write(path, self.key_file_text().encode("ascii"), mode=0o600)
        return path


def _check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise DedupGroupError(
            f"a convergence secret needs at least {MIN_SECRET_BYTES} bytes, this one has "
            f"{len(secret)}: use 32 random bytes (`head -c 32 /dev/urandom > FILE`, or "
            "`gridnode init --new-convergence-secret FILE`) or a passphrase of 32 "
            "characters or more"
        )
    if len(set(secret)) < _MIN_DISTINCT_BYTES:
        raise DedupGroupError(
            f"the convergence secret has fewer than {_MIN_DISTINCT_BYTES} distinct bytes: "
            "not a secret anyone would fail to guess"
        )


def read_secret_file(path: Path) -> bytes:
    """The secret in ``path``: its bytes, less one trailing newline (so a passphrase
    written by an editor and one written by ``printf`` are the same secret)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise DedupGroupError(f"convergence secret file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise DedupGroupError(f"convergence secret file {path} is not a regular file")
    if info.st_size > MAX_SECRET_BYTES:
        raise DedupGroupError(
            f"convergence secret file {path} is {info.st_size} bytes; at most "
            f"{MAX_SECRET_BYTES} (it holds a secret, not data)"
        )
    secret = path.read_bytes()
    if secret.endswith(b"\r\n"):
        secret = secret[:-2]
    elif secret.endswith(b"\n"):
        secret = secret[:-1]
    _check_secret(secret)
    return secret


def write_new_secret(path: Path) -> bytes:
    """A new group secret: 32 random bytes as 64 hex digits and a newline, in a new file
    of mode 0600 (refused if ``path`` exists).  Text, so it can be pasted to the other
    members' machines; returns the secret as ``read_secret_file`` will read it."""
    text = os.urandom(32).hex()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DedupGroupError(f"{path} exists; a new convergence secret needs a new file") from None
    except OSError as exc:
        raise DedupGroupError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return text.encode("ascii")


def load_group(home: Path, name: str) -> DedupGroup | None:
    """The group of a home whose config names ``name`` ("" : none).

    Raises:
        DedupGroupError: the key file is missing, readable by others, damaged, or of
            another group than the config names.
    """
    if not name:
        return None
    path = home / GROUP_KEY_FILE
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DedupGroupError(
            f"the config names dedup group {name!r} but {path} is missing: run `gridnode "
            "init --force` with --dedup-group and --convergence-secret-file again"
        ) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DedupGroupError(
            f"dedup group key {path} is readable by other users "
            f"(mode {stat.S_IMODE(info.st_mode):o}); run: chmod 600 {path}"
        )
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        if line.startswith(_HEADER + ":"):
            _, held_name, key_hex = line.split(":", 2)
            if held_name != name:
                raise DedupGroupError(
                    f"{path} holds the key of group {held_name!r}, the config names {name!r}"
                )
            try:
                key = bytes.fromhex(key_hex.strip())
            except ValueError:
                raise DedupGroupError(f"{path}: the group key is not hex") from None
            return DedupGroup(name, key)
    raise DedupGroupError(f"{path} is not a gridnode dedup group key file")


# --- placement of shared chunks -------------------------------------------------------------


def _floor_power_of_two(value: int) -> int:
    return 1 << (value.bit_length() - 1) if value > 0 else 0


def coarse_members(members: Sequence[Member]) -> list[Member]:
    """The members with their weights (free bytes) rounded down to a power of two.

    The rendezvous weighs members by free space, which moves with every packet stored:
    two members of a group placing the same chunk minutes apart would see slightly
    different weights and could rank the targets differently.  Rounded down, a weight
    changes only when a member's free space crosses a power of two; the order stays
    capacity-weighted within a factor of two, and the free-space filter stays
    conservative (a member is never thought to have more room than it has).
    """
    return [
        m
        if m.free_bytes == (q := _floor_power_of_two(m.free_bytes))
        else attrs.evolve(m, free_bytes=q)
        for m in members
    ]


def assign_shares(key: bytes, chunk_id: bytes, targets: Sequence[bytes]) -> tuple[bytes, ...]:
    """Which of the chosen ``targets`` gets each share: every (share, target) pair gets a
    keyed score, and pairs are taken best first while both are still free.

    The placement answers targets in rank order; two members whose candidate sets differ
    by one node (a source is never its own target) would see every share after that node
    shift by one place: about half the chunk.  Here a share's target depends only on the
    chosen set, and a set that differs in one member moves about two shares at 4-of-6
    and three or four at 10-of-30 (a perfect assignment would move one; no function of
    the set alone can, since two targets may want the same share).  The set itself is
    unchanged, so every placement rule (all of them are about the set) still holds.
    """
    chunk_key = blake3.blake3(chunk_id, key=key).digest()
    count = len(targets)
    pairs = sorted(
        (blake3.blake3(share.to_bytes(2, "big") + target, key=chunk_key).digest(8), share, target)
        for share in range(count)
        for target in targets
    )
    out: list[bytes | None] = [None] * count
    taken: set[bytes] = set()
    for _score, share, target in pairs:
        if out[share] is None and target not in taken:
            out[share] = target
            taken.add(target)
            if len(taken) == count:
                break
    return tuple(t for t in out if t is not None)


# --- adopting packets a holder already has ----------------------------------------------------

#: node id -> an open link (``Node.link_for``).
LinkFor = Callable[[bytes], Awaitable[PeerLink]]


def _adopt_message(parts: tuple[PacketPart, ...], request_id: int) -> AdoptPackets:
    return AdoptPackets(request_id=request_id, parts=parts)


async def adopt_on(
    link_for: LinkFor,
    target: bytes,
    parts: Sequence[tuple[bytes, bytes, int]],
    *,
    timeout_s: float,
) -> dict[bytes, bytes]:
    """Ask ``target`` to keep the packets ``(packet_id, owner_tag, size)`` it already
    holds under our tags too; returns packet id -> verified receipt for those it took.

    Every failure (a peer of protocol 3 or older, gone, timed out, a refusal, a receipt
    that does not verify) answers "none taken": the caller then uploads, which is
    always correct, only not deduplicated.
    """
    taken: dict[bytes, bytes] = {}
    try:
        link = await link_for(target)
        if not link.speaks(AdoptPackets):
            return taken
        for start in range(0, len(parts), MAX_PACKETS_PER_BATCH):
            batch = parts[start : start + MAX_PACKETS_PER_BATCH]
            wire = tuple(PacketPart(packet_id=p, owner_tag=t, size_bytes=s) for p, t, s in batch)
            answer = await link.request(partial(_adopt_message, wire), timeout_s=timeout_s)
            if not isinstance(answer, PacketsAdopted) or len(answer.results) != len(batch):
                return taken
            for (packet_id, _tag, size), result in zip(batch, answer.results, strict=True):
                if (
                    not result.code
                    and result.packet_id == packet_id
                    and verify(target, receipt_payload(packet_id, size), result.receipt)
                ):
                    taken[packet_id] = result.receipt
    except PeerError:
        pass
    return taken


def adopt_held(
    packets: PacketDirectory,
    holdings: Holdings,
    lock: AbstractContextManager[Any],
    parts: Sequence[PacketPart],
    *,
    source: bytes,
    quota: int | None,
    expires: float | None,
) -> list[str]:
    """The holder's side of ``AdoptPackets`` (blocking: run it in a worker thread).

    Returns one code per part: "" where the sender's tag was added, else why not.  A tag
    is added only for a packet this node holds under some tag, whose bytes hash to its
    id (read and checked now: a packet that rotted is quarantined, not adopted) and are
    as long as the sender says; its bytes count against the sender's usage and quota as
    a store's would.  The check and the tags are made under ``lock``, the lock stores
    and deletes take around "file and tag", so a packet whose last tag is being
    withdrawn is never adopted as its file goes.
    """
    codes = [""] * len(parts)
    for index, part in enumerate(parts):  # hashing outside the lock: it takes a while
        data = packets.get(part.packet_id)
        if data is None or len(data) != part.size_bytes:
            codes[index] = "not_held"
    with lock:
        chosen: list[int] = []
        used = holdings.source_bytes(source) if quota is not None else 0
        for index, part in enumerate(parts):
            if codes[index]:
                continue
            if not packets.has(part.packet_id):
                codes[index] = "not_held"
            elif quota is not None and used + part.size_bytes > quota:
                codes[index] = "over_quota"
            else:
                used += part.size_bytes
                chosen.append(index)
        if chosen:
            held = holdings.adopt_tags(
                [(parts[i].packet_id, parts[i].owner_tag) for i in chosen],
                [(source, parts[i].size_bytes) for i in chosen],
                expires=expires,
            )
            for index, ok in zip(chosen, held, strict=True):
                if not ok:
                    codes[index] = "not_held"
    return codes


def adopted_answer(
    msg: AdoptPackets, codes: Sequence[str], signing_key: SigningKey
) -> PacketsAdopted:
    """The answer to ``msg``: a receipt over (packet id, size) per packet adopted, as a
    store would sign, and the code for each other."""
    results = tuple(
        PartStored(
            packet_id=part.packet_id,
            receipt=sign(signing_key, receipt_payload(part.packet_id, part.size_bytes)),
        )
        if not code
        else PartStored(packet_id=part.packet_id, code=code, message=_CODE_TEXT.get(code, code))
        for part, code in zip(msg.parts, codes, strict=True)
    )
    return PacketsAdopted(request_id=msg.request_id, results=results)


_CODE_TEXT: Final = {
    "not_held": "packet not held here (or it failed verification): upload it",
    "over_quota": "the source's subscription quota here is used up",
}


# --- gridnode init ------------------------------------------------------------------------------

#: The node's catalog: a home that has one has data chunks keyed by its dedup domain.
_CATALOG: Final = "catalog.sqlite"


def _held_key(home: Path) -> bytes | None:
    """The group key a home holds now, read without the name check (init replaces it)."""
    path = home / GROUP_KEY_FILE
    if not path.exists():
        return None
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        if line.startswith(_HEADER + ":"):
            try:
                return bytes.fromhex(line.split(":", 2)[2].strip())
            except (IndexError, ValueError):
                return None
    return None


def prepare_group(
    home: Path, name: str, secret_file: str | None, new_secret_file: str | None
) -> DedupGroup | None:
    """The group ``gridnode init`` puts a home in (None: its own domain), checked before
    anything is written.  ``--new-convergence-secret FILE`` writes a new secret to FILE
    first (for the group's first member; the others are given FILE).

    A home that already has a catalog keeps its dedup domain: its chunks are identified
    and encrypted with it, and in another domain its restores would fail.

    Raises:
        DedupGroupError: naming the flag or the file at fault.
    """
    if secret_file and new_secret_file:
        raise DedupGroupError(
            "--convergence-secret-file and --new-convergence-secret: give one of them"
        )
    given = secret_file or new_secret_file
    if not name:
        if given:
            raise DedupGroupError(
                "a convergence secret goes with --dedup-group NAME (the group it is the key of)"
            )
        group = None
    else:
        if not given:
            raise DedupGroupError(
                f"--dedup-group {name} needs the group's secret: --convergence-secret-file "
                "FILE (the file another member was given), or --new-convergence-secret FILE "
                "to make one for a new group"
            )
        if new_secret_file:
            secret = write_new_secret(Path(os.path.expanduser(new_secret_file)))
        else:
            assert secret_file is not None
            secret = read_secret_file(Path(os.path.expanduser(secret_file)))
        group = DedupGroup.from_secret(name, secret)
    if (home / _CATALOG).exists() and _held_key(home) != (None if group is None else group.key):
        raise DedupGroupError(
            f"{home} already has backups in its dedup domain; a node's data chunks are "
            "keyed by it, so it cannot join, leave or change a dedup group: use a new home"
        )
    return group


def install_group(home: Path, group: DedupGroup | None) -> None:
    """Write the group key into the home (mode 0600), or remove one left from before."""
    if group is None:
        (home / GROUP_KEY_FILE).unlink(missing_ok=True)
    else:
        group.write(home)
