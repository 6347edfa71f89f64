"""Three real processes started by the ``catenary dev`` launcher: one leader, three voters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_procs import LAUNCH

from catenary.api import messages as api
from catenary.api.messages import NodeStatus
from catenary.runtime.rpc import call
from catenary.server.launcher import DevCluster

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

SETTINGS = ("raft.tick_ms=20",)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DevCluster]:
    dev = DevCluster(tmp_path / "dev", nodes=3, cluster_name="trio", settings=SETTINGS)
    try:
        yield dev
    finally:
        dev.stop()  # SIGTERM then SIGKILL, by PID


def request(address: str, req: api.Request) -> api.Reply:
    return asyncio.run(call(address, req, timeout_s=5.0))


def test_three_nodes_one_leader_three_voters(cluster: DevCluster) -> None:
    asyncio.run(cluster.start(timeout_s=60))
    statuses = asyncio.run(cluster.statuses())
    assert all(isinstance(s, NodeStatus) for s in statuses), statuses
    leaders = [s for s in statuses if isinstance(s, NodeStatus) and s.raft_state == "leader"]
    assert len(leaders) == 1
    leader = leaders[0]
    assert [(m.node, m.role) for m in leader.members] == [(1, "voter"), (2, "voter"), (3, "voter")]
    assert sorted(s.node for s in statuses if isinstance(s, NodeStatus)) == [1, 2, 3]

    manifest = json.loads(cluster.manifest_path.read_text())
    assert manifest["cluster_name"] == "trio"
    assert [n["node"] for n in manifest["nodes"]] == [1, 2, 3]
    assert all(n["pid"] > 0 for n in manifest["nodes"])

    by_id = {n.node: n for n in cluster.nodes}
    leader_node = by_id[leader.node]
    follower = next(n for n in cluster.nodes if n.node != leader.node)
    # A follower sends writers and linearizable readers to the leader.
    redirected = request(follower.client_address, api.Put(1, "k", b"v"))
    assert isinstance(redirected, api.ErrorReply) and redirected.code == "not_leader"
    assert redirected.leader_address == leader_node.client_address
    written = request(leader_node.client_address, api.Put(2, "k", b"v"))
    assert isinstance(written, api.WriteReply)
    read = request(follower.client_address, api.Get(3, "k"))
    assert isinstance(read, api.ErrorReply) and read.code == "not_leader"
    # Stale reads are served by any member once it has applied the write.
    deadline = time.monotonic() + 10
    while True:
        stale = request(follower.client_address, api.Get(4, "k", stale=True))
        assert isinstance(stale, api.GetReply)
        if stale.kv is not None:
            assert stale.kv.value == b"v"
            break
        assert time.monotonic() < deadline, "the follower never applied the write"
        time.sleep(0.05)
    # A follower answers list-servers with the leader's view: match indexes included.
    servers = request(follower.client_address, api.ListServers(7))
    assert isinstance(servers, api.ServersReply) and servers.id == 7
    assert servers.leader == leader.node
    assert [m.node for m in servers.members] == [1, 2, 3]
    assert all(m.match_index > 0 for m in servers.members), servers
    nodes = request(follower.client_address, api.ListNodes(5))
    assert isinstance(nodes, api.NodesReply)
    assert [(n.node, n.client_address) for n in nodes.nodes] == [
        (n.node, n.client_address) for n in cluster.nodes
    ]

    # SIGTERM the leader alone: it hands leadership over before it exits 0.
    process = cluster.processes[leader_node.node]
    process.terminate()
    assert process.wait(timeout=20) == 0
    assert "leadership handed over" in Path(leader_node.log).read_text()
    others = [n for n in cluster.nodes if n is not leader_node]
    deadline = time.monotonic() + 10
    while True:
        statuses = [asyncio.run(cluster.status(n)) for n in others]
        new_leaders = {s.leader for s in statuses if isinstance(s, NodeStatus)}
        if len(new_leaders) == 1 and new_leaders != {0, leader_node.node}:
            break
        assert time.monotonic() < deadline, statuses
        time.sleep(0.05)
    assert cluster.stop() == {1: 0, 2: 0, 3: 0}

    # The same directory brings the same cluster back, with its data.
    again = DevCluster(cluster.directory, nodes=3, settings=SETTINGS)
    try:
        asyncio.run(again.start(timeout_s=60))
        assert [n.client_address for n in again.nodes] == [n.client_address for n in cluster.nodes]
        statuses = asyncio.run(again.statuses())
        leader = next(s for s in statuses if isinstance(s, NodeStatus) and s.raft_state == "leader")
        address = {n.node: n.client_address for n in again.nodes}[leader.node]
        got = request(address, api.Get(6, "k"))
        assert isinstance(got, api.GetReply) and got.kv is not None and got.kv.value == b"v"
        assert all(isinstance(s, NodeStatus) and s.generation == 2 for s in statuses)
    finally:
        assert again.stop() == {1: 0, 2: 0, 3: 0}


def test_dev_command_starts_and_stops_its_nodes(tmp_path: Path) -> None:
    directory = tmp_path / "dev"
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "dev", "--nodes", "1", "--data-dir", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    pids: list[int] = []
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("wrote "):
                break
        manifest = json.loads((directory / "cluster.json").read_text())
        pids = [n["pid"] for n in manifest["nodes"]]
        assert len(pids) == 1 and any(f"pid {pids[0]}" in line for line in lines), lines
        reply = request(manifest["nodes"][0]["client_address"], api.GetStatus(1))
        assert isinstance(reply, api.StatusReply) and reply.status.raft_state == "leader"
        os.kill(process.pid, signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
        assert process.returncode == 0
        assert "stopped (n1: 0)" in rest
        with pytest.raises(ProcessLookupError):
            os.kill(pids[0], 0)  # the node is gone too
    finally:
        for pid in [process.pid, *pids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)
