"""Field schemas: the one place where wire values are checked before an object exists.

attrs validators are not a parsing framework (attrs docs, "init"), so every
message class gets a compiled schema at registration time, derived from its
type hints plus optional per-field bounds in ``metadata``.  Decoding walks the
schema over the raw msgpack value and either builds the object or raises a
``RemoteProtocolError`` naming the field: never a half-built object, never a
``TypeError`` from deep inside attrs.

Supported field types are deliberately few: ``int``, ``float``, ``bool``,
``str``, ``bytes``, ``tuple[T, ...]``, ``T | None`` and nested record classes.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Final

import attrs

from ._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_LIST_LEN",
    "DEFAULT_MAX_STR_LEN",
    "FieldSpec",
    "Schema",
    "bounded",
    "compile_schema",
]

DEFAULT_MAX_STR_LEN: Final = 4096
DEFAULT_MAX_LIST_LEN: Final = 65536
#: A message may nest records inside lists inside records; deeper is an attack.
MAX_DEPTH: Final = 8

_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1


def bounded(
    *,
    min_len: int | None = None,
    max_len: int | None = None,
    exact_len: int | None = None,
    min_value: float | None = None,
    max_value: float | None = None,
) -> dict[str, Any]:
    """Metadata for ``attrs.field(metadata=...)``: bounds the codec enforces."""
    meta: dict[str, Any] = {}
    if exact_len is not None:
        min_len = max_len = exact_len
    if min_len is not None:
        meta["min_len"] = min_len
    if max_len is not None:
        meta["max_len"] = max_len
    if min_value is not None:
        meta["min_value"] = min_value
    if max_value is not None:
        meta["max_value"] = max_value
    return meta


@attrs.frozen
class TypeNode:
    """One node of a compiled type: ``kind`` is int/float/bool/str/bytes/tuple/optional/record."""

    kind: str
    item: TypeNode | None = None
    record: type | None = None


@attrs.frozen
class FieldSpec:
    name: str
    node: TypeNode
    required: bool
    min_len: int | None
    max_len: int | None
    min_value: float | None
    max_value: float | None
    #: The protocol version that introduced the field (0: every version); see
    #: ``_messages.since``.
    since: int = 0


@attrs.frozen
class Schema:
    cls: type
    fields: tuple[FieldSpec, ...]
    names: frozenset[str]


def _compile_type(tp: Any, owner: type, name: str) -> TypeNode:
    origin = typing.get_origin(tp)
    if tp is int:
        return TypeNode("int")
    if tp is float:
        return TypeNode("float")
    if tp is bool:
        return TypeNode("bool")
    if tp is str:
        return TypeNode("str")
    if tp is bytes:
        return TypeNode("bytes")
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise LocalProtocolError(f"{owner.__name__}.{name}: only tuple[T, ...] is supported")
        return TypeNode("tuple", item=_compile_type(args[0], owner, name))
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) != 1 or len(typing.get_args(tp)) != 2:
            raise LocalProtocolError(f"{owner.__name__}.{name}: only `T | None` is supported")
        return TypeNode("optional", item=_compile_type(members[0], owner, name))
    if isinstance(tp, type) and hasattr(tp, "__wire_schema__"):
        return TypeNode("record", record=tp)
    raise LocalProtocolError(f"{owner.__name__}.{name}: unsupported wire type {tp!r}")


def compile_schema(cls: type, namespace: dict[str, Any] | None = None) -> Schema:
    """Build the schema of an attrs class from its resolved type hints."""
    hints = typing.get_type_hints(cls, localns=namespace)
    specs: list[FieldSpec] = []
    for f in attrs.fields(cls):
        meta = f.metadata
        specs.append(
            FieldSpec(
                name=f.name,
                node=_compile_type(hints[f.name], cls, f.name),
                required=f.default is attrs.NOTHING,
                min_len=meta.get("min_len"),
                max_len=meta.get("max_len"),
                min_value=meta.get("min_value"),
                max_value=meta.get("max_value"),
                since=meta.get("since", 0),
            )
        )
    return Schema(cls=cls, fields=tuple(specs), names=frozenset(s.name for s in specs))


# --- decoding: raw msgpack value -> checked python value -------------------------------


def _bad(where: str, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"field {where}: {why}", code="bad_field")


def _check_len(where: str, n: int, spec: FieldSpec | None, default_max: int) -> None:
    lo = spec.min_len if spec is not None else None
    hi = spec.max_len if spec is not None and spec.max_len is not None else default_max
    if n > hi:
        raise _bad(where, f"length {n} exceeds the limit of {hi}")
    if lo is not None and n < lo:
        raise _bad(where, f"length {n} is below the minimum of {lo}")


def _check_range(where: str, value: float, spec: FieldSpec | None) -> None:
    if spec is None:
        return
    if spec.min_value is not None and value < spec.min_value:
        raise _bad(where, f"value {value} is below the minimum {spec.min_value}")
    if spec.max_value is not None and value > spec.max_value:
        raise _bad(where, f"value {value} exceeds the maximum {spec.max_value}")


def decode_value(
    raw: Any,
    node: TypeNode,
    where: str,
    spec: FieldSpec | None,
    depth: int,
    max_bytes: int,
) -> Any:
    """Check ``raw`` against ``node``; bounds in ``spec`` apply to the outermost level."""
    if depth > MAX_DEPTH:
        raise _bad(where, f"nested deeper than {MAX_DEPTH} levels")
    kind = node.kind
    if kind == "optional":
        if raw is None:
            return None
        assert node.item is not None
        return decode_value(raw, node.item, where, spec, depth, max_bytes)
    if kind == "int":
        # bool is a subclass of int in Python; on the wire they are different types.
        if type(raw) is not int:
            raise _bad(where, f"expected int, got {type(raw).__name__}")
        if not _INT64_MIN <= raw <= _UINT64_MAX:
            raise _bad(where, "integer out of 64-bit range")
        _check_range(where, raw, spec)
        return raw
    if kind == "float":
        if type(raw) not in (float, int):
            raise _bad(where, f"expected float, got {type(raw).__name__}")
        value = float(raw)
        if not math.isfinite(value):
            raise _bad(where, "float must be finite")
        _check_range(where, value, spec)
        return value
    if kind == "bool":
        if type(raw) is not bool:
            raise _bad(where, f"expected bool, got {type(raw).__name__}")
        return raw
    if kind == "str":
        if type(raw) is not str:
            raise _bad(where, f"expected str, got {type(raw).__name__}")
        _check_len(where, len(raw), spec, DEFAULT_MAX_STR_LEN)
        return raw
    if kind == "bytes":
        if type(raw) is not bytes:
            raise _bad(where, f"expected bytes, got {type(raw).__name__}")
        _check_len(where, len(raw), spec, max_bytes)
        return raw
    if kind == "tuple":
        if type(raw) is not list:
            raise _bad(where, f"expected list, got {type(raw).__name__}")
        _check_len(where, len(raw), spec, DEFAULT_MAX_LIST_LEN)
        assert node.item is not None
        item = node.item
        return tuple(
            decode_value(v, item, f"{where}[{i}]", None, depth + 1, max_bytes)
            for i, v in enumerate(raw)
        )
    if kind == "record":
        assert node.record is not None
        return decode_record(raw, node.record, where, depth + 1, max_bytes)
    raise AssertionError(kind)  # pragma: no cover - compile_schema rejects other kinds


def decode_record(raw: Any, cls: type, where: str, depth: int, max_bytes: int) -> Any:
    schema: Schema = cls.__wire_schema__  # type: ignore[attr-defined]
    if type(raw) is not dict:
        raise _bad(where, f"expected a map, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in schema.names]
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:3])
        raise _bad(where, f"unknown field(s) {shown}")
    kwargs: dict[str, Any] = {}
    for spec in schema.fields:
        sub = f"{where}.{spec.name}" if where else spec.name
        if spec.name not in raw:
            if spec.required:
                raise _bad(sub, "missing")
            continue
        kwargs[spec.name] = decode_value(raw[spec.name], spec.node, sub, spec, depth, max_bytes)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # an attrs validator, the second line of defence
        raise _bad(where or cls.__name__, str(exc)) from None


# --- encoding: python object -> msgpack-ready value, checked against our own schema -----


def encode_value(value: Any, node: TypeNode, where: str, spec: FieldSpec | None) -> Any:
    """Our own objects must satisfy the same rules we impose on peers (LocalProtocolError)."""
    raw = _to_raw(value, node)
    try:
        decode_value(raw, node, where, spec, depth=0, max_bytes=_UINT64_MAX)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"refusing to send: {exc}", code="bad_field") from None
    return raw


def _to_raw(value: Any, node: TypeNode) -> Any:
    kind = node.kind
    if kind == "optional":
        assert node.item is not None
        return None if value is None else _to_raw(value, node.item)
    if kind == "tuple":
        assert node.item is not None
        item = node.item
        if not isinstance(value, tuple | list):
            return value  # decode_value reports the type error with the field name
        return [_to_raw(v, item) for v in value]
    if kind == "record":
        return record_to_raw(value)
    if kind == "bytes" and isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


def record_to_raw(obj: Any) -> dict[str, Any]:
    schema: Schema = type(obj).__wire_schema__
    out: dict[str, Any] = {}
    for spec in schema.fields:
        out[spec.name] = _to_raw(getattr(obj, spec.name), spec.node)
    return out
