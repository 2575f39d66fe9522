"""The C-speed websocket masker must be byte-identical to wsproto's own."""

from __future__ import annotations

import itertools
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from gridnode.transport.masking import ORIGINAL_MASKER, FastXorMasker, install


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=4, max_size=4),
    st.binary(max_size=5000),
    st.lists(st.integers(min_value=0, max_value=5000), max_size=6),
)
def test_same_bytes_as_wsproto_across_partial_payloads(
    key: bytes, data: bytes, cuts: list[int]
) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    ours, theirs = FastXorMasker(key), ORIGINAL_MASKER(key)
    for start, stop in itertools.pairwise(points):
        piece = data[start:stop]
        assert ours.process(piece) == theirs.process(bytearray(piece))


def test_large_payload_round_trips() -> None:
    key, data = os.urandom(4), os.urandom(3 * 1024 * 1024 + 3)
    masked = FastXorMasker(key).process(data)
    assert masked != data
    assert bytes(FastXorMasker(key).process(masked)) == data


def test_install_replaces_wsproto_masker() -> None:
    import wsproto.frame_protocol as fp

    install()
    assert fp.XorMaskerSimple is FastXorMasker
