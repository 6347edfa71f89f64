"""A single ``catenary server`` process: provisions itself, serves, stops cleanly, restarts."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from pathlib import Path

import msgspec
import pytest
from server_procs import LAUNCH, NodeProcess

from catenary.api import messages as api
from catenary.api.types import Precondition, PreconditionFailed, WatchBatch, Written
from catenary.server.datadir import DataDir
from catenary.wire import (
    FrameDecoder,
    FrameKind,
    decode_payload,
    encode_hello,
    encode_message,
    make_hello,
)
from catenary.wire.handshake import Role

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

_encoder = msgspec.msgpack.Encoder()


def test_single_node_provisions_serves_and_restarts(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = NodeProcess(tmp_path / "n1").start()
    nodes.append(node)
    status = node.wait_serving()
    assert (status.node, status.generation, status.raft_state) == (1, 1, "leader")
    assert [(m.node, m.role) for m in status.members] == [(1, "voter")]

    put = node.request(api.Put(1, "greeting", b"hello"))
    assert isinstance(put, api.WriteReply) and isinstance(put.result, Written)
    version = put.result.version
    got = node.request(api.Get(2, "greeting"))
    assert isinstance(got, api.GetReply) and got.kv is not None
    assert (got.kv.value, got.kv.version) == (b"hello", version)
    failed = node.request(api.Put(3, "greeting", b"x", Precondition("absent")))
    assert isinstance(failed, api.WriteReply)
    assert failed.result == PreconditionFailed("greeting", version)
    # System keys: the cluster record, this node's record and the logs' chains (created
    # by the log controller once the cluster is provisioned); clients may not write them.
    system = node.request(api.List(4, "/catenary/"))
    assert isinstance(system, api.ListReply)
    assert [kv.key for kv in system.kvs if not kv.key.startswith("/catenary/logs/")] == [
        "/catenary/cluster",
        "/catenary/next_node_id",
        "/catenary/nodes/1",
    ]
    refused = node.request(api.Put(5, "/catenary/cluster", b"mine"))
    assert isinstance(refused, api.ErrorReply) and refused.code == "refused"
    nodes_reply = node.request(api.ListNodes(6))
    assert isinstance(nodes_reply, api.NodesReply)
    assert [(n.node, n.client_address) for n in nodes_reply.nodes] == [(1, node.client_address)]

    # The HTTP admin app runs on the admin address, reading this node.
    with urllib.request.urlopen(f"http://{node.admin_address}/ready", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://{node.admin_address}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    figures = dict(
        line.split(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#")
    )
    assert float(figures["catenary_raft_term"]) >= 1
    assert float(figures["catenary_raft_is_leader"]) == 1
    assert 'catenary_requests_total{kind="put",outcome="ok"}' in metrics

    assert node.terminate() == 0
    assert "stopped" in node.log()

    node.start()
    status = node.wait_serving()
    assert (status.node, status.generation) == (1, 2)
    got = node.request(api.Get(7, "greeting"))
    assert isinstance(got, api.GetReply) and got.kv is not None and got.kv.value == b"hello"
    # The new generation reaches the node record (announced after the restart).
    node.wait_for(lambda s: _record_generation(node) == 2, "the node record to show generation 2")
    assert node.terminate() == 0


def _record_generation(node: NodeProcess) -> int:
    reply = node.request(api.ListNodes(1))
    assert isinstance(reply, api.NodesReply)
    return reply.nodes[0].generation


def test_watch_streams_changes(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    node = NodeProcess(tmp_path / "n1").start()
    nodes.append(node)
    node.wait_serving()

    async def main() -> list[api.WatchReply]:
        host, port = node.client_address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(encode_hello(make_hello("catenary", 0, 0, Role.CLIENT)))
        writer.write(encode_message(FrameKind.REQUEST, api.Watch(9, "app/", prefix=True), _encoder))
        decoder = FrameDecoder()
        replies: list[api.WatchReply] = []
        put_done = False
        while len(replies) < 3:
            for frame in decoder.feed(await asyncio.wait_for(reader.read(65536), 10)):
                if frame.kind != FrameKind.REPLY:
                    continue
                reply = decode_payload(frame, api.reply_decoder)
                assert isinstance(reply, api.WatchReply), reply
                replies.append(reply)
            if replies and not put_done:
                put_done = True
                from catenary.runtime.rpc import call_many

                await call_many(
                    node.client_address,
                    [api.Put(1, "app/a", b"1"), api.Put(2, "other", b"x")],
                )
                await call_many(node.client_address, [api.Delete(3, "app/a")])
        writer.close()
        return replies

    replies = asyncio.run(main())
    assert isinstance(replies[0].batch, WatchBatch) and replies[0].batch.events == ()
    events = [e for r in replies[1:] for e in r.batch.events]  # type: ignore[union-attr]
    assert [(e.kind, e.key, e.value) for e in events] == [
        ("put", "app/a", b"1"),
        ("delete", "app/a", b""),
    ]
    assert events[0].version < events[1].version
    assert node.terminate() == 0


def test_production_waits_to_be_provisioned(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    node = NodeProcess(tmp_path / "n1", "--production").start()
    nodes.append(node)
    status = node.wait_for(lambda s: True, "an answer")
    assert not status.provisioned and status.node == 0
    unavailable = node.request(api.Put(1, "k", b"v"))
    assert isinstance(unavailable, api.ErrorReply) and unavailable.code == "unavailable"
    wrong = node.request(api.Provision(2, "someone-else"))
    assert isinstance(wrong, api.ErrorReply) and wrong.code == "refused"
    assert node.request(api.Provision(3, "catenary")) == api.OkReply(3, "provisioned")
    assert node.request(api.Provision(4)) == api.OkReply(4, "already provisioned")
    node.wait_serving()
    assert isinstance(node.request(api.Put(5, "k", b"v")), api.WriteReply)

    # A joiner whose reply was lost asks again: it gets the same id, not a second one.
    def join(request_id: int, peer: str) -> api.JoinReply:
        reply = node.request(
            api.Join(request_id, "catenary", 0, peer, "127.0.0.1:9", "", 1), timeout_s=15
        )
        assert isinstance(reply, api.JoinReply), reply
        return reply

    first = join(6, "127.0.0.1:8")
    assert first.node == 2
    assert join(7, "127.0.0.1:8").node == 2
    assert join(8, "127.0.0.1:10").node == 3  # other addresses: another node
    servers = node.request(api.ListServers(9))
    assert isinstance(servers, api.ServersReply)
    assert [(m.node, m.role) for m in servers.members] == [
        (1, "voter"),
        (2, "learner"),
        (3, "learner"),
    ]
    assert node.terminate() == 0


def test_data_dir_of_another_cluster_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    DataDir.open(str(data), cluster_name="blue", metadata_server="replicated").close()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LAUNCH,
            "server",
            "--data-dir",
            str(data),
            "--cluster-name",
            "green",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "belongs to cluster 'blue', not 'green'; refusing to start" in result.stderr


def test_snapshots_bound_the_log_and_restart_from_them(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = NodeProcess(
        tmp_path / "n1",
        "--set",
        "raft.compact_after_entries=40",
        "--set",
        "storage.segment_bytes_max=4096",
    ).start()
    nodes.append(node)
    node.wait_serving()

    async def put_all() -> None:
        from catenary.runtime.rpc import call_many

        for batch in range(6):
            await call_many(
                node.client_address,
                [api.Put(i, f"key/{batch}/{i}", b"x" * 50) for i in range(1, 51)],
                timeout_s=20,
            )

    asyncio.run(put_all())
    assert node.terminate() == 0
    raft_dir = node.data_dir / "raft"
    assert (raft_dir / "snapshot").exists()
    node.start()
    node.wait_serving()
    listed = node.request(api.List(1, "key/"))
    assert isinstance(listed, api.ListReply)
    assert len(listed.kvs) == 300
    segments = sorted(f.name for f in (raft_dir / "log").iterdir() if f.suffix == ".seg")
    # 300+ entries of ~100 bytes in 4 KiB segments would be ~8 files without compaction.
    assert 1 <= len(segments) <= 3, segments
    assert node.terminate() == 0


def test_a_seed_of_another_cluster_refuses_the_joiner(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    seed = NodeProcess(tmp_path / "blue", "--cluster-name", "blue").start()
    nodes.append(seed)
    seed.wait_serving()
    joiner = NodeProcess(
        tmp_path / "green", "--cluster-name", "green", "--seed", seed.client_address
    ).start()
    nodes.append(joiner)
    assert joiner.process is not None
    assert joiner.process.wait(timeout=30) == 2
    assert "refused this node: cluster 'green' is not this cluster ('blue')" in joiner.log()
    assert seed.terminate() == 0


def test_local_mode_serves_the_same_api_and_keeps_its_data(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = NodeProcess(tmp_path / "local", "--metadata-server", "local").start()
    nodes.append(node)
    status = node.wait_for(lambda s: s.provisioned, "the local store")
    assert (status.metadata_server, status.raft_state, status.node) == ("local", "none", 1)
    put = node.request(api.Put(1, "k", b"v1"))
    assert isinstance(put, api.WriteReply) and isinstance(put.result, Written)
    conditional = node.request(api.Put(2, "k", b"v2", Precondition("version", put.result.version)))
    assert isinstance(conditional, api.WriteReply) and isinstance(conditional.result, Written)
    lease = node.request(api.GrantLease(3, 60_000))
    assert isinstance(lease, api.WriteReply)
    assert node.terminate() == 0

    node.start()
    node.wait_for(lambda s: s.provisioned and s.generation == 2, "the restarted local store")
    got = node.request(api.Get(4, "k"))
    assert isinstance(got, api.GetReply) and got.kv is not None
    assert (got.kv.value, got.kv.version) == (b"v2", conditional.result.version)
    assert node.terminate() == 0

    # Its data directory is not a replicated node's.
    result = subprocess.run(
        [sys.executable, "-c", LAUNCH, "server", "--data-dir", str(node.data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "holds a 'local' metadata server" in result.stderr
