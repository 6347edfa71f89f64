"""MetadataReplica: write completions, reads, leadership loss, snapshots, leases.

A small in-memory harness delivers messages at once (optionally dropping some)
and follows the documented host order without persistence.
"""

from __future__ import annotations

from random import Random

import pytest

from catenary.core.metadata.replica import (
    Completion,
    GetQuery,
    ListQuery,
    MetadataReplica,
    ReadCompleted,
    ReadFailed,
    ReplicaConfig,
    WriteCompleted,
    WriteIndeterminate,
)
from catenary.core.metadata.types import (
    LeaseGrant,
    LeaseGranted,
    Precondition,
    PreconditionFailed,
    Put,
    Written,
)
from catenary.core.raft.types import (
    Membership,
    Message,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    Snapshot,
)

pytestmark = pytest.mark.timeout(30)

CONFIG = RaftConfig(election_timeout_ticks=10, heartbeat_interval_ticks=2)


class Harness:
    def __init__(self, n: int, raft_config: RaftConfig = CONFIG) -> None:
        voters = tuple(range(1, n + 1))
        self.replicas = {
            i: MetadataReplica(
                i,
                raft_config,
                Random(i),
                initial_membership=Membership(voters=voters),
                config=ReplicaConfig(),
            )
            for i in voters
        }
        self.now_ms = 0
        self.cut: set[int] = set()  # nodes whose messages are dropped both ways
        self.completions: list[Completion] = []
        self.snapshots: dict[int, Snapshot] = {}

    def drain(self) -> None:
        queue: list[Message] = []
        while True:
            progressed = False
            for node_id in sorted(self.replicas):
                replica = self.replicas[node_id]
                while replica.has_ready():
                    progressed = True
                    ready = replica.ready()
                    queue += ready.messages + ready.messages_after_persist
                    out = replica.advance(ready)
                    self.completions += out.completions
                    if out.snapshot is not None:
                        self.snapshots[node_id] = out.snapshot
                        replica.compacted(out.snapshot)
            for message in queue:
                if message.src in self.cut or message.dst in self.cut:
                    continue
                self.replicas[message.dst].step(message)
                progressed = True
            queue = []
            if not progressed:
                return

    def tick(self, count: int = 1) -> None:
        for _ in range(count):
            self.now_ms += 10
            for node_id in sorted(self.replicas):
                self.replicas[node_id].tick(self.now_ms)
            self.drain()

    def leader(self) -> MetadataReplica:
        for _ in range(100):
            leaders = [r for r in self.replicas.values() if r.is_leader]
            if leaders:
                return leaders[0]
            self.tick()
        raise AssertionError("no leader")

    def take(self) -> list[Completion]:
        out, self.completions = self.completions, []
        return out


def settle(h: Harness) -> MetadataReplica:
    leader = h.leader()
    h.tick(3)  # the leader's NOOP commits
    return leader


def test_single_member_write_then_linearizable_and_stale_read() -> None:
    h = Harness(1)
    leader = settle(h)
    leader.propose(7, Put("a", b"1"))
    h.drain()
    [done] = h.take()
    assert isinstance(done, WriteCompleted) and done.request_id == 7
    assert isinstance(done.result, Written)
    version = done.result.version
    leader.read(8, GetQuery("a"))
    h.tick(2)
    [read] = h.take()
    assert isinstance(read, ReadCompleted) and read.request_id == 8
    assert read.kv is not None and (read.kv.value, read.kv.version) == (b"1", version)
    stale = leader.read_stale(9, ListQuery(""))
    assert [kv.key for kv in stale.kvs] == ["a"] and stale.behind == 0


def test_precondition_failure_is_a_result_not_an_error() -> None:
    h = Harness(3)
    leader = settle(h)
    leader.propose(1, Put("k", b"x", Precondition("version", 99)))
    h.tick(2)
    [done] = h.take()
    assert isinstance(done, WriteCompleted)
    assert done.result == PreconditionFailed("k", 0)


def test_a_follower_refuses_with_a_leader_hint() -> None:
    h = Harness(3)
    leader = settle(h)
    follower = next(r for r in h.replicas.values() if not r.is_leader)
    with pytest.raises(NotLeader) as caught:
        follower.propose(1, Put("k", b"v"))
    assert caught.value.leader_hint == leader.node_id
    with pytest.raises(NotLeader):
        follower.read(2, GetQuery("k"))


def test_leadership_lost_before_commit_makes_pending_ops_indeterminate() -> None:
    h = Harness(3)
    leader = settle(h)
    h.cut.add(leader.node_id)  # the leader can no longer reach a quorum
    leader.propose(11, Put("k", b"lost?"))
    leader.read(12, GetQuery("k"))
    h.drain()
    assert h.take() == []
    h.tick(40)  # check-quorum steps it down; the others elect a new leader
    assert not leader.is_leader
    outcomes = {c.request_id: c for c in h.take()}
    assert isinstance(outcomes[11], WriteIndeterminate)  # never reported as a failure
    assert isinstance(outcomes[12], ReadFailed)
    # Once healed, the old leader's uncommitted entry is overwritten, not applied.
    h.cut.clear()
    h.tick(20)
    new_leader = h.leader()
    new_leader.read(13, GetQuery("k"))
    h.tick(3)
    [read] = [c for c in h.take() if c.request_id == 13]
    assert isinstance(read, ReadCompleted) and read.kv is None


def test_snapshot_is_handed_to_the_host_and_restores_state() -> None:
    h = Harness(3, RaftConfig(election_timeout_ticks=10, compact_after_entries=5))
    leader = settle(h)
    for i in range(12):
        leader.propose(100 + i, Put(f"k{i % 3}", b"v%d" % i))
        h.tick()
    assert leader.node_id in h.snapshots
    snap = h.snapshots[leader.node_id]
    assert snap.meta.index <= leader.state.applied_index
    assert snap.meta.membership.voters == (1, 2, 3)
    assert leader.raft.snapshot_index == snap.meta.index
    # A member restarted from that snapshot alone has the state as of its index.
    restarted = MetadataReplica(9, CONFIG, Random(9), snapshot=snap)
    assert restarted.state.applied_index == snap.meta.index
    assert restarted.state.snapshot() == snap.data


def test_the_leader_expires_leases_from_its_clock() -> None:
    h = Harness(1)
    leader = settle(h)
    leader.propose(1, LeaseGrant(ttl_ms=100))
    h.drain()
    [granted] = h.take()
    assert isinstance(granted, WriteCompleted) and isinstance(granted.result, LeaseGranted)
    lease = granted.result.lease
    leader.propose(2, Put("ephemeral", b"x", lease=lease))
    h.drain()
    h.take()
    assert leader.state.get("ephemeral") is not None
    h.tick(15)  # 150 ms of leader time: the lessor proposes the expiry
    assert leader.state.get("ephemeral") is None
    assert leader.state.lease(lease) is None


def test_bounded_pending_writes() -> None:
    h = Harness(3)
    leader = settle(h)
    h.replicas[leader.node_id].config = ReplicaConfig(max_pending_writes=2)
    h.cut.update(r for r in h.replicas if r != leader.node_id)
    leader.propose(1, Put("a", b"1"))
    leader.propose(2, Put("a", b"2"))
    with pytest.raises(ProposalDropped):
        leader.propose(3, Put("a", b"3"))


def test_an_expiry_refused_during_a_transfer_is_decided_again_at_the_next_tick() -> None:
    # While a leadership transfer is in flight the leader refuses proposals; an
    # expiry refused then must not wait out expire_retry_ms (2 s) before it is
    # proposed again: nothing of it is in flight.
    h = Harness(3)
    leader = settle(h)
    leader.propose(1, LeaseGrant(ttl_ms=30))
    h.drain()
    [granted] = h.take()
    assert isinstance(granted, WriteCompleted) and isinstance(granted.result, LeaseGranted)
    lease = granted.result.lease
    target = next(n for n in sorted(h.replicas) if n != leader.node_id)
    h.cut.add(target)  # the transfer cannot complete: it times out after an election
    leader.raft.transfer_leadership(target)
    with pytest.raises(ProposalDropped):
        leader.propose(2, Put("k", b"v"))
    h.tick(6)  # the deadline passes while the transfer refuses every proposal
    assert leader.state.lease(lease) is not None
    h.tick(40)  # the transfer gave up after an election timeout; 460 ms in all
    assert leader.is_leader
    assert leader.state.lease(lease) is None, "the expiry waited for expire_retry_ms"
