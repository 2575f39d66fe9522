"""Issue 9, initiating a grid application (claims 26, 27, 36): a backup must fit the
subscription's source quota, erasure expansion counted, and is refused before any
packet is uploaded when it does not; a node without a subscription cannot back up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from gridnode.control import ControlError
from gridnode.node import Node

from .test_authority import authority_grid, control


async def _wait(predicate: object, what: str, timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.1)


def _held_packets(nodes: list[Node]) -> int:
    return sum(n.packets.packet_count for n in nodes)


async def test_a_backup_over_the_quota_is_refused_before_any_packet_is_uploaded(
    tmp_path: Path,
) -> None:
    async with authority_grid(tmp_path, 3) as nodes:
        auth, one, two, three = nodes
        manager = auth.authority
        assert manager is not None
        await _wait(lambda: auth.subscription and auth.subscription.certificate, "auth enrolled")
        book = tmp_path / "auth" / "pricebook.toml"
        book.write_text(book.read_text() + "\n[plans.tiny]\nsource_bytes = 3000000\n")
        tree = tmp_path / "tree"
        tree.mkdir()
        (tree / "a.bin").write_bytes(os.urandom(1_500_000))

        # Not subscribed yet: no backup at all.
        with pytest.raises(ControlError, match="no active subscription"):
            await control(one, "backup", paths=[str(tree)], redundancy="2/3")

        for node, plan in ((one, "tiny"), (two, "small"), (three, "small")):
            code = await trio.to_thread.run_sync(manager.create_invite)
            await control(node, "subscribe", invite=code, plan=plan)
        assert one.gossiper is not None
        await _wait(lambda: len(one.gossiper.alive()) >= 3, "one sees three certified members")

        # 1.5 MB x 3/2 fits a 3 MB quota.
        first = await control(one, "backup", paths=[str(tree)], redundancy="2/3")
        assert first["packets_uploaded"] > 0
        held = _held_packets([auth, two, three])
        # Another 1.5 MB would bring it to about 4.5 MB: refused, nothing uploaded.
        (tree / "b.bin").write_bytes(os.urandom(1_500_000))
        with pytest.raises(ControlError, match=r"source quota of 2\.86 MiB") as info:
            await control(one, "backup", paths=[str(tree)], redundancy="2/3")
        assert "times 3/2 for redundancy" in str(info.value)
        assert _held_packets([auth, two, three]) == held
        snapshots = await control(one, "snapshots")
        assert [s["complete"] for s in snapshots] == [True]


async def test_a_target_holds_each_source_to_its_quota(tmp_path: Path) -> None:
    """A source that skips its own check (or lies) is refused by the targets: each keeps
    what one source stores there within that source's certificate quota, and a delete by
    the owner gives the room back."""
    import blake3

    from protocol import DeletePacket, PacketDeleted, PacketPart, PacketsStored, StorePackets

    async with authority_grid(tmp_path, 2) as nodes:
        auth, one, two = nodes
        manager = auth.authority
        assert manager is not None
        await _wait(lambda: auth.subscription and auth.subscription.certificate, "auth enrolled")
        book = tmp_path / "auth" / "pricebook.toml"
        book.write_text(book.read_text() + "\n[plans.tiny]\nsource_bytes = 3000000\n")
        for node, plan in ((one, "tiny"), (two, "small")):
            code = await trio.to_thread.run_sync(manager.create_invite)
            await control(node, "subscribe", invite=code, plan=plan)
        assert one.gossiper is not None
        await _wait(
            lambda: two.identity.node_id in {i for i, _ in one.gossiper.alive()},
            "one sees two, both certified",
        )
        link = await one.link_for(two.identity.node_id)
        if not link.session.certificate:  # the session predates the certificate: renew it
            await link.aclose("test", "reconnect with the certificate")
            link = await one.link_for(two.identity.node_id)
        secrets_ = [os.urandom(32) for _ in range(4)]
        packets = [os.urandom(1_000_000) for _ in range(4)]
        parts = tuple(
            PacketPart(
                packet_id=blake3.blake3(p).digest(),
                owner_tag=blake3.blake3(s).digest(),
                size_bytes=len(p),
            )
            for p, s in zip(packets, secrets_, strict=True)
        )
        answer = await link.request(
            lambda rid: StorePackets(request_id=rid, parts=parts, data=b"".join(packets))
        )
        assert isinstance(answer, PacketsStored)
        codes = [r.code for r in answer.results]  # the parts are written concurrently
        assert sorted(codes) == ["", "", "", "over_quota"]
        out, kept = codes.index("over_quota"), codes.index("")
        assert not two.packets.has(parts[out].packet_id)
        # The owner deletes one packet: its room comes back.
        gone = await link.request(
            lambda rid: DeletePacket(
                request_id=rid, packet_id=parts[kept].packet_id, owner_secret=secrets_[kept]
            )
        )
        assert isinstance(gone, PacketDeleted) and gone.removed
        again = await link.request(
            lambda rid: StorePackets(request_id=rid, parts=parts[out : out + 1], data=packets[out])
        )
        assert isinstance(again, PacketsStored) and again.results[0].code == ""
