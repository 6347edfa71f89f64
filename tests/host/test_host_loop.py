"""HostLoop, driven by hand: the contract both the asyncio shell and the simulator rely on."""

from __future__ import annotations

from random import Random
from typing import Any

from catenary.api.messages import ErrorCode
from catenary.core.metadata.replica import GetQuery, MetadataReplica, ReadCompleted
from catenary.core.metadata.types import Put, Written
from catenary.core.raft.types import HardState, Membership, RaftConfig
from catenary.host.loop import Failed, HostConfig, HostLoop, Output

TICK_US = 10_000


def leader(**config: int) -> HostLoop[str]:
    replica = MetadataReplica(
        1,
        RaftConfig(),
        Random(1),
        hard_state=HardState(),
        snapshot=None,
        entries=[],
        initial_membership=Membership(voters=(1,)),
    )
    replica.raft.campaign()
    loop: HostLoop[str] = HostLoop(
        replica,
        HostConfig(**{"tick_ms": TICK_US // 1000, **config}),
        durable=HardState(),
        now_us=0,
    )
    settle(loop, 0)
    assert replica.is_leader
    return loop


def settle(loop: HostLoop[str], now_us: int) -> list[tuple[str, Any]]:
    """Poll and complete every job at once, until the loop has nothing left to do."""
    completions: list[tuple[str, Any]] = []
    out: Output[str] = loop.poll(now_us)
    while True:
        completions += out.completions
        if out.job is not None:
            out = loop.job_done()
        elif out.more:
            out = loop.poll(now_us)
        else:
            return completions


def test_a_write_is_answered_only_after_its_job_is_done() -> None:
    loop = leader()
    assert loop.submit_write(Put("a", b"1"), "w", 0) is None
    out = loop.poll(0)
    assert out.job is not None and out.job.ready is not None and out.job.ready.entries
    assert not out.completions
    # Nothing moves while the job is in flight, however often the driver polls.
    assert loop.poll(1).job is None and not loop.poll(2).completions
    done = loop.job_done()
    assert done.more
    completions = settle(loop, 3)
    assert len(completions) == 1 and completions[0][0] == "w"
    assert isinstance(completions[0][1], Written)


def test_writes_that_wait_for_a_job_are_proposed_together() -> None:
    loop = leader()
    loop.submit_write(Put("a", b"1"), "first", 0)
    first = loop.poll(0)
    assert first.job is not None
    for i in range(5):
        loop.submit_write(Put(f"k{i}", b"v"), f"w{i}", 0)
    loop.submit_writes([Put("x", b"1"), Put("y", b"1")], "batch", 0)
    loop.job_done()
    out = loop.poll(0)
    jobs = []
    completions = list(out.completions)
    while out.job is not None or out.more:
        if out.job is not None:
            if out.job.ready is not None and out.job.ready.entries:
                jobs.append(len(out.job.ready.entries))
            out = loop.job_done()
        else:
            out = loop.poll(0)
        completions += out.completions
    completions += settle(loop, 0)
    assert jobs == [7]  # five writes and a batch of two: one Ready, one job
    outcomes = dict(completions)
    assert all(isinstance(outcomes[f"w{i}"], Written) for i in range(5))
    assert [type(r) for r in outcomes["batch"]] == [Written, Written]


def test_a_deadline_makes_a_write_indeterminate_and_its_late_result_is_dropped() -> None:
    loop = leader(request_timeout_ms=100)
    loop.submit_write(Put("a", b"1"), "w", 0)
    out = loop.poll(0)
    assert out.job is not None
    assert loop.expire(99_999) == []
    expired = loop.expire(100_000)
    assert len(expired) == 1
    token, outcome = expired[0]
    assert token == "w" and isinstance(outcome, Failed)
    assert outcome.code == ErrorCode.INDETERMINATE
    loop.job_done()
    assert settle(loop, 100_001) == []  # applied, but already answered


def test_refusals_say_the_request_surely_did_not_happen() -> None:
    loop = leader(queue_max=2)
    assert loop.submit_write(Put("a", b"1"), "1", 0) is None
    assert loop.submit_read(GetQuery("a"), "2", 0) is None
    full = loop.submit_write(Put("a", b"2"), "3", 0)
    assert isinstance(full, Failed) and full.code == ErrorCode.OVERLOADED
    follower = MetadataReplica(
        2,
        RaftConfig(),
        Random(2),
        hard_state=HardState(),
        snapshot=None,
        entries=[],
        initial_membership=Membership(voters=(1, 2, 3)),
    )
    other: HostLoop[str] = HostLoop(follower, HostConfig(), durable=HardState(), now_us=0)
    refused = other.submit_write(Put("a", b"1"), "w", 0)
    assert isinstance(refused, Failed) and refused.code == ErrorCode.NOT_LEADER


def test_fail_all_tells_proposed_from_never_proposed() -> None:
    loop = leader()
    loop.submit_write(Put("a", b"1"), "proposed", 0)
    assert loop.poll(0).job is not None
    loop.submit_write(Put("b", b"1"), "waiting", 0)
    loop.submit_read(GetQuery("a"), "read", 0)
    outcomes = dict(loop.fail_all("stopping"))
    assert outcomes["proposed"].code == ErrorCode.INDETERMINATE
    assert outcomes["waiting"].code == ErrorCode.UNAVAILABLE
    assert outcomes["read"].code == ErrorCode.UNAVAILABLE
    refused = loop.submit_write(Put("c", b"1"), "late", 0)
    assert isinstance(refused, Failed) and refused.code == ErrorCode.UNAVAILABLE


def test_ticks_are_delivered_before_the_inputs_that_waited() -> None:
    loop = leader()
    seen: list[str] = []
    replica = loop.replica
    tick, read = replica.tick, replica.read

    def tick_spy(now_ms: int) -> None:
        seen.append("tick")
        tick(now_ms)

    def read_spy(request_id: int, query: Any) -> None:
        seen.append("read")
        read(request_id, query)

    replica.tick = tick_spy  # type: ignore[method-assign]
    replica.read = read_spy  # type: ignore[method-assign]
    loop.submit_read(GetQuery("a"), "r", 0)
    completions = settle(loop, 5 * TICK_US)
    # A stall of 5 intervals: 3 ticks (tick_catch_up_max), all before the read.
    assert seen == ["tick", "tick", "tick", "read"]
    assert isinstance(dict(completions)["r"], ReadCompleted)


def drive(loop: HostLoop[str], out: Output[str], now_us: int) -> list[Any]:
    """Finish what ``out`` started (jobs done at once); the events of every output."""
    events = list(out.events)
    while True:
        if out.job is not None:
            out = loop.job_done()
        elif out.more:
            out = loop.poll(now_us)
        else:
            return events
        events += out.events


def test_the_cores_events_come_out_of_the_poll_they_happened_in() -> None:
    from catenary.core.raft.types import ConfChange, ConfChangeKind, EventKind

    replica = MetadataReplica(
        1,
        RaftConfig(),
        Random(1),
        hard_state=HardState(),
        snapshot=None,
        entries=[],
        initial_membership=Membership(voters=(1,)),
    )
    replica.raft.campaign()
    loop: HostLoop[str] = HostLoop(
        replica, HostConfig(tick_ms=TICK_US // 1000), durable=HardState(), now_us=0
    )
    out = loop.poll(0)
    assert [(e.kind, e.reason) for e in out.events] == [
        (EventKind.ELECTION_STARTED, "pre-vote"),
        (EventKind.ELECTION_WON, "pre-vote"),
        (EventKind.ELECTION_STARTED, "election"),
        (EventKind.ELECTION_WON, "election"),
    ]
    assert not replica.raft.events  # drained: handed out once
    assert drive(loop, out, 0) == out.events

    def add(r: MetadataReplica) -> int:
        return r.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 2))

    assert loop.submit_call(add, "c") is None
    out = loop.poll(TICK_US // 2)
    assert [(e.kind, e.reason, e.node) for e in out.events] == [
        (EventKind.MEMBERSHIP, "add-learner", 2)
    ]
    assert out.completions == [("c", replica.raft.last_index)]
    drive(loop, out, TICK_US // 2)
    # Quiet polls carry no events.
    assert drive(loop, loop.poll(TICK_US * 2), TICK_US * 2) == []
