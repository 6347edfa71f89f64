"""Deterministic simulation of the log service: ``catenary sim log``.

Theory of operation
-------------------
The simulator hosts the **real** log cores on the **real** host loops and the
**real** log-server store, over a simulated network, disk and clock
(``EventLoop``, ``SimNetwork``, ``SimFileSystem``), one seed deciding
everything (docs/design/simulation.md, "The log simulation"):

- every node runs a ``LogServerLoop`` over a ``LogStore`` on its own
  ``SimFileSystem``; a persistence ``Job`` (one ``LogStore.write`` + one
  ``sync`` for the whole batch) completes after a simulated fsync latency, and
  only then are its replies sent (LS3).  A crash drops everything unsynced and
  may tear the tail (a job in flight runs with a crash point armed); a restart
  goes through ``LogStore.open``, the real recovery path;
- every node runs a ``SequencerLoop``: the sequencer of a segment is started
  on the node (and generation) the chain names, when the first append for it
  arrives; a node's sequencers die with it (or alone, in a sequencer crash)
  and a restarted node has a new generation, so the old segment must be
  sealed and the log reconfigured;
- clients: appenders (each appends one batch and waits; a failed append is
  re-driven, on the new segment once the log was reconfigured — an
  unacknowledged append may or may not be in the log), readers (``ReadStream``:
  tailing and bounded), reconfigurations (``Reconfigure``: forced at random,
  sometimes two racing on two nodes, and started by appenders whose segment
  stopped answering) and trims (``TrimLog``);
- the chain lives in a deterministic compare-and-set store inside the
  simulator (not the replicated metadata service); its reads and writes take
  a random delay, and some writes succeed but answer "failed" (indeterminate).

Checkers run on every acknowledgement, record read, chain change and tick,
and once more at the end (``_final_checks``); the first failure stops the run.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field
from random import Random

import msgspec

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
from catenary.core.loglet.sequencer import SequencerConfig
from catenary.core.loglet.types import (
    OK,
    LogletId,
    Sealed,
    SequencerId,
    Stored,
    Trimmed,
    to_lsn,
)
from catenary.host.log_server import Job, LogServerLoop, LogServerOutput
from catenary.host.sequencer import SequencerLoop, SequencerOutput
from catenary.persist.log_store import LogStore, LogStoreCorruption
from catenary.storage.errors import StorageError
from catenary.storage.fs_sim import SimFileSystem
from catenary.storage.store import StoreConfig
from catenary.testing.sim.crashfs import CrashPointFileSystem, SimulatedCrash
from catenary.testing.sim.loop import EventLoop
from catenary.testing.sim.network import NetworkFaults, SimNetwork, split_links

LOG = 1
TICK_US = 10_000
CLIENT_HOME = 0  # clients (appenders, readers, trims) sit outside the cluster
SEQ_BASE = 100  # the sequencer loop of node n listens at SEQ_BASE + n
ACTOR_BASE = 1000  # clients and reconfigurations get addresses from here
APPEND_DEADLINE_US = 400_000
LIVENESS_BOUND_US = 20_000_000
_encoder = msgspec.msgpack.Encoder()


# ------------------------------------------------ client <-> sequencer messages


class AppendReq(msgspec.Struct, tag="areq", array_like=True, frozen=True):
    token: int
    segment: Segment
    payloads: tuple[bytes, ...]
    deadline_us: int


class AppendAck(msgspec.Struct, tag="aack", array_like=True, frozen=True):
    token: int
    last_offset: int


class AppendFail(msgspec.Struct, tag="afail", array_like=True, frozen=True):
    token: int
    kind: str  # the error's class name


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
    indeterminate_cas: int = 0
    trims: int = 0
    crashes: int = 0
    crashes_mid_job: int = 0
    crashes_window: int = 0
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


class Violation(Exception):
    pass


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
    indeterminate_cas: float
    appenders: int
    inflight_max: int
    window_crashes: bool  # crash a node while a job is in flight, now and then

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
            indeterminate_cas=rng.choice((0.0, 0.1)),
            appenders=rng.choice((2, 3, 6)),
            inflight_max=rng.choice((4, 64)),
            window_crashes=rng.random() < 0.4,
        )

    def describe(self) -> str:
        return (
            f"loss={self.loss} dup={self.duplicate} reorder={self.reorder} "
            f"delay<={self.delay_us_max}us crashes={self.crashes} "
            f"partitions={self.partitions} fsync={self.fsync_us}us tear={self.tear} "
            f"garbage={self.garbage} replication={self.replication} zones={self.zones} "
            f"nodeset_size={self.nodeset_size or 'min'} segment_bytes={self.segment_bytes_max} "
            f"forced_reconfigure={self.forced_reconfigure} trims={self.trims} "
            f"indeterminate_cas={self.indeterminate_cas} appenders={self.appenders} "
            f"inflight_max={self.inflight_max} window_crashes={self.window_crashes}"
        )


# ---------------------------------------------------------------- the nodes


class _Node:
    def __init__(self, node_id: int, zone: str, disk_seed: int, plan: _Plan) -> None:
        self.id = node_id
        self.zone = zone
        self.disk = SimFileSystem(
            Random(disk_seed), tear_probability=plan.tear, garbage_probability=plan.garbage
        )
        self.fs = CrashPointFileSystem(self.disk)
        self.store: LogStore | None = None
        self.loop: LogServerLoop | None = None
        self.seq: SequencerLoop | None = None
        self.generation = 0
        self.incarnation = 0
        self.up = False
        self.job: Job | None = None
        self.poll_scheduled = False
        self.reply_to: dict[int, int] = {}  # append token -> client address
        # What was durable, to check that a restart keeps it (trim points, seals).
        self.durable_trim: dict[LogletId, int] = {}
        self.durable_sealed: set[LogletId] = set()
        self.durable_tail: dict[LogletId, int] = {}


@dataclass
class _Appender:
    addr: int
    index: int
    batch: tuple[bytes, ...] | None = None
    token: int = 0
    segment: Segment | None = None
    client_deadline_us: int = 0
    wake_us: int = 0
    counter: int = 0
    attempts: int = 0
    sent_us: int = 0


@dataclass
class _Reader:
    addr: int
    stream: ReadStream
    tailing: bool
    expect: int
    chain_pending: bool = False
    stuck_since_us: int | None = None  # a sealed server seen, the chain still open


@dataclass
class _Task:
    addr: int
    home: int
    task: Reconfigure | TrimLog
    incarnation: int


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
            self.nodes[node_id] = _Node(node_id, zone, root.getrandbits(64), self.plan)
        self.locations = {n: node.zone for n, node in self.nodes.items()}
        self.servers = {n: LogServerInfo(location=z) for n, z in self.locations.items()}
        self._next_addr = ACTOR_BASE
        self._next_token = 0
        # The chain: a compare-and-set store inside the simulator (written in ``run``).
        self.meta: dict[str, tuple[bytes, int]] = {}
        self.segments: dict[int, Segment] = {}
        self.segment_end: dict[int, int] = {}  # segment index -> first LSN after it
        self.appenders: list[_Appender] = []
        self.readers: dict[int, _Reader] = {}
        self.tasks: dict[int, _Task] = {}
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

    def fail(self, text: str) -> None:
        self.note(f"VIOLATION {text}")
        raise Violation(text)

    def chain(self) -> tuple[Chain, int]:
        value, version = self.meta[chain_key(LOG)]
        return decode_chain(value), version

    def addr(self) -> int:
        self._next_addr += 1
        return self._next_addr

    def token(self) -> int:
        self._next_token += 1
        return self._next_token

    def home(self, addr: int) -> int:
        if addr < SEQ_BASE:
            return addr
        if addr < ACTOR_BASE:
            return addr - SEQ_BASE
        task = self.tasks.get(addr)
        return task.home if task is not None else CLIENT_HOME

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

    def send(self, src: int, dst: int, message: msgspec.Struct) -> None:
        detail = _encoder.encode(message)

        def deliver(delay_us: int) -> None:
            self.loop.after(
                delay_us, f"msg {src}->{dst}", lambda: self.receive(src, dst, message), detail
            )

        a, b = self.home(src), self.home(dst)
        if a == b:
            deliver(self.rng.randint(10, 100))
            return
        self.net.send(a, b, deliver)

    def receive(self, src: int, dst: int, message: msgspec.Struct) -> None:
        if dst < SEQ_BASE:
            node = self.nodes.get(dst)
            if node is None or not node.up or node.loop is None:
                return
            if not node.loop.offer(src, message):
                self.counters.inbox_drops += 1
            self.kick(node)
        elif dst < ACTOR_BASE:
            node = self.nodes.get(dst - SEQ_BASE)
            if node is None or not node.up or node.seq is None:
                return
            self.on_sequencer_message(node, src, message)
        elif dst in self.tasks:
            entry = self.tasks[dst]
            if isinstance(entry.task, Reconfigure):
                entry.task.on_message(src, message)
            self.drain_task(entry)
        elif dst in self.readers:
            reader = self.readers[dst]
            reader.stream.on_message(src, message)
            self.drain_reader(reader)
        else:
            for appender in self.appenders:
                if appender.addr == dst:
                    self.on_append_answer(appender, message)

    # ------------------------------------------------------- log-servers

    def start_node(self, node: _Node) -> None:
        node.incarnation += 1
        node.generation += 1
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
        node.loop = LogServerLoop(server, inbox_max=256, batch_max=64)
        node.durable_tail = {}
        self.remember_durable(node)
        node.seq = SequencerLoop(node.id, queue_max=64, config=self.seq_config)
        node.job = None
        node.poll_scheduled = False
        node.reply_to = {}
        node.up = True
        self.note(f"node {node.id} up (generation {node.generation})")

    def kick(self, node: _Node) -> None:
        if node.poll_scheduled or node.job is not None:
            return
        node.poll_scheduled = True
        incarnation = node.incarnation
        self.loop.after(20, f"poll {node.id}", lambda: self.poll(node, incarnation))

    def poll(self, node: _Node, incarnation: int) -> None:
        if not node.up or node.incarnation != incarnation or node.loop is None:
            return
        node.poll_scheduled = False
        out = node.loop.poll(self.loop.now_us)
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
        elif node.loop.pending:
            self.kick(node)

    def job_complete(self, node: _Node, incarnation: int) -> None:
        if not node.up or node.incarnation != incarnation or node.job is None:
            return
        assert node.store is not None and node.loop is not None
        try:
            node.store.write(node.job.writes)
            node.store.sync()
        except StorageError as exc:
            self.fail(f"node {node.id}: store failed: {exc}")
        node.job = None
        self.remember_durable(node)
        self.emit_server(node, node.loop.job_done())
        if node.loop.pending:
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
        for dst, message in out.send:
            self.check_durable_reply(node, message)
            self.send(node.id, dst, message)
        assert node.store is not None
        for plan in out.reads:
            self.send(node.id, plan.src, self.answer(node, plan))

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
        node.disk.crash()
        node.up = False
        node.store = node.loop = node.seq = None
        node.job = None
        node.incarnation += 1
        for addr in sorted(self.tasks):
            if self.tasks[addr].home == node.id:
                del self.tasks[addr]
        self.note(f"node {node.id} crashed ({reason})")

    # ---------------------------------------------------------- sequencers

    def on_sequencer_message(self, node: _Node, src: int, message: msgspec.Struct) -> None:
        seq = node.seq
        assert seq is not None
        now = self.loop.now_us
        if isinstance(message, Stored):
            seq.on_stored(src, message, now)
        elif isinstance(message, AppendReq):
            segment = message.segment
            loglet = segment.loglet(LOG)
            params = segment.replicated
            assert params is not None
            if not seq.hosts(loglet) and params.sequencer == SequencerId(node.id, node.generation):
                seq.start(
                    loglet,
                    params.sequencer,
                    params.nodeset,
                    params.replication,
                    locations=self.locations,
                )
            node.reply_to[message.token] = src
            seq.append(loglet, message.payloads, message.token, message.deadline_us, now)
        self.emit_sequencer(node)

    def emit_sequencer(self, node: _Node) -> None:
        seq = node.seq
        assert seq is not None
        out: SequencerOutput = seq.take()
        for loglet in seq.loglets():
            core = seq.core(loglet)
            assert core is not None
            index = loglet & 0xFFFF_FFFF
            if core.global_tail > self.seq_tail.get(index, 1):
                self.seq_tail[index] = core.global_tail
        addr = SEQ_BASE + node.id
        for dst, message in out.messages:
            self.send(addr, dst, message)
        for token, _loglet, last in out.acked:
            client = node.reply_to.pop(token, None)
            if client is not None:
                self.send(addr, client, AppendAck(token, last))
        for token, error in out.failed:
            client = node.reply_to.pop(token, None)
            if client is not None:
                self.send(addr, client, AppendFail(token, type(error).__name__))
        if out.acked:
            self.check_tail()

    # ----------------------------------------------------------- appenders

    def appender_step(self, appender: _Appender) -> None:
        now = self.loop.now_us
        if appender.segment is not None:
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
        chain, _ = self.chain()
        segment = chain.tail
        params = segment.replicated
        assert params is not None
        appender.token = self.token()
        appender.segment = segment
        appender.attempts += 1
        appender.sent_us = now
        if appender.attempts > 1:
            self.counters.redriven += 1
        self.counters.appends += 1
        deadline = now + APPEND_DEADLINE_US
        appender.client_deadline_us = deadline + 100_000
        self.send(
            appender.addr,
            SEQ_BASE + params.sequencer.node,
            AppendReq(appender.token, segment, appender.batch, deadline),
        )

    def on_append_answer(self, appender: _Appender, message: msgspec.Struct) -> None:
        if appender.segment is None or getattr(message, "token", None) != appender.token:
            return
        if isinstance(message, AppendAck):
            segment = appender.segment
            batch = appender.batch
            assert batch is not None
            first = message.last_offset - len(batch) + 1
            for i, payload in enumerate(batch):
                offset = first + i
                lsn = to_lsn(segment.base_lsn, offset)
                old = self.acked.get(lsn)
                if old is not None and old != payload:
                    self.fail(f"LSN {lsn} acknowledged with two payloads: {old!r}, {payload!r}")
                seen = self.seen.get(lsn)
                if seen is not None and seen != payload:
                    self.fail(f"LSN {lsn} acknowledged {payload!r} but read {seen!r}")
                self.acked[lsn] = payload
                self.acked_at[lsn] = (segment.index, offset)
                end = self.segment_end.get(segment.index)
                if end is not None and lsn >= end:
                    self.fail(f"LSN {lsn} acknowledged beyond the seal of segment {segment.index}")
            self.counters.acked += 1
            self.counters.records_acked += len(batch)
            self.note(f"appender {appender.index} acked {len(batch)} at LSN {lsn}")
            fresh = not self.safety and appender.sent_us >= self.liveness_start_us
            if fresh and self.fresh_ack_us is None:
                self.fresh_ack_us = self.loop.now_us
            appender.batch = None
            appender.segment = None
            appender.wake_us = self.loop.now_us + self.rng.randint(0, 20_000)
        elif isinstance(message, AppendFail):
            self.append_failed(appender, message.kind)

    def append_failed(self, appender: _Appender, kind: str) -> None:
        self.counters.append_failures += 1
        segment = appender.segment
        assert segment is not None
        appender.segment = None
        self.note(f"appender {appender.index} append failed: {kind}")
        appender.wake_us = self.loop.now_us + self.rng.randint(5_000, 50_000)
        chain, _ = self.chain()
        if kind == "Backpressure" or chain.tail.index != segment.index:
            return
        # The segment does not take the append: seal it and move on (at most one
        # start per segment every 300 ms; racing ones are fine).
        last = self.reconfig_last.get(segment.index, -(10**9))
        if self.loop.now_us - last >= 300_000:
            up = [n for n in sorted(self.nodes) if self.nodes[n].up]
            if up:
                self.reconfigure(self.rng.choice(up), reason=f"appender saw {kind}")

    # --------------------------------------------------- reconfigure & trim

    def reconfigure(self, home: int, *, reason: str) -> None:
        chain, version = self.chain()
        up = [n for n in sorted(self.nodes) if self.nodes[n].up]
        sequencer = self.rng.choice(up)
        self.reconfig_last[chain.tail.index] = self.loop.now_us
        addr = self.addr()
        task = Reconfigure(
            chain,
            version,
            NewSegment(
                REPLICATED,
                sequencer=SequencerId(sequencer, self.nodes[sequencer].generation),
                replication=self.plan.replication,
                nodeset_size=self.plan.nodeset_size,
            ),
            repairer=SequencerId(home, 1_000_000 + addr),
            servers=self.servers,
            locations=self.locations,
            finder_config=FinderConfig(resend_ticks=5, read_bytes_max=512),
        )
        self.counters.reconfigurations += 1
        self.note(
            f"reconfigure segment {chain.tail.index} from node {home} ({reason}), "
            f"new sequencer N{sequencer}"
        )
        entry = _Task(addr, home, task, self.nodes[home].incarnation)
        self.tasks[addr] = entry
        self.drain_task(entry)

    def trim(self) -> None:
        if not self.acked:
            return
        chain, version = self.chain()
        top = max(self.acked)
        lsn = self.rng.randint(max(1, chain.trim_point), top)
        lsn = max(chain.trim_point, lsn - (top - lsn) // 2) if lsn > top // 2 else lsn
        addr = self.addr()
        task = TrimLog(chain, version, lsn, top + 1)
        self.counters.trims += 1
        self.note(f"trim through LSN {lsn}")
        entry = _Task(addr, CLIENT_HOME, task, 0)
        self.tasks[addr] = entry
        self.drain_task(entry)

    def drain_task(self, entry: _Task) -> None:
        task = entry.task
        for effect in task.take_effects():
            if isinstance(effect, SendLoglet):
                self.send(entry.addr, effect.node, effect.message)
            else:
                self.meta_op(entry, effect)
        if task.done and entry.addr in self.tasks:
            del self.tasks[entry.addr]
            if isinstance(task, Reconfigure):
                if task.phase == DONE:
                    self.counters.reconfigurations_done += 1
                    self.counters.reconfigurations_adopted += task.adopted
                    if task.lost:
                        self.fail(f"reconfiguration met data loss: {task.lost}")
                else:
                    self.note(f"reconfiguration failed: {task.error}")

    def meta_op(self, entry: _Task, effect: ReadChain | CasChain) -> None:
        delay = self.rng.randint(200, 5_000)
        indeterminate = self.rng.random() < self.plan.indeterminate_cas

        def run() -> None:
            alive = entry.addr in self.tasks
            task = entry.task
            value, version = self.meta[effect.key]
            if isinstance(effect, ReadChain):
                if alive:
                    task.on_chain_read(decode_chain(value), version)
            elif effect.expected_version == version and (alive or self.rng.random() < 0.5):
                # A write from a crashed node may still land (it left before the crash).
                self.set_chain(effect.chain, effect.value, version + 1)
                if alive and indeterminate:
                    self.counters.indeterminate_cas += 1
                    task.on_cas(False)
                elif alive:
                    task.on_cas(True, version + 1)
            elif alive:
                task.on_cas(False)
            if entry.addr in self.tasks:
                self.drain_task(entry)

        self.loop.after(delay, "meta", run)

    def set_chain(self, chain: Chain, value: bytes, version: int) -> None:
        old, _ = self.chain()
        self.meta[chain_key(LOG)] = (value, version)
        if chain.trim_point < old.trim_point:
            self.fail(f"trim point went back: {old.trim_point} -> {chain.trim_point}")
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

    # ------------------------------------------------------------- readers

    def add_reader(self, from_lsn: int, to_lsn: int | None) -> int:
        chain, _ = self.chain()
        addr = self.addr()
        stream = ReadStream(chain, from_lsn, to_lsn, config=self.read_config, salt=addr)
        reader = _Reader(addr, stream, to_lsn is None, from_lsn)
        self.readers[addr] = reader
        self.counters.readers += 1
        self.drain_reader(reader)
        return addr

    def drain_reader(self, reader: _Reader) -> None:
        stream = reader.stream
        for _ in range(100):
            for dst, message in stream.take_messages():
                self.send(reader.addr, dst, message)
            if stream.need_chain and not reader.chain_pending:
                reader.chain_pending = True

                def deliver(r: _Reader = reader) -> None:
                    r.chain_pending = False
                    if r.addr in self.readers:
                        r.stream.on_chain(self.chain()[0])
                        self.reader_stuck(r)
                        self.drain_reader(r)

                stuck = reader.stuck_since_us is not None
                delay = self.rng.randint(20_000, 50_000) if stuck else self.rng.randint(200, 5_000)
                self.loop.after(delay, "meta read", deliver)
            items = stream.take()
            if not items:
                break
            for item in items:
                self.check_item(reader, item)
        if stream.finished and not reader.tailing:
            del self.readers[reader.addr]

    def reader_stuck(self, reader: _Reader) -> None:
        """A reader that saw a sealed server while the chain keeps the segment open waits
        for a reconfiguration; one whose finder died (a seal that reached only some
        servers) would never come, so after 200 ms the reader's host starts one, as an
        appender's does (R7)."""
        if not reader.stream.need_chain:
            reader.stuck_since_us = None
            return
        now = self.loop.now_us
        if reader.stuck_since_us is None:
            reader.stuck_since_us = now
            return
        chain, _ = self.chain()
        last = self.reconfig_last.get(chain.tail.index, -(10**9))
        if now - reader.stuck_since_us >= 200_000 and now - last >= 300_000:
            up = [n for n in sorted(self.nodes) if self.nodes[n].up]
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
        chain, _ = self.chain()
        tail = chain.tail
        return to_lsn(tail.base_lsn, self.seq_tail.get(tail.index, 1))

    def check_tail(self) -> None:
        self.counters.checks += 1
        tail = self.committed_tail()
        if tail < self.tail_seen:
            self.fail(f"the tail went back: {self.tail_seen} -> {tail}")
        self.tail_seen = tail
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
            if node.up and node.seq is not None:
                node.seq.tick(now)
                self.emit_sequencer(node)
        for addr in sorted(self.tasks):
            entry = self.tasks.get(addr)
            if entry is not None and isinstance(entry.task, Reconfigure):
                entry.task.tick()
                self.drain_task(entry)
        for addr in sorted(self.readers):
            reader = self.readers.get(addr)
            if reader is not None:
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
                self.counters.sequencer_crashes += 1
                node.generation += 1
                node.seq = SequencerLoop(node.id, queue_max=64, config=self.seq_config)
                node.reply_to = {}
                self.note(f"sequencers of node {node.id} restarted")
            elif len(self.nodes) - len(up) < down_max or (down_max == 0 and up):
                with_job = [n for n in up if self.nodes[n].job is not None]
                victim = rng.choice(with_job if with_job and rng.random() < 0.5 else up)
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
            first = Segment(0, 1, REPLICATED, self._new_segment_params(self.rng))
            self.meta[chain_key(LOG)] = (encode_chain(Chain(LOG, (first,))), 1)
            self.segments[0] = first
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
            n.loop.dropped for n in self.nodes.values() if n.loop is not None and n.up
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
        while any(a.segment is not None or a.batch is not None for a in self.appenders):
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
