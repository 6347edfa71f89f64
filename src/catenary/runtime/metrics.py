"""Prometheus metrics of one node, in a registry of its own (never the global one).

Request counters and latency histograms are updated as requests finish; Raft
figures (term, commit, applied, leader) are read from the node's status when
scraped, and the log service's counters from ``LogService.figures()``, so
they can never go stale and cost nothing between scrapes.  The process's own
figures (``process_cpu_seconds_total``, resident memory, open files) are the
standard Prometheus process collector's, read from ``/proc`` when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from catenary.api.messages import NodeStatus
from catenary.core.raft.types import EventKind, RaftEvent

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


# figures() key -> (metric name, help); counters are exposed with "_total".
_LOG_COUNTERS = (
    ("appends", "catenary_log_appends", "Client append requests this node answered with LSNs"),
    ("append_records", "catenary_log_append_records", "Records in those appends"),
    ("append_bytes", "catenary_log_append_bytes", "Payload bytes in those appends"),
    ("records_read", "catenary_log_records_read", "Records returned to this node's readers"),
    (
        "records_served",
        "catenary_log_records_served",
        "Records this node's log-server sent to other nodes' readers and repairs",
    ),
    ("store_persists", "catenary_log_store_persists", "Log-store persistence jobs (one fsync)"),
    (
        "store_persist_seconds",
        "catenary_log_store_persist_seconds",
        "Seconds spent in log-store persistence jobs (divide by persists for the mean)",
    ),
    ("seals", "catenary_log_seals", "Seals carried out by this node"),
    (
        "reconfigurations",
        "catenary_log_reconfigurations",
        "Log reconfigurations carried out by this node",
    ),
)
_LOG_GAUGES = (
    (
        "inflight_records",
        "catenary_log_inflight_records",
        "Records appended to segments this node sequences and not yet acknowledged",
    ),
    (
        "forwarded_inflight",
        "catenary_log_forwarded_inflight",
        "Appends forwarded to another node's sequencer and not yet answered",
    ),
    ("sequencers", "catenary_log_sequencers", "Segments with a sequencer on this node"),
)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


class _LogCollector(Collector):
    """The log service's counters, read from ``figures()`` at scrape time."""

    def __init__(self, figures: Callable[[], Mapping[str, object]]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        figures = self._figures()
        for key, name, doc in _LOG_COUNTERS:
            yield CounterMetricFamily(name, doc, value=_number(figures.get(key)))
        messages = CounterMetricFamily(
            "catenary_log_messages",
            "Log protocol messages between nodes, by direction (in, out)",
            labels=["direction"],
        )
        messages.add_metric(["in"], _number(figures.get("messages_in")))
        messages.add_metric(["out"], _number(figures.get("messages_out")))
        yield messages
        for key, name, doc in _LOG_GAUGES:
            yield GaugeMetricFamily(name, doc, value=_number(figures.get(key)))
        yield GaugeMetricFamily(
            "catenary_log_disk_full",
            "1 while the log store refuses writes for a full disk",
            value=float(bool(figures.get("disk_full"))),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


def _bound_text(bound: float) -> str:
    # Prometheus spells the last bucket's bound "+Inf".
    return "+Inf" if bound == float("inf") else repr(bound)


class RequestStats(Collector):
    """Client request counts and latency histograms, as plain integers.

    The event loop updates them on every request, so an update is a dict
    lookup, a bisection and two additions (no lock: one thread writes; a
    scrape reads a consistent enough copy).  A batch of requests answered
    together is one update with its count.  Exposed as
    ``catenary_requests_total{kind,outcome}`` and
    ``catenary_request_seconds{kind}`` (a histogram).
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        # kind -> [per-bucket counts (last: above every bound)..., sum of seconds]
        self._latency: dict[str, list[float]] = {}

    def observe(self, kind: str, outcome: str, seconds: float, count: int = 1) -> None:
        key = (kind, outcome)
        self._counts[key] = self._counts.get(key, 0) + count
        row = self._latency.get(kind)
        if row is None:
            row = self._latency[kind] = [0.0] * (len(LATENCY_BUCKETS_S) + 2)
        row[bisect_left(LATENCY_BUCKETS_S, seconds)] += count
        row[-1] += seconds * count

    def count(self, kind: str, outcome: str) -> int:
        return self._counts.get((kind, outcome), 0)

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        counter = CounterMetricFamily(
            "catenary_requests",
            "Client requests by kind and outcome (ok or an error code)",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), value in sorted(self._counts.items()):
            counter.add_metric([kind, outcome], value)
        yield counter
        histogram = HistogramMetricFamily(
            "catenary_request_seconds", "Client request latency by kind", labels=["kind"]
        )
        for kind, row in sorted(self._latency.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, in_bucket in zip((*LATENCY_BUCKETS_S, float("inf")), row[:-1], strict=True):
                cumulative += in_bucket
                buckets.append((_bound_text(bound), cumulative))
            histogram.add_metric([kind], buckets, row[-1])
        yield histogram

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())


class ServerMetrics:
    """The node's metrics; ``registry`` is what ``/metrics`` exposes."""

    def __init__(self, status: Callable[[], NodeStatus]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = RequestStats()
        self.registry.register(self.requests)
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
        # The Raft core's transitions (see runtime/raft_events.py).
        self.elections = Counter(
            "catenary_raft_elections",
            "Raft elections by outcome (started, won, lost) and reason "
            "(pre-vote, election, transfer; for lost: rejected, timeout, leader, higher-term)",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.step_downs = Counter(
            "catenary_raft_step_downs",
            "Times this node stopped leading, by reason "
            "(check-quorum, higher-term, removed, transfer)",
            ["reason"],
            registry=self.registry,
        )
        self.leader_changes = Counter(
            "catenary_raft_leader_changes",
            "New leaders (or terms) this node learned of while not leading",
            registry=self.registry,
        )
        self.membership_changes = Counter(
            "catenary_membership_changes",
            "Raft membership changes appended, by kind (add-learner, promote, remove)",
            ["kind"],
            registry=self.registry,
        )
        self.lease_changes = Counter(
            "catenary_raft_lease_changes",
            "The leader's lease-read mode changed (state: lost, regained)",
            ["state"],
            registry=self.registry,
        )
        self.peer_connections_lost = Counter(
            "catenary_peer_connections_lost",
            "Peer links that went down (the last connection to a peer closed)",
            registry=self.registry,
        )
        self.peer_connections_restored = Counter(
            "catenary_peer_connections_restored",
            "Peer links that came back (a connection to a peer with none)",
            registry=self.registry,
        )
        # One series per peer this node has had a link to: 1 while up, 0 while down.
        self.peer_link_up = Gauge(
            "catenary_peer_link_up",
            "1 while this node has a connection to the peer, 0 after its link was lost",
            ["peer"],
            registry=self.registry,
        )
        self.registry.register(_StatusCollector(status))
        ProcessCollector(registry=self.registry)

    def watch_logs(self, figures: Callable[[], Mapping[str, object]]) -> None:
        """Expose the log service's counters (``LogService.figures()``), read when scraped."""
        self.registry.register(_LogCollector(figures))

    def raft_event(self, event: RaftEvent) -> None:
        """Count one of the Raft core's events."""
        kind = event.kind
        if kind == EventKind.ELECTION_STARTED:
            self.elections.labels("started", event.reason).inc()
        elif kind == EventKind.ELECTION_WON:
            self.elections.labels("won", event.reason).inc()
        elif kind == EventKind.ELECTION_LOST:
            self.elections.labels("lost", event.reason).inc()
        elif kind == EventKind.STEP_DOWN:
            self.step_downs.labels(event.reason).inc()
        elif kind == EventKind.LEADER_CHANGED:
            self.leader_changes.inc()
        elif kind == EventKind.MEMBERSHIP:
            self.membership_changes.labels(event.reason).inc()
        elif kind == EventKind.LEASE_LOST:
            self.lease_changes.labels("lost").inc()
        elif kind == EventKind.LEASE_REGAINED:
            self.lease_changes.labels("regained").inc()

    def peer_link(self, peer_id: int, up: bool) -> None:
        """A peer link came up (``up``) or went down."""
        self.peer_link_up.labels(str(peer_id)).set(1 if up else 0)
        if up:
            self.peer_connections_restored.inc()
        else:
            self.peer_connections_lost.inc()

    def observe(self, kind: str, outcome: str, seconds: float, count: int = 1) -> None:
        """``count`` requests of ``kind`` ended with ``outcome`` after ``seconds``."""
        self.requests.observe(kind, outcome, seconds, count)
