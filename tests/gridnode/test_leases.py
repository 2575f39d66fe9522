"""Leases on the holder's side (issue 10): a packet still leased is never deleted, and a
packet no one leases is reclaimed within its grace, across crashes and restarts.

The property test drives a real packet directory and a real holdings file through random
sequences of store, renew, release, clock steps, collector runs, crashes between a write
and its tag, and restarts (everything reopened from disk), against a model of who holds
what until when."""

from __future__ import annotations

import threading
from pathlib import Path

import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridnode.storage.collector import collect
from gridnode.storage.holdings import Holdings
from gridnode.storage.packets import PacketDirectory

GRACE = 5.0
PACKETS = [bytes([i]) * (200 + i) for i in range(6)]
IDS = [blake3.blake3(p).digest() for p in PACKETS]
TAGS = [bytes([0xA0 + i]) * 32 for i in range(3)]


class Holder:
    """A holder's storage as the packet store drives it: put then tag, under one lock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.open()

    def open(self) -> None:
        self.packets = PacketDirectory(self.root / "storage", allocation_bytes=10_000_000)
        self.holdings = Holdings(self.root / "holdings.sqlite")

    def store(self, index: int, tag: bytes, expires: float | None) -> None:
        with self.lock:
            self.packets.put(IDS[index], PACKETS[index])
            self.holdings.add_tags([(IDS[index], tag)], expires=expires)

    def release(self, index: int, tag: bytes) -> None:
        with self.lock:
            present, left = self.holdings.remove_tag(IDS[index], tag)
            if present and left == 0:
                self.packets.delete(IDS[index])

    def on_disk(self) -> set[bytes]:
        return set(self.packets.iter_ids())


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("store"),
            st.integers(0, 5),
            st.integers(0, 2),
            st.one_of(st.none(), st.floats(1, 40)),
        ),
        st.tuples(st.just("renew"), st.integers(0, 5), st.integers(0, 2), st.floats(1, 40)),
        st.tuples(st.just("release"), st.integers(0, 5), st.integers(0, 2), st.none()),
        st.tuples(st.just("tick"), st.floats(0.5, 30), st.none(), st.none()),
        st.tuples(st.just("collect"), st.booleans(), st.none(), st.none()),
        st.tuples(st.just("crash_untagged"), st.integers(0, 5), st.none(), st.none()),
        st.tuples(st.just("restart"), st.none(), st.none(), st.none()),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
def test_a_leased_packet_is_never_deleted_and_an_unleased_one_goes_within_its_grace(
    tmp_path_factory: object, ops: list[tuple[object, ...]]
) -> None:
    root = tmp_path_factory.mktemp("holder")  # type: ignore[attr-defined]
    holder = Holder(root)
    now = 1_000_000.0
    #: The model: packet index -> tag -> lease end (None: held without a lease).
    leases: dict[int, dict[bytes, float | None]] = {}
    #: Packets written with no tag (a crash before the tag), and since when.
    untagged: dict[int, float] = {}

    def live(index: int, at: float) -> bool:
        """Whether some tag still holds the packet at ``at`` (the collector's view)."""
        return any(end is None or end >= at for end in leases.get(index, {}).values())

    for op, a, b, c in ops:
        if op == "store":
            assert isinstance(a, int) and isinstance(b, int)
            end = None if c is None else now + float(c)  # type: ignore[arg-type]
            holder.store(a, TAGS[b], end)
            tags = leases.setdefault(a, {})
            if TAGS[b] not in tags:
                tags[TAGS[b]] = end
            elif tags[TAGS[b]] is not None and end is not None:
                tags[TAGS[b]] = max(tags[TAGS[b]], end)  # type: ignore[type-var]
            untagged.pop(a, None)
        elif op == "renew":
            assert isinstance(a, int) and isinstance(b, int) and isinstance(c, float)
            (answer,) = holder.holdings.renew([(IDS[a], TAGS[b])], now + c)
            tags = leases.get(a, {})
            if TAGS[b] in tags:
                old = tags[TAGS[b]]
                tags[TAGS[b]] = max(old or 0.0, now + c)
                assert answer == tags[TAGS[b]]
            else:
                assert answer == 0  # a renewal never creates a lease
        elif op == "release":
            assert isinstance(a, int) and isinstance(b, int)
            holder.release(a, TAGS[b])
            tags = leases.get(a, {})
            tags.pop(TAGS[b], None)
            if not tags and a in leases:
                del leases[a]
        elif op == "tick":
            assert isinstance(a, float)
            now += a
        elif op == "collect":
            assert isinstance(a, bool)
            collect(holder.packets, holder.holdings, holder.lock, now, grace_s=GRACE, sweep_disk=a)
            for index in list(leases):
                tags = leases[index]
                for tag, end in list(tags.items()):
                    if end is not None and end < now - GRACE:
                        del tags[tag]
                if not tags:
                    del leases[index]
            if a:
                for index, since in list(untagged.items()):
                    if index in leases:
                        del untagged[index]
                    elif since < 0:  # first seen by this sweep
                        untagged[index] = now
                    elif since < now - GRACE:
                        del untagged[index]
        elif op == "crash_untagged":
            assert isinstance(a, int)
            if a not in leases and a not in untagged:
                holder.packets.put(IDS[a], PACKETS[a])  # the tag never got written
                untagged[a] = -1.0  # not yet seen by a sweep
        elif op == "restart":
            holder.holdings._db.close()
            holder.open()
        on_disk = holder.on_disk()
        # Never deleted while leased: every packet some tag holds (now or within the
        # grace) is on disk.
        for index in leases:
            assert IDS[index] in on_disk, (op, index, leases[index], now)
        # Nothing kept that the model says is gone: on disk only what a tag holds or what
        # waits untagged for its grace.
        assert on_disk <= {IDS[i] for i in leases} | {IDS[i] for i in untagged}
    # Every packet no one leases goes within its grace: two sweeps a grace apart take
    # expired leases and untagged packets alike.
    for step in (GRACE * 0.1, GRACE + 1):
        now += step
        collect(holder.packets, holder.holdings, holder.lock, now, grace_s=GRACE)
    kept = {IDS[i] for i in leases if live(i, now - GRACE)}
    assert holder.on_disk() == kept


def test_a_tag_from_a_peer_that_cannot_renew_never_runs_out_until_renewed(
    tmp_path: Path,
) -> None:
    holder = Holder(tmp_path)
    holder.store(0, TAGS[0], None)
    holder.store(1, TAGS[0], 100.0)
    collect(holder.packets, holder.holdings, holder.lock, 10_000.0, grace_s=GRACE)
    assert holder.on_disk() == {IDS[0]}
    # A renewal turns it into a lease (whoever renews keeps renewing) ...
    assert holder.holdings.renew([(IDS[0], TAGS[0])], 20_000.0) == [20_000.0]
    collect(holder.packets, holder.holdings, holder.lock, 20_000.0 + GRACE - 1, grace_s=GRACE)
    assert holder.on_disk() == {IDS[0]}
    # ... which runs out like any other.
    done = collect(
        holder.packets, holder.holdings, holder.lock, 20_000.0 + GRACE + 1, grace_s=GRACE
    )
    assert holder.on_disk() == set()
    assert done.leases_expired == 1 and done.packets_reclaimed == 1
    assert done.bytes_reclaimed == len(PACKETS[0])


def test_a_source_whose_leases_all_ran_out_is_charged_nothing_more(tmp_path: Path) -> None:
    holder = Holder(tmp_path)
    source = b"s" * 32
    holder.holdings.add_tags([(IDS[2], TAGS[1])], [(source, 1000)], expires=500.0)
    assert holder.holdings.source_bytes(source) == 1000
    holder.holdings.renew([(IDS[2], TAGS[1])], 900.0, source=source)
    holder.holdings.expire(800.0)
    assert holder.holdings.source_bytes(source) == 1000  # its lease runs to 900
    holder.holdings.expire(901.0)
    assert holder.holdings.source_bytes(source) == 0
