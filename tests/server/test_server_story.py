"""After SIGKILL of the leader, the survivors' logs tell the story: who ran an election
and won it, who saw the new leader, which peer link was lost."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from catenary.api.messages import NodeStatus
from catenary.server.launcher import DevCluster

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

SETTINGS = ("raft.tick_ms=20",)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DevCluster]:
    dev = DevCluster(tmp_path / "dev", nodes=3, cluster_name="story", settings=SETTINGS)
    try:
        yield dev
    finally:
        dev.stop()  # SIGTERM then SIGKILL, by PID


def test_the_logs_tell_an_election_after_the_leader_is_killed(cluster: DevCluster) -> None:
    asyncio.run(cluster.start(timeout_s=60))
    statuses = asyncio.run(cluster.statuses())
    old = next(s for s in statuses if isinstance(s, NodeStatus) and s.raft_state == "leader")
    os.kill(cluster.processes[old.node].pid, signal.SIGKILL)
    cluster.processes[old.node].wait(timeout=10)
    survivors = [n for n in cluster.nodes if n.node != old.node]

    deadline = time.monotonic() + 30
    while True:
        now = [asyncio.run(cluster.status(n)) for n in survivors]
        leaders = {s.leader for s in now if isinstance(s, NodeStatus)}
        if len(now) == 2 and len(leaders) == 1 and leaders.isdisjoint({0, old.node}):
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.05)
    new = leaders.pop()
    new_status = next(s for s in now if isinstance(s, NodeStatus) and s.node == new)
    term = new_status.term
    by_id = {n.node: n for n in survivors}
    other = next(n for n in survivors if n.node != new)

    def log_of(node: int, needle: str) -> str:
        deadline = time.monotonic() + 10
        while True:
            text = Path(by_id[node].log).read_text(errors="replace")
            if needle in text or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    winner = log_of(new, f"n{new} term {term}: election won (election)")
    assert f"catenary.raft: n{new} term {term}: election won (election): 2 of 3 votes" in winner
    assert f"catenary.raft: n{new} term {term}: election started (election): " in winner
    assert re.search(rf"catenary\.raft: n{new} term \d+: election started \(pre-vote\)", winner)
    assert re.search(rf"catenary\.raft: n{new} term \d+: election won \(pre-vote\)", winner)
    assert f"peer link to N{old.node} lost: " in winner

    seen = log_of(other.node, f"leader changed: n{new} leads term {term}")
    assert (
        f"catenary.raft: n{other.node} term {term}: leader changed: n{new} leads term {term}"
        in seen
    )
    assert f"peer link to N{old.node} lost: " in seen
    # Both saw the first leader too, when the cluster formed.
    assert f"leader changed: n{old.node} leads term" in seen

    assert cluster.stop()[new] == 0
