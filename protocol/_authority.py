"""What the grid authority signs, and how anyone checks it (sans-IO: ``now`` is passed in).

A *certificate* says: this node (an Ed25519 node id) is subscribed to this grid under
this plan, with these allocations (claims 21-25, 34-35), from ``issued`` until
``expires``; the authority signs it with the grid key, whose public half every node
has from the grid file.  A *revocation* withdraws one certificate serial before its
expiry.  Both are plain msgpack lists with a context prefix in what is signed, so a
signature over one can never be taken for the other, or for anything else gridnode
signs.

Who checks what:
- both ends of a session check the other's certificate at the handshake (Hello carries
  it); a node without a valid one is refused;
- gossip drops member records whose certificate does not check;
- placement weighs a member by at most its certificate's ``target_bytes``;
- a target refuses a source over its ``source_bytes`` quota.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs
import msgpack
from nacl.signing import SigningKey

from ._identity import sign, verify

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "Allocations",
    "Certificate",
    "Revocation",
    "issue_certificate",
    "issue_revocation",
]

_CERT_CONTEXT: Final = b"gridnode certificate v1\x00"
_REVOKE_CONTEXT: Final = b"gridnode revocation v1\x00"
#: An encoded certificate is about 250 bytes; this bounds what a peer may hand over.
MAX_CERTIFICATE_BYTES: Final = 2048
_MAX_PLAN_LEN: Final = 64


@attrs.frozen
class Allocations:
    """What a subscription allots (claims 22-25, 35); every figure is a non-negative int.

    ``source_bytes``: storage the node may use on the grid as a source, erasure
    expansion included (its quota).  ``target_bytes``: storage it contributes as a
    target (placement weighs it by at most this).  ``bandwidth_bps``: the rate the
    packet store may send at.  ``network_bytes_month`` and ``cpu_seconds_month``: what
    it may spend per billing month on grid traffic and grid CPU work.
    """

    source_bytes: int = 0
    target_bytes: int = 0
    bandwidth_bps: int = 0
    network_bytes_month: int = 0
    cpu_seconds_month: int = 0

    def to_list(self) -> list[int]:
        return [
            self.source_bytes,
            self.target_bytes,
            self.bandwidth_bps,
            self.network_bytes_month,
            self.cpu_seconds_month,
        ]

    @classmethod
    def from_list(cls, raw: Sequence[Any]) -> Allocations:
        if len(raw) != 5 or not all(_is_count(v) for v in raw):
            raise ValueError("allocations must be five non-negative integers")
        return cls(*raw)

    def to_json(self) -> dict[str, int]:
        return attrs.asdict(self)


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _is_count(value: Any) -> bool:
    return type(value) is int and 0 <= value < 1 << 63


@attrs.frozen
class Certificate:
    grid_id: bytes
    node_id: bytes
    serial: int
    plan: str
    allocations: Allocations
    issued: int  # unix seconds
    expires: int  # unix seconds
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        return _CERT_CONTEXT + _pack(
            [
                self.grid_id,
                self.node_id,
                self.serial,
                self.plan,
                self.allocations.to_list(),
                self.issued,
                self.expires,
            ]
        )

    def encode(self) -> bytes:
        return _pack(
            [
                self.grid_id,
                self.node_id,
                self.serial,
                self.plan,
                self.allocations.to_list(),
                self.issued,
                self.expires,
                self.signature,
            ]
        )

    @classmethod
    def decode(cls, raw: bytes) -> Certificate:
        """Parse an encoded certificate; ValueError for anything malformed (not a check
        of the signature: see ``check``)."""
        if not isinstance(raw, bytes | bytearray) or not 0 < len(raw) <= MAX_CERTIFICATE_BYTES:
            raise ValueError("a certificate is 1 to 2048 bytes")
        try:
            fields = msgpack.unpackb(
                raw, raw=False, max_array_len=16, max_map_len=0, max_bin_len=128
            )
        except Exception as exc:
            raise ValueError(f"malformed certificate: {type(exc).__name__}") from None
        if not isinstance(fields, list) or len(fields) != 8:
            raise ValueError("malformed certificate: not an 8-field list")
        grid_id, node_id, serial, plan, allocations, issued, expires, signature = fields
        if not (
            isinstance(grid_id, bytes)
            and 8 <= len(grid_id) <= 32
            and isinstance(node_id, bytes)
            and len(node_id) == 32
            and _is_count(serial)
            and isinstance(plan, str)
            and len(plan) <= _MAX_PLAN_LEN
            and isinstance(allocations, list)
            and _is_count(issued)
            and _is_count(expires)
            and isinstance(signature, bytes)
            and len(signature) == 64
        ):
            raise ValueError("malformed certificate: a field has the wrong type or size")
        return cls(
            grid_id,
            node_id,
            serial,
            plan,
            Allocations.from_list(allocations),
            issued,
            expires,
            signature,
        )

    def problem(
        self,
        *,
        authority_key: bytes,
        grid_id: bytes,
        node_id: bytes | None,
        now: float,
        signature_checked: bool = False,
    ) -> str | None:
        """Why this certificate does not admit ``node_id`` to ``grid_id`` at ``now``, or
        None when it does.  (Revocations are the caller's: it holds the list.)

        ``signature_checked``: the caller verified these very bytes under
        ``authority_key`` before (a signature cannot stop verifying), so only the
        grid, node and clock checks are made again."""
        if self.grid_id != grid_id:
            return "certificate of another grid"
        if node_id is not None and self.node_id != node_id:
            return "certificate of another node"
        if not signature_checked and not verify(authority_key, self.signed_bytes(), self.signature):
            return "certificate not signed by this grid's authority"
        if now < self.issued - 300:  # five minutes of clock skew
            return "certificate not valid yet"
        if now >= self.expires:
            return "certificate expired"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id.hex(),
            "serial": self.serial,
            "plan": self.plan,
            "allocations": self.allocations.to_json(),
            "issued": self.issued,
            "expires": self.expires,
        }


def issue_certificate(
    authority: SigningKey,
    *,
    grid_id: bytes,
    node_id: bytes,
    serial: int,
    plan: str,
    allocations: Allocations,
    issued: int,
    expires: int,
) -> Certificate:
    cert = Certificate(grid_id, node_id, serial, plan, allocations, issued, expires)
    return attrs.evolve(cert, signature=sign(authority, cert.signed_bytes()))


@attrs.frozen
class Revocation:
    """The authority withdraws certificate ``serial`` of ``node_id``; gossiped."""

    grid_id: bytes
    node_id: bytes
    serial: int
    revoked_at: int
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        return _REVOKE_CONTEXT + _pack([self.grid_id, self.node_id, self.serial, self.revoked_at])

    def encode(self) -> bytes:
        return _pack([self.grid_id, self.node_id, self.serial, self.revoked_at, self.signature])

    @classmethod
    def decode(cls, raw: bytes) -> Revocation:
        try:
            fields = msgpack.unpackb(raw, raw=False, max_array_len=8, max_bin_len=128)
            grid_id, node_id, serial, revoked_at, signature = fields
        except Exception as exc:
            raise ValueError(f"malformed revocation: {type(exc).__name__}") from None
        if not (
            isinstance(grid_id, bytes)
            and isinstance(node_id, bytes)
            and len(node_id) == 32
            and _is_count(serial)
            and _is_count(revoked_at)
            and isinstance(signature, bytes)
            and len(signature) == 64
        ):
            raise ValueError("malformed revocation")
        return cls(grid_id, node_id, serial, revoked_at, signature)

    def valid(self, *, authority_key: bytes, grid_id: bytes) -> bool:
        return self.grid_id == grid_id and verify(
            authority_key, self.signed_bytes(), self.signature
        )


def issue_revocation(
    authority: SigningKey, *, grid_id: bytes, node_id: bytes, serial: int, revoked_at: int
) -> Revocation:
    rev = Revocation(grid_id, node_id, serial, revoked_at)
    return attrs.evolve(rev, signature=sign(authority, rev.signed_bytes()))
