"""The closed set of wire messages.

Rules of this module:

1. Every message is an attrs frozen, slotted, keyword-only class registered with
   ``@message(KIND)``; ``KIND`` is its type tag on the wire.  The set is closed: the
   codec refuses any tag not registered here.
2. A request carries ``request_id``; its response carries the same ``request_id``
   (the correlation id), or an ``Error`` with it.
3. Field names are full words with units (``size_bytes``, ``rtt_ms``).  Bounds the
   codec enforces live in ``metadata=bounded(...)``; types are restricted to those
   ``_schema`` supports.
4. Adding a field or a message changes the wire format: add golden vectors for it
   (tests/protocol/vectors) and bump ``PROTOCOL_VERSION`` when old peers would
   misread it.  A message new in a version says so in ``SINCE_VERSION``, a field new
   in a version in its metadata (``since(N)``): a session never sends either to a
   peer that negotiated an older version (``_session``, Rule 2a), so a grid upgrades
   node by node while ``MIN_PROTOCOL_VERSION`` still reaches the older nodes.
5. Messages with a ``data`` field may travel with that field detached from the
   sealed header (see ``_session``); ``DETACHED_FIELD`` names it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, TypeVar

import attrs

from ._errors import LocalProtocolError
from ._schema import bounded, compile_schema

__all__ = [
    "AUDIT_CHUNK_BYTES",
    "MAX_AUDIT_INDEX",
    "MAX_AUDIT_PATH",
    "MAX_BATCH_BYTES",
    "MAX_SPREAD_REVOCATIONS",
    "MAX_USAGE_REPORT_BYTES",
    "MESSAGE_TYPES",
    "MIN_PROTOCOL_VERSION",
    "PROTOCOL_VERSION",
    "Account",
    "AdoptPackets",
    "AuditPacket",
    "ControlCall",
    "ControlEvent",
    "ControlHello",
    "ControlResult",
    "DeletePacket",
    "Error",
    "FetchPacket",
    "FetchPackets",
    "FetchedPart",
    "ForwardLog",
    "GetRevocations",
    "GetRoot",
    "Goodbye",
    "Hello",
    "LogAccepted",
    "Message",
    "Offer",
    "PacketAudited",
    "PacketData",
    "PacketDeleted",
    "PacketPart",
    "PacketStored",
    "PacketsAdopted",
    "PacketsData",
    "PacketsStored",
    "PartStored",
    "Ping",
    "Pong",
    "PutRoot",
    "RenewCertificate",
    "Revocations",
    "RootData",
    "RootStored",
    "SpreadRevocations",
    "StorePacket",
    "StorePackets",
    "Subscribe",
    "Subscribed",
    "UsageAccepted",
    "UsageReport",
    "WantedPacket",
    "message",
    "record",
    "since",
]

#: The newest protocol version this software speaks.  3 added the "C" frame for certified
#: batches, storage audits (``AuditPacket``), repair maps in parts (``GrantRepairPart``,
#: ``RepairGranted.missing``); 4 added leases (``RenewLeases``); 5 added batched fetches
#: (``FetchPackets``/``PacketsData``).
PROTOCOL_VERSION: Final = 5
#: The oldest version it still speaks: a grid of version-2 nodes upgrades node by node.
MIN_PROTOCOL_VERSION: Final = 2
#: Upper bound of one packet's payload (a chunk's ciphertext over k; chunks are 2 MiB at most
#: by default).
MAX_PACKET_BYTES: Final = 8 * 1024 * 1024
MAX_ROOT_BYTES: Final = 8 * 1024 * 1024
#: A batch of packets must fit a frame with room for its header.
MAX_BATCH_BYTES: Final = 15 * 1024 * 1024
#: Local control calls carry JSON text; a snapshot listing can be long.
MAX_CONTROL_TEXT: Final = 4 * 1024 * 1024

MESSAGE_TYPES: dict[str, type[Message]] = {}

_M = TypeVar("_M", bound=type)


class Message:
    """Marker base of every wire message; empty slots keep attrs subclasses slotted."""

    __slots__ = ()
    KIND: ClassVar[str]
    DETACHED_FIELD: ClassVar[str | None] = None
    #: The sealed header names the BLAKE3 of every byte of the detached payload (each
    #: part's id and length), and the receiver checks each part against it: the session
    #: then neither hashes the payload nor carries a digest (``_session`` Rule 6a).
    PAYLOAD_CERTIFIED: ClassVar[bool] = False
    #: Responses are routed to the waiting request by ``request_id``; everything else
    #: with a ``request_id`` is a request the receiver must answer.
    RESPONSE: ClassVar[bool] = False
    #: The protocol version that introduced this message: a session whose negotiated
    #: version is older neither sends nor accepts it.
    SINCE_VERSION: ClassVar[int] = MIN_PROTOCOL_VERSION


def since(version: int, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Field metadata: the field is new in protocol ``version``; it is left out of a
    message encoded for an older version (where it must hold its default) and refused
    in one decoded from it.  Only top-level fields of a message may carry it."""
    return {**(meta or {}), "since": version}


def record(cls: _M) -> _M:
    """Register a nested value type (a struct inside messages) and compile its schema."""
    type.__setattr__(cls, "__wire_schema__", compile_schema(cls))
    return cls


def message(kind: str) -> Any:
    """Register a message class under its wire tag."""

    def wrap(cls: type[Message]) -> type[Message]:
        if kind in MESSAGE_TYPES:
            raise LocalProtocolError(f"duplicate message kind {kind!r}")
        type.__setattr__(cls, "KIND", kind)
        type.__setattr__(cls, "__wire_schema__", compile_schema(cls))
        MESSAGE_TYPES[kind] = cls
        return cls

    return wrap


def _id32() -> Any:
    return attrs.field(metadata=bounded(exact_len=32))


def _request_id() -> Any:
    return attrs.field(metadata=bounded(min_value=0))


# --- session handshake ------------------------------------------------------------------


@message("offer")
@attrs.frozen(kw_only=True)
class Offer(Message):
    """First frame of each side, in the clear: fresh key-exchange values and nothing else.

    It names no grid, node or version, so a stranger who opens a socket learns nothing
    that helps it join (issue 8); who is who travels sealed, in ``Hello``."""

    nonce: bytes = _id32()
    kx_public: bytes = _id32()


@message("hello")
@attrs.frozen(kw_only=True)
class Hello(Message):
    """Who I am, sealed under the exchanged keys; the initiator sends it first, and the
    responder answers with its own only once the initiator's has verified.

    ``signature`` is over the handshake transcript (both Offers as sent, the grid id, the
    signer's role and its identity fields), made with the key ``node_id`` names.

    ``version`` is the oldest protocol version the sender speaks, the version this Hello
    is written in; the newest follows ``software`` as a last word ``protocol/MIN-MAX``
    (``_session`` Rule 2a).  A version-2 node compares ``version`` with its own and
    refuses unknown fields, so the range travels where it reads past it; a Hello
    without that word (a version-2 node's) speaks ``version`` only."""

    grid_id: bytes = attrs.field(metadata=bounded(min_len=8, max_len=32))
    node_id: bytes = _id32()
    version: int
    listen_address: str = attrs.field(metadata=bounded(max_len=300))
    software: str = attrs.field(default="", metadata=bounded(max_len=100))
    #: The sender refuses packet payloads that travel outside the AEAD (Rule 6): the
    #: receiver must seal them.
    sealed_payloads: bool = False
    #: The sender's subscription certificate (``protocol.Certificate``, encoded); empty
    #: on an open grid, or for a node that comes to the authority to subscribe.
    certificate: bytes = attrs.field(default=b"", metadata=bounded(max_len=2048))
    signature: bytes = attrs.field(metadata=bounded(exact_len=64))


@message("goodbye")
@attrs.frozen(kw_only=True)
class Goodbye(Message):
    """Orderly end of a session, sealed, so a cut connection is told apart from a close."""

    code: str = attrs.field(metadata=bounded(max_len=64))
    reason: str = attrs.field(default="", metadata=bounded(max_len=1000))


@message("error")
@attrs.frozen(kw_only=True)
class Error(Message):
    """Failure answer to any request: a stable ``code`` for code, a sentence for people."""

    RESPONSE: ClassVar[bool] = True

    request_id: int = _request_id()
    code: str = attrs.field(metadata=bounded(max_len=64))
    message: str = attrs.field(default="", metadata=bounded(max_len=2000))


@message("ping")
@attrs.frozen(kw_only=True)
class Ping(Message):
    request_id: int = _request_id()


@message("pong")
@attrs.frozen(kw_only=True)
class Pong(Message):
    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()


# --- packets: the packet store actor's wire side -----------------------------------------


@message("store_packet")
@attrs.frozen(kw_only=True)
class StorePacket(Message):
    """Keep this packet.  ``owner_tag`` is the hash of a per-packet delete secret, so the
    target can later honour a delete without ever learning who the owner is."""

    DETACHED_FIELD: ClassVar[str | None] = "data"
    request_id: int = _request_id()
    packet_id: bytes = _id32()
    owner_tag: bytes = _id32()
    data: bytes = attrs.field(metadata=bounded(max_len=MAX_PACKET_BYTES))


@message("packet_stored")
@attrs.frozen(kw_only=True)
class PacketStored(Message):
    """Receipt: the target signs (packet id, size) so the source can prove custody later."""

    RESPONSE: ClassVar[bool] = True

    request_id: int = _request_id()
    packet_id: bytes = _id32()
    size_bytes: int = attrs.field(metadata=bounded(min_value=0))
    receipt: bytes = attrs.field(metadata=bounded(exact_len=64))
    free_bytes: int = attrs.field(metadata=bounded(min_value=0))


#: Packets per StorePackets message: enough to amortise a frame, a task and a journal
#: commit over a few packets, small enough that one slow batch does not hold many.
MAX_PACKETS_PER_BATCH: Final = 16


@record
@attrs.frozen(kw_only=True)
class PacketPart:
    """One packet of a StorePackets batch; its bytes are ``size_bytes`` of the payload."""

    packet_id: bytes = _id32()
    owner_tag: bytes = _id32()
    size_bytes: int = attrs.field(metadata=bounded(min_value=0, max_value=MAX_PACKET_BYTES))


@record
@attrs.frozen(kw_only=True)
class PartStored:
    """Per-packet outcome: an empty ``code`` and a receipt, or an error code and sentence."""

    packet_id: bytes = _id32()
    code: str = attrs.field(default="", metadata=bounded(max_len=64))
    message: str = attrs.field(default="", metadata=bounded(max_len=500))
    receipt: bytes = attrs.field(default=b"", metadata=bounded(max_len=64))


@message("store_packets")
@attrs.frozen(kw_only=True)
class StorePackets(Message):
    """Several packets for one target in one frame: the parts' bytes, concatenated in
    order, are the detached payload.  Each packet is verified, stored and answered on
    its own: one bad packet does not fail the others.  The parts name each packet's id
    (its BLAKE3) and length, so the target hashes each packet once, against its id, and
    the session does not hash the batch (``PAYLOAD_CERTIFIED``)."""

    DETACHED_FIELD: ClassVar[str | None] = "data"
    PAYLOAD_CERTIFIED: ClassVar[bool] = True
    request_id: int = _request_id()
    parts: tuple[PacketPart, ...] = attrs.field(
        metadata=bounded(min_len=1, max_len=MAX_PACKETS_PER_BATCH)
    )
    data: bytes = attrs.field(metadata=bounded(max_len=MAX_BATCH_BYTES))


@message("packets_stored")
@attrs.frozen(kw_only=True)
class PacketsStored(Message):
    RESPONSE: ClassVar[bool] = True

    request_id: int = _request_id()
    results: tuple[PartStored, ...] = attrs.field(metadata=bounded(max_len=MAX_PACKETS_PER_BATCH))
    free_bytes: int = attrs.field(metadata=bounded(min_value=0))


@message("fetch_packet")
@attrs.frozen(kw_only=True)
class FetchPacket(Message):
    request_id: int = _request_id()
    packet_id: bytes = _id32()


@message("packet_data")
@attrs.frozen(kw_only=True)
class PacketData(Message):
    RESPONSE: ClassVar[bool] = True
    DETACHED_FIELD: ClassVar[str | None] = "data"
    request_id: int = _request_id()
    packet_id: bytes = _id32()
    data: bytes = attrs.field(metadata=bounded(max_len=MAX_PACKET_BYTES))


@record
@attrs.frozen(kw_only=True)
class WantedPacket:
    """One packet a ``FetchPackets`` asks for."""

    packet_id: bytes = _id32()


@message("fetch_packets")
@attrs.frozen(kw_only=True)
class FetchPackets(Message):
    """Several packets from one holder in one request: a restore asks each holder for
    the packets of every chunk it has in flight at once, so a frame, a request and a
    disk hop on the holder serve several packets instead of one."""

    SINCE_VERSION: ClassVar[int] = 5

    request_id: int = _request_id()
    wanted: tuple[WantedPacket, ...] = attrs.field(
        metadata=bounded(min_len=1, max_len=MAX_PACKETS_PER_BATCH)
    )


@record
@attrs.frozen(kw_only=True)
class FetchedPart:
    """Per packet asked, in order: its ``size_bytes`` of the payload when ``code`` is
    empty, else why not: "not_found" (not held, or it failed the holder's own check)
    or "later" (the answer was full: ask again)."""

    packet_id: bytes = _id32()
    size_bytes: int = attrs.field(
        default=0, metadata=bounded(min_value=0, max_value=MAX_PACKET_BYTES)
    )
    code: str = attrs.field(default="", metadata=bounded(max_len=64))


@message("packets_data")
@attrs.frozen(kw_only=True)
class PacketsData(Message):
    """The answer to ``FetchPackets``: the held packets' bytes, concatenated in the
    order asked, are the detached payload.  The parts name each packet's id (its
    BLAKE3) and length, so the asker hashes each packet once, against its id, and the
    session does not hash the whole (``PAYLOAD_CERTIFIED``)."""

    SINCE_VERSION: ClassVar[int] = 5

    RESPONSE: ClassVar[bool] = True
    DETACHED_FIELD: ClassVar[str | None] = "data"
    PAYLOAD_CERTIFIED: ClassVar[bool] = True
    request_id: int = _request_id()
    parts: tuple[FetchedPart, ...] = attrs.field(metadata=bounded(max_len=MAX_PACKETS_PER_BATCH))
    data: bytes = attrs.field(metadata=bounded(max_len=MAX_BATCH_BYTES))


@message("delete_packet")
@attrs.frozen(kw_only=True)
class DeletePacket(Message):
    """Present the delete secret whose hash was the ``owner_tag`` at store time."""

    request_id: int = _request_id()
    packet_id: bytes = _id32()
    owner_secret: bytes = _id32()


@message("packet_deleted")
@attrs.frozen(kw_only=True)
class PacketDeleted(Message):
    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()
    packet_id: bytes = _id32()
    removed: bool


# --- recovery roots: sealed catalog pointers at key-derived locators ----------------------


@message("put_root")
@attrs.frozen(kw_only=True)
class PutRoot(Message):
    """Store a sealed recovery root under ``locator``; later versions replace earlier ones
    only when signed by the same ``verify_key`` (a key unlinkable to the node id)."""

    request_id: int = _request_id()
    locator: bytes = _id32()
    version: int = attrs.field(metadata=bounded(min_value=0))
    verify_key: bytes = _id32()
    signature: bytes = attrs.field(metadata=bounded(exact_len=64))
    sealed: bytes = attrs.field(metadata=bounded(max_len=MAX_ROOT_BYTES))


@message("root_stored")
@attrs.frozen(kw_only=True)
class RootStored(Message):
    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()
    locator: bytes = _id32()
    version: int = attrs.field(metadata=bounded(min_value=0))


@message("get_root")
@attrs.frozen(kw_only=True)
class GetRoot(Message):
    request_id: int = _request_id()
    locator: bytes = _id32()


@message("root_data")
@attrs.frozen(kw_only=True)
class RootData(Message):
    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()
    locator: bytes = _id32()
    version: int = attrs.field(metadata=bounded(min_value=0))
    verify_key: bytes = _id32()
    signature: bytes = attrs.field(metadata=bounded(exact_len=64))
    sealed: bytes = attrs.field(metadata=bounded(max_len=MAX_ROOT_BYTES))


# --- local control channel (CLI <-> its own node) -----------------------------------------


@message("control_hello")
@attrs.frozen(kw_only=True)
class ControlHello(Message):
    """First frame from the CLI: the token from the owner-only token file."""

    token: bytes = attrs.field(metadata=bounded(min_len=16, max_len=64))
    version: int


@message("control_call")
@attrs.frozen(kw_only=True)
class ControlCall(Message):
    """A CLI command; ``params`` is a JSON object validated by the request actor per method."""

    request_id: int = _request_id()
    method: str = attrs.field(metadata=bounded(max_len=64))
    params: str = attrs.field(default="{}", metadata=bounded(max_len=MAX_CONTROL_TEXT))


@message("control_event")
@attrs.frozen(kw_only=True)
class ControlEvent(Message):
    """Progress of a running call, as a JSON object with an ``event`` key."""

    request_id: int = _request_id()
    event: str = attrs.field(metadata=bounded(max_len=MAX_CONTROL_TEXT))


@message("control_result")
@attrs.frozen(kw_only=True)
class ControlResult(Message):
    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()
    result: str = attrs.field(metadata=bounded(max_len=MAX_CONTROL_TEXT))


# --- subscription: a node and the grid authority (issue 9, claims 21, 26, 27, 34) ----------

#: Same bound as ``_authority.MAX_CERTIFICATE_BYTES`` (a test keeps them equal); spelled out
#: here so this module needs no import from ``_authority``.
_MAX_CERTIFICATE_BYTES: Final = 2048


@message("subscribe")
@attrs.frozen(kw_only=True)
class Subscribe(Message):
    """Subscribe the sending node (its authenticated session's node id) under ``plan`` with
    a one-time invite code; empty ``plan`` takes the invite's plan or the default one."""

    request_id: int = _request_id()
    invite: str = attrs.field(metadata=bounded(min_len=1, max_len=128))
    plan: str = attrs.field(default="", metadata=bounded(max_len=64))


@message("renew_certificate")
@attrs.frozen(kw_only=True)
class RenewCertificate(Message):
    """A new certificate for the sender's existing subscription (refused once revoked)."""

    request_id: int = _request_id()


@message("subscribed")
@attrs.frozen(kw_only=True)
class Subscribed(Message):
    """The answer to ``Subscribe`` and ``RenewCertificate``: an encoded ``Certificate``."""

    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()
    certificate: bytes = attrs.field(metadata=bounded(min_len=1, max_len=_MAX_CERTIFICATE_BYTES))


# --- the global backup log and revocations (issue 9, claims 2, 3, 31) -----------------------

#: Log entries per ``ForwardLog``, and the size of one encoded entry: a node sends its
#: backlog in batches, and one entry (an event and its JSON detail) is small.
MAX_LOG_ENTRIES_PER_MESSAGE: Final = 128
MAX_LOG_ENTRY_BYTES: Final = 64 * 1024
#: Revocations per ``Revocations`` answer (an encoded revocation is about 150 bytes).
MAX_REVOCATIONS_PER_MESSAGE: Final = 512


@message("forward_log")
@attrs.frozen(kw_only=True)
class ForwardLog(Message):
    """The sender's signed, hash-chained backup log entries, in order, to the authority's
    global backup log.  Each entry is encoded by ``gridnode.authority.globallog``; the
    authority checks it under the session's node id.  No entries: just ask for the head."""

    request_id: int = _request_id()
    entries: tuple[bytes, ...] = attrs.field(metadata=bounded(max_len=MAX_LOG_ENTRIES_PER_MESSAGE))


@message("log_accepted")
@attrs.frozen(kw_only=True)
class LogAccepted(Message):
    """The last entry of the sender's chain the authority holds (0 and empty: none)."""

    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()
    head_seq: int = attrs.field(metadata=bounded(min_value=0))
    head_hash: bytes = attrs.field(default=b"", metadata=bounded(max_len=32))


@message("get_revocations")
@attrs.frozen(kw_only=True)
class GetRevocations(Message):
    """The authority's revocations recorded after position ``since`` (0: all of them)."""

    request_id: int = _request_id()
    since: int = attrs.field(metadata=bounded(min_value=0))


@message("revocations")
@attrs.frozen(kw_only=True)
class Revocations(Message):
    """Signed revocations (``protocol.Revocation``, encoded), oldest first; ``next`` is
    the position to ask from next time (more may follow when the list is full)."""

    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()
    revocations: tuple[bytes, ...] = attrs.field(
        metadata=bounded(max_len=MAX_REVOCATIONS_PER_MESSAGE)
    )
    next: int = attrs.field(metadata=bounded(min_value=0))


#: Revocations per ``SpreadRevocations`` (a member passes on what it just learned).
MAX_SPREAD_REVOCATIONS: Final = 64


@message("spread_revocations")
@attrs.frozen(kw_only=True)
class SpreadRevocations(Message):
    """One-way: signed revocations the sender just learned (from the authority or from a
    peer), passed on so that a revoked node is cut off grid-wide in a few round trips
    instead of at every member's next poll.  The receiver checks each under the grid key
    and passes on only those that were new to it, so a revocation crosses each session
    at most twice."""

    revocations: tuple[bytes, ...] = attrs.field(
        metadata=bounded(min_len=1, max_len=MAX_SPREAD_REVOCATIONS)
    )


# --- metering and accounts: a node and the grid authority (issue 9, claims 26, 28, 29) ------

#: A signed usage report is a few hundred bytes plus 40 per target it placed packets on
#: (at most 4,096 targets listed); the bound leaves room and stops a peer from sending more.
MAX_USAGE_REPORT_BYTES: Final = 256 * 1024
#: An account (JSON): the current statement and the latest invoices (at most 24).
MAX_ACCOUNT_TEXT: Final = 1024 * 1024


@message("usage_report")
@attrs.frozen(kw_only=True)
class UsageReport(Message):
    """One signed usage report of the sending node (``gridnode.authority.metering``
    defines the signed bytes); the node named in it must be the session's peer."""

    request_id: int = _request_id()
    report: bytes = attrs.field(metadata=bounded(min_len=1, max_len=MAX_USAGE_REPORT_BYTES))


@message("usage_accepted")
@attrs.frozen(kw_only=True)
class UsageAccepted(Message):
    """The authority stored the report with this sequence number (the node drops it)."""

    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()
    sequence: int = attrs.field(metadata=bounded(min_value=0))


@message("get_account")
@attrs.frozen(kw_only=True)
class GetAccount(Message):
    """The sender's account: latest usage, current statement, invoices issued to it."""

    request_id: int = _request_id()


@message("account")
@attrs.frozen(kw_only=True)
class Account(Message):
    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()
    account: str = attrs.field(metadata=bounded(max_len=MAX_ACCOUNT_TEXT))


# --- delegated repair: an owner and the members it lets repair its packets (issue 15) -------
#
# Defined here, not in ``__all__`` above, so that other blocks appended to this module do
# not collide with this one; ``protocol/__init__`` re-exports them by name.

#: A capability names every packet of the owner's chunks (id, holder, delete tag: about
#: 70 bytes a packet), in parts of at most ``MAX_CAPABILITY_PART_BYTES``.  Small maps
#: travel inline with the grant (up to 8 MiB in all); a larger map follows the grant
#: part by part (``GrantRepairPart``), and only the parts the delegate lacks.
MAX_CAPABILITY_BYTES: Final = 8 * 1024 * 1024
#: One sealed part of a capability's map: some 50,000 packets.
MAX_CAPABILITY_PART_BYTES: Final = 4 * 1024 * 1024
#: Parts of one capability: 1,024 parts map some 50 million packets (a backup of
#: about 2 PB at 10-of-30 and the average chunk).
MAX_CAPABILITY_PARTS: Final = 1024
#: Move records per ``RepairMoves`` answer (an encoded move is about 400 bytes).
MAX_MOVES_PER_MESSAGE: Final = 512
MAX_MOVE_BYTES: Final = 1024
#: A holder's proof that it holds the owner's capability (the owner's grant and up to
#: 16 signed hand-ons, about 150 bytes each).
MAX_AUTHORITY_BYTES: Final = 8192


@message("grant_repair")
@attrs.frozen(kw_only=True)
class GrantRepair(Message):
    """The sending owner hands the receiver a repair capability (``gridnode.delegation``
    defines it: signed by the owner, its body sealed to the receiver's key), or renews
    it.  ``applied_through``: the owner has taken the receiver's move records up to this
    number into its catalog, so the receiver may drop them."""

    request_id: int = _request_id()
    capability: bytes = attrs.field(metadata=bounded(min_len=1, max_len=MAX_CAPABILITY_BYTES))
    applied_through: int = attrs.field(default=0, metadata=bounded(min_value=0))


@message("repair_granted")
@attrs.frozen(kw_only=True)
class RepairGranted(Message):
    """The capability is held until ``expires`` (seconds since the epoch)."""

    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()
    version: int = attrs.field(metadata=bounded(min_value=0))
    expires: float = attrs.field(metadata=bounded(min_value=0))
    #: Digests of the map's parts the receiver still lacks: the sender sends each in a
    #: ``GrantRepairPart``; the capability is taken up once none is missing.
    missing: tuple[bytes, ...] = attrs.field(
        default=(), metadata=since(3, bounded(max_len=MAX_CAPABILITY_PARTS))
    )


@message("grant_repair_part")
@attrs.frozen(kw_only=True)
class GrantRepairPart(Message):
    """One part of the map of a capability granted (or handed on) just before by the
    same sender: sealed to the receiver, its digest listed in the signed grant."""

    SINCE_VERSION: ClassVar[int] = 3

    request_id: int = _request_id()
    owner: bytes = attrs.field(metadata=bounded(min_len=32, max_len=32))
    version: int = attrs.field(metadata=bounded(min_value=0))
    part: bytes = attrs.field(metadata=bounded(min_len=1, max_len=MAX_CAPABILITY_PART_BYTES))


@message("get_repair_moves")
@attrs.frozen(kw_only=True)
class GetRepairMoves(Message):
    """The move records a repairer made for the sending node's packets, numbered above
    ``after``: only the owner itself (the session's peer) is ever told its moves."""

    request_id: int = _request_id()
    after: int = attrs.field(default=0, metadata=bounded(min_value=0))


@message("repair_moves")
@attrs.frozen(kw_only=True)
class RepairMoves(Message):
    """Signed move records (``gridnode.delegation.MoveRecord``, encoded), oldest first;
    ``more`` when the list was cut at the message bound."""

    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()
    moves: tuple[bytes, ...] = attrs.field(metadata=bounded(max_len=MAX_MOVES_PER_MESSAGE))
    more: bool = False
    #: The repairer's capability authority (``gridnode.delegation.Authority``): how an
    #: owner trusts moves of a member its delegates handed the capability on to.
    authority: bytes = attrs.field(default=b"", metadata=bounded(max_len=MAX_AUTHORITY_BYTES))


# --- storage audits: proofs of possession (gridnode.audit, logic.audit_proof) -------------

#: The chunk a proof reveals: BLAKE3's 1 KiB chunk.
AUDIT_CHUNK_BYTES: Final = 1024
#: Chunk indices run below this: a packet is at most ``MAX_PACKET_BYTES``.
MAX_AUDIT_INDEX: Final = MAX_PACKET_BYTES // AUDIT_CHUNK_BYTES - 1
#: Sibling chaining values (32 bytes each) on a path: a tree of 8,192 chunks is 13 deep.
MAX_AUDIT_PATH: Final = 24


@message("audit_packet")
@attrs.frozen(kw_only=True)
class AuditPacket(Message):
    """A storage audit: prove that you hold ``packet_id`` by answering with its chunk
    ``index`` and that chunk's BLAKE3 path.  The auditor draws the index afresh for each
    challenge, so no answer can be kept in advance without the packet's bytes."""

    SINCE_VERSION: ClassVar[int] = 3

    request_id: int = _request_id()
    packet_id: bytes = _id32()
    index: int = attrs.field(metadata=bounded(min_value=0, max_value=MAX_AUDIT_INDEX))


@message("packet_audited")
@attrs.frozen(kw_only=True)
class PacketAudited(Message):
    """The proof: the chunk (at most 1 KiB) and the sibling chaining values from it up to
    the root, nearest first, concatenated (32 bytes each)."""

    SINCE_VERSION: ClassVar[int] = 3

    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()
    chunk: bytes = attrs.field(metadata=bounded(max_len=AUDIT_CHUNK_BYTES))
    path: bytes = attrs.field(metadata=bounded(max_len=32 * MAX_AUDIT_PATH))


# --- leases: packets kept while someone renews them (gridnode.leases, storage.holdings) ----

#: Leases one ``RenewLeases`` names: 4,096 of about 70 bytes, under 300 KB a frame.
MAX_LEASES_PER_MESSAGE: Final = 4096
#: The longest lease a renewal asks for: two years.
MAX_LEASE_S: Final = 2 * 365 * 86_400


@record
@attrs.frozen(kw_only=True)
class LeaseRef:
    """One lease: the packet and the owner tag it was stored under."""

    packet_id: bytes = _id32()
    owner_tag: bytes = _id32()


@message("renew_leases")
@attrs.frozen(kw_only=True)
class RenewLeases(Message):
    """Keep each named (packet, owner tag) for ``duration_s`` more from now (the holder
    grants at most its own longest lease).  A renewal only extends a lease the holder
    has: it never creates one, so knowing a packet's id and tag keeps it alive at most as
    long as its owner's delete secret has not released it."""

    SINCE_VERSION: ClassVar[int] = 4

    request_id: int = _request_id()
    leases: tuple[LeaseRef, ...] = attrs.field(
        metadata=bounded(min_len=1, max_len=MAX_LEASES_PER_MESSAGE)
    )
    duration_s: int = attrs.field(metadata=bounded(min_value=1, max_value=MAX_LEASE_S))


@message("leases_renewed")
@attrs.frozen(kw_only=True)
class LeasesRenewed(Message):
    """Per lease named, in order: when it ends now (unix seconds), or 0 where the holder
    has no such lease (the packet was released, lost, or its lease ran out)."""

    SINCE_VERSION: ClassVar[int] = 4

    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()
    expires: tuple[int, ...] = attrs.field(metadata=bounded(max_len=MAX_LEASES_PER_MESSAGE))


# --- dedup groups: one copy for two sources (gridnode.dedup_group) ------------------------


@message("adopt_packets")
@attrs.frozen(kw_only=True)
class AdoptPackets(Message):
    """Keep these packets, which you may hold already, under my owner tags too: a source
    of a dedup group asks before uploading a shared chunk's packets.  The holder adds a
    tag only for a packet it holds, whose bytes it has just verified against the id and
    the size named here, and charges the sender as a store would; every other part is
    answered "not_held" and the sender uploads it."""

    SINCE_VERSION: ClassVar[int] = 4

    request_id: int = _request_id()
    parts: tuple[PacketPart, ...] = attrs.field(
        metadata=bounded(min_len=1, max_len=MAX_PACKETS_PER_BATCH)
    )


@message("packets_adopted")
@attrs.frozen(kw_only=True)
class PacketsAdopted(Message):
    """Per part, in order: a receipt over (packet id, size) where the tag was added, or
    an error code ("not_held", "over_quota", ...) where it was not."""

    SINCE_VERSION: ClassVar[int] = 4

    RESPONSE: ClassVar[bool] = True
    request_id: int = _request_id()
    results: tuple[PartStored, ...] = attrs.field(metadata=bounded(max_len=MAX_PACKETS_PER_BATCH))
