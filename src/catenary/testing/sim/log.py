"""Deterministic simulation of the log service: ``catenary sim log``.

Theory of operation
-------------------
The simulator hosts the **real** log cores on the **real** host loops and the
**real** log-server store, and the **real** replicated metadata service that
holds the chain, over a simulated network, disk and clock (``EventLoop``,
``SimNetwork``, ``SimFileSystem``), one seed deciding everything
(docs/design/simulation.md, "The log simulation"):

- every node is one process of a cluster: a log-server, a log node and a
  metadata member, on one ``SimFileSystem`` (its data directory).  A crash of
  the node is a crash of all three; its restart recovers all three from disk;
- every node runs a ``LogServerLoop`` over a ``LogStore``; a persistence
  ``Job`` (one ``LogStore.write`` + one ``sync`` for the whole batch)
  completes after a simulated fsync latency, and only then are its replies
  sent (LS3).  A crash drops everything unsynced and may tear the tail (a job
  in flight runs with a crash point armed); a restart goes through
  ``LogStore.open``, the real recovery path;
- every node is a voter of the metadata service, hosted as ``catenary sim
  metadata`` hosts a member: a ``MetadataReplica`` over ``RaftStorage``,
  driven by the server's shared ``HostLoop`` (ticked with the simulator's
  tick), its Raft messages on the same simulated network, its persistence
  jobs run when their simulated fsync completes, one after the other; a crash
  runs the job in flight with a crash point armed, and the restart goes
  through ``RaftStorage.open``/``load``.  The Raft safety checkers
  (``SafetyChecker``) and the watch checker (``WatchChecker``) watch the
  members as in the metadata simulation;
- the chain of the log is the metadata key ``/catenary/logs/1``, created by
  a put with "absent" precondition once a leader exists.  The chain reads
  (``ReadChain``) and compare-and-sets (``CasChain``) of reconfigurations and
  trims are metadata requests into the task's node's own member (a
  linearizable get; a put with a version precondition), following
  ``NOT_LEADER`` redirects to the leader over the network, with the host's
  real outcomes: written, precondition failed, or indeterminate (the host's
  deadline, a lost leader, no answer within the client's timeout); the task
  re-reads after any outcome but "written" (RC3).  A read that fails is asked
  again while its task lives;
- every node learns chain changes as the server's log service does: its
  initial list from its member's applied state at start, then a watch
  (``changes_since`` on the logs prefix) on its own member, polled shortly
  after each apply, and what its own chain requests answered.  The node's
  ``LogNode`` acts on the newest version it learned; it starts the sequencer
  of a segment the chain names it for in its current generation (N1); a
  node's sequencers die with it (or alone, in a sequencer crash:
  ``LogNode.restart_sequencers``) and a restarted node has a new generation,
  so the old segment must be sealed and the log reconfigured;
- clients: appenders send each batch to a random node, which appends it
  through its ``LogNode`` — to its own sequencer or forwarded to the node its
  chain names (N2-N4) — and answers; a failed append is re-driven, on the new
  segment once the log was reconfigured (an unacknowledged append may or may
  not be in the log); readers (``ReadStream``, tailing and bounded) and
  reconfigurations (``Reconfigure``: forced at random, sometimes two racing on
  two nodes, and started by appenders whose segment stopped answering) and
  trims (``TrimLog``) run as actors of a node and start from the chain that
  node knows; a reader whose node crashed continues on another node from
  where it stopped.

The checkers see the chain as the metadata service committed it: every event
a member applies is harvested (``WatchChecker.harvest``, the same on every
member), and each chain version, in order, is checked (the trim point never
goes back, a segment never changes, a sealed segment's end never changes) and
becomes the chain the log checkers judge by.  Every chain read answered must
be at least as new as the chain committed when it was sent, and every chain
it or a written CAS reports must be the one committed at that version.
Checkers run on every acknowledgement, record read, chain change and tick,
and once more at the end (``final_checks``); the first failure stops the run.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from random import Random
from typing import NoReturn

import msgspec

from catenary.api.messages import ErrorCode
from catenary.core.bifrost.chain import (
    REPLICATED,
    Chain,
    ReplicatedParams,
    Segment,
    chain_key,
    decode_chain,
    encode_chain,
)
from catenary.core.bifrost.read_stream import DataLoss, ReadConfig, ReadStream, Record, TrimGap
from catenary.core.bifrost.reconfigure import (
    DONE,
    CasChain,
    NewSegment,
    ReadChain,
    Reconfigure,
    SendLoglet,
    TrimLog,
)
from catenary.core.loglet.log_server import ReadPlan
from catenary.core.loglet.nodeset import LogServerInfo, select_nodeset
from catenary.core.loglet.repair import FinderConfig
from catenary.core.loglet.replication import NodeSetChecker, ReplicationProperty
from catenary.core.loglet.sequencer import Backpressure, SequencerConfig
from catenary.core.loglet.types import (
    OK,
    LogletId,
    Sealed,
    SequencerId,
    Stored,
    Trimmed,
    to_lsn,
)
from catenary.core.metadata.replica import GetQuery, MetadataReplica, ReadCompleted
from catenary.core.metadata.state import MetadataConfig
from catenary.core.metadata.types import (
    Compacted,
    KeyValue,
    Precondition,
    PreconditionFailed,
    Put,
    Written,
)
from catenary.core.raft.types import Membership, Message, RaftConfig, Ready
from catenary.host.log_node import Envelope, LogNode
from catenary.host.log_server import Job, LogServerLoop, LogServerOutput
from catenary.host.loop import Failed, HostConfig, HostLoop, Output, persist_group
from catenary.host.loop import Job as MetaJob
from catenary.host.sequencer import SequencerLoop
from catenary.persist.log_store import LogStore, LogStoreCorruption
from catenary.persist.raft_storage import RaftStorage, RaftStorageCorruption
from catenary.storage.errors import CorruptionError, StorageError
from catenary.storage.fs_sim import SimFileSystem
from catenary.storage.store import StoreConfig
from catenary.testing.sim.checkers import (
    SafetyChecker,
    Violation,
    WatchChecker,
    leader_log_terms,
)
from catenary.testing.sim.crashfs import CrashPointFileSystem, SimulatedCrash
from catenary.testing.sim.loop import EventLoop
from catenary.testing.sim.network import NetworkFaults, SimNetwork, split_links

LOG = 1
TICK_US = 10_000
CLIENT_HOME = 0  # appenders sit outside the cluster and talk to nodes
ACTOR_BASE = 1000  # appenders and readers get ids from here
APPEND_DEADLINE_US = 400_000
LIVENESS_BOUND_US = 20_000_000
# Where the server keeps a log's chain (``server.logs``: ``meta_key(chain_key(log))``).
LOGS_PREFIX = "/catenary/logs/"
CHAIN_KEY = "/catenary/" + chain_key(LOG)
RAFT_DIR = "/raft"
META_TIMEOUT_US = 1_000_000  # a chain request's client-side timeout
META_ATTEMPTS_MAX = 8  # redirects and refusals before a chain request gives up
_encoder = msgspec.msgpack.Encoder()


# ----------------------------------------------------- client <-> node messages


class AppendReq(msgspec.Struct, tag="areq", array_like=True, frozen=True):
    token: int
    payloads: tuple[bytes, ...]
    budget_us: int


class AppendAck(msgspec.Struct, tag="aack", array_like=True, frozen=True):
    token: int
    first_lsn: int
    last_lsn: int
    segment_index: int


class AppendFail(msgspec.Struct, tag="afail", array_like=True, frozen=True):
    token: int
    kind: str  # the error's class name


UNKNOWN_LOG = "UnknownLog"  # the node has not learned the log's chain yet


# ---------------------------------------------------------------- results


@dataclass
class LogSimOptions:
    seed: int
    nodes: int = 3
    steps: int = 400  # safety-phase ticks of 10 ms


@dataclass
class LogSimCounters:
    appends: int = 0
    acked: int = 0
    records_acked: int = 0
    append_failures: int = 0
    redriven: int = 0
    records_read: int = 0
    trim_gaps: int = 0
    readers: int = 0
    reconfigurations: int = 0
    reconfigurations_done: int = 0
    reconfigurations_adopted: int = 0
    reconfiguration_races: int = 0
    trims: int = 0
    chain_reads: int = 0  # linearizable gets of the chain, as tasks sent them
    chain_cas: int = 0  # conditional puts of the chain, as tasks sent them
    cas_written: int = 0
    cas_failed: int = 0  # version precondition failed
    indeterminate_cas: int = 0  # the host's deadline, a lost leader, or no answer in time
    indeterminate_landed: int = 0  # of those, chains the service committed all the same
    cas_refused: int = 0  # refused on every attempt (surely not applied)
    meta_redirects: int = 0  # NOT_LEADER / OVERLOADED answers followed elsewhere
    meta_leaders: int = 0  # metadata terms with a leader
    meta_snapshots: int = 0  # compaction snapshots persisted by members
    chain_versions: int = 0  # chain versions the metadata service committed
    watch_events: int = 0  # chain changes nodes learned from their watch
    watch_relists: int = 0  # a watch told Compacted: the node listed the chains again
    crashes: int = 0
    crashes_mid_job: int = 0
    crashes_mid_persist: int = 0  # a metadata persistence step in flight at the crash
    crashes_window: int = 0
    crashes_meta_leader: int = 0
    sequencer_crashes: int = 0
    torn_tails: int = 0
    partitions: int = 0
    jobs: int = 0
    writes_per_job_max: int = 0
    loglets_per_job_max: int = 0
    inbox_drops: int = 0
    messages_sent: int = 0
    messages_dropped: int = 0
    messages_duplicated: int = 0
    segments: int = 0
    checks: int = 0


@dataclass
class LogSimResult:
    seed: int
    nodes: int
    steps: int
    ok: bool
    violation: str | None
    counters: LogSimCounters
    digest: str
    sim_time_ms: int
    events: int
    liveness_ms: int | None
    replay: str
    faults: str
    history_tail: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# ---------------------------------------------------------------- the plan


@dataclass
class _Plan:
    loss: float
    duplicate: float
    reorder: float
    delay_us_max: int
    crashes: bool
    partitions: bool
    nemesis_gap_us: tuple[int, int]
    down_us: tuple[int, int]
    fsync_us: tuple[int, int]
    tear: float
    garbage: float
    zones: bool
    replication: ReplicationProperty
    nodeset_size: int
    segment_bytes_max: int
    forced_reconfigure: float  # share of nemesis actions
    trims: bool
    appenders: int
    inflight_max: int
    window_crashes: bool  # crash a node while a job is in flight, now and then
    # The metadata members: compaction, read mode and the host loop's knobs.
    compact_after_entries: int
    lease_reads: bool
    host_timeout_ms: int  # shorter than the client's timeout: the host answers indeterminate
    host_persists_max: int
    watch_history_max: int  # events members keep for watches (few: nodes re-list)

    @classmethod
    def draw(cls, rng: Random, nodes: int) -> _Plan:
        zones = nodes >= 3 and rng.random() < 0.3
        if zones:
            replication = ReplicationProperty(node=2, zone=2)
        elif nodes >= 5 and rng.random() < 0.5:
            replication = ReplicationProperty(node=3)
        else:
            replication = ReplicationProperty(node=min(2, nodes))
        return cls(
            loss=rng.choice((0.0, 0.01, 0.05, 0.15)),
            duplicate=rng.choice((0.0, 0.02, 0.1)),
            reorder=rng.choice((0.0, 0.05, 0.2)),
            delay_us_max=rng.choice((1_000, 5_000, 20_000)),
            crashes=rng.random() < 0.7,
            partitions=rng.random() < 0.5,
            nemesis_gap_us=rng.choice(((20_000, 200_000), (100_000, 600_000))),
            down_us=rng.choice(((20_000, 200_000), (100_000, 1_000_000))),
            fsync_us=rng.choice(((100, 1_000), (1_000, 10_000), (5_000, 60_000))),
            tear=rng.choice((0.0, 0.5, 1.0)),
            garbage=rng.choice((0.0, 0.5, 1.0)),
            zones=zones,
            replication=replication,
            nodeset_size=rng.choice((0, nodes)),
            segment_bytes_max=rng.choice((4096, 32_768, 1 << 20)),
            forced_reconfigure=rng.choice((0.1, 0.3)),
            trims=rng.random() < 0.6,
            appenders=rng.choice((2, 3, 6)),
            inflight_max=rng.choice((4, 64)),
            window_crashes=rng.random() < 0.4,
            compact_after_entries=rng.choice((4, 16, 100_000)),
            lease_reads=rng.random() < 0.3,
            host_timeout_ms=rng.choice((200, 1_000, 10_000)),
            host_persists_max=rng.choice((1, 2)),
            watch_history_max=rng.choice((2, 10_000)),
        )

    def describe(self) -> str:
        return (
            f"loss={self.loss} dup={self.duplicate} reorder={self.reorder} "
            f"delay<={self.delay_us_max}us crashes={self.crashes} "
            f"partitions={self.partitions} fsync={self.fsync_us}us tear={self.tear} "
            f"garbage={self.garbage} replication={self.replication} zones={self.zones} "
            f"nodeset_size={self.nodeset_size or 'min'} segment_bytes={self.segment_bytes_max} "
            f"forced_reconfigure={self.forced_reconfigure} trims={self.trims} "
            f"appenders={self.appenders} inflight_max={self.inflight_max} "
            f"window_crashes={self.window_crashes} compact_after={self.compact_after_entries} "
            f"lease_reads={self.lease_reads} host_timeout_ms={self.host_timeout_ms} "
            f"host_persists_max={self.host_persists_max} "
            f"watch_history_max={self.watch_history_max}"
        )


# ---------------------------------------------------------------- the nodes


class _Node:
    """One process: a log-server and log node, and a metadata member, on one disk."""

    def __init__(
        self, node_id: int, zone: str, disk_seed: int, raft_seed: int, plan: _Plan
    ) -> None:
        self.id = node_id
        self.zone = zone
        self.disk = SimFileSystem(
            Random(disk_seed), tear_probability=plan.tear, garbage_probability=plan.garbage
        )
        self.fs = CrashPointFileSystem(self.disk)
        self.store: LogStore | None = None
        self.node: LogNode | None = None
        self.generation = 0
        self.incarnation = 0
        self.up = False
        self.job: Job | None = None
        self.poll_scheduled = False
        self.reply_to: dict[int, int] = {}  # append token -> appender id
        # What was durable, to check that a restart keeps it (trim points, seals).
        self.durable_trim: dict[LogletId, int] = {}
        self.durable_sealed: set[LogletId] = set()
        self.durable_tail: dict[LogletId, int] = {}
        # The metadata member.
        self.raft_seeds = Random(raft_seed)
        self.storage: RaftStorage | None = None
        self.replica: MetadataReplica | None = None
        self.host: HostLoop[_MetaToken] | None = None
        self.meta_jobs: list[MetaJob] = []  # the one whose fsync runs, then the ones behind it
        self.watch_from = 0  # the revision its watch on the logs prefix has seen
        self.watch_scheduled = False

    @property
    def loop(self) -> LogServerLoop | None:
        return self.node.server if self.node is not None else None


@dataclass
class _Appender:
    addr: int
    index: int
    batch: tuple[bytes, ...] | None = None
    token: int = 0
    target: int = 0  # the node the batch was sent to (0: none in flight)
    tail_index: int = 0  # the chain's tail segment when it was sent
    client_deadline_us: int = 0
    wake_us: int = 0
    counter: int = 0
    attempts: int = 0
    sent_us: int = 0


@dataclass
class _Reader:
    addr: int  # the reader's id (stable across the nodes it runs on)
    stream: ReadStream | None  # None until it runs on a node that knows the chain
    tailing: bool
    expect: int
    chain_pending: bool = False
    stuck_since_us: int | None = None  # a sealed server seen, the chain still open
    home: int = 0  # the node it runs on (0: none, waiting for one)
    actor: int = 0  # its actor address on that node
    to_lsn: int | None = None

    def on_message(self, src: int, message: msgspec.Struct) -> None:
        if self.stream is not None:
            self.stream.on_message(src, message)


@dataclass
class _Task:
    addr: int  # actor address on its home node
    home: int
    task: Reconfigure | TrimLog
    incarnation: int

    def on_message(self, src: int, message: msgspec.Struct) -> None:
        if isinstance(self.task, Reconfigure):
            self.task.on_message(src, message)


@dataclass(frozen=True)
class _MetaToken:
    """One attempt of a chain request, as the token of a host-loop request.  It carries
    the request itself: a member that receives it acts on it whether or not its
    sender still waits (a put may land after its sender gave up)."""

    call: int
    attempt: int
    home: int  # the node that asked, where the answer goes
    command: Put | None  # None: a linearizable get of the chain


# The final outcome of a chain request, as its requester sees it.
MetaOutcome = ReadCompleted | Written | PreconditionFailed | str  # str: "indeterminate" | "failed"


@dataclass
class _MetaCall:
    """A chain request of a node (a task's, or the log's creation)."""

    call_id: int
    home: int
    incarnation: int  # of the home node when it was sent
    command: Put | None
    on_done: Callable[[MetaOutcome], None]
    committed_at_start: int  # the chain version committed when it was sent
    target: int = 0
    attempts: int = 0
    attempt: int = 0


class LogSimulation:
    def __init__(self, options: LogSimOptions) -> None:
        self.options = options
        root = Random(options.seed)
        self.plan = _Plan.draw(Random(root.getrandbits(64)), options.nodes)
        self.net = SimNetwork(
            Random(root.getrandbits(64)),
            NetworkFaults(
                loss=self.plan.loss,
                duplicate=self.plan.duplicate,
                reorder=self.plan.reorder,
                delay_us_max=self.plan.delay_us_max,
            ),
        )
        self.nemesis_rng = Random(root.getrandbits(64))
        self.rng = Random(root.getrandbits(64))  # clients, timing
        self.meta_rng = Random(root.getrandbits(64))  # the metadata members' timing
        self.loop = EventLoop()
        self.counters = LogSimCounters()
        self.history: deque[str] = deque(maxlen=40)
        self.store_config = StoreConfig(
            segment_bytes_max=self.plan.segment_bytes_max,
            preallocate=False,
            index_checkpoint_records=64,
        )
        self.seq_config = SequencerConfig(
            records_inflight_max=self.plan.inflight_max,
            store_timeout_ticks=5,
            tail_release_ticks=1,
            tail_resend_ticks=5,
            tail_resend_max_ticks=40,
        )
        self.read_config = ReadConfig(buffer_max=16, bytes_max=256, wait_ticks=10, resend_ticks=5)
        zones = ("a", "b", "c")
        self.nodes: dict[int, _Node] = {}
        for node_id in range(1, options.nodes + 1):
            zone = f"r.{zones[node_id % len(zones)]}" if self.plan.zones else ""
            self.nodes[node_id] = _Node(
                node_id, zone, root.getrandbits(64), self.meta_rng.getrandbits(64), self.plan
            )
        self.locations = {n: node.zone for n, node in self.nodes.items()}
        self.servers = {n: LogServerInfo(location=z) for n, z in self.locations.items()}
        self._next_addr = ACTOR_BASE
        self._next_token = 0
        # The metadata service: every node a voter (as ``catenary sim metadata`` runs it).
        self.membership = Membership(voters=tuple(sorted(self.nodes)))
        self.raft_config = RaftConfig(
            election_timeout_ticks=10,
            heartbeat_interval_ticks=2,
            max_entries_per_message=64,
            max_bytes_per_message=64 << 10,
            max_inflight_messages=8,
            snapshot_chunk_bytes=512,
            compact_after_entries=self.plan.compact_after_entries,
            compact_after_bytes=64 << 10,
            lease_reads=self.plan.lease_reads,
        )
        self.host_config = HostConfig(
            tick_ms=TICK_US // 1000,
            request_timeout_ms=self.plan.host_timeout_ms,
            persists_in_flight_max=self.plan.host_persists_max,
        )
        self.state_config = MetadataConfig(watch_history_max=self.plan.watch_history_max)
        self.raft_store_config = StoreConfig(segment_bytes_max=self.plan.segment_bytes_max)
        self.raft_checker = SafetyChecker()
        self.watch_checker = WatchChecker()
        self.interrupted: dict[int, list[Ready]] = {}  # node -> the saves a crash cut short
        self.meta_calls: dict[int, _MetaCall] = {}
        self._next_call = 0
        self.first_chain: Chain | None = None  # the log's first chain, to be created
        self.creating_until_us = 0  # a creation is under way until then
        # The chain as the metadata service committed it (every version, in order).
        self.committed: tuple[Chain, int] | None = None
        self.chain_at: dict[int, bytes] = {}  # version -> the chain committed there
        self.indeterminate: set[bytes] = set()  # chains whose CAS answered indeterminate
        self.scanned = 0  # committed events looked at, by version
        self.segments: dict[int, Segment] = {}
        self.segment_end: dict[int, int] = {}  # segment index -> first LSN after it
        self.appenders: list[_Appender] = []
        self.readers: dict[int, _Reader] = {}
        self.tasks: dict[int, _Task] = {}  # by a task id
        # What the checkers know.
        self.acked: dict[int, bytes] = {}  # lsn -> payload
        self.acked_at: dict[int, tuple[int, int]] = {}  # lsn -> (segment index, offset)
        self.seen: dict[int, bytes] = {}  # lsn -> payload, over every reader
        self.seq_tail: dict[int, int] = {}  # segment index -> highest global tail reached
        self.tail_seen = 1
        self.trim_seen = 0
        self.appending = True
        self.safety = True
        self.fresh_ack_us: int | None = None
        self.liveness_start_us = 1 << 62
        self.reconfig_last: dict[int, int] = {}  # sealed index -> time of last start
        self.last_window_crash_us = -(10**9)

    # ------------------------------------------------------------ helpers

    def note(self, text: str) -> None:
        self.history.append(f"{self.loop.now_us / 1000:10.3f} ms  {text}")
        self.loop.note(text)

    def fail(self, text: str) -> NoReturn:
        self.note(f"VIOLATION {text}")
        raise Violation(text)

    def chain(self) -> tuple[Chain, int]:
        """The chain as the metadata service committed it (its newest version)."""
        assert self.committed is not None, "the log's chain is not created yet"
        return self.committed

    def known_chain(self, node_id: int) -> tuple[Chain, int] | None:
        """The chain a node has learned (None: none yet, or the node is down)."""
        node = self.nodes[node_id]
        if not node.up or node.node is None:
            return None
        return node.node.chains.get(LOG)

    def addr(self) -> int:
        self._next_addr += 1
        return self._next_addr

    def token(self) -> int:
        self._next_token += 1
        return self._next_token

    def up_nodes(self) -> list[int]:
        return [n for n in sorted(self.nodes) if self.nodes[n].up]

    def _new_segment_params(self, rng: Random) -> ReplicatedParams:
        sequencer = rng.choice(sorted(self.nodes))
        nodeset = select_nodeset(
            self.servers, self.plan.replication, target_size=self.plan.nodeset_size, salt=LOG
        )
        return ReplicatedParams(
            SequencerId(sequencer, self.nodes[sequencer].generation),
            nodeset,
            self.plan.replication,
        )

    # ------------------------------------------------------------ network

    def send_peer(self, src: int, dst: int, env: Envelope) -> None:
        """A loglet envelope from node ``src`` to node ``dst`` (itself: a short delay)."""
        detail = _encoder.encode(env)

        def deliver(delay_us: int) -> None:
            self.loop.after(
                delay_us, f"msg {src}->{dst}", lambda: self.receive_peer(dst, env), detail
            )

        if src == dst:
            deliver(self.rng.randint(10, 100))
            return
        self.net.send(src, dst, deliver)

    def receive_peer(self, dst: int, env: Envelope) -> None:
        node = self.nodes.get(dst)
        if node is None or not node.up or node.node is None:
            return
        node.node.deliver(env, self.loop.now_us)
        self.pump(node)

    def send_client(
        self, src: int, dst: int, message: msgspec.Struct, on: Callable[[], None]
    ) -> None:
        """Client traffic between an appender (outside) and a node."""
        detail = _encoder.encode(message)

        def deliver(delay_us: int) -> None:
            self.loop.after(delay_us, f"client {src}->{dst}", on, detail)

        self.net.send(src, dst, deliver)

    # ------------------------------------------------- the metadata members

    def boot_member(self, node: _Node) -> None:
        """Open the member's Raft storage and build its replica (the recovery path)."""
        node.fs.disarm()
        try:
            storage = RaftStorage.open(node.fs, RAFT_DIR, self.raft_store_config)
            if storage.store_recovery.torn_tail:
                self.counters.torn_tails += 1
            hard_state, snapshot, entries = storage.load()
        except (CorruptionError, RaftStorageCorruption, StorageError) as exc:
            self.fail(f"node {node.id} cannot recover its Raft storage: {exc}")
        self.raft_checker.reloaded(
            node.id, hard_state, snapshot, entries, self.interrupted.pop(node.id, [])
        )
        node.storage = storage
        node.meta_jobs = []
        node.replica = MetadataReplica(
            node.id,
            self.raft_config,
            Random(node.raft_seeds.getrandbits(64)),
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
            initial_membership=self.membership,
            state_config=self.state_config,
            now_ms=self.loop.now_ms,
        )
        node.host = HostLoop(
            node.replica, self.host_config, durable=storage.hard_state, now_us=self.loop.now_us
        )
        node.watch_scheduled = False

    def member_tick(self, node: _Node) -> None:
        """The host's timer: answer the requests past their deadline, then poll (ticks)."""
        host = node.host
        assert host is not None
        for token, outcome in host.expire(self.loop.now_us):
            self.meta_completed(node, token, outcome)
        self.after_input(node)

    def send_raft(self, message: Message) -> None:
        detail = _encoder.encode(message)
        src, dst = message.src, message.dst

        def deliver(delay_us: int) -> None:
            self.loop.after(
                delay_us, f"raft {src}->{dst}", lambda: self.receive_raft(message), detail
            )

        self.net.send(src, dst, deliver)

    def receive_raft(self, message: Message) -> None:
        node = self.nodes.get(message.dst)
        if node is None or not node.up or node.host is None:
            return
        self.raft_checker.check_delivery(message, leader_log_terms(node.replica, message.term))
        node.host.step(message)
        self.after_input(node)

    def after_input(self, node: _Node) -> None:
        """An input reached the member's host loop: poll it and execute its output."""
        host = node.host
        assert host is not None
        self.drive(node, host.poll(self.loop.now_us))

    def drive(self, node: _Node, out: Output[_MetaToken]) -> None:
        """Execute a host-loop output as the server's shell does, polling while it asks."""
        while True:
            host = node.host
            if host is None:
                return
            for message in out.messages:
                self.send_raft(message)
            if out.advanced:
                self.check_advanced(node, out.advanced)
            if out.applied:
                self.harvest(node)
                self.schedule_watch(node)
            self.observe_raft(node)
            for token, outcome in out.completions:
                self.meta_completed(node, token, outcome)
            for job in out.jobs:
                node.meta_jobs.append(job)
                if len(node.meta_jobs) == 1:
                    self.schedule_meta_job(node)
            if not out.more:
                return
            out = host.poll(self.loop.now_us)

    def schedule_meta_job(self, node: _Node) -> None:
        incarnation = node.incarnation
        low, high = self.plan.fsync_us if self.safety else (100, 1_000)
        self.loop.after(
            self.meta_rng.randint(low, high),
            f"raft fsync {node.id}",
            lambda: self.meta_job_done(node, incarnation),
        )

    def meta_job_done(self, node: _Node, incarnation: int) -> None:
        """The simulated fsync of the member's oldest persistence job completed: run it."""
        if node.incarnation != incarnation or not node.meta_jobs:
            return
        job = node.meta_jobs[0]
        storage, host = node.storage, node.host
        assert storage is not None and host is not None
        # The server's writer runs persist_group (HostLoop rule 9); with at most
        # two jobs in flight here, a group is the one job.
        error = persist_group(storage, [job])
        if error is not None:
            self.fail(f"node {node.id}: Raft storage failed: {error!r}")
        node.meta_jobs.pop(0)
        if node.meta_jobs:
            self.schedule_meta_job(node)  # the disk takes the next job now
        model = self.raft_checker.model(node.id)
        if job.ready is not None:
            model.saved(job.ready)
            self.raft_checker.observe_persisted(node.id, job.ready.entries)
        elif job.snapshot is not None:
            model.compacted(job.snapshot)
            self.counters.meta_snapshots += 1
        self.drive(node, host.job_done())

    def observe_raft(self, node: _Node) -> None:
        replica = node.replica
        assert replica is not None
        checker = self.raft_checker
        raft = replica.raft
        if replica.is_leader and checker.observe_leader(node.id, replica.term):
            self.counters.meta_leaders += 1
            self.note(f"metadata leader {node.id} term {replica.term}")
            first = raft.snapshot_index + 1
            held = raft.entries(first, checker.highest_commit + 1)
            checker.check_leader_log(node.id, replica.term, {e.index: e.term for e in held}, first)
        checker.observe_commit(raft.commit_index, replica.term)
        if replica.is_leader:
            commit = raft.commit_index
            held = raft.entries(commit, commit + 1) if commit > raft.snapshot_index else []
            checker.observe_leader_commit(
                node.id, replica.term, commit, held[0].term if held else None
            )

    def check_advanced(self, node: _Node, readies: list[Ready]) -> None:
        """What the host loop applied, against what the cluster committed and what the
        member's own disk holds (``HostLoop`` rule 3c)."""
        replica = node.replica
        assert replica is not None
        checker = self.raft_checker
        model = checker.model(node.id)
        for ready in readies:
            for entry in ready.committed:
                if entry.index > model.snapshot_index and model.entries.get(entry.index) != (
                    entry.term
                ):
                    self.fail(
                        f"durability at apply: node {node.id} applied index {entry.index} "
                        f"term {entry.term} before its disk held it"
                    )
            if ready.snapshot is not None:
                checker.observe_installed(node.id, ready.snapshot)
            checker.observe_applied(node.id, ready.committed)
        if replica.state.applied_index != checker.applied.get(node.id, 0):
            self.fail(
                f"node {node.id}: state machine at {replica.state.applied_index}, "
                f"applied entries end at {checker.applied.get(node.id, 0)}"
            )

    def harvest(self, node: _Node) -> None:
        """Take the events the member applied (the same on every member), then check each
        chain version the cluster committed, in order."""
        assert node.replica is not None
        self.watch_checker.harvest(node.id, node.replica.state)
        truth = self.watch_checker.truth
        while (event := truth.get(self.scanned + 1)) is not None:
            self.scanned = event.version
            if event.key == CHAIN_KEY and event.kind == "put":
                self.chain_committed(event.value, event.version)

    def chain_committed(self, value: bytes, version: int) -> None:
        """A chain version the metadata service committed (first applied by a member)."""
        chain = decode_chain(value)
        old = self.committed
        self.committed = (chain, version)
        self.chain_at[version] = value
        self.counters.chain_versions += 1
        if value in self.indeterminate:
            self.indeterminate.discard(value)
            self.counters.indeterminate_landed += 1
        if old is not None and chain.trim_point < old[0].trim_point:
            self.fail(f"trim point went back: {old[0].trim_point} -> {chain.trim_point}")
        for position, segment in enumerate(chain.segments):
            known = self.segments.get(segment.index)
            if known is not None and known != segment:
                self.fail(f"segment {segment.index} changed in the chain")
            self.segments[segment.index] = segment
            if position + 1 < len(chain.segments):
                end = chain.segments[position + 1].base_lsn
                was = self.segment_end.setdefault(segment.index, end)
                if was != end:
                    self.fail(f"segment {segment.index} end changed {was} -> {end}")
        self.counters.segments = len(self.segments)
        self.note(
            f"chain v{version}: tail segment {chain.tail.index} at LSN {chain.tail.base_lsn}, "
            f"trim {chain.trim_point}"
        )
        self.check_acks_within_seals()
        self.check_tail()

    def check_chain_answer(self, what: str, kv: KeyValue | None, not_before: int) -> None:
        """A chain the metadata service answered is one it committed, and (a
        linearizable read) no older than the one committed when it was asked."""
        self.counters.checks += 1
        version = kv.version if kv is not None else 0
        if version < not_before:
            self.fail(
                f"{what} answered chain v{version}, but v{not_before} was committed "
                "before it was sent (a stale read)"
            )
        if kv is not None and self.chain_at.get(version) != kv.value:
            self.fail(f"{what} answered a chain at v{version} the service did not commit")

    def check_written(self, what: str, value: bytes, version: int) -> None:
        """A put of the chain answered "written" at ``version``: that chain was committed."""
        self.counters.checks += 1
        if self.chain_at.get(version) != value:
            self.fail(
                f"{what} was answered written at v{version}, another chain is committed there"
            )

    # --------------------------------------------------- the chain requests

    def meta_call(
        self, home: int, command: Put | None, on_done: Callable[[MetaOutcome], None]
    ) -> None:
        """A chain request of a node, into its own member first (as the server's
        metadata service takes it), following redirects to the leader."""
        self._next_call += 1
        call = _MetaCall(
            self._next_call,
            home,
            self.nodes[home].incarnation,
            command,
            on_done,
            self.committed[1] if self.committed is not None else 0,
            target=home,
        )
        self.meta_calls[call.call_id] = call
        self.loop.after(META_TIMEOUT_US, "meta timeout", lambda: self.meta_timeout(call))
        self.meta_send(call)

    def meta_send(self, call: _MetaCall) -> None:
        call.attempts += 1
        call.attempt += 1
        token = _MetaToken(call.call_id, call.attempt, call.home, call.command)
        target = call.target
        detail = _encoder.encode((call.call_id, call.attempt, call.command))
        if target == call.home:
            self.loop.after(
                self.meta_rng.randint(10, 100),
                f"meta {target}",
                lambda: self.meta_arrives(target, token),
                detail,
            )
            return

        def deliver(delay_us: int) -> None:
            self.loop.after(
                delay_us,
                f"meta {call.home}->{target}",
                lambda: self.meta_arrives(target, token),
                detail,
            )

        self.net.send(call.home, target, deliver)

    def meta_arrives(self, node_id: int, token: _MetaToken) -> None:
        """A chain request reaches a member's host loop."""
        node = self.nodes[node_id]
        host = node.host
        if not node.up or host is None:
            return  # the requester's timeout will tell
        now = self.loop.now_us
        refused: Failed | None
        if token.command is None:
            refused = host.submit_read(GetQuery(CHAIN_KEY), token, now)
        else:
            refused = host.submit_write(token.command, token, now)
        if refused is not None:
            self.meta_completed(node, token, refused)
            return
        self.after_input(node)

    def meta_completed(self, node: _Node, token: _MetaToken, outcome: object) -> None:
        """A host-loop completion: the answer travels back to the node that asked."""
        detail = _encoder.encode((token.call, token.attempt, type(outcome).__name__))
        if node.id == token.home:
            self.loop.after(
                self.meta_rng.randint(10, 100),
                f"meta answer {node.id}",
                lambda: self.meta_answer(node.id, token, outcome),
                detail,
            )
            return
        member = node.id

        def deliver(delay_us: int) -> None:
            self.loop.after(
                delay_us,
                f"meta answer {member}->{token.home}",
                lambda: self.meta_answer(member, token, outcome),
                detail,
            )

        self.net.send(member, token.home, deliver)

    def meta_answer(self, member: int, token: _MetaToken, outcome: object) -> None:
        call = self.meta_calls.get(token.call)
        if call is None or call.attempt != token.attempt:
            return  # an attempt it gave up on
        home = self.nodes[call.home]
        if not home.up or home.incarnation != call.incarnation:
            del self.meta_calls[call.call_id]  # its node crashed: nobody waits
            return
        if isinstance(outcome, ReadCompleted | Written | PreconditionFailed):
            self.meta_done(call, outcome)
        elif isinstance(outcome, Failed):
            if outcome.code == ErrorCode.INDETERMINATE:
                self.meta_done(call, "indeterminate")
            elif outcome.code in (ErrorCode.NOT_LEADER, ErrorCode.OVERLOADED):
                self.meta_redirect(call, member, outcome)
            else:
                self.meta_done(call, "failed")  # a read not confirmed in time
        else:
            self.fail(f"unexpected answer to a chain request: {outcome!r}")

    def meta_redirect(self, call: _MetaCall, member: int, failed: Failed) -> None:
        """Surely not applied: ask the leader it named (or another member) again."""
        if call.attempts >= META_ATTEMPTS_MAX:
            self.meta_done(call, "failed")
            return
        self.counters.meta_redirects += 1
        hint = failed.leader if failed.code == ErrorCode.NOT_LEADER else member
        if hint in self.nodes:
            call.target = hint
            backoff_us = self.meta_rng.randint(1_000, 5_000)
        else:
            call.target = self.meta_rng.choice(sorted(self.nodes))
            backoff_us = self.meta_rng.randint(10_000, 50_000)
        attempt = call.attempt

        def again() -> None:
            if self.meta_calls.get(call.call_id) is call and call.attempt == attempt:
                self.meta_send(call)

        self.loop.after(backoff_us, "meta retry", again)

    def meta_timeout(self, call: _MetaCall) -> None:
        if self.meta_calls.get(call.call_id) is not call:
            return
        # A put may still land: its outcome is unknown.
        self.meta_done(call, "indeterminate" if call.command is not None else "failed")

    def meta_done(self, call: _MetaCall, outcome: MetaOutcome) -> None:
        del self.meta_calls[call.call_id]
        home = self.nodes[call.home]
        if home.up and home.incarnation == call.incarnation:
            call.on_done(outcome)

    # ------------------------------------------------------------ watches

    def schedule_watch(self, node: _Node) -> None:
        """The member applied something: the node's watch wakes up shortly after."""
        if node.watch_scheduled or not node.up:
            return
        node.watch_scheduled = True
        incarnation = node.incarnation
        self.loop.after(
            self.meta_rng.randint(100, 2_000),
            f"watch {node.id}",
            lambda: self.watch_poll(node, incarnation),
        )

    def watch_poll(self, node: _Node, incarnation: int) -> None:
        """The node's log service learns chain changes from its own member (L1)."""
        if not node.up or node.incarnation != incarnation or node.replica is None:
            return
        node.watch_scheduled = False
        state = node.replica.state
        self.watch_checker.harvest(node.id, state)
        answer = state.changes_since(node.watch_from, LOGS_PREFIX, True, 1000)
        self.watch_checker.check(
            node.id, node.id, LOGS_PREFIX, node.watch_from, answer, state.history_start
        )
        if isinstance(answer, Compacted):
            self.counters.watch_relists += 1
            self.list_chains(node)  # resync: a list, then watch on from its revision
            return
        node.watch_from = max(node.watch_from, answer.revision)
        for event in answer.events:
            if event.kind == "put" and node.up and node.incarnation == incarnation:
                self.counters.watch_events += 1
                self.learn(node, decode_chain(event.value), event.version)

    def list_chains(self, node: _Node, *, initial: bool = False) -> None:
        """Every chain in the member's applied state (a stale list, as at a node's start)."""
        assert node.replica is not None
        state = node.replica.state
        kvs, _more = state.list(LOGS_PREFIX)
        node.watch_from = state.revision
        for kv in kvs:
            self.learn(node, decode_chain(kv.value), kv.version, initial=initial)

    def learn(self, node: _Node, chain: Chain, version: int, *, initial: bool = False) -> None:
        """A chain the node's log service learned: its ``LogNode`` (N1) and its readers."""
        lognode = node.node
        if not node.up or lognode is None:
            return
        lognode.on_chain(chain, version, initial=initial)
        for reader_id in sorted(self.readers):
            reader = self.readers.get(reader_id)
            if reader is not None and reader.home == node.id and reader.stream is not None:
                reader.stream.on_chain(chain)
                self.drain_reader(reader)
        self.pump(node)

    # ---------------------------------------------------- the log's creation

    def create_log(self) -> None:
        """The controller's part: create the log (a put with "absent"), retried until
        the metadata service holds its chain."""
        if self.committed is not None:
            return
        self.loop.after(50_000, "create log", self.create_log)
        up = self.up_nodes()
        if self.loop.now_us < self.creating_until_us or not up:
            return  # one creation at a time (its node may crash: then the next one)
        if self.first_chain is None:
            first = Segment(0, 1, REPLICATED, self._new_segment_params(self.rng))
            self.first_chain = Chain(LOG, (first,))
        value = encode_chain(self.first_chain)
        self.creating_until_us = self.loop.now_us + META_TIMEOUT_US

        def done(outcome: MetaOutcome) -> None:
            self.creating_until_us = 0
            if isinstance(outcome, Written):
                self.check_written("the log's creation", value, outcome.version)
                self.note(f"log created at v{outcome.version}")

        self.meta_call(self.rng.choice(up), Put(CHAIN_KEY, value, Precondition("absent")), done)

    # ------------------------------------------------------- nodes

    def start_node(self, node: _Node) -> None:
        """Start (or restart) a node's process: its metadata member, then its log service."""
        node.incarnation += 1
        node.generation += 1
        self.boot_member(node)
        try:
            store = LogStore.open(node.fs, "/log", node.id, self.store_config, checkpoint_writes=50)
        except (LogStoreCorruption, StorageError) as exc:
            self.fail(f"node {node.id} cannot recover its log store: {exc}")
        if store.recovery.torn_tail:
            self.counters.torn_tails += 1
        server = store.server
        for loglet, point in sorted(node.durable_trim.items()):
            st = server.state(loglet)
            if st is None or st.trim_point < point:
                self.fail(f"node {node.id} loglet {loglet}: trim point went back after restart")
        for loglet in sorted(node.durable_sealed):
            st = server.state(loglet)
            if st is None or not st.sealed:
                self.fail(f"node {node.id} loglet {loglet}: unsealed after restart")
        for loglet, tail in sorted(node.durable_tail.items()):
            st = server.state(loglet)
            if tail > 1 and (st is None or st.local_tail < tail):
                self.fail(f"node {node.id} loglet {loglet}: durable records lost at restart")
        node.store = store
        node.node = LogNode(
            node.id,
            node.generation,
            LogServerLoop(server, inbox_max=256, batch_max=64),
            SequencerLoop(node.id, queue_max=64, config=self.seq_config),
            forwarded_max=64,
            locations=self.locations,
        )
        node.durable_tail = {}
        self.remember_durable(node)
        node.job = None
        node.poll_scheduled = False
        node.reply_to = {}
        node.up = True
        self.note(f"node {node.id} up (generation {node.generation})")
        self.list_chains(node, initial=True)  # its first list, then its watch
        self.pump(node)
        self.after_input(node)

    def pump(self, node: _Node) -> None:
        """Send what the node's LogNode handed out, answer clients, poll its server."""
        lognode = node.node
        if not node.up or lognode is None:
            return
        for _ in range(100):
            out = lognode.take()
            if not (out.send or out.appended or out.failed):
                break
            for dst, env in out.send:
                self.send_peer(node.id, dst, env)
            for appended in out.appended:
                self.answer_client(
                    node,
                    appended.token,
                    AppendAck(
                        appended.token,
                        appended.first_lsn,
                        appended.last_lsn,
                        appended.segment_index,
                    ),
                )
            for token, error in out.failed:
                self.answer_client(node, token, AppendFail(token, type(error).__name__))
        self.track_sequencers(node)
        self.kick(node)

    def track_sequencers(self, node: _Node) -> None:
        lognode = node.node
        assert lognode is not None
        seq = lognode.sequencers
        acked = False
        for loglet in seq.loglets():
            core = seq.core(loglet)
            assert core is not None
            index = loglet & 0xFFFF_FFFF
            if core.global_tail > self.seq_tail.get(index, 1):
                self.seq_tail[index] = core.global_tail
                acked = True
        if acked:
            self.check_tail()

    def answer_client(self, node: _Node, token: int, message: msgspec.Struct) -> None:
        appender_id = node.reply_to.pop(token, None)
        if appender_id is None:
            return
        for appender in self.appenders:
            if appender.addr == appender_id:
                self.send_client(node.id, CLIENT_HOME, message, self._answer(appender, message))

    def _answer(self, appender: _Appender, message: msgspec.Struct) -> Callable[[], None]:
        return lambda: self.on_append_answer(appender, message)

    def kick(self, node: _Node) -> None:
        if node.poll_scheduled or node.job is not None:
            return
        node.poll_scheduled = True
        incarnation = node.incarnation
        self.loop.after(20, f"poll {node.id}", lambda: self.poll(node, incarnation))

    def poll(self, node: _Node, incarnation: int) -> None:
        if not node.up or node.incarnation != incarnation or node.node is None:
            return
        node.poll_scheduled = False
        loop = node.node.server
        out = node.node.poll_server(self.loop.now_us)
        self.emit_server(node, out)
        if out.job is not None:
            job = out.job
            node.job = job
            self.counters.jobs += 1
            self.counters.writes_per_job_max = max(
                self.counters.writes_per_job_max, len(job.writes)
            )
            self.counters.loglets_per_job_max = max(
                self.counters.loglets_per_job_max, len({w.loglet for w in job.writes})
            )
            low, high = self.plan.fsync_us if self.safety else (100, 1_000)
            if self.window_crash_due(node):
                self.counters.crashes_window += 1
                self.loop.after(
                    self.rng.randint(0, low),
                    f"window crash {node.id}",
                    lambda: self.crash_and_restart(node, incarnation, "job in flight"),
                )
            self.loop.after(
                self.rng.randint(low, high),
                f"fsync {node.id}",
                lambda: self.job_complete(node, incarnation),
            )
        elif loop.pending:
            self.kick(node)

    def job_complete(self, node: _Node, incarnation: int) -> None:
        if not node.up or node.incarnation != incarnation or node.job is None:
            return
        assert node.store is not None and node.node is not None
        try:
            node.store.write(node.job.writes)
            node.store.sync()
        except StorageError as exc:
            self.fail(f"node {node.id}: store failed: {exc}")
        node.job = None
        self.remember_durable(node)
        self.emit_server(node, node.node.server.job_done())
        if node.node.server.pending:
            self.kick(node)

    def remember_durable(self, node: _Node) -> None:
        """What the node's disk holds now (its core's state, with no job in flight)."""
        assert node.loop is not None
        server = node.loop.server
        for loglet in server.loglets():
            st = server.state(loglet)
            assert st is not None
            if st.trim_point:
                node.durable_trim[loglet] = st.trim_point
            if st.sealed:
                node.durable_sealed.add(loglet)
            node.durable_tail[loglet] = st.local_tail

    def emit_server(self, node: _Node, out: LogServerOutput) -> None:
        lognode = node.node
        assert node.store is not None and lognode is not None
        for dst, message in out.send:
            self.check_durable_reply(node, message)
            target, env = lognode.route(dst, message)
            self.send_peer(node.id, target, env)
        for plan in out.reads:
            target, env = lognode.route(plan.src, self.answer(node, plan))
            self.send_peer(node.id, target, env)

    def check_durable_reply(self, node: _Node, m: msgspec.Struct) -> None:
        """LS3: a reply never reports what the node's disk does not hold yet."""
        self.counters.checks += 1
        if isinstance(m, Stored) and m.status == OK:
            if node.durable_tail.get(m.loglet, 1) < m.local_tail:
                self.fail(
                    f"node {node.id} answered Stored(local tail {m.local_tail}) for loglet "
                    f"{m.loglet} before it was durable (disk: {node.durable_tail.get(m.loglet)})"
                )
        elif isinstance(m, Sealed) and m.loglet not in node.durable_sealed:
            self.fail(f"node {node.id} answered Sealed for loglet {m.loglet} before it was durable")
        elif isinstance(m, Trimmed) and node.durable_trim.get(m.loglet, 0) < m.trim_point:
            self.fail(f"node {node.id} answered Trimmed({m.trim_point}) before it was durable")

    def answer(self, node: _Node, plan: ReadPlan) -> msgspec.Struct:
        assert node.store is not None
        return node.store.answer(plan)

    def crash(self, node: _Node, *, reason: str) -> None:
        if not node.up:
            return
        self.counters.crashes += 1
        if node.job is not None and node.store is not None:
            # The job in flight stops after a random number of file operations.
            self.counters.crashes_mid_job += 1
            node.fs.arm(self.nemesis_rng.randint(0, 4))
            try:
                node.store.write(node.job.writes)
                node.store.sync()
            except (SimulatedCrash, StorageError, OSError):
                pass
            node.fs.disarm()
        job = node.meta_jobs[0] if node.meta_jobs else None
        if job is not None and node.storage is not None:
            # So does the metadata member's persistence step in flight.
            self.counters.crashes_mid_persist += 1
            node.fs.arm(self.nemesis_rng.randint(0, 12))
            error = persist_group(node.storage, [job])
            if error is not None and not isinstance(error, (SimulatedCrash, StorageError, OSError)):
                raise error
            node.fs.disarm()
        self.interrupted[node.id] = [job.ready] if job is not None and job.ready else []
        node.disk.crash()
        if node.node is not None:
            self.counters.inbox_drops += node.node.server.dropped
        node.up = False
        node.store = None
        node.node = None
        node.job = None
        node.storage = None
        node.replica = None
        node.host = None
        node.meta_jobs = []  # never started: nothing of them reached the disk
        node.incarnation += 1
        for task_id in sorted(self.tasks):
            if self.tasks[task_id].home == node.id:
                del self.tasks[task_id]
        for reader in self.readers.values():
            if reader.home == node.id:
                reader.home = 0  # continues on another node (``rehome_readers``)
        self.note(f"node {node.id} crashed ({reason})")

    # ----------------------------------------------------------- appenders

    def appender_step(self, appender: _Appender) -> None:
        now = self.loop.now_us
        if appender.target:
            if now > appender.client_deadline_us:
                self.append_failed(appender, "ClientTimeout")
            return
        if now < appender.wake_us:
            return
        if appender.batch is None:
            if not self.appending:
                return
            appender.counter += 1
            size = self.rng.randint(1, 3)
            appender.batch = tuple(
                b"a%d.%d.%d" % (appender.index, appender.counter, i) for i in range(size)
            )
            appender.attempts = 0
        up = self.up_nodes()
        if not up:
            return
        target = self.rng.choice(up)
        if self.committed is None:
            return  # the log is not created yet
        chain, _ = self.chain()
        appender.token = self.token()
        appender.target = target
        appender.tail_index = chain.tail.index
        appender.attempts += 1
        appender.sent_us = now
        if appender.attempts > 1:
            self.counters.redriven += 1
        self.counters.appends += 1
        appender.client_deadline_us = now + APPEND_DEADLINE_US + 100_000
        request = AppendReq(appender.token, appender.batch, APPEND_DEADLINE_US)
        self.send_client(
            CLIENT_HOME,
            target,
            request,
            lambda: self.node_takes_append(target, appender.addr, request),
        )

    def node_takes_append(self, node_id: int, appender_id: int, request: AppendReq) -> None:
        """A node's client port: the append goes through its LogNode (N2-N4)."""
        node = self.nodes[node_id]
        if not node.up or node.node is None:
            return
        node.reply_to[request.token] = appender_id
        if LOG not in node.node.chains:
            self.answer_client(node, request.token, AppendFail(request.token, UNKNOWN_LOG))
            return
        now = self.loop.now_us
        node.node.append(request.token, LOG, request.payloads, now + request.budget_us, now)
        self.pump(node)

    def on_append_answer(self, appender: _Appender, message: msgspec.Struct) -> None:
        if not appender.target or getattr(message, "token", None) != appender.token:
            return
        if isinstance(message, AppendAck):
            batch = appender.batch
            assert batch is not None
            if message.last_lsn - message.first_lsn + 1 != len(batch):
                self.fail(f"append of {len(batch)} records acknowledged as {message}")
            segment = self.segments.get(message.segment_index)
            for i, payload in enumerate(batch):
                lsn = message.first_lsn + i
                old = self.acked.get(lsn)
                if old is not None and old != payload:
                    self.fail(f"LSN {lsn} acknowledged with two payloads: {old!r}, {payload!r}")
                seen = self.seen.get(lsn)
                if seen is not None and seen != payload:
                    self.fail(f"LSN {lsn} acknowledged {payload!r} but read {seen!r}")
                self.acked[lsn] = payload
                if segment is not None:
                    offset = lsn - segment.base_lsn + 1
                    self.acked_at[lsn] = (segment.index, offset)
                end = self.segment_end.get(message.segment_index)
                if end is not None and lsn >= end:
                    self.fail(
                        f"LSN {lsn} acknowledged beyond the seal of segment {message.segment_index}"
                    )
            self.counters.acked += 1
            self.counters.records_acked += len(batch)
            self.note(f"appender {appender.index} acked {len(batch)} at LSN {message.last_lsn}")
            fresh = not self.safety and appender.sent_us >= self.liveness_start_us
            if fresh and self.fresh_ack_us is None:
                self.fresh_ack_us = self.loop.now_us
            appender.batch = None
            appender.target = 0
            appender.wake_us = self.loop.now_us + self.rng.randint(0, 20_000)
        elif isinstance(message, AppendFail):
            self.append_failed(appender, message.kind)

    def append_failed(self, appender: _Appender, kind: str) -> None:
        self.counters.append_failures += 1
        tail_index = appender.tail_index
        appender.target = 0
        self.note(f"appender {appender.index} append failed: {kind}")
        appender.wake_us = self.loop.now_us + self.rng.randint(5_000, 50_000)
        chain, _ = self.chain()
        if kind in (Backpressure.__name__, UNKNOWN_LOG) or chain.tail.index != tail_index:
            return
        # The segment does not take the append: seal it and move on (at most one
        # start per segment every 300 ms; racing ones are fine).
        last = self.reconfig_last.get(tail_index, -(10**9))
        if self.loop.now_us - last >= 300_000:
            up = self.up_nodes()
            if up:
                self.reconfigure(self.rng.choice(up), reason=f"appender saw {kind}")

    # --------------------------------------------------- reconfigure & trim

    def reconfigure(self, home: int, *, reason: str) -> None:
        """A reconfiguration run by ``home``, from the chain that node knows."""
        known = self.known_chain(home)
        if known is None:
            return
        chain, version = known
        up = self.up_nodes()
        sequencer = self.rng.choice(up)
        self.reconfig_last[chain.tail.index] = self.loop.now_us
        task_id = self.addr()
        task = Reconfigure(
            chain,
            version,
            NewSegment(
                REPLICATED,
                sequencer=SequencerId(sequencer, self.nodes[sequencer].generation),
                replication=self.plan.replication,
                nodeset_size=self.plan.nodeset_size,
            ),
            repairer=SequencerId(home, 1_000_000 + task_id),
            servers=self.servers,
            locations=self.locations,
            finder_config=FinderConfig(resend_ticks=5, read_bytes_max=512),
        )
        self.counters.reconfigurations += 1
        self.note(
            f"reconfigure segment {chain.tail.index} from node {home} ({reason}), "
            f"new sequencer N{sequencer}"
        )
        self.start_task(task_id, home, task)

    def start_task(self, task_id: int, home: int, task: Reconfigure | TrimLog) -> None:
        node = self.nodes[home]
        assert node.node is not None
        entry = _Task(0, home, task, node.incarnation)
        entry.addr = node.node.add_actor(entry)
        self.tasks[task_id] = entry
        self.drain_task(task_id)

    def trim(self) -> None:
        if not self.acked:
            return
        up = self.up_nodes()
        if not up:
            return
        home = self.rng.choice(up)
        known = self.known_chain(home)
        if known is None:
            return
        chain, version = known
        top = max(self.acked)
        lsn = self.rng.randint(max(1, chain.trim_point), top)
        lsn = max(chain.trim_point, lsn - (top - lsn) // 2) if lsn > top // 2 else lsn
        task = TrimLog(chain, version, lsn, top + 1)
        self.counters.trims += 1
        self.note(f"trim through LSN {lsn}")
        self.start_task(self.addr(), home, task)

    def drain_task(self, task_id: int) -> None:
        entry = self.tasks.get(task_id)
        if entry is None:
            return
        node = self.nodes[entry.home]
        assert node.node is not None
        task = entry.task
        for effect in task.take_effects():
            if isinstance(effect, SendLoglet):
                node.node.send_from(entry.addr, effect.node, effect.message)
            else:
                self.chain_request(task_id, entry, effect)
        self.pump(node)
        if task.done and task_id in self.tasks:
            del self.tasks[task_id]
            node.node.remove_actor(entry.addr)
            if isinstance(task, Reconfigure):
                if task.phase == DONE:
                    self.counters.reconfigurations_done += 1
                    self.counters.reconfigurations_adopted += task.adopted
                    if task.lost:
                        self.fail(f"reconfiguration met data loss: {task.lost}")
                else:
                    self.note(f"reconfiguration failed: {task.error}")

    def chain_request(self, task_id: int, entry: _Task, effect: ReadChain | CasChain) -> None:
        """A task's chain read or compare-and-set, as a metadata request of its node."""
        home = entry.home

        def alive() -> bool:
            return self.tasks.get(task_id) is entry

        if isinstance(effect, ReadChain):
            self.counters.chain_reads += 1
            not_before = self.committed[1] if self.committed is not None else 0

            def read(outcome: MetaOutcome) -> None:
                if not alive():
                    return
                if not isinstance(outcome, ReadCompleted):
                    # Not confirmed, refused everywhere, or no answer: ask again while
                    # the task lives (as the server's log service does).
                    self.loop.after(
                        self.meta_rng.randint(20_000, 50_000),
                        "chain reread",
                        lambda: self.chain_request(task_id, entry, effect) if alive() else None,
                    )
                    return
                kv = outcome.kv
                self.check_chain_answer(f"a chain read of node {home}", kv, not_before)
                chain = decode_chain(kv.value) if kv is not None else None
                if chain is not None and kv is not None:
                    self.learn(self.nodes[home], chain, kv.version)  # a lost race: the winner's
                entry.task.on_chain_read(chain, kv.version if kv is not None else 0)
                self.drain_task(task_id)

            self.meta_call(home, None, read)
            return
        self.counters.chain_cas += 1
        put = Put(CHAIN_KEY, effect.value, Precondition("version", effect.expected_version))

        def cas(outcome: MetaOutcome) -> None:
            if isinstance(outcome, Written):
                self.counters.cas_written += 1
                self.check_written(f"a chain CAS of node {home}", effect.value, outcome.version)
            elif isinstance(outcome, PreconditionFailed):
                self.counters.cas_failed += 1
            elif outcome == "indeterminate":
                self.counters.indeterminate_cas += 1
                if effect.value not in self.chain_at.values():
                    self.indeterminate.add(effect.value)
            else:
                self.counters.cas_refused += 1
            if not alive():
                return
            if isinstance(outcome, Written):
                self.learn(self.nodes[home], effect.chain, outcome.version)
                entry.task.on_cas(True, outcome.version)
            else:
                entry.task.on_cas(False)  # the re-read settles it (RC3, TR1)
            self.drain_task(task_id)

        self.meta_call(home, put, cas)

    # ------------------------------------------------------------- readers

    def add_reader(self, from_lsn: int, to_lsn: int | None) -> int:
        reader_id = self.addr()
        reader = _Reader(reader_id, None, to_lsn is None, from_lsn, to_lsn=to_lsn)
        self.readers[reader_id] = reader
        self.counters.readers += 1
        self.place_reader(reader)
        return reader_id

    def place_reader(self, reader: _Reader) -> None:
        """Run the reader on a random up node that knows the chain, from that node's
        chain (none: it waits for the next tick)."""
        up = [n for n in self.up_nodes() if self.known_chain(n) is not None]
        if not up:
            return
        node = self.nodes[self.rng.choice(up)]
        known = self.known_chain(node.id)
        assert node.node is not None and known is not None
        reader.stream = ReadStream(
            known[0], reader.expect, reader.to_lsn, config=self.read_config, salt=reader.addr
        )
        reader.chain_pending = False
        reader.stuck_since_us = None
        reader.home = node.id
        reader.actor = node.node.add_actor(reader)
        self.drain_reader(reader)

    def rehome_readers(self) -> None:
        """A reader whose node crashed continues on another node from where it stopped."""
        for reader_id in sorted(self.readers):
            reader = self.readers[reader_id]
            if reader.home:
                continue
            if reader.to_lsn is not None and reader.expect >= reader.to_lsn:
                del self.readers[reader_id]
                continue
            self.place_reader(reader)

    def drain_reader(self, reader: _Reader) -> None:
        stream = reader.stream
        node = self.nodes.get(reader.home)
        if stream is None or node is None or not node.up or node.node is None:
            return
        for _ in range(100):
            for dst, message in stream.take_messages():
                node.node.send_from(reader.actor, dst, message)
            if stream.need_chain and not reader.chain_pending:
                # The stream asks its host for a newer chain: it gets the one the
                # node knows (which its watch keeps up to date), a little later.
                reader.chain_pending = True
                home = reader.home

                def deliver(r: _Reader = reader, h: int = home) -> None:
                    r.chain_pending = False
                    known = self.known_chain(h)
                    if r.addr in self.readers and r.home == h and known is not None:
                        assert r.stream is not None
                        r.stream.on_chain(known[0])
                        self.reader_stuck(r)
                        self.drain_reader(r)

                stuck = reader.stuck_since_us is not None
                delay = self.rng.randint(20_000, 50_000) if stuck else self.rng.randint(200, 5_000)
                self.loop.after(delay, "reader chain", deliver)
            items = stream.take()
            if not items:
                break
            for item in items:
                self.check_item(reader, item)
        self.pump(node)
        if stream.finished and not reader.tailing and reader.addr in self.readers:
            del self.readers[reader.addr]
            node.node.remove_actor(reader.actor)

    def reader_stuck(self, reader: _Reader) -> None:
        """A reader that saw a sealed server while the chain keeps the segment open waits
        for a reconfiguration; one whose finder died (a seal that reached only some
        servers) would never come, so after 200 ms the reader's host starts one, as an
        appender's does (R7)."""
        if reader.stream is None or not reader.stream.need_chain:
            reader.stuck_since_us = None
            return
        now = self.loop.now_us
        if reader.stuck_since_us is None:
            reader.stuck_since_us = now
            return
        chain, _ = self.chain()
        last = self.reconfig_last.get(chain.tail.index, -(10**9))
        if now - reader.stuck_since_us >= 200_000 and now - last >= 300_000:
            up = self.up_nodes()
            if up:
                self.reconfigure(self.rng.choice(up), reason="reader saw a sealed server")

    def check_item(self, reader: _Reader, item: Record | TrimGap | DataLoss) -> None:
        self.counters.checks += 1
        first = item.lsn if isinstance(item, Record) else item.from_lsn
        if first != reader.expect:
            self.fail(f"reader {reader.addr}: hole or overlap at {first} (want {reader.expect})")
        if isinstance(item, DataLoss):
            self.fail(f"reader {reader.addr}: data loss {item.from_lsn}..{item.to_lsn}")
        if isinstance(item, TrimGap):
            self.counters.trim_gaps += 1
            chain, _ = self.chain()
            if item.to_lsn - 1 > chain.trim_point:
                self.fail(f"reader {reader.addr}: trim gap to {item.to_lsn} past the trim point")
            reader.expect = item.to_lsn
            return
        assert isinstance(item, Record)
        self.counters.records_read += 1
        reader.expect = item.lsn + 1
        lsn = item.lsn
        old = self.seen.setdefault(lsn, item.payload)
        if old != item.payload:
            self.fail(f"LSN {lsn} read as {old!r} and {item.payload!r}")
        acked = self.acked.get(lsn)
        if acked is not None and acked != item.payload:
            self.fail(f"LSN {lsn} read as {item.payload!r} but acknowledged {acked!r}")
        limit = self.global_tail_at(lsn)
        if limit is not None and lsn >= limit:
            self.fail(f"reader {reader.addr}: LSN {lsn} read at or past the global tail {limit}")

    def global_tail_at(self, lsn: int) -> int | None:
        """The first LSN not committed in the segment holding ``lsn`` (None: unknown)."""
        holder: Segment | None = None
        for index in sorted(self.segments):
            segment = self.segments[index]
            if segment.base_lsn <= lsn:
                end = self.segment_end.get(index)
                if end is None or lsn < end:
                    holder = segment
        if holder is None:
            return None
        end = self.segment_end.get(holder.index)
        if end is not None:
            return end
        return to_lsn(holder.base_lsn, self.seq_tail.get(holder.index, 1))

    # ------------------------------------------------------------ checkers

    def committed_tail(self) -> int:
        if self.committed is None:
            return 1
        chain, _ = self.chain()
        tail = chain.tail
        return to_lsn(tail.base_lsn, self.seq_tail.get(tail.index, 1))

    def check_tail(self) -> None:
        self.counters.checks += 1
        tail = self.committed_tail()
        if tail < self.tail_seen:
            self.fail(f"the tail went back: {self.tail_seen} -> {tail}")
        self.tail_seen = tail
        if self.committed is None:
            return
        chain, _ = self.chain()
        if chain.trim_point < self.trim_seen:
            self.fail(f"the trim point went back: {self.trim_seen} -> {chain.trim_point}")
        self.trim_seen = chain.trim_point

    def check_acks_within_seals(self) -> None:
        for index, end in sorted(self.segment_end.items()):
            tail = self.seq_tail.get(index, 1)
            base = self.segments[index].base_lsn
            if to_lsn(base, tail) > end:
                self.fail(
                    f"segment {index}: sequencer committed up to LSN {to_lsn(base, tail) - 1} "
                    f"beyond its sealed end {end}"
                )
        for lsn, (index, _offset) in sorted(self.acked_at.items()):
            sealed_end = self.segment_end.get(index)
            if sealed_end is not None and lsn >= sealed_end:
                self.fail(f"LSN {lsn} acknowledged beyond the seal of segment {index}")

    def final_checks(self) -> None:
        chain, _ = self.chain()
        # Every node acts on a chain the metadata service committed.
        for node_id in self.up_nodes():
            known = self.known_chain(node_id)
            if known is not None and self.chain_at.get(known[1]) != encode_chain(known[0]):
                self.fail(f"node {node_id} holds a chain at v{known[1]} that was never committed")
        # Every store agrees on every (loglet, offset); ended segments are on write quorums.
        held: dict[int, dict[int, dict[int, bytes]]] = {}  # segment -> node -> offset -> payload
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            if node.store is None:
                continue
            server = node.store.server
            for loglet in server.loglets():
                st = server.state(loglet)
                assert st is not None
                index = loglet & 0xFFFF_FFFF
                mine = held.setdefault(index, {}).setdefault(node_id, {})
                for start, end in st.runs:
                    payloads = node.store.read(loglet, start, end, 1 << 30)
                    for i, payload in enumerate(payloads):
                        mine[start + i] = payload
        for index in sorted(held):
            by_offset: dict[int, bytes] = {}
            for node_id in sorted(held[index]):
                for offset, payload in sorted(held[index][node_id].items()):
                    old = by_offset.setdefault(offset, payload)
                    if old != payload:
                        self.fail(f"segment {index} offset {offset}: two payloads on the servers")
            segment = self.segments.get(index)
            if segment is None:
                continue
            for offset, payload in sorted(by_offset.items()):
                lsn = to_lsn(segment.base_lsn, offset)
                limit = self.global_tail_at(lsn)
                if limit is None or lsn >= limit or self.segment_of(lsn) != index:
                    continue
                for source in (self.seen, self.acked):
                    other = source.get(lsn)
                    if other is not None and other != payload:
                        self.fail(f"LSN {lsn}: a server holds {payload!r}, clients saw {other!r}")
        for index, end in sorted(self.segment_end.items()):
            segment = self.segments[index]
            if segment.index < chain.segments[0].index:
                continue  # trimmed away
            params = segment.replicated
            assert params is not None
            checker = NodeSetChecker(params.nodeset, params.replication, self.locations)
            first = max(segment.base_lsn, chain.trim_point + 1)
            for lsn in range(first, end):
                offset = lsn - segment.base_lsn + 1
                holders = {n for n, records in held.get(index, {}).items() if offset in records}
                if not checker.is_write_quorum(holders):
                    self.fail(
                        f"segment {index} LSN {lsn} (sealed) is on {sorted(holders)} only, "
                        "not a write quorum"
                    )

    def segment_of(self, lsn: int) -> int | None:
        found = None
        for index in sorted(self.segments):
            if self.segments[index].base_lsn <= lsn:
                end = self.segment_end.get(index)
                if end is None or lsn < end:
                    found = index
        return found

    # --------------------------------------------------------------- ticks

    def tick(self) -> None:
        now = self.loop.now_us
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            if node.up and node.host is not None:
                self.member_tick(node)
            if node.up and node.node is not None:
                node.node.tick(now)
                self.pump(node)
        for task_id in sorted(self.tasks):
            entry = self.tasks.get(task_id)
            if entry is not None and isinstance(entry.task, Reconfigure):
                entry.task.tick()
                self.drain_task(task_id)
        self.rehome_readers()
        for reader_id in sorted(self.readers):
            reader = self.readers.get(reader_id)
            if reader is not None and reader.home and reader.stream is not None:
                reader.stream.tick()
                self.drain_reader(reader)
        for appender in self.appenders:
            self.appender_step(appender)
        self.check_tail()
        self.loop.after(TICK_US, "tick", self.tick)

    # ------------------------------------------------------------- nemesis

    def nemesis(self) -> None:
        if not self.safety:
            return
        rng = self.nemesis_rng
        plan = self.plan
        roll = rng.random()
        up = [n for n in sorted(self.nodes) if self.nodes[n].up]
        down_max = (len(self.nodes) - 1) // 2
        if roll < plan.forced_reconfigure:
            if len(up) >= 2 and rng.random() < 0.3:
                a, b = rng.sample(up, 2)
                self.counters.reconfiguration_races += 1
                self.reconfigure(a, reason="forced, racing")
                self.reconfigure(b, reason="forced, racing")
            elif up:
                self.reconfigure(rng.choice(up), reason="forced")
        elif roll < plan.forced_reconfigure + 0.1 and plan.trims:
            self.trim()
        elif roll < 0.6 and plan.crashes:
            if rng.random() < 0.3 and up:
                node = self.nodes[rng.choice(up)]
                assert node.node is not None
                self.counters.sequencer_crashes += 1
                node.generation += 1
                node.node.restart_sequencers(
                    node.generation, SequencerLoop(node.id, queue_max=64, config=self.seq_config)
                )
                self.note(f"sequencers of node {node.id} restarted")
                self.pump(node)
            elif len(self.nodes) - len(up) < down_max or (down_max == 0 and up):
                with_job = [n for n in up if self.nodes[n].job is not None]
                leaders = [n for n in up if (r := self.nodes[n].replica) and r.is_leader]
                pick = rng.random()
                if with_job and pick < 0.4:
                    victim = rng.choice(with_job)
                elif leaders and pick < 0.6:
                    victim = leaders[0]  # the metadata leader: its writes become indeterminate
                    self.counters.crashes_meta_leader += 1
                else:
                    victim = rng.choice(up)
                node = self.nodes[victim]
                self.crash_and_restart(node, node.incarnation, "nemesis")
        elif plan.partitions:
            nodes = sorted(self.nodes)
            kind = rng.random()
            if kind < 0.4:
                victim = rng.choice(nodes)
                links = split_links([victim], [n for n in nodes if n != victim])
            elif kind < 0.7:
                a, b = rng.sample(nodes, 2)
                links = [(a, b)]
            else:
                group = rng.sample(nodes, len(nodes) // 2)
                links = split_links(group, [n for n in nodes if n not in group])
            self.net.partition(links)
            self.counters.partitions += 1
            self.note(f"partition {links}")
            self.loop.after(
                rng.randint(50_000, 800_000), "heal", lambda: self.net.heal_links(links)
            )
        self.loop.after(rng.randint(*plan.nemesis_gap_us), "nemesis", self.nemesis)

    def window_crash_due(self, node: _Node) -> bool:
        """Crash a node whose job just started (at most every 300 ms, keeping a quorum up)."""
        if not (self.safety and self.plan.window_crashes and self.plan.crashes):
            return False
        if self.loop.now_us - self.last_window_crash_us < 300_000:
            return False
        down = sum(not n.up for n in self.nodes.values())
        if down >= max(1, (len(self.nodes) - 1) // 2) or self.nemesis_rng.random() >= 0.2:
            return False
        self.last_window_crash_us = self.loop.now_us
        return True

    def crash_and_restart(self, node: _Node, incarnation: int, reason: str) -> None:
        if not self.safety or not node.up or node.incarnation != incarnation:
            return  # no crash once the liveness phase has begun
        self.crash(node, reason=reason)
        later = node.incarnation
        self.loop.after(
            self.nemesis_rng.randint(*self.plan.down_us),
            f"restart {node.id}",
            lambda: self.restart(node, later),
        )

    def restart(self, node: _Node, incarnation: int) -> None:
        if node.up or node.incarnation != incarnation:
            return
        self.start_node(node)

    def maybe_add_reader(self) -> None:
        if self.safety and self.acked and len(self.readers) < 6:
            top = max(self.acked)
            start = self.rng.randint(1, top)
            end = min(self.committed_tail(), start + self.rng.randint(1, 40))
            if end > start:
                self.add_reader(start, end)
        if self.safety:
            self.loop.after(self.rng.randint(100_000, 600_000), "reader", self.maybe_add_reader)

    # ----------------------------------------------------------------- run

    def run(self) -> LogSimResult:
        options = self.options
        violation: str | None = None
        liveness_ms: int | None = None
        try:
            for node_id in sorted(self.nodes):
                self.start_node(self.nodes[node_id])
            self.loop.after(TICK_US, "create log", self.create_log)
            for i in range(self.plan.appenders):
                self.appenders.append(_Appender(self.addr(), i + 1))
            self.add_reader(1, None)
            self.add_reader(1, None)
            self.loop.after(TICK_US, "tick", self.tick)
            self.loop.after(self.rng.randint(*self.plan.nemesis_gap_us), "nemesis", self.nemesis)
            self.loop.after(200_000, "reader", self.maybe_add_reader)
            safety_end = options.steps * TICK_US
            self.loop.run_until(safety_end)
            liveness_ms = self.liveness(safety_end)
            self.final_checks()
        except Violation as exc:
            violation = str(exc)
        c = self.counters
        c.messages_sent = self.net.counters.sent
        c.messages_dropped = self.net.counters.dropped
        c.messages_duplicated = self.net.counters.duplicated
        c.inbox_drops += sum(
            n.node.server.dropped for n in self.nodes.values() if n.node is not None and n.up
        )
        return LogSimResult(
            seed=options.seed,
            nodes=options.nodes,
            steps=options.steps,
            ok=violation is None,
            violation=violation,
            counters=c,
            digest=self.loop.digest(),
            sim_time_ms=self.loop.now_ms,
            events=self.loop.events_run,
            liveness_ms=liveness_ms,
            replay=(
                f"catenary sim log --seed {options.seed} --nodes {options.nodes} "
                f"--steps {options.steps}"
            ),
            faults=self.plan.describe(),
            history_tail=list(self.history),
        )

    def liveness(self, start_us: int) -> int:
        """No faults from now on: a fresh append must succeed, readers catch up."""
        self.safety = False
        self.liveness_start_us = start_us
        self.note("liveness phase")
        self.net.heal()
        faults = self.net.faults
        faults.loss = faults.duplicate = faults.reorder = 0.0
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            if not node.up:
                self.start_node(node)
        bound = start_us + LIVENESS_BOUND_US
        step = 50_000
        now = start_us
        while self.fresh_ack_us is None:
            if now >= bound:
                self.fail("liveness: no append succeeded within the bound after the faults")
            now += step
            self.loop.run_until(now)
        liveness_ms = (self.fresh_ack_us - start_us) // 1000
        # Stop appending; let every outstanding append finish.
        self.appending = False
        while any(a.target or a.batch is not None for a in self.appenders):
            if now >= bound:
                self.fail("liveness: appends did not complete within the bound")
            now += step
            self.loop.run_until(now)
        # Read the whole log: every acknowledged record at its LSN.
        tail = self.committed_tail()
        chain, _ = self.chain()
        start = chain.trim_point + 1
        final = None
        if start < tail:
            final = self.add_reader(start, tail)
        while (final is not None and final in self.readers) or any(
            r.tailing and r.expect < tail for r in self.readers.values()
        ):
            if now >= bound:
                lagging = {a: r.expect for a, r in sorted(self.readers.items())}
                self.fail(f"liveness: readers did not reach the tail {tail}: {lagging}")
            now += step
            self.loop.run_until(now)
        trim = self.chain()[0].trim_point
        for lsn, payload in sorted(self.acked.items()):
            if lsn <= trim:
                continue
            got = self.seen.get(lsn)
            if got != payload:
                self.fail(f"acknowledged LSN {lsn} ({payload!r}) lost: read {got!r}")
        return liveness_ms


def run_log_sim(options: LogSimOptions) -> LogSimResult:
    return LogSimulation(options).run()


__all__ = ["LogSimCounters", "LogSimOptions", "LogSimResult", "LogSimulation", "run_log_sim"]
