"""Gossip wire messages: codec round trips, exact sizes, signatures and bounds."""

from __future__ import annotations

from typing import Any

import attrs
import hypothesis
import hypothesis.strategies as st
import msgpack
import nacl.signing
import pytest

import protocol
from protocol import (
    MAX_DIGEST_BITS,
    MAX_DIGEST_ENTRIES,
    MAX_DIGEST_RECORDS,
    MAX_PIGGYBACK_UPDATES,
    MAX_RECORDS_PER_MESSAGE,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    GossipDigest,
    GossipDigestRecords,
    GossipDigestReply,
    GossipIndirectAck,
    GossipLeave,
    GossipProbe,
    GossipProbeAck,
    GossipProbeRequest,
    GossipSync,
    GossipSyncReply,
    GossipUpdates,
    LocalProtocolError,
    MemberRecord,
    MemberUpdate,
    Message,
    RemoteProtocolError,
    _gossip,
    decode,
    encode,
    encoded_size,
    entry_hash,
    record_digest,
    record_is_valid,
    record_signing_payload,
    sign,
    sign_record,
)

KEYS = [nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(4)]
NODE_IDS = [bytes(k.verify_key) for k in KEYS]

_text = st.text(max_size=40)
_u63 = st.integers(min_value=0, max_value=2**63 - 1)


@st.composite
def records(draw: st.DrawFn) -> MemberRecord:
    key = draw(st.sampled_from(KEYS))
    located = draw(st.booleans())
    return sign_record(
        key,
        address=draw(_text),
        incarnation=draw(_u63),
        sequence=draw(_u63),
        lat=draw(st.floats(min_value=-90, max_value=90)) if located else None,
        lon=draw(st.floats(min_value=-180, max_value=180)) if located else None,
        city=draw(st.text(max_size=100)),
        allocated_bytes=draw(_u63),
        free_bytes=draw(_u63),
        bandwidth_bps=draw(_u63),
        protocol_version=draw(st.integers(min_value=0, max_value=2**16)),
        labels=draw(st.lists(_text, max_size=5)),
        leaving=draw(st.booleans()),
        certificate=draw(st.binary(max_size=300)),
    )


@st.composite
def updates(draw: st.DrawFn) -> MemberUpdate:
    return MemberUpdate(
        record=draw(records()),
        state=draw(st.sampled_from(protocol.MEMBER_STATES)),
        reporter=draw(st.sampled_from([b"", *NODE_IDS])),
    )


def _updates(max_size: int) -> st.SearchStrategy[tuple[MemberUpdate, ...]]:
    return st.lists(updates(), max_size=max_size).map(tuple)


def messages() -> st.SearchStrategy[Message]:
    node = st.sampled_from(NODE_IDS)
    return st.one_of(
        st.builds(GossipProbe, probe_id=_u63, target=node, updates=_updates(4)),
        st.builds(GossipProbeAck, probe_id=_u63, updates=_updates(4)),
        st.builds(
            GossipProbeRequest,
            probe_id=_u63,
            target=node,
            target_address=_text,
            updates=_updates(3),
        ),
        st.builds(
            GossipIndirectAck,
            probe_id=_u63,
            target=node,
            reached=st.booleans(),
            updates=_updates(3),
        ),
        st.builds(GossipUpdates, updates=_updates(6)),
        st.builds(
            GossipSync,
            sync_id=_u63,
            join=st.booleans(),
            page=st.integers(min_value=0, max_value=5),
            pages=st.integers(min_value=1, max_value=6),
            updates=_updates(6),
        ),
        st.builds(
            GossipSyncReply,
            sync_id=_u63,
            page=st.integers(min_value=0, max_value=5),
            pages=st.integers(min_value=1, max_value=6),
            updates=_updates(6),
        ),
        st.builds(GossipLeave, record=records()),
        st.integers(min_value=0, max_value=MAX_DIGEST_BITS).flatmap(
            lambda bits: st.builds(
                GossipDigest,
                sync_id=_u63,
                bits=st.just(bits),
                hashes=st.binary(min_size=8 << bits, max_size=8 << bits),
            )
        ),
        st.builds(
            GossipDigestReply,
            sync_id=_u63,
            bits=st.integers(min_value=0, max_value=MAX_DIGEST_BITS),
            buckets=st.sets(st.integers(0, 255), max_size=20).map(lambda b: bytes(sorted(b))),
            entries=st.lists(st.binary(min_size=8, max_size=8), max_size=20).map(b"".join),
        ),
        st.builds(
            GossipDigestRecords,
            sync_id=_u63,
            bits=st.integers(min_value=0, max_value=MAX_DIGEST_BITS),
            buckets=st.sets(st.integers(0, 255), max_size=20).map(lambda b: bytes(sorted(b))),
            updates=_updates(4),
            want=st.lists(st.binary(min_size=8, max_size=8), max_size=20).map(b"".join),
        ),
    )


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(messages())
def test_round_trip_and_exact_size(message: Message) -> None:
    frame = encode(message)
    assert encoded_size(message) == len(frame)
    back = decode(frame)
    assert back == message
    assert type(back) is type(message)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(records())
def test_signature_survives_the_wire(record: MemberRecord) -> None:
    assert record_is_valid(record)
    back = decode(encode(GossipLeave(record=record)))
    assert isinstance(back, GossipLeave)
    assert record_is_valid(back.record)
    assert record_digest(back.record) == record_digest(record)


_TAMPER: dict[str, Any] = {
    "node_id": NODE_IDS[3],
    "address": "evil:1",
    "incarnation": 99,
    "sequence": 99,
    "lat": 1.5,
    "lon": 2.5,
    "city": "Elsewhere",
    "allocated_bytes": 1,
    "free_bytes": 2**50,
    "bandwidth_bps": 1,
    "protocol_version": 77,
    "labels": ("site=x",),
    "leaving": True,
    "certificate": b"cert",
}


@pytest.mark.parametrize("field", sorted(_TAMPER))
def test_any_change_after_signing_breaks_the_signature(field: str) -> None:
    record = sign_record(KEYS[0], address="node0:7700", free_bytes=5)
    assert record_is_valid(record)
    changed = attrs.evolve(record, **{field: _TAMPER[field]})
    assert not record_is_valid(changed)
    assert record_digest(changed) != record_digest(record)


def test_record_signed_by_another_key_is_invalid() -> None:
    record = sign_record(KEYS[0], address="node0:7700")
    stolen = attrs.evolve(record, signature=sign(KEYS[1], record_signing_payload(record)))
    assert not record_is_valid(stolen)


def test_signature_covers_a_context_string() -> None:
    """A signature over the bare field encoding (another protocol's message) is refused."""
    record = sign_record(KEYS[0], address="node0:7700")
    bare = msgpack.packb(
        [getattr(record, f.name) for f in attrs.fields(MemberRecord)][:-1], use_bin_type=True
    )
    assert record_signing_payload(record).endswith(bare)
    assert record_signing_payload(record) != bare
    other = attrs.evolve(record, signature=sign(KEYS[0], bare))
    assert not record_is_valid(other)


def test_integer_coordinates_are_floats_so_they_verify_after_decoding() -> None:
    record = sign_record(KEYS[0], address="a:1", lat=47, lon=8)
    assert isinstance(record.lat, float) and isinstance(record.lon, float)
    back = decode(encode(GossipLeave(record=record)))
    assert isinstance(back, GossipLeave) and record_is_valid(back.record)


def test_sign_record_refuses_a_foreign_node_id_or_a_given_signature() -> None:
    with pytest.raises(ValueError, match="public half"):
        sign_record(KEYS[0], node_id=NODE_IDS[1], address="a:1")
    with pytest.raises(ValueError, match="signature"):
        sign_record(KEYS[0], address="a:1", signature=bytes(64))
    assert sign_record(KEYS[0], node_id=NODE_IDS[0], address="a:1").node_id == NODE_IDS[0]


def test_kinds_are_registered_with_the_gossip_prefix() -> None:
    kinds = {
        cls.KIND
        for cls in (
            GossipProbe,
            GossipProbeAck,
            GossipProbeRequest,
            GossipIndirectAck,
            GossipUpdates,
            GossipSync,
            GossipSyncReply,
            GossipLeave,
        )
    }
    assert len(kinds) == 8
    assert all(kind.startswith("gossip_") and MESSAGE_TYPES[kind] for kind in kinds)


def test_public_names_are_re_exported() -> None:
    for name in _gossip.__all__:
        assert getattr(protocol, name) is getattr(_gossip, name)


# --- the decoder is the trust boundary ----------------------------------------------------


def _frame(kind: str, body: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb({"v": PROTOCOL_VERSION, "k": kind, "b": body}, use_bin_type=True)
    return packed


def _raw_body(message: Message) -> dict[str, Any]:
    raw: dict[str, Any] = msgpack.unpackb(encode(message), raw=False)["b"]
    return raw


def _update() -> MemberUpdate:
    return MemberUpdate(record=sign_record(KEYS[0], address="a:1"), state="alive")


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda b: b["updates"][0].__setitem__("state", "zombie"), "state"),
        (lambda b: b["updates"][0].__setitem__("reporter", b"short"), "reporter"),
        (lambda b: b["updates"][0]["record"].__setitem__("lat", 91.0), "lat"),
        (lambda b: b["updates"][0]["record"].__setitem__("lon", -180.5), "lon"),
        (lambda b: b["updates"][0]["record"].__setitem__("signature", b"x" * 63), "signature"),
        (lambda b: b["updates"][0]["record"].__setitem__("node_id", b"x" * 31), "node_id"),
        (lambda b: b["updates"][0]["record"].__setitem__("incarnation", -1), "incarnation"),
        (lambda b: b["updates"][0]["record"].__setitem__("labels", ["l"] * 33), "labels"),
        (lambda b: b["updates"][0]["record"].__setitem__("extra", 1), "unknown"),
        (lambda b: b.__setitem__("target", b"t" * 33), "target"),
        (lambda b: b.__setitem__("updates", [b["updates"][0]] * 65), "updates"),
    ],
)
def test_decoder_refuses_out_of_bounds_fields(mutate: Any, why: str) -> None:
    body = _raw_body(GossipProbe(probe_id=1, target=NODE_IDS[0], updates=(_update(),)))
    mutate(body)
    with pytest.raises(RemoteProtocolError, match=why):
        decode(_frame("gossip_probe", body))


def test_sync_pages_are_bounded() -> None:
    update = _update()
    at_limit = GossipSync(sync_id=1, updates=(update,) * MAX_RECORDS_PER_MESSAGE)
    assert decode(encode(at_limit)) == at_limit
    body = _raw_body(GossipSync(sync_id=1, updates=(update,)))
    body["updates"] = body["updates"] * (MAX_RECORDS_PER_MESSAGE + 1)
    with pytest.raises(RemoteProtocolError, match="updates"):
        decode(_frame("gossip_sync", body))


def test_encoder_refuses_oversized_piggyback() -> None:
    message = GossipUpdates(updates=(_update(),) * (MAX_PIGGYBACK_UPDATES + 1))
    with pytest.raises(LocalProtocolError):
        encode(message)


def test_constructors_refuse_bad_states_and_reporters() -> None:
    record = sign_record(KEYS[0], address="a:1")
    with pytest.raises(ValueError):
        MemberUpdate(record=record, state="zombie")
    with pytest.raises(ValueError):
        MemberUpdate(record=record, state="dead", reporter=b"abc")


def test_digest_lists_are_bounded_on_the_wire() -> None:
    """Rule 4a: a peer can make us hold at most 256 bucket hashes, 4,096 entry hashes
    and 1,024 records from one digest message."""
    body = _raw_body(GossipDigest(sync_id=1, bits=0, hashes=bytes(8)))
    body["hashes"] = bytes(8 << (MAX_DIGEST_BITS + 1))
    with pytest.raises(RemoteProtocolError, match="hashes"):
        decode(_frame("gossip_digest", body))
    body = _raw_body(GossipDigest(sync_id=1, bits=0, hashes=bytes(8)))
    body["bits"] = MAX_DIGEST_BITS + 1
    with pytest.raises(RemoteProtocolError, match="bits"):
        decode(_frame("gossip_digest", body))
    body = _raw_body(GossipDigestReply(sync_id=1))
    body["entries"] = bytes(8 * (MAX_DIGEST_ENTRIES + 1))
    with pytest.raises(RemoteProtocolError, match="entries"):
        decode(_frame("gossip_digest_reply", body))
    body = _raw_body(GossipDigestReply(sync_id=1))
    body["entries"] = bytes(12)  # not whole hashes
    with pytest.raises(RemoteProtocolError, match="entries"):
        decode(_frame("gossip_digest_reply", body))
    body = _raw_body(GossipDigestRecords(sync_id=1))
    body["buckets"] = bytes([3, 3])
    with pytest.raises(RemoteProtocolError, match="buckets"):
        decode(_frame("gossip_digest_records", body))
    body = _raw_body(GossipDigestRecords(sync_id=1, updates=(_update(),)))
    body["updates"] = body["updates"] * (MAX_DIGEST_RECORDS + 1)
    with pytest.raises(RemoteProtocolError, match="updates"):
        decode(_frame("gossip_digest_records", body))


def test_entry_hash_covers_every_part_of_an_entry() -> None:
    base = entry_hash(NODE_IDS[0], 1, 2, "alive")
    assert base == entry_hash(NODE_IDS[0], 1, 2, "alive")
    others = {
        entry_hash(NODE_IDS[1], 1, 2, "alive"),
        entry_hash(NODE_IDS[0], 2, 2, "alive"),
        entry_hash(NODE_IDS[0], 1, 3, "alive"),
        entry_hash(NODE_IDS[0], 1, 2, "suspect"),
        entry_hash(NODE_IDS[0], 1, 2, "dead"),
    }
    assert base not in others and len(others) == 5
