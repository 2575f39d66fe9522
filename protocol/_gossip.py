"""Membership gossip on the wire: the owner-signed member record and the SWIM messages.

Rules of this module (the state machine that uses them is ``gridnode.logic.swim``):

1. A ``MemberRecord`` is signed by its owner over a canonical encoding of every other
   field, prefixed by a context string, so no member can forge another's address,
   location or capacity, and a record signed for something else is never one.
2. The owner bumps ``sequence`` on any content change and ``incarnation`` to refute a
   suspicion; ``(incarnation, sequence)`` orders the owner's records.
3. Gossip travels as ``MemberUpdate``: a record plus the state the sender believes
   (``alive``, ``suspect``, ``dead``, ``left``).  ``suspect`` and ``dead`` are claims by
   others (``reporter``), not signed by the subject; they refer to the subject's
   incarnation, which is the one in the enclosed record.  ``left`` is only honoured
   with an owner-signed record whose ``leaving`` flag is set.
3a. A claim carries ``proof``: the reporter's signature over (subject, incarnation,
   state) under its own context string.  Claims travel through many members, and an
   authenticated session only says who *relayed* one; the proof says who *made* it, so
   a member can neither put words in another's mouth nor count one accuser as many.
4. Lists of updates are bounded: a few piggybacked on probe traffic, at most
   ``MAX_RECORDS_PER_MESSAGE`` in one page of a full state exchange (sent only to a
   joiner).
4a. Anti-entropy between members runs by digest (``GossipDigest``): the view is cut by
   the first bits of the node id into at most ``2 ** MAX_DIGEST_BITS`` buckets, each
   summarised by the XOR of its members' ``entry_hash`` (node id, incarnation, sequence,
   state).  Only for buckets that differ are entry hashes listed, and only the records
   behind hashes that differ travel.  A digest is a hint, never evidence: what it
   lists is only used to choose which signed records to send or ask for, so a lying
   digest can cost its sender an exchange, not suppress or forge anyone's record.
   Every list in these messages has a wire bound.
5. ``encoded_size`` gives the exact frame length without building the frame, so the
   state machine can account bytes per message kind cheaply (records are immutable,
   so their encoded length is cached).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Final

import attrs
import msgpack
from nacl.signing import SigningKey

from ._codec import encode
from ._identity import sign, verify
from ._messages import PROTOCOL_VERSION, Message, message, record
from ._schema import Schema, TypeNode, bounded, record_to_raw

__all__ = [
    "CLAIM_STATES",
    "MAX_DIGEST_BITS",
    "MAX_DIGEST_ENTRIES",
    "MAX_DIGEST_RECORDS",
    "MAX_PIGGYBACK_UPDATES",
    "MAX_RECORDS_PER_MESSAGE",
    "MEMBER_STATES",
    "GossipDigest",
    "GossipDigestRecords",
    "GossipDigestReply",
    "GossipIndirectAck",
    "GossipLeave",
    "GossipProbe",
    "GossipProbeAck",
    "GossipProbeRequest",
    "GossipSync",
    "GossipSyncReply",
    "GossipUpdates",
    "MemberRecord",
    "MemberUpdate",
    "claim_digest",
    "claim_is_valid",
    "claim_signing_payload",
    "digest_bucket",
    "encoded_size",
    "entry_hash",
    "record_digest",
    "record_is_valid",
    "record_signing_payload",
    "sign_claim",
    "sign_record",
]

MEMBER_STATES: Final = ("alive", "suspect", "dead", "left")
#: One page of a full state exchange; a 10,000-member view takes three pages.
MAX_RECORDS_PER_MESSAGE: Final = 4096
#: Updates piggybacked on one probe, ack or gossip message.
MAX_PIGGYBACK_UPDATES: Final = 64
MAX_CERTIFICATE_BYTES: Final = 16 * 1024
#: A digest has at most 2**8 buckets (2 KiB of hashes): at 10,000 members ~40 per bucket.
MAX_DIGEST_BITS: Final = 8
#: Entry hashes listed in one digest answer or asked for in one request.
MAX_DIGEST_ENTRIES: Final = 4096
#: Records pushed in one ``GossipDigestRecords``.
MAX_DIGEST_RECORDS: Final = 1024
DIGEST_HASH_BYTES: Final = 8
MAX_LABELS: Final = 32

_RECORD_CONTEXT: Final = b"gridnode member record v1\x00"
_CLAIM_CONTEXT: Final = b"gridnode member claim v1\x00"
#: States another member may claim about a subject (Rule 3a).
CLAIM_STATES: Final = ("suspect", "dead")


def _optional_float(value: Any) -> Any:
    # The signature covers the msgpack encoding, where 47 and 47.0 differ; the codec
    # decodes both as 47.0, so a record must hold floats from the start or it would
    # not verify after a round trip.
    if value is None or isinstance(value, float | bool):
        return value
    if isinstance(value, int):
        return float(value)
    return value


@record
@attrs.frozen(kw_only=True, cache_hash=True)
class MemberRecord:
    """What a member says about itself, signed with its node key (Rule 1)."""

    node_id: bytes = attrs.field(metadata=bounded(exact_len=32))
    address: str = attrs.field(metadata=bounded(max_len=300))
    incarnation: int = attrs.field(default=0, metadata=bounded(min_value=0))
    sequence: int = attrs.field(default=0, metadata=bounded(min_value=0))
    lat: float | None = attrs.field(
        default=None, converter=_optional_float, metadata=bounded(min_value=-90, max_value=90)
    )
    lon: float | None = attrs.field(
        default=None, converter=_optional_float, metadata=bounded(min_value=-180, max_value=180)
    )
    city: str = attrs.field(default="", metadata=bounded(max_len=100))
    allocated_bytes: int = attrs.field(default=0, metadata=bounded(min_value=0))
    free_bytes: int = attrs.field(default=0, metadata=bounded(min_value=0))
    bandwidth_bps: int = attrs.field(default=0, metadata=bounded(min_value=0))
    protocol_version: int = attrs.field(default=PROTOCOL_VERSION, metadata=bounded(min_value=0))
    labels: tuple[str, ...] = attrs.field(
        default=(), converter=tuple, metadata=bounded(max_len=MAX_LABELS)
    )
    leaving: bool = False
    certificate: bytes = attrs.field(default=b"", metadata=bounded(max_len=MAX_CERTIFICATE_BYTES))
    signature: bytes = attrs.field(metadata=bounded(exact_len=64))


def _check_reporter(
    instance: MemberUpdate, attribute: attrs.Attribute[bytes], value: bytes
) -> None:
    if len(value) not in (0, 32):
        raise ValueError("reporter must be empty or a 32-byte node id")


def _check_proof(instance: MemberUpdate, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if len(value) not in (0, 64):
        raise ValueError("proof must be empty or a 64-byte signature")


@record
@attrs.frozen(kw_only=True, cache_hash=True)
class MemberUpdate:
    """A (record, state) pair as gossiped; ``reporter`` names who claims suspect/dead and
    ``proof`` is that reporter's signature of the claim (Rule 3a)."""

    record: MemberRecord
    state: str = attrs.field(
        validator=attrs.validators.in_(MEMBER_STATES), metadata=bounded(max_len=16)
    )
    reporter: bytes = attrs.field(default=b"", validator=_check_reporter)
    proof: bytes = attrs.field(default=b"", validator=_check_proof, metadata=bounded(max_len=64))


def _updates(max_len: int) -> Any:
    return attrs.field(default=(), converter=tuple, metadata=bounded(max_len=max_len))


def _probe_id() -> Any:
    return attrs.field(metadata=bounded(min_value=0))


@message("gossip_probe")
@attrs.frozen(kw_only=True)
class GossipProbe(Message):
    """SWIM ping.  ``target`` is the node meant to answer, so a probe that reaches the
    wrong process (an address reused after a restart) is not acknowledged."""

    probe_id: int = _probe_id()
    target: bytes = attrs.field(metadata=bounded(exact_len=32))
    updates: tuple[MemberUpdate, ...] = _updates(MAX_PIGGYBACK_UPDATES)


@message("gossip_probe_ack")
@attrs.frozen(kw_only=True)
class GossipProbeAck(Message):
    probe_id: int = _probe_id()
    updates: tuple[MemberUpdate, ...] = _updates(MAX_PIGGYBACK_UPDATES)


@message("gossip_probe_request")
@attrs.frozen(kw_only=True)
class GossipProbeRequest(Message):
    """SWIM ping-req: probe ``target`` on my behalf and tell me under ``probe_id``."""

    probe_id: int = _probe_id()
    target: bytes = attrs.field(metadata=bounded(exact_len=32))
    target_address: str = attrs.field(metadata=bounded(max_len=300))
    updates: tuple[MemberUpdate, ...] = _updates(MAX_PIGGYBACK_UPDATES)


@message("gossip_indirect_ack")
@attrs.frozen(kw_only=True)
class GossipIndirectAck(Message):
    """A relay's answer to ``GossipProbeRequest``.  ``reached=False`` is Lifeguard's nack:
    the relay is alive but could not reach the target either, which tells the prober that
    its own network is probably fine."""

    probe_id: int = _probe_id()
    target: bytes = attrs.field(metadata=bounded(exact_len=32))
    reached: bool
    updates: tuple[MemberUpdate, ...] = _updates(MAX_PIGGYBACK_UPDATES)


@message("gossip_updates")
@attrs.frozen(kw_only=True)
class GossipUpdates(Message):
    """A gossip round: pending updates pushed to a few random members."""

    updates: tuple[MemberUpdate, ...] = _updates(MAX_PIGGYBACK_UPDATES)


@message("gossip_sync")
@attrs.frozen(kw_only=True)
class GossipSync(Message):
    """One page of the sender's full state; page 0 asks for the receiver's in return.

    ``join`` marks the first exchange of a node joining through a seed.
    """

    sync_id: int = _probe_id()
    join: bool = False
    page: int = attrs.field(default=0, metadata=bounded(min_value=0))
    pages: int = attrs.field(default=1, metadata=bounded(min_value=1))
    updates: tuple[MemberUpdate, ...] = _updates(MAX_RECORDS_PER_MESSAGE)


@message("gossip_sync_reply")
@attrs.frozen(kw_only=True)
class GossipSyncReply(Message):
    sync_id: int = _probe_id()
    page: int = attrs.field(default=0, metadata=bounded(min_value=0))
    pages: int = attrs.field(default=1, metadata=bounded(min_value=1))
    updates: tuple[MemberUpdate, ...] = _updates(MAX_RECORDS_PER_MESSAGE)


@message("gossip_leave")
@attrs.frozen(kw_only=True)
class GossipLeave(Message):
    """The owner's own record with ``leaving`` set: a graceful leave, not a failure."""

    record: MemberRecord


def _check_hash_list(instance: Any, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if len(value) % DIGEST_HASH_BYTES:
        raise ValueError(f"{attribute.name} must be whole {DIGEST_HASH_BYTES}-byte hashes")


def _check_buckets(instance: Any, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    # Whether each is below 2**bits is the receiver's check (one field's bound must not
    # depend on another's for the schema); repeats would be listed twice.
    if len(set(value)) != len(value):
        raise ValueError("buckets must be distinct")


def _bits() -> Any:
    return attrs.field(
        default=0,
        validator=attrs.validators.in_(range(MAX_DIGEST_BITS + 1)),
        metadata=bounded(min_value=0, max_value=MAX_DIGEST_BITS),
    )


def _hash_list() -> Any:
    return attrs.field(
        default=b"",
        validator=_check_hash_list,
        metadata=bounded(max_len=DIGEST_HASH_BYTES * MAX_DIGEST_ENTRIES),
    )


def _bucket_list() -> Any:
    return attrs.field(
        default=b"", validator=_check_buckets, metadata=bounded(max_len=1 << MAX_DIGEST_BITS)
    )


@message("gossip_digest")
@attrs.frozen(kw_only=True)
class GossipDigest(Message):
    """Anti-entropy, step 1 (Rule 4a): the sender's view as ``2**bits`` bucket hashes,
    8 bytes each, big-endian, in bucket order (a receiver drops any other length)."""

    sync_id: int = _probe_id()
    bits: int = _bits()
    hashes: bytes = attrs.field(
        validator=_check_hash_list,
        metadata=bounded(max_len=DIGEST_HASH_BYTES << MAX_DIGEST_BITS),
    )


@message("gossip_digest_reply")
@attrs.frozen(kw_only=True)
class GossipDigestReply(Message):
    """Step 2: the buckets that differ (one byte each) and the replier's entry hashes
    in them.  Only buckets whose entries all fit are listed; the rest wait for the next
    exchange."""

    sync_id: int = _probe_id()
    bits: int = _bits()
    buckets: bytes = _bucket_list()
    entries: bytes = _hash_list()


@message("gossip_digest_records")
@attrs.frozen(kw_only=True)
class GossipDigestRecords(Message):
    """Step 3: the records the replier lacks or holds differently, and the entry hashes
    (within ``buckets``) the sender wants; the answer is a ``GossipSyncReply``."""

    sync_id: int = _probe_id()
    bits: int = _bits()
    buckets: bytes = _bucket_list()
    updates: tuple[MemberUpdate, ...] = _updates(MAX_DIGEST_RECORDS)
    want: bytes = _hash_list()


# --- signing ------------------------------------------------------------------------------

_SIGNED_FIELDS: Final = tuple(f.name for f in attrs.fields(MemberRecord) if f.name != "signature")
_PLACEHOLDER_SIGNATURE: Final = bytes(64)


def record_signing_payload(rec: MemberRecord) -> bytes:
    """The bytes the owner signs: context string + msgpack array of all other fields.

    An array in declaration order rather than a map keeps it canonical without sorting;
    adding a field changes the context version.
    """
    values = [getattr(rec, name) for name in _SIGNED_FIELDS]
    packed: bytes = msgpack.packb(values, use_bin_type=True)
    return _RECORD_CONTEXT + packed


def sign_record(signing_key: SigningKey, **fields: Any) -> MemberRecord:
    """Build and sign a record; ``node_id`` defaults to the key's public half.

    Raises:
        ValueError: when ``node_id`` is given and is not the key's public half (the
            record could never verify), or ``signature`` is given.
    """
    public = bytes(signing_key.verify_key)
    node_id = fields.pop("node_id", public)
    if node_id != public:
        raise ValueError("node_id must be the public half of the signing key")
    if "signature" in fields:
        raise ValueError("sign_record computes the signature itself")
    unsigned = MemberRecord(node_id=node_id, signature=_PLACEHOLDER_SIGNATURE, **fields)
    signature = sign(signing_key, record_signing_payload(unsigned))
    return attrs.evolve(unsigned, signature=signature)


def record_is_valid(rec: MemberRecord) -> bool:
    """True when ``rec.signature`` verifies under ``rec.node_id``."""
    return verify(rec.node_id, record_signing_payload(rec), rec.signature)


def record_digest(rec: MemberRecord) -> bytes:
    """A key for caching ``record_is_valid``: validity is a property of these bytes."""
    return hashlib.blake2b(record_signing_payload(rec) + rec.signature, digest_size=20).digest()


def claim_signing_payload(subject: bytes, incarnation: int, state: str) -> bytes:
    """What a reporter signs to claim ``subject`` is ``state`` at ``incarnation`` (Rule 3a).

    The incarnation is the claim's freshness: once the subject refutes (a higher
    incarnation), every claim signed against the old one is stale, so no nonce or clock
    is needed and a replayed claim can say nothing its reporter did not say.
    """
    packed: bytes = msgpack.packb([subject, incarnation, state], use_bin_type=True)
    return _CLAIM_CONTEXT + packed


def sign_claim(signing_key: SigningKey, subject: bytes, incarnation: int, state: str) -> bytes:
    """The ``proof`` for a claim by the key's owner.

    Raises:
        ValueError: for a state nobody but the subject may announce (alive, left).
    """
    if state not in CLAIM_STATES:
        raise ValueError(f"only {' and '.join(CLAIM_STATES)} are claims, not {state!r}")
    return sign(signing_key, claim_signing_payload(subject, incarnation, state))


def claim_is_valid(update: MemberUpdate) -> bool:
    """True when ``update`` is a suspect/dead claim its ``reporter`` signed.

    A reporter claiming something about itself is not a claim worth a signature check.
    """
    if update.state not in CLAIM_STATES or len(update.reporter) != 32 or len(update.proof) != 64:
        return False
    subject = update.record.node_id
    if update.reporter == subject:
        return False
    payload = claim_signing_payload(subject, update.record.incarnation, update.state)
    return verify(update.reporter, payload, update.proof)


def claim_digest(update: MemberUpdate) -> bytes:
    """A key for caching ``claim_is_valid``; it cannot collide with a ``record_digest``
    (another context string), so one cache serves both."""
    payload = claim_signing_payload(update.record.node_id, update.record.incarnation, update.state)
    return hashlib.blake2b(payload + update.reporter + update.proof, digest_size=20).digest()


# --- digests ------------------------------------------------------------------------------

_STATE_RANK: Final = {state: rank for rank, state in enumerate(MEMBER_STATES)}


def entry_hash(node_id: bytes, incarnation: int, sequence: int, state: str) -> int:
    """One member's contribution to a digest bucket (Rule 4a), a 64-bit integer.

    Buckets combine entries by XOR, so a member's change is folded in and out in
    constant time; the node id is inside the hash, so two members never cancel out.
    """
    packed: bytes = msgpack.packb([incarnation, sequence, _STATE_RANK[state]])
    digest = hashlib.blake2b(node_id + packed, digest_size=DIGEST_HASH_BYTES).digest()
    return int.from_bytes(digest, "big")


def digest_bucket(node_id: bytes, bits: int) -> int:
    """The bucket of ``node_id`` in a digest of ``bits`` bits: its first bits."""
    return node_id[0] >> (8 - bits) if bits else 0


# --- exact encoded sizes without encoding ---------------------------------------------------
# msgpack's sizes are simple functions of the value (see the msgpack spec, "formats");
# the tests compare every one of them with ``len(encode(msg))``.


def _packed_len(value: Any) -> int:
    return len(msgpack.packb(value, use_bin_type=True))


def _container_header_len(n: int) -> int:
    if n < 16:
        return 1
    if n < 65536:
        return 3
    return 5


def _int_len(value: int) -> int:
    if -32 <= value < 128:
        return 1
    if value >= 0:
        if value < 256:
            return 2
        if value < 65536:
            return 3
        return 5 if value < 2**32 else 9
    if value >= -128:
        return 2
    if value >= -32768:
        return 3
    return 5 if value >= -(2**31) else 9


def _str_len(value: str) -> int:
    n = len(value) if value.isascii() else len(value.encode("utf-8"))
    if n < 32:
        return 1 + n
    if n < 256:
        return 2 + n
    return 3 + n if n < 65536 else 5 + n


def _bytes_len(value: bytes) -> int:
    n = len(value)
    if n < 256:
        return 2 + n
    return 3 + n if n < 65536 else 5 + n


def _scalar_len(value: Any) -> int:
    kind = type(value)
    if kind is bool or value is None:
        return 1
    if kind is int:
        return _int_len(value)
    if kind is float:
        return 9
    if kind is str:
        return _str_len(value)
    if kind is bytes:
        return _bytes_len(value)
    return _packed_len(value)


@functools.lru_cache(maxsize=1 << 16)
def _record_size(rec: MemberRecord) -> int:
    return _packed_len(record_to_raw(rec))


_UPDATE_FIXED: Final = (
    1 + _str_len("record") + _str_len("state") + _str_len("reporter") + _str_len("proof")
)


@functools.lru_cache(maxsize=1 << 16)
def _update_size(update: MemberUpdate) -> int:
    return (
        _UPDATE_FIXED
        + _record_size(update.record)
        + _str_len(update.state)
        + _bytes_len(update.reporter)
        + _bytes_len(update.proof)
    )


def _value_size(value: Any, node: TypeNode) -> int:
    kind = node.kind
    if kind == "tuple":
        assert node.item is not None
        item = node.item
        if item.record is MemberUpdate:
            return _container_header_len(len(value)) + sum(map(_update_size, value))
        return _container_header_len(len(value)) + sum(_value_size(v, item) for v in value)
    if kind == "record":
        if isinstance(value, MemberRecord):
            return _record_size(value)
        if isinstance(value, MemberUpdate):
            return _update_size(value)
        return _packed_len(record_to_raw(value))
    if kind == "optional":
        assert node.item is not None
        return 1 if value is None else _value_size(value, node.item)
    return _scalar_len(value)


_Layout = tuple[int, tuple[tuple[str, TypeNode | None], ...]]
_LAYOUTS: dict[str, _Layout] = {}


def _layout(cls: type[Message]) -> _Layout:
    """Fixed bytes of a message class (envelope, keys) and how to size each field."""
    cached = _LAYOUTS.get(cls.KIND)
    if cached is not None:
        return cached
    schema: Schema = getattr(cls, "__wire_schema__")  # noqa: B009 - set by @message
    fixed = (
        1
        + _str_len("v")
        + _int_len(PROTOCOL_VERSION)
        + _str_len("k")
        + _str_len(cls.KIND)
        + _str_len("b")
        + _container_header_len(len(schema.fields))
    )
    fields: list[tuple[str, TypeNode | None]] = []
    for spec in schema.fields:
        fixed += _str_len(spec.name)
        scalar = spec.node.kind in ("int", "float", "bool", "str", "bytes")
        fields.append((spec.name, None if scalar else spec.node))
    layout = (fixed, tuple(fields))
    _LAYOUTS[cls.KIND] = layout
    return layout


_GOSSIP_TYPES: Final = (
    GossipProbe,
    GossipProbeAck,
    GossipProbeRequest,
    GossipIndirectAck,
    GossipUpdates,
    GossipSync,
    GossipSyncReply,
    GossipLeave,
    GossipDigest,
    GossipDigestReply,
    GossipDigestRecords,
)


def encoded_size(msg: Message) -> int:
    """Length of ``encode(msg)`` in bytes; exact, and cheap for gossip messages.

    Other messages are simply encoded.  Validation is not repeated here: a message
    that ``encode`` would refuse still gets a size.
    """
    if not isinstance(msg, _GOSSIP_TYPES):
        return len(encode(msg))
    total, fields = _layout(type(msg))
    for name, node in fields:
        value = getattr(msg, name)
        total += _scalar_len(value) if node is None else _value_size(value, node)
    return total
