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
    "root_locator",
    "short_node_id",
    "sign",
    "verify",
]

_HANDSHAKE_CONTEXT: Final = b"gridnode handshake v2\x00"
_RECEIPT_CONTEXT: Final = b"gridnode packet receipt v1\x00"
_ROOT_LOCATOR_CONTEXT: Final = b"gridnode recovery root locator v1\x00"


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
    *,
    grid_id: bytes,
    signer_is_initiator: bool,
    initiator_offer: bytes,
    responder_offer: bytes,
    node_id: bytes,
    version: int,
    listen_address: str,
    software: str,
    sealed_payloads: bool,
    certificate: bytes = b"",
) -> bytes:
    """What each side signs: the grid id, its role, both Offer frames exactly as sent and
    its own identity fields.

    Signing the raw Offers binds both fresh nonces and both X25519 public keys, so an old
    Hello cannot be replayed into a new session and nobody in the middle can swap keys
    (a relay has other keys on each side, so a signature from one side does not verify on
    the other); the grid id makes a signature from another grid worthless here; the role
    stops a Hello being reflected back at its sender.
    """
    role = b"I" if signer_is_initiator else b"R"
    identity = b"".join(
        (
            node_id,
            version.to_bytes(4, "big"),
            _lp(listen_address.encode()),
            _lp(software.encode()),
            b"\x01" if sealed_payloads else b"\x00",
            hashlib.blake2b(certificate, digest_size=32).digest(),
        )
    )
    return b"".join(
        (
            _HANDSHAKE_CONTEXT,
            _lp(grid_id),
            role,
            hashlib.blake2b(initiator_offer, digest_size=32).digest(),
            hashlib.blake2b(responder_offer, digest_size=32).digest(),
            hashlib.blake2b(identity, digest_size=32).digest(),
        )
    )


def _lp(value: bytes) -> bytes:
    """Length-prefixed, so two fields can never run into each other."""
    return len(value).to_bytes(2, "big") + value


def receipt_payload(packet_id: bytes, size_bytes: int) -> bytes:
    return _RECEIPT_CONTEXT + packet_id + size_bytes.to_bytes(8, "big")


def root_locator(verify_key: bytes) -> bytes:
    """Where the recovery root signed by ``verify_key`` lives: a hash of that key.

    A holder recomputes it from the key a ``PutRoot`` carries and refuses a mismatch, so
    a locator can only ever hold roots signed by the one key it was derived from:
    learning a locator (every holder sees it) does not let anyone squat or overwrite it.
    """
    return hashlib.blake2b(_ROOT_LOCATOR_CONTEXT + verify_key, digest_size=32).digest()


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
