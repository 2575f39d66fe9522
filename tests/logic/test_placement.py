"""Placement under capacity, liveness, trust, proximity and distinct-label rules."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Collection, Sequence

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridnode.logic.distance import Band, haversine_km, parse_band
from gridnode.logic.placement import (
    Member,
    PlacementError,
    PlacementRules,
    PlacementView,
    Source,
    place_chunk,
)

KEY = b"k" * 32
ZURICH = (47.3769, 8.5417)
PACKET = 262_144


def node(i: int) -> bytes:
    return i.to_bytes(4, "big") * 8


SOURCE_ID = b"\xff" * 32


def source_at(lat: float | None, lon: float | None) -> Source:
    return Source(node_id=SOURCE_ID, lat=lat, lon=lon)


def member(
    i: int,
    lat: float | None = ZURICH[0],
    lon: float | None = ZURICH[1],
    free: int = 1 << 30,
    **kwargs: object,
) -> Member:
    return Member(node_id=node(i), lat=lat, lon=lon, free_bytes=free, **kwargs)  # type: ignore[arg-type]


def point_north(km: float, origin: tuple[float, float] = ZURICH) -> tuple[float, float]:
    """A point km due north of origin (one degree of latitude is 111.195 km on our sphere)."""
    return origin[0] + km / 111.195, origin[1]


# -- the rules, restated independently for checking ----------------------------


def member_ok(
    m: Member,
    source: Source,
    rules: PlacementRules,
    packet_bytes: int,
    exclude: Collection[bytes],
) -> bool:
    if m.node_id == source.node_id or not m.alive or m.free_bytes < packet_bytes:
        return False
    if m.node_id in exclude:
        return False
    labels = dict(m.labels)
    if any(name not in labels for name in rules.distinct):
        return False
    if rules.uses_distance:
        if m.lat is None or m.lon is None or not m.location_trusted:
            return False
        if not rules.backup_proximity.is_unbounded:
            if source.lat is None or source.lon is None:
                return False
            km = haversine_km(source.lat, source.lon, m.lat, m.lon)
            if not rules.backup_proximity.contains(km):
                return False
    return True


def pair_ok(a: Member, b: Member, rules: PlacementRules) -> bool:
    if not rules.packet_proximity.is_unbounded:
        assert a.lat is not None and a.lon is not None and b.lat is not None and b.lon is not None
        if not rules.packet_proximity.contains(haversine_km(a.lat, a.lon, b.lat, b.lon)):
            return False
    la, lb = dict(a.labels), dict(b.labels)
    return all(la[name] != lb[name] for name in rules.distinct)


def assert_valid(
    chosen: Sequence[bytes],
    members: Sequence[Member],
    source: Source,
    rules: PlacementRules,
    n: int,
    packet_bytes: int,
    exclude: Collection[bytes] = (),
) -> None:
    by_id = {m.node_id: m for m in members}
    assert len(chosen) == n
    assert len(set(chosen)) == n
    picked = [by_id[i] for i in chosen]
    for m in picked:
        assert member_ok(m, source, rules, packet_bytes, exclude)
    for a, b in itertools.combinations(picked, 2):
        assert pair_ok(a, b, rules)


def brute_force_exists(
    members: Sequence[Member],
    source: Source,
    rules: PlacementRules,
    n: int,
    packet_bytes: int,
    exclude: Collection[bytes],
) -> bool:
    ok = [m for m in members if member_ok(m, source, rules, packet_bytes, exclude)]
    return any(
        all(pair_ok(a, b, rules) for a, b in itertools.combinations(subset, 2))
        for subset in itertools.combinations(ok, n)
    )


# -- strategies -------------------------------------------------------------------

# Coordinates within a box around Europe, so that bands of tens to thousands of km bite.
locations = st.one_of(
    st.none(),
    st.tuples(st.floats(35.0, 62.0), st.floats(-10.0, 30.0)),
)
# Open more often than not, so that cases with one or two bounds stay feasible often enough.
bounds = st.one_of(st.none(), st.none(), st.integers(0, 3000).map(float))


@st.composite
def bands(draw: st.DrawFn) -> Band:
    low, high = draw(bounds), draw(bounds)
    if low is not None and high is not None and low > high:
        low, high = high, low
    return Band(min_km=low, max_km=high)


BANDS = bands()
PACKET_SIZES = st.sampled_from([1, 100, 5000])
# Built once: constructing strategies inside the composite costs more than the test.
MEMBER_FIELDS = st.tuples(
    locations,
    st.sampled_from([None, "a", "b", "c", "d"]),  # site
    st.sampled_from([None, "x", "y", "z"]),  # rack
    st.sampled_from([0, 1000, 10_000, 1 << 30, 1 << 40]),  # free bytes
    st.sampled_from([True, True, True, False]),  # alive
    st.sampled_from([True, True, True, False]),  # location trusted
)
MEMBER_LISTS = {9: st.lists(MEMBER_FIELDS, min_size=3, max_size=9)}
DISTINCT = st.sampled_from([(), (), ("site",), ("rack",), ("site", "rack")])
SOURCE_LOCATIONS = st.one_of(st.just(ZURICH), locations)
CHUNK_IDS = st.binary(min_size=1, max_size=16)

Scenario = tuple[list[Member], Source, PlacementRules, int, int, frozenset[bytes], bytes]


@st.composite
def scenarios(draw: st.DrawFn, max_members: int, max_n: int) -> Scenario:
    members = []
    for i, (location, site, rack, free, alive, trusted) in enumerate(
        draw(MEMBER_LISTS[max_members])
    ):
        labels = tuple(
            (name, value) for name, value in (("site", site), ("rack", rack)) if value is not None
        )
        members.append(
            Member(
                node_id=node(i),
                lat=None if location is None else location[0],
                lon=None if location is None else location[1],
                free_bytes=free,
                alive=alive,
                location_trusted=trusted,
                labels=labels,
            )
        )
    source_location = draw(SOURCE_LOCATIONS)
    source = source_at(*(source_location or (None, None)))
    source_in_view = draw(st.booleans())
    if members and source_in_view:
        # The source may appear in its own member view; it must never be chosen.
        members[0] = Member(
            node_id=SOURCE_ID,
            lat=members[0].lat,
            lon=members[0].lon,
            free_bytes=1 << 40,
        )
    rules = PlacementRules(
        backup_proximity=draw(BANDS),
        packet_proximity=draw(BANDS),
        distinct=draw(DISTINCT),
    )
    n = draw(st.integers(1, max_n))
    packet_bytes = draw(PACKET_SIZES)
    exclude = frozenset(
        node_id for node_id in (m.node_id for m in members) if draw(st.integers(0, 9)) == 0
    )
    chunk_id = draw(CHUNK_IDS)
    return members, source, rules, n, packet_bytes, exclude, chunk_id


@st.composite
def seeded_scenarios(draw: st.DrawFn, max_members: int, max_n: int) -> Scenario:
    """Like ``scenarios`` but members come from a seeded PRNG.

    Drawing 30 members field by field costs hypothesis ~25 ms per example;
    drawing a seed keeps the rules, sizes and n under hypothesis's control
    (and shrinking) while the members themselves are cheap.
    """
    rng = random.Random(draw(st.integers(0, 2**32)))
    # Mostly enough members to be interesting; sometimes too few.
    count = draw(st.integers(max_n, max_members) | st.integers(0, max_members))
    p_alive, p_trusted, p_located = draw(st.sampled_from([(0.75, 0.75, 0.8), (1.0, 1.0, 1.0)]))
    members = []
    for i in range(count):
        located = rng.random() < p_located
        members.append(
            Member(
                node_id=node(i),
                lat=rng.uniform(35.0, 62.0) if located else None,
                lon=rng.uniform(-10.0, 30.0) if located else None,
                free_bytes=rng.choice([0, 1000, 10_000, 1 << 30, 1 << 40]),
                alive=rng.random() < p_alive,
                location_trusted=rng.random() < p_trusted,
                labels=tuple(
                    (name, value)
                    for name, value in (
                        ("site", rng.choice([None, "a", "b", "c", "d", "e", "f"])),
                        ("rack", rng.choice([None, "x", "y", "z", "w"])),
                    )
                    if value is not None
                ),
            )
        )
    if members and rng.random() < 0.5:
        members[0] = Member(node_id=SOURCE_ID, lat=members[0].lat, lon=members[0].lon, free_bytes=1)
    source_location = draw(SOURCE_LOCATIONS)
    source = source_at(*(source_location or (None, None)))
    rules = PlacementRules(
        backup_proximity=draw(BANDS), packet_proximity=draw(BANDS), distinct=draw(DISTINCT)
    )
    exclude = frozenset(m.node_id for m in members if rng.random() < 0.1)
    return (
        members,
        source,
        rules,
        draw(st.integers(1, max_n)),
        draw(PACKET_SIZES),
        exclude,
        rng.randbytes(8),
    )


# -- properties -------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(seeded_scenarios(max_members=60, max_n=8))
def test_every_placement_meets_every_rule(
    case: Scenario,
) -> None:
    members, source, rules, n, packet_bytes, exclude, chunk_id = case
    view = PlacementView(key=KEY, source=source, members=members, rules=rules)
    try:
        chosen = view.place(chunk_id, n, packet_bytes, exclude)
    except PlacementError as exc:
        assert exc.needed == n
        assert exc.rule in {
            "members",
            "capacity",
            "backup_proximity",
            "packet_proximity",
            "distinct",
            "search_bound",
        }
        assert str(exc) and str(n) in str(exc)
        return
    assert_valid(chosen, members, source, rules, n, packet_bytes, exclude)
    assert SOURCE_ID not in chosen
    # Deterministic, and independent of the order the view lists members in.
    shuffled = list(members)
    random.Random(7).shuffle(shuffled)
    again = PlacementView(key=KEY, source=source, members=shuffled, rules=rules)
    assert again.place(chunk_id, n, packet_bytes, exclude) == chosen


@settings(max_examples=400, deadline=None)
@given(seeded_scenarios(max_members=9, max_n=4))
def test_search_agrees_with_brute_force_on_small_cases(
    case: Scenario,
) -> None:
    members, source, rules, n, packet_bytes, exclude, chunk_id = case
    exists = brute_force_exists(members, source, rules, n, packet_bytes, exclude)
    try:
        chosen = place_chunk(
            key=KEY,
            chunk_id=chunk_id,
            source=source,
            members=members,
            n=n,
            packet_bytes=packet_bytes,
            rules=rules,
            exclude=exclude,
        )
    except PlacementError as exc:
        assert exc.rule != "search_bound"  # small cases always finish
        assert not exists, f"placement said {exc} but a valid set exists"
        return
    assert exists
    assert_valid(chosen, members, source, rules, n, packet_bytes, exclude)


@settings(max_examples=40, deadline=None)
@given(scenarios(max_members=9, max_n=4))
def test_first_valid_set_in_rank_order(
    case: Scenario,
) -> None:
    """The answer is the lexicographically first valid set in the unconstrained order."""
    members, source, rules, n, packet_bytes, exclude, chunk_id = case
    eligible = [m for m in members if member_ok(m, source, rules, packet_bytes, exclude)]
    if len(eligible) < n:
        return
    view = PlacementView(key=KEY, source=source, members=members, rules=rules)
    try:
        chosen = view.place(chunk_id, n, packet_bytes, exclude)
    except PlacementError:
        return
    # The plain order of the eligible members, from an unconstrained view over them.
    plain = PlacementView(key=KEY, source=source, members=eligible, rules=PlacementRules()).place(
        chunk_id, len(eligible), 1
    )
    by_id = {m.node_id: m for m in eligible}
    first = next(
        subset
        for subset in itertools.combinations(plain, n)
        if all(pair_ok(by_id[a], by_id[b], rules) for a, b in itertools.combinations(subset, 2))
    )
    assert chosen == list(first)


# -- the order itself ----------------------------------------------------------------


def reference_order(key: bytes, chunk_id: bytes, members: Sequence[Member]) -> list[bytes]:
    """The documented rendezvous order, recomputed slowly from its definition."""
    member_key = blake3.blake3(
        key, derive_key_context="gridnode placement 2025-01 member rank hash"
    ).digest()
    chunk_key = blake3.blake3(
        key, derive_key_context="gridnode placement 2025-01 chunk rank hash"
    ).digest()
    mask = (1 << 64) - 1
    h_chunk = int.from_bytes(blake3.blake3(chunk_id, key=chunk_key).digest(length=8), "little")

    def score(m: Member) -> float:
        h = int.from_bytes(blake3.blake3(m.node_id, key=member_key).digest(length=8), "little")
        z = h ^ h_chunk
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        u = ((z >> 11) + 0.5) / 2.0**53
        return -math.log(u) / m.free_bytes

    return [m.node_id for m in sorted(members, key=lambda m: (score(m), m.node_id))]


def test_order_matches_its_definition_on_a_large_view() -> None:
    rng = random.Random(3)
    members = [member(i, free=rng.randint(1 << 20, 1 << 40)) for i in range(2000)]
    view = PlacementView(
        key=KEY, source=source_at(*ZURICH), members=members, rules=PlacementRules()
    )
    for c in range(20):
        chunk_id = c.to_bytes(4, "big")
        expected = reference_order(KEY, chunk_id, members)
        assert view.place(chunk_id, 6, PACKET) == expected[:6]
    # The full order too (no shortcut possible when all members are asked for).
    assert view.place(b"x", 2000, 1) == reference_order(KEY, b"x", members)


def test_large_view_with_filters_and_bands_matches_reference() -> None:
    """The fast paths (head of the order, capacity and exclusion masks, dot-product
    distance tests) give what the definition gives: the first set in rank order
    that a plain greedy pass over the reference order accepts."""
    rng = random.Random(5)
    source = source_at(*ZURICH)
    members = [
        member(
            i,
            rng.uniform(35.0, 62.0),
            rng.uniform(-10.0, 30.0),
            free=rng.choice([PACKET - 1, 1 << 30, 1 << 35, 1 << 40]),
            alive=rng.random() < 0.95,
            location_trusted=rng.random() < 0.95,
        )
        for i in range(3000)
    ]
    rules = PlacementRules(
        backup_proximity=parse_band("200km:1500km"), packet_proximity=parse_band("150km:1200km")
    )
    view = PlacementView(key=KEY, source=source, members=members, rules=rules)
    excluded = {members[i].node_id for i in range(0, 3000, 7)}
    for c in range(15):
        chunk_id = c.to_bytes(4, "big")
        eligible = [m for m in members if member_ok(m, source, rules, PACKET, excluded)]
        expected: list[Member] = []
        order = reference_order(KEY, chunk_id, eligible)
        by_id = {m.node_id: m for m in eligible}
        for node_id in order:
            if all(pair_ok(by_id[node_id], other, rules) for other in expected):
                expected.append(by_id[node_id])
                if len(expected) == 6:
                    break
        chosen = view.place(chunk_id, 6, PACKET, exclude=excluded)
        assert chosen == [m.node_id for m in expected]
        assert_valid(chosen, members, source, rules, 6, PACKET, excluded)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((47.3769, 8.5417), (48.8566, 2.3522)),  # Zurich - Paris
        ((47.3769, 8.5417), (47.3770, 8.5418)),  # about 13 m apart
        ((10.0, 20.0), (10.0, 20.0)),  # the same spot
        ((0.0, 0.0), (0.0, 180.0)),  # antipodes
    ],
)
def test_band_edges_are_decided_by_the_canonical_distance(
    a: tuple[float, float], b: tuple[float, float]
) -> None:
    """A band edge equal to the exact haversine distance admits the pair; one ulp less does not."""
    km = haversine_km(*a, *b)
    members = [member(1, *a), member(2, *b)]
    source = source_at(*a)

    def fits(rules: PlacementRules, n: int) -> bool:
        try:
            PlacementView(key=KEY, source=source, members=members, rules=rules).place(
                b"c", n, PACKET
            )
        except PlacementError:
            return False
        return True

    below, above = math.nextafter(km, -math.inf), math.nextafter(km, math.inf)
    assert fits(PlacementRules(packet_proximity=Band(max_km=km)), 2)
    assert fits(PlacementRules(packet_proximity=Band(min_km=km)), 2)
    assert fits(PlacementRules(packet_proximity=Band(min_km=km, max_km=km)), 2)
    if below >= 0.0:
        assert not fits(PlacementRules(packet_proximity=Band(max_km=below)), 2)
    assert not fits(PlacementRules(packet_proximity=Band(min_km=above)), 2)
    # The same for the distance from the source (member 1 sits on the source).
    assert fits(PlacementRules(backup_proximity=Band(min_km=km, max_km=km)), 1)
    if below >= 0.001:
        # min 1 m keeps member 1 (on the source) out; member 2 lies just past the max.
        assert not fits(PlacementRules(backup_proximity=Band(min_km=0.001, max_km=below)), 1)
    assert not fits(PlacementRules(backup_proximity=Band(min_km=above)), 1)


def test_capacity_weighting_is_proportional() -> None:
    # Deterministic (fixed key, fixed chunk ids), so the tolerance cannot flake;
    # 8,000 draws give a binomial spread of about 0.5 percentage points.
    weights = {1: 1, 2: 2, 3: 3, 4: 4}
    members = [member(i, free=w * (1 << 30)) for i, w in weights.items()]
    view = PlacementView(
        key=KEY, source=source_at(*ZURICH), members=members, rules=PlacementRules()
    )
    draws = 8_000
    firsts = Counter(view.place(c.to_bytes(4, "big"), 1, PACKET)[0] for c in range(draws))
    total = sum(weights.values())
    for i, w in weights.items():
        assert firsts[node(i)] / draws == pytest.approx(w / total, abs=0.02)


def test_members_with_equal_room_share_evenly() -> None:
    members = [member(i) for i in range(10)]
    view = PlacementView(
        key=KEY, source=source_at(*ZURICH), members=members, rules=PlacementRules()
    )
    counts = Counter(
        target for c in range(3000) for target in view.place(c.to_bytes(4, "big"), 3, PACKET)
    )
    assert set(counts) == {node(i) for i in range(10)}
    assert max(counts.values()) < 1.25 * min(counts.values())


def test_different_keys_give_different_orders() -> None:
    members = [member(i) for i in range(50)]
    rules = PlacementRules()
    one = PlacementView(key=b"a" * 32, source=source_at(*ZURICH), members=members, rules=rules)
    two = PlacementView(key=b"b" * 32, source=source_at(*ZURICH), members=members, rules=rules)
    same = sum(
        one.place(c.to_bytes(2, "big"), 6, PACKET) == two.place(c.to_bytes(2, "big"), 6, PACKET)
        for c in range(100)
    )
    assert same == 0
    # and different chunks get different orders under one key
    firsts = {tuple(one.place(c.to_bytes(2, "big"), 6, PACKET)) for c in range(100)}
    assert len(firsts) == 100


def test_source_is_never_chosen() -> None:
    members = [Member(node_id=SOURCE_ID, lat=1.0, lon=1.0, free_bytes=1 << 60)]
    members += [member(i, free=1) for i in range(3)]
    view = PlacementView(
        key=KEY, source=source_at(1.0, 1.0), members=members, rules=PlacementRules()
    )
    for c in range(50):
        assert SOURCE_ID not in view.place(c.to_bytes(2, "big"), 3, 1)
    with pytest.raises(PlacementError, match="only 3 alive members besides this node") as info:
        view.place(b"c", 4, 1)
    assert (info.value.rule, info.value.needed, info.value.available) == ("members", 4, 3)


def test_exclude_replaces_one_failed_target() -> None:
    members = [member(i) for i in range(20)]
    view = PlacementView(
        key=KEY, source=source_at(*ZURICH), members=members, rules=PlacementRules()
    )
    first = view.place(b"chunk", 6, PACKET)
    failed = first[2]
    second = view.place(b"chunk", 6, PACKET, exclude={failed})
    assert failed not in second
    assert [t for t in first if t != failed] == second[:5]
    assert second[5] not in first


def test_untrusted_and_unlocated_members_only_matter_for_distance_rules() -> None:
    members = [
        member(1, location_trusted=False),
        member(2, lat=None, lon=None),
        member(3),
    ]
    source = source_at(*ZURICH)
    plain = PlacementView(key=KEY, source=source, members=members, rules=PlacementRules())
    assert set(plain.place(b"c", 3, PACKET)) == {node(1), node(2), node(3)}
    ruled = PlacementView(
        key=KEY,
        source=source,
        members=members,
        rules=PlacementRules(packet_proximity=parse_band(":100km")),
    )
    assert ruled.place(b"c", 1, PACKET) == [node(3)]
    with pytest.raises(PlacementError) as info:
        ruled.place(b"c", 2, PACKET)
    assert info.value.rule == "packet_proximity"
    assert str(info.value) == (
        "packet proximity at most 100 km: only 1 alive member with room has a known, "
        "trusted location, 2 needed (2 others have an unknown or untrusted location)"
    )


# -- error messages ------------------------------------------------------------------


def test_backup_proximity_message() -> None:
    near = [member(i, *point_north(100)) for i in range(10)]
    far = [member(100 + i, *point_north(1000)) for i in range(3)]
    rules = PlacementRules(backup_proximity=parse_band("500km:2000km"))
    view = PlacementView(key=KEY, source=source_at(*ZURICH), members=near + far, rules=rules)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 6, PACKET)
    assert str(info.value) == (
        "backup proximity 500-2000 km: only 3 alive members with room lie in that band, 6 needed"
    )
    assert (info.value.rule, info.value.needed, info.value.available) == ("backup_proximity", 6, 3)
    assert set(view.place(b"c", 3, PACKET)) == {m.node_id for m in far}


def test_backup_proximity_counts_untrusted_separately() -> None:
    members = [member(i, *point_north(1000)) for i in range(3)]
    members += [member(10 + i, *point_north(1000), location_trusted=False) for i in range(4)]
    rules = PlacementRules(backup_proximity=parse_band("500km:"))
    with pytest.raises(
        PlacementError,
        match=r"only 3 alive members with room lie in that band, 6 needed \(4 more with room "
        r"were not considered because their location is unknown or untrusted\)",
    ):
        place_chunk(
            key=KEY,
            chunk_id=b"c",
            source=source_at(*ZURICH),
            members=members,
            n=6,
            packet_bytes=PACKET,
            rules=rules,
        )


def test_backup_proximity_with_unknown_source_location() -> None:
    members = [member(i) for i in range(10)]
    rules = PlacementRules(backup_proximity=parse_band(":3000km"))
    view = PlacementView(key=KEY, source=source_at(None, None), members=members, rules=rules)
    with pytest.raises(PlacementError, match="this node's own location is unknown") as info:
        view.place(b"c", 3, PACKET)
    assert info.value.rule == "backup_proximity"
    # Without a backup band the source's location does not matter.
    view = PlacementView(
        key=KEY, source=source_at(None, None), members=members, rules=PlacementRules()
    )
    assert len(view.place(b"c", 3, PACKET)) == 3


def test_capacity_message() -> None:
    members = [member(i, free=PACKET) for i in range(2)]
    members += [member(10 + i, free=PACKET - 1) for i in range(8)]
    members += [member(20, free=1 << 40, alive=False)]
    view = PlacementView(
        key=KEY, source=source_at(*ZURICH), members=members, rules=PlacementRules()
    )
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 6, PACKET)
    assert str(info.value) == "capacity: only 2 alive members have 262144 bytes free, 6 needed"
    assert (info.value.rule, info.value.available) == ("capacity", 2)
    assert set(view.place(b"c", 2, PACKET)) == {node(0), node(1)}


def test_members_message_counts_exclusions() -> None:
    members = [member(i) for i in range(5)] + [member(9, alive=False)]
    view = PlacementView(
        key=KEY, source=source_at(*ZURICH), members=members, rules=PlacementRules()
    )
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 5, PACKET, exclude={node(0)})
    assert str(info.value) == (
        "members: only 4 alive members besides this node (not counting 1 excluded), 5 needed"
    )


def test_packet_proximity_message_names_largest_set() -> None:
    # Two clusters 1,000 km apart: at most 4 members lie within 100 km of each other.
    west = [member(i, *point_north(0)) for i in range(4)]
    east = [member(10 + i, *point_north(1000)) for i in range(3)]
    rules = PlacementRules(packet_proximity=parse_band(":100km"))
    view = PlacementView(key=KEY, source=source_at(*ZURICH), members=west + east, rules=rules)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 5, PACKET)
    assert str(info.value) == (
        "packet proximity at most 100 km: no 5 of the 7 candidate members lie pairwise "
        "within that band; the largest such set found has 4"
    )
    assert (info.value.rule, info.value.available) == ("packet_proximity", 4)
    assert set(view.place(b"c", 4, PACKET)) == {m.node_id for m in west}


def test_packet_proximity_minimum_spreads_targets() -> None:
    spots = [point_north(k * 150) for k in range(8)]
    members = [member(i, *spot) for i, spot in enumerate(spots)]
    members += [member(100 + i, *spots[0]) for i in range(10)]  # crowd in one place
    rules = PlacementRules(packet_proximity=parse_band("100km:"))
    view = PlacementView(key=KEY, source=source_at(*ZURICH), members=members, rules=rules)
    for c in range(30):
        chosen = view.place(c.to_bytes(2, "big"), 8, PACKET)
        assert_valid(chosen, members, source_at(*ZURICH), rules, 8, PACKET)
    with pytest.raises(PlacementError, match="no 9 of the 18 candidate members"):
        view.place(b"c", 9, PACKET)


def test_distinct_messages() -> None:
    members = [member(i, labels=(("site", f"s{i % 3}"),)) for i in range(9)]
    members += [member(20)]  # no site label
    rules = PlacementRules(distinct=("site",))
    view = PlacementView(key=KEY, source=source_at(*ZURICH), members=members, rules=rules)
    chosen = view.place(b"c", 3, PACKET)
    by_id = {m.node_id: dict(m.labels) for m in members}
    assert len({by_id[i]["site"] for i in chosen}) == 3
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 4, PACKET)
    assert str(info.value) == (
        "distinct site: the 9 candidate members have only 3 different 'site' values, 4 needed"
    )
    assert (info.value.rule, info.value.available) == ("distinct", 3)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 10, PACKET)
    assert info.value.rule == "distinct"
    assert "only 9 of the 10 candidate members carry every label" in str(info.value)


def test_distinct_over_two_labels_needs_the_search() -> None:
    # Each label alone has 3 values among the members, so only the search can
    # tell whether 3 members differ in both at once.
    def labelled(i: int, site: str, rack: str) -> Member:
        return member(i, labels=(("site", site), ("rack", rack)))

    rules = PlacementRules(distinct=("site", "rack"))
    source = source_at(*ZURICH)
    feasible = [
        labelled(0, "a", "1"),
        labelled(1, "b", "2"),
        labelled(2, "c", "2"),
        labelled(3, "c", "3"),
    ]
    view = PlacementView(key=KEY, source=source, members=feasible, rules=rules)
    assert set(view.place(b"c", 3, PACKET)) == {node(0), node(1), node(3)}
    infeasible = [
        labelled(0, "a", "1"),
        labelled(1, "b", "1"),
        labelled(2, "c", "2"),
        labelled(3, "c", "3"),
    ]
    view = PlacementView(key=KEY, source=source, members=infeasible, rules=rules)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 3, PACKET)
    assert info.value.rule == "distinct"
    assert str(info.value) == (
        "distinct site, rack: no 3 of the 4 candidate members have pairwise different "
        "values; the largest such set found has 2"
    )


def test_rules_together_blame_both_when_each_alone_is_met() -> None:
    # Within 100 km: members 0-2 (Zurich). Distinct sites: 0 and 1 share one.
    here = [
        member(0, labels=(("site", "a"),)),
        member(1, labels=(("site", "a"),)),
        member(2, labels=(("site", "b"),)),
    ]
    far = [member(10, *point_north(1000), labels=(("site", "c"),))]
    rules = PlacementRules(packet_proximity=parse_band(":100km"), distinct=("site",))
    view = PlacementView(key=KEY, source=source_at(*ZURICH), members=here + far, rules=rules)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 3, PACKET)
    assert info.value.rule == "packet_proximity"
    assert str(info.value).startswith("packet proximity at most 100 km with distinct site:")
    assert "meet both rules together (each alone can be met)" in str(info.value)


def test_search_bound_is_reported_honestly() -> None:
    # Two clusters of 10 within 100 km; 11 are asked for, so the search must
    # rule out every start. With a budget of 5 steps it cannot finish.
    west = [member(i, *point_north(0)) for i in range(10)]
    east = [member(100 + i, *point_north(1000)) for i in range(10)]
    rules = PlacementRules(packet_proximity=parse_band(":100km"))
    source = source_at(*ZURICH)
    bounded = PlacementView(
        key=KEY, source=source, members=west + east, rules=rules, search_budget=5
    )
    with pytest.raises(PlacementError) as info:
        bounded.place(b"c", 11, PACKET)
    assert info.value.rule == "search_bound"
    assert "gave up after 5 search steps" in str(info.value)
    assert "a valid set may still exist" in str(info.value)
    full = PlacementView(key=KEY, source=source, members=west + east, rules=rules)
    with pytest.raises(PlacementError) as info:
        full.place(b"c", 11, PACKET)
    assert info.value.rule == "packet_proximity"
    assert info.value.available == 10


def test_backtracking_finds_a_set_greedy_misses() -> None:
    # The hub ranks first (by far the most room) and fits with P3 only, so the
    # greedy pass dead-ends; the only valid set is P1, P2, P3.
    rules = PlacementRules(packet_proximity=parse_band("500km:"))
    source = source_at(*ZURICH)
    members = [
        member(0, *point_north(300), free=1 << 50),
        member(1, *point_north(0)),
        member(2, *point_north(600)),
        member(3, *point_north(1200)),
    ]
    view = PlacementView(key=KEY, source=source, members=members, rules=rules)
    for c in range(20):
        chunk_id = c.to_bytes(2, "big")
        assert view.place(chunk_id, 1, PACKET) == [node(0)]
        assert set(view.place(chunk_id, 3, PACKET)) == {node(1), node(2), node(3)}


# -- values and validation -----------------------------------------------------------


def test_rules_wire_round_trip() -> None:
    rules = PlacementRules(
        backup_proximity=parse_band("100km:3000km"),
        packet_proximity=parse_band("50mi:"),
        distinct=("site", "rack"),
    )
    wire = rules.to_wire()
    assert wire["distinct"] == ["site", "rack"]
    assert PlacementRules.from_wire(wire) == rules
    assert rules.uses_distance and not PlacementRules(distinct=("site",)).uses_distance
    assert PlacementRules.from_wire(PlacementRules().to_wire()) == PlacementRules()
    assert rules.describe() == (
        "backup proximity 100-3000 km; packet proximity at least 80.467 km; distinct site, rack"
    )


@pytest.mark.parametrize(
    "wire",
    [
        {},
        {"backup_proximity": {"min_km": None, "max_km": None}},
        {
            "backup_proximity": {"min_km": None, "max_km": None},
            "packet_proximity": {"min_km": None, "max_km": None},
            "distinct": "site",
        },
        {
            "backup_proximity": {"min_km": 5.0, "max_km": 1.0},
            "packet_proximity": {"min_km": None, "max_km": None},
            "distinct": [],
        },
        {
            "backup_proximity": {"min_km": None, "max_km": None},
            "packet_proximity": {"min_km": None, "max_km": None},
            "distinct": ["site", "site"],
        },
    ],
)
def test_rules_from_wire_rejects(wire: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PlacementRules.from_wire(wire)


def test_member_validation() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Member(node_id=b"short", lat=None, lon=None, free_bytes=0)
    with pytest.raises(ValueError, match="latitude"):
        Member(node_id=node(1), lat=91.0, lon=0.0, free_bytes=0)
    with pytest.raises(ValueError, match="both latitude and longitude"):
        Member(node_id=node(1), lat=1.0, lon=None, free_bytes=0)
    with pytest.raises(ValueError, match="free_bytes"):
        Member(node_id=node(1), lat=None, lon=None, free_bytes=-1)
    with pytest.raises(ValueError, match="given twice"):
        Member(node_id=node(1), lat=None, lon=None, free_bytes=0, labels=(("a", "1"), ("a", "2")))
    with pytest.raises(ValueError, match="appears twice"):
        PlacementView(
            key=KEY,
            source=source_at(None, None),
            members=[member(1), member(1)],
            rules=PlacementRules(),
        )
    view = PlacementView(
        key=KEY, source=source_at(None, None), members=[member(1)], rules=PlacementRules()
    )
    with pytest.raises(ValueError, match="n must be"):
        view.place(b"c", 0, 1)
    with pytest.raises(ValueError, match="packet_bytes"):
        view.place(b"c", 1, 0)


# -- completion around targets that already hold packets (fixed) ----------------------


def fits_held(held: Member, new: Member, rules: PlacementRules) -> bool:
    """The pairwise rules between a held target and a new one, restated strictly.

    A held target is not checked for room or liveness, but a pairwise rule
    with it can only be shown when it has what the rule measures: a known,
    trusted location for packet proximity, every named label for distinct.
    """
    if not rules.packet_proximity.is_unbounded and (held.lat is None or not held.location_trusted):
        return False
    if any(name not in dict(held.labels) for name in rules.distinct):
        return False
    return pair_ok(held, new, rules)


def completion_ok(new: Sequence[Member], held: Sequence[Member], rules: PlacementRules) -> bool:
    return all(pair_ok(a, b, rules) for a, b in itertools.combinations(new, 2)) and all(
        fits_held(h, m, rules) for h in held for m in new
    )


def assert_valid_completion(
    chosen: Sequence[bytes],
    members: Sequence[Member],
    source: Source,
    rules: PlacementRules,
    n: int,
    packet_bytes: int,
    exclude: Collection[bytes],
    fixed: Sequence[bytes],
) -> None:
    by_id = {m.node_id: m for m in members}
    assert len(chosen) == n
    assert len(set(chosen)) == n
    assert list(chosen[: len(fixed)]) == list(fixed)
    new = [by_id[i] for i in chosen[len(fixed) :]]
    for m in new:
        assert member_ok(m, source, rules, packet_bytes, exclude)
    assert completion_ok(new, [by_id[i] for i in fixed], rules)


def completion_candidates(
    members: Sequence[Member],
    source: Source,
    rules: PlacementRules,
    packet_bytes: int,
    exclude: Collection[bytes],
    fixed: Sequence[bytes],
) -> list[Member]:
    return [
        m
        for m in members
        if m.node_id not in fixed and member_ok(m, source, rules, packet_bytes, exclude)
    ]


def assert_fails_honestly(exc: PlacementError, n: int, fixed: Sequence[bytes]) -> None:
    assert exc.needed == n - len(fixed)
    assert exc.rule in {
        "members",
        "capacity",
        "backup_proximity",
        "packet_proximity",
        "distinct",
        "search_bound",
    }
    assert str(exc.needed) in str(exc)
    if fixed and exc.rule != "search_bound":
        assert "already hold" in str(exc)


@settings(max_examples=100, deadline=None)
@given(seeded_scenarios(max_members=60, max_n=8), st.data())
def test_every_completion_keeps_the_held_targets_and_meets_every_rule(
    case: Scenario, data: st.DataObject
) -> None:
    """Take a valid placement, keep a random part, exclude some of the rest: complete it."""
    members, source, rules, n, packet_bytes, _, chunk_id = case
    view = PlacementView(key=KEY, source=source, members=members, rules=rules)
    try:
        placed = view.place(chunk_id, n, packet_bytes)
    except PlacementError:
        return
    rng = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    shuffled = list(placed)
    rng.shuffle(shuffled)
    fixed = shuffled[: data.draw(st.integers(0, n), label="held")]
    rest = shuffled[len(fixed) :]
    exclude = {i for i in rest if rng.random() < 0.5}
    exclude |= {
        m.node_id
        for m in members
        if m.node_id not in fixed and m.node_id != SOURCE_ID and rng.random() < 0.1
    }
    try:
        chosen = view.place(chunk_id, n, packet_bytes, exclude, fixed=fixed)
    except PlacementError as exc:
        assert_fails_honestly(exc, n, fixed)
        # The placement's own remainder completes it unless part of it is excluded.
        assert exclude & set(rest) or exc.rule == "search_bound"
        return
    assert_valid_completion(chosen, members, source, rules, n, packet_bytes, exclude, fixed)
    # The held targets came from a valid placement, so the whole set meets every rule.
    assert_valid(chosen, members, source, rules, n, packet_bytes)
    shuffled_members = list(members)
    rng.shuffle(shuffled_members)
    again = PlacementView(key=KEY, source=source, members=shuffled_members, rules=rules)
    assert again.place(chunk_id, n, packet_bytes, exclude, fixed=fixed) == chosen


@settings(max_examples=200, deadline=None)
@given(seeded_scenarios(max_members=9, max_n=4), st.data())
def test_completion_agrees_with_brute_force_on_small_cases(
    case: Scenario, data: st.DataObject
) -> None:
    """Feasible exactly when brute force finds a completion, and then the first one in rank order.

    The held targets come from a valid placement, or (when there is none,
    or when drawn so) are any members of the view: dead, full, without a
    location or a label, which completion takes as given where it may and
    refuses where a rule could not be shown.
    """
    members, source, rules, n, packet_bytes, exclude, chunk_id = case
    view = PlacementView(key=KEY, source=source, members=members, rules=rules)
    rng = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    try:
        if data.draw(st.booleans(), label="any held"):
            raise PlacementError("draw any", rule="members", needed=n, available=0)
        pool = view.place(chunk_id, n, packet_bytes)
    except PlacementError:
        pool = [m.node_id for m in members if m.node_id != SOURCE_ID]
    rng.shuffle(pool)
    fixed = pool[: data.draw(st.integers(0, min(n, len(pool))), label="held")]
    exclude = frozenset(i for i in exclude if i not in fixed)
    by_id = {m.node_id: m for m in members}
    held = [by_id[i] for i in fixed]
    k = n - len(fixed)
    candidates = completion_candidates(members, source, rules, packet_bytes, exclude, fixed)
    exists = any(
        completion_ok(subset, held, rules) for subset in itertools.combinations(candidates, k)
    )
    try:
        chosen = view.place(chunk_id, n, packet_bytes, exclude, fixed=fixed)
    except PlacementError as exc:
        assert exc.rule != "search_bound"  # small cases always finish
        assert not exists, f"completion said {exc} but a valid completion exists"
        assert_fails_honestly(exc, n, fixed)
        return
    assert exists
    assert_valid_completion(chosen, members, source, rules, n, packet_bytes, exclude, fixed)
    if k:
        # The new targets are the first valid completion in the plain rendezvous order.
        plain = PlacementView(
            key=KEY, source=source, members=candidates, rules=PlacementRules()
        ).place(chunk_id, len(candidates), 1)
        cand_by_id = {m.node_id: m for m in candidates}
        first = next(
            subset
            for subset in itertools.combinations(plain, k)
            if completion_ok([cand_by_id[i] for i in subset], held, rules)
        )
        assert chosen[len(fixed) :] == list(first)


@pytest.mark.parametrize("band", ["200km:1500km", ":400km", ":150km", "600km:"])
def test_completion_on_a_large_view_matches_reference(band: str) -> None:
    """The head-of-order fast path and the full pass give what the definition gives.

    Tight bands leave few members that fit the held targets, so the head has
    to grow or give way to the full pass; wide ones are settled at once.
    """
    rng = random.Random(11)
    source = source_at(*ZURICH)
    members = [
        member(
            i,
            rng.uniform(35.0, 62.0),
            rng.uniform(-10.0, 30.0),
            free=rng.choice([PACKET - 1, 1 << 30, 1 << 35, 1 << 40]),
            alive=rng.random() < 0.95,
            location_trusted=rng.random() < 0.95,
        )
        for i in range(3000)
    ]
    rules = PlacementRules(
        backup_proximity=parse_band(":2500km"), packet_proximity=parse_band(band)
    )
    view = PlacementView(key=KEY, source=source, members=members, rules=rules)
    by_id = {m.node_id: m for m in members}
    for c in range(4):
        chunk_id = c.to_bytes(4, "big")
        placed = view.place(chunk_id, 3, PACKET)
        failed, fixed = placed[0], placed[1:]
        excluded = {failed} | {members[i].node_id for i in range(c, 3000, 11)}
        excluded -= set(fixed)
        eligible = completion_candidates(members, source, rules, PACKET, excluded, fixed)
        order = reference_order(KEY, chunk_id, eligible)
        held = [by_id[i] for i in fixed]
        for k in (1, 3):
            expected: list[Member] = []
            for node_id in order:
                if completion_ok([*expected, by_id[node_id]], held, rules):
                    expected.append(by_id[node_id])
                    if len(expected) == k:
                        break
            chosen = view.place(chunk_id, 2 + k, PACKET, excluded, fixed=fixed)
            assert_valid_completion(chosen, members, source, rules, 2 + k, PACKET, excluded, fixed)
            if len(expected) == k:
                # Greedy over the reference order completed: its set is the first valid one.
                assert chosen[2:] == [m.node_id for m in expected]


def test_completion_replaces_one_failed_target() -> None:
    members = [member(i) for i in range(20)]
    view = PlacementView(
        key=KEY, source=source_at(*ZURICH), members=members, rules=PlacementRules()
    )
    first = view.place(b"chunk", 6, PACKET)
    failed = first[2]
    keep = [t for t in first if t != failed]
    second = view.place(b"chunk", 6, PACKET, exclude={failed})
    # Without pairwise rules the replacement is the next member in the order.
    assert view.place(b"chunk", 6, PACKET, exclude={failed}, fixed=keep) == keep + second[5:]
    # The held ids come first in the order given, the new ones in rendezvous order.
    backwards = keep[::-1][:3]
    chosen = view.place(b"chunk", 6, PACKET, exclude={failed}, fixed=backwards)
    assert chosen[:3] == backwards
    assert chosen[3:] == [t for t in second if t not in backwards][:3]
    assert (
        place_chunk(
            key=KEY,
            chunk_id=b"chunk",
            source=source_at(*ZURICH),
            members=members,
            n=6,
            packet_bytes=PACKET,
            rules=PlacementRules(),
            exclude={failed},
            fixed=keep,
        )
        == keep + second[5:]
    )


def test_completion_backtracks_when_greedy_dead_ends() -> None:
    # As in test_backtracking_finds_a_set_greedy_misses, plus a held target
    # 1,800 km north that is at least 500 km from every other member.
    rules = PlacementRules(packet_proximity=parse_band("500km:"))
    members = [
        member(0, *point_north(300), free=1 << 50),
        member(1, *point_north(0)),
        member(2, *point_north(600)),
        member(3, *point_north(1200)),
        member(9, *point_north(1800)),
    ]
    view = PlacementView(key=KEY, source=source_at(*ZURICH), members=members, rules=rules)
    for c in range(10):
        chunk_id = c.to_bytes(2, "big")
        assert view.place(chunk_id, 2, PACKET, fixed=[node(9)]) == [node(9), node(0)]
        chosen = view.place(chunk_id, 4, PACKET, fixed=[node(9)])
        assert chosen[0] == node(9) and set(chosen[1:]) == {node(1), node(2), node(3)}


def test_held_targets_are_not_checked_again_for_room_or_liveness() -> None:
    members = [member(0, alive=False), member(1, free=0), member(2), member(3)]
    view = PlacementView(
        key=KEY, source=source_at(*ZURICH), members=members, rules=PlacementRules()
    )
    chosen = view.place(b"c", 3, PACKET, fixed=[node(0), node(1)])
    assert chosen[:2] == [node(0), node(1)] and chosen[2] in {node(2), node(3)}
    # All n already held: nothing to choose, nothing to check.
    assert view.place(b"c", 2, PACKET, fixed=[node(1), node(0)]) == [node(1), node(0)]


def test_replacement_must_lie_within_the_band_of_the_held_targets() -> None:
    # Five held targets near Zurich; the failed one too; the others 1,000 km north.
    near = [member(i, *point_north(10 * i)) for i in range(6)]
    far = [member(100 + i, *point_north(1000)) for i in range(6)]
    rules = PlacementRules(packet_proximity=parse_band("0km:500km"))
    source = source_at(*ZURICH)
    held = [node(i) for i in range(5)]
    view = PlacementView(key=KEY, source=source, members=near + far, rules=rules)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 6, PACKET, exclude={node(5)}, fixed=held)
    assert str(info.value) == (
        "packet proximity 0-500 km: no member with room lies within the band of the 5 targets "
        "that already hold packets, 1 needed"
    )
    assert (info.value.rule, info.value.needed, info.value.available) == ("packet_proximity", 1, 0)
    # A plain re-placement with the failed target excluded would not keep the held five.
    assert set(held) - set(view.place(b"c", 6, PACKET, exclude={node(5)}))
    # Two members 400 km north fit all five (and each other); three are too many.
    middle = [member(200 + i, *point_north(400 + 10 * i)) for i in range(2)]
    view = PlacementView(key=KEY, source=source, members=near + far + middle, rules=rules)
    chosen = view.place(b"c", 7, PACKET, exclude={node(5)}, fixed=held)
    assert chosen[:5] == held and set(chosen[5:]) == {node(200), node(201)}
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 8, PACKET, exclude={node(5)}, fixed=held)
    assert str(info.value) == (
        "packet proximity 0-500 km: only 2 of the 8 candidate members lie within the band of "
        "the 5 targets that already hold packets, 3 needed"
    )
    assert (info.value.needed, info.value.available) == (3, 2)


def test_held_target_without_a_trusted_location_cannot_be_matched() -> None:
    members = [member(0), member(1, location_trusted=False), member(2), member(3), member(4)]
    rules = PlacementRules(packet_proximity=parse_band(":500km"))
    view = PlacementView(key=KEY, source=source_at(*ZURICH), members=members, rules=rules)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 4, PACKET, fixed=[node(0), node(1), node(2)])
    assert str(info.value) == (
        "packet proximity at most 500 km: 1 of the 3 targets that already hold packets has an "
        "unknown or untrusted location, so no member can be shown to lie within the band of "
        "it, 1 needed"
    )
    assert (info.value.rule, info.value.available) == ("packet_proximity", 0)
    with pytest.raises(PlacementError, match="the target that already holds packets has an"):
        view.place(b"c", 2, PACKET, fixed=[node(1)])
    # Without a pairwise distance rule its location does not matter.
    plain = PlacementView(
        key=KEY,
        source=source_at(*ZURICH),
        members=members,
        rules=PlacementRules(backup_proximity=parse_band(":500km")),
    )
    assert plain.place(b"c", 2, PACKET, fixed=[node(1)])[0] == node(1)


def test_distinct_completion_messages() -> None:
    source = source_at(*ZURICH)
    rules = PlacementRules(distinct=("site",))
    members = [member(i, labels=(("site", s),)) for i, s in enumerate("abcabdab")]
    members.append(member(20))  # no site label
    view = PlacementView(key=KEY, source=source, members=members, rules=rules)
    held = [node(0), node(1), node(2)]
    assert view.place(b"c", 4, PACKET, fixed=held) == [*held, node(5)]
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 5, PACKET, fixed=held)
    assert str(info.value) == (
        "distinct site: the 3 targets that already hold packets use 3 'site' values and the "
        "5 candidate members have only 1 other value, 2 needed"
    )
    assert (info.value.rule, info.value.needed, info.value.available) == ("distinct", 2, 1)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 2, PACKET, fixed=[node(20)])
    assert str(info.value) == (
        "distinct site: the target that already holds packets does not carry every label it "
        "names, so no member can be shown to differ from it, 1 needed"
    )
    # Each label alone leaves another value, but no member differs in both.
    two = PlacementRules(distinct=("site", "rack"))
    members = [
        member(0, labels=(("site", "a"), ("rack", "1"))),
        member(1, labels=(("site", "b"), ("rack", "1"))),
        member(2, labels=(("site", "a"), ("rack", "2"))),
    ]
    view = PlacementView(key=KEY, source=source, members=members, rules=two)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 2, PACKET, fixed=[node(0)])
    assert str(info.value) == (
        "distinct site, rack: only 0 of the 2 candidate members differ from the target that "
        "already holds packets in every label, 1 needed"
    )


def test_completion_blames_both_rules_together() -> None:
    members = [
        member(0, labels=(("site", "a"),)),
        member(1, labels=(("site", "a"),)),  # in the band, same site
        member(2, *point_north(1000), labels=(("site", "b"),)),  # other site, too far
    ]
    rules = PlacementRules(packet_proximity=parse_band(":100km"), distinct=("site",))
    view = PlacementView(key=KEY, source=source_at(*ZURICH), members=members, rules=rules)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 2, PACKET, fixed=[node(0)])
    assert str(info.value) == (
        "packet proximity at most 100 km with distinct site: only 0 of the 2 candidate members "
        "meet both rules together with the target that already holds packets (each rule alone "
        "leaves enough), 1 needed"
    )
    assert info.value.rule == "packet_proximity"


def test_new_targets_must_also_fit_each_other() -> None:
    # Three members 1,000 km north each fit the held one but sit on one spot.
    members = [member(0)] + [member(10 + i, *point_north(1000)) for i in range(3)]
    rules = PlacementRules(packet_proximity=parse_band("500km:"))
    view = PlacementView(key=KEY, source=source_at(*ZURICH), members=members, rules=rules)
    assert view.place(b"c", 2, PACKET, fixed=[node(0)])[1] in {node(10), node(11), node(12)}
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 3, PACKET, fixed=[node(0)])
    assert str(info.value) == (
        "packet proximity at least 500 km: no 2 of the 3 candidate members that fit the target "
        "that already holds packets lie pairwise within that band; the largest such set found "
        "has 1"
    )
    assert (info.value.needed, info.value.available) == (2, 1)


def test_completion_shortage_messages_count_new_targets() -> None:
    source = source_at(*ZURICH)
    held = [node(i) for i in range(5)]
    members = [member(i) for i in range(7)] + [member(20, alive=False)]
    view = PlacementView(key=KEY, source=source, members=members, rules=PlacementRules())
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 6, PACKET, exclude={node(5), node(6)}, fixed=held)
    assert str(info.value) == (
        "members: only 0 alive members besides this node (not counting 2 excluded), "
        "1 needed besides the 5 targets that already hold packets"
    )
    assert (info.value.rule, info.value.needed, info.value.available) == ("members", 1, 0)
    members = [member(i) for i in range(5)] + [member(10 + i, free=PACKET - 1) for i in range(3)]
    view = PlacementView(key=KEY, source=source, members=members, rules=PlacementRules())
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 6, PACKET, fixed=held)
    assert str(info.value) == (
        "capacity: only 0 alive members have 262144 bytes free, 1 needed besides the 5 targets "
        "that already hold packets"
    )


def test_fixed_validation() -> None:
    members = [member(i) for i in range(5)]
    view = PlacementView(
        key=KEY, source=source_at(*ZURICH), members=members, rules=PlacementRules()
    )
    with pytest.raises(ValueError, match="more than the 2 asked for"):
        view.place(b"c", 2, PACKET, fixed=[node(0), node(1), node(2)])
    with pytest.raises(ValueError, match=f"fixed target {node(9).hex()} is not a member"):
        view.place(b"c", 3, PACKET, fixed=[node(0), node(9)])
    with pytest.raises(ValueError, match="is this node"):
        view.place(b"c", 3, PACKET, fixed=[SOURCE_ID])
    with pytest.raises(ValueError, match="appears twice"):
        view.place(b"c", 3, PACKET, fixed=[node(1), node(1)])
    with pytest.raises(ValueError, match=f"fixed target {node(1).hex()} is also excluded"):
        view.place(b"c", 3, PACKET, exclude={node(1)}, fixed=[node(0), node(1)])
    with pytest.raises(ValueError, match="n must be"):
        view.place(b"c", 0, PACKET, fixed=[node(0)])


def test_search_bound_error_names_the_rules_and_counts() -> None:
    west = [member(i, *point_north(0)) for i in range(10)]
    east = [member(100 + i, *point_north(1000)) for i in range(10)]
    rules = PlacementRules(packet_proximity=parse_band(":100km"))
    view = PlacementView(
        key=KEY, source=source_at(*ZURICH), members=west + east, rules=rules, search_budget=5
    )
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 11, PACKET)
    assert str(info.value).startswith(
        "search bound: gave up after 5 search steps without finding 11 of the 20 candidate "
        "members that meet packet proximity at most 100 km; the largest set found has 10."
    )
    assert (info.value.rule, info.value.needed, info.value.available) == ("search_bound", 11, 10)


def test_unlabelled_held_target_blames_distinct_with_none_available() -> None:
    rules = PlacementRules(distinct=("site",))
    members = [member(i, labels=(("site", s),)) for i, s in enumerate("abc")]
    members.append(member(20))  # no site label
    view = PlacementView(key=KEY, source=source_at(*ZURICH), members=members, rules=rules)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 2, PACKET, fixed=[node(20)])
    assert (info.value.rule, info.value.needed, info.value.available) == ("distinct", 1, 0)


def test_distinct_label_shortage_counts() -> None:
    members = [member(i, labels=(("site", f"s{i}"),)) for i in range(9)]
    members += [member(20)]  # no site label
    rules = PlacementRules(distinct=("site",))
    view = PlacementView(key=KEY, source=source_at(*ZURICH), members=members, rules=rules)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 10, PACKET)
    assert (info.value.rule, info.value.needed, info.value.available) == ("distinct", 10, 9)


def test_rules_together_blame_the_one_that_alone_rules_out_every_set() -> None:
    rules = PlacementRules(packet_proximity=parse_band(":100km"), distinct=("site", "rack"))
    source = source_at(*ZURICH)

    def labelled(i: int, site: str, rack: str, km: float = 0.0) -> Member:
        return member(i, *point_north(km), labels=(("site", site), ("rack", rack)))

    # All differ in both labels, but only two lie within 100 km of each other.
    spread = [labelled(0, "a", "1"), labelled(1, "b", "2", 50), labelled(2, "c", "3", 1000)]
    view = PlacementView(key=KEY, source=source, members=spread, rules=rules)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 3, PACKET)
    assert (info.value.rule, info.value.available) == ("packet_proximity", 2)
    assert str(info.value) == (
        "packet proximity at most 100 km: no 3 of the 3 candidate members lie pairwise "
        "within that band; the largest such set found has 2"
    )
    # All within 100 km, and each label has 3 values, but no 3 differ in both.
    close = [
        labelled(0, "a", "1"),
        labelled(1, "b", "1"),
        labelled(2, "c", "2"),
        labelled(3, "c", "3"),
    ]
    view = PlacementView(key=KEY, source=source, members=close, rules=rules)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 3, PACKET)
    assert (info.value.rule, info.value.available) == ("distinct", 2)
    assert str(info.value) == (
        "distinct site, rack: no 3 of the 4 candidate members have pairwise different "
        "values; the largest such set found has 2"
    )


def test_validation_edges() -> None:
    assert member(1, lat=-90.0, lon=-180.0).lat == -90.0
    assert Source(node_id=SOURCE_ID, lat=-90, lon=-180).lon == -180
    as_list: list[str] = ["site", "rack"]
    assert PlacementRules(distinct=as_list).distinct == ("site", "rack")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PlacementRules(distinct="site")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PlacementView(
            key="k" * 32,  # type: ignore[arg-type]
            source=source_at(*ZURICH),
            members=[member(1)],
            rules=PlacementRules(),
        )


def test_a_one_km_minimum_keeps_members_on_one_spot_apart() -> None:
    members = [member(0), member(1), member(2, *point_north(2))]
    rules = PlacementRules(packet_proximity=parse_band("1km:"))
    view = PlacementView(key=KEY, source=source_at(*ZURICH), members=members, rules=rules)
    chosen = view.place(b"c", 2, PACKET)
    assert node(2) in chosen
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 3, PACKET)
    assert (info.value.rule, info.value.available) == ("packet_proximity", 2)


def test_packet_proximity_shortage_counts_located_members() -> None:
    members = [member(0), member(1, lat=None, lon=None), member(2, location_trusted=False)]
    rules = PlacementRules(packet_proximity=parse_band(":100km"))
    view = PlacementView(key=KEY, source=source_at(*ZURICH), members=members, rules=rules)
    with pytest.raises(PlacementError) as info:
        view.place(b"c", 2, PACKET)
    assert (info.value.rule, info.value.needed, info.value.available) == ("packet_proximity", 2, 1)
