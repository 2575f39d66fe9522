"""Issue 9, enforcement: only subscribed nodes take part, each within its allotment.

A fresh key that knows the grid id gets no session and no place in the member table; a
certificate of another grid, an expired or a revoked one is refused at the handshake;
a member claiming more free space than it was allotted is weighed by its allotment.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey

from gridnode.admission import CERTIFICATE_FILE, Admission
from gridnode.errors import HandshakeFailed, PeerGone
from gridnode.identity import NodeIdentity
from gridnode.logic.placement import Member, PlacementRules, PlacementView, Source
from gridnode.transport import Transport
from protocol import Allocations, Certificate, issue_certificate, issue_revocation, sign_record

from .test_transport import Handler, settings

GRID = os.urandom(16)
AUTHORITY = SigningKey.generate()
GiB = 1 << 30


def certificate(
    node: NodeIdentity,
    *,
    grid: bytes = GRID,
    key: SigningKey = AUTHORITY,
    lifetime: int = 3600,
    serial: int = 1,
    target_bytes: int = 10 * GiB,
) -> bytes:
    now = int(time.time())
    return issue_certificate(
        key,
        grid_id=grid,
        node_id=node.node_id,
        serial=serial,
        plan="basic",
        allocations=Allocations(source_bytes=GiB, target_bytes=target_bytes),
        issued=now - 10,
        expires=now + lifetime,
    ).encode()


def admission(home: Path, node: NodeIdentity, cert: bytes | None) -> Admission:
    home.mkdir(parents=True, exist_ok=True)
    if cert is not None:
        (home / CERTIFICATE_FILE).write_bytes(cert)
    return Admission(
        grid_id=GRID, authority_key=bytes(AUTHORITY.verify_key), home=home, node_id=node.node_id
    )


@asynccontextmanager
async def member(tmp_path: Path, name: str, cert: bytes | None) -> AsyncIterator[Transport]:
    identity = NodeIdentity.generate()
    if cert is not None and cert.startswith(b"@"):
        cert = certificate(identity)  # "@": a good certificate for this very node
    t = Transport(
        identity=identity,
        settings=settings(grid_id=GRID),
        handler=Handler(),
        admission=admission(tmp_path / name, identity, None),
    )
    assert t.admission is not None
    if cert is not None:
        (tmp_path / name / CERTIFICATE_FILE).write_bytes(cert)
    async with trio.open_nursery() as nursery:
        await nursery.start(t.run)
        yield t
        await t.close_all()
        nursery.cancel_scope.cancel()


async def test_only_nodes_with_a_valid_certificate_get_a_session(tmp_path: Path) -> None:
    async with member(tmp_path, "good", b"@") as good:
        address = f"127.0.0.1:{good.port}"
        async with member(tmp_path, "friend", b"@") as friend:
            link = await friend.connect(address)
            assert link.peer_id == good.identity.node_id
        stranger = NodeIdentity.generate()
        other_grid = SigningKey.generate()
        cases = {
            "none": None,
            "garbage": b"\x93\x01\x02\x03",
            "another grid": certificate(stranger, key=other_grid),
            "expired": certificate(stranger, lifetime=-5),
            "another node": certificate(NodeIdentity.generate()),
        }
        for name, cert in cases.items():
            async with member(tmp_path, name.replace(" ", "-"), cert) as intruder:
                with pytest.raises((HandshakeFailed, PeerGone)):
                    await intruder.connect(address)
        assert good.admission is not None and good.admission.refused >= len(cases)


async def test_a_revoked_certificate_is_refused(tmp_path: Path) -> None:
    async with member(tmp_path, "good", b"@") as good:
        identity = NodeIdentity.generate()
        cert = certificate(identity, serial=7)
        async with member(tmp_path, "bad", cert) as bad:
            assert good.admission is not None
            revocation = issue_revocation(
                AUTHORITY, grid_id=GRID, node_id=bad.identity.node_id, serial=7, revoked_at=1
            )
            # The certificate file holds one for `identity`, not for bad's own key: make
            # one for bad itself, then revoke it.
            (tmp_path / "bad" / CERTIFICATE_FILE).write_bytes(certificate(bad.identity, serial=7))
            assert good.admission.revoke(revocation)
            forged = issue_revocation(
                SigningKey.generate(),
                grid_id=GRID,
                node_id=good.identity.node_id,
                serial=1,
                revoked_at=1,
            )
            assert not good.admission.revoke(forged)  # only the authority may revoke
            with pytest.raises((HandshakeFailed, PeerGone)):
                await bad.connect(f"127.0.0.1:{good.port}")


def test_gossip_keeps_only_subscribed_members(tmp_path: Path) -> None:
    node = NodeIdentity.generate()
    rules = admission(tmp_path / "n", node, certificate(node))
    subscribed, stranger = NodeIdentity.generate(), NodeIdentity.generate()

    def record(identity: NodeIdentity, cert: bytes) -> object:
        return sign_record(
            identity.signing_key,
            node_id=identity.node_id,
            address="127.0.0.1:1",
            free_bytes=GiB,
            certificate=cert,
        )

    assert rules.admits_record(record(subscribed, certificate(subscribed)))  # type: ignore[arg-type]
    assert not rules.admits_record(record(stranger, b""))  # type: ignore[arg-type]
    # A member cannot borrow another's certificate.
    assert not rules.admits_record(record(stranger, certificate(subscribed)))  # type: ignore[arg-type]


def test_three_liars_get_no_more_than_their_allotment(tmp_path: Path) -> None:
    """40 honest members with 10 GiB free each and 3 that claim 10 TiB: weighed by what
    they advertise, the liars took about 3 of every 6 packets; capped by their
    certificates' 10 GiB allotment, they get their fair share (3/43 of packets)."""
    node = NodeIdentity.generate()
    rules = admission(tmp_path / "n", node, certificate(node))
    honest = [NodeIdentity.generate() for _ in range(40)]
    liars = [NodeIdentity.generate() for _ in range(3)]

    def view(cap: bool) -> PlacementView:
        members = []
        for ident in honest + liars:
            claimed = 10 * 1024 * GiB if ident in liars else 10 * GiB
            rec = sign_record(
                ident.signing_key,
                node_id=ident.node_id,
                address="127.0.0.1:1",
                free_bytes=claimed,
                certificate=certificate(ident),
            )
            allotted = rules.allotted_bytes(rec) if cap else None
            free = claimed if allotted is None else min(claimed, allotted)
            members.append(Member(node_id=ident.node_id, lat=None, lon=None, free_bytes=free))
        return PlacementView(
            key=b"k" * 32,
            source=Source(node_id=node.node_id, lat=None, lon=None),
            members=members,
            rules=PlacementRules(),
        )

    liar_ids = {i.node_id for i in liars}

    def liar_share(v: PlacementView) -> float:
        counts = Counter(t for c in range(2000) for t in v.place(c.to_bytes(4, "big"), 6, 1024))
        return sum(counts[i] for i in liar_ids) / sum(counts.values())

    assert liar_share(view(cap=False)) > 0.4
    assert liar_share(view(cap=True)) < 0.1  # fair share: 3/43 = 0.07


def test_certificate_signature_is_checked_once_and_the_rest_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target asks whether its peer is certified on every request: the signature is
    verified once per certificate, but expiry, the node it names, a revocation and a
    new authority key still count at every ask."""
    import protocol._authority as authority_module
    from protocol import verify as real_verify

    verified = Counter[bytes]()

    def counting_verify(key: bytes, payload: bytes, signature: bytes) -> bool:
        verified[signature] += 1
        return real_verify(key, payload, signature)

    monkeypatch.setattr(authority_module, "verify", counting_verify)
    peer, other = NodeIdentity.generate(), NodeIdentity.generate()
    now = [time.time()]
    gate = Admission(
        grid_id=GRID,
        authority_key=bytes(AUTHORITY.verify_key),
        home=tmp_path,
        node_id=NodeIdentity.generate().node_id,
        clock=lambda: now[0],
    )
    raw = certificate(peer, lifetime=600)
    for _ in range(50):
        assert gate.certified(peer.node_id, raw)
    assert sum(verified.values()) == 1
    # The same bytes offered by another node, a forged copy, later than expiry: refused.
    assert not gate.certified(other.node_id, raw)
    forged = certificate(peer, key=SigningKey.generate(), lifetime=600)
    assert not gate.certified(peer.node_id, forged)
    assert not gate.certified(peer.node_id, forged)  # a failure is never remembered as good
    assert verified[Certificate.decode(forged).signature] == 2
    now[0] += 601
    assert not gate.certified(peer.node_id, raw)
    now[0] -= 601
    assert gate.certified(peer.node_id, raw)
    revocation = issue_revocation(
        AUTHORITY, grid_id=GRID, node_id=peer.node_id, serial=1, revoked_at=int(now[0])
    )
    assert gate.revoke(revocation)
    assert not gate.certified(peer.node_id, raw)
    # Another authority key: what was verified under the old one is verified again.
    gate.authority_key = bytes(SigningKey.generate().verify_key)
    before = sum(verified.values())
    assert not gate.certified(other.node_id, certificate(other))
    assert sum(verified.values()) == before + 1
