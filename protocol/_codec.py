"""msgpack codec: ``encode(msg) -> bytes`` and ``decode(bytes) -> Message``.

An envelope is a msgpack map ``{"v": version, "k": kind, "b": body}`` packed with
``use_bin_type`` so ``bytes`` and ``str`` stay distinct on the wire.  ``decode`` is the
trust boundary: it checks the frame size before unpacking, gives msgpack hard limits so
a lying length prefix cannot allocate, and validates the body against the message's
schema.  Every failure is a ``RemoteProtocolError`` with a code; nothing else escapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs
import msgpack

from ._errors import LocalProtocolError, RemoteProtocolError
from ._messages import MESSAGE_TYPES, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Message
from ._schema import DEFAULT_MAX_LIST_LEN, Schema, decode_record, encode_value

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_OBJECTS",
    "Limits",
    "decode",
    "decode_envelope",
    "decode_versioned",
    "encode",
]

DEFAULT_MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
#: Containers and their items in one frame, all nesting levels together.  msgpack's own
#: limits bound each array's length and the nesting depth but not the total, so a 1.9 MiB
#: frame of nested empty arrays cost 140 MiB and 1.6 s before it was refused.  Counted
#: as each array or map completes (1 + its length), so at most this many objects are
#: ever alive (about 8 MiB of Python objects); the largest legitimate frame, a gossip
#: sync page of 4096 member updates of at most 54 each, stays below it.
DEFAULT_MAX_OBJECTS: Final = 1 << 18


@attrs.frozen
class Limits:
    """Bounds applied to every decoded frame; a node may lower them, never exceed them."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_list_len: int = DEFAULT_MAX_LIST_LEN
    max_objects: int = DEFAULT_MAX_OBJECTS
    #: Called every ``PAUSE_EVERY_OBJECTS`` containers of one frame.  The node passes a
    #: function that releases the GIL for a moment (``time.sleep(0)``): it opens large
    #: frames in a worker thread, and without such pauses its event loop waits the
    #: interpreter's 5 ms switch interval at every wake-up while a hostile frame is
    #: decoded (measured: 71 ms worst ping, 6 ms with pauses).  This module does no I/O
    #: and keeps no clock, so the pause comes from outside.
    pause: Callable[[], object] | None = None


DEFAULT_LIMITS: Final = Limits()


def encode_body(msg: Message, version: int = PROTOCOL_VERSION) -> dict[str, Any]:
    """The body of ``msg`` as protocol ``version`` writes it: fields newer than that
    version are left out, and must hold their default (the older peer has no word for
    anything else)."""
    cls = type(msg)
    if MESSAGE_TYPES.get(getattr(cls, "KIND", "")) is not cls:
        raise LocalProtocolError(f"{cls.__name__} is not a registered message", code="unknown_kind")
    if version < cls.SINCE_VERSION:
        raise LocalProtocolError(
            f"{msg.KIND} is new in protocol {cls.SINCE_VERSION}; this frame is {version}",
            code="unsupported_version",
        )
    schema: Schema = cls.__wire_schema__  # type: ignore[attr-defined]
    body: dict[str, Any] = {}
    for spec in schema.fields:
        value = getattr(msg, spec.name)
        if spec.since > version:
            default = attrs.fields_dict(cls)[spec.name].default  # type: ignore[arg-type]
            if value != default:
                raise LocalProtocolError(
                    f"{msg.KIND}.{spec.name} is new in protocol {spec.since}; "
                    f"a frame of version {version} cannot carry it",
                    code="unsupported_version",
                )
            continue
        body[spec.name] = encode_value(value, spec.node, spec.name, spec)
    return body


def encode(
    msg: Message, *, limits: Limits = DEFAULT_LIMITS, version: int = PROTOCOL_VERSION
) -> bytes:
    """Serialise ``msg`` as protocol ``version`` (the session's negotiated one) writes it;
    our own oversized, ill-typed or too-new messages are a LocalProtocolError."""
    body = encode_body(msg, version)  # first: it refuses an unregistered class clearly
    frame: bytes = msgpack.packb({"v": version, "k": msg.KIND, "b": body}, use_bin_type=True)
    if len(frame) > limits.max_frame_bytes:
        raise LocalProtocolError(
            f"{msg.KIND} frame of {len(frame)} bytes exceeds the limit of {limits.max_frame_bytes}",
            code="too_large",
        )
    return frame


def _unpack(data: bytes | memoryview, limits: Limits) -> Any:
    if len(data) > limits.max_frame_bytes:
        raise RemoteProtocolError(
            f"frame of {len(data)} bytes exceeds the limit of {limits.max_frame_bytes}",
            code="too_large",
        )
    budget = _Budget(limits.max_objects, limits.pause)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=limits.max_frame_bytes,
            max_str_len=limits.max_frame_bytes,
            max_array_len=limits.max_list_len,
            max_map_len=limits.max_list_len,
            max_ext_len=0,
            list_hook=budget.take,
            object_hook=budget.take,
        )
    except _OverBudget:
        raise RemoteProtocolError(
            f"frame holds more than {limits.max_objects} objects", code="too_complex"
        ) from None
    # msgpack raises a zoo of types (ValueError, ExtraData, FormatError, StackError,
    # UnicodeDecodeError, OverflowError...): at this boundary any of them means "malformed".
    except Exception as exc:
        raise RemoteProtocolError(
            f"malformed frame: {type(exc).__name__}: {exc}"[:300], code="malformed"
        ) from None


#: Containers decoded between two releases of the GIL (see ``_Budget.take``).
PAUSE_EVERY_OBJECTS: Final = 2048


class _OverBudget(Exception):
    pass


class _Budget:
    """Counts objects as msgpack completes each container; stops the unpacking early."""

    __slots__ = ("left", "next_pause", "pause")

    def __init__(self, objects: int, pause: Callable[[], object] | None) -> None:
        self.left = objects
        self.pause = pause
        self.next_pause = max(objects - PAUSE_EVERY_OBJECTS, 0) if pause else 0

    def take(self, container: Any) -> Any:
        self.left -= 1 + len(container)
        if self.left < self.next_pause:
            if self.left < 0:
                raise _OverBudget
            assert self.pause is not None
            self.next_pause = max(self.left - PAUSE_EVERY_OBJECTS, 0)
            self.pause()
        return container


def decode_envelope(data: bytes | memoryview, *, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode and validate one frame into a message object."""
    return decode_versioned(data, limits=limits)[1]


def decode_versioned(
    data: bytes | memoryview, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[int, Message]:
    """Decode one frame of any version this node speaks; returns (its version, the
    message).  A message or field newer than the frame's version is refused: the
    session checks that the version is the one it negotiated."""
    raw = _unpack(data, limits)
    if type(raw) is not dict or set(raw) != {"v", "k", "b"}:
        raise RemoteProtocolError("frame is not a {v, k, b} envelope", code="malformed")
    version, kind, body = raw["v"], raw["k"], raw["b"]
    if type(version) is not int:
        raise RemoteProtocolError("envelope version is not an integer", code="malformed")
    if not MIN_PROTOCOL_VERSION <= version <= PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"unsupported protocol version {version} "
            f"(this node speaks {MIN_PROTOCOL_VERSION}-{PROTOCOL_VERSION})",
            code="unsupported_version",
        )
    if type(kind) is not str:
        raise RemoteProtocolError("envelope kind is not a string", code="malformed")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None or version < cls.SINCE_VERSION:
        raise RemoteProtocolError(
            f"unknown message kind {kind[:64]!r} in protocol {version}", code="unknown_kind"
        )
    if type(body) is dict:
        schema: Schema = cls.__wire_schema__  # type: ignore[attr-defined]
        newer = [s.name for s in schema.fields if s.since > version and s.name in body]
        if newer:
            raise RemoteProtocolError(
                f"field {kind}.{newer[0]}: unknown in protocol {version}", code="bad_field"
            )
    msg: Message = decode_record(body, cls, kind, depth=0, max_bytes=limits.max_frame_bytes)
    return version, msg


decode = decode_envelope
