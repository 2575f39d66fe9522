"""Test helpers derived from the wire schemas: hypothesis strategies and fixed examples.

Deriving both from ``__wire_schema__`` means a new message type is covered by the
round-trip, fuzz and golden-vector tests the moment it is registered.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
from hypothesis import strategies as st

from protocol import MESSAGE_TYPES, Message
from protocol._schema import DEFAULT_MAX_STR_LEN, FieldSpec, Schema, TypeNode


def _len_bounds(spec: FieldSpec | None, default_max: int) -> tuple[int, int]:
    lo = spec.min_len if spec is not None and spec.min_len is not None else 0
    hi = spec.max_len if spec is not None and spec.max_len is not None else default_max
    return lo, min(hi, max(lo, 64))


def strategy_for(node: TypeNode, spec: FieldSpec | None) -> st.SearchStrategy[Any]:
    kind = node.kind
    if kind == "optional":
        assert node.item is not None
        return st.none() | strategy_for(node.item, spec)
    if kind == "int":
        lo = int(spec.min_value) if spec is not None and spec.min_value is not None else -(2**63)
        hi = int(spec.max_value) if spec is not None and spec.max_value is not None else 2**63 - 1
        return st.integers(min_value=lo, max_value=hi)
    if kind == "float":
        lo_f = spec.min_value if spec is not None and spec.min_value is not None else -1e9
        hi_f = spec.max_value if spec is not None and spec.max_value is not None else 1e9
        return st.floats(min_value=lo_f, max_value=hi_f, allow_nan=False, allow_infinity=False)
    if kind == "bool":
        return st.booleans()
    if kind == "str":
        lo, hi = _len_bounds(spec, DEFAULT_MAX_STR_LEN)
        return st.text(min_size=lo, max_size=hi)
    if kind == "bytes":
        lo, hi = _len_bounds(spec, 1 << 20)
        return st.binary(min_size=lo, max_size=hi)
    if kind == "tuple":
        assert node.item is not None
        lo, hi = _len_bounds(spec, 8)
        return st.lists(strategy_for(node.item, None), min_size=lo, max_size=min(hi, 4)).map(tuple)
    if kind == "record":
        assert node.record is not None
        return record_strategy(node.record)
    raise AssertionError(kind)


def _choices(cls: type, name: str) -> tuple[Any, ...] | None:
    """Options of an attrs ``in_`` validator on the field, if any (possibly inside ``and_``)."""
    validator = getattr(attrs.fields(cls), name).validator
    stack = [validator]
    while stack:
        v = stack.pop()
        if v is None:
            continue
        options = getattr(v, "options", None)
        if options is not None:
            return tuple(options)
        stack.extend(getattr(v, "_validators", ()))
    return None


def _build_or_none(cls: type, **kwargs: Any) -> Any:
    try:
        return cls(**kwargs)
    except (ValueError, TypeError):  # a value the class's own validators refuse
        return None


def record_strategy(cls: type) -> st.SearchStrategy[Any]:
    schema: Schema = cls.__wire_schema__  # type: ignore[attr-defined]
    fields = {}
    for f in schema.fields:
        options = _choices(cls, f.name)
        fields[f.name] = st.sampled_from(options) if options else strategy_for(f.node, f)
    return st.builds(functools.partial(_build_or_none, cls), **fields).filter(
        lambda v: v is not None
    )


def message_strategy() -> st.SearchStrategy[Message]:
    return st.one_of([record_strategy(cls) for cls in MESSAGE_TYPES.values()])


def example_value(node: TypeNode, spec: FieldSpec | None, salt: int) -> Any:
    """A fixed, deterministic value for golden vectors."""
    kind = node.kind
    if kind == "optional":
        assert node.item is not None
        return example_value(node.item, spec, salt)
    if kind == "int":
        lo = spec.min_value if spec is not None and spec.min_value is not None else 0
        return int(max(lo, 1000 + salt))
    if kind == "float":
        return 12.5 + salt
    if kind == "bool":
        return salt % 2 == 1
    if kind == "str":
        lo = spec.min_len if spec is not None and spec.min_len is not None else 0
        text = f"example-{salt}"
        return text + "x" * max(0, lo - len(text))
    if kind == "bytes":
        lo = spec.min_len if spec is not None and spec.min_len is not None else 0
        hi = spec.max_len if spec is not None and spec.max_len is not None else 32
        size = max(lo, hi if hi <= 64 else 16)
        return bytes((salt * 7 + i) % 256 for i in range(size))
    if kind == "tuple":
        assert node.item is not None
        return (example_value(node.item, None, salt + 1), example_value(node.item, None, salt + 2))
    if kind == "record":
        assert node.record is not None
        return example_record(node.record, salt)
    raise AssertionError(kind)


def example_record(cls: type, salt: int = 0) -> Any:
    schema: Schema = cls.__wire_schema__  # type: ignore[attr-defined]
    values = {}
    for i, f in enumerate(schema.fields):
        options = _choices(cls, f.name)
        values[f.name] = options[0] if options else example_value(f.node, f, salt + i)
    return cls(**values)
