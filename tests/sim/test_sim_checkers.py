"""The simulator's own parts: each checker fires on a hand-made violation; loop and network."""

from __future__ import annotations

from random import Random

import pytest

from catenary.core.metadata.state import MetadataStateMachine
from catenary.core.metadata.types import (
    KeyValue,
    LeaseGrant,
    LeaseGranted,
    LeaseNotFound,
    Put,
    Request,
    WatchBatch,
    Written,
)
from catenary.core.raft.types import (
    AppendEntriesResponse,
    Entry,
    EntryKind,
    HardState,
    Ready,
    RequestVoteResponse,
)
from catenary.testing.sim.checkers import SafetyChecker, Violation, WatchChecker
from catenary.testing.sim.history import Op
from catenary.testing.sim.linearizable import (
    check_history,
    check_leases,
    check_leases_late,
    check_stale_reads,
)
from catenary.testing.sim.loop import EventLoop
from catenary.testing.sim.network import NetworkFaults, SimNetwork, split_links

pytestmark = pytest.mark.timeout(30)


def entry(index: int, term: int, data: bytes = b"x") -> Entry:
    return Entry(term, index, EntryKind.NORMAL, data)


def test_two_leaders_in_one_term() -> None:
    checker = SafetyChecker()
    assert checker.observe_leader(1, 5)
    assert not checker.observe_leader(1, 5)
    with pytest.raises(Violation, match="two leaders"):
        checker.observe_leader(2, 5)


def test_log_matching() -> None:
    checker = SafetyChecker()
    checker.observe_persisted(1, [entry(1, 1, b"a"), entry(2, 1, b"b")])
    checker.observe_persisted(2, [entry(1, 1, b"a")])
    with pytest.raises(Violation, match="log matching"):
        checker.observe_persisted(3, [entry(2, 1, b"other")])


def test_applied_sequences_agree_and_have_no_gaps() -> None:
    checker = SafetyChecker()
    checker.observe_applied(1, [entry(1, 1), entry(2, 1)])
    with pytest.raises(Violation, match="applied index 4 after 2"):
        checker.observe_applied(1, [entry(4, 1)])
    with pytest.raises(Violation, match="another member applied"):
        checker.observe_applied(2, [entry(1, 2)])


def test_leader_completeness() -> None:
    checker = SafetyChecker()
    checker.observe_commit(2, 2)
    checker.observe_applied(1, [entry(1, 1), entry(2, 2)])
    checker.check_leader_log(3, 4, {1: 1, 2: 2}, 1)
    with pytest.raises(Violation, match="committed entry lost"):
        checker.check_leader_log(2, 4, {1: 1}, 1)
    # A leader of an older term (elected late from delayed votes) need not hold
    # entries committed in a later term.
    checker.observe_commit(3, 5)
    checker.observe_applied(1, [entry(3, 5)])
    checker.check_leader_log(2, 4, {1: 1, 2: 2, 3: 3}, 1)
    with pytest.raises(Violation, match="committed entry lost"):
        checker.check_leader_log(2, 6, {1: 1, 2: 2, 3: 3}, 1)


def test_durability_of_hard_state_and_entries() -> None:
    checker = SafetyChecker()
    checker.model(1).saved(Ready(hard_state=HardState(3, 2, 0), entries=[entry(1, 3)]))
    checker.check_recovered(1, HardState(3, 2, 0), None, [entry(1, 3)], [])
    with pytest.raises(Violation, match="vote"):
        checker.check_recovered(1, HardState(3, 0, 0), None, [entry(1, 3)], [])
    with pytest.raises(Violation, match="index 1"):
        checker.check_recovered(1, HardState(3, 2, 0), None, [], [])
    # What a crash cut short may be lost.
    cut_short = Ready(hard_state=HardState(4, 1, 0), entries=[entry(1, 4)])
    checker.check_recovered(1, HardState(4, 1, 0), None, [], [cut_short])


def _get(op_id: int, call: int, ret: int, kv: KeyValue | None, stale: bool = False) -> Op:
    op = Op(op_id, 0, "get", "k", call, return_us=ret, status="ok", read_result=kv, stale=stale)
    return op


def _put(op_id: int, call: int, ret: int, value: bytes, version: int) -> Op:
    return Op(
        op_id, 1, "put", "k", call, value=value, return_us=ret, status="ok",
        write_result=Written(version),
    )  # fmt: skip


def test_stale_read_after_a_write_is_not_linearizable() -> None:
    history = [_put(0, 0, 10, b"v1", 1), _get(1, 20, 30, None)]
    assert check_history(history).outcome == "violation"
    stale = [_put(0, 0, 10, b"v1", 1), _get(1, 20, 30, None, stale=True)]
    assert check_history(stale).outcome == "ok"  # stale reads are outside the check


def test_stale_read_phantoms() -> None:
    good = [_put(0, 0, 10, b"v1", 1), _get(1, 20, 30, KeyValue("k", b"v1", 1), stale=True)]
    assert check_stale_reads(good) is None
    phantom = [_put(0, 0, 10, b"v1", 1), _get(1, 20, 30, KeyValue("k", b"v9", 1), stale=True)]
    assert check_stale_reads(phantom) is not None
    wrong_version = [
        _put(0, 0, 10, b"v1", 1),
        _get(1, 20, 30, KeyValue("k", b"v1", 2), stale=True),
    ]
    assert check_stale_reads(wrong_version) is not None


def test_early_lease_expiry() -> None:
    grant = Op(
        0, 3, "lease", "", 0, return_us=5_000, status="ok",
        command=LeaseGrant(100), write_result=LeaseGranted(1, 100), checked=False,
    )  # fmt: skip
    late = Op(
        1, 3, "lease", "", 150_000, return_us=160_000, status="ok",
        command=LeaseGrant(100), write_result=LeaseNotFound(1), checked=False,
    )  # fmt: skip
    assert check_leases([grant, late]) is None
    early = Op(
        1, 3, "lease", "", 50_000, return_us=60_000, status="ok",
        command=LeaseGrant(100), write_result=LeaseNotFound(1), checked=False,
    )  # fmt: skip
    problem = check_leases([grant, early])
    assert problem is not None and "expired early" in problem


def test_late_lease_expiry_counts_the_decision_drift_and_stale_checkpoints() -> None:
    grant = Op(
        0, 3, "lease", "", 0, return_us=10_000, status="ok",
        command=LeaseGrant(100), write_result=LeaseGranted(1, 100), checked=False,
    )  # fmt: skip
    probe = Op(
        1, 3, "put", "lease/k", 400_000, return_us=410_000, status="ok", probe=True,
        command=Put("lease/k", b"x", lease=1), write_result=Written(7), checked=False,
    )  # fmt: skip

    def late(
        decided: int | None = None,
        drift: float = 0.0,
        changes: list[int] | None = None,
        stale_us: int = 0,
    ) -> str | None:
        return check_leases_late(
            [grant, probe],
            lambda a, b: 0,
            lambda a, b: changes or [],
            lambda change, since: stale_us,
            lambda lease: decided,
            drift=drift,
            bound_us=50_000,
            per_change_us=10_000,
        )

    # Deadline 10 ms + 100 ms + 50 ms: a probe at 400 ms finding the lease is late...
    problem = late()
    assert problem is not None and "expired late" in problem
    assert late(decided=500_000) is not None  # ...and so is a decision after the deadline
    assert late(decided=150_000) is None  # decided in time: the commit may lag
    # A slow clock (drift) or a leader change resuming from a stale checkpoint
    # extend what is allowed.
    assert late(drift=3.0) is None
    assert late(changes=[100_000]) is not None
    assert late(changes=[100_000], stale_us=300_000) is None


def test_event_loop_orders_by_time_then_schedule() -> None:
    loop = EventLoop()
    seen: list[str] = []
    loop.at(20, "b", lambda: seen.append("b"))
    loop.at(10, "a", lambda: seen.append("a"))
    loop.at(20, "c", lambda: seen.append("c"))
    loop.run_until(15)
    assert seen == ["a"] and loop.now_us == 15
    loop.run_until(100)
    assert seen == ["a", "b", "c"]
    other = EventLoop()
    other.at(10, "a", lambda: None)
    other.at(20, "b", lambda: None)
    other.at(20, "c", lambda: None)
    other.run_until(100)
    assert other.digest() == loop.digest()


def test_network_partitions_loss_and_duplication() -> None:
    net = SimNetwork(Random(1), NetworkFaults(loss=0.0, duplicate=1.0))
    copies: list[int] = []
    net.send(1, 2, copies.append)
    assert len(copies) == 2
    net.partition(split_links([1], [2, 3]))
    assert net.isolated(1, 2) and net.isolated(3, 1) and not net.isolated(2, 3)
    copies.clear()
    net.send(1, 3, copies.append)
    assert copies == [] and net.counters.dropped_partition == 1
    net.heal()
    lossy = SimNetwork(Random(2), NetworkFaults(loss=1.0))
    lossy.send(1, 2, copies.append)
    assert copies == [] and lossy.counters.dropped_loss == 1


def test_recovered_commit_must_match_the_committed_entry() -> None:
    checker = SafetyChecker()
    checker.observe_applied(1, [entry(1, 1), entry(2, 2, b"new")])
    with pytest.raises(Violation, match="recovery"):
        checker.check_recovered_commit(
            2, HardState(3, 0, 2), None, [entry(1, 1), entry(2, 1, b"old")]
        )
    # Beyond the loaded commit anything may be loaded.
    checker.check_recovered_commit(2, HardState(3, 0, 1), None, [entry(1, 1), entry(2, 1)])
    # Not yet seen committed: remembered, checked when some member applies it.
    checker.check_recovered_commit(
        2, HardState(3, 0, 3), None, [entry(1, 1), entry(2, 2, b"new"), entry(3, 2, b"a")]
    )
    with pytest.raises(Violation, match="recovery"):
        checker.observe_applied(1, [entry(3, 2, b"b")])


def test_grants_and_acks_must_be_durable_when_delivered() -> None:
    checker = SafetyChecker()
    grant = RequestVoteResponse(src=2, dst=1, term=2, granted=True)
    with pytest.raises(Violation, match="durability at delivery"):
        checker.check_delivery(grant, None)
    checker.check_delivery(RequestVoteResponse(2, 1, 2, True, pre_vote=True), None)
    checker.model(2).saved(Ready(hard_state=HardState(2, 1, 0), entries=[entry(1, 1)]))
    checker.check_delivery(grant, None)
    ack = AppendEntriesResponse(src=2, dst=1, term=2, success=True, match_index=2)
    with pytest.raises(Violation, match="ends before"):
        checker.check_delivery(ack, None)
    checker.model(2).saved(Ready(entries=[entry(2, 2)]))
    checker.check_delivery(ack, lambda index: 2)
    with pytest.raises(Violation, match="leader 1 term 1"):
        checker.check_delivery(ack, lambda index: 1)


def test_watch_answers_are_complete_and_in_order() -> None:
    state = MetadataStateMachine()
    for index, key in enumerate(["k0", "x", "k1", "k0"], start=1):
        state.apply_request(index, Request(0, Put(key, b"v%d" % index)))
    watches = WatchChecker()
    watches.harvest(1, state)
    good = state.changes_since(0, "k", True)
    watches.check(0, 1, "k", 0, good, state.history_start)
    assert isinstance(good, WatchBatch)
    with pytest.raises(Violation, match="skipped"):
        watches.check(0, 1, "k", 0, WatchBatch(good.events[1:], good.revision), 0)
    with pytest.raises(Violation, match="redelivered"):
        watches.check(0, 1, "k", 1, WatchBatch(good.events, good.revision), 0)
    with pytest.raises(Violation, match="Compacted expected"):
        watches.check(0, 1, "k", 0, good, 2)
