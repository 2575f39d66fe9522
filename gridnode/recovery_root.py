"""The recovery root: the sealed list of a node's complete snapshots, published after
each change on the members that rank first for the node's root locator, and fetched
back by a node recovered from its key (``recovery``).  See ``recovery`` for the whole
story; this module holds only what backup, repair, restore and delegation need to
republish it, so that none of them imports the recovery job.
"""

from __future__ import annotations

import time
from typing import Any, Final

import blake3
import trio

from protocol import GetRoot, PutRoot, RootData, RootStored, sign, verify

from .actors.packet_store import root_signature_payload
from .dedup_group import DedupGroup
from .errors import PeerError
from .job_services import Services
from .log import get_logger
from .record_store import seal, unseal

__all__ = [
    "ROOT_COPIES",
    "ROOT_TIMEOUT_S",
    "fetch_root",
    "group_of",
    "log_head_of",
    "publish_root",
]

_log = get_logger(actor="request", job="recovery")

#: How many members keep a copy of the root (any one suffices to recover).
ROOT_COPIES: Final = 6
ROOT_TIMEOUT_S: Final = 10.0


def group_of(group: DedupGroup | None) -> dict[str, str] | None:
    """How a root names a dedup group: never its key, only what ``status`` shows."""
    return None if group is None else {"name": group.name, "fingerprint": group.fingerprint}


def _holders(services: Services) -> list[tuple[bytes, str]]:
    locator = services.identity.root_locator
    members = services.alive_members()
    ranked = sorted(members, key=lambda m: blake3.blake3(m[0], key=locator).digest())
    return ranked[:ROOT_COPIES]


async def publish_root(services: Services) -> dict[str, Any]:
    """Seal the current list of snapshots and store it on ``ROOT_COPIES`` members."""
    catalog = services.catalog
    identity = services.identity

    def build() -> tuple[int, bytes]:
        snapshots = [s for s in catalog.snapshots() if s.complete and s.record]
        head_seq, head_hash = catalog.log_head()
        root = {
            "v": 1,
            "node_id": identity.node_id,
            "published": time.time(),
            "snapshots": [{"snapshot": s.to_json(), "record": s.record} for s in snapshots],
            # The backup log's chain head, so a node recovered from its key continues its
            # chain (roots published before it was added have none).
            "log_head": {"seq": head_seq, "hash": head_hash},
            # Who may have moved this node's packets while it was gone (delegated
            # repair): a recovered node takes move records from these members only.
            "delegates": {k.hex(): v for k, v in catalog.delegates().items()},
            # The dedup group whose secret keys this node's data chunks (None: its own),
            # so a recovery given another group, or none, is refused before it imports
            # snapshots whose data it could not decrypt (roots before it name nothing).
            "dedup_group": group_of(identity.group),
        }
        return catalog.next_root_version(), seal(identity.record_key, root)

    version, sealed = await services.db(build)
    signature = sign(
        identity.root_signing_key, root_signature_payload(identity.root_locator, version, sealed)
    )
    verify_key = bytes(identity.root_signing_key.verify_key)
    stored: list[str] = []
    failed: list[str] = []

    async def put(node_id: bytes) -> None:
        try:
            link = await services.link_for(node_id)
            answer = await link.request(
                lambda rid: PutRoot(
                    request_id=rid,
                    locator=identity.root_locator,
                    version=version,
                    verify_key=verify_key,
                    signature=signature,
                    sealed=sealed,
                ),
                timeout_s=ROOT_TIMEOUT_S,
            )
            if isinstance(answer, RootStored) and answer.version == version:
                stored.append(node_id.hex()[:12])
            else:
                failed.append(node_id.hex()[:12])
        except PeerError as exc:
            failed.append(node_id.hex()[:12])
            _log.info("root_copy_failed", target=node_id.hex()[:12], error=str(exc))

    async with trio.open_nursery() as nursery:
        for node_id, _ in _holders(services):
            nursery.start_soon(put, node_id)
    if stored:
        await services.db(catalog.set_root_version, version)
    return {"version": version, "copies": len(stored), "size_bytes": len(sealed)}


async def fetch_root(services: Services) -> tuple[int, dict[str, Any]] | None:
    """Ask every reachable member for our root; the newest valid version wins."""
    identity = services.identity
    verify_key = bytes(identity.root_signing_key.verify_key)
    found: list[RootData] = []

    async def get(node_id: bytes) -> None:
        try:
            link = await services.link_for(node_id)
            answer = await link.request(
                lambda rid: GetRoot(request_id=rid, locator=identity.root_locator),
                timeout_s=ROOT_TIMEOUT_S,
            )
        except PeerError:
            return
        if (
            isinstance(answer, RootData)
            and answer.locator == identity.root_locator
            and answer.verify_key == verify_key
            and verify(
                verify_key,
                root_signature_payload(answer.locator, answer.version, answer.sealed),
                answer.signature,
            )
        ):
            found.append(answer)

    async with trio.open_nursery() as nursery:
        for node_id, _ in services.alive_members():
            nursery.start_soon(get, node_id)
    if not found:
        return None
    best = max(found, key=lambda r: r.version)
    return best.version, unseal(identity.record_key, best.sealed)


def log_head_of(root: dict[str, Any]) -> tuple[int, bytes] | None:
    """The backup log head a root carries, or None (a root from before it had one)."""
    head = root.get("log_head")
    if not isinstance(head, dict):
        return None
    seq, digest = head.get("seq"), head.get("hash")
    if type(seq) is not int or seq <= 0 or not isinstance(digest, bytes) or len(digest) != 32:
        return None
    return seq, digest
