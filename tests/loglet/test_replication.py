"""Write quorums, f-majorities and nodeset selection, against brute force."""

from __future__ import annotations

from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catenary.core.loglet.nodeset import (
    DATA_LOSS,
    READ_ONLY,
    READ_WRITE,
    LogServerInfo,
    NodesetUnavailable,
    select_nodeset,
)
from catenary.core.loglet.replication import (
    NodeSetChecker,
    ReplicationError,
    ReplicationProperty,
)

pytestmark = pytest.mark.timeout(60)


def subsets(nodes: list[int]) -> list[frozenset[int]]:
    return [frozenset(c) for k in range(len(nodes) + 1) for c in combinations(nodes, k)]


def test_flat_f_majority_is_n_minus_r_plus_one() -> None:
    for n in range(1, 8):
        for r in range(1, n + 1):
            nodes = list(range(1, n + 1))
            checker = NodeSetChecker(nodes, ReplicationProperty(node=r))
            for s in subsets(nodes):
                assert checker.is_write_quorum(s) == (len(s) >= r)
                assert checker.is_f_majority(s) == (len(s) >= n - r + 1), (n, r, s)


def test_zone_scope_needs_copies_in_enough_zones() -> None:
    locations = {1: "eu.a", 2: "eu.a", 3: "eu.b", 4: "eu.b", 5: "eu.c"}
    checker = NodeSetChecker(locations, ReplicationProperty(node=3, zone=2), locations)
    assert not checker.is_write_quorum({1, 2})  # too few nodes
    assert checker.is_write_quorum({1, 2, 3})
    assert checker.is_write_quorum({1, 3, 5})
    # Three nodes in one zone are not enough: {1, 2} alone span one zone.
    same_zone = NodeSetChecker(
        {1, 2, 6}, ReplicationProperty(node=3, zone=2), {6: "eu.a"} | locations
    )
    assert not same_zone.is_write_quorum({1, 2, 6})
    assert not same_zone.admits()
    assert "1 zones" in same_zone.why_not()


def test_zones_are_named_within_their_region() -> None:
    locations = {1: "eu.a", 2: "us.a"}
    checker = NodeSetChecker(locations, ReplicationProperty(node=2, zone=2), locations)
    assert checker.is_write_quorum({1, 2})


locations_strategy = st.dictionaries(
    st.integers(1, 7),
    st.sampled_from(["", "r1.z1", "r1.z2", "r2.z1", "r2.z3", "r3.z1"]),
    min_size=1,
    max_size=7,
)


@st.composite
def checker_inputs(draw: st.DrawFn) -> tuple[dict[int, str], ReplicationProperty]:
    locations = draw(locations_strategy)
    node = draw(st.integers(1, len(locations)))
    zone = draw(st.integers(0, node))
    region = draw(st.integers(0, node))
    return locations, ReplicationProperty(node=node, zone=zone, region=region)


@settings(max_examples=300, deadline=None)
@given(checker_inputs())
def test_f_majority_meets_every_write_quorum_and_is_minimal_by_definition(
    inputs: tuple[dict[int, str], ReplicationProperty],
) -> None:
    locations, prop = inputs
    nodes = sorted(locations)
    checker = NodeSetChecker(nodes, prop, locations)
    all_sets = subsets(nodes)
    quorums = [s for s in all_sets if checker.is_write_quorum(s)]
    for s in all_sets:
        meets_all = all(s & q for q in quorums)
        assert checker.is_f_majority(s) == meets_all, (prop, locations, s)
    # Monotone: a superset of a write quorum is a write quorum.
    for q in quorums:
        for extra in nodes:
            assert checker.is_write_quorum(q | {extra})
    assert checker.admits() == bool(quorums)
    assert (checker.why_not() == "") == checker.admits()


def test_parse_and_print() -> None:
    assert ReplicationProperty.parse("2") == ReplicationProperty(node=2)
    assert ReplicationProperty.parse("{node: 2}") == ReplicationProperty(node=2)
    prop = ReplicationProperty.parse("{zone: 2, node: 3}")
    assert prop == ReplicationProperty(node=3, zone=2)
    assert str(prop) == "{zone: 2, node: 3}"
    assert ReplicationProperty.parse(str(prop)) == prop
    assert ReplicationProperty.parse("region:2,node:3").region == 2
    for bad, reason in [
        ("{zone: 2}", "node count is required"),
        ("{node: x}", "expected"),
        ("{node: 2, node: 3}", "given twice"),
        ("{rack: 2, node: 3}", "expected"),
        ("{node: 0}", "node >= 1"),
        ("{zone: 4, node: 3}", "exceeds"),
    ]:
        with pytest.raises(ReplicationError, match=reason):
            ReplicationProperty.parse(bad)


def servers(n: int, location: str = "", state: str = READ_WRITE) -> dict[int, LogServerInfo]:
    return {i: LogServerInfo(location, state) for i in range(1, n + 1)}


def test_nodeset_size_is_2r_minus_1_when_servers_allow() -> None:
    assert len(select_nodeset(servers(7), ReplicationProperty(node=2))) == 3
    assert len(select_nodeset(servers(7), ReplicationProperty(node=3))) == 5
    assert len(select_nodeset(servers(2), ReplicationProperty(node=2))) == 2
    assert len(select_nodeset(servers(7), ReplicationProperty(node=2), target_size=6)) == 6
    assert select_nodeset(servers(1), ReplicationProperty(node=1)) == (1,)


def test_nodeset_uses_read_write_servers_only() -> None:
    pool = servers(5) | {2: LogServerInfo("", READ_ONLY), 4: LogServerInfo("", DATA_LOSS)}
    chosen = select_nodeset(pool, ReplicationProperty(node=2))
    assert set(chosen) <= {1, 3, 5} and len(chosen) == 3
    with pytest.raises(NodesetUnavailable, match="1 read-write log-servers"):
        select_nodeset(
            servers(3, state=READ_ONLY) | {9: LogServerInfo()}, ReplicationProperty(node=2)
        )


def test_nodeset_is_deterministic_prefers_the_previous_one_and_spreads_by_salt() -> None:
    pool = servers(6)
    prop = ReplicationProperty(node=2)
    assert select_nodeset(pool, prop, salt=4) == select_nodeset(
        dict(reversed(pool.items())), prop, salt=4
    )
    assert select_nodeset(pool, prop, previous=(6, 5, 2)) == (2, 5, 6)
    # A previous member that left is replaced; the others stay.
    pool_without_5 = {k: v for k, v in pool.items() if k != 5}
    assert {2, 6} <= set(select_nodeset(pool_without_5, prop, previous=(6, 5, 2)))
    starts = {select_nodeset(pool, prop, salt=s) for s in range(6)}
    assert len(starts) > 1  # different logs land on different servers


def test_nodeset_spreads_across_zones_and_regions() -> None:
    pool = {
        1: LogServerInfo("eu.a"),
        2: LogServerInfo("eu.a"),
        3: LogServerInfo("eu.a"),
        4: LogServerInfo("eu.b"),
        5: LogServerInfo("us.a"),
    }
    chosen = select_nodeset(pool, ReplicationProperty(node=2, zone=2))
    zones = {pool[n].location for n in chosen}
    assert len(chosen) == 3 and len(zones) == 3
    regional = select_nodeset(pool, ReplicationProperty(node=2, region=2))
    assert {pool[n].location.split(".")[0] for n in regional} == {"eu", "us"}
    with pytest.raises(NodesetUnavailable, match="zones"):
        select_nodeset({k: pool[k] for k in (1, 2, 3)}, ReplicationProperty(node=2, zone=2))


@settings(max_examples=200, deadline=None)
@given(locations_strategy, st.integers(1, 3), st.integers(0, 2), st.integers(0, 50))
def test_a_selected_nodeset_always_admits_its_replication(
    locations: dict[int, str], node: int, zone: int, salt: int
) -> None:
    prop = ReplicationProperty(node=node, zone=min(zone, node))
    pool = {n: LogServerInfo(loc) for n, loc in locations.items()}
    try:
        chosen = select_nodeset(pool, prop, salt=salt)
    except NodesetUnavailable:
        # Only when no nodeset of all eligible servers admits it either.
        assert not NodeSetChecker(locations, prop, locations).admits()
        return
    assert NodeSetChecker(chosen, prop, locations).admits()
    assert len(chosen) == min(len(pool), 2 * node - 1) or len(chosen) == len(pool)
