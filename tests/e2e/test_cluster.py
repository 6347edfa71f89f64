"""End-to-end: real ``catenary server`` processes on loopback, driven by the client.

Every process is started by ``LocalCluster`` and stopped by PID in a
``finally`` (SIGTERM, then SIGKILL after a bound).  The tests share one xdist
group so two clusters never compete for this machine's two cores.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest

from catenary.api.types import Event
from catenary.bench.metadata import LocalCluster, NodeProcess
from catenary.client import (
    Client,
    ConnectionRefusedByNodeError,
    IndeterminateError,
    PreconditionFailedError,
    UnavailableError,
)
from catenary.wire import FrameKind, Role, encode_hello, make_hello

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e"), pytest.mark.timeout(120)]

T = TypeVar("T")


def run(body: Callable[[], Awaitable[T]], timeout_s: float = 100.0) -> T:
    async def main() -> T:
        async with asyncio.timeout(timeout_s):
            return await body()

    return asyncio.run(main())


@asynccontextmanager
async def cluster_of(root: Path, size: int, name: str = "e2e") -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(root, cluster_name=name)
    try:
        await cluster.start_cluster(size)
        yield cluster
    finally:
        cluster.stop_all()  # by PID, every process this cluster started


async def node_of_leader(cluster: LocalCluster, client: Client) -> NodeProcess:
    """The process of the current metadata leader."""
    leader = (await client.servers()).leader
    for node in cluster.nodes:
        if not node.running():
            continue
        status = await client.status(node.client_address)
        if status.node == leader:
            return node
    raise AssertionError(f"leader {leader} is not one of the running nodes")


async def catenary(*args: str) -> tuple[int, str, str]:
    """Run the ``catenary`` command line in a child process; (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from catenary.cli.main import main; sys.argv[0] = 'catenary'; main()",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# ------------------------------------------------------------ the workload


@dataclass
class KeyRecord:
    acked_version: int = 0
    acked_value: bytes = b""
    unsure: bool = False  # the last write was indeterminate


@dataclass
class Workload:
    """Writers doing conditional puts on their own key; every acknowledged put is recorded."""

    client: Client
    keys: int = 6
    records: dict[str, KeyRecord] = field(default_factory=dict)
    acked_writes: list[tuple[str, int]] = field(default_factory=list)  # (key, version)
    acked: int = 0
    indeterminate: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def writer(self, key: str) -> None:
        record = self.records.setdefault(key, KeyRecord())
        version = 0
        n = 0
        while not self.stop.is_set():
            n += 1
            value = f"{key}#{n}".encode()
            try:
                version = await self.client.metadata.put(
                    key, value, if_version=version, timeout_s=3.0
                )
            except (IndeterminateError, PreconditionFailedError, UnavailableError) as exc:
                if isinstance(exc, IndeterminateError):
                    self.indeterminate += 1
                    record.unsure = True
                # Learn where the key really is before the next conditional put.
                while not self.stop.is_set():
                    try:
                        kv = await self.client.metadata.get(key, timeout_s=3.0)
                    except UnavailableError:
                        continue
                    version = kv.version if kv is not None else 0
                    break
                continue
            record.acked_version, record.acked_value, record.unsure = version, value, False
            self.acked_writes.append((key, version))
            self.acked += 1

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Workload]:
        tasks = [asyncio.create_task(self.writer(f"/load/k{i}")) for i in range(self.keys)]
        try:
            yield self
        finally:
            self.stop.set()
            await asyncio.gather(*tasks)

    async def wait_acked(self, more: int, timeout_s: float = 20.0) -> float:
        """Until ``more`` further puts are acknowledged; returns the seconds it took."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        target = self.acked + more
        while self.acked < target:
            assert loop.time() - start < timeout_s, f"writes did not resume in {timeout_s}s"
            await asyncio.sleep(0.01)
        return loop.time() - start

    async def check(self, client: Client) -> None:
        """Every acknowledged put is present (or superseded by a later one of its writer)."""
        for key, record in sorted(self.records.items()):
            kv = await client.metadata.get(key)
            if record.acked_version == 0:
                continue
            assert kv is not None, f"{key}: acknowledged version {record.acked_version} lost"
            assert kv.version >= record.acked_version, (key, kv.version, record.acked_version)
            if not record.unsure:
                assert (kv.version, kv.value) == (record.acked_version, record.acked_value), key


# ------------------------------------------------------------------ tests


def test_three_nodes_serve_survive_leader_kill_and_full_restart(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster_of(tmp_path, 3) as cluster:
            # Puts and gets through every node's address (followers redirect to the leader).
            for node in cluster.nodes:
                async with Client([node.client_address], cluster_name="e2e") as client:
                    key = f"/via/{node.index}"
                    version = await client.metadata.put(key, b"x")
                    for other in cluster.nodes:
                        async with Client([other.client_address]) as reader:
                            kv = await reader.metadata.get(key)
                            assert kv is not None and kv.version == version

            # The command line against the real cluster.
            address = cluster.node(2).client_address
            code, out, err = await catenary("status", "--json", "--address", address)
            assert code == 0, f"catenary status exited {code}: {err}"  # its reason, not a bad JSON
            report = json.loads(out)
            assert [n["reachable"] for n in report["nodes"]] == [True] * 3, report
            assert not report["warnings"] and "cannot survive" not in err
            code, out, _ = await catenary("metadata", "put", "/cli", "1", "--address", address)
            assert code == 0
            code, _, err = await catenary(
                "metadata", "put", "/cli", "2", "--if-absent", "--address", address
            )
            assert code == 1 and "precondition failed" in err

            async with Client(cluster.client_addresses, cluster_name="e2e") as client:
                # A watcher of every write, across the failover: no gap, no repeat, no going back.
                start = await client.metadata.put("/load-start", b"")
                events: list[Event] = []
                watcher = client.metadata.watch("/load/", prefix=True, from_version=start)

                async def watch() -> None:
                    async for event in watcher:
                        events.append(event)

                watching = asyncio.create_task(watch())
                workload = Workload(client)
                async with workload.running():
                    await workload.wait_acked(50)
                    leader = await node_of_leader(cluster, client)
                    cluster.kill(leader, signal.SIGKILL)
                    resumed_s = await workload.wait_acked(20, timeout_s=30)
                    print(f"writes resumed {resumed_s:.2f}s after SIGKILL of the leader")
                new_leader = await node_of_leader(cluster, client)
                assert new_leader is not leader
                await workload.check(client)
                assert workload.acked > 70

                last = max(version for _key, version in workload.acked_writes)
                async with asyncio.timeout(20):
                    while watcher.revision < last:
                        await asyncio.sleep(0.02)
                await watcher.aclose()
                await watching
                versions = [e.version for e in events]
                assert versions == sorted(set(versions)), "watch went back in time or repeated"
                seen = {(e.key, e.version) for e in events}
                missing = [w for w in workload.acked_writes if w not in seen]
                assert not missing, f"acknowledged writes the watch never delivered: {missing[:5]}"

            # Restart every node on its data: everything is still there.
            cluster.stop_all()
            for node in cluster.nodes:
                cluster.start(node)
            await cluster.wait_voters(3)
            async with Client(cluster.client_addresses, cluster_name="e2e") as client:
                await workload.check(client)
                for node in cluster.nodes:
                    assert await client.metadata.get(f"/via/{node.index}") is not None
                await client.metadata.put("/after-restart", b"ok")

    run(body)


def test_learner_joins_under_load_then_a_member_is_removed(tmp_path: Path) -> None:
    async def body() -> None:
        async with (
            cluster_of(tmp_path, 3) as cluster,
            Client(cluster.client_addresses, cluster_name="e2e") as client,
        ):
            workload = Workload(client, keys=4)
            async with workload.running():
                await workload.wait_acked(20)
                joiner = cluster.add_node(seeds=[cluster.node(1).client_address])
                await cluster.wait_voters(4, timeout_s=40)
                joined = (await client.status(joiner.client_address)).node
                servers = await client.servers()
                assert {m.node: m.role for m in servers.members}[joined] == "voter"
                await workload.wait_acked(20)

                await client.remove_server(joined)
                await cluster.wait_voters(3, timeout_s=30)
                servers = await client.servers()
                assert joined not in {m.node for m in servers.members}
                await workload.wait_acked(20)
            await workload.check(client)

    run(body)


def _read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the node sends until it closes the connection (or the bound passes)."""
    sock.settimeout(timeout_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return data
        if not chunk:
            return data
        data += chunk


def test_bad_frames_drop_only_that_connection(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster_of(tmp_path, 1, name="frames") as cluster:
            node = cluster.node(1)
            host, port = node.client_address.split(":")
            hello = encode_hello(make_hello("frames", 0, 0, Role.CLIENT))
            request_header = struct.pack(">IB", 50, FrameKind.REQUEST)
            attacks = {
                "garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4,
                "oversized": struct.pack(">IB", 1 << 30, FrameKind.HELLO) + b"x" * 64,
                "bad payload": hello + struct.pack(">IB", 8, FrameKind.REQUEST) + b"\xc1" * 8,
                "unknown kind": hello + struct.pack(">IB", 3, 250) + b"abc",
                "oversized request": hello + struct.pack(">IB", (1 << 31), FrameKind.REQUEST),
            }
            async with Client([node.client_address], cluster_name="frames") as client:
                await client.metadata.put("/before", b"1")
                for name, payload in attacks.items():

                    def attack(payload: bytes = payload) -> bytes:
                        with socket.create_connection((host, int(port)), timeout=5) as sock:
                            sock.sendall(payload)
                            return _read_until_closed(sock, timeout_s=10)

                    # The node closes the connection (it may first answer the hello).
                    await asyncio.to_thread(attack)
                    # ... and keeps serving the client's connection, opened before.
                    await client.metadata.put(f"/after/{name}", b"ok")

                # Truncated: a hello and half a request, then the sender goes away.
                def truncated() -> None:
                    with socket.create_connection((host, int(port)), timeout=5) as sock:
                        sock.sendall(hello + request_header + b"\x93")

                await asyncio.to_thread(truncated)
                kv = await client.metadata.get("/before")
                assert kv is not None and kv.value == b"1"
                assert len((await client.metadata.list("/after/")).kvs) == len(attacks)
            assert node.running()
            log = node.log_text().lower()
            assert log.count("dropping client connection") >= len(attacks), log[-3000:]

            # The HTTP admin API of the same node: alive, ready, and the drops are counted.
            base = f"http://{node.admin_address}"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
                async with http.get(f"{base}/health") as resp:
                    assert resp.status == 200
                async with http.get(f"{base}/ready") as resp:
                    assert resp.status == 200 and (await resp.json())["ready"] is True
                async with http.get(f"{base}/v1/status") as resp:
                    status = await resp.json()
                    assert status["raft_state"] == "leader" and status["provisioned"] is True
                async with http.get(f"{base}/metrics") as resp:
                    text = await resp.text()
                    assert "catenary_raft_term" in text
                    assert "catenary_client_connections_dropped_total" in text

    run(body)


def test_another_clusters_node_and_client_are_refused(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster_of(tmp_path / "a", 1, name="alpha") as alpha:
            seed = alpha.node(1).client_address
            stranger = LocalCluster(tmp_path / "b", cluster_name="beta")
            try:
                node = stranger.add_node(seeds=[seed])
                assert node.process is not None
                code = await asyncio.to_thread(node.process.wait, 30)
                assert code != 0
                assert "refused" in node.log_text().lower()
            finally:
                stranger.stop_all()
            async with Client([seed], cluster_name="beta", timeout_s=2) as client:
                with pytest.raises(ConnectionRefusedByNodeError, match="cluster"):
                    await client.metadata.get("/k")
            async with Client([seed], cluster_name="alpha") as client:
                nodes = await client.nodes()
                assert [n.client_address for n in nodes] == [seed]
                servers = await client.servers()
                assert len(servers.members) == 1

    run(body)
