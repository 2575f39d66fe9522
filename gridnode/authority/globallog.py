"""The global backup log (claims 2, 3, 31): every node's backup log, kept by the authority.

Each node keeps a signed, hash-chained backup log in its catalog (``Catalog.log``): entry
``seq`` hashes the previous entry's hash with its own fields and is signed with the
node's key.  Nodes forward their entries to the authority in order (``ForwardLog``),
periodically and after each job, resuming after the last entry the authority
acknowledged (``LogAccepted``; the position is kept in the catalog's profile as
``log_forwarded``).  The authority checks every entry before it keeps it:

- its hash is recomputed from its fields (a changed field: ``log_tampered``);
- its signature verifies under the *session's* node id (``log_bad_signature``), so no
  node can write into another's chain;
- it is the next one: ``seq`` follows the last entry held for that node
  (``log_gap`` when entries are missing, ``log_reordered`` when they come out of order)
  and ``prev_hash`` is that entry's hash (``log_broken_link``);
- an entry already held is accepted again only byte for byte (a resend after a lost
  answer); a different entry under a held seq is a rewritten history (``log_conflict``).

A refused entry is not stored; the refusal is recorded as a problem (one row per node,
code and seq, at most ``MAX_PROBLEMS_PER_NODE`` per node) and reported to the node as an
``Error``.  ``report`` walks every stored chain again, so an entry changed in the
authority's database afterwards is found too: ``verified`` is true only when every
node's chain checks.

A node recovered from its key (``gridnode recover``) continues its chain: its recovery
root carries its chain head, and the authority's head for it (``authority_head``) wins
when it is later (entries written after the root was last published).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import attrs
import msgpack
import trio

from protocol import (
    MAX_LOG_ENTRIES_PER_MESSAGE,
    MAX_LOG_ENTRY_BYTES,
    ForwardLog,
    LogAccepted,
    Message,
    format_node_id,
    short_node_id,
    verify,
)

from ..errors import GridError, PeerError, RemoteError
from ..log import get_logger
from ..storage.backup_log import LOG_GENESIS, log_entry_hash
from ..storage.catalog import Catalog
from .db import AuthorityDB

__all__ = ["GlobalLog", "LogEntryWire", "LogForwarder", "LogRefused"]

_log = get_logger()

#: Refusals recorded per node: a node that keeps sending bad entries cannot fill the disk.
MAX_PROBLEMS_PER_NODE: Final = 1000
#: Bytes of entries per ``ForwardLog`` (well under a frame).
MAX_FORWARD_BYTES: Final = 1024 * 1024
#: Batches one forwarding pass sends at most (128 entries each); the rest waits a pass.
MAX_BATCHES_PER_PASS: Final = 64
_MAX_EVENT_LEN: Final = 64
_MAX_SNAPSHOT_ID_LEN: Final = 256


class LogRefused(GridError):
    """The authority refused a forwarded entry; ``code`` says why (see the module)."""

    def __init__(self, code: str, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.seq = seq


@attrs.frozen
class LogEntryWire:
    """One backup log entry as it was hashed and signed (the detail as its JSON text)."""

    seq: int
    at: float
    event: str
    snapshot_id: str | None
    detail: str
    prev_hash: bytes
    hash: bytes
    signature: bytes

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> LogEntryWire:
        seq, at, event, sid, detail, prev, digest, signature = row
        return cls(
            int(seq), float(at), str(event), sid, str(detail), bytes(prev), bytes(digest),
            bytes(signature),
        )  # fmt: skip

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb(
            [
                self.seq,
                self.at,
                self.event,
                self.snapshot_id,
                self.detail,
                self.prev_hash,
                self.hash,
                self.signature,
            ],
            use_bin_type=True,
        )
        return packed

    @classmethod
    def decode(cls, raw: bytes) -> LogEntryWire:
        """Parse an encoded entry; ValueError for anything malformed (not a check of its
        hash or signature: see ``GlobalLog.accept``)."""
        if len(raw) > MAX_LOG_ENTRY_BYTES:
            raise ValueError(f"a log entry is at most {MAX_LOG_ENTRY_BYTES} bytes")
        try:
            fields = msgpack.unpackb(raw, raw=False, max_array_len=8, max_map_len=0)
            seq, at, event, sid, detail, prev, digest, signature = fields
        except Exception as exc:
            raise ValueError(f"malformed log entry: {type(exc).__name__}") from None
        if not (
            type(seq) is int
            and 1 <= seq < 1 << 63
            and type(at) is float
            and isinstance(event, str)
            and len(event) <= _MAX_EVENT_LEN
            and (sid is None or (isinstance(sid, str) and len(sid) <= _MAX_SNAPSHOT_ID_LEN))
            and isinstance(detail, str)
            and all(isinstance(v, bytes) for v in (prev, digest))
            and len(prev) == 32
            and len(digest) == 32
            and isinstance(signature, bytes)
            and len(signature) == 64
        ):
            raise ValueError("malformed log entry: a field has the wrong type or size")
        return cls(seq, at, event, sid, detail, prev, digest, signature)

    def content_ok(self) -> bool:
        """The hash covers the fields (and the previous hash) as they are now."""
        return (
            log_entry_hash(
                self.prev_hash, self.seq, self.at, self.event, self.snapshot_id, self.detail
            )
            == self.hash
        )


def _peek_seq(raw: bytes) -> int:
    """An entry's seq, or 0 when it does not parse (``accept`` refuses it on its turn)."""
    try:
        return LogEntryWire.decode(raw).seq
    except ValueError:
        return 0


_ENTRY_COLUMNS: Final = "seq, at, event, snapshot_id, detail, prev_hash, hash, signature"


class GlobalLog:
    """The authority's side: check, keep and report every node's chain.  Synchronous
    (SQLite); the running node calls it through ``trio.to_thread`` (``serve``)."""

    def __init__(self, db: AuthorityDB, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    @staticmethod
    def _head_in(db: Any, node_id: bytes) -> tuple[int, bytes]:
        row = db.execute(
            "SELECT seq, hash FROM global_log WHERE node_id = ? ORDER BY seq DESC LIMIT 1",
            (node_id,),
        ).fetchone()
        return (int(row[0]), bytes(row[1])) if row else (0, LOG_GENESIS)

    def head(self, node_id: bytes) -> tuple[int, bytes]:
        """The last entry held for ``node_id``: (seq, hash), (0, genesis) for none."""
        return self._head_in(self.db._db(), node_id)

    def accept(self, node_id: bytes, entries: Sequence[bytes]) -> tuple[int, bytes]:
        """Check and keep ``entries`` (encoded, in order) of ``node_id``'s chain; returns
        the head held afterwards.

        The valid entries before a bad one are kept; the bad one is recorded as a
        problem, and ``LogRefused`` is raised after the transaction commits."""
        refusal: LogRefused | None = None
        now = self.clock()
        with self.db.transaction() as db:
            head_seq, head_hash = self._head_in(db, node_id)
            previous_seq = 0
            seqs = [_peek_seq(raw) for raw in entries]
            for index, raw in enumerate(entries):
                refusal = self._check_one(
                    db, node_id, raw, head_seq, head_hash, previous_seq, seqs[index + 1 :]
                )
                if refusal is not None:
                    break
                entry = LogEntryWire.decode(raw)
                previous_seq = entry.seq
                if entry.seq <= head_seq:
                    continue  # held already, byte for byte: a resend
                db.execute(
                    f"INSERT INTO global_log(node_id, {_ENTRY_COLUMNS}, received) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        node_id,
                        entry.seq,
                        entry.at,
                        entry.event,
                        entry.snapshot_id,
                        entry.detail,
                        entry.prev_hash,
                        entry.hash,
                        entry.signature,
                        now,
                    ),
                )
                head_seq, head_hash = entry.seq, entry.hash
            if refusal is not None:
                self._record_problem(db, node_id, refusal, now)
        if refusal is not None:
            _log.warning(
                "global_log_refused",
                peer=short_node_id(node_id),
                code=refusal.code,
                seq=refusal.seq,
                error=str(refusal),
            )
            raise refusal
        return head_seq, head_hash

    @staticmethod
    def _check_one(
        db: Any,
        node_id: bytes,
        raw: bytes,
        head_seq: int,
        head_hash: bytes,
        previous_seq: int,
        later: Sequence[int],
    ) -> LogRefused | None:
        """Why this entry may not follow (``head_seq``, ``head_hash``), or None."""
        try:
            entry = LogEntryWire.decode(raw)
        except ValueError as exc:
            return LogRefused("log_malformed", str(exc))
        seq = entry.seq
        if not entry.content_ok():
            return LogRefused("log_tampered", f"entry {seq} does not match its hash", seq)
        if not verify(node_id, entry.hash, entry.signature):
            return LogRefused("log_bad_signature", f"entry {seq} is not signed by its node", seq)
        if previous_seq and seq <= previous_seq:
            return LogRefused("log_reordered", f"entry {seq} comes after entry {previous_seq}", seq)
        if seq <= head_seq:
            held = db.execute(
                "SELECT hash FROM global_log WHERE node_id = ? AND seq = ?", (node_id, seq)
            ).fetchone()
            if held is not None and bytes(held[0]) == entry.hash:
                return None
            return LogRefused(
                "log_conflict", f"entry {seq} differs from the entry {seq} already held", seq
            )
        if seq > head_seq + 1:
            if any(head_seq < s < seq for s in later):
                return LogRefused(
                    "log_reordered", f"entry {seq} comes before entry {head_seq + 1}", seq
                )
            missing = (
                f"entry {head_seq + 1} is"
                if seq == head_seq + 2
                else f"entries {head_seq + 1}-{seq - 1} are"
            )
            return LogRefused("log_gap", f"{missing} missing before entry {seq}", seq)
        if entry.prev_hash != head_hash:
            return LogRefused(
                "log_broken_link", f"entry {seq} does not chain to entry {head_seq}", seq
            )
        return None

    @staticmethod
    def _record_problem(db: Any, node_id: bytes, refusal: LogRefused, now: float) -> None:
        """One row per (node, code, seq): a node retrying the same bad entry every pass
        is one problem, not thousands."""
        seen = db.execute(
            "SELECT 1 FROM global_log_problems WHERE node_id = ? AND code = ? AND seq IS ?",
            (node_id, refusal.code, refusal.seq),
        ).fetchone()
        if seen is not None:
            return
        count = db.execute(
            "SELECT count(*) FROM global_log_problems WHERE node_id = ?", (node_id,)
        ).fetchone()[0]
        if count >= MAX_PROBLEMS_PER_NODE:
            return
        db.execute(
            "INSERT INTO global_log_problems(node_id, seq, code, message, at) "
            "VALUES (?, ?, ?, ?, ?)",
            (node_id, refusal.seq, refusal.code, str(refusal)[:500], now),
        )

    # --- the report ---------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The global backup log: every stored chain walked again (a change made in the
        database after an entry was accepted is found here), the refusals recorded, and
        the entries.  ``verified``: every node's stored chain checks."""
        db = self.db._db()
        entries: list[dict[str, Any]] = []
        problems: list[dict[str, Any]] = []
        nodes: dict[bytes, dict[str, Any]] = {}
        expected: dict[bytes, tuple[int, bytes]] = {}
        rows = db.execute(f"SELECT node_id, {_ENTRY_COLUMNS} FROM global_log ORDER BY node_id, seq")
        for row in rows:
            node_id = bytes(row[0])
            entry = LogEntryWire.from_row(row[1:])
            printable = format_node_id(node_id)
            want_seq, want_prev = expected.get(node_id, (1, LOG_GENESIS))
            found: list[tuple[str, str]] = []
            if entry.seq != want_seq:
                found.append(("log_gap", f"entries {want_seq}-{entry.seq - 1} are missing"))
            elif entry.prev_hash != want_prev:
                found.append(
                    ("log_broken_link", f"entry {entry.seq} does not chain to the one before")
                )
            if not entry.content_ok():
                found.append(("log_tampered", f"entry {entry.seq} was modified (hash mismatch)"))
            elif not verify(node_id, entry.hash, entry.signature):
                found.append(("log_bad_signature", f"entry {entry.seq} has a bad signature"))
            for code, message in found:
                problems.append(
                    {
                        "node_id": printable,
                        "seq": entry.seq,
                        "code": code,
                        "message": message,
                        "kind": "stored",
                    }
                )
            expected[node_id] = (entry.seq + 1, entry.hash)
            info = nodes.setdefault(node_id, {"node_id": printable, "entries": 0, "ok": True})
            info["entries"] += 1
            info["head_seq"] = entry.seq
            info["ok"] = info["ok"] and not found
            entries.append(
                {
                    "node_id": printable,
                    "seq": entry.seq,
                    "event": entry.event,
                    "snapshot_id": entry.snapshot_id,
                    "at": entry.at,
                    "hash": entry.hash.hex(),
                    "verified": not found,
                }
            )
        verified = not problems
        for node_id, seq, code, message, at in db.execute(
            "SELECT node_id, seq, code, message, at FROM global_log_problems ORDER BY id"
        ):
            problems.append(
                {
                    "node_id": format_node_id(bytes(node_id)),
                    "seq": seq,
                    "code": str(code),
                    "message": str(message),
                    "at": float(at),
                    "kind": "refused",
                }
            )
        return {
            "verified": verified,
            "nodes": list(nodes.values()),
            "problems": problems,
            "entries": entries,
        }

    # --- the wire side -----------------------------------------------------------------------

    async def serve(
        self, msg: Message, peer_id: bytes, limiter: trio.CapacityLimiter | None = None
    ) -> Message:
        """Answer a ``ForwardLog`` from the authenticated ``peer_id`` (whose chain it is)."""
        if not isinstance(msg, ForwardLog):
            raise RemoteError("unsupported", f"{msg.KIND} is not for the global log")
        entries = msg.entries
        try:
            seq, digest = await trio.to_thread.run_sync(
                self.accept, peer_id, entries, limiter=limiter
            )
        except LogRefused as exc:
            raise RemoteError(exc.code, str(exc)) from None
        return LogAccepted(request_id=msg.request_id, head_seq=seq, head_hash=digest)


class LogForwarder:
    """The node's side: send this node's log entries to the authority, in order."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        node_id: bytes,
        authority_address: str,
        connect: Callable[[str], Awaitable[Any]],
        local: GlobalLog | None = None,
        interval_s: float = 300.0,
        request_timeout_s: float = 30.0,
    ) -> None:
        self.catalog = catalog
        self.node_id = node_id
        self.authority_address = authority_address
        self.connect = connect
        self.local = local
        self.interval_s = interval_s
        self.request_timeout_s = request_timeout_s
        self.last_error: str | None = None
        self.forwarded = 0
        self._wake = trio.Event()
        self._lock = trio.Lock()

    def wake(self) -> None:
        """Forward now (a job just ended: its entry should reach the authority soon)."""
        self._wake.set()

    async def _send(self, entries: tuple[bytes, ...]) -> tuple[int, bytes]:
        if self.local is not None:
            local = self.local
            try:
                return await trio.to_thread.run_sync(local.accept, self.node_id, entries)
            except LogRefused as exc:
                raise RemoteError(exc.code, str(exc)) from None
        link = await self.connect(self.authority_address)
        answer = await link.request(
            lambda rid: ForwardLog(request_id=rid, entries=entries),
            timeout_s=self.request_timeout_s,
        )
        if not isinstance(answer, LogAccepted):
            raise RemoteError("bad_answer", f"the authority answered {answer.KIND}")
        return answer.head_seq, answer.head_hash

    async def authority_head(self) -> tuple[int, bytes] | None:
        """The last entry of this node's chain the authority holds, or None (none held,
        or the authority cannot be asked now)."""
        try:
            seq, digest = await self._send(())
        except PeerError as exc:
            _log.info("global_log_head_unknown", error=str(exc))
            return None
        return (seq, digest) if seq > 0 and len(digest) == 32 else None

    def _position(self) -> int:
        return int(self.catalog.profile().get("log_forwarded", 0))

    async def forward(self) -> int:
        """Send every entry after the acknowledged position; returns how many the
        authority acknowledged.  Raises ``PeerError`` (``RemoteError`` with the
        authority's code when it refused an entry)."""
        async with self._lock:
            catalog = self.catalog
            position = await trio.to_thread.run_sync(self._position)
            sent = 0
            resynced = False
            for _ in range(MAX_BATCHES_PER_PASS):
                rows = await trio.to_thread.run_sync(
                    catalog.log_rows_after, position, MAX_LOG_ENTRIES_PER_MESSAGE
                )
                batch: list[bytes] = []
                size = 0
                for row in rows:
                    raw = LogEntryWire.from_row(row).encode()
                    if batch and size + len(raw) > MAX_FORWARD_BYTES:
                        break
                    batch.append(raw)
                    size += len(raw)
                if not batch:
                    break
                last_seq = int(rows[len(batch) - 1][0])
                try:
                    await self._send(tuple(batch))
                except RemoteError as exc:
                    if exc.code != "log_gap" or resynced:
                        raise
                    # The authority holds less than we were told it did (its database was
                    # restored from a backup): start again after what it holds, once.
                    resynced = True
                    held = await self.authority_head()
                    held_seq = held[0] if held else 0
                    if held_seq >= position:
                        raise
                    position = held_seq
                    continue
                position = last_seq  # every entry of the batch is held now
                await trio.to_thread.run_sync(catalog.set_profile, {"log_forwarded": position})
                sent += len(batch)
                if len(batch) < MAX_LOG_ENTRIES_PER_MESSAGE and len(rows) == len(batch):
                    break
            self.forwarded += sent
            self.last_error = None
            return sent

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:  # a background task: every pass ends in a wait
            self._wake = trio.Event()
            try:
                sent = await self.forward()
                if sent:
                    _log.info("global_log_forwarded", entries=sent)
            except (PeerError, OSError, sqlite3.Error) as exc:  # a full disk too: next time
                if isinstance(exc, sqlite3.Error):
                    self.catalog.reset_connections()
                self.last_error = str(exc)
                _log.warning("global_log_forward_failed", error=str(exc))
            with trio.move_on_after(self.interval_s):
                await self._wake.wait()
