"""The Raft core's events become one INFO line each on ``catenary.raft`` and a metric."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from random import Random

import pytest

from catenary.api.messages import NodeStatus
from catenary.core.metadata.replica import MetadataReplica
from catenary.core.raft.types import EventKind, Membership, RaftConfig, RaftEvent
from catenary.persist.raft_storage import RaftStorage
from catenary.runtime.host import HostConfig, MetadataHost
from catenary.runtime.metrics import ServerMetrics
from catenary.runtime.raft_events import RaftEventLog, describe
from catenary.runtime.ratelimit import RepeatLimiter
from catenary.storage.fs import OsFileSystem

pytestmark = pytest.mark.timeout(30)

STATUS = NodeStatus("c", 1, 1, "replicated", "leader", 1, 1, 0, 0, (), True)


def sample(metrics: ServerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_started_host_logs_its_election_and_counts_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="catenary.raft")
    metrics = ServerMetrics(lambda: STATUS)

    async def main() -> None:
        storage = RaftStorage.open(OsFileSystem(), str(tmp_path / "raft"))
        hard_state, snapshot, entries = storage.load()
        replica = MetadataReplica(
            1,
            RaftConfig(),
            Random(1),
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
            initial_membership=Membership(voters=(1,)),
        )
        replica.raft.campaign()
        host = MetadataHost(replica, storage, lambda m: None, HostConfig(tick_ms=10), metrics)
        host.start()
        try:
            async with asyncio.timeout(10):
                while not caplog.records or "election won (election)" not in caplog.text:
                    await asyncio.sleep(0.01)
        finally:
            await host.stop()

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "catenary.raft"]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "catenary.raft")
    assert lines[0].startswith("n1 term 1: election started (pre-vote): ")
    assert any(
        line.startswith("n1 term 2: election won (election): 1 of 1 votes") for line in lines
    )
    assert sample(metrics, "catenary_raft_elections_total", outcome="won", reason="election") == 1
    assert (
        sample(metrics, "catenary_raft_elections_total", outcome="started", reason="pre-vote") == 1
    )


def test_each_kind_of_event_is_one_line_and_one_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="catenary.raft")
    metrics = ServerMetrics(lambda: STATUS)
    events = [
        RaftEvent(EventKind.STEP_DOWN, 4, 3, "higher-term", "n3 is in term 5 (was 4)"),
        RaftEvent(EventKind.STEP_DOWN, 5, 1, "check-quorum", "heard from fewer than a quorum"),
        RaftEvent(EventKind.LEADER_CHANGED, 6, 2, "", "leader n2 in term 6"),
        RaftEvent(EventKind.MEMBERSHIP, 6, 4, "add-learner", "at index 9; voters [1, 2, 3]"),
        RaftEvent(EventKind.LEASE_LOST, 6, 1, "quorum", "fewer than a quorum answered"),
        RaftEvent(EventKind.LEASE_REGAINED, 6, 1, "quorum", "a quorum answered recently"),
    ]
    RaftEventLog(1, metrics).record(events)
    assert [r.getMessage() for r in caplog.records] == [
        "n1 term 4: stepped down (higher-term): n3 is in term 5 (was 4)",
        "n1 term 5: stepped down (check-quorum): heard from fewer than a quorum",
        "n1 term 6: leader changed: n2 leads term 6",
        "n1 term 6: membership change add-learner n4: at index 9; voters [1, 2, 3]",
        "n1 term 6: lease reads lost (quorum): fewer than a quorum answered",
        "n1 term 6: lease reads regained (quorum): a quorum answered recently",
    ]
    assert sample(metrics, "catenary_raft_step_downs_total", reason="higher-term") == 1
    assert sample(metrics, "catenary_raft_step_downs_total", reason="check-quorum") == 1
    assert sample(metrics, "catenary_raft_leader_changes_total") == 1
    assert sample(metrics, "catenary_membership_changes_total", kind="add-learner") == 1
    assert sample(metrics, "catenary_raft_lease_changes_total", state="lost") == 1
    assert sample(metrics, "catenary_raft_lease_changes_total", state="regained") == 1


def test_repeated_pre_votes_of_a_cut_off_node_are_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="catenary.raft")
    now = [0.0]
    metrics = ServerMetrics(lambda: STATUS)
    events_log = RaftEventLog(3, metrics, repeat_interval_s=10, clock=lambda: now[0])
    started = RaftEvent(EventKind.ELECTION_STARTED, 7, 3, "pre-vote", "asking 3 voters")
    lost = RaftEvent(EventKind.ELECTION_LOST, 7, 3, "timeout", "pre-vote: 1 of 3 votes granted")
    for _ in range(20):  # one round every half second
        events_log.record([started, lost])
        now[0] += 0.5
    events_log.record([started])
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert lines == [
        describe(3, started),
        describe(3, lost),
        describe(3, started) + " (19 more like it since the last such line)",
    ]
    assert (
        sample(metrics, "catenary_raft_elections_total", outcome="started", reason="pre-vote") == 21
    )


def test_the_repeat_limiter_counts_what_it_leaves_out() -> None:
    now = [0.0]
    limiter = RepeatLimiter(5, clock=lambda: now[0])
    assert limiter.admit("a") == 0
    assert limiter.admit("a") is None
    assert limiter.admit("b") == 0  # keys are independent
    now[0] = 4.9
    assert limiter.admit("a") is None
    now[0] = 5.0
    assert limiter.admit("a") == 2
    assert limiter.admit("a") is None
