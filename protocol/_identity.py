"""Identity computations that both ends of a session must agree on byte for byte.

Pure functions over pynacl: printable node ids, the handshake transcript that gets
signed, and the receipt a target signs for a stored packet.  Keys are never read or
written here (that is ``gridnode.identity``'s job).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from ._errors import RemoteProtocolError

__all__ = [
    "format_node_id",
    "handshake_transcript",
    "parse_node_id",
    "receipt_payload",
    "short_node_id",
    "sign",
    "verify",
]

_HANDSHAKE_CONTEXT: Final = b"gridnode handshake v1\x00"
_RECEIPT_CONTEXT: Final = b"gridnode packet receipt v1\x00"


def format_node_id(node_id: bytes) -> str:
    """A node id (Ed25519 public key) as 52 lowercase base32 characters: copyable, unambiguous."""
    return base64.b32encode(node_id).decode("ascii").rstrip("=").lower()


def short_node_id(node_id: bytes) -> str:
    """First 10 characters of the printable id: enough to tell nodes apart in logs and tables."""
    return format_node_id(node_id)[:10]


def parse_node_id(text: str) -> bytes:
    cleaned = text.strip().upper()
    try:
        raw = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (ValueError, base64.binascii.Error) as exc:  # type: ignore[attr-defined]
        raise ValueError(f"not a node id: {text!r}") from exc
    if len(raw) != 32:
        raise ValueError(f"not a node id (wrong length): {text!r}")
    return raw


def handshake_transcript(
    *, grid_id: bytes, signer_is_initiator: bool, initiator_hello: bytes, responder_hello: bytes
) -> bytes:
    """What each side signs: the grid id, its role and both Hello frames exactly as sent.

    Signing the raw Hello bytes binds the peer's fresh nonce (so an old Auth cannot be
    replayed), both X25519 public keys (so nobody in the middle can swap them) and the
    grid id (so a signature from another grid is worthless here).
    """
    role = b"I" if signer_is_initiator else b"R"
    return b"".join(
        (
            _HANDSHAKE_CONTEXT,
            len(grid_id).to_bytes(1, "big"),
            grid_id,
            role,
            hashlib.blake2b(initiator_hello, digest_size=32).digest(),
            hashlib.blake2b(responder_hello, digest_size=32).digest(),
        )
    )


def receipt_payload(packet_id: bytes, size_bytes: int) -> bytes:
    return _RECEIPT_CONTEXT + packet_id + size_bytes.to_bytes(8, "big")


def sign(signing_key: SigningKey, payload: bytes) -> bytes:
    return bytes(signing_key.sign(payload).signature)


def verify(node_id: bytes, payload: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(node_id).verify(payload, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def check_signature(node_id: bytes, payload: bytes, signature: bytes, what: str) -> None:
    if not verify(node_id, payload, signature):
        raise RemoteProtocolError(f"bad signature on {what}", code="bad_signature")
