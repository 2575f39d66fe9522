"""The gossip state machine at scale: 1,000 to 10,000 members on a simulated network.

A discrete-event simulation (a priority queue of deliveries and timer wake-ups; no
sockets, no trio) drives one ``gridnode.logic.swim.Membership`` per member, the very
class the gossip actor runs.  Links have a few milliseconds of latency with jitter and
optional loss; a crashed member silently drops what it is sent (a host that is down,
the slow case for failure detection: nothing refuses the connection).

Memory: every member starts from one ``SharedView`` of the initial records and one
signature cache, so 10,000 members do not hold 10,000 views of 10,000 records each.

What it measures (simulated time, memberlist's default intervals):

* a join through one seed: time and gossip rounds until 99.99 % and 100 % of the
  members know the newcomer;
* a crash: time from the crash to the first "dead" declaration, then from that
  declaration until 99.99 % and 100 % of the members hold the member as dead;
* steady state: messages and bytes per member per second, by message kind.

The location check is off: every simulated member answers within a few ms while
claiming a random location, so "enforce" would (rightly) distrust most of them; the
output says so.

Run ``python -m simulations.gossip_sim [--members N] [--quick]``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import resource
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs
import nacl.signing

from gridnode.logic.swim import GossipConfig, Membership, Outgoing, SharedView
from protocol import MemberRecord, sign_record

__all__ = ["SimConfig", "SimNetwork", "build_members", "main", "run", "simulate"]

_DELIVER: Final = 0
_TICK: Final = 1


@attrs.frozen
class SimConfig:
    members: int = 1000
    #: One-way latency: base plus uniform jitter.
    latency_s: float = 0.002
    jitter_s: float = 0.003
    loss: float = 0.0
    seed: int = 1
    gossip: GossipConfig = attrs.field(factory=lambda: GossipConfig(location_check="off"))
    warmup_s: float = 5.0
    steady_window_s: float = 10.0
    #: Give up waiting for a join or a death to spread after this long.
    max_wait_s: float = 120.0


@attrs.define
class _Watch:
    """Who holds ``node_id`` in one of ``states``, and since when."""

    node_id: bytes
    states: frozenset[str]
    since: dict[int, float] = attrs.field(factory=dict)


class SimNetwork:
    """Members, a clock and a queue of events; ``run_until`` advances them."""

    def __init__(self, members: list[Membership], config: SimConfig, rng: random.Random) -> None:
        self.members = members
        self.config = config
        self.rng = rng
        self.now = 0.0
        self.events_processed = 0
        self.crashed: set[int] = set()
        self.index_of: dict[bytes, int] = {m.node_id: i for i, m in enumerate(members)}
        self.by_address: dict[str, int] = {m.self_record.address: i for i, m in enumerate(members)}
        self.watches: list[_Watch] = []
        self._queue: list[tuple[float, int, int, int, int, Any]] = []
        self._seq = 0
        self._scheduled: list[float] = [math.inf] * len(members)
        for i in range(len(members)):
            self._reschedule(i)

    def add_member(self, member: Membership) -> int:
        index = len(self.members)
        self.members.append(member)
        self.index_of[member.node_id] = index
        self.by_address[member.self_record.address] = index
        self._scheduled.append(math.inf)
        self._reschedule(index)
        return index

    def watch(self, node_id: bytes, states: Iterable[str]) -> _Watch:
        entry = _Watch(node_id=node_id, states=frozenset(states))
        self.watches.append(entry)
        for i in range(len(self.members)):
            self._observe(i)
        return entry

    def send(self, src: int, outgoing: Iterable[Outgoing]) -> None:
        cfg = self.config
        rand = self.rng.random
        for out in outgoing:
            dst = self.index_of.get(out.node_id) if out.node_id is not None else None
            if dst is None:
                dst = self.by_address.get(out.address)
            if dst is None or (cfg.loss and rand() < cfg.loss):
                continue
            delay = cfg.latency_s + rand() * cfg.jitter_s
            self._push(self.now + delay, _DELIVER, dst, src, out.message)

    def crash(self, index: int) -> None:
        self.crashed.add(index)

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> None:
        queue = self._queue
        members = self.members
        crashed = self.crashed
        # Bounded: every event either moves the clock forward or is one of the finitely
        # many messages already queued; ``end`` caps the clock.
        while queue and queue[0][0] <= end:
            when, _, kind, dst, src, payload = heapq.heappop(queue)
            self.now = when
            if dst in crashed:
                continue
            member = members[dst]
            if kind == _TICK:
                if self._scheduled[dst] != when:
                    continue
                self._scheduled[dst] = math.inf
                self.send(dst, member.tick(when))
            else:
                self.send(dst, member.handle(when, members[src].node_id, payload))
            self.events_processed += 1
            self._reschedule(dst)
            if self.watches:
                self._observe(dst)
                if stop is not None and stop():
                    return
        self.now = max(self.now, end)

    def _observe(self, index: int) -> None:
        member = self.members[index]
        for entry in self.watches:
            if index not in entry.since and member.state_of(entry.node_id) in entry.states:
                entry.since[index] = self.now

    def _push(self, when: float, kind: int, dst: int, src: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, kind, dst, src, payload))

    def _reschedule(self, index: int) -> None:
        deadline = max(self.members[index].next_deadline(), self.now)
        if deadline < self._scheduled[index]:
            self._scheduled[index] = deadline
            self._push(deadline, _TICK, index, index, None)


def _record_for(key: nacl.signing.SigningKey, index: int, rng: random.Random) -> MemberRecord:
    return sign_record(
        key,
        address=f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}:7700",
        lat=rng.uniform(35.0, 60.0),
        lon=rng.uniform(-10.0, 30.0),
        city="",
        allocated_bytes=1 << 40,
        free_bytes=rng.randrange(1 << 30, 1 << 40),
        bandwidth_bps=100_000_000,
        labels=(f"site=s{index % 50}",),
    )


def build_members(
    count: int, config: GossipConfig, rng: random.Random
) -> tuple[list[Membership], dict[bytes, bool]]:
    """``count`` members that all start knowing each other (one shared view)."""
    keys = [nacl.signing.SigningKey(rng.randbytes(32)) for _ in range(count)]
    records = [_record_for(key, i, rng) for i, key in enumerate(keys)]
    cache: dict[bytes, bool] = {}
    shared = SharedView(records, verify_cache=cache)
    members = [
        Membership(
            signing_key=key,
            self_record=record,
            config=config,
            rng=random.Random(rng.randrange(1 << 62)),
            now=0.0,
            shared_view=shared,
            verify_cache=cache,
        )
        for key, record in zip(keys, records, strict=True)
    ]
    return members, cache


def _totals(members: Iterable[Membership]) -> tuple[dict[str, int], dict[str, int]]:
    messages: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for member in members:
        stats = member.statistics()
        for kind, n in stats.messages_sent.items():
            messages[kind] = messages.get(kind, 0) + n
        for kind, n in stats.bytes_sent.items():
            sizes[kind] = sizes.get(kind, 0) + n
    return messages, sizes


def _quantile_time(since: dict[int, float], population: int, fraction: float) -> float | None:
    """When ``fraction`` of ``population`` members had been reached, if they were."""
    need = max(1, math.ceil(fraction * population - 1e-9))
    if len(since) < need:
        return None
    return sorted(since.values())[need - 1]


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def simulate(config: SimConfig) -> dict[str, Any]:
    """One full scenario (warm-up, steady state, a join, a crash) for ``config.members``."""
    wall_start = time.perf_counter()
    rng = random.Random(config.seed)
    gossip = config.gossip
    members, cache = build_members(config.members, gossip, rng)
    net = SimNetwork(members, config, rng)
    setup_wall = time.perf_counter() - wall_start
    count = config.members

    # Steady state.
    net.run_until(config.warmup_s)
    before_msgs, before_bytes = _totals(members)
    net.run_until(config.warmup_s + config.steady_window_s)
    after_msgs, after_bytes = _totals(members)
    window = config.steady_window_s
    steady_msgs = {k: after_msgs.get(k, 0) - before_msgs.get(k, 0) for k in after_msgs}
    steady_bytes = {k: after_bytes.get(k, 0) - before_bytes.get(k, 0) for k in after_bytes}
    per = count * window
    steady = {
        "window_s": window,
        "messages_per_member_per_s": round(sum(steady_msgs.values()) / per, 3),
        "bytes_per_member_per_s": round(sum(steady_bytes.values()) / per, 1),
        "messages_per_member_per_s_by_kind": {
            k: round(v / per, 4) for k, v in sorted(steady_msgs.items()) if v
        },
        "bytes_per_member_per_s_by_kind": {
            k: round(v / per, 1) for k, v in sorted(steady_bytes.items()) if v
        },
    }

    # A join through one seed.
    join_key = nacl.signing.SigningKey(rng.randbytes(32))
    joiner = Membership(
        signing_key=join_key,
        self_record=_record_for(join_key, count, rng),
        config=gossip,
        rng=random.Random(rng.randrange(1 << 62)),
        now=net.now,
        verify_cache=cache,
    )
    joiner_index = net.add_member(joiner)
    seed = members[rng.randrange(count)]
    join_at = net.now
    knows_joiner = net.watch(joiner.node_id, ("alive",))
    net.send(joiner_index, joiner.join(join_at, [seed.self_record.address]))
    others = count  # everyone but the joiner itself
    net.run_until(
        join_at + config.max_wait_s,
        stop=lambda: len(knows_joiner.since) >= others,
    )
    knows_joiner.since.pop(joiner_index, None)
    join_view = len(joiner.alive_members())
    join_all = _quantile_time(knows_joiner.since, others, 1.0)
    join_9999 = _quantile_time(knows_joiner.since, others, 0.9999)
    join_99 = _quantile_time(knows_joiner.since, others, 0.99)

    def after(t: float | None, origin: float) -> float | None:
        return None if t is None else t - origin

    def rounds(t: float | None) -> float | None:
        return None if t is None else round(t / gossip.gossip_interval_s, 1)

    join = {
        "members_knowing": len(knows_joiner.since),
        "of": others,
        "p99_s": _rounded(after(join_99, join_at)),
        "p9999_s": _rounded(after(join_9999, join_at)),
        "all_s": _rounded(after(join_all, join_at)),
        "p9999_rounds": rounds(after(join_9999, join_at)),
        "all_rounds": rounds(after(join_all, join_at)),
        "joiner_view_alive": join_view,
    }
    net.watches.remove(knows_joiner)

    # A crash: nothing answers for the victim any more.
    net.run_until(net.now + 2.0)
    victim_index = rng.randrange(count)
    while members[victim_index] is seed:
        victim_index = rng.randrange(count)
    victim = members[victim_index]
    crash_at = net.now
    net.crash(victim_index)
    survivors = count + 1 - 1  # the joiner counts, the victim does not
    knows_dead = net.watch(victim.node_id, ("dead",))
    suspects = net.watch(victim.node_id, ("suspect", "dead"))
    net.run_until(
        crash_at + config.max_wait_s + 120.0,
        stop=lambda: len(knows_dead.since) >= survivors,
    )
    first_dead = min(knows_dead.since.values()) if knows_dead.since else None
    dead_all = _quantile_time(knows_dead.since, survivors, 1.0)
    dead_9999 = _quantile_time(knows_dead.since, survivors, 0.9999)
    dead_99 = _quantile_time(knows_dead.since, survivors, 0.99)
    declared = sum(m.statistics().deaths_declared for m in members)
    # The suspicion spreads by gossip alone (its timers have not run out yet), so it
    # is the cleanest measure of dissemination; "dead" also spreads by gossip but
    # every member that heard the suspicion runs its own timer as well.
    first_suspect = min(suspects.since.values()) if suspects.since else None
    suspect_all = _quantile_time(suspects.since, survivors, 1.0)
    suspect_9999 = _quantile_time(suspects.since, survivors, 0.9999)

    spread_9999 = None if first_dead is None else after(dead_9999, first_dead)
    spread_all = None if first_dead is None else after(dead_all, first_dead)
    death = {
        "members_knowing": len(knows_dead.since),
        "of": survivors,
        "crash_to_first_dead_s": _rounded(after(first_dead, crash_at)),
        "first_dead_to_p99_s": _rounded(None if first_dead is None else after(dead_99, first_dead)),
        "first_dead_to_p9999_s": _rounded(spread_9999),
        "first_dead_to_all_s": _rounded(spread_all),
        "first_dead_to_p9999_rounds": rounds(spread_9999),
        "first_dead_to_all_rounds": rounds(spread_all),
        "crash_to_all_s": _rounded(after(dead_all, crash_at)),
        "crash_to_first_suspect_s": _rounded(after(first_suspect, crash_at)),
        "first_suspect_to_p9999_suspect_s": _rounded(
            None if first_suspect is None else after(suspect_9999, first_suspect)
        ),
        "first_suspect_to_all_suspect_s": _rounded(
            None if first_suspect is None else after(suspect_all, first_suspect)
        ),
        "first_suspect_to_all_suspect_rounds": rounds(
            None if first_suspect is None else after(suspect_all, first_suspect)
        ),
        "independent_dead_declarations": declared,
    }
    forged = sum(m.statistics().forged_records_dropped for m in members)
    return {
        "members": count,
        "latency_ms": [config.latency_s * 1000, (config.latency_s + config.jitter_s) * 1000],
        "loss": config.loss,
        "gossip_config": attrs.asdict(gossip),
        "location_check": "off: simulated members answer within a few ms from random "
        "locations, which the speed-of-light check would rightly reject",
        "steady": steady,
        "join": join,
        "death": death,
        "forged_records_dropped": forged,
        "simulated_s": round(net.now, 3),
        "events": net.events_processed,
        "setup_wall_s": round(setup_wall, 2),
        "wall_s": round(time.perf_counter() - wall_start, 2),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """1,000 members (quick) or 1,000 and 10,000 members."""
    sizes = [1000] if quick else [1000, 10000]
    return {"runs": [simulate(SimConfig(members=n)) for n in sizes]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--members", type=int, action="append", help="members (repeatable)")
    parser.add_argument("--quick", action="store_true", help="1,000 members only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loss", type=float, default=0.0, help="message loss ratio")
    args = parser.parse_args(argv)
    if args.members:
        result: dict[str, Any] = {
            "runs": [
                simulate(SimConfig(members=n, seed=args.seed, loss=args.loss)) for n in args.members
            ]
        }
    else:
        result = run(quick=args.quick)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
