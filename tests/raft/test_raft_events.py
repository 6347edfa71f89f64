"""R11: the Raft core records the transitions an operator reads in the log, with reasons."""

from __future__ import annotations

import pytest
from raft_harness import Cluster
from test_raft_rules import elected

from catenary.core.raft.types import (
    AppendEntries,
    ConfChange,
    ConfChangeKind,
    EventKind,
    Membership,
    RaftConfig,
    RaftEvent,
    RequestVoteResponse,
)

pytestmark = pytest.mark.timeout(10)


def kinds(events: list[RaftEvent]) -> list[tuple[str, str]]:
    return [(e.kind, e.reason) for e in events]


def only(events: list[RaftEvent], kind: str) -> list[RaftEvent]:
    return [e for e in events if e.kind == kind]


def test_an_election_is_started_won_and_seen_by_the_followers() -> None:
    c = Cluster(RaftConfig(), seed=1)
    for nid in (1, 2, 3):
        c.add_node(nid, Membership(voters=(1, 2, 3)))
    c.stabilize(None)
    for nid in (1, 2, 3):
        c.nodes[nid].take_events()
    c.nodes[1].campaign()
    c.stabilize(None)
    events = c.nodes[1].take_events()
    assert kinds(events) == [
        (EventKind.ELECTION_STARTED, "pre-vote"),
        (EventKind.ELECTION_WON, "pre-vote"),
        (EventKind.ELECTION_STARTED, "election"),
        (EventKind.ELECTION_WON, "election"),
    ]
    won = events[-1]
    assert won.node == 1 and won.term == c.nodes[1].term
    assert "votes granted" in won.detail and "quorum 2" in won.detail
    for nid in (2, 3):
        seen = c.nodes[nid].take_events()
        assert kinds(seen) == [(EventKind.LEADER_CHANGED, "")]
        assert seen[0].node == 1 and seen[0].term == c.nodes[1].term
    # Nothing more while the leader leads: heartbeats are not events.
    for _ in range(30):
        for nid in (1, 2, 3):
            c.nodes[nid].tick()
        c.stabilize(None)
    assert all(not c.nodes[nid].take_events() for nid in (1, 2, 3))


def test_a_leader_that_lost_its_quorum_steps_down_for_check_quorum() -> None:
    c = elected()
    c.nodes[1].take_events()
    c.crash(2)
    c.crash(3)
    for _ in range(c.config.election_timeout_ticks * 2):
        c.nodes[1].tick()
    events = c.nodes[1].take_events()
    step_downs = only(events, EventKind.STEP_DOWN)
    assert [e.reason for e in step_downs] == ["check-quorum"]
    assert "quorum" in step_downs[0].detail


def test_a_leader_steps_down_on_a_higher_term_and_names_who_had_it() -> None:
    c = elected()
    leader = c.nodes[1]
    leader.take_events()
    term = leader.term
    leader.step(AppendEntries(3, 1, term + 1, 0, 0, (), 0))
    events = leader.take_events()
    assert kinds(events)[:1] == [(EventKind.STEP_DOWN, "higher-term")]
    assert events[0].node == 3 and events[0].term == term
    assert f"n3 is in term {term + 1}" in events[0].detail
    # The append also names the new leader.
    assert (EventKind.LEADER_CHANGED, "") in kinds(events)
    assert only(events, EventKind.LEADER_CHANGED)[0].term == term + 1


def test_a_transfer_is_a_step_down_for_transfer_and_a_transfer_election() -> None:
    c = elected()
    for nid in (1, 2, 3):
        c.nodes[nid].take_events()
    c.nodes[1].transfer_leadership(2)
    c.stabilize(None)
    assert c.nodes[2].role == "leader"
    old = c.nodes[1].take_events()
    assert [e.reason for e in only(old, EventKind.STEP_DOWN)] == ["transfer"]
    assert only(old, EventKind.LEADER_CHANGED)[0].node == 2
    new = c.nodes[2].take_events()
    assert kinds(new) == [
        (EventKind.ELECTION_STARTED, "transfer"),
        (EventKind.ELECTION_WON, "election"),
    ]


def test_membership_changes_are_events_and_a_removed_leader_steps_down() -> None:
    c = elected()
    c.add_node(4, None)
    for nid in (1, 2, 3):
        c.nodes[nid].take_events()
    c.nodes[1].propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 4))
    c.stabilize(None)
    for nid in (1, 2, 3):
        added = only(c.nodes[nid].take_events(), EventKind.MEMBERSHIP)
        assert [(e.reason, e.node) for e in added] == [("add-learner", 4)]
        assert "learners [4]" in added[0].detail
    c.nodes[1].propose_conf_change(ConfChange(ConfChangeKind.PROMOTE, 4))
    c.stabilize(None)
    promoted = only(c.nodes[2].take_events(), EventKind.MEMBERSHIP)
    assert [(e.reason, e.node) for e in promoted] == [("promote", 4)]
    c.nodes[1].take_events()
    c.nodes[1].propose_conf_change(ConfChange(ConfChangeKind.REMOVE, 1))
    c.stabilize(None)
    events = c.nodes[1].take_events()
    assert [(e.reason, e.node) for e in only(events, EventKind.MEMBERSHIP)] == [("remove", 1)]
    assert [e.reason for e in only(events, EventKind.STEP_DOWN)] == ["removed"]


def test_a_campaign_that_times_out_is_lost_with_its_votes() -> None:
    c = elected()
    c.crash(1)
    c.crash(2)
    node = c.nodes[3]
    node.take_events()
    for _ in range(c.config.election_timeout_ticks * 4):
        node.tick()
    events = node.take_events()
    assert (EventKind.ELECTION_STARTED, "pre-vote") in kinds(events)
    lost = only(events, EventKind.ELECTION_LOST)
    assert lost and lost[0].reason == "timeout"
    assert "1 of 3 votes granted" in lost[0].detail
    assert node.term == c.nodes[1].term  # pre-vote: the term never moved


def test_a_pre_vote_refused_by_a_quorum_is_lost_as_rejected() -> None:
    c = elected()
    node = c.nodes[3]
    node.take_events()
    node.campaign()
    term = node.term
    for src in (1, 2):
        node.step(RequestVoteResponse(src, 3, term, False, pre_vote=True))
    events = node.take_events()
    assert kinds(events) == [
        (EventKind.ELECTION_STARTED, "pre-vote"),
        (EventKind.ELECTION_LOST, "rejected"),
    ]
    assert events[1].detail == (
        "pre-vote: 1 of 3 votes granted (granted by [3], rejected by [1, 2], quorum 2)"
    )
    assert node.role == "follower" and node.term == term


def test_the_lease_read_mode_is_reported_lost_and_regained() -> None:
    c = elected(RaftConfig(lease_reads=True))
    leader = c.nodes[1]
    leader.take_events()
    for _ in range(4):
        for nid in (1, 2, 3):
            c.nodes[nid].tick()
        c.stabilize(None)
    assert kinds(leader.take_events()) == [(EventKind.LEASE_REGAINED, "quorum")]
    c.crash(2)
    c.crash(3)
    for _ in range(c.config.election_timeout_ticks * 2):
        leader.tick()
        c.stabilize(None)
    events = leader.take_events()
    assert kinds(events)[0] == (EventKind.LEASE_LOST, "quorum")
    assert (EventKind.STEP_DOWN, "check-quorum") in kinds(events)


def test_events_are_bounded_when_nobody_drains_them() -> None:
    from catenary.core.raft.node import EVENTS_MAX

    c = elected()
    node = c.nodes[3]
    c.crash(1)
    c.crash(2)
    for _ in range(EVENTS_MAX * 30):
        node.tick()
    assert len(node.events) <= EVENTS_MAX
