"""The SWIM state machine over a simulated network driven by trio's MockClock.

Each member runs in its own trio task exactly as the gossip actor would: sleep until
``next_deadline()`` or a message, then ``handle``/``tick`` and deliver what comes back.
Links have settable delays and filters (loss, partitions, dropped acks).  Bounds are
derived from the configuration, not measured and pasted.
"""

from __future__ import annotations

import functools
import math
import operator
import random
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import hypothesis
import hypothesis.strategies as st
import nacl.signing
import pytest
import trio

from gridnode.logic import swim
from gridnode.logic.distance import haversine_km
from gridnode.logic.swim import (
    GossipConfig,
    Membership,
    MemberView,
    Outgoing,
    SharedView,
)
from protocol import (
    GossipIndirectAck,
    GossipLeave,
    GossipProbe,
    GossipProbeAck,
    GossipProbeRequest,
    GossipSync,
    GossipSyncReply,
    GossipUpdates,
    MemberRecord,
    MemberUpdate,
    Message,
    claim_is_valid,
    encoded_size,
    record_is_valid,
    record_signing_payload,
    sign,
    sign_claim,
    sign_record,
)
from protocol._gossip import (
    GossipDigest,
    GossipDigestRecords,
    GossipDigestReply,
    entry_hash,
)

CFG = GossipConfig(location_check="off")
ZURICH = (47.3769, 8.5417)
BASEL = (47.5596, 7.5886)
NEW_YORK = (40.7128, -74.0060)


def _key(i: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([i + 1]) * 32)


def _record(i: int, *, location: tuple[float, float] | None = None, **extra: Any) -> MemberRecord:
    lat, lon = location if location is not None else (None, None)
    return sign_record(
        _key(i),
        address=f"node{i}:7700",
        lat=lat,
        lon=lon,
        allocated_bytes=1 << 40,
        free_bytes=1 << 39,
        bandwidth_bps=10**8,
        **extra,
    )


@attrs.define(eq=False)
class Node:
    index: int
    membership: Membership
    send_channel: trio.MemorySendChannel[tuple[bytes, Message]]
    receive_channel: trio.MemoryReceiveChannel[tuple[bytes, Message]]
    scope: trio.CancelScope | None = None
    running: bool = False

    @property
    def node_id(self) -> bytes:
        return self.membership.node_id


#: (sender, receiver, message) -> deliver?
LinkFilter = Callable[[Node, Node, Message], bool]


class Network:
    """In-memory links with per-link delay and filters; one trio task per member."""

    def __init__(self, nursery: trio.Nursery, *, delay_s: float = 0.002) -> None:
        self.nursery = nursery
        self.delay_s = delay_s
        self.link_delay: dict[tuple[int, int], float] = {}
        self.filters: list[LinkFilter] = []
        self.nodes: list[Node] = []
        self.by_id: dict[bytes, Node] = {}
        self.by_address: dict[str, Node] = {}
        self.delivered = 0

    def add(self, membership: Membership) -> Node:
        send, receive = trio.open_memory_channel[tuple[bytes, Message]](math.inf)
        node = Node(len(self.nodes), membership, send, receive)
        self.nodes.append(node)
        self.by_id[node.node_id] = node
        self.by_address[membership.self_record.address] = node
        return node

    async def start(self, node: Node) -> None:
        await self.nursery.start(self._run, node)

    def stop(self, node: Node) -> None:
        node.running = False
        assert node.scope is not None
        node.scope.cancel()

    def replace(self, node: Node, membership: Membership) -> None:
        """A restarted process: same identity and address, fresh state."""
        node.membership = membership

    def deliver(self, src: Node, outgoing: Iterable[Outgoing]) -> None:
        for out in outgoing:
            dst = self.by_id.get(out.node_id) if out.node_id is not None else None
            if dst is None:
                dst = self.by_address.get(out.address)
            if dst is None or not dst.running:
                continue
            if not all(keep(src, dst, out.message) for keep in self.filters):
                continue
            delay = self.link_delay.get((src.index, dst.index), self.delay_s)
            self.nursery.start_soon(self._later, delay, src, dst, out.message)

    def inject(self, src: Node, dst: Node, message: Message) -> None:
        self.nursery.start_soon(self._later, self.delay_s, src, dst, message)

    async def _later(self, delay: float, src: Node, dst: Node, message: Message) -> None:
        await trio.sleep(delay)
        if dst.running:
            self.delivered += 1
            dst.send_channel.send_nowait((src.node_id, message))

    async def _run(self, node: Node, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as scope:
            node.scope = scope
            node.running = True
            task_status.started()
            # Bounded by the cancel scope: the test stops every node (or the nursery).
            while True:
                item: tuple[bytes, Message] | None = None
                with trio.move_on_at(node.membership.next_deadline()):
                    item = await node.receive_channel.receive()
                now = trio.current_time()
                if item is not None:
                    self.deliver(node, node.membership.handle(now, item[0], item[1]))
                if now >= node.membership.next_deadline():
                    self.deliver(node, node.membership.tick(now))


def _members(
    count: int,
    config: GossipConfig = CFG,
    *,
    locations: dict[int, tuple[float, float]] | None = None,
    shared: bool = True,
    now: float | None = None,
) -> list[Membership]:
    now = trio.current_time() if now is None else now
    locations = locations or {}
    records = [_record(i, location=locations.get(i)) for i in range(count)]
    view = SharedView(records) if shared else None
    return [
        Membership(
            signing_key=_key(i),
            self_record=records[i],
            config=config,
            rng=random.Random(i),
            now=now,
            shared_view=view,
        )
        for i in range(count)
    ]


async def _network(
    nursery: trio.Nursery, members: list[Membership], **kwargs: Any
) -> tuple[Network, list[Node]]:
    net = Network(nursery, **kwargs)
    nodes = [net.add(m) for m in members]
    for node in nodes:
        await net.start(node)
    return net, nodes


def _ids(views: Iterable[MemberView]) -> set[bytes]:
    return {v.node_id for v in views}


async def _wait_for(predicate: Callable[[], bool], *, poll_s: float = 0.05) -> float:
    """Poll in simulated time; the caller bounds it with ``trio.fail_after``."""
    start = trio.current_time()
    # Polling is the point: the state lives in pure objects with no events to wait on.
    while not predicate():
        await trio.sleep(poll_s)
    return trio.current_time() - start


def _detection_bound_s(config: GossipConfig, members: int, *, health_scaled: bool = False) -> float:
    """Worst case from a crash until every survivor holds it dead.

    Some survivor probes the victim within one round-robin cycle (members - 1 probes,
    plus the random phase), the probe fails by the end of its interval, and the
    suspicion runs at most its maximum timeout; the dead news then needs a few
    gossip rounds (every survivor also runs its own timer).  When many members fail
    at once (a partition) probes go unanswered and Lifeguard stretches the probe
    interval by up to ``awareness_max_multiplier``: ``health_scaled`` allows for it.
    """
    n = members
    interval = config.probe_interval_s
    if health_scaled:
        interval *= config.awareness_max_multiplier
    cycle = (n - 1) * interval + interval
    min_timeout = config.suspicion_mult * max(1.0, math.log10(n)) * config.probe_interval_s
    max_timeout = config.suspicion_max_timeout_mult * min_timeout
    spread = 10 * config.gossip_interval_s
    return cycle + interval + max_timeout + spread


# --- join -------------------------------------------------------------------------------


async def test_join_through_one_seed_converges(autojump_clock: trio.testing.MockClock) -> None:
    members = _members(10, shared=False)
    async with trio.open_nursery() as nursery:
        net, nodes = await _network(nursery, members)
        seed = nodes[0]
        for node in nodes[1:]:
            net.deliver(node, node.membership.join(trio.current_time(), ["node0:7700"]))
            await trio.sleep(0.3)
        everyone = {n.node_id for n in nodes}

        def known_pairs() -> int:
            return sum(len(_ids(n.membership.alive_members()) & everyone) for n in nodes)

        def converged() -> bool:
            return known_pairs() == len(nodes) * (len(nodes) - 1)

        # Gossip needs ~log(N) rounds of 0.2 s: within 5 s, far below the 30 s sync
        # interval, it has done the bulk.  It may miss a member that was itself still
        # unknown while the news went round (at N = 10 each member retransmits an
        # update only 8 times): anti-entropy completes the view, as in memberlist.
        await trio.sleep(5.0)
        assert known_pairs() >= 0.9 * len(nodes) * (len(nodes) - 1)
        with trio.fail_after(2 * CFG.sync_interval_s):
            await _wait_for(converged)
        # One view: every member holds the same record for every other member.
        for node in nodes:
            for view in node.membership.members():
                assert view.record == net.by_id[view.node_id].membership.self_record
        assert seed.membership.statistics().syncs_answered >= len(nodes) - 1
        assert all(n.membership.statistics().forged_records_dropped == 0 for n in nodes)
        nursery.cancel_scope.cancel()


async def test_join_retries_until_the_seed_answers(autojump_clock: trio.testing.MockClock) -> None:
    members = _members(2, shared=False)
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        seed, joiner = net.add(members[0]), net.add(members[1])
        await net.start(joiner)
        net.deliver(joiner, joiner.membership.join(trio.current_time(), ["node0:7700"]))
        await trio.sleep(7.0)  # the seed is not up yet: the first attempt is lost
        assert joiner.membership.members() == []
        await net.start(seed)
        with trio.fail_after(CFG.rejoin_interval_s + 1.0):
            await _wait_for(lambda: len(joiner.membership.alive_members()) == 1)
        nursery.cancel_scope.cancel()


async def test_sync_pages_carry_views_larger_than_one_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = attrs.evolve(CFG, max_records_per_message=3)
    members = _members(9, config)
    late = Membership(
        signing_key=_key(20),
        self_record=_record(20),
        config=config,
        rng=random.Random(20),
        now=trio.current_time(),
    )
    async with trio.open_nursery() as nursery:
        net, _ = await _network(nursery, members)
        pages: list[GossipSyncReply] = []

        def record_pages(src: Node, dst: Node, message: Message) -> bool:
            if isinstance(message, GossipSyncReply) and dst.membership is late:
                pages.append(message)
            return True

        net.filters.append(record_pages)
        node = net.add(late)
        await net.start(node)
        net.deliver(node, late.join(trio.current_time(), ["node0:7700"]))
        with trio.fail_after(1.0):
            await _wait_for(lambda: len(late.alive_members()) == 9)
        first = [p for p in pages if p.sync_id == pages[0].sync_id]
        assert len(first) == math.ceil(10 / 3)  # 9 members + the joiner itself
        assert all(len(p.updates) <= 3 and p.pages == len(first) for p in first)
        nursery.cancel_scope.cancel()


# --- failure detection --------------------------------------------------------------------


async def test_stopped_member_becomes_suspect_then_dead_everywhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    count = 8
    async with trio.open_nursery() as nursery:
        net, nodes = await _network(nursery, _members(count))
        await trio.sleep(3.0)
        victim, survivors = nodes[-1], nodes[:-1]
        net.stop(victim)
        crashed_at = trio.current_time()
        first_suspect: dict[int, float] = {}
        first_dead: dict[int, float] = {}

        def observe() -> bool:
            now = trio.current_time()
            for node in survivors:
                state = node.membership.state_of(victim.node_id)
                if state == "suspect":
                    first_suspect.setdefault(node.index, now)
                if state == "dead":
                    first_dead.setdefault(node.index, now)
            return len(first_dead) == len(survivors)

        bound = _detection_bound_s(CFG, count)
        with trio.fail_after(bound):
            await _wait_for(observe, poll_s=0.01)
        assert max(first_dead.values()) - crashed_at <= bound
        # Suspicion comes first: never dead without somebody having suspected it.
        assert first_suspect
        assert min(first_suspect.values()) < min(first_dead.values())
        assert sum(n.membership.statistics().deaths_declared for n in survivors) >= 1
        # Reaping: the dead member is forgotten dead_reap_s after the last declaration.
        with trio.fail_after(CFG.dead_reap_s + 1.0):
            await _wait_for(
                lambda: all(n.membership.state_of(victim.node_id) is None for n in survivors)
            )
        assert all(n.membership.statistics().members_reaped == 1 for n in survivors)
        assert all(len(n.membership.alive_members()) == count - 2 for n in survivors)
        nursery.cancel_scope.cancel()


async def test_refused_connection_counts_as_a_failed_probe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The transport reports the victim unreachable: indirect probes start at once."""
    members = _members(5)
    observer, victim = members[0], members[4]
    out = observer.unreachable(trio.current_time(), victim.node_id)
    requests = [o.message for o in out if isinstance(o.message, GossipProbeRequest)]
    assert len(requests) == CFG.indirect_probes
    assert all(r.target == victim.node_id for r in requests)
    assert {o.node_id for o in out} <= {m.node_id for m in members[1:4]}
    # Nobody answers (there is no network here): by the end of the probe interval
    # the victim is suspect.
    start = trio.current_time()
    for _ in range(100):
        if observer.state_of(victim.node_id) != "alive":
            break
        now = observer.next_deadline()
        assert now <= start + CFG.probe_interval_s
        observer.tick(now)
    assert observer.state_of(victim.node_id) == "suspect"
    assert observer.statistics().probes_failed >= 1


async def test_live_member_refutes_suspicion(autojump_clock: trio.testing.MockClock) -> None:
    count = 6
    async with trio.open_nursery() as nursery:
        net, nodes = await _network(nursery, _members(count))
        await trio.sleep(2.0)
        target = nodes[2]
        first_incarnation = target.membership.self_record.incarnation
        dropping = True

        def drop_acks_from_target(src: Node, dst: Node, message: Message) -> bool:
            acks = (GossipProbeAck, GossipIndirectAck)
            return not (dropping and src is target and isinstance(message, acks))

        net.filters.append(drop_acks_from_target)
        seen: set[str] = set()
        end = trio.current_time() + 8.0
        while trio.current_time() < end:
            for node in nodes:
                if node is not target:
                    seen.add(node.membership.state_of(target.node_id) or "unknown")
            await trio.sleep(0.01)
        dropping = False
        end = trio.current_time() + 40.0  # longer than the longest suspicion timeout
        while trio.current_time() < end:
            for node in nodes:
                if node is not target:
                    seen.add(node.membership.state_of(target.node_id) or "unknown")
            await trio.sleep(0.05)
        assert "suspect" in seen
        assert "dead" not in seen and "unknown" not in seen
        record = target.membership.self_record
        assert record.incarnation > first_incarnation
        assert target.membership.statistics().refutations >= 1
        assert sum(n.membership.statistics().suspicions_refuted for n in nodes) >= 1
        for node in nodes:
            if node is not target:
                view = node.membership.member(target.node_id)
                assert view is not None and view.state == "alive"
                assert view.record == record
        nursery.cancel_scope.cancel()


# --- partition and heal ---------------------------------------------------------------------


@pytest.mark.parametrize("heal", ["before_reap", "after_reap"])
async def test_partition_heals_into_one_view(
    autojump_clock: trio.testing.MockClock, heal: str
) -> None:
    count = 8
    # A shorter sync interval keeps the simulated time (not the wall time) short.
    config = attrs.evolve(CFG, sync_interval_s=10.0)
    members = _members(count, config, shared=False)
    async with trio.open_nursery() as nursery:
        net, nodes = await _network(nursery, members)
        for node in nodes[1:]:
            net.deliver(node, node.membership.join(trio.current_time(), ["node0:7700"]))
        everyone = {n.node_id for n in nodes}

        def one_view() -> bool:
            for node in nodes:
                views = node.membership.members()
                if {v.node_id for v in views if v.state == "alive"} != everyone - {node.node_id}:
                    return False
                if len(views) != count - 1:
                    return False
                for v in views:
                    if v.record != net.by_id[v.node_id].membership.self_record:
                        return False
            return True

        with trio.fail_after(3 * config.sync_interval_s):
            await _wait_for(one_view)
        side = {n.index: n.index < count // 2 for n in nodes}
        partitioned = True

        def partition(src: Node, dst: Node, message: Message) -> bool:
            return not partitioned or side[src.index] == side[dst.index]

        net.filters.append(partition)

        def split() -> bool:
            for node in nodes:
                for other in nodes:
                    state = node.membership.state_of(other.node_id)
                    if side[node.index] != side[other.index] and state not in ("dead", None):
                        return False
            return True

        with trio.fail_after(_detection_bound_s(config, count, health_scaled=True)):
            await _wait_for(split)
        if heal == "after_reap":
            # Both halves forget each other; only the seed address remains.
            with trio.fail_after(config.dead_reap_s + 5.0):
                await _wait_for(
                    lambda: all(
                        node.membership.state_of(other.node_id) is None
                        for node in nodes
                        for other in nodes
                        if side[node.index] != side[other.index]
                    )
                )
        partitioned = False
        # Every sync interval each member syncs with a lost member or seed with
        # probability lost / (alive + 1): 1 before the reap; 1/4 for each of the four
        # members that lost the seed after it, so one of them reconnects in an interval
        # with probability 1 - (3/4)^4 = 0.68.  Ten intervals leave a 1e-5 chance.
        with trio.fail_after(10 * config.sync_interval_s):
            await _wait_for(one_view, poll_s=0.2)
        nursery.cancel_scope.cancel()


# --- forged and stale records ---------------------------------------------------------------


def _forge(record: MemberRecord, key: nacl.signing.SigningKey, **changes: Any) -> MemberRecord:
    """Sign changed content with a key that is not the member's own."""
    changed = attrs.evolve(record, **changes)
    return attrs.evolve(changed, signature=sign(key, record_signing_payload(changed)))


async def test_forged_records_are_dropped_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        net, nodes = await _network(nursery, _members(5))
        await trio.sleep(2.0)
        liar, receiver, subject = nodes[1], nodes[0], nodes[2]
        genuine = subject.membership.self_record
        wrong_key = _forge(genuine, _key(3), sequence=genuine.sequence + 5, free_bytes=1 << 50)
        altered = attrs.evolve(
            sign_record(
                _key(2),
                **{
                    name: getattr(genuine, name)
                    for name in ("address", "allocated_bytes", "bandwidth_bps")
                }
                | {"sequence": genuine.sequence + 6, "free_bytes": 7},
            ),
            free_bytes=1 << 50,  # changed after signing
        )
        same_version = _forge(genuine, _key(3), free_bytes=1 << 50)
        fake_leave = MemberUpdate(record=genuine, state="left")
        net.inject(
            liar,
            receiver,
            GossipUpdates(
                updates=(
                    MemberUpdate(record=wrong_key, state="alive"),
                    MemberUpdate(record=altered, state="alive"),
                    MemberUpdate(record=same_version, state="alive"),
                    fake_leave,
                )
            ),
        )
        await trio.sleep(5.0)
        stats = receiver.membership.statistics()
        assert stats.forged_records_dropped == 3
        assert stats.invalid_messages_dropped == 1
        for node in nodes:
            view = node.membership.member(subject.node_id)
            if node is not subject:
                assert view is not None
                assert view.record == genuine and view.state == "alive"
        assert sum(n.membership.statistics().forged_records_dropped for n in nodes) == 3
        nursery.cancel_scope.cancel()


def test_older_record_is_ignored() -> None:
    members = _members(3, shared=False, now=0.0)
    observer = members[0]
    subject_key = _key(1)
    newer = sign_record(subject_key, address="node1:7700", sequence=5, free_bytes=50)
    older = sign_record(subject_key, address="node1:7700", sequence=4, free_bytes=40)
    observer.handle(1.0, None, GossipUpdates(updates=(MemberUpdate(record=newer, state="alive"),)))
    version = observer.version
    observer.handle(1.1, None, GossipUpdates(updates=(MemberUpdate(record=older, state="alive"),)))
    view = observer.member(newer.node_id)
    assert view is not None and view.record == newer
    assert observer.version == version
    assert observer.statistics().stale_updates_ignored == 1


_ORDER_KEY = _key(40)
_VERSIONS = [
    sign_record(_ORDER_KEY, address="node40:7700", incarnation=inc, sequence=seq, free_bytes=seq)
    for inc in range(3)
    for seq in range(3)
]


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.permutations(_VERSIONS), st.integers(min_value=1, max_value=len(_VERSIONS)))
def test_any_delivery_order_keeps_the_newest_record(order: list[MemberRecord], count: int) -> None:
    observer = Membership(
        signing_key=_key(41),
        self_record=_record(41),
        config=CFG,
        rng=random.Random(0),
        now=0.0,
    )
    delivered = order[:count]
    for i, record in enumerate(delivered):
        update = GossipUpdates(updates=(MemberUpdate(record=record, state="alive"),))
        observer.handle(float(i), None, update)
    view = observer.member(_ORDER_KEY.verify_key.encode())
    newest = max(delivered, key=lambda r: (r.incarnation, r.sequence))
    assert view is not None and view.record == newest and view.state == "alive"


# --- leave, own updates, restart -------------------------------------------------------------


async def test_graceful_leave_is_left_not_dead(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net, nodes = await _network(nursery, _members(6))
        await trio.sleep(2.0)
        leaver = nodes[3]
        net.deliver(leaver, leaver.membership.leave(trio.current_time()))
        await trio.sleep(1.0)
        net.stop(leaver)
        others = [n for n in nodes if n is not leaver]
        states: set[str | None] = set()
        for _ in range(200):
            states |= {n.membership.state_of(leaver.node_id) for n in others}
            await trio.sleep(0.05)
        assert states == {"left"}
        for node in others:
            view = node.membership.member(leaver.node_id)
            assert view is not None and view.record.leaving
            assert node.membership.statistics().suspicions_started == 0
        nursery.cancel_scope.cancel()


async def test_own_updates_spread_rate_limited_latest_wins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # No anti-entropy during the test: a full state exchange carries the latest record
    # whenever it happens, which is right but not what is measured here.
    config = attrs.evolve(CFG, sync_interval_s=1000.0)
    async with trio.open_nursery() as nursery:
        _, nodes = await _network(nursery, _members(4, config))
        await trio.sleep(2.0)
        source, watcher = nodes[0], nodes[1]
        seen: set[int] = set()
        start = trio.current_time()
        for step in range(30):  # 30 changes in 3 s
            source.membership.update_self(trio.current_time(), free_bytes=1000 + step)
            view = watcher.membership.member(source.node_id)
            assert view is not None
            seen.add(view.record.sequence)
            await trio.sleep(0.1)
        assert source.membership.self_record.sequence == 30
        assert source.membership.self_record.free_bytes == 1029

        def caught_up() -> bool:
            view = watcher.membership.member(source.node_id)
            assert view is not None
            seen.add(view.record.sequence)
            return view.record.free_bytes == 1029

        with trio.fail_after(3.0):
            await _wait_for(caught_up)
        elapsed = trio.current_time() - start
        # At most one dissemination per second (plus the first, immediate one).
        assert len(seen) <= 2 + math.ceil(elapsed / CFG.self_update_min_interval_s)
        with pytest.raises(ValueError, match="incarnation"):
            source.membership.update_self(trio.current_time(), incarnation=9)
        with pytest.raises(ValueError, match="unknown"):
            source.membership.update_self(trio.current_time(), colour="red")
        with pytest.raises(ValueError, match="free_bytes"):
            source.membership.update_self(trio.current_time(), free_bytes=-1)
        assert source.membership.self_record.free_bytes == 1029
        nursery.cancel_scope.cancel()


async def test_restarted_member_rejoins_above_its_old_incarnation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    count = 5
    members = _members(count, shared=False)
    async with trio.open_nursery() as nursery:
        net, nodes = await _network(nursery, members)
        for node in nodes[1:]:
            net.deliver(node, node.membership.join(trio.current_time(), ["node0:7700"]))
        await trio.sleep(3.0)
        phoenix = nodes[4]
        # Make the old life's record newer than the fresh one the restart will sign.
        phoenix.membership.update_self(trio.current_time(), free_bytes=1)
        await trio.sleep(3.0)
        net.stop(phoenix)
        others = nodes[:4]
        with trio.fail_after(_detection_bound_s(CFG, count)):
            await _wait_for(
                lambda: all(n.membership.state_of(phoenix.node_id) == "dead" for n in others)
            )
        reborn = Membership(
            signing_key=_key(4),
            self_record=_record(4),  # incarnation 0, sequence 0: older than the dead one
            config=CFG,
            rng=random.Random(99),
            now=trio.current_time(),
        )
        net.replace(phoenix, reborn)
        await net.start(phoenix)
        net.deliver(phoenix, reborn.join(trio.current_time(), ["node0:7700"]))
        with trio.fail_after(5.0):
            await _wait_for(
                lambda: all(n.membership.state_of(phoenix.node_id) == "alive" for n in others)
            )
        assert reborn.self_record.incarnation >= 1
        assert len(reborn.alive_members()) == count - 1
        nursery.cancel_scope.cancel()


# --- speed of light -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "trusted", "plausible"),
    [("enforce", False, False), ("warn", True, False), ("off", True, True)],
)
async def test_impossible_location_claim(
    autojump_clock: trio.testing.MockClock, mode: str, trusted: bool, plausible: bool
) -> None:
    assert haversine_km(*ZURICH, *NEW_YORK) > 5000
    assert haversine_km(*ZURICH, *BASEL) < 100
    config = attrs.evolve(CFG, location_check=mode)
    locations = {0: ZURICH, 1: BASEL, 2: NEW_YORK}
    members = _members(3, config, locations=locations)
    async with trio.open_nursery() as nursery:
        # 0.5 ms each way: a 1 ms round trip, room for at most 100 km of fibre.
        _, nodes = await _network(nursery, members, delay_s=0.0005)
        observer = nodes[0].membership
        version = observer.version
        await trio.sleep(10.0)
        honest = observer.member(nodes[1].node_id)
        liar = observer.member(nodes[2].node_id)
        assert honest is not None and liar is not None
        assert liar.rtt_ms is not None and liar.rtt_ms == pytest.approx(1.0, abs=0.01)
        assert liar.distance_km is not None and liar.distance_km > 5000
        assert (liar.location_trusted, liar.location_plausible) == (trusted, plausible)
        assert honest.location_trusted and honest.location_plausible
        assert honest.distance_km is not None and honest.distance_km < 100
        assert liar.state == honest.state == "alive"
        # Placement caches on the version: a trust flip must change it.
        if not plausible:
            assert observer.version > version
        nursery.cancel_scope.cancel()


async def test_slow_answer_keeps_a_distant_location_plausible(
    autojump_clock: trio.testing.MockClock,
) -> None:
    members = _members(
        2, attrs.evolve(CFG, location_check="enforce"), locations={0: ZURICH, 1: NEW_YORK}
    )
    async with trio.open_nursery() as nursery:
        # 40 ms each way: 80 ms of round trip covers 8,000 km, more than Zurich-New York.
        _, nodes = await _network(nursery, members, delay_s=0.040)
        await trio.sleep(10.0)
        view = nodes[0].membership.member(nodes[1].node_id)
        assert view is not None and view.rtt_ms == pytest.approx(80.0)
        assert view.location_trusted and view.location_plausible
        nursery.cancel_scope.cancel()


# --- accounting -----------------------------------------------------------------------------


async def test_statistics_count_messages_and_bytes_by_kind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        sent: dict[str, int] = {}
        sizes: dict[str, int] = {}
        net, nodes = await _network(nursery, _members(4))

        def count(src: Node, dst: Node, message: Message) -> bool:
            if src is nodes[0]:
                sent[message.KIND] = sent.get(message.KIND, 0) + 1
                sizes[message.KIND] = sizes.get(message.KIND, 0) + encoded_size(message)
            return True

        net.filters.append(count)
        await trio.sleep(10.0)
        stats = nodes[0].membership.statistics()
        assert stats.messages_sent == sent
        assert stats.bytes_sent == sizes
        assert 8 <= stats.probes_sent <= 11
        # Every probe is answered, but the last ack may still be on its way.
        acks = stats.messages_received["gossip_probe_ack"]
        assert stats.probes_sent - 1 <= acks <= stats.probes_sent
        assert stats.probes_failed == 0
        assert stats.members_alive == 3 and stats.health_score == 0
        nursery.cancel_scope.cancel()


def test_constructor_refuses_a_record_that_is_not_ours() -> None:
    with pytest.raises(ValueError, match="public half"):
        Membership(
            signing_key=_key(0),
            self_record=_record(1),
            config=CFG,
            rng=random.Random(0),
            now=0.0,
        )
    forged = attrs.evolve(_record(0), free_bytes=1)
    with pytest.raises(ValueError, match="signature"):
        Membership(
            signing_key=_key(0), self_record=forged, config=CFG, rng=random.Random(0), now=0.0
        )


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        GossipConfig(location_check="sometimes")
    with pytest.raises(ValueError):
        GossipConfig(probe_interval_s=0)
    with pytest.raises(ValueError):
        GossipConfig(max_records_per_message=5000)
    with pytest.raises(ValueError):
        GossipConfig(gossip_fanout=2.5)  # type: ignore[arg-type]


def test_probe_for_someone_else_is_not_acknowledged() -> None:
    members = _members(3, now=0.0)
    out = members[0].handle(
        0.0, members[1].node_id, GossipProbe(probe_id=1, target=members[2].node_id)
    )
    assert out == []
    assert members[0].statistics().invalid_messages_dropped == 1
    out = members[0].handle(
        0.0, members[1].node_id, GossipProbe(probe_id=2, target=members[0].node_id)
    )
    assert [type(o.message) for o in out] == [GossipProbeAck]
    assert out[0].node_id == members[1].node_id and out[0].address == "node1:7700"


def test_leave_message_needs_the_leaving_flag() -> None:
    members = _members(2, now=0.0)
    members[0].handle(0.0, None, GossipLeave(record=_record(1)))
    assert members[0].state_of(members[1].node_id) == "alive"
    assert members[0].statistics().invalid_messages_dropped == 1


def test_sync_answer_contains_the_whole_view() -> None:
    members = _members(4, now=0.0)
    out = members[0].handle(
        0.0,
        members[1].node_id,
        GossipSync(
            sync_id=7,
            join=True,
            updates=(MemberUpdate(record=members[1].self_record, state="alive"),),
        ),
    )
    replies = [o.message for o in out]
    assert all(isinstance(r, GossipSyncReply) and r.sync_id == 7 for r in replies)
    ids = {u.record.node_id for r in replies if isinstance(r, GossipSyncReply) for u in r.updates}
    assert ids == {m.node_id for m in members}


# --- who said what: signed claims, the suspicion period, false accusers ----------------------


def _claim(
    subject: MemberRecord, reporter: int, state: str, *, signer: int | None = None
) -> MemberUpdate:
    """``reporter``'s claim that ``subject`` is ``state``, signed by ``signer`` (a forger)
    or by the reporter itself."""
    key = _key(reporter if signer is None else signer)
    return MemberUpdate(
        record=subject,
        state=state,
        reporter=bytes(_key(reporter).verify_key),
        proof=sign_claim(key, subject.node_id, subject.incarnation, state),
    )


def _suspicion_bounds(config: GossipConfig, members: int) -> tuple[float, float]:
    minimum = config.suspicion_mult * max(1.0, math.log10(members)) * config.probe_interval_s
    return minimum, config.suspicion_max_timeout_mult * minimum


def _say(observer: Membership, now: float, sender: int, *updates: MemberUpdate) -> None:
    observer.handle(now, bytes(_key(sender).verify_key), GossipUpdates(updates=updates))


def test_one_member_cannot_declare_another_dead() -> None:
    """A "dead" claim is one accuser's word: it starts a suspicion, never a death, and a
    claim put in another member's mouth is dropped."""
    observer, _, victim, *_ = _members(6, now=0.0)
    record = victim.self_record
    minimum, maximum = _suspicion_bounds(CFG, 6)
    # Member 1 claims that member 3 saw the victim dead: 3 never signed that.
    _say(observer, 1.0, 1, _claim(record, 3, "dead", signer=1))
    assert observer.state_of(victim.node_id) == "alive"
    assert observer.statistics().forged_claims_dropped == 1
    # Member 1's own dead claim, sent again and again: a suspicion, not a death.
    for step in range(5):
        _say(observer, 1.0 + step * 0.1, 1, _claim(record, 1, "dead"))
        assert observer.state_of(victim.node_id) == "suspect"
    # Past the minimum suspicion period (which would take independent confirmations)
    # but within the maximum: a lone accuser has not had its way yet.
    observer.tick(1.0 + minimum + 1.0)
    assert observer.state_of(victim.node_id) == "suspect"
    assert 1.0 + minimum + 1.0 < 1.0 + maximum
    assert observer.statistics().deaths_declared == 0


def test_confirmations_come_from_independent_signed_members() -> None:
    observer, _, victim, *_ = _members(6, now=0.0)
    record = victim.self_record
    minimum, _ = _suspicion_bounds(CFG, 6)
    stranger = 30  # a valid key, but not a member here
    _say(observer, 1.0, 1, _claim(record, 1, "suspect"))
    _say(
        observer,
        1.1,
        1,
        _claim(record, 3, "suspect", signer=1),  # forged in member 3's name
        _claim(record, 4, "dead", signer=1),  # forged in member 4's name
        _claim(record, stranger, "suspect"),  # signed, by a non-member
        _claim(record, 1, "suspect"),  # the same accuser again
    )
    observer.tick(1.0 + minimum + 0.5)
    assert observer.state_of(victim.node_id) == "suspect"
    assert observer.statistics().forged_claims_dropped == 2
    # Two genuine, independent members: the suspicion shrinks to its minimum (this is
    # what the forgeries above would have bought).
    _say(observer, 1.2, 3, _claim(record, 3, "suspect"))
    _say(observer, 1.3, 4, _claim(record, 4, "dead"))
    observer.tick(1.0 + minimum + 0.6)
    assert observer.state_of(victim.node_id) == "dead"


def test_false_accusers_are_counted_and_rate_limited() -> None:
    config = CFG
    observer, _, victim, *_ = _members(6, config, now=0.0)
    now = 1.0
    for incarnation in range(config.accuser_strike_limit):
        accused = _record(2, incarnation=incarnation)
        _say(observer, now, 1, _claim(accused, 1, "suspect"))
        assert observer.state_of(victim.node_id) == "suspect"
        # The victim refutes: the accusation was false.
        _say(
            observer,
            now + 0.1,
            2,
            MemberUpdate(record=_record(2, incarnation=incarnation + 1), state="alive"),
        )
        assert observer.state_of(victim.node_id) == "alive"
        now += 1.0
    # A fourth accusation from the same reporter is not heard.
    current = _record(2, incarnation=config.accuser_strike_limit)
    _say(observer, now, 1, _claim(current, 1, "suspect"))
    assert observer.state_of(victim.node_id) == "alive"
    stats = observer.statistics()
    assert stats.false_accusations == config.accuser_strike_limit
    assert stats.suspicions_refuted == config.accuser_strike_limit
    assert stats.accusations_rate_limited == 1
    # Only that accuser is limited: another member's claim is heard.
    _say(observer, now + 0.1, 3, _claim(current, 3, "suspect"))
    assert observer.state_of(victim.node_id) == "suspect"
    # Accusing the observer itself is false by definition: refuted and counted.
    own = observer.self_record
    _say(observer, now + 0.2, 1, _claim(own, 1, "dead"))
    assert observer.self_record.incarnation > own.incarnation
    assert observer.statistics().false_accusations == config.accuser_strike_limit + 1
    # An unsigned claim about the observer makes it do nothing.
    before = observer.self_record
    unsigned = MemberUpdate(record=before, state="suspect", reporter=bytes(_key(3).verify_key))
    _say(observer, now + 0.3, 3, unsigned)
    assert observer.self_record == before


# --- speed of light: nothing measured, nothing trusted ---------------------------------------


def test_a_member_never_probed_is_not_trusted_on_location() -> None:
    config = attrs.evolve(CFG, location_check="enforce")
    observer, basel = _members(2, config, locations={0: ZURICH, 1: BASEL}, now=0.0)
    view = observer.member(basel.node_id)
    assert view is not None and view.rtt_ms is None
    assert not view.location_trusted and view.location_plausible
    # Under warn or off an unmeasured location is used as claimed.
    warned, _ = _members(
        2, attrs.evolve(CFG, location_check="warn"), locations={0: ZURICH, 1: BASEL}, now=0.0
    )
    warned_view = warned.member(basel.node_id)
    assert warned_view is not None and warned_view.location_trusted
    version = observer.version
    now = observer.next_deadline()
    probes = [o for o in observer.tick(now) if isinstance(o.message, GossipProbe)]
    assert len(probes) == 1
    (answer,) = basel.handle(now + 0.0005, observer.node_id, probes[0].message)
    observer.handle(now + 0.001, basel.node_id, answer.message)  # 1 ms: 100 km of fibre
    view = observer.member(basel.node_id)
    assert view is not None and view.rtt_ms == pytest.approx(1.0)
    assert view.location_trusted
    assert observer.version > version  # placement caches on it


# --- bounded work ----------------------------------------------------------------------------


def test_a_sync_page_costs_bounded_signature_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    config = attrs.evolve(
        CFG,
        max_verifications_per_message=16,
        peer_verify_burst=64,
        peer_verify_per_s=32.0,
        max_pending_per_peer=150,
    )
    observer, peer, forger = _members(3, config, now=0.0)
    checks: list[int] = [0]
    real = record_is_valid

    def counting(record: MemberRecord) -> bool:
        checks[0] += 1
        return real(record)

    monkeypatch.setattr(swim.verify, "record_is_valid", counting)
    fresh = [_record(100 + i) for i in range(100)]
    page = GossipSync(
        sync_id=1, updates=tuple(MemberUpdate(record=r, state="alive") for r in fresh)
    )
    observer.handle(0.0, peer.node_id, page)
    assert checks[0] <= config.max_verifications_per_message
    assert observer.statistics().updates_pending == 100 - checks[0]
    # Later ticks apply the rest, never more checks per tick than per message, and no
    # faster than the sender's bucket allows.
    now = 0.0
    for _ in range(1000):
        if observer.statistics().updates_pending == 0:
            break
        before = checks[0]
        now = max(now, observer.next_deadline())
        observer.tick(now)
        assert checks[0] - before <= config.max_verifications_per_message
    learned = {v.node_id for v in observer.members()}
    assert {r.node_id for r in fresh} <= learned
    assert checks[0] == 100
    assert now <= (100 - config.peer_verify_burst) / config.peer_verify_per_s + 1.0
    # A flood of fresh forgeries from another peer: its own bucket, and a bounded queue.
    base = _record(230)
    forged = [_forge(base, _key(231), sequence=i, free_bytes=i) for i in range(200)]
    checks[0] = 0
    observer.handle(
        now,
        forger.node_id,
        GossipSync(
            sync_id=2,
            page=1,
            pages=2,
            updates=tuple(MemberUpdate(record=r, state="alive") for r in forged),
        ),
    )
    stats = observer.statistics()
    assert checks[0] <= config.max_verifications_per_message
    assert stats.updates_pending <= config.max_pending_per_peer
    assert stats.updates_over_budget == 200 - checks[0] - stats.updates_pending
    for _ in range(100):
        now += 0.5
        observer.tick(now)
    assert checks[0] <= config.peer_verify_burst + config.peer_verify_per_s * 50 + 1
    assert not {r.node_id for r in forged} & {v.node_id for v in observer.members()}


def test_one_sender_gets_a_full_state_answer_at_most_once_per_interval() -> None:
    observer, peer, *_ = _members(3, now=0.0)
    request = GossipSync(
        sync_id=7, join=True, updates=(MemberUpdate(record=peer.self_record, state="alive"),)
    )
    first = observer.handle(0.0, peer.node_id, request)
    assert any(isinstance(o.message, GossipSyncReply) for o in first)
    again = observer.handle(1.0, peer.node_id, attrs.evolve(request, sync_id=8))
    assert not any(isinstance(o.message, GossipSyncReply) for o in again)
    assert observer.statistics().sync_answers_refused == 1
    later = observer.handle(
        1.0 + CFG.sync_answer_interval_s, peer.node_id, attrs.evolve(request, sync_id=9)
    )
    assert any(isinstance(o.message, GossipSyncReply) for o in later)


def test_a_new_run_of_a_node_is_answered_again_once_within_the_interval() -> None:
    """``gridnode recover`` joins with the node's key, exits, and ``gridnode run`` joins
    again seconds later: the second run knows nobody until a seed answers, so a join
    carrying a newer record of its sender is answered once more (and only once)."""
    observer, peer, *_ = _members(3, now=0.0)
    index = next(i for i in range(50) if bytes(_key(i).verify_key) == peer.node_id)

    def join(sync_id: int, incarnation: int) -> list[Any]:
        record = _record(index, incarnation=incarnation, sequence=incarnation)
        request = GossipSync(
            sync_id=sync_id, join=True, updates=(MemberUpdate(record=record, state="alive"),)
        )
        return [o for o in observer.handle(1.0 + sync_id / 10, peer.node_id, request)]

    first = peer.self_record.incarnation + 1
    assert any(isinstance(o.message, GossipSyncReply) for o in join(1, first))
    assert not any(isinstance(o.message, GossipSyncReply) for o in join(2, first))
    assert any(isinstance(o.message, GossipSyncReply) for o in join(3, first + 5))
    # A member bumping its incarnation on every request gets no more full states.
    assert not any(isinstance(o.message, GossipSyncReply) for o in join(4, first + 9))
    assert observer.statistics().sync_answers_refused == 2


# --- where a node dials --------------------------------------------------------------------


def test_a_probe_request_dials_only_a_known_member_at_its_recorded_address() -> None:
    observer, requester, known = _members(3, now=0.0)
    stranger = bytes(_key(60).verify_key)
    out = observer.handle(
        0.0,
        requester.node_id,
        GossipProbeRequest(probe_id=5, target=stranger, target_address="victim.example:80"),
    )
    assert all(o.address != "victim.example:80" for o in out)
    assert not any(isinstance(o.message, GossipProbe) for o in out)
    nacks = [o.message for o in out if isinstance(o.message, GossipIndirectAck)]
    assert [(n.probe_id, n.reached) for n in nacks] == [(5, False)]
    assert observer.statistics().probe_requests_refused == 1
    out = observer.handle(
        0.1,
        requester.node_id,
        GossipProbeRequest(probe_id=6, target=known.node_id, target_address="victim.example:80"),
    )
    probes = [o for o in out if isinstance(o.message, GossipProbe)]
    assert [(p.node_id, p.address) for p in probes] == [(known.node_id, "node2:7700")]


def test_a_seed_is_known_by_the_node_the_transport_met_there() -> None:
    """A member whose signed record claims the seed's address is not taken for the seed."""
    observer, seed, impostor = _members(3, shared=False, now=0.0)
    observer.join(0.0, ["node1:7700"])
    squatter = sign_record(_key(2), address="node1:7700", sequence=1)
    observer.handle(
        0.5,
        impostor.node_id,
        GossipUpdates(updates=(MemberUpdate(record=squatter, state="alive"),)),
    )
    assert observer.state_of(impostor.node_id) == "alive"
    rejoin = [o for o in observer.join(1.0, ["node1:7700"]) if isinstance(o.message, GossipSync)]
    assert [(o.node_id, o.address) for o in rejoin] == [(None, "node1:7700")]
    observer.seed_reached("node1:7700", seed.node_id)
    rejoin = [o for o in observer.join(2.0, ["node1:7700"]) if isinstance(o.message, GossipSync)]
    assert [(o.node_id, o.address) for o in rejoin] == [(seed.node_id, "node1:7700")]


def test_a_record_of_a_new_member_is_verified_before_it_is_learned() -> None:
    observer, peer = _members(2, now=0.0)
    genuine = _record(50)
    forged = _forge(genuine, _key(51), free_bytes=1 << 50)
    _say(observer, 0.0, 1, MemberUpdate(record=forged, state="alive"))
    observer.handle(
        0.1,
        peer.node_id,
        GossipSync(
            sync_id=1, page=1, pages=2, updates=(MemberUpdate(record=forged, state="alive"),)
        ),
    )
    assert observer.member(genuine.node_id) is None
    assert observer.statistics().forged_records_dropped == 2
    _say(observer, 0.2, 1, MemberUpdate(record=genuine, state="alive"))
    view = observer.member(genuine.node_id)
    assert view is not None and view.record == genuine


def test_a_claim_about_a_newer_incarnation_is_a_new_suspicion() -> None:
    """The subject refuted (incarnation 1) and is suspected again before we heard the
    refutation: what we hold is over, and what we relay must still verify."""
    observer, peer, victim, *_ = _members(6, now=0.0)
    _say(observer, 1.0, 1, _claim(victim.self_record, 1, "suspect"))
    assert observer.state_of(victim.node_id) == "suspect"
    reborn = _record(2, incarnation=1)
    _say(observer, 2.0, 3, _claim(reborn, 3, "suspect"))
    view = observer.member(victim.node_id)
    assert view is not None and view.state == "suspect" and view.record == reborn
    stats = observer.statistics()
    assert stats.suspicions_refuted == 1 and stats.false_accusations == 1
    request = GossipSync(
        sync_id=3, join=True, updates=(MemberUpdate(record=peer.self_record, state="alive"),)
    )
    pages = [o.message for o in observer.handle(2.1, peer.node_id, request)]
    about = [
        u
        for p in pages
        if isinstance(p, GossipSyncReply)
        for u in p.updates
        if u.record.node_id == victim.node_id
    ]
    assert [(u.state, u.record.incarnation) for u in about] == [("suspect", 1)]
    assert all(claim_is_valid(u) for u in about)


# --- from the mutation run (docs/MUTATION.md) -------------------------------------------------


def test_claims_by_non_members_and_dead_members_never_confirm_a_suspicion() -> None:
    """Only members held alive or suspect confirm: any number of validly signed claims
    from strangers, or from a member this node holds dead, leave the suspicion at its
    full length."""
    observer, _, victim, *_ = _members(6, now=0.0)
    record = victim.self_record
    minimum, _ = _suspicion_bounds(CFG, 6)
    _say(observer, 1.0, 1, _claim(record, 1, "suspect"))
    strangers = [_claim(record, 40 + i, "dead") for i in range(8)]
    _say(observer, 1.1, 1, *strangers)
    # The victim itself "confirming" its own suspicion is not an independent word.
    _say(observer, 1.2, 2, _claim(record, 2, "dead", signer=2))
    observer.tick(1.0 + minimum + 0.5)
    assert observer.state_of(victim.node_id) == "suspect"
    assert observer.statistics().deaths_declared == 0


def test_a_claim_is_bound_to_its_subject_incarnation_and_state() -> None:
    subject, other = _record(2), _record(3)
    good = _claim(subject, 1, "suspect")
    assert claim_is_valid(good)
    for moved in (
        attrs.evolve(good, record=other),
        attrs.evolve(good, record=_record(2, incarnation=1)),
        attrs.evolve(good, state="dead"),
        attrs.evolve(good, reporter=bytes(_key(4).verify_key)),
    ):
        assert not claim_is_valid(moved)


def test_signing_payloads_pack_bytes_as_msgpack_bin() -> None:
    """The signed bytes are a wire format: node ids travel as msgpack bin 8 (0xc4 0x20),
    never as str, or another implementation's signatures would not verify here."""
    from protocol._gossip import claim_signing_payload

    record = _record(2)
    node_id = record.node_id
    assert b"\xc4\x20" + node_id in record_signing_payload(record)
    assert claim_signing_payload(node_id, 7, "dead").endswith(
        b"\x93\xc4\x20" + node_id + b"\x07\xa4dead"
    )


def test_a_cached_claim_verdict_does_not_vouch_for_the_same_proof_elsewhere() -> None:
    """The verdict cache is keyed on everything signed: the reporter's genuine proof,
    replayed about another member or another incarnation, is a forgery."""
    observer, _, victim, other, *_ = _members(6, now=0.0)
    genuine = _claim(victim.self_record, 1, "suspect")
    _say(observer, 1.0, 1, genuine)
    assert observer.state_of(victim.node_id) == "suspect"
    replays = [
        attrs.evolve(genuine, record=other.self_record),
        attrs.evolve(genuine, record=_record(2, incarnation=1)),
    ]
    for step, replay in enumerate(replays):
        _say(observer, 1.1 + step / 10, 1, replay)
    assert observer.state_of(other.node_id) == "alive"
    assert observer.statistics().forged_claims_dropped == len(replays)


def test_claim_is_valid_refuses_self_claims_and_malformed_claims() -> None:
    subject = _record(2)
    good = _claim(subject, 1, "dead")
    assert claim_is_valid(good)
    self_claim = _claim(subject, 2, "dead")  # signed by the subject's own key
    assert not claim_is_valid(self_claim)
    # "alive" is the subject's own word, never a claim, even when a reporter signed it.
    from protocol._gossip import claim_signing_payload

    alive = sign(_key(1), claim_signing_payload(subject.node_id, subject.incarnation, "alive"))
    assert not claim_is_valid(attrs.evolve(good, state="alive", proof=alive))


def test_a_dead_member_is_not_brought_back_by_a_later_claim() -> None:
    observer, _, victim, *_ = _members(6, now=0.0)
    record = victim.self_record
    minimum, _ = _suspicion_bounds(CFG, 6)
    for step, reporter in enumerate((1, 3, 4)):
        _say(observer, 1.0 + step / 10, reporter, _claim(record, reporter, "suspect"))
    observer.tick(1.0 + minimum + 0.6)
    assert observer.state_of(victim.node_id) == "dead"
    _say(observer, 1.0 + minimum + 0.7, 5, _claim(record, 5, "suspect"))
    assert observer.state_of(victim.node_id) == "dead"


def test_a_relayed_leaving_record_means_left_whatever_state_it_is_relayed_with() -> None:
    """The owner's signed leaving record outranks the state a relay attaches to it."""
    observer, _, member, *_ = _members(4, now=0.0)
    leaving = _record(2, incarnation=member.self_record.incarnation, sequence=1, leaving=True)
    _say(observer, 1.0, 1, MemberUpdate(record=leaving, state="suspect"))
    assert observer.state_of(member.node_id) == "left"


# --- anti-entropy by digest (Rule 6) ----------------------------------------------------------


def _exchange(
    members: list[Membership], now: float, origin: Membership, first: list[Outgoing]
) -> list[Message]:
    """Deliver ``first`` (sent by ``origin``) and every answer among ``members`` until
    nothing is left."""
    by_id = {m.node_id: m for m in members}
    pending: list[tuple[bytes, Outgoing]] = [(origin.node_id, o) for o in first]
    seen: list[Message] = []
    for _ in range(100):  # bounded: an exchange is four steps
        if not pending:
            break
        src, out = pending.pop(0)
        seen.append(out.message)
        dst = by_id.get(out.node_id) if out.node_id is not None else None
        if dst is None:
            continue
        pending.extend((dst.node_id, o) for o in dst.handle(now, src, out.message))
    return seen


def _updates_in(messages: Iterable[Message]) -> list[MemberUpdate]:
    return [u for m in messages for u in getattr(m, "updates", ())]


def _digest_from_scratch(member: Membership) -> list[int]:
    buckets = [0] * 256
    mine = member.self_record
    entries = [(mine, "left" if mine.leaving else "alive")]
    entries += [(view.record, view.state) for view in member.members()]
    for record, state in entries:
        buckets[record.node_id[0]] ^= entry_hash(
            record.node_id, record.incarnation, record.sequence, state
        )
    return buckets


def test_equal_views_cost_one_digest_and_no_answer() -> None:
    members = _members(40, now=0.0)
    a, b = members[0], members[1]
    messages = _exchange(members, 0.0, a, a.start_digest(0.0, b.node_id))
    assert [type(m) for m in messages] == [GossipDigest]
    full_state = sum(
        encoded_size(GossipSyncReply(sync_id=1, updates=(u,))) for u in a._full_state()
    )
    assert encoded_size(messages[0]) < full_state / 10


@pytest.mark.parametrize("newer_at_initiator", [True, False])
def test_digest_exchange_moves_only_the_records_that_differ(newer_at_initiator: bool) -> None:
    members = _members(40, now=0.0)
    a, b = members[0], members[1]
    fresh = _record(5, sequence=1, city="Basel")
    holder = a if newer_at_initiator else b
    _say(holder, 0.5, 7, MemberUpdate(record=fresh, state="alive"))
    messages = _exchange(members, 1.0, a, a.start_digest(1.0, b.node_id))
    for member in (a, b):
        view = member.member(fresh.node_id)
        assert view is not None and view.record == fresh
    assert not any(isinstance(m, GossipSync) for m in messages)
    # The fresh record travels once; at most the stale copy goes the other way.
    moved = _updates_in(messages)
    assert fresh in [u.record for u in moved]
    assert {u.record.node_id for u in moved} == {fresh.node_id}
    assert len(moved) <= 2
    assert a.digest(8) == b.digest(8)


def test_digest_heals_a_death_and_a_joiner_the_peer_missed() -> None:
    members = _members(30, now=0.0)
    a, b = members[0], members[1]
    newcomer = _record(40)
    _say(a, 0.1, 7, MemberUpdate(record=newcomer, state="alive"))
    _say(b, 0.1, 7, _claim(members[9].self_record, 7, "suspect"))
    messages = _exchange(members, 0.2, a, a.start_digest(0.2, b.node_id))
    assert b.state_of(newcomer.node_id) == "alive"
    assert a.state_of(members[9].node_id) == "suspect"
    assert len(_updates_in(messages)) <= 4


def test_incremental_digest_matches_the_view_recomputed_from_scratch() -> None:
    config = attrs.evolve(CFG, dead_reap_s=5.0)
    observer, *others = _members(12, config, now=0.0)
    _say(observer, 0.1, 1, MemberUpdate(record=_record(20), state="alive"))
    _say(observer, 0.2, 1, MemberUpdate(record=_record(3, sequence=4), state="alive"))
    _say(observer, 0.3, 1, _claim(others[4].self_record, 1, "suspect"))
    _say(observer, 0.4, 2, MemberUpdate(record=_record(6, sequence=1, leaving=True), state="left"))
    observer.update_self(0.5, free_bytes=123)
    assert observer.digest(8) == _digest_from_scratch(observer)
    # The suspicion runs out into a death, then the dead and the left are reaped.
    for step in range(1, 120):
        observer.tick(0.5 + step * 0.5)
        assert observer.digest(8) == _digest_from_scratch(observer)
    assert observer.state_of(others[4].node_id) is None
    assert observer.state_of(others[5].node_id) is None
    folded = observer.digest(3)
    fine = observer.digest(8)
    assert folded == [functools.reduce(operator.xor, fine[i * 32 : (i + 1) * 32]) for i in range(8)]


def test_records_are_sent_only_for_an_answered_digest_and_only_once() -> None:
    members = _members(40, now=0.0)
    a, b = members[0], members[1]
    everything = b"".join(
        entry_hash(r.node_id, r.incarnation, r.sequence, "alive").to_bytes(8, "big")
        for r in (m.self_record for m in members)
    )
    asking = GossipDigestRecords(sync_id=5, bits=0, buckets=b"\x00", want=everything)
    assert a.handle(0.0, b.node_id, asking) == []
    assert a.statistics().invalid_messages_dropped == 1
    # b now sends a digest that differs (it learnt one record) and gets an answer; the
    # records it then asks for come once, and only those it asked for.
    _say(b, 0.1, 7, MemberUpdate(record=_record(5, sequence=1), state="alive"))
    (digest,) = b.start_digest(0.2, a.node_id)
    assert isinstance(digest.message, GossipDigest)
    (reply,) = a.handle(0.2, b.node_id, digest.message)
    assert isinstance(reply.message, GossipDigestReply)
    wanted = attrs.evolve(
        asking,
        sync_id=digest.message.sync_id,
        bits=reply.message.bits,
        buckets=reply.message.buckets,
        want=entry_hash(members[5].node_id, 0, 0, "alive").to_bytes(8, "big"),
    )
    answers = a.handle(0.3, b.node_id, wanted)
    assert [u.record for u in _updates_in(o.message for o in answers)] == [members[5].self_record]
    assert a.handle(0.4, b.node_id, wanted) == []


def test_a_digest_cannot_suppress_or_forge_records() -> None:
    members = _members(40, now=0.0)
    a, b = members[0], members[1]
    genuine = _record(5, sequence=3)
    _say(a, 0.1, 7, MemberUpdate(record=genuine, state="alive"))
    # b lies: it claims an entry for a version newer than anything signed, and pushes
    # a forged record; a keeps the genuine record, drops the forgery and still answers.
    forged = _forge(genuine, _key(9), sequence=9, city="nowhere")
    (digest,) = b.start_digest(0.2, a.node_id)
    assert isinstance(digest.message, GossipDigest)
    (reply,) = a.handle(0.2, b.node_id, digest.message)
    assert isinstance(reply.message, GossipDigestReply)
    push = GossipDigestRecords(
        sync_id=digest.message.sync_id,
        bits=reply.message.bits,
        buckets=reply.message.buckets,
        updates=(MemberUpdate(record=forged, state="alive"),),
        want=entry_hash(genuine.node_id, 0, 99, "alive").to_bytes(8, "big"),
    )
    answers = a.handle(0.3, b.node_id, push)
    assert _updates_in(o.message for o in answers) == []
    view = a.member(genuine.node_id)
    assert view is not None and view.record == genuine
    assert a.statistics().forged_records_dropped == 1
    # A digest answer is rate-limited per sender like a full state.
    again = a.handle(0.4, b.node_id, attrs.evolve(digest.message, sync_id=99))
    assert again == [] and a.statistics().sync_answers_refused == 1


@pytest.mark.parametrize(("members", "relayed"), [(10, True), (80, False)])
def test_content_refreshes_are_relayed_only_in_a_small_grid(members: int, relayed: bool) -> None:
    """Rule 5b: above refresh_relay_max_members a free-space change spreads by digest."""
    assert (members <= CFG.refresh_relay_max_members) is relayed
    observer, *_ = _members(members, now=0.0)
    assert observer.statistics().broadcasts_pending == 0
    _say(observer, 0.1, 7, MemberUpdate(record=_record(5, sequence=1, city="Bern"), state="alive"))
    view = observer.member(_record(5).node_id)
    assert view is not None and view.record.city == "Bern"
    assert observer.statistics().broadcasts_pending == (1 if relayed else 0)
    # A new incarnation (a refutation, a restart) is news for everyone, in any grid.
    _say(observer, 0.2, 7, MemberUpdate(record=_record(6, incarnation=1), state="alive"))
    assert observer.statistics().broadcasts_pending == (2 if relayed else 1)


def test_a_joiner_does_not_relay_the_view_it_was_given() -> None:
    """Rule 5c: the members of a full state are known to its sender's grid already."""
    members = _members(30, now=0.0)
    seed = members[0]
    joiner = Membership(
        signing_key=_key(40), self_record=_record(40), config=CFG, rng=random.Random(40), now=0.0
    )
    (request,) = joiner.join(0.0, [seed.self_record.address])
    assert isinstance(request.message, GossipSync) and request.message.join
    pages = seed.handle(0.0, joiner.node_id, request.message)
    for page in pages:
        joiner.handle(0.1, seed.node_id, page.message)
    assert {v.node_id for v in joiner.alive_members()} == {m.node_id for m in members}
    assert joiner.statistics().broadcasts_pending == 1  # itself, announced by join()
    # The seed learnt the joiner from its request: that is news, and it is relayed.
    assert seed.statistics().broadcasts_pending == 1
