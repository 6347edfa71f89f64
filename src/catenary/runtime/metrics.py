"""Prometheus metrics of one node, in a registry of its own (never the global one).

Request counters and latency histograms are updated as requests finish; Raft
figures (term, commit, applied, leader) are read from the node's status when
scraped, so they can never go stale and cost nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from catenary.api.messages import NodeStatus

# Seconds; metadata requests range from tens of microseconds (stale reads) to
# seconds (a write waiting out an election).
LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], NodeStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self._status()
        figures = (
            ("catenary_raft_term", "Current Raft term", status.term),
            (
                "catenary_raft_commit_index",
                "Highest Raft index known committed",
                status.commit_index,
            ),
            ("catenary_raft_applied_index", "Highest Raft index applied", status.applied_index),
            (
                "catenary_raft_leader",
                "Node id of the known Raft leader (0 = unknown)",
                status.leader,
            ),
            (
                "catenary_raft_is_leader",
                "1 when this node is the Raft leader",
                int(status.raft_state == "leader"),
            ),
            ("catenary_raft_members", "Members of the metadata Raft group", len(status.members)),
            ("catenary_node_id", "This node's id (0 = not yet assigned)", status.node),
            ("catenary_node_generation", "This node's generation", status.generation),
            ("catenary_provisioned", "1 once the cluster is provisioned", int(status.provisioned)),
        )
        for name, doc, value in figures:
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], float(value))
            yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class ServerMetrics:
    """The node's metrics; ``registry`` is what ``/metrics`` exposes."""

    def __init__(self, status: Callable[[], NodeStatus]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "catenary_requests",
            "Client requests by kind and outcome (ok or an error code)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "catenary_request_seconds",
            "Client request latency by kind",
            ["kind"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.client_connections = Gauge(
            "catenary_client_connections", "Open client connections", registry=self.registry
        )
        self.connections_dropped = Counter(
            "catenary_client_connections_dropped",
            "Client connections dropped for a protocol error",
            ["reason"],
            registry=self.registry,
        )
        self.ready_batches = Counter(
            "catenary_raft_ready_batches",
            "Ready batches handled by the metadata host (one fsync each at most)",
            registry=self.registry,
        )
        self.ready_inputs = Counter(
            "catenary_raft_ready_inputs",
            "Inputs (client ops, peer messages, ticks) drained into Ready batches",
            registry=self.registry,
        )
        self.persist_seconds = Histogram(
            "catenary_raft_persist_seconds",
            "Time to persist one Ready (write + fsync) in the writer thread",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_StatusCollector(status))
        self._counters: dict[tuple[str, str], Any] = {}
        self._histograms: dict[str, Any] = {}

    def observe(self, kind: str, outcome: str, seconds: float) -> None:
        # Label lookups cost more than the update itself: keep the children.
        key = (kind, outcome)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(kind, outcome)
        counter.inc()
        histogram = self._histograms.get(kind)
        if histogram is None:
            histogram = self._histograms[kind] = self.request_seconds.labels(kind)
        histogram.observe(seconds)
