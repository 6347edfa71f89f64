"""The HTTP admin app against a stand-in node."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Gauge

from catenary.admin.http import create_app
from catenary.api.messages import NodeStatus, RaftMember
from catenary.runtime.metrics import ServerMetrics

pytestmark = pytest.mark.timeout(30)


def node_status(*, provisioned: bool = True, leader: int = 1) -> NodeStatus:
    return NodeStatus(
        cluster_name="c",
        node=1,
        generation=3,
        metadata_server="replicated",
        raft_state="leader" if leader == 1 else "follower",
        term=4,
        leader=leader,
        commit_index=10,
        applied_index=9,
        members=(RaftMember(1, "voter", 10), RaftMember(2, "learner", 7)),
        provisioned=provisioned,
    )


@dataclass
class StandIn:
    current: NodeStatus = field(default_factory=node_status)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    fail: bool = False
    full: str = ""

    def disk_full(self) -> str:
        return self.full

    def status(self) -> NodeStatus:
        if self.fail:
            raise RuntimeError("host task gone")
        return self.current


def test_endpoints() -> None:
    async def body() -> None:
        node = StandIn()
        Gauge("catenary_raft_term", "term", registry=node.registry).set(4)
        async with TestClient(TestServer(create_app(node))) as http:
            resp = await http.get("/health")
            assert resp.status == 200 and (await resp.json())["status"] == "alive"

            resp = await http.get("/ready")
            assert resp.status == 200 and (await resp.json())["leader"] == 1

            resp = await http.get("/v1/status")
            data = await resp.json()
            assert resp.status == 200
            assert data["term"] == 4 and data["applied_index"] == 9
            assert data["members"][1] == {"node": 2, "role": "learner", "match_index": 7}

            resp = await http.get("/metrics")
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            assert "catenary_raft_term 4.0" in await resp.text()

            node.full = "No space left on device"
            resp = await http.get("/ready")
            assert resp.status == 503 and "disk full" in (await resp.json())["reason"]
            resp = await http.get("/health")
            assert resp.status == 200
            node.full = ""

            node.current = node_status(leader=0)
            resp = await http.get("/ready")
            assert resp.status == 503 and "leader" in (await resp.json())["reason"]
            node.current = node_status(provisioned=False)
            resp = await http.get("/ready")
            assert resp.status == 503 and "provisioned" in (await resp.json())["reason"]

            node.fail = True
            resp = await http.get("/v1/status")
            assert resp.status == 500 and "host task gone" in (await resp.json())["error"]
            resp = await http.get("/ready")
            assert resp.status == 503
            resp = await http.get("/health")  # liveness does not depend on the node's state
            assert resp.status == 200

    asyncio.run(body())


def test_async_status_and_metrics_under_metrics_attribute() -> None:
    @dataclass
    class Metrics:
        registry: CollectorRegistry

    class AsyncNode:
        def __init__(self) -> None:
            self.metrics = Metrics(CollectorRegistry())
            Gauge("catenary_raft_leader", "leader", registry=self.metrics.registry).set(1)

        async def status(self) -> NodeStatus:
            return node_status()

    async def body() -> None:
        async with TestClient(TestServer(create_app(AsyncNode()))) as http:
            resp = await http.get("/v1/status")
            assert resp.status == 200 and (await resp.json())["node"] == 1
            resp = await http.get("/metrics")
            assert "catenary_raft_leader 1.0" in await resp.text()
            resp = await http.get("/nope")
            assert resp.status == 404

    asyncio.run(body())


def test_log_service_in_status_and_metrics() -> None:
    """The log service's counters are read at scrape time; its logs are in /v1/status."""
    figures: dict[str, object] = {"appends": 0, "messages_in": 0, "disk_full": ""}

    class LogNode:
        def __init__(self) -> None:
            self.metrics = ServerMetrics(node_status)
            self.metrics.watch_logs(lambda: figures)

        def status(self) -> NodeStatus:
            return node_status()

        def log_status(self) -> dict[str, object]:
            return {
                "logs": [{"log": 0, "segments": 1, "provider": "replicated"}],
                "figures": figures,
            }

    async def body() -> None:
        async with TestClient(TestServer(create_app(LogNode()))) as http:
            resp = await http.get("/metrics")
            text = await resp.text()
            assert "catenary_log_appends_total 0.0" in text
            # An append (as the node counts it) shows at the next scrape.
            figures.update(appends=1, append_records=3, messages_in=7, inflight_records=2)
            text = await (await http.get("/metrics")).text()
            assert "catenary_log_appends_total 1.0" in text
            assert "catenary_log_append_records_total 3.0" in text
            assert 'catenary_log_messages_total{direction="in"} 7.0' in text
            assert "catenary_log_inflight_records 2.0" in text
            assert "catenary_log_disk_full 0.0" in text
            # The process's own figures, for CPU per operation (``catenary bench metadata``).
            cpu = [
                line for line in text.splitlines() if line.startswith("process_cpu_seconds_total ")
            ]
            assert len(cpu) == 1 and float(cpu[0].split()[1]) > 0, cpu
            assert "process_resident_memory_bytes " in text
            data = await (await http.get("/v1/status")).json()
            assert data["log_service"]["logs"][0]["log"] == 0
            assert data["log_service"]["figures"]["appends"] == 1
            assert data["term"] == 4

    asyncio.run(body())
