"""The map a capability carries, in parts: so a 100 GB backup (some 2.5 million packets
at 10-of-30) can be delegated, renewed and handed on without any side holding it whole.

- **Which part a chunk is in** follows from its handle alone: the handle's first
  ``FINE_BITS`` bits pick one of 1,024 fine buckets, and part ``j`` of ``P`` (a power of
  two) holds the buckets ``[j * 1024 / P, (j + 1) * 1024 / P)``.  Handles are keyed
  hashes, so parts come out even, and a backup that changes a few chunks changes only
  the parts they fall in: a renewal sends only the parts a delegate lacks.
- **A part's body** is msgpack, chunks sorted by handle, holders and rules written once
  per part and referred to by index (a holder id is 32 bytes; a part names a few
  hundred holders for tens of thousands of packets).  Its digest (BLAKE3) is in the
  owner's signed grant, so a part is the owner's whoever delivers it.
- **The owner builds parts** in one streaming pass over its catalog, spilling the
  buckets to a scratch directory once they pass ``SPILL_BYTES``: its memory stays
  bounded whatever the size of the catalog.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import blake3
import msgpack
from nacl.exceptions import CryptoError
from nacl.public import SealedBox
from nacl.signing import SigningKey, VerifyKey

from protocol._messages import MAX_CAPABILITY_PART_BYTES, MAX_CAPABILITY_PARTS

from .records import CapabilityRefused, HeldChunk

#: Fine buckets a handle falls in (its first 10 bits); parts are runs of them.
FINE_BITS: Final = 10
FINE_BUCKETS: Final = 1 << FINE_BITS
#: Packets aimed at per part: some 70 bytes each, so a part stays near 2.8 MB, well
#: under ``MAX_CAPABILITY_PART_BYTES`` when buckets come out uneven.
PART_PACKETS: Final = 40_000
#: Bucket bytes the owner keeps in memory before writing them to its scratch directory.
SPILL_BYTES: Final = 32 * 1024 * 1024
#: Chunks one part may hold (a bound on what a delegate decodes at once).
MAX_PART_CHUNKS: Final = 100_000


@attrs.frozen
class PartRef:
    """What the signed grant says of one part: its digest and size."""

    digest: bytes
    chunks: int
    packets: int

    def to_wire(self) -> list[Any]:
        return [self.digest, self.chunks, self.packets]

    @classmethod
    def from_wire(cls, raw: Any) -> PartRef:
        digest, chunks, packets = raw
        ref = cls(bytes(digest), int(chunks), int(packets))
        if len(ref.digest) != 32 or not 0 <= ref.chunks <= MAX_PART_CHUNKS or ref.packets < 0:
            raise ValueError("bad map part reference")
        return ref


@attrs.frozen
class MapPart:
    """A part the owner built: its reference and its body (in memory or in a file)."""

    ref: PartRef
    size: int
    body: bytes = b""
    path: Path | None = None

    def read(self) -> bytes:
        return self.path.read_bytes() if self.path is not None else self.body


def fine_bucket(handle: bytes) -> int:
    return int.from_bytes(handle[:2], "big") >> (16 - FINE_BITS)


def parts_for(packets: int) -> int:
    """How many parts a map of ``packets`` packets is cut into (a power of two)."""
    parts = 1
    while parts * PART_PACKETS < packets and parts < FINE_BUCKETS:
        parts *= 2
    return min(parts, MAX_CAPABILITY_PARTS)


def part_of(handle: bytes, parts: int) -> int:
    return fine_bucket(handle) * parts // FINE_BUCKETS


def _entry(chunk: HeldChunk) -> bytes:
    """A chunk as the builder spills it: full holder ids, rules as their JSON."""
    packets = sorted(chunk.packets, key=lambda p: p.share)
    return bytes(
        msgpack.packb(
            [
                chunk.handle,
                chunk.k,
                chunk.n,
                chunk.cipher_size,
                json.dumps(chunk.rules, sort_keys=True),
                [[p.packet_id, p.target, p.owner_tag] for p in packets],
            ],
            use_bin_type=True,
        )
    )


def encode_part(entries: Iterable[bytes]) -> tuple[bytes, int, int]:
    """A part's body from spilled chunk entries; returns it with its chunk and packet
    counts.  Sorted by handle, so the same chunks give the same digest."""
    rows = sorted((msgpack.unpackb(e, raw=False) for e in entries), key=lambda r: r[0])
    holders: dict[bytes, int] = {}
    rules: dict[str, int] = {}
    chunks: list[list[Any]] = []
    packets = 0
    for handle, k, n, cipher_size, rule_text, plist in rows:
        rule = rules.setdefault(rule_text, len(rules))
        chunks.append(
            [
                handle,
                k,
                n,
                cipher_size,
                rule,
                [[pid, holders.setdefault(bytes(t), len(holders)), tag] for pid, t, tag in plist],
            ]
        )
        packets += len(plist)
    body = msgpack.packb(
        {"v": 1, "holders": list(holders), "rules": list(rules), "chunks": chunks},
        use_bin_type=True,
    )
    return bytes(body), len(chunks), packets


def decode_part(body: bytes, ref: PartRef) -> list[HeldChunk]:
    """The chunks of a part whose body hashed to ``ref.digest``; raises ValueError."""
    fields = msgpack.unpackb(body, raw=False, max_bin_len=MAX_CAPABILITY_PART_BYTES)
    if not isinstance(fields, dict) or fields.get("v") != 1:
        raise ValueError("unknown map part format")
    holders = [bytes(h) for h in fields["holders"]]
    if any(len(h) != 32 for h in holders):
        raise ValueError("bad holder id in a map part")
    rules = [json.loads(r) for r in fields["rules"]]
    chunks: list[HeldChunk] = []
    for handle, k, n, cipher_size, rule, plist in fields["chunks"]:
        wire = [
            handle,
            k,
            n,
            cipher_size,
            json.dumps(rules[rule], sort_keys=True),
            [[share, pid, holders[h], tag] for share, (pid, h, tag) in enumerate(plist)],
        ]
        chunks.append(HeldChunk.from_wire(wire))
    if len(chunks) != ref.chunks or sum(len(c.packets) for c in chunks) != ref.packets:
        raise ValueError("a map part holds other chunks than its reference says")
    return chunks


def seal_part(body: bytes, holder: bytes) -> bytes:
    return bytes(SealedBox(VerifyKey(holder).to_curve25519_public_key()).encrypt(body))


def open_part(sealed: bytes, key: SigningKey, ref: PartRef) -> bytes:
    """The body of a part sealed to ``key``'s holder, checked against the signed digest."""
    try:
        body = bytes(SealedBox(key.to_curve25519_private_key()).decrypt(sealed))
    except CryptoError:
        raise CapabilityRefused("bad_capability", "a map part sealed to someone else") from None
    if blake3.blake3(body).digest() != ref.digest:
        raise CapabilityRefused("bad_capability", "a map part the owner did not sign")
    return body


class PartBuilder:
    """Cuts a stream of chunks into parts with memory bounded by ``SPILL_BYTES``.

    Chunks go to their fine bucket; past the bound, buckets are appended to files under
    a scratch directory.  ``finish`` groups buckets into parts and writes each part's
    body to ``out_dir`` (named by digest) or keeps it in memory when ``out_dir`` is
    None (small maps, tests)."""

    def __init__(self, out_dir: Path | None = None) -> None:
        self.out_dir = out_dir
        self._buckets: list[list[bytes]] = [[] for _ in range(FINE_BUCKETS)]
        self._held = 0
        self._packets = 0
        self._scratch: Path | None = None

    def __enter__(self) -> PartBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def add(self, chunk: HeldChunk) -> None:
        entry = _entry(chunk)
        self._buckets[fine_bucket(chunk.handle)].append(entry)
        self._held += len(entry)
        self._packets += len(chunk.packets)
        if self._held > SPILL_BYTES:
            self._spill()

    def _spill(self) -> None:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="gridnode-map-"))
        for index, entries in enumerate(self._buckets):
            if entries:
                with open(self._scratch / str(index), "ab") as fh:
                    for entry in entries:
                        fh.write(len(entry).to_bytes(4, "big") + entry)
                entries.clear()
        self._held = 0

    def _bucket(self, index: int) -> Iterator[bytes]:
        if self._scratch is not None and (self._scratch / str(index)).exists():
            data = (self._scratch / str(index)).read_bytes()
            at = 0
            while at < len(data):
                size = int.from_bytes(data[at : at + 4], "big")
                yield data[at + 4 : at + 4 + size]
                at += 4 + size
        yield from self._buckets[index]

    def finish(self) -> list[MapPart]:
        count = parts_for(self._packets)
        per = FINE_BUCKETS // count
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        parts: list[MapPart] = []
        for j in range(count):
            entries = [e for b in range(j * per, (j + 1) * per) for e in self._bucket(b)]
            body, chunks, packets = encode_part(entries)
            ref = PartRef(blake3.blake3(body).digest(), chunks, packets)
            if self.out_dir is None:
                parts.append(MapPart(ref, len(body), body=body))
                continue
            path = self.out_dir / ref.digest.hex()
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(body)
                os.replace(tmp, path)
            parts.append(MapPart(ref, len(body), path=path))
        if self.out_dir is not None:
            keep = {p.ref.digest.hex() for p in parts}
            for stale in self.out_dir.iterdir():
                if stale.name not in keep:
                    stale.unlink(missing_ok=True)
        return parts


def build_parts(chunks: Iterable[HeldChunk], out_dir: Path | None = None) -> list[MapPart]:
    with PartBuilder(out_dir) as builder:
        for chunk in chunks:
            builder.add(chunk)
        return builder.finish()


__all__ = [
    "MapPart",
    "PartBuilder",
    "PartRef",
    "build_parts",
    "decode_part",
    "encode_part",
    "open_part",
    "part_of",
    "seal_part",
]
