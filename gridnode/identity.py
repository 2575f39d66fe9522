"""A node's identity: one secret seed from which every key of the node is derived.

Why one seed: a node that loses its disk must come back with its key alone (issue 2,
disaster recovery in issue 3).  So the Ed25519 identity, the dedup secret, the secret
sequence key, the record-sealing key and the recovery-root signing key (the hash of
its verification key is the root's locator) are all derived from the 32-byte seed
with BLAKE3 in key-derivation mode (distinct context strings), and the key file or
the recovery phrase holds only that seed plus a checksum.  A node in a dedup group
(``gridnode.dedup_group``) also needs the group's key, which keys its data chunks.

The key file is written atomically with mode 0600 and refused on load when other
users can read it: a readable key would let anyone read and delete this node's backups.
"""

from __future__ import annotations

import base64
import os
import stat
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Final

import blake3
import nacl.utils
from nacl.signing import SigningKey

from protocol import format_node_id, root_locator, short_node_id

from .errors import UserError
from .fsutil import atomic_write

if TYPE_CHECKING:
    from .dedup_group import DedupGroup

__all__ = ["KeyError_", "NodeIdentity", "load_identity", "parse_recovery_phrase"]

_HEADER: Final = "gridnode-key-v1"
_CTX: Final = "gridnode 2026-11 {} v1"


class KeyError_(UserError, ValueError):
    """A key file or recovery phrase that cannot be used (named so as not to shadow KeyError)."""


def _checksum(seed: bytes) -> bytes:
    return blake3.blake3(seed, derive_key_context=_CTX.format("seed checksum")).digest()[:4]


def _derive(seed: bytes, purpose: str) -> bytes:
    return blake3.blake3(seed, derive_key_context=_CTX.format(purpose)).digest()


class NodeIdentity:
    """All secrets of one node, derived on demand from its seed."""

    def __init__(self, seed: bytes, group: DedupGroup | None = None) -> None:
        if len(seed) != 32:
            raise KeyError_("a node seed is 32 bytes")
        self._seed = seed
        #: The dedup group this node is in (``gridnode.dedup_group``), None: its own.
        self.group = group

    def in_group(self, group: DedupGroup | None) -> NodeIdentity:
        """This identity in ``group`` (itself when None): its data chunks are then
        identified, encrypted and placed with the group's keys; everything private
        (records, delete secrets, owner tags, signing keys) stays derived from the seed."""
        return self if group is None else NodeIdentity(self._seed, group)

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(nacl.utils.random(32))

    @cached_property
    def signing_key(self) -> SigningKey:
        return SigningKey(_derive(self._seed, "node signing key"))

    @cached_property
    def node_id(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def printable_id(self) -> str:
        return format_node_id(self.node_id)

    @property
    def short_id(self) -> str:
        return short_node_id(self.node_id)

    @cached_property
    def dedup_secret(self) -> bytes:
        """Keys the unique data identifier and convergent encryption of this dedup domain:
        the node alone, or its dedup group (the group's data secret, so the same chunk
        becomes the same packets on every member)."""
        if self.group is not None:
            return self.group.data_secret
        return _derive(self._seed, "dedup secret")

    @cached_property
    def sequence_key(self) -> bytes:
        """Keys the rendezvous order: without it nobody can compute the non-transparent sequence.

        Always the node's own: its records are placed under it.  A group's data chunks
        are placed under ``shared_sequence_key``."""
        return _derive(self._seed, "sequence key")

    @property
    def shared_sequence_key(self) -> bytes | None:
        """The group's placement key for shared (data) chunks; None outside a group."""
        return None if self.group is None else self.group.sequence_key

    @cached_property
    def record_key(self) -> bytes:
        """Seals data assembly records and recovery roots (XSalsa20-Poly1305 SecretBox)."""
        return _derive(self._seed, "record sealing key")

    @cached_property
    def root_locator(self) -> bytes:
        """Where on the grid this node's recovery root lives: the hash of the root's
        verification key (holders check it, so only this key can write there); like that
        key, unlinkable to the node id."""
        return root_locator(bytes(self.root_signing_key.verify_key))

    @cached_property
    def root_signing_key(self) -> SigningKey:
        """Signs recovery roots so only this node can replace them; unlinkable to the node id."""
        return SigningKey(_derive(self._seed, "recovery root signing key"))

    @cached_property
    def root_owner_key(self) -> bytes:
        """Keys what this node records, as a holder, of the peer that delivered a root."""
        return _derive(self._seed, "recovery root owner key")

    def root_owner_tag(self, peer_id: bytes) -> bytes:
        """How a held recovery root names the peer it is charged to (the per-owner limits):
        a keyed hash, so the holdings file alone does not name the node whose root it is;
        this node, holding the key, can of course tell its peers' tags apart."""
        return blake3.blake3(peer_id, key=self.root_owner_key).digest()

    @cached_property
    def delete_secret_base(self) -> bytes:
        return _derive(self._seed, "packet delete secret")

    def packet_delete_secret(self, packet_id: bytes, policy: str = "") -> bytes:
        """One secret per packet and placement policy: the same packet stored under two
        policies is two holdings, and forgetting one must not delete the other."""
        return blake3.blake3(packet_id + policy.encode(), key=self.delete_secret_base).digest()

    def packet_owner_tag(self, packet_id: bytes, policy: str = "") -> bytes:
        """What a target keeps to honour a later delete: a hash, not the owner's id."""
        return blake3.blake3(self.packet_delete_secret(packet_id, policy)).digest()

    # --- export ---------------------------------------------------------------------------

    def recovery_phrase(self) -> str:
        """The seed with a checksum as 58 base32 characters in dash-separated groups of 4, for
        paper."""
        text = base64.b32encode(self._seed + _checksum(self._seed)).decode("ascii").rstrip("=")
        return "-".join(text[i : i + 4] for i in range(0, len(text), 4))

    def key_file_text(self) -> str:
        return (
            "# gridnode node key. Keep it secret and keep a copy off this machine:\n"
            "# with it alone this node can recover and restore its backups.\n"
            f"# node id: {self.printable_id}\n"
            f"{_HEADER}:{self.recovery_phrase()}\n"
        )

    def write_key_file(self, path: Path) -> None:
        atomic_write(path, self.key_file_text().encode("ascii"), mode=0o600)


def parse_recovery_phrase(text: str) -> NodeIdentity:
    """Accept a phrase with or without dashes/spaces, any case; the checksum catches typos."""
    cleaned = "".join(ch for ch in text.upper() if ch.isalnum())
    try:
        raw = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except ValueError:
        raise KeyError_("recovery phrase has characters outside base32") from None
    if len(raw) != 36:
        raise KeyError_(
            f"recovery phrase has the wrong length ({len(cleaned)} characters, 57 expected)"
        )
    seed, check = raw[:32], raw[32:]
    if _checksum(seed) != check:
        raise KeyError_("recovery phrase checksum does not match (a typo?)")
    return NodeIdentity(seed)


def load_identity(path: Path) -> NodeIdentity:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyError_(f"no key file at {path}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyError_(
            f"key file {path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run: chmod 600 {path}"
        )
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        if line.startswith(_HEADER + ":"):
            return parse_recovery_phrase(line.split(":", 1)[1])
    raise KeyError_(f"{path} is not a gridnode key file")


def read_key_argument(path_or_dash: str, stdin_text: str | None = None) -> NodeIdentity:
    """``--key FILE`` or ``--key -`` (the recovery phrase on standard input)."""
    if path_or_dash == "-":
        if stdin_text is None:
            raise KeyError_("no recovery phrase on standard input")
        for line in stdin_text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                return parse_recovery_phrase(line.split(":", 1)[-1])
        raise KeyError_("no recovery phrase on standard input")
    return load_identity(Path(os.path.expanduser(path_or_dash)))
