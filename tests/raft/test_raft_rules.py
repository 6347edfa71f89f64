"""Unit tests for the rules in catenary.core.raft.node's docstring (R1..R10)."""

from __future__ import annotations

from random import Random

import pytest
from raft_harness import Cluster

from catenary.core.raft.node import RaftNode, encode_conf_change
from catenary.core.raft.types import (
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    HardState,
    InvalidConfChange,
    Membership,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)

pytestmark = pytest.mark.timeout(10)

VOTERS = Membership(voters=(1, 2, 3))


def elected(config: RaftConfig | None = None, voters: tuple[int, ...] = (1, 2, 3)) -> Cluster:
    c = Cluster(config or RaftConfig(), seed=1)
    for nid in voters:
        c.add_node(nid, Membership(voters=voters))
    c.stabilize(None)
    if c.config.lease_reads:
        # With lease reads a started node refuses votes for one election timeout.
        for nid in voters[1:]:
            for _ in range(c.config.election_timeout_ticks):
                c.nodes[nid].tick()
        c.net.clear()
    c.nodes[1].campaign()
    c.stabilize(None)
    assert c.nodes[1].role == "leader"
    return c


def boot_entries() -> list[Entry]:
    """The entries 1..6 (term 1) a three-voter cluster bootstraps with."""
    return RaftNode(2, RaftConfig(), Random(0), initial_membership=VOTERS).ready().entries


def follower(term: int = 2, vote: int = 0) -> RaftNode:
    """Node 2 of a three-voter cluster, restarted from a persisted state."""
    entries = boot_entries()
    return RaftNode(
        2,
        RaftConfig(),
        Random(0),
        hard_state=HardState(term, vote, len(entries)),
        entries=entries,
    )


# R1, R2 -------------------------------------------------------------------------------


def test_vote_grant_leaves_only_after_persistence() -> None:
    n = follower()
    n.step(RequestVote(1, 2, 3, 6, 1))
    rd = n.ready()
    assert rd.hard_state == HardState(3, 1, 6)
    assert rd.messages == []
    assert rd.messages_after_persist == [RequestVoteResponse(2, 1, 3, True)]


def test_a_restarted_node_does_not_vote_twice_in_a_term() -> None:
    n = follower(term=3, vote=1)
    n.step(RequestVote(3, 2, 3, 6, 1))
    rd = n.ready()
    assert rd.messages_after_persist == [RequestVoteResponse(2, 3, 3, False)]
    assert n.vote == 1


def test_append_ack_leaves_only_after_persistence() -> None:
    n = follower()
    e = Entry(2, 7, EntryKind.NORMAL, b"x")
    n.step(AppendEntries(1, 2, 2, 6, 1, (e,), 6))
    rd = n.ready()
    assert rd.entries == [e]
    assert rd.messages == []
    assert rd.messages_after_persist == [AppendEntriesResponse(2, 1, 2, True, 7)]


def test_stale_term_messages_are_answered_or_ignored_but_change_nothing() -> None:
    n = follower(term=5)
    n.step(AppendEntries(1, 2, 4, 6, 1, (Entry(4, 7, EntryKind.NORMAL, b"x"),), 7))
    n.step(RequestVote(3, 2, 4, 100, 4))
    assert (n.term, n.last_index, n.commit_index, n.vote) == (5, 6, 6, 0)
    rd = n.ready()
    # The stale leader is told the newer term so it steps down; the stale vote is ignored.
    assert [type(m).__name__ for m in rd.messages] == ["AppendEntriesResponse"]
    assert rd.messages[0].term == 5


def test_commit_never_moves_back_and_never_past_what_matches() -> None:
    n = follower()
    e7, e8 = Entry(2, 7, EntryKind.NORMAL, b"a"), Entry(2, 8, EntryKind.NORMAL, b"b")
    n.step(AppendEntries(1, 2, 2, 6, 1, (e7, e8), 8))
    assert n.commit_index == 8
    n.step(AppendEntries(1, 2, 2, 6, 1, (), 3))  # an old heartbeat
    assert n.commit_index == 8
    # Commit is capped at what the message proves matches the leader's log.
    m = follower()
    m.step(AppendEntries(1, 2, 2, 6, 1, (e7,), 20))
    assert m.commit_index == 7


def test_restart_input_is_validated() -> None:
    with pytest.raises(ValueError, match="contiguously"):
        RaftNode(1, RaftConfig(), Random(0), entries=[Entry(1, 2, EntryKind.NORMAL, b"")])
    with pytest.raises(ValueError, match="heartbeat"):
        RaftNode(1, RaftConfig(election_timeout_ticks=2, heartbeat_interval_ticks=2), Random(0))


def test_a_restart_reapplies_committed_entries_and_keeps_term() -> None:
    c = elected()
    c.nodes[1].propose(b"a")
    c.stabilize(None)
    c.nodes[1].tick()  # the commit reaches the followers at the latest with a tick (R6)
    c.stabilize(None)
    c.crash(2)
    c.restart(2)
    n = c.nodes[2]
    assert (n.term, n.applied_index, n.commit_index) == (2, 0, 8)
    rd = n.ready()
    assert [e.index for e in rd.committed] == list(range(1, 9))


# R3 ------------------------------------------------------------------------------------


def test_leader_counts_its_own_entries_only_once_durable() -> None:
    c = elected(voters=(1,))
    n = c.nodes[1]
    idx = n.propose(b"x")
    assert n.commit_index < idx
    rd = n.ready()
    assert n.commit_index < idx and rd.entries[-1].index == idx
    n.advance(rd)
    assert n.commit_index == idx


def test_entries_of_an_earlier_term_commit_only_with_one_of_the_current_term() -> None:
    # Leader 1 of term 3 holds entry 7 of term 2 that a follower also holds.  Its
    # replication to a majority must not commit 7 by counting: only the NOOP of term 3
    # (index 8) may be committed, and 7 with it.
    entries = boot_entries()
    old = Entry(2, 7, EntryKind.NORMAL, b"old")
    n = RaftNode(
        1,
        RaftConfig(pre_vote=False),
        Random(0),
        hard_state=HardState(2, 0, 6),
        entries=[*entries, old],
    )
    n.campaign()
    n.ready()
    n.step(RequestVoteResponse(2, 1, 3, True))
    assert n.role == "leader"
    n.advance(n.ready())
    n.step(AppendEntriesResponse(2, 1, 3, True, 7))
    assert n.commit_index == 6
    n.step(AppendEntriesResponse(2, 1, 3, True, 8))
    assert n.commit_index == 8


# R4, R5 --------------------------------------------------------------------------------


def test_pre_vote_changes_no_state() -> None:
    n = follower(term=2)
    n.step(RequestVote(3, 2, 3, 6, 1, pre_vote=True))
    rd = n.ready()
    assert rd.hard_state is None and n.term == 2 and n.vote == 0
    assert rd.messages == [RequestVoteResponse(2, 3, 3, True, pre_vote=True)]


def test_leader_stickiness_ignores_votes_except_for_a_transfer() -> None:
    c = elected()
    f = c.nodes[2]
    f.step(RequestVote(3, 2, 3, 100, 2, pre_vote=True))
    f.step(RequestVote(3, 2, 3, 100, 2))
    assert f.term == 2 and not f.ready().messages_after_persist
    f.step(RequestVote(3, 2, 3, 100, 2, transfer=True))
    assert f.term == 3 and f.vote == 3


def test_timeout_campaign_uses_randomized_timeout_in_range() -> None:
    for seed in range(20):
        n = RaftNode(
            1,
            RaftConfig(election_timeout_ticks=10),
            Random(seed),
            initial_membership=Membership(voters=(1, 2, 3)),
        )
        ticks = 0
        while n.role == "follower":
            n.tick()
            ticks += 1
        assert 10 <= ticks < 20 and n.role == "pre-candidate"


def test_learner_and_non_member_never_campaign() -> None:
    learner = RaftNode(
        4, RaftConfig(), Random(0), initial_membership=Membership(voters=(1,), learners=(4,))
    )
    joiner = RaftNode(5, RaftConfig(), Random(0))
    for _ in range(100):
        learner.tick()
        joiner.tick()
    assert learner.role == joiner.role == "follower"
    assert not learner.ready().messages and not joiner.ready().messages


def test_votes_from_non_voters_are_ignored() -> None:
    n = follower()
    n.step(RequestVote(9, 2, 7, 100, 5))
    n.step(RequestVote(9, 2, 7, 100, 5, pre_vote=True))
    assert n.term == 2
    rd = n.ready()
    assert not rd.messages and not rd.messages_after_persist


# R6 ------------------------------------------------------------------------------------


def test_inflight_appends_are_bounded_per_follower() -> None:
    c = elected(RaftConfig(max_inflight_messages=2, max_entries_per_message=1))
    n = c.nodes[1]
    n.propose_batch([b"a", b"b", b"c", b"d", b"e"])
    rd = n.ready()
    to2 = [m for m in rd.messages if m.dst == 2]
    assert [len(m.entries) for m in to2] == [1, 1]
    # One acknowledgement frees one slot.
    first = to2[0].entries[0].index
    n.step(AppendEntriesResponse(2, 1, n.term, True, first))
    to2 = [m for m in n.ready().messages if m.dst == 2 and isinstance(m, AppendEntries)]
    assert len(to2) == 1 and to2[0].entries[0].index == first + 2


def test_proposals_between_readies_leave_in_one_message_bounded_by_bytes() -> None:
    c = elected(RaftConfig(max_bytes_per_message=10))
    n = c.nodes[1]
    for k in range(6):
        n.propose(b"abcd" + bytes([48 + k]))
    to2 = [m for m in n.ready().messages if m.dst == 2]
    # 5-byte payloads, at most 10 bytes per message: two entries per message.
    assert [len(m.entries) for m in to2] == [2, 2, 2]


def leader_of_term_3_over_a_term_2_tail(payload: bytes) -> RaftNode:
    """Node 1 holding entries 7-10 of term 2 (``payload`` each), elected for term 3 by
    node 2's vote; node 3 has not answered yet."""
    tail = [Entry(2, i, EntryKind.NORMAL, payload) for i in range(7, 11)]
    n = RaftNode(
        1,
        RaftConfig(pre_vote=False),
        Random(0),
        hard_state=HardState(2, 0, 6),
        entries=[*boot_entries(), *tail],
    )
    n.campaign()
    n.ready()
    n.step(RequestVoteResponse(2, 1, 3, True))
    return n


def test_fast_backup_skips_a_conflicting_term_in_one_round_trip() -> None:
    n = leader_of_term_3_over_a_term_2_tail(b"")
    probe = [m for m in n.ready().messages if m.dst == 3]
    assert probe[0].prev_index == 10
    # Follower 3 has entries of term 1 only up to 6: it says so in its hint, and the
    # leader probes at 6 next instead of walking back one index per round trip.
    n.step(AppendEntriesResponse(3, 1, 3, False, 10, hint_index=6, hint_term=1))
    probe = [m for m in n.ready().messages if m.dst == 3]
    assert [m.prev_index for m in probe] == [6]
    assert [e.index for e in probe[0].entries] == [7, 8, 9, 10, 11]


def test_a_silent_follower_gets_empty_probes_and_its_answer_brings_the_entries() -> None:
    """R6: a heartbeat does not re-send entries a follower never answered: one cut off
    is owed heartbeats, not a copy of its backlog per heartbeat (which a transport
    queue would deliver all at once on its return)."""
    n = leader_of_term_3_over_a_term_2_tail(b"x" * 100)
    probe = [m for m in n.ready().messages if m.dst == 3]
    assert [(m.prev_index, len(m.entries)) for m in probe] == [(10, 1)]  # the noop
    n.propose_batch([b"a", b"b"])
    for _ in range(4):  # four heartbeats; node 3 answers none
        for _ in range(n.config.heartbeat_interval_ticks):
            n.tick()
        to3 = [m for m in n.ready().messages if m.dst == 3]
        assert [(m.prev_index, m.entries) for m in to3] == [(10, ())]
    assert n.status().peers[3].unanswered == 1
    # Its answer (to any of them) brings the entries at once.
    n.step(AppendEntriesResponse(3, 1, 3, True, 10))
    to3 = [m for m in n.ready().messages if m.dst == 3]
    assert [[e.index for e in m.entries] for m in to3] == [[11, 12, 13]]
    assert n.status().peers[3].unanswered == 1


def test_a_commit_rides_on_the_next_append_or_goes_out_at_the_next_tick() -> None:
    c = elected()
    leader, follower = c.nodes[1], c.nodes[2]
    first = leader.propose(b"a")
    c.stabilize(None)
    # Committed on the leader; no empty append was sent just to say so.
    assert leader.commit_index == first and follower.commit_index < first

    def appends_sent() -> set[tuple[int, int, int]]:
        assert c.begin_ready(1)
        sent = {(m.dst, m.commit, len(m.entries)) for m in c.net if isinstance(m, AppendEntries)}
        c.finish_ready(1)
        return sent

    # The next proposal's append carries it.
    second = leader.propose(b"b")
    assert appends_sent() == {(2, first, 1), (3, first, 1)}
    c.stabilize(None)
    assert leader.commit_index == second and follower.commit_index == first
    # Nothing else to send: the next tick sends an empty append with the commit.
    leader.tick()
    assert appends_sent() == {(2, second, 0), (3, second, 0)}
    c.stabilize(None)
    assert follower.commit_index == second


def test_an_eager_commit_broadcast_tells_followers_at_once() -> None:
    c = elected(RaftConfig(eager_commit_broadcast=True))
    index = c.nodes[1].propose(b"a")
    c.stabilize(None)
    assert c.nodes[2].commit_index == c.nodes[3].commit_index == index


# R7 ------------------------------------------------------------------------------------


def test_reads_wait_for_a_quorum_and_share_a_round() -> None:
    c = elected(RaftConfig(max_read_rounds_in_flight=1))
    n = c.nodes[1]
    n.read_index(1)
    n.read_index(2)
    rd = n.ready()
    hb = [m for m in rd.messages if isinstance(m, AppendEntries)]
    assert [m.dst for m in hb] == [2, 3]
    rnd = hb[0].read_ctx
    assert all(m.read_ctx == rnd for m in hb) and rd.reads == []
    n.advance(rd)
    n.read_index(3)  # a round is in flight: read 3 waits for the next one
    assert not [m for m in n.ready().messages if isinstance(m, AppendEntries)]
    # An answer to an older round confirms nothing.
    n.step(AppendEntriesResponse(2, 1, n.term, True, n.last_index, read_ctx=rnd - 1))
    assert n.ready().reads == []
    n.step(AppendEntriesResponse(2, 1, n.term, True, n.last_index, read_ctx=rnd))
    rd = n.ready()
    assert [r.ctx for r in rd.reads] == [1, 2]
    assert {m.read_ctx for m in rd.messages if isinstance(m, AppendEntries)} == {rnd + 1}


def test_read_rounds_are_pipelined_up_to_the_bound() -> None:
    c = elected(RaftConfig(max_read_rounds_in_flight=2))
    n = c.nodes[1]

    def round_sent() -> int | None:
        rd = n.ready()
        rounds = {m.read_ctx for m in rd.messages if isinstance(m, AppendEntries)}
        n.advance(rd)
        assert len(rounds) <= 1
        return rounds.pop() if rounds else None

    n.read_index(1)
    first = round_sent()
    assert first is not None
    n.read_index(2)  # one round in flight, room for another: it starts at once
    assert round_sent() == first + 1
    n.read_index(3)  # two in flight: read 3 waits for a free slot
    assert round_sent() is None
    # A quorum answers the first round: read 1 only; read 3's round starts now.
    n.step(AppendEntriesResponse(2, 1, n.term, True, n.last_index, read_ctx=first))
    rd = n.ready()
    assert [r.ctx for r in rd.reads] == [1]
    assert {m.read_ctx for m in rd.messages if isinstance(m, AppendEntries)} == {first + 2}
    n.advance(rd)
    # An answer to the third round confirms everything before it too.
    n.step(AppendEntriesResponse(3, 1, n.term, True, n.last_index, read_ctx=first + 2))
    assert [r.ctx for r in n.ready().reads] == [2, 3]


def test_non_leaders_refuse_reads_with_a_hint() -> None:
    c = elected()
    with pytest.raises(NotLeader) as exc:
        c.nodes[2].read_index(6)
    assert exc.value.leader_hint == 1


def test_lease_reads_are_immediate_while_the_lease_holds_and_never_in_a_transfer() -> None:
    c = elected(RaftConfig(lease_reads=True, election_timeout_ticks=10, lease_drift_ticks=2))
    n = c.nodes[1]
    for _ in range(2):
        for nid in sorted(c.nodes):
            c.nodes[nid].tick()
    c.stabilize(None)
    n.read_index(1)
    assert [r.ctx for r in n.ready().reads] == [1]
    # After the window (10 - 2 ticks) without answers the lease is gone.
    for _ in range(8):
        n.tick()
    n.ready()
    n.read_index(2)
    assert n.ready().reads == []
    c.stabilize(None)
    n.transfer_leadership(2)
    c.stabilize(None)
    c.nodes[2].read_index(3)
    assert c.nodes[2].role == "leader"


def test_lease_is_off_after_timeout_now() -> None:
    c = elected(RaftConfig(lease_reads=True))
    n = c.nodes[1]
    c.net.clear()
    n.transfer_leadership(2)  # 2 is up to date: TimeoutNow leaves at once
    rd = n.ready()
    assert any(isinstance(m, TimeoutNow) for m in rd.messages)
    n.read_index(1)
    assert n.ready().reads == []


# R8 ------------------------------------------------------------------------------------


def test_one_membership_change_at_a_time_and_bad_changes_refused() -> None:
    c = elected()
    n = c.nodes[1]
    with pytest.raises(InvalidConfChange):
        n.propose_conf_change(ConfChange(ConfChangeKind.PROMOTE, 4))
    with pytest.raises(InvalidConfChange):
        n.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 2))
    with pytest.raises(InvalidConfChange):
        n.propose_conf_change(ConfChange(ConfChangeKind.REMOVE, 9))
    n.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 4))
    assert n.membership.learners == (4,)  # effective on append
    with pytest.raises(ProposalDropped):
        n.propose_conf_change(ConfChange(ConfChangeKind.REMOVE, 3))
    c.add_node(4, None)
    c.stabilize(None)
    n.propose_conf_change(ConfChange(ConfChangeKind.REMOVE, 3))


def test_a_truncated_config_entry_is_undone() -> None:
    n = follower()
    add = Entry(
        2, 7, EntryKind.CONFIG, encode_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 4))
    )
    n.step(AppendEntries(1, 2, 2, 6, 1, (add,), 6))
    assert n.membership.learners == (4,)
    n.step(AppendEntries(3, 2, 3, 6, 1, (Entry(3, 7, EntryKind.NOOP, b""),), 6))
    assert n.membership.learners == ()


def test_learners_do_not_count_toward_commit() -> None:
    c = elected(voters=(1,))
    n = c.nodes[1]
    n.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 2))
    c.add_node(2, None)
    c.stabilize(None)
    assert n.status().peers[2].learner
    c.crash(2)
    idx = n.propose(b"x")
    c.stabilize(None)
    assert n.commit_index == idx  # the lone voter commits alone


# R9 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "payload"),
    [
        (RaftConfig(compact_after_entries=5), b"x"),
        (RaftConfig(compact_after_bytes=100), b"y" * 60),
    ],
)
def test_want_snapshot_by_entry_count_or_bytes(config: RaftConfig, payload: bytes) -> None:
    c = elected(config, voters=(1,))
    n = c.nodes[1]
    wanted = []
    for _ in range(8):
        n.propose(payload)
        while n.has_ready():
            rd = n.ready()
            wanted.append(rd.want_snapshot)
            n.advance(rd)
        if any(wanted):
            break
    assert sum(wanted) == 1, "asked once"
    idx = c.compact(1)
    assert n.snapshot_index == idx and n.entries(0, idx + 1) == []
    with pytest.raises(ValueError):
        n.compact(n.last_index + 5, b"")


# R10 -----------------------------------------------------------------------------------


def test_transfer_refuses_proposals_and_gives_up_after_an_election_timeout() -> None:
    c = elected()
    n = c.nodes[1]
    c.crash(3)
    n.transfer_leadership(3)
    with pytest.raises(ProposalDropped):
        n.propose(b"x")
    for _ in range(RaftConfig().election_timeout_ticks):
        n.tick()
    assert n.status().transfer_target == 0
    with pytest.raises(ValueError):
        n.transfer_leadership(9)


def test_non_leader_refuses_with_a_hint() -> None:
    c = elected()
    for call in (
        lambda: c.nodes[3].propose(b"x"),
        lambda: c.nodes[3].propose_conf_change(ConfChange(ConfChangeKind.REMOVE, 1)),
        lambda: c.nodes[3].transfer_leadership(1),
    ):
        with pytest.raises(NotLeader) as exc:
            call()
        assert exc.value.leader_hint == 1


@pytest.mark.parametrize(
    "entries",
    [
        (Entry(2, 7, EntryKind.CONFIG, b"\xff\xfe"),),  # undecodable change
        (Entry(2, 8, EntryKind.NORMAL, b""),),  # does not follow prev_index
        (Entry(3, 7, EntryKind.NORMAL, b""),),  # term above the message's
        (Entry(2, 7, 9, b""),),  # unknown kind
    ],
)
def test_malformed_messages_are_dropped_and_counted(entries: tuple[Entry, ...]) -> None:
    n = follower()
    n.step(AppendEntries(1, 2, 2, 6, 1, entries, 6))
    assert n.invalid_messages == 1
    assert n.last_index == 6 and n.leader == 0
    rd = n.ready()
    assert not rd.messages and not rd.messages_after_persist


def test_a_corrupt_config_entry_in_the_persisted_log_is_reported() -> None:
    bad = Entry(1, 7, EntryKind.CONFIG, b"\xff")
    with pytest.raises(ValueError, match="corrupt CONFIG"):
        RaftNode(2, RaftConfig(), Random(0), entries=[*boot_entries(), bad])


def test_lease_runs_from_when_a_round_was_sent_not_when_its_answer_arrived() -> None:
    cfg = RaftConfig(lease_reads=True, election_timeout_ticks=10, lease_drift_ticks=2)
    c = elected(cfg)
    n = c.nodes[1]
    for nid in sorted(c.nodes):
        c.nodes[nid].tick()
        c.nodes[nid].tick()
    # The heartbeat round reaches the followers at once (they reset their election
    # timers now) but their answers are held back.
    c.process_ready(1, None)
    c.deliver(2, None)
    c.deliver(3, None)
    c.process_ready(2, None)
    c.process_ready(3, None)
    held = [m for m in c.net if m.dst == 1]
    c.net.clear()
    for _ in range(9):
        for nid in sorted(c.nodes):
            c.nodes[nid].tick()
        c.net.clear()
        for nid in sorted(c.nodes):
            c.process_ready(nid, None)
        c.net.clear()
    # One more tick and the followers may vote for someone else; a lease counted from
    # the late answers' arrival would still look fresh here.
    for m in held:
        n.step(m)
    n.read_index(1)
    assert n.ready().reads == []


def test_a_node_whose_removal_is_uncommitted_can_lead_until_it_commits() -> None:
    # Node 2 holds "remove 2" (index 7) uncommitted, perhaps the only copy of the newest
    # entries.  It must still be able to campaign -- counting only the voters of its
    # latest config, {1, 3} -- commit its removal and then hand over.
    remove = Entry(1, 7, EntryKind.CONFIG, encode_conf_change(ConfChange(ConfChangeKind.REMOVE, 2)))
    n = RaftNode(
        2, RaftConfig(), Random(0), hard_state=HardState(1, 0, 6), entries=[*boot_entries(), remove]
    )
    assert n.membership.voters == (1, 3)
    n.campaign()
    assert sorted(m.dst for m in n.ready().messages) == [1, 3]
    n.step(RequestVoteResponse(1, 2, 2, True, pre_vote=True))
    assert n.role == "pre-candidate"  # its own vote does not count
    n.step(RequestVoteResponse(3, 2, 2, True, pre_vote=True))
    assert n.role == "candidate"
    n.advance(n.ready())
    n.step(RequestVoteResponse(1, 2, 2, True))
    n.step(RequestVoteResponse(3, 2, 2, True))
    assert n.role == "leader"
    n.advance(n.ready())
    n.step(AppendEntriesResponse(1, 2, 2, True, 8))
    n.step(AppendEntriesResponse(3, 2, 2, True, 8))
    assert n.commit_index == 8 and n.role == "follower"
    assert [type(m).__name__ for m in n.ready().messages][-1] == "TimeoutNow"


def test_a_voter_answers_a_node_whose_removal_it_has_not_committed() -> None:
    # Node 1 holds the same uncommitted "remove 2" (index 7) as node 2.  Node 2 may
    # campaign (above), so node 1 must answer it: ignoring it as removed left a group
    # where node 2 could not win and node 1 could not either (its only other voter, 3,
    # held an older config without node 1), and no leader was ever elected again.
    remove = Entry(1, 7, EntryKind.CONFIG, encode_conf_change(ConfChange(ConfChangeKind.REMOVE, 2)))
    n = RaftNode(
        1, RaftConfig(), Random(0), hard_state=HardState(1, 0, 6), entries=[*boot_entries(), remove]
    )
    assert n.membership.voters == (1, 3)
    n.step(RequestVote(2, 1, 2, 7, 1, pre_vote=True))
    assert n.ready().messages == [RequestVoteResponse(1, 2, 2, True, pre_vote=True)]
    n.step(RequestVote(2, 1, 2, 7, 1))
    assert n.ready().messages_after_persist == [RequestVoteResponse(1, 2, 2, True)]
    # Once the removal commits, node 2 is out and is ignored (a transfer's vote request,
    # so leader stickiness cannot be what refuses it).
    n.step(AppendEntries(3, 1, 3, 7, 1, (), 7))
    n.advance(n.ready())
    assert n.commit_index == 7
    n.step(RequestVote(2, 1, 4, 7, 1, transfer=True))
    rd = n.ready()
    assert not rd.messages and not rd.messages_after_persist and n.term == 3
