"""Deterministic simulation of the replicated metadata service.

Theory of operation
-------------------
The real ``MetadataReplica`` (Raft core + state machine + lessor) and the real
``RaftStorage`` (segmented store + atomic files) run against a simulated
network, disk and clock, all derived from one seed:

* One ``Random(seed)`` hands out the seeds of every other generator: the
  network, each member's disk and Raft, the workload, the fault schedule and
  the fault mix.  Same seed, same options -> the same run, event for event
  (the event-trace digest proves it).
* Time is the event loop's (``EventLoop``); each member ticks every
  ``tick_ms`` with its own phase.  Nothing reads a wall clock.
* Each member is driven by the server's own host loop (``HostLoop``, from
  ``catenary.host.loop``): client requests and peer messages go into its
  bounded inbox, it batches them, proposes, ticks, applies deadlines and maps
  completions to ok / failed / indeterminate exactly as in the server.  The
  simulator only executes what the loop asks for: messages go to the simulated
  network, and a persistence job (``RaftStorage.save`` of a Ready, or a
  compaction) runs at the moment its simulated fsync completes (``fsync_us``);
  then ``job_done`` releases ``messages_after_persist`` and the apply.  The
  host's knobs (request deadline, batch and inbox bounds) are drawn per seed.
* A crash drops every in-memory object of the member.  If a persistence step
  was in flight, it runs with a crash point armed (``CrashPointFileSystem``):
  it stops after a random number of mutating file operations; the simulated
  file system then loses what was not synced and may tear the last write.
  The restart goes through the real recovery path: ``RaftStorage.open`` and
  ``load`` -> ``MetadataReplica(...)`` (the state machine is restored from the
  snapshot and committed entries are re-applied through Ready).
* Clients issue gets (linearizable or stale), puts, conditional puts (absent /
  version == v) and deletes with unique values on a few keys, one operation
  at a time each, with a timeout; every invocation and response goes into
  the history.  A leasing client grants, keeps alive and revokes leases.
* The fault plan is drawn per seed (swarm testing): which faults happen and
  how hard (see ``FaultPlan``).
* The safety phase injects faults (partitions, crashes, pauses, loss,
  duplication, reordering, torn writes, slow disks, leadership transfers,
  membership changes); the liveness phase heals everything and requires a
  leader, a fresh successful write and every member of the final group
  converged (identical state-machine snapshots) within ``liveness_bound_ms``.
* Checkers (``checkers.py``) run on every step; the client history is checked
  for linearizability at the end.  Hooks stay outside the host loop (the
  shared ``HostLoop``; the simulator's shell is ``_drive``/``_job_done``):
  recovery is checked in ``_boot`` right after ``load``, durability of grants
  and acks in ``_deliver``, the commit rule in ``_observe``, what was applied in
  ``_check_advanced``, narrow-window crashes in ``_after_input``, lease reads
  around the replica's ``read`` as the loop calls it (``_lease_read_hook``),
  watches in ``_watch_poll``.
* Nemeses aimed at narrow windows: crashes while a vote grant or a suffix
  rewrite is being persisted; a deposed leader (cut off, mostly paused, then
  thawed with queued reads; with lease reads at the worst drift the lease
  bound allows); clock drift beyond the lease bound (ReadIndex only).
* Watchers poll ``changes_since`` on a member and fail over to another,
  resuming from their last seen version.
* Bit-rot (``_nemesis_rot``, a generator of its own drawn after all others):
  one synced bit of a member's disk flips while it is down (or at a crash),
  anywhere its storage promises to detect it.  Its restart must refuse the
  disk (``RaftStorage.open``/``load`` raise a corruption error; the member is
  *retired* and never votes, acknowledges or serves again) or load a state the
  durability and recovery checkers accept (the store repaired and reported what
  it could prove redundant).  A retired member is replaced as the server's
  membership rules do it (``core.membership``): removed through the leader,
  then a fresh node id with an empty disk joins as a learner and is promoted
  once caught up; the liveness phase requires the replacement to finish.
"""

from __future__ import annotations

import functools
import json
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from random import Random

import msgspec

from catenary.api.messages import ErrorCode
from catenary.core.membership import (
    Promotion,
    Registration,
    join_refusal,
    match_indexes,
    reusable_node_id,
)
from catenary.core.metadata.lessor import LessorConfig
from catenary.core.metadata.replica import (
    Completion,
    GetQuery,
    MetadataReplica,
    Query,
    ReadCompleted,
    ReadFailed,
    ReplicaConfig,
    WriteCompleted,
    WriteIndeterminate,
)
from catenary.core.metadata.state import MetadataConfig
from catenary.core.metadata.types import (
    Command,
    Compacted,
    Delete,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseGranted,
    LeaseKeepAlive,
    LeaseNotFound,
    LeaseRevoke,
    Precondition,
    PreconditionFailed,
    Put,
    Written,
    decode_request,
)
from catenary.core.raft.node import RaftNode
from catenary.core.raft.types import (
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    Membership,
    Message,
    RaftConfig,
    Ready,
    RequestVoteResponse,
    Snapshot,
)
from catenary.host.loop import Failed, HostConfig, HostLoop, Output, Raised, persist_group
from catenary.persist.raft_storage import RaftStorage, RaftStorageCorruption
from catenary.storage.errors import CorruptionError, StorageError
from catenary.storage.fs_sim import SimFileSystem
from catenary.storage.store import (
    RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
    SEGMENT_SUFFIX,
    StoreConfig,
    _record_ok,
)
from catenary.testing.sim.checkers import (
    LeaderPresence,
    SafetyChecker,
    Violation,
    WatchChecker,
    leader_log_terms,
)
from catenary.testing.sim.crashfs import CrashPointFileSystem, SimulatedCrash
from catenary.testing.sim.history import Op
from catenary.testing.sim.linearizable import (
    check_history,
    check_leases,
    check_leases_late,
    check_stale_reads,
)
from catenary.testing.sim.loop import EventLoop
from catenary.testing.sim.network import NetworkFaults, SimNetwork, split_links

_message_encoder = msgspec.msgpack.Encoder()
RAFT_DIR = "/raft"
# The lessor checkpoints every 200 ms (the server's default is 1 s), so a late
# expiry is told apart from a checkpoint's age within a short run.
LESSOR = LessorConfig(checkpoint_interval_ms=200)
# The clock drift (each tick interval off by up to this fraction) that leader
# lease reads allow for with the simulator's RaftConfig (see FaultPlan.draw).
LEASE_DRIFT_BOUND = 1 / 9
SPARES = 2  # members that may join while the simulation runs


# ------------------------------------------------------------------ options


@dataclass(frozen=True)
class SimOptions:
    seed: int
    nodes: int = 3
    steps: int = 1000  # length of the safety phase, in ticks
    tick_ms: int = 10
    clients: int = 3
    keys: int = 3
    op_timeout_ms: int = 1_000
    liveness_bound_ms: int = 10_000
    op_attempts_max: int = 8  # redirects/refusals per operation before it gives up
    keep_log: bool = False  # keep a timeline of faults, leaders and phases in the result

    def replay_command(self) -> str:
        return f"catenary sim metadata --seed {self.seed} --nodes {self.nodes} --steps {self.steps}"


@dataclass
class FaultPlan:
    """The fault mix of one run, drawn from the seed (a different mix per seed)."""

    network: NetworkFaults
    crashes: bool
    partitions: bool
    fault_gap_ms: tuple[int, int]
    downtime_ms: tuple[int, int]
    partition_ms: tuple[int, int]
    fsync_us: tuple[int, int]
    tear_probability: float
    compact_after_entries: int
    segment_bytes_max: int
    lease_reads: bool  # leader-lease reads instead of ReadIndex rounds
    clock_drift: float  # each member's tick interval is off by up to this fraction
    transfers: bool  # the nemesis also moves leadership around
    stale_reads: float  # fraction of gets that are stale reads
    reconfigure: bool  # the nemesis removes voters and adds spare members (learner -> voter)
    leases: bool  # one more client grants, keeps alive and revokes leases with keys on them
    pauses: bool  # the nemesis freezes members (a stopped process) and thaws them later
    io_errors: bool  # the nemesis makes a member's next fsync fail (EIO)
    # The nemesis crashes members inside narrow windows: a voter whose grant waits
    # on its persist, a member whose persist rewrites a suffix of its log.
    window_crashes: bool
    watch_history_max: int  # events the state machine keeps for watchers
    # The nemesis cuts the leader off from the other members while some clients
    # keep sending it linearizable reads (a deposed leader that does not know yet).
    deposed_reads: bool
    # Entries per append: few make a lagging follower catch up over several
    # appends, so acknowledgements can cover old-term entries without the
    # leader's own (Raft's Figure 8 window).
    entries_per_message: int
    # Of the torn writes, the share that leave random garbage after the kept
    # prefix (a sector written half-way): a bad checksum at the end of a file.
    garbage_tails: float
    # The host loop's knobs (the server's defaults are 10 s, 4096 and 20000):
    # a deadline shorter than the clients' timeout makes the host answer
    # "indeterminate" itself; tiny batches and a small inbox force the rare paths.
    host_timeout_ms: int = 10_000
    host_batch_max: int = 4096
    host_queue_max: int = 20_000
    host_persists_max: int = 2
    # Jobs queued behind a running one, written as one group (HostLoop rule 9).
    host_group_max: int = 1
    # Bit-rot on a member's disk (drawn from a generator of its own, after all
    # the others, so the draws above are the same as without it).
    bit_rot: bool = False
    rot_gap_ms: tuple[int, int] = (1_000, 3_000)

    @classmethod
    def draw(cls, rng: Random) -> FaultPlan:
        network = NetworkFaults(
            loss=rng.choice([0.0, 0.01, 0.05, 0.15]),
            duplicate=rng.choice([0.0, 0.02, 0.1]),
            reorder=rng.choice([0.0, 0.05, 0.2]),
            delay_us_min=rng.choice([100, 500]),
            delay_us_max=rng.choice([2_000, 8_000, 20_000]),
            reorder_delay_us_max=rng.choice([10_000, 60_000]),
        )
        plan = cls(
            network=network,
            crashes=rng.random() < 0.85,
            partitions=rng.random() < 0.85,
            fault_gap_ms=rng.choice([(100, 600), (300, 1500), (800, 3000)]),
            downtime_ms=rng.choice([(20, 300), (100, 1500)]),
            partition_ms=rng.choice([(50, 500), (300, 3000)]),
            # The slowest disks are slower than an election timeout (100-200 ms).
            fsync_us=rng.choice(
                [(100, 1_000), (500, 5_000), (2_000, 20_000), (2_000, 20_000), (5_000, 120_000)]
            ),
            tear_probability=rng.choice([0.0, 0.5, 1.0]),
            compact_after_entries=rng.choice([8, 32, 128, 100_000]),
            segment_bytes_max=rng.choice([1 << 12, 1 << 14, 1 << 20]),
            lease_reads=rng.random() < 0.3,
            # Lease reads allow for clocks whose rates differ by less than
            # election / (election - lease_drift) = 10/8: with every tick off by up
            # to d, (1 + d) / (1 - d) < 1.25, d < 1/9.  0.1 is inside that bound,
            # 0.3 beyond it (expected unsafe with lease reads; see __init__).
            clock_drift=rng.choice([0.0, 0.01, 0.05, 0.1, 0.3]),
            transfers=rng.random() < 0.5,
            stale_reads=rng.choice([0.0, 0.2]),
            reconfigure=rng.random() < 0.4,
            leases=rng.random() < 0.5,
            pauses=rng.random() < 0.3,
            io_errors=rng.random() < 0.2,
            window_crashes=rng.random() < 0.4,
            watch_history_max=rng.choice([16, 64, 10_000]),
            deposed_reads=rng.random() < 0.4,
            entries_per_message=rng.choice([2, 64]),
            garbage_tails=rng.choice([0.0, 0.5, 1.0]),
            host_timeout_ms=rng.choice([200, 500, 10_000]),
            host_batch_max=rng.choice([1, 4, 4096]),
            host_queue_max=rng.choice([32, 20_000]),
            host_persists_max=rng.choice([1, 2, 2, 4]),
        )
        # Groups (HostLoop rule 9) form only behind a pipeline deeper than 2.
        if rng.random() < 0.5:
            plan.host_group_max = 16
            plan.host_persists_max = rng.choice([3, 4, 8])
        return plan


@dataclass
class SimCounters:
    ops: int = 0
    persist_groups: int = 0  # groups of more than one job written with one sync
    ops_ok: int = 0
    ops_indeterminate: int = 0
    ops_failed: int = 0
    leaders: int = 0
    crashes: int = 0
    crashes_mid_persist: int = 0
    restarts: int = 0
    torn_tails: int = 0
    partitions: int = 0
    messages_sent: int = 0
    messages_dropped: int = 0
    messages_duplicated: int = 0
    commits: int = 0
    snapshots: int = 0
    snapshots_installed: int = 0
    checks: int = 0
    transfers: int = 0
    reconfigurations: int = 0
    pauses: int = 0
    io_errors: int = 0
    stale_reads: int = 0
    crashes_vote_window: int = 0  # crashed with a vote grant waiting on its persist
    crashes_overwrite_window: int = 0  # crashed while persisting a rewrite of its log suffix
    crashes_group_window: int = 0  # crashed right after a persistence group was reported
    lease_reads: int = 0  # linearizable reads served on the leader lease (no round)
    deposed_leaders: int = 0  # leaders cut off while clients kept reading from them
    drift_beyond_bound: int = 0  # 1 when this run's clocks drift beyond the lease-read bound
    garbage_tails: int = 0  # crashes that left garbage after a torn write
    watch_polls: int = 0
    watch_events: int = 0
    watch_compacted: int = 0
    watch_failovers: int = 0  # a watcher moved to another member, resuming where it was
    host_batches: int = (
        0  # host-loop batches of more than one input, or proposals of several writes
    )
    host_expired: int = 0  # requests the host loop answered at their deadline
    host_refused: int = 0  # requests the host loop refused before proposing them
    bit_rots: int = 0  # synced bits flipped on a member's disk while it was down
    bit_rot_retired: int = 0  # restarts that refused a rotten disk: the member retired
    bit_rot_survived: int = 0  # rotten disks loaded (repaired, or the rot never read)
    members_replaced: int = 0  # retired members removed and replaced by a promoted fresh one
    rejoins_checked: int = 0  # a replacement's join asked again before it held an entry


@dataclass
class SimResult:
    seed: int
    nodes: int
    steps: int
    ok: bool
    violation: str | None
    counters: SimCounters
    digest: str
    sim_time_ms: int
    events: int
    liveness_ms: int | None  # from the end of the safety phase to the fresh write
    linearizability: str  # "ok" | "violation" | "unknown" (search bound hit) | "not checked"
    replay: str
    faults: str
    history_tail: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # with SimOptions.keep_log

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, sort_keys=True)


# -------------------------------------------------------------- the members


@dataclass
class _Job:
    """One persistence step in flight on a member."""

    ready: Ready | None = None
    snapshot: Snapshot | None = None  # a compaction snapshot to persist
    considered: bool = False  # the window nemesis looked at it


@dataclass(frozen=True)
class _Request:
    """A client attempt, as the token of a host-loop request."""

    client: _Client
    op: Op
    request_id: int


@dataclass(frozen=True)
class _NemesisCall:
    """A membership change or leadership transfer run through the host loop."""

    kind: str
    change: ConfChange | None = None


class _Member:
    def __init__(
        self, node_id: int, disk_seed: int, raft_seed: int, tear: float, garbage: float
    ) -> None:
        self.node_id = node_id
        self.disk = SimFileSystem(
            Random(disk_seed), tear_probability=tear, garbage_probability=garbage
        )
        self.fs = CrashPointFileSystem(self.disk)
        self.raft_seeds = Random(raft_seed)
        self.storage: RaftStorage | None = None
        self.replica: MetadataReplica | None = None
        self.host: HostLoop[_Request | _NemesisCall] | None = None
        self.incarnation = 0
        self.started = True  # spares start when they are added to the group
        self.job: _Job | None = None  # the first job of the group whose fsync runs
        self.group: list[_Job] = []  # that group (HostLoop rule 9), in order
        self.queued: list[_Job] = []  # the jobs started behind it, in order
        # A paused member (a stopped process) handles nothing until it resumes;
        # what reaches it meanwhile waits here, in arrival order.
        self.paused_until_us = 0
        self.deferred: list[Callable[[], None]] = []
        # Bit-rot: ``rotted`` once any bit of its disk rotted (a corruption its
        # storage reports from then on is the rot's); ``rot_unloaded`` until a
        # restart has loaded the rotten disk.  ``retired``: its restart refused
        # the disk, so it never runs again (a fresh member replaces it).
        self.rotted = False
        self.rot_unloaded = False
        self.retired = False

    @property
    def up(self) -> bool:
        return self.replica is not None


@dataclass
class _Client:
    client_id: int
    target: int
    probe: bool = False  # the liveness probe: puts until one succeeds
    leasing: bool = False  # works on leases and "lease/" keys (outside the checked history)
    lease: int = 0  # the lease it holds (0 = none)
    abandoned: list[int] = field(default_factory=list)  # leases it stopped keeping alive
    op: Op | None = None
    request_id: int = 0
    attempts: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    reads_only_until_us: int = 0  # pointed at a deposed leader: only linearizable gets
    reader: bool = False  # only ever linearizable gets (the deposed-leader scenario's reader)


@dataclass
class _Watcher:
    """Watches a prefix on one member, moving to another when it fails or at random."""

    watcher_id: int
    prefix: str
    target: int
    from_version: int = 0


# ------------------------------------------------------------ the simulator


class MetadataSim:
    def __init__(self, options: SimOptions) -> None:
        if options.nodes < 1:
            raise ValueError("nodes must be >= 1")
        self.options = options
        seeds = Random(options.seed)
        self.plan = FaultPlan.draw(Random(seeds.getrandbits(64)))
        if self.plan.clock_drift > LEASE_DRIFT_BOUND:
            # Beyond the bound lease reads are expected to be unsafe: such seeds
            # run ReadIndex reads only, which must stay safe under any drift.
            self.plan.lease_reads = False
        elif self.plan.lease_reads:
            # Lease-read seeds test the bound at its edge: drift 0.1 (inside 1/9).
            self.plan.clock_drift = 0.1
        self.loop = EventLoop(keep_notes=options.keep_log)
        self.network = SimNetwork(Random(seeds.getrandbits(64)), self.plan.network)
        self.nemesis_rng = Random(seeds.getrandbits(64))
        self.workload_rng = Random(seeds.getrandbits(64))
        self.timing_rng = Random(seeds.getrandbits(64))
        initial = list(range(1, options.nodes + 1))
        self.members = {
            i: _Member(
                i,
                seeds.getrandbits(64),
                seeds.getrandbits(64),
                self.plan.tear_probability,
                self.plan.garbage_tails,
            )
            for i in initial
        }
        self.membership = Membership(voters=tuple(initial))
        self.raft_config = RaftConfig(
            election_timeout_ticks=10,
            heartbeat_interval_ticks=2,
            max_entries_per_message=self.plan.entries_per_message,
            max_bytes_per_message=64 << 10,
            max_inflight_messages=8,
            snapshot_chunk_bytes=512,
            compact_after_entries=self.plan.compact_after_entries,
            compact_after_bytes=64 << 10,
            lease_reads=self.plan.lease_reads,
        )
        self.tick_us = {i: self._draw_tick_us() for i in initial}
        # Spare members join later (as learners, then voters) when the plan
        # reconfigures; their generators come last so the others do not move.
        spare_seeds = Random(seeds.getrandbits(64))
        spares = SPARES if self.plan.reconfigure else 0
        for i in range(options.nodes + 1, options.nodes + 1 + spares):
            self.members[i] = _Member(
                i,
                spare_seeds.getrandbits(64),
                spare_seeds.getrandbits(64),
                self.plan.tear_probability,
                self.plan.garbage_tails,
            )
            self.members[i].started = False
            self.tick_us[i] = self.tick_us[1 + (i - 1) % options.nodes]
        self.ids = sorted(self.members)
        # Drawn after every other generator, so adding watchers moved nothing else.
        self.watch_rng = Random(seeds.getrandbits(64))
        # Bit-rot and member replacement: last, so seeds without bit-rot replay
        # as before (with it, only its own events are added).
        self.rot_rng = Random(seeds.getrandbits(64))
        self.plan.bit_rot = self.rot_rng.random() < 0.35
        self.plan.rot_gap_ms = self.rot_rng.choice([(300, 1_500), (1_000, 4_000)])
        self.replacing: int | None = None  # the retired member being replaced
        # The node records the membership rules decide joins by (``core.membership``),
        # as the cluster's ``/catenary/nodes/<id>`` keys would hold them.
        self.registrations: dict[int, Registration] = {
            node_id: Registration(node_id, f"sim:{node_id}", f"sim:{node_id}")
            for node_id in sorted(self.members)
        }
        self.rejoin_checked = False  # the replacement's join was asked again (reply lost)
        self.replacement: int | None = None  # the fresh member replacing it
        self.promotion = Promotion(lag_max=8)
        self.reconfigure_submitted_us = -(10**9)
        self.watchers = [_Watcher(0, "k", 1), _Watcher(1, "lease/", 1)]
        self.watch_checker = WatchChecker()
        self.state_config = MetadataConfig(watch_history_max=self.plan.watch_history_max)
        self.store_config = StoreConfig(segment_bytes_max=self.plan.segment_bytes_max)
        self.checker = SafetyChecker()
        # lease -> simulated time a LeaseExpire naming it was first persisted by a
        # member (the leader's decision, one persistence step later).
        self.expiry_decided_us: dict[int, int] = {}
        # A new leader resumes each lease from the newest committed checkpoint: how
        # stale that was bounds how far it may push a deadline.  Checkpoint entry
        # (index, term) -> first persisted (about when it was measured); and the
        # (first applied, first persisted) times of checkpoints, in apply order.
        self._checkpoint_persisted_us: dict[tuple[int, int], int] = {}
        self._checkpoints_applied: list[tuple[int, int]] = []
        self._checkpoints_seen: set[tuple[int, int]] = set()
        self.checker.persisted_listener = self._note_expiries
        self.checker.applied_listener = self._note_checkpoints_applied
        self.presence = LeaderPresence(gap_us=3 * options.tick_ms * 1000)
        self.counters = SimCounters()
        self.counters.drift_beyond_bound = int(self.plan.clock_drift > LEASE_DRIFT_BOUND)
        self.history: list[Op] = []
        self.clients: list[_Client] = []
        self.next_request_id = 1
        self.phase = "safety"
        self.safety_end_us = options.steps * options.tick_ms * 1000
        self.liveness_deadline_us = self.safety_end_us + options.liveness_bound_ms * 1000
        self.probe_done_us: int | None = None
        self.converged = False
        self.violation: str | None = None
        self.interrupted: dict[int, list[Ready]] = {}
        self.window_quiet_until_us = 0
        self.nemesis_quiet_until_us = 0
        self.linearizability = "not checked"
        p = self.plan
        self.fault_summary = (
            f"loss={p.network.loss} dup={p.network.duplicate} reorder={p.network.reorder} "
            f"delay_us=[{p.network.delay_us_min},{p.network.delay_us_max}] "
            f"crashes={p.crashes} partitions={p.partitions} fsync_us={list(p.fsync_us)} "
            f"tear={p.tear_probability} compact_after={p.compact_after_entries} "
            f"lease_reads={p.lease_reads} drift={p.clock_drift} transfers={p.transfers} "
            f"stale_reads={p.stale_reads} reconfigure={p.reconfigure} leases={p.leases} "
            f"pauses={p.pauses} io_errors={p.io_errors} window_crashes={p.window_crashes} "
            f"deposed_reads={p.deposed_reads} entries_per_message={p.entries_per_message} "
            f"watch_history_max={p.watch_history_max} garbage_tails={p.garbage_tails} "
            f"host_timeout_ms={p.host_timeout_ms} host_batch_max={p.host_batch_max} "
            f"host_queue_max={p.host_queue_max} host_persists_max={p.host_persists_max} "
            f"host_group_max={p.host_group_max} bit_rot={p.bit_rot}"
        )

    # ------------------------------------------------------------------ run

    def run(self) -> SimResult:
        try:
            self._start()
            self.loop.run_until(self.safety_end_us, self._stopped)
            if self.violation is None:
                self._begin_liveness()
                self.loop.run_until(self.liveness_deadline_us, self._stopped)
                if self.violation is None and not self.converged:
                    self._fail_liveness()
            if self.violation is None:
                self._finish_history()
                self._check_history()
        except Violation as exc:
            self.violation = str(exc)
        except Exception as exc:  # a crash of the code under test is a finding too
            self.violation = (
                "exception: "
                + "".join(traceback.format_exception_only(type(exc), exc)).strip()
                + "\n"
                + "".join(traceback.format_tb(exc.__traceback__)[-4:])
            )
        return self._result()

    def _draw_tick_us(self) -> int:
        """One member's tick interval.  With lease reads every clock sits at an edge
        of the drift (fast or slow by the whole fraction), so pairs of members
        test the lease-read bound where it is tightest."""
        drift = self.plan.clock_drift
        if self.plan.lease_reads:
            off = self.timing_rng.choice([-drift, drift])
        else:
            off = self.timing_rng.uniform(-drift, drift)
        return round(self.options.tick_ms * 1000 * (1 + off))

    def _started(self) -> list[int]:
        return [i for i in self.ids if self.members[i].started and not self.members[i].retired]

    def _leader(self) -> MetadataReplica | None:
        for node_id in self.ids:
            replica = self.members[node_id].replica
            if replica is not None and replica.is_leader:
                return replica
        return None

    def _stopped(self) -> bool:
        return self.violation is not None or self.converged

    def _result(self) -> SimResult:
        c = self.counters
        net = self.network.counters
        c.messages_sent = net.sent
        c.messages_dropped = net.dropped
        c.messages_duplicated = net.duplicated
        c.leaders = len(self.checker.leaders)
        c.commits = self.checker.highest_commit
        c.checks = self.checker.checks + self.watch_checker.checks
        c.garbage_tails = sum(m.disk.garbage_count for m in self.members.values())
        liveness = None
        if self.probe_done_us is not None:
            liveness = (self.probe_done_us - self.safety_end_us) // 1000
        tail: list[str] = []
        if self.violation is not None:
            tail = [op.describe() for op in self.history[-20:]]
        return SimResult(
            seed=self.options.seed,
            nodes=self.options.nodes,
            steps=self.options.steps,
            ok=self.violation is None,
            violation=self.violation,
            counters=c,
            digest=self.loop.digest(),
            sim_time_ms=self.loop.now_ms,
            events=self.loop.events_run,
            liveness_ms=liveness,
            linearizability=self.linearizability,
            replay=self.options.replay_command(),
            faults=self.fault_summary,
            history_tail=tail,
            log=list(self.loop.notes or ()),
        )

    def _fail(self, message: str) -> None:
        if self.violation is None:
            self.violation = message
            self.loop.note("violation " + message)

    # ---------------------------------------------------------------- start

    def _start(self) -> None:
        for node_id in self._started():
            self._boot(self.members[node_id])
        for client_id in range(self.options.clients):
            client = _Client(client_id, target=self.workload_rng.choice(self._started()))
            self.clients.append(client)
            self.loop.after(
                self.workload_rng.randint(0, 50_000),
                f"client{client_id}.start",
                functools.partial(self._client_next, client),
            )
        if self.plan.leases:
            client = _Client(
                len(self.clients), target=self.workload_rng.choice(self._started()), leasing=True
            )
            self.clients.append(client)
            self.loop.after(0, "lease-client.start", functools.partial(self._client_next, client))
        if self.plan.deposed_reads:
            reader = _Client(
                len(self.clients), target=self.watch_rng.choice(self._started()), reader=True
            )
            self.clients.append(reader)
            self.loop.after(0, "reader.start", functools.partial(self._client_next, reader))
        for watcher in self.watchers:
            watcher.target = self.watch_rng.choice(self._started())
            self.loop.after(
                self.watch_rng.randint(0, 50_000),
                f"watch{watcher.watcher_id}",
                functools.partial(self._watch_poll, watcher),
            )
        plan = self.plan
        faults = (plan.crashes, plan.partitions, plan.transfers, plan.reconfigure, plan.pauses)
        if any(faults) or plan.io_errors:
            self._schedule_nemesis()
        if plan.bit_rot:
            self._schedule_rot()

    def _boot(self, member: _Member) -> None:
        """Open storage and build the replica from what is on disk (the recovery path)."""
        if member.retired:
            raise Violation(f"node {member.node_id} was retired (a rotten disk) but restarted")
        member.fs.disarm()
        try:
            storage = RaftStorage.open(member.fs, RAFT_DIR, self.store_config)
            if storage.store_recovery.torn_tail:
                self.counters.torn_tails += 1
            hard_state, snapshot, entries = storage.load()
        except (CorruptionError, RaftStorageCorruption) as exc:
            if not member.rotted:
                raise  # corruption nobody injected: a finding
            # As the server does (a StartupError): refuse to run on this disk.
            self._retire(member, exc)
            return
        if member.rot_unloaded:
            # The rot hit what the store could repair (and reported), or bytes it
            # never reads; the checkers below judge what it loaded.
            member.rot_unloaded = False
            self.counters.bit_rot_survived += 1
            self.loop.note(
                f"rotten disk of {member.node_id} loaded: {storage.store_recovery.summary()}"
            )
        self.checker.reloaded(
            member.node_id, hard_state, snapshot, entries, self.interrupted.pop(member.node_id, [])
        )
        member.storage = storage
        member.incarnation += 1
        member.job = None
        member.queued = []
        member.replica = MetadataReplica(
            member.node_id,
            self.raft_config,
            Random(member.raft_seeds.getrandbits(64)),
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
            initial_membership=self.membership
            if member.node_id in self.membership.voters
            else None,
            config=ReplicaConfig(lessor=LESSOR),
            state_config=self.state_config,
            now_ms=self.loop.now_ms,
        )
        incarnation = member.incarnation
        phase_us = self.timing_rng.randint(0, self.options.tick_ms * 1000 - 1)
        member.replica.read = self._lease_read_hook(member, member.replica.read)  # type: ignore[method-assign, assignment]
        plan = self.plan
        member.host = HostLoop(
            member.replica,
            HostConfig(
                tick_ms=self.options.tick_ms,
                request_timeout_ms=plan.host_timeout_ms,
                batch_max=plan.host_batch_max,
                queue_max=plan.host_queue_max,
                persists_in_flight_max=plan.host_persists_max,
                persist_group_max=plan.host_group_max,
            ),
            durable=storage.hard_state,
            now_us=self.loop.now_us,
            tick_us=self.tick_us[member.node_id],
            first_tick_us=self.loop.now_us + phase_us,
        )
        self.loop.after(
            phase_us,
            f"tick{member.node_id}",
            lambda: self._tick(member, incarnation),
        )
        self._after_input(member)

    def _lease_read_hook(
        self, member: _Member, read: Callable[[int, Query], None]
    ) -> Callable[[int, Query], None]:
        """The replica's ``read`` as the host loop calls it, noting a read released at
        once, without a round: served on the leader lease, which must still hold."""

        def hooked(request_id: int, query: Query) -> None:
            replica = member.replica
            assert replica is not None
            released = len(replica.raft._reads_ready)
            read(request_id, query)
            if len(replica.raft._reads_ready) > released:
                self.counters.lease_reads += 1
                self.checker.check_lease_read(member.node_id, replica.term)

        return hooked

    # ---------------------------------------------------------------- ticks

    def _deferred(self, member: _Member, action: Callable[[], None]) -> bool:
        """True (and ``action`` kept for later) while ``member`` is paused."""
        if self.loop.now_us < member.paused_until_us:
            member.deferred.append(action)
            return True
        return False

    def _tick(self, member: _Member, incarnation: int) -> None:
        if member.incarnation != incarnation or member.replica is None:
            return
        if self._deferred(member, lambda: self._tick(member, incarnation)):
            return
        host = member.host
        assert host is not None
        # This member's clock rate (a nemesis may change it).
        host.tick_us = self.tick_us[member.node_id]
        # The host answers the requests past their deadline (its timer's job,
        # even while a persistence step is in flight), then polls: the loop
        # delivers the ticks that are due when it is between Readies.
        expired = host.expire(self.loop.now_us)
        self.counters.host_expired += len(expired)
        for token, outcome in expired:
            self._complete(member, token, outcome)
        self._after_input(member)
        if member.replica is not None and member.replica.is_leader:
            self.presence.seen(self.loop.now_us, member.replica.term)
        self.loop.after(
            self.tick_us[member.node_id],
            f"tick{member.node_id}",
            lambda: self._tick(member, incarnation),
        )

    # -------------------------------------------------------------- network

    def _send(self, message: Message) -> None:
        if self.members[message.src].retired:
            raise Violation(
                f"node {message.src} sent {type(message).__name__} after it was retired "
                "(a rotten disk)"
            )
        detail = _message_encoder.encode(message)

        def schedule(delay_us: int) -> None:
            self.loop.after(delay_us, "deliver", lambda: self._deliver(message), detail)

        self.network.send(message.src, message.dst, schedule)

    def _deliver(self, message: Message) -> None:
        member = self.members.get(message.dst)
        if member is None or member.replica is None:
            return
        if self._deferred(member, lambda: self._deliver(message)):
            return
        self.checker.check_delivery(message, leader_log_terms(member.replica, message.term))
        assert member.host is not None
        member.host.step(message)
        self._after_input(member)

    # ---------------------------------------------------------- ready/persist

    def _after_input(self, member: _Member) -> None:
        """An input reached the member's host loop: poll it and execute its output."""
        host = member.host
        assert host is not None
        self._drive(member, host.poll(self.loop.now_us))
        self._nemesis_window(member)

    def _drive(self, member: _Member, out: Output[_Request | _NemesisCall]) -> None:
        """Execute a host-loop output as the server's shell does, polling while it asks.

        Messages go to the network, completions to the clients, a persistence
        job waits for its simulated fsync (``_job_done``) behind the ones before it."""
        while True:
            host = member.host
            if host is None:
                return  # crashed meanwhile (a violation is being raised)
            for message in out.messages:
                self._send(message)
            if out.advanced:
                self._check_advanced(member, out.advanced)
            self._observe(member)
            for token, outcome in out.completions:
                self._complete(member, token, outcome)
            if out.inputs > 1 or out.proposed > 1:
                self.counters.host_batches += 1
            for job in out.jobs:
                member.queued.append(_Job(ready=job.ready, snapshot=job.snapshot))
                if member.job is None:
                    self._start_group(member)
            if not out.more:
                return
            out = host.poll(self.loop.now_us)

    def _start_group(self, member: _Member) -> None:
        """The disk takes the jobs queued, up to the group bound (HostLoop rule 9)."""
        member.group = member.queued[: self.plan.host_group_max]
        del member.queued[: len(member.group)]
        member.job = member.group[0]
        self._schedule_job(member)

    def _schedule_job(self, member: _Member) -> None:
        incarnation = member.incarnation
        delay = self.timing_rng.randint(*self.plan.fsync_us)
        self.loop.after(
            delay, f"fsync{member.node_id}", lambda: self._job_done(member, incarnation)
        )

    def _observe(self, member: _Member) -> None:
        replica = member.replica
        assert replica is not None
        if replica.is_leader:
            term = replica.term
            if self.checker.observe_leader(member.node_id, term):
                self.loop.note(f"leader {member.node_id} term {term}")
                self._check_leader_log(member)
        self.checker.observe_commit(replica.raft.commit_index, replica.term)
        if replica.is_leader:
            raft = replica.raft
            commit = raft.commit_index
            held = raft.entries(commit, commit + 1) if commit > raft.snapshot_index else []
            self.checker.observe_leader_commit(
                member.node_id, replica.term, commit, held[0].term if held else None
            )
            self.checker.check_flow(
                member.node_id,
                replica.term,
                raft.unanswered(),
                self.raft_config.max_inflight_messages,
            )

    def _check_advanced(self, member: _Member, readies: list[Ready]) -> None:
        """What the host loop applied, checked against what the cluster committed
        and against what its own disk holds (``HostLoop`` rule 3c)."""
        replica = member.replica
        assert replica is not None
        model = self.checker.model(member.node_id)
        for ready in readies:
            for entry in ready.committed:
                if entry.index > model.snapshot_index and model.entries.get(entry.index) != (
                    entry.term
                ):
                    raise Violation(
                        f"durability at apply: node {member.node_id} applied index "
                        f"{entry.index} term {entry.term} before its disk held it"
                    )
            if ready.snapshot is not None:
                self.checker.observe_installed(member.node_id, ready.snapshot)
                self.counters.snapshots_installed += 1
            self.checker.observe_applied(member.node_id, ready.committed)
        if replica.state.applied_index != self.checker.applied.get(member.node_id, 0):
            raise Violation(
                f"node {member.node_id}: state machine at {replica.state.applied_index}, "
                f"applied entries end at {self.checker.applied.get(member.node_id, 0)}"
            )

    def _check_leader_log(self, member: _Member) -> None:
        replica = member.replica
        assert replica is not None
        raft = replica.raft
        first = raft.snapshot_index + 1
        held = raft.entries(first, self.checker.highest_commit + 1)
        terms = {e.index: e.term for e in held}
        self.checker.check_leader_log(member.node_id, replica.term, terms, first)

    def _job_done(self, member: _Member, incarnation: int) -> None:
        """The simulated fsync of the member's persistence job completed: run it now."""
        if member.incarnation != incarnation or member.job is None:
            return
        if self._deferred(member, lambda: self._job_done(member, incarnation)):
            return
        group = member.group
        storage = member.storage
        assert storage is not None and member.host is not None
        error = persist_group(storage, group)
        if error is not None:
            if not isinstance(error, (OSError, StorageError)):
                raise error
            # A failed fsync may have lost what it was flushing: the member
            # stops (as the server does) and restarts from what is on disk.
            self.counters.io_errors += 1
            self.loop.note(f"io error on {member.node_id}: {error}")
            self._crash(member, rerun=False)
            self._schedule_restart(member)
            return
        if len(group) > 1:
            self.counters.persist_groups += 1
        member.job = None
        member.group = []
        if member.queued:
            self._start_group(member)  # the disk takes the next jobs now
        for job in group:
            if job.ready is not None:
                self.checker.model(member.node_id).saved(job.ready)
                self.checker.observe_persisted(member.node_id, job.ready.entries)
            elif job.snapshot is not None:
                self.checker.model(member.node_id).compacted(job.snapshot)
                self.counters.snapshots += 1
        for _job in group:
            host = member.host
            if host is None or member.incarnation != incarnation:
                return
            self._drive(member, host.job_done())
        if len(group) > 1:
            self._nemesis_group_window(member)
        self._nemesis_window(member)

    # -------------------------------------------------------------- crashes

    def _crash(self, member: _Member, *, rerun: bool = True, budget: int | None = None) -> None:
        """Drop the member's memory; run its in-flight persistence up to a crash point.

        ``rerun=False``: the persistence step already ran and failed (an I/O error).
        """
        if member.replica is None:
            return
        self.counters.crashes += 1
        job = member.job
        interrupted = [j.ready for j in member.group if j.ready is not None]
        if job is not None and member.storage is not None and rerun:
            self.counters.crashes_mid_persist += 1
            member.fs.arm(self.nemesis_rng.randint(0, 12) if budget is None else budget)
            error = persist_group(member.storage, member.group)
            if error is not None and not isinstance(error, (SimulatedCrash, OSError, StorageError)):
                raise error
            member.fs.disarm()
        self.loop.note(f"crash {member.node_id}" + (" (mid-persist)" if job else ""))
        member.disk.crash()
        member.disk.inject_fsync_errors(0)  # the fault was transient
        self.interrupted[member.node_id] = interrupted
        member.replica = None
        member.host = None
        member.storage = None
        member.job = None
        member.group = []
        member.queued = []  # never started: nothing of them reached the disk
        member.paused_until_us = 0
        member.deferred = []
        member.incarnation += 1

    def _restart(self, member: _Member) -> None:
        if member.replica is not None or member.retired:
            return
        self.counters.restarts += 1
        self.loop.note(f"restart {member.node_id}")
        self._boot(member)

    # -------------------------------------------------------------- nemesis

    def _schedule_nemesis(self) -> None:
        gap_ms = self.nemesis_rng.randint(*self.plan.fault_gap_ms)
        self.loop.after(gap_ms * 1000, "nemesis", self._nemesis)

    def _nemesis(self) -> None:
        if self.phase != "safety":
            return
        rng = self.nemesis_rng
        if self.loop.now_us < self.nemesis_quiet_until_us:
            self._schedule_nemesis()  # a deposed leader's scenario plays out undisturbed
            return
        actions: list[str] = []
        if self.plan.crashes:
            actions += ["crash", "crash"]
        if self.plan.partitions:
            actions += ["partition", "partition"]
        if self.plan.transfers:
            actions += ["transfer"]
        if self.plan.reconfigure:
            actions += ["reconfigure"]
        if self.plan.pauses:
            actions += ["pause"]
        if self.plan.io_errors:
            actions += ["io-error"]
        if self.plan.deposed_reads:
            # With lease reads the race it sets up is narrow: try it more often.
            actions += ["depose"] * (8 if self.plan.lease_reads else 3)
        action = rng.choice(actions)
        if action == "crash":
            self._nemesis_crash(rng)
        elif action == "transfer":
            self._nemesis_transfer(rng)
        elif action == "reconfigure":
            self._nemesis_reconfigure(rng)
        elif action == "pause":
            self._nemesis_pause(rng)
        elif action == "io-error":
            self._nemesis_io_error(rng)
        elif action == "depose":
            self._nemesis_depose(rng)
        else:
            self._nemesis_partition(rng)
        self._schedule_nemesis()

    def _nemesis_crash(self, rng: Random) -> None:
        up = [i for i in self._started() if self.members[i].up]
        if not up:
            return
        busy = [i for i in up if self.members[i].job is not None]
        leaders = [i for i in up if (r := self.members[i].replica) is not None and r.is_leader]
        pick = rng.random()
        if busy and pick < 0.4:
            victim = rng.choice(busy)
        elif leaders and pick < 0.7:
            victim = rng.choice(leaders)
        else:
            victim = rng.choice(up)
        member = self.members[victim]
        self._crash(member)
        self._schedule_restart(member)

    def _nemesis_window(self, member: _Member) -> None:
        """Crash a member inside a narrow window of its persistence step.

        Two windows: a voter whose vote grant waits on the persist of its vote,
        and a member whose persist rewrites a conflicting suffix of its log
        (the crash point then lands around the hard-state write, before or
        after the suffix is rewritten).  At most one such crash per 300 ms.
        """
        job = member.job
        if (
            job is None
            or job.considered
            or job.ready is None
            or not self.plan.window_crashes
            or self.phase != "safety"
        ):
            return
        job.considered = True
        if self.loop.now_us < self.window_quiet_until_us:
            return
        ready = job.ready
        storage = member.storage
        assert storage is not None
        vote = any(
            isinstance(m, RequestVoteResponse) and m.granted and not m.pre_vote
            for m in ready.messages_after_persist
        )
        overwrite = bool(ready.entries) and ready.entries[0].index <= storage.last_index
        if not (vote or overwrite):
            return
        rng = self.nemesis_rng
        if rng.random() < 0.5:
            return
        self.window_quiet_until_us = self.loop.now_us + 300_000
        budget = rng.randint(0, 8) if vote else rng.randint(3, 9)
        incarnation = member.incarnation

        def crash() -> None:
            if member.incarnation != incarnation or member.job is not job:
                return
            if vote:
                self.counters.crashes_vote_window += 1
            else:
                self.counters.crashes_overwrite_window += 1
            self.loop.note(f"window crash {member.node_id} ({'vote' if vote else 'overwrite'})")
            self._crash(member, budget=budget)
            self._schedule_restart(member)

        self.loop.after(rng.randint(0, 50), f"window-crash{member.node_id}", crash)

    def _nemesis_group_window(self, member: _Member) -> None:
        """Crash a member just after it reported a group of jobs durable (HostLoop
        rule 9): whatever it acknowledged must survive without a later sync."""
        if not self.plan.window_crashes or self.phase != "safety":
            return
        if self.loop.now_us < self.window_quiet_until_us:
            return
        rng = self.nemesis_rng
        self.window_quiet_until_us = self.loop.now_us + 300_000
        incarnation = member.incarnation

        def crash() -> None:
            if member.incarnation != incarnation:
                return
            self.counters.crashes_group_window += 1
            self.loop.note(f"window crash {member.node_id} (group)")
            self._crash(member, budget=0)
            self._schedule_restart(member)

        self.loop.after(rng.randint(0, 50), f"window-crash{member.node_id}", crash)

    def _schedule_restart(self, member: _Member) -> None:
        downtime_ms = self.nemesis_rng.randint(*self.plan.downtime_ms)
        self.loop.after(
            downtime_ms * 1000, f"restart{member.node_id}", lambda: self._restart(member)
        )

    def _nemesis_depose(self, rng: Random) -> None:
        """Cut the leader off from every other member; point some clients at it.

        The others elect a new leader and commit writes while the old one may
        still believe it leads; reads it serves without a confirming round (or
        on a lease that does not allow for clock drift) are then stale, which
        the linearizability check sees.  Mostly the old leader is also
        stopped (paused) until shortly before the cut heals: thawed, it catches
        up only a few ticks (as the server's host does), still believes it
        leads, and handles the reads that queued up meanwhile.
        """
        leader = self._leader()
        ids = self._started()
        if leader is None or len(ids) < 3:
            return
        old = leader.node_id
        if not all(self.members[v].up for v in leader.raft.membership.voters):
            return  # the others could not elect a leader: nothing to catch
        links = split_links([old], [i for i in ids if i != old])
        self.counters.deposed_leaders += 1
        if self.plan.lease_reads:
            # The worst drift the lease-read bound allows: the old leader's clock
            # runs slow, every other member's fast (real clocks change rate too).
            base = self.options.tick_ms * 1000
            drift = self.plan.clock_drift
            for i in ids:
                self.tick_us[i] = round(base * (1 + drift if i == old else 1 - drift))
        self.network.partition(links)
        self.loop.note(f"depose {old}")
        others = [c for c in self.clients if not (c.leasing or c.probe or c.reader)]
        readers = [c for c in self.clients if c.reader] + others[: len(others) // 2]

        duration_ms = rng.randint(300, 1_500)

        def point_readers() -> None:
            for client in readers:
                client.target = old
                client.reads_only_until_us = self.loop.now_us + duration_ms * 1000

        self.loop.after(duration_ms * 1000, "heal", lambda: self.network.heal_links(links))
        self.nemesis_quiet_until_us = self.loop.now_us + (duration_ms + 200) * 1000
        member = self.members[old]
        # (With lease reads a thawed member catches up an election timeout of
        # ticks, which ends any lease: then the cut alone tests the lease bound.)
        pause = rng.random() < 0.8 and not self.plan.lease_reads
        if pause and member.paused_until_us <= self.loop.now_us:
            pause_us = (duration_ms - rng.randint(30, 150)) * 1000
            self._pause(member, pause_us)
            # Reads sent shortly before it thaws, after the others (likely) took
            # writes: it handles them the moment it thaws.
            self.loop.after(pause_us - rng.randint(5_000, 40_000), "point-readers", point_readers)
        else:
            point_readers()

    def _nemesis_io_error(self, rng: Random) -> None:
        up = [i for i in self._started() if self.members[i].up]
        if up:
            victim = rng.choice(up)
            self.members[victim].disk.inject_fsync_errors(1)
            self.loop.note(f"next fsync of {victim} fails")

    def _nemesis_pause(self, rng: Random) -> None:
        up = [i for i in self._started() if self.members[i].up]
        if not up:
            return
        leader = self._leader()
        victim = leader.node_id if leader is not None and rng.random() < 0.6 else rng.choice(up)
        member = self.members[victim]
        if member.paused_until_us > self.loop.now_us:
            return
        self._pause(member, rng.randint(20, 2_000) * 1000)

    def _pause(self, member: _Member, pause_us: int) -> None:
        victim = member.node_id
        member.paused_until_us = self.loop.now_us + pause_us
        self.counters.pauses += 1
        self.loop.note(f"pause {victim} for {pause_us // 1000} ms")
        incarnation = member.incarnation
        self.loop.after(
            pause_us, f"resume{victim}", lambda: self._resume(member, incarnation, pause_us)
        )

    def _resume(self, member: _Member, incarnation: int, pause_us: int) -> None:
        """Thaw a paused member: first the ticks it missed, then what arrived meanwhile."""
        if member.incarnation != incarnation or member.replica is None:
            return
        member.paused_until_us = 0
        # The host loop catches up on the ticks the clock says were missed
        # (HostLoop rule 4) before it handles queued input, so a stale leader
        # lease is not trusted.
        self._after_input(member)
        deferred, member.deferred = member.deferred, []
        for action in deferred:
            action()

    def _nemesis_transfer(self, rng: Random) -> None:
        replica = self._leader()
        if replica is None:
            return
        node_id = replica.node_id
        voters = [i for i in replica.raft.membership.voters if i != node_id]
        if not voters:
            return
        target = rng.choice(voters)
        self.counters.transfers += 1
        self.loop.note(f"transfer {node_id}->{target}")
        # Through the host loop, as the server's admin transfer does.
        member = self.members[node_id]
        assert member.host is not None
        if (
            member.host.submit_call(
                lambda r: r.transfer_leadership(target), _NemesisCall("transfer")
            )
            is None
        ):
            self._after_input(member)

    def _nemesis_reconfigure(self, rng: Random) -> None:
        """One membership change: promote a caught-up learner, remove a voter, or add a spare."""
        leader = self._leader()
        if leader is None or self._rot_under_way():
            return  # a rotten member is to be replaced: the group must keep its quorum
        membership = leader.raft.membership
        spares = [i for i in self.ids if not self.members[i].started]
        change: ConfChange | None = None
        if membership.learners:
            learner = membership.learners[0]
            peer = leader.status().peers.get(learner)
            if peer is not None and peer.match + 8 >= leader.raft.last_index:
                change = ConfChange(ConfChangeKind.PROMOTE, learner)
        elif len(membership.voters) >= self.options.nodes:
            change = ConfChange(ConfChangeKind.REMOVE, rng.choice(membership.voters))
        elif spares:
            change = ConfChange(ConfChangeKind.ADD_LEARNER, spares[0])
        if change is None:
            return
        # Through the host loop, as the server's conf_change does; the outcome
        # comes back as a completion (``_reconfigured``).
        self.reconfigure_submitted_us = self.loop.now_us
        self._submit_conf_change(leader.node_id, change, "reconfigure")

    def _submit_conf_change(self, leader: int, change: ConfChange, kind: str) -> None:
        member = self.members[leader]
        assert member.host is not None
        if (
            member.host.submit_call(
                lambda r: r.propose_conf_change(change), _NemesisCall(kind, change)
            )
            is None
        ):
            self._after_input(member)

    def _reconfigured(self, change: ConfChange, outcome: object) -> None:
        if isinstance(outcome, Raised | Failed):
            return  # not leader any more, or one change at a time: nothing happened
        self.counters.reconfigurations += 1
        self.loop.note(f"reconfigure {change.kind} {change.node}")
        if change.kind == ConfChangeKind.ADD_LEARNER:
            leader = self._leader()
            if change.node == self.replacement and not self.rejoin_checked and leader:
                self._rejoin(change.node, leader.raft)  # its first reply was lost
            joiner = self.members[change.node]
            if not joiner.started:
                joiner.started = True
                self._boot(joiner)

    def _nemesis_partition(self, rng: Random) -> None:
        ids = self._started()
        if len(ids) < 2:
            return
        kind = rng.choice(["split", "isolate", "one-way", "links"])
        if kind == "split":
            shuffled = ids[:]
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(ids) - 1)
            links = split_links(shuffled[:cut], shuffled[cut:])
        elif kind == "isolate":
            victim = rng.choice(ids)
            links = split_links([victim], [i for i in ids if i != victim])
        elif kind == "one-way":
            victim = rng.choice(ids)
            others = [i for i in ids if i != victim]
            if rng.random() < 0.5:
                links = [(victim, o) for o in others]
            else:
                links = [(o, victim) for o in others]
        else:
            links = [(a, b) for a in ids for b in ids if a != b and rng.random() < 0.3]
        self.counters.partitions += 1
        self.network.partition(links)
        self.loop.note(f"partition {kind} {links}")
        duration_ms = rng.randint(*self.plan.partition_ms)
        self.loop.after(duration_ms * 1000, "heal", lambda: self.network.heal_links(links))

    # ------------------------------------------------ bit-rot and replacement

    def _schedule_rot(self) -> None:
        gap_ms = self.rot_rng.randint(*self.plan.rot_gap_ms)
        self.loop.after(gap_ms * 1000, "bit-rot", self._nemesis_rot)

    def _nemesis_rot(self) -> None:
        """Rot one synced bit of a voter's disk: while it is down, or at a crash.

        Only while the group is whole and settled (no learner, no membership
        change under way, no retired member still to replace, at least three
        voters), so losing the victim for good leaves a quorum that can remove
        it: two rotten disks at once are beyond what a replicated log survives.
        """
        if self.phase != "safety":
            return
        self._schedule_rot()
        rng = self.rot_rng
        leader = self._leader()
        if (
            leader is None
            or self._rot_under_way()
            or self.loop.now_us < self.nemesis_quiet_until_us
            or self.loop.now_us < self.reconfigure_submitted_us + 1_000_000
        ):
            return
        raft = leader.raft
        membership = raft.membership
        if (
            membership.learners
            or len(membership.voters) < 3
            or raft._pending_conf_index > raft.commit_index
        ):
            return
        for i in self._started():
            replica = self.members[i].replica
            if replica is not None and replica.raft.membership != membership:
                return  # a member holds another configuration: a change is under way
        victims = [v for v in membership.voters if v in self.members and self.members[v].started]
        if len(victims) != len(membership.voters):
            return
        member = self.members[rng.choice(victims)]
        if member.up:
            self._crash(member, budget=rng.randint(0, 12))
            downtime_ms = rng.randint(*self.plan.downtime_ms)
            self.loop.after(
                downtime_ms * 1000, f"restart{member.node_id}", lambda: self._restart(member)
            )
        self._rot(member, rng)

    def _rot_under_way(self) -> bool:
        """A rotten disk waits for its restart, or a retired member for its replacement."""
        return self.replacing is not None or any(m.rot_unloaded for m in self.members.values())

    def _rot(self, member: _Member, rng: Random) -> None:
        """Flip one synced bit of the (down) member's Raft directory."""
        targets = self._rot_targets(member.disk)
        if not targets:
            return
        path, start, end = rng.choice(targets)
        offset = member.disk.rot(path, rng, start=start, end=end)
        member.rotted = member.rot_unloaded = True
        self.counters.bit_rots += 1
        self.loop.note(f"bit-rot {member.node_id} {path} at {offset}")

    def _rot_targets(self, disk: SimFileSystem) -> list[tuple[str, int, int]]:
        """(path, start, end) of the synced bytes a rot may hit: every file of the
        Raft directory, except the last record of the last segment.

        The store cannot tell a rotten last record from a torn write (the same
        shape: a record whose checksum fails with only zeros after it), so it
        cuts it as a torn tail -- storage rule 3's residual risk, which no check
        can close without knowing what was synced.  Everything before it is
        followed by a valid record (or covered by a checkpoint, or read back by
        ``load``); the zeros after the records are a separate target (the store
        zeroes them again and reports a torn tail).  The member is down, so what
        the disk holds now is what was synced.
        """
        targets: list[tuple[str, int, int]] = []
        log_dir = f"{RAFT_DIR}/log"
        paths: list[str] = []
        for directory in (RAFT_DIR, log_dir):
            if disk.exists(directory):
                paths += [f"{directory}/{name}" for name in disk.listdir(directory)]
        segments = sorted(p for p in paths if p.endswith(SEGMENT_SUFFIX))
        for path in sorted(paths):
            if path == log_dir:
                continue
            size = disk.file_size(path)
            if size == 0:
                continue
            if segments and path == segments[-1]:
                f = disk.open(path, create=False)
                data = f.pread(0, size)
                f.close()
                rmax = self.store_config.record_bytes_max
                at = last = SEGMENT_HEADER_BYTES
                while (n := _record_ok(data, at, size, rmax)) >= 0:
                    last = at
                    at += RECORD_HEADER_BYTES + n
                targets.append((path, 0, last))
                if at < size:
                    targets.append((path, at, size))
            else:
                targets.append((path, 0, size))
        return targets

    def _retire(self, member: _Member, error: Exception) -> None:
        """The restart refused a rotten disk: the member never runs again."""
        member.retired = True
        member.rot_unloaded = False
        self.counters.bit_rot_retired += 1
        self.loop.note(f"retired {member.node_id}: {error}")
        if self.replacing is not None:
            raise Violation(
                f"node {member.node_id} retired while node {self.replacing} is still "
                "being replaced (the bit-rot nemesis rots one member at a time)"
            )
        self.replacing = member.node_id
        recorded = self.registrations.get(member.node_id)
        if recorded is not None:  # the membership service marks a removed node's record
            self.registrations[member.node_id] = Registration(
                recorded.node,
                recorded.peer_address,
                recorded.client_address,
                recorded.generation,
                removed=True,
            )
        self.loop.after(0, "replace", self._replace_step)

    def _replace_step(self) -> None:
        """One step of replacing the retired member, through the leader's host loop
        as the server's membership service does: remove it, add a fresh node id
        (a NodeId that held data is never reused: ``core.membership`` rule 1) as a
        learner, promote it once caught up (rule 3).  Repeats until done."""
        old = self.replacing
        if old is None or self._stopped():
            return
        self.loop.after(50_000, "replace", self._replace_step)
        leader = self._leader()
        if leader is None:
            return
        raft = leader.raft
        membership = raft.membership
        if raft._pending_conf_index > raft.commit_index:
            return  # one change at a time; wait for it to commit
        change: ConfChange | None = None
        if old in membership.voters or old in membership.learners:
            change = ConfChange(ConfChangeKind.REMOVE, old)
        else:
            if self.replacement is None:
                self.replacement = self._join(old)
            new = self.replacement
            if new in membership.voters:
                self.counters.members_replaced += 1
                self.loop.note(f"replaced {old} by {new}")
                self.replacing = self.replacement = None
                return
            if new not in membership.learners:
                change = ConfChange(ConfChangeKind.ADD_LEARNER, new)
            elif (
                self.promotion.check(membership.learners, match_indexes(raft), raft.last_index)
                == new
            ):
                change = ConfChange(ConfChangeKind.PROMOTE, new)
        if change is not None:
            self._submit_conf_change(leader.node_id, change, "replace")

    def _join(self, retired: int) -> int:
        """The replacement's join, decided as the leader's membership service decides
        it (``core.membership`` rules 1 and 2): the retired node may not come back under
        its id, and a new node gets an id never handed out before."""
        recorded = self.registrations.get(retired)
        refused = join_refusal(retired, recorded, asked_node=retired, generation=0)
        if refused is None or refused.kind != "removed":
            self._fail(f"membership: retired node {retired} was allowed to join again")
        node_id = self._fresh_member()
        if node_id in self.registrations:
            self._fail(f"membership: node id {node_id} handed out twice")
        self.registrations[node_id] = Registration(node_id, f"sim:{node_id}", f"sim:{node_id}")
        self.rejoin_checked = False
        return node_id

    def _rejoin(self, new: int, raft: RaftNode) -> None:
        """Rule 1: a joiner whose reply was lost asks again with its addresses; while its
        learner holds no entry it must get the same id back (no orphan learner)."""
        matches = match_indexes(raft)
        if matches.get(new, 0) > 0:
            self.rejoin_checked = True
            return
        again = reusable_node_id(
            self.registrations.values(),
            peer_address=f"sim:{new}",
            client_address=f"sim:{new}",
            voters=raft.membership.voters,
            learners=raft.membership.learners,
            matches=matches,
        )
        self.rejoin_checked = True
        self.counters.rejoins_checked += 1
        if again != new:
            self._fail(
                f"membership: node {new} asked to join again before holding any entry and "
                f"got {again} (an orphan learner left behind)"
            )

    def _fresh_member(self) -> int:
        """A node with a new id and an empty disk (started when added as a learner)."""
        node_id = max(self.ids) + 1
        rng = self.rot_rng
        member = _Member(
            node_id,
            rng.getrandbits(64),
            rng.getrandbits(64),
            self.plan.tear_probability,
            self.plan.garbage_tails,
        )
        member.started = False
        self.members[node_id] = member
        self.tick_us[node_id] = self.tick_us[1 + (node_id - 1) % self.options.nodes]
        self.ids = sorted(self.members)
        return node_id

    # ------------------------------------------------------------- liveness

    def _begin_liveness(self) -> None:
        self.phase = "liveness"
        self.loop.note("liveness")
        self.network.heal()
        faults = self.network.faults
        faults.loss = 0.0
        faults.duplicate = 0.0
        faults.reorder = 0.0
        # Disks as slow as an election timeout keep a group electing forever; that
        # is a configuration problem, not the liveness this phase asks for.
        self.plan.fsync_us = (min(self.plan.fsync_us[0], 1_000), min(self.plan.fsync_us[1], 5_000))
        for node_id in self._started():
            self._restart(self.members[node_id])
        probe = _Client(
            len(self.clients), target=self.workload_rng.choice(self._started()), probe=True
        )
        self.clients.append(probe)
        self._client_next(probe)

    def _check_converged(self) -> None:
        if self.violation is not None or self.converged:
            return
        leader = self._leader()
        group: list[int] = []
        if leader is not None:
            membership = leader.raft.membership
            group = sorted(set(membership.voters) | set(membership.learners))
        replicas = [self.members[i].replica for i in group if i in self.members]
        live = [r for r in replicas if r is not None]
        if (
            group
            and len(live) == len(group)
            and self.probe_done_us is not None
            and self.replacing is None  # a retired member must have been replaced
        ):
            applied = {r.state.applied_index for r in live}
            commits = {r.raft.commit_index for r in live}
            if len(applied) == 1 and commits == applied:
                snapshots = {r.state.snapshot() for r in live}
                if len(snapshots) != 1:
                    raise Violation(
                        f"members applied up to {applied.pop()} but their states differ"
                    )
                self.converged = True
                self.loop.note("converged")
                return
        self.loop.after(20_000, "converge?", self._check_converged)

    def _fail_liveness(self) -> None:
        bound = self.options.liveness_bound_ms
        if self.probe_done_us is None:
            leaders = [
                i for i in self.ids if (r := self.members[i].replica) is not None and r.is_leader
            ]
            self._fail(
                f"liveness: no successful write within {bound} ms after faults healed "
                f"(leaders now: {leaders})"
            )
        else:
            states = [
                (i, r.state.applied_index, r.raft.commit_index, r.raft.role)
                for i in self.ids
                if (r := self.members[i].replica) is not None
            ]
            self._fail(
                f"liveness: members did not converge within {bound} ms after faults "
                f"healed (node, applied, commit, role): {states}"
            )

    # --------------------------------------------------------------- watches

    def _watch_poll(self, watcher: _Watcher) -> None:
        """One poll of a watcher (as the server's watch stream does): changes since its
        last seen version; on a down or paused member it moves elsewhere and resumes."""
        if self._stopped():
            return
        rng = self.watch_rng
        self.loop.after(
            rng.randint(2_000, 30_000),
            f"watch{watcher.watcher_id}",
            functools.partial(self._watch_poll, watcher),
        )
        member = self.members[watcher.target]
        replica = member.replica
        if replica is None or self.loop.now_us < member.paused_until_us or rng.random() < 0.05:
            up = [i for i in self._started() if self.members[i].up]
            if up:
                watcher.target = rng.choice(up)
                self.counters.watch_failovers += 1
            return
        state = replica.state
        self.watch_checker.harvest(member.node_id, state)
        limit = rng.choice([0, 0, 2])
        answer = state.changes_since(watcher.from_version, watcher.prefix, True, limit)
        self.counters.watch_polls += 1
        self.watch_checker.check(
            watcher.watcher_id,
            member.node_id,
            watcher.prefix,
            watcher.from_version,
            answer,
            state.history_start,
        )
        if isinstance(answer, Compacted):
            # Resync (a list at the member's revision), then watch on from there.
            self.counters.watch_compacted += 1
            watcher.from_version = max(watcher.from_version, answer.revision)
            return
        self.counters.watch_events += len(answer.events)
        watcher.from_version = answer.revision

    # ---------------------------------------------------------------- clients

    def _client_delay_us(self) -> int:
        return self.workload_rng.randint(100, 1_000)

    def _client_next(self, client: _Client) -> None:
        if self.violation is not None or self.converged:
            return
        if self.probe_done_us is not None:
            return  # the cluster is asked to quiesce and converge
        rng = self.workload_rng
        key = f"k{rng.randrange(self.options.keys)}"
        value = f"c{client.client_id}-{len(self.history)}".encode()
        op_id = len(self.history)
        if client.probe:
            op = Op(op_id, client.client_id, "put", "probe", self.loop.now_us, value=value)
        elif client.leasing:
            op = self._lease_op(client, op_id, value)
        else:
            reads_only = client.reader or self.loop.now_us < client.reads_only_until_us
            roll = 0.0 if reads_only else rng.random()
            if roll < 0.4:
                op = Op(op_id, client.client_id, "get", key, self.loop.now_us)
                op.stale = rng.random() < self.plan.stale_reads and not reads_only
            elif roll < 0.65:
                op = Op(op_id, client.client_id, "put", key, self.loop.now_us, value=value)
            elif roll < 0.75:
                op = Op(
                    op_id,
                    client.client_id,
                    "put",
                    key,
                    self.loop.now_us,
                    value=value,
                    precondition=Precondition("absent"),
                )
            elif roll < 0.9:
                version = client.versions.get(key, 0)
                if rng.random() < 0.2:
                    version += rng.randint(1, 3)
                op = Op(
                    op_id,
                    client.client_id,
                    "put",
                    key,
                    self.loop.now_us,
                    value=value,
                    precondition=Precondition("version", version),
                )
            else:
                pre = Precondition()
                if rng.random() < 0.3:
                    pre = Precondition("version", client.versions.get(key, 0))
                op = Op(op_id, client.client_id, "delete", key, self.loop.now_us, precondition=pre)
        self.history.append(op)
        self.counters.ops += 1
        client.op = op
        client.attempts = 0
        timeout_us = self.options.op_timeout_ms * 1000
        self.loop.after(timeout_us, "timeout", lambda: self._client_timeout(client, op.op_id))
        self._client_send(client)

    def _lease_op(self, client: _Client, op_id: int, value: bytes) -> Op:
        rng = self.workload_rng
        now = self.loop.now_us
        key = f"lease/k{rng.randrange(2)}"
        command: Command
        probe = False
        if client.lease != 0 and len(client.abandoned) < 3 and rng.random() < 0.15:
            client.abandoned.append(client.lease)  # stop keeping it alive; probe it later
            client.lease = 0
        if client.abandoned and rng.random() < 0.5:
            command = Put(key, value, lease=client.abandoned[0])
            probe = True
        elif client.lease == 0:
            command = LeaseGrant(ttl_ms=rng.choice([100, 300, 1000, 2000, 3000]))
        else:
            roll = rng.random()
            if roll < 0.45:
                command = LeaseKeepAlive(client.lease)
            elif roll < 0.85:
                command = Put(key, value, lease=client.lease)
            else:
                command = LeaseRevoke(client.lease)
                client.lease = 0
        kind = "put" if isinstance(command, Put) else "lease"
        return Op(
            op_id,
            client.client_id,
            kind,
            key,
            now,
            value=value,
            command=command,
            checked=False,
            probe=probe,
        )

    def _client_send(self, client: _Client) -> None:
        op = client.op
        assert op is not None
        client.attempts += 1
        request_id = self.next_request_id
        self.next_request_id += 1
        client.request_id = request_id
        target = client.target
        self.loop.after(
            self._client_delay_us(),
            f"request{target}",
            lambda: self._request_arrives(target, client, op, request_id),
        )

    def _request_arrives(self, node_id: int, client: _Client, op: Op, request_id: int) -> None:
        member = self.members[node_id]
        replica = member.replica
        if replica is None:
            return  # the client's timeout will tell
        if self._deferred(member, lambda: self._request_arrives(node_id, client, op, request_id)):
            return
        if op.kind == "get" and op.stale:
            self.counters.stale_reads += 1
            answer = replica.read_stale(request_id, GetQuery(op.key))
            self._reply(client, op, request_id, answer)
            return
        host = member.host
        assert host is not None
        token = _Request(client, op, request_id)
        now_us = self.loop.now_us
        refused: Failed | None
        if op.kind == "get":
            refused = host.submit_read(GetQuery(op.key), token, now_us)
        else:
            command: Command
            if op.command is not None:
                command = op.command
            elif op.kind == "put":
                command = Put(op.key, op.value, op.precondition)
            else:
                command = Delete(op.key, op.precondition)
            refused = host.submit_write(command, token, now_us)
        if refused is not None:
            self.counters.host_refused += 1
            self._reply(client, op, request_id, self._redirect(node_id, refused))
            return
        self._after_input(member)

    @staticmethod
    def _redirect(node_id: int, failed: Failed) -> tuple[str, int]:
        """A refusal (surely not applied) as the client sees it: try elsewhere."""
        if failed.code == ErrorCode.NOT_LEADER:
            return ("redirect", failed.leader)
        if failed.code == ErrorCode.OVERLOADED:
            return ("redirect", node_id)
        return ("redirect", 0)

    def _complete(self, member: _Member, token: _Request | _NemesisCall, outcome: object) -> None:
        """A host-loop completion: to the client that asked, or to the nemesis."""
        if isinstance(token, _NemesisCall):
            if token.change is not None:
                self._reconfigured(token.change, outcome)
            return
        answer: Completion | tuple[str, int]
        if isinstance(outcome, Failed):
            if outcome.code == ErrorCode.INDETERMINATE:
                answer = WriteIndeterminate(token.request_id, outcome.message)
            else:
                self.counters.host_refused += 1
                answer = self._redirect(member.node_id, outcome)
        elif isinstance(outcome, ReadCompleted):
            answer = outcome
        else:
            answer = WriteCompleted(token.request_id, 0, outcome)  # type: ignore[arg-type]
        self._reply(token.client, token.op, token.request_id, answer)

    def _reply(
        self,
        client: _Client,
        op: Op,
        request_id: int,
        answer: Completion | tuple[str, int],
    ) -> None:
        self.loop.after(
            self._client_delay_us(),
            f"reply{client.client_id}",
            lambda: self._client_reply(client, op, request_id, answer),
        )

    def _client_reply(
        self,
        client: _Client,
        op: Op,
        request_id: int,
        answer: Completion | tuple[str, int],
    ) -> None:
        if client.op is not op or client.request_id != request_id:
            return  # an answer to an attempt the client gave up on
        if isinstance(answer, tuple | ReadFailed):
            hint = answer[1] if isinstance(answer, tuple) else answer.leader_hint
            if client.attempts >= self.options.op_attempts_max:
                self._close(client, "failed")
                return
            if hint and hint in self.members:
                client.target = hint
                backoff_us = self.workload_rng.randint(1_000, 5_000)
            else:
                client.target = self.workload_rng.choice(self._started())
                backoff_us = self.workload_rng.randint(10_000, 50_000)
            self.loop.after(backoff_us, "retry", lambda: self._retry(client, op))
            return
        if isinstance(answer, WriteCompleted):
            op.write_result = answer.result
            if isinstance(answer.result, LeaseGranted) and isinstance(op.command, LeaseGrant):
                client.lease = answer.result.lease
            elif isinstance(answer.result, LeaseNotFound):
                if op.probe and isinstance(op.command, Put):
                    if op.command.lease in client.abandoned:
                        client.abandoned.remove(op.command.lease)
                else:
                    client.lease = 0
            if not op.checked:
                pass
            elif isinstance(answer.result, Written):
                client.versions[op.key] = answer.result.version if op.kind == "put" else 0
            elif isinstance(answer.result, PreconditionFailed):
                client.versions[op.key] = answer.result.current_version
            self._close(client, "ok")
            if client.probe:
                self.probe_done_us = self.loop.now_us
                self.loop.note("probe done")
                self._check_converged()
        elif isinstance(answer, WriteIndeterminate):
            self._close(client, "indeterminate")
        elif isinstance(answer, ReadCompleted):
            op.read_result = answer.kv
            client.versions[op.key] = answer.kv.version if answer.kv else 0
            self._close(client, "ok")

    def _retry(self, client: _Client, op: Op) -> None:
        if client.op is op:
            self._client_send(client)

    def _client_timeout(self, client: _Client, op_id: int) -> None:
        op = client.op
        if op is None or op.op_id != op_id:
            return
        # The target may be down, cut off or removed: try another member next.
        client.target = self.workload_rng.choice(self._started())
        self._close(client, "indeterminate" if op.is_write else "failed")

    def _close(self, client: _Client, status: str) -> None:
        op = client.op
        assert op is not None
        op.status = status
        if status == "ok":
            op.return_us = self.loop.now_us
            self.counters.ops_ok += 1
        elif status == "indeterminate":
            self.counters.ops_indeterminate += 1
        else:
            self.counters.ops_failed += 1
        client.op = None
        client.request_id = 0
        think_us = self.workload_rng.randint(0, 2_000 if client.reader else 20_000)
        if client.leasing and not client.abandoned and self.workload_rng.random() < 0.3:
            think_us = self.workload_rng.randint(50_000, 1_500_000)  # let leases run out
        self.loop.after(think_us, f"client{client.client_id}", lambda: self._client_next(client))

    def _finish_history(self) -> None:
        for client in self.clients:
            if client.op is not None:
                op = client.op
                op.status = "indeterminate" if op.is_write else "failed"
                client.op = None

    def _note_expiries(self, node: int, entries: list[Entry]) -> None:
        for entry in entries:
            if entry.kind != EntryKind.NORMAL or not entry.data:
                continue
            try:
                command = decode_request(entry.data).command
            except (msgspec.DecodeError, ValueError):
                continue
            if isinstance(command, LeaseExpire):
                for lease in command.leases:
                    self.expiry_decided_us.setdefault(lease, self.loop.now_us)
            elif isinstance(command, LeaseCheckpoint):
                self._checkpoint_persisted_us.setdefault(
                    (entry.index, entry.term), self.loop.now_us
                )

    def _note_checkpoints_applied(self, node: int, entries: list[Entry]) -> None:
        for entry in entries:
            key = (entry.index, entry.term)
            if key in self._checkpoint_persisted_us and key not in self._checkpoints_seen:
                self._checkpoints_seen.add(key)
                self._checkpoints_applied.append(
                    (self.loop.now_us, self._checkpoint_persisted_us[key])
                )

    def _checkpoint_staleness_us(self, change_us: int, since_us: int) -> int:
        """How old the newest checkpoint applied before ``change_us`` was (measured
        from its first persist); with none since ``since_us``, from ``since_us``."""
        measured = since_us
        for applied_us, persisted_us in self._checkpoints_applied:
            if applied_us > change_us:
                break
            measured = max(measured, min(persisted_us, change_us))
        return change_us - measured

    def _check_history(self) -> None:
        phantom = check_stale_reads(self.history)
        if phantom is not None:
            raise Violation(phantom)
        early = check_leases(self.history, slack_us=max(self.tick_us.values()))
        if early is not None:
            raise Violation(early)
        interval_us = LESSOR.checkpoint_interval_ms * 1000
        late = check_leases_late(
            self.history,
            self.presence.leaderless_us,
            self.presence.change_times,
            self._checkpoint_staleness_us,
            self.expiry_decided_us.get,
            drift=self.plan.clock_drift,
            # A decision is persisted one step after it is made; a step may wait
            # behind the one in flight.
            bound_us=interval_us
            + 2 * max(self.tick_us.values())
            + 2 * self.plan.fsync_us[1]
            + 100_000,
            per_change_us=300_000,
        )
        if late is not None:
            raise Violation(late)
        result = check_history(self.history)
        self.linearizability = result.outcome
        if result.outcome == "violation":
            raise Violation(f"linearizability (key {result.key!r}): {result.explanation}")


def run_metadata_sim(options: SimOptions) -> SimResult:
    """Run one seed; never raises for a finding (it is in the result)."""
    return MetadataSim(options).run()
