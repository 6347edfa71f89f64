"""One member of the replicated metadata service: Raft + state machine + lessor + pending ops.

Theory of operation
-------------------
``MetadataReplica`` is sans-IO: it never touches a disk, a socket or a clock.  The
host (the server's asyncio task, or the simulator) feeds it inputs and executes
its outputs.  The same object runs in both, so what the simulator checks is what
the server runs.

Inputs: ``tick(now_ms)`` every tick interval, ``step(message)`` for each Raft
message received, ``propose``/``propose_batch`` for client writes, ``read`` for
linearizable reads and ``read_stale`` for stale ones.

Host order (the contract; break it and durability or linearizability is lost)::

    while replica.has_ready():
        ready = replica.ready()                 # a raft Ready
        send(ready.messages)                    # 1. independent of this Ready's persistence
        storage.save(ready)                     # 2. snapshot, entries, hard state; fsync
        send(ready.messages_after_persist)      # 3. only once 2 is durable
        out = replica.advance(ready)            # 4. applies committed entries, serves reads
        if out.snapshot is not None:            # 5. a compaction snapshot to persist
            storage.compact(out.snapshot.meta.index, out.snapshot)
            replica.compacted(out.snapshot)     #    only after it is durable
        deliver(out.completions)                # 6. answers to clients

``has_ready()`` is also true when only completions wait (e.g. writes made
indeterminate by a step-down during ``tick``/``step``); ``ready()`` then returns
an empty Ready, which needs no persistence.  A host may skip ``save`` for a
Ready whose hard state changed only in its commit index (``RaftStorage`` rule 4).

Rules:

1. A write is answered with its ``Result`` only when its entry is applied and
   the applied entry is the one this member proposed (same request id, same
   term).  A pending write whose entry was overwritten, or whose leader lost
   leadership (step-down or term change) before the entry applied, completes
   as ``WriteIndeterminate``: it may or may not have taken effect.  It is never
   reported as a failure.
2. A linearizable read asks Raft for a ReadIndex; it is served from the applied
   state once ``applied_index >= read_index``.  A read whose ReadIndex was not
   yet confirmed when leadership was lost completes as ``ReadFailed`` (safe to
   retry: a read has no effect).  A confirmed read is still served once applied,
   even on a former leader: its index was confirmed by a quorum while it led.
3. Stale reads are answered at once from the applied state with how many known
   committed entries are not yet applied (``behind``).
4. Entries are applied in index order exactly once; an installed snapshot
   replaces the state machine before the committed entries of the same Ready.
5. Lease expiry is decided by the leader's ``Lessor`` from ``now_ms`` and proposed
   as ``LeaseExpire``; the leader also proposes the lessor's ``LeaseCheckpoint``
   (every ``LessorConfig.checkpoint_interval_ms``) so a new leader resumes
   deadlines where they were.  Every applied NORMAL entry is shown to the
   lessor.  Proposals made by the replica itself carry request id 0 and answer
   no one.
6. When Raft asks for a snapshot (``Ready.want_snapshot``), ``advance`` produces
   one at the applied index (term and membership as of that index) and hands it
   to the host; at most one is outstanding until ``compacted`` is called.
7. Every queue is bounded: pending writes by ``max_pending_writes``, pending
   reads by ``max_pending_reads`` (beyond: ``ProposalDropped``).
8. Pipelining (the Raft core's R12): a host may keep several Readies in flight.
   It reports each Ready's persist half with ``persisted`` (in hand-out order,
   once durable; its ``messages_after_persist`` leave only then) and its apply
   half with ``apply`` (in hand-out order, its committed entries durable locally:
   ``raft.durable_index`` reached them; a snapshot once its Ready is persisted).
   ``advance`` is both, for a host that does one Ready at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random

import msgspec

from catenary.core.metadata.lessor import Lessor, LessorConfig
from catenary.core.metadata.state import MetadataConfig, MetadataStateMachine
from catenary.core.metadata.types import (
    Command,
    KeyValue,
    Request,
    Result,
    encode_request,
)
from catenary.core.raft.node import RaftNode, RaftStatus, apply_conf_change, decode_conf_change
from catenary.core.raft.types import (
    ConfChange,
    Entry,
    EntryKind,
    HardState,
    Membership,
    Message,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    Ready,
    Snapshot,
    SnapshotMeta,
)

# ------------------------------------------------------------------ queries


class GetQuery(msgspec.Struct, frozen=True):
    key: str


class ListQuery(msgspec.Struct, frozen=True):
    prefix: str
    limit: int = 0  # 0 = no limit


class MultiGetQuery(msgspec.Struct, frozen=True):
    """Several keys read at one point: one ReadIndex confirmation for all of them."""

    keys: tuple[str, ...]


Query = GetQuery | ListQuery | MultiGetQuery


# -------------------------------------------------------------- completions


class WriteCompleted(msgspec.Struct, frozen=True):
    request_id: int
    index: int  # the Raft index the write was applied at
    result: Result


class WriteIndeterminate(msgspec.Struct, frozen=True):
    """The write may or may not have been applied: its leader lost track of it."""

    request_id: int
    reason: str


class ReadCompleted(msgspec.Struct, frozen=True):
    request_id: int
    kv: KeyValue | None  # for a GetQuery
    kvs: tuple[KeyValue, ...]  # for a ListQuery
    more: bool  # a ListQuery truncated by its limit
    revision: int  # applied revision the answer was taken at
    behind: int = 0  # stale reads: committed entries known but not applied yet
    values: tuple[KeyValue | None, ...] = ()  # for a MultiGetQuery, one per key


class ReadFailed(msgspec.Struct, frozen=True):
    """The read was not served (leadership lost before confirmation); safe to retry."""

    request_id: int
    leader_hint: int
    reason: str


Completion = WriteCompleted | WriteIndeterminate | ReadCompleted | ReadFailed


class ReplicaOutput(msgspec.Struct):
    """What ``advance`` hands back to the host."""

    completions: list[Completion] = msgspec.field(default_factory=list)
    # A compaction snapshot the host must persist (storage.compact) and then
    # acknowledge with ``compacted``.
    snapshot: Snapshot | None = None


class ReplicaConfig(msgspec.Struct, frozen=True, kw_only=True):
    max_pending_writes: int = 10_000
    max_pending_reads: int = 10_000
    lessor: LessorConfig = msgspec.field(default_factory=LessorConfig)

    def __post_init__(self) -> None:
        if self.max_pending_writes < 1 or self.max_pending_reads < 1:
            raise ValueError("max_pending_writes and max_pending_reads must be >= 1")


class _PendingWrite(msgspec.Struct):
    request_id: int
    term: int


class _PendingRead(msgspec.Struct):
    request_id: int
    query: Query


class MetadataReplica:
    """A RaftNode, a MetadataStateMachine, a Lessor and the clients' pending operations."""

    def __init__(
        self,
        node_id: int,
        raft_config: RaftConfig,
        rng: Random,
        *,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
        initial_membership: Membership | None = None,
        config: ReplicaConfig | None = None,
        state_config: MetadataConfig | None = None,
        now_ms: int = 0,
    ) -> None:
        self.config = config or ReplicaConfig()
        self._state_config = state_config
        self.raft = RaftNode(
            node_id,
            raft_config,
            rng,
            hard_state=hard_state or HardState(),
            snapshot=snapshot,
            entries=entries,
            initial_membership=initial_membership,
        )
        if snapshot is not None:
            self.state = MetadataStateMachine.restore(snapshot.data, state_config)
            self._applied_term = snapshot.meta.term
            self._applied_membership = snapshot.meta.membership
        else:
            self.state = MetadataStateMachine(state_config)
            self._applied_term = 0
            # A bootstrapping Raft node writes its initial membership as CONFIG
            # entries, which reach _apply like any other.
            self._applied_membership = Membership()
        self.lessor = Lessor(self.config.lessor)
        self._now_ms = now_ms
        self._pending_writes: dict[int, _PendingWrite] = {}  # by Raft index
        self._unconfirmed_reads: dict[int, _PendingRead] = {}  # by ReadIndex ctx
        self._confirmed_reads: list[tuple[int, int, _PendingRead]] = []  # (index, ctx, read)
        self._next_ctx = 1
        self._completions: list[Completion] = []
        self._snapshot_outstanding = False
        self._leading_term = 0  # term in which this member leads (0 = not leading)
        self._observe_role()

    # ------------------------------------------------------------ properties

    @property
    def node_id(self) -> int:
        return self.raft.node_id

    @property
    def is_leader(self) -> bool:
        return self.raft.role == "leader"

    @property
    def leader(self) -> int:
        return self.raft.leader

    @property
    def term(self) -> int:
        return self.raft.term

    @property
    def now_ms(self) -> int:
        return self._now_ms

    @property
    def pending_reads(self) -> int:
        return len(self._unconfirmed_reads) + len(self._confirmed_reads)

    # ---------------------------------------------------------------- inputs

    def tick(self, now_ms: int) -> None:
        """One Raft tick; as leader, propose lease expiries and checkpoints."""
        assert now_ms >= self._now_ms, "time never goes back"
        self._now_ms = now_ms
        self.raft.tick()
        self._observe_role()
        if self._leading_term:
            self._lease_duties()

    def step(self, message: Message) -> None:
        self.raft.step(message)
        self._observe_role()

    def propose(self, request_id: int, command: Command) -> int:
        """Propose a client write; its answer arrives as a completion. Returns the index.

        Raises ``NotLeader`` (with a hint) or ``ProposalDropped`` (bound reached).
        """
        self._admit_writes(1)
        index = self.raft.propose(encode_request(Request(request_id, command)))
        self._pending_writes[index] = _PendingWrite(request_id, self.raft.term)
        return index

    def propose_batch(self, requests: Sequence[tuple[int, Command]]) -> int:
        """Propose many writes as consecutive entries; returns the first index."""
        if not requests:
            raise ValueError("empty batch")
        self._admit_writes(len(requests))
        first = self.raft.propose_batch(
            [encode_request(Request(rid, command)) for rid, command in requests]
        )
        term = self.raft.term
        for offset, (rid, _command) in enumerate(requests):
            self._pending_writes[first + offset] = _PendingWrite(rid, term)
        return first

    def read(self, request_id: int, query: Query) -> None:
        """A linearizable read (ReadIndex); its answer arrives as a completion.

        Raises ``NotLeader`` or ``ProposalDropped`` (bound reached).
        """
        if self.pending_reads >= self.config.max_pending_reads:
            raise ProposalDropped("too many pending reads")
        if not self.is_leader:
            raise NotLeader(self.raft.leader)
        ctx = self._next_ctx
        self.raft.read_index(ctx)
        self._next_ctx += 1
        self._unconfirmed_reads[ctx] = _PendingRead(request_id, query)

    def read_stale(self, request_id: int, query: Query) -> ReadCompleted:
        """Answer at once from this member's applied state (may be behind)."""
        answer = self._answer(_PendingRead(request_id, query))
        behind = max(0, self.raft.commit_index - self.state.applied_index)
        return ReadCompleted(
            request_id,
            answer.kv,
            answer.kvs,
            answer.more,
            answer.revision,
            behind=behind,
            values=answer.values,
        )

    def propose_conf_change(self, change: ConfChange) -> int:
        index = self.raft.propose_conf_change(change)
        self._observe_role()
        return index

    def transfer_leadership(self, target: int) -> None:
        self.raft.transfer_leadership(target)
        self._observe_role()

    # ---------------------------------------------------------------- output

    def has_ready(self) -> bool:
        return bool(self._completions) or self.raft.has_ready()

    def ready(self) -> Ready:
        """The next Raft Ready (possibly empty when only completions are waiting).

        It may be taken before the Readies handed out earlier are done (rule 8)."""
        if self.raft.has_ready():
            return self.raft.ready()
        return Ready()

    def advance(self, ready: Ready) -> ReplicaOutput:
        """The host persisted ``ready``: apply, serve reads, hand back completions."""
        self.persisted(ready)
        return self.apply(ready)

    def persisted(self, ready: Ready) -> None:
        """``ready``'s persist half is durable, and every earlier one's (rule 8)."""
        self.raft.advance_persisted(ready)

    def apply(self, ready: Ready) -> ReplicaOutput:
        """Apply ``ready``'s apply half, serve reads, hand back completions (rule 8:
        its committed entries are durable locally, an installed snapshot too)."""
        if ready.snapshot is not None:
            self._install(ready.snapshot)
        for entry in ready.committed:
            self._apply(entry)
        for read_state in ready.reads:
            read = self._unconfirmed_reads.pop(read_state.ctx, None)
            if read is not None:
                self._confirmed_reads.append((read_state.index, read_state.ctx, read))
        self._serve_confirmed_reads()
        want_snapshot = ready.want_snapshot
        self.raft.advance_applied(ready)
        self._observe_role()
        out = ReplicaOutput(completions=self._completions)
        self._completions = []
        if want_snapshot and not self._snapshot_outstanding and self.state.applied_index > 0:
            out.snapshot = self._make_snapshot()
            self._snapshot_outstanding = True
        return out

    def compacted(self, snapshot: Snapshot) -> None:
        """The host made ``snapshot`` durable: let Raft drop the log up to it."""
        self._snapshot_outstanding = False
        self.raft.compact(snapshot.meta.index, snapshot.data)

    def status(self) -> RaftStatus:
        return self.raft.status()

    # ------------------------------------------------------------- internals

    def _admit_writes(self, count: int) -> None:
        if not self.is_leader:
            raise NotLeader(self.raft.leader)
        if len(self._pending_writes) + count > self.config.max_pending_writes:
            raise ProposalDropped("too many pending writes")

    def _observe_role(self) -> None:
        """Notice a gain or loss of leadership (rule 1, 2 and 5)."""
        leading = self.raft.term if self.raft.role == "leader" else 0
        if leading == self._leading_term:
            return
        if self._leading_term:
            self._lost_leadership()
        self._leading_term = leading
        if leading:
            self.lessor.become_leader(self.state, self._now_ms)

    def _lost_leadership(self) -> None:
        hint = self.raft.leader
        for index in sorted(self._pending_writes):
            pending = self._pending_writes[index]
            self._completions.append(
                WriteIndeterminate(pending.request_id, f"leadership lost before index {index}")
            )
        self._pending_writes.clear()
        for ctx in sorted(self._unconfirmed_reads):
            read = self._unconfirmed_reads[ctx]
            self._completions.append(
                ReadFailed(read.request_id, hint, "leadership lost before the read")
            )
        self._unconfirmed_reads.clear()
        self.lessor.step_down()

    def _lease_duties(self) -> None:
        expire = self.lessor.expired(self._now_ms)
        if expire is not None and not self._propose_internal(expire):
            # Refused (a transfer in flight, no entry of this term committed yet):
            # nothing is in flight, so the next tick decides again.
            self.lessor.expiry_refused(expire.leases)
        checkpoint = self.lessor.checkpoint(self._now_ms)
        if checkpoint is not None:
            self._propose_internal(checkpoint)

    def _propose_internal(self, command: Command) -> bool:
        """Propose a leader duty; False when refused (the caller retries later)."""
        try:
            self.raft.propose(encode_request(Request(0, command)))
        except (NotLeader, ProposalDropped):
            return False
        return True

    def _install(self, snapshot: Snapshot) -> None:
        self.state = MetadataStateMachine.restore(snapshot.data, self._state_config)
        self._applied_term = snapshot.meta.term
        self._applied_membership = snapshot.meta.membership
        if self._leading_term:
            self.lessor.become_leader(self.state, self._now_ms)

    def _apply(self, entry: Entry) -> None:
        if entry.index <= self.state.applied_index:
            return  # already in the installed snapshot
        assert entry.index == self.state.applied_index + 1, (entry.index, self.state.applied_index)
        pending = self._pending_writes.pop(entry.index, None)
        if entry.kind == EntryKind.NORMAL:
            request_id, result = self.state.apply(entry.index, entry.data)
            self.lessor.observe(entry.index, self.state.last_command, result, self._now_ms)
        else:
            self.state.apply_noop(entry.index)
            request_id, result = 0, None
            if entry.kind == EntryKind.CONFIG:
                try:
                    change = decode_conf_change(entry.data)
                except ValueError:
                    pass  # the Raft core ignores such an entry too; nothing to track
                else:
                    self._applied_membership = apply_conf_change(self._applied_membership, change)
        self._applied_term = entry.term
        if pending is None:
            return
        if result is not None and pending.request_id == request_id and pending.term == entry.term:
            self._completions.append(WriteCompleted(request_id, entry.index, result))
        else:
            self._completions.append(
                WriteIndeterminate(pending.request_id, f"entry {entry.index} was overwritten")
            )

    def _serve_confirmed_reads(self) -> None:
        if not self._confirmed_reads:
            return
        applied = self.state.applied_index
        keep: list[tuple[int, int, _PendingRead]] = []
        for index, ctx, read in sorted(self._confirmed_reads, key=lambda r: (r[0], r[1])):
            if index <= applied:
                self._completions.append(self._answer(read))
            else:
                keep.append((index, ctx, read))
        self._confirmed_reads = keep

    def _answer(self, read: _PendingRead) -> ReadCompleted:
        query = read.query
        revision = self.state.revision
        if isinstance(query, GetQuery):
            return ReadCompleted(read.request_id, self.state.get(query.key), (), False, revision)
        if isinstance(query, MultiGetQuery):
            get = self.state.get
            values = tuple([get(key) for key in query.keys])
            return ReadCompleted(read.request_id, None, (), False, revision, values=values)
        kvs, more = self.state.list(query.prefix, query.limit)
        return ReadCompleted(read.request_id, None, kvs, more, revision)

    def _make_snapshot(self) -> Snapshot:
        meta = SnapshotMeta(
            index=self.state.applied_index,
            term=self._applied_term,
            membership=self._applied_membership,
        )
        return Snapshot(meta=meta, data=self.state.snapshot())
