"""One chunk, and a data assembly record, through the pipeline: encode, place, upload;
fetch and decode back.  Shared by backup, repair, restore and recovery, which is why it
is not part of any of them (each of those imports it; it imports none of them).

Also the sealing of small values (the recovery root) with the node's record key, and
the format of the data assembly record file.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import msgpack
import trio
import zstandard
from nacl.secret import SecretBox

from .actors.assembler import DecodeChunk
from .actors.retriever import FetchChunk
from .actors.uploader import ChunkUploaded, UploadChunk, UploadFailed
from .errors import GridError
from .job_services import Services
from .logic.chunking import iter_file_chunks
from .logic.packing import EncodedChunk, ErasureParams, chunk_id_for, encode_chunk
from .logic.placement.rules import PlacementError, PlacementRules
from .storage.records import ChunkRecord, EntryRecord, PacketRecord, policy_key

__all__ = [
    "RECORD_VERSION",
    "BackupFailed",
    "encode_in_thread",
    "load_blob",
    "policy_of",
    "read_record",
    "seal",
    "secret_for",
    "store_blob",
    "store_chunk",
    "unseal",
    "upload_encoded",
    "write_record",
]


class BackupFailed(GridError):
    pass


# --- storing and loading blobs (records) through the same pipeline ---------------------------


@functools.lru_cache(maxsize=64)
def policy_of(k: int, n: int, rules: PlacementRules) -> str:
    """``policy_key`` of (k, n, rules), computed once per policy rather than per chunk (it
    encodes the rules as JSON); a backup or repair uses one or a few policies."""
    return policy_key(k, n, rules.to_wire())


def secret_for(services: Services, domain: str) -> bytes:
    """Data chunks are keyed by the dedup secret; records by the node's private record key."""
    identity = services.identity
    return identity.record_key if domain == "record" else identity.dedup_secret


async def encode_in_thread(
    services: Services,
    data: bytes,
    *,
    chunk_id: bytes | None,
    params: ErasureParams,
    domain: str = "data",
) -> EncodedChunk:
    """Compress, encrypt and erasure-code one chunk in a worker thread; hash it too unless
    ``chunk_id`` is given (the reader hashed these immutable bytes to deduplicate them:
    the chunk id is computed once)."""
    secret = secret_for(services, domain)
    encoded: EncodedChunk = await trio.to_thread.run_sync(
        functools.partial(
            encode_chunk, data, dedup_secret=secret, params=params, chunk_id=chunk_id
        ),
        limiter=services.cpu_limiter,
    )
    return encoded


async def store_chunk(
    services: Services,
    data: bytes,
    *,
    chunk_id: bytes | None,
    params: ErasureParams,
    rules: PlacementRules,
    domain: str = "data",
) -> tuple[ChunkRecord, ChunkUploaded]:
    """Encode, place and upload one chunk; returns its record (not yet in the catalog)."""
    encoded = await encode_in_thread(
        services, data, chunk_id=chunk_id, params=params, domain=domain
    )
    del data
    return await upload_encoded(services, encoded, params=params, rules=rules, domain=domain)


async def upload_encoded(
    services: Services,
    encoded: EncodedChunk,
    *,
    params: ErasureParams,
    rules: PlacementRules,
    domain: str = "data",
) -> tuple[ChunkRecord, ChunkUploaded]:
    """Upload one encoded chunk's packets; the uploader places them by the sequence."""
    try:
        uploaded: ChunkUploaded = await services.ask(
            services.uploader,
            UploadChunk(
                encoded.chunk_id,
                encoded.packets,
                encoded.packet_ids,
                (),  # the uploader asks the sequencer
                rules,
                encoded.packet_size,
                policy_of(params.k, params.n, rules),
                # A dedup group's data chunk (records stay private: record key, own placement).
                shared=domain == "data" and services.identity.group is not None,
            ),
        )
    except PlacementError as exc:
        hint = ""
        if exc.rule == "members":  # a grid smaller than the code (the default 10/30 needs 31)
            hint = (
                f"; redundancy {params} needs {params.n} other members: back up with a "
                f"smaller --redundancy K/N (or set the config key 'redundancy')"
            )
        raise BackupFailed(f"cannot place packets: {exc}{hint}") from None
    except UploadFailed as exc:
        raise BackupFailed(str(exc)) from None
    record = ChunkRecord(
        chunk_id=encoded.chunk_id,
        plain_size=encoded.plain_size,
        cipher_size=encoded.cipher_size,
        compressed=encoded.compressed,
        k=params.k,
        n=params.n,
        packets=tuple(
            PacketRecord(p.share, p.packet_id, p.target, p.receipt)
            for p in sorted(uploaded.placed, key=lambda p: p.share)
        ),
        rules=rules.to_wire(),
        domain=domain,
    )
    return record, uploaded


def seal(key: bytes, value: Any) -> bytes:
    """Seal a small value (the recovery root) with a random nonce."""
    packed = msgpack.packb(value, use_bin_type=True)
    return bytes(SecretBox(key).encrypt(zstandard.ZstdCompressor(level=6).compress(packed)))


def unseal(key: bytes, sealed: bytes, *, max_bytes: int = 1 << 31) -> Any:
    packed = zstandard.ZstdDecompressor().decompress(
        SecretBox(key).decrypt(sealed), max_output_size=max_bytes
    )
    return msgpack.unpackb(packed, raw=False, strict_map_key=False)


async def store_blob(
    services: Services, path: Path, *, params: ErasureParams, rules: PlacementRules
) -> tuple[list[ChunkRecord], int]:
    """Store a data assembly record (a file) on the grid, sealed with the node's record key.

    The file is cut by content (FastCDC) and each piece goes through the normal chunk
    pipeline keyed by the record key, which makes the encryption convergent *within this
    node only*: an unchanged tree yields the same pieces, already stored, so a re-backup
    of an unchanged tree uploads nothing, and a small change re-uploads only the pieces
    around it.  Returns the pieces' records and the number of packets uploaded.
    """
    secret = services.identity.record_key
    records: list[ChunkRecord] = []
    uploaded = 0
    pieces = iter_file_chunks(path)
    empty = True
    while True:
        piece = await trio.to_thread.run_sync(next, pieces, None, limiter=services.disk_limiter)
        if piece is None:
            if not empty:
                break
            piece = b""  # an empty record is still one (empty) piece
        empty = False
        chunk_id = chunk_id_for(piece, secret)
        known: ChunkRecord | None = await services.db(
            services.catalog.chunk, chunk_id, policy_of(params.k, params.n, rules)
        )
        if known is not None:
            records.append(known)
            continue
        record, _ = await store_chunk(
            services, piece, chunk_id=chunk_id, params=params, rules=rules, domain="record"
        )
        uploaded += len(record.packets)
        records.append(record)
    return records, uploaded


async def load_blob(services: Services, records: Sequence[ChunkRecord], path: Path) -> None:
    """Fetch a record's pieces, in order, into ``path`` (one piece in memory at a time)."""
    with open(path, "wb") as fh:  # noqa: ASYNC230 - small sequential writes of fetched pieces
        for record in records:
            fetched = await services.ask(services.retriever, FetchChunk(record))
            piece = await services.ask(services.assembler, DecodeChunk(record, fetched.shares))
            await trio.to_thread.run_sync(fh.write, piece, limiter=services.disk_limiter)


RECORD_VERSION: Final = 3


#: An entry item's start: a two-field array and its tag (the entry's wire form follows).
_ENTRY_ITEM_HEAD: Final = bytes(msgpack.packb(["e", None]))[:-1]


def write_record(
    path: Path, entries: Iterator[EntryRecord | bytes], chunks: Iterator[ChunkRecord]
) -> None:
    """The data assembly record: the tree, the chunk list and the sequence of every chunk.

    A msgpack *stream* (a header, then one item per entry and per chunk), written to a
    file and read back item by item: memory stays flat whatever the number of files and
    chunks.  Deterministic for the same tree (sorted entries and chunks, no timestamps
    of its own: the snapshot's header lives in the recovery root), so unchanged trees
    deduplicate.  An entry may come as its wire form packed already
    (``Catalog.entries_packed``): the same bytes, made without an ``EntryRecord``.
    """
    packer = msgpack.Packer(use_bin_type=True)
    with open(path, "wb") as fh:
        fh.write(packer.pack({"v": RECORD_VERSION}))
        for entry in entries:
            if isinstance(entry, bytes):
                fh.write(_ENTRY_ITEM_HEAD + entry)
            else:
                fh.write(packer.pack(["e", entry.to_wire()]))
        for chunk in chunks:
            fh.write(packer.pack(["c", chunk.to_wire()]))


def read_record(path: Path) -> Iterator[EntryRecord | ChunkRecord]:
    """Items of a record file, one at a time.

    Reads the version-1 layout (one map holding everything) too, so snapshots taken
    before the stream format still restore after an upgrade.  The record was sealed by
    this node's own key, so a bad item means a bug or a format from the future; either
    way the answer is a clear error, never a half-imported catalog (the import runs in
    one transaction).
    """
    with open(path, "rb") as fh:
        unpacker = msgpack.Unpacker(fh, raw=False, max_buffer_size=64 * 1024 * 1024)
        try:
            header = next(unpacker, None)
            if isinstance(header, dict) and header.get("v") == 1:
                yield from (EntryRecord.from_wire(e) for e in header["entries"])
                yield from (ChunkRecord.from_wire(c) for c in header["chunks"])
                return
            if not isinstance(header, dict) or header.get("v") not in (2, RECORD_VERSION):
                raise BackupFailed(f"unknown data assembly record format: {str(header)[:80]}")
            for item in unpacker:
                match item:
                    case ["e", raw]:
                        yield EntryRecord.from_wire(raw)
                    case ["c", raw]:
                        yield ChunkRecord.from_wire(raw)
                    case _:
                        raise BackupFailed(f"bad item in a data assembly record: {str(item)[:80]}")
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            raise BackupFailed(f"damaged data assembly record: {exc}") from exc
