"""``HostLoop``: the loop between one ``MetadataReplica`` and the world, sans-IO.

Theory of operation
-------------------
The server's asyncio host (``runtime/host.py``) and the simulators
(``testing/sim/metadata.py``, and ``testing/sim/log.py`` for the metadata members
that hold the logs' chains) drive this object, so the simulator checks the
queueing, batching, persist-then-send ordering, outcomes and deadlines that
production runs.  It does no I/O, starts no thread and reads no clock: time comes
in as ``now_us`` (any monotonic microsecond clock), persistence goes out as a
``Job`` the driver executes, messages go out in ``Output.messages``.

Driving it (the whole contract)::

    loop.step(message) / loop.submit_write(...) / submit_read / submit_call
    out = loop.poll(now_us)            # whenever an input arrived or a tick is due
    while True:
        send(out.messages)             # 1. they never depend on a job not yet done
        deliver(out.completions)
        start(out.jobs)                # 2. RaftStorage.save / compact, in this order,
                                       #    after every job started before them
        if not out.more:
            break
        out = loop.poll(now_us)        # (after letting the sends leave, if it can)
    # when the oldest job started is durable (jobs finish in the order started):
    out = loop.job_done()              # 3. its messages_after_persist come out here;
                                       #    execute it as above (``more`` is set)
    loop.expire(now_us) -> completions # at least every tick, even while jobs run

Rules:

1. One owner.  Only the loop calls the replica's mutating methods.  Inputs wait
   in one bounded inbox (``queue_max``): a full inbox refuses a client request
   (``OVERLOADED``, surely not applied) and drops a peer message (Raft tolerates
   loss).  Inputs are fed whenever the driver polls, jobs in flight or not.
2. Batching.  ``poll`` ticks if a tick is due (before the inputs: rule 4),
   feeds up to ``batch_max`` inputs, handles the Ready the peer messages
   produced (on a leader: commits, applies and answers, with nothing to
   persist), then proposes the batch's writes in one ``propose_batch``: many
   writes, one Ready, one job.  Writes wait unproposed while
   ``persists_in_flight_max`` jobs are in flight, so batches grow with the load
   (group commit) while the disk is busy.
3. The pipeline (the Raft core's R12; the replica's rule 8).  Each Ready is
   cut in two halves, each done in hand-out order:

   a. ``messages`` leave at once (a leader's appends, pre-votes: they depend
      on nothing unpersisted).
   b. Persist half.  A Ready that changes entries, snapshot, term or vote is a
      ``Job``; up to ``persists_in_flight_max`` are in flight, started in
      order, and the driver reports them done in that order, each durable
      before ``job_done``.  At the bound no Ready that needs a job is taken
      (``RaftNode.has_unpersisted``); a Ready that needs none still is.  A
      Ready's ``messages_after_persist`` (votes, acknowledgements) leave only
      once its own job and every earlier one are done: one without a job of
      its own waits behind the jobs in flight (an acknowledgement names the
      last index, which they may still be writing).  Only the commit index in
      a hard state is never a job (``RaftStorage`` rule 4).
   c. Apply half (committed entries, confirmed reads, snapshot requests), in
      order, once its committed entries are durable on this node
      (``RaftNode.durable_index``) and no snapshot's job is in flight (a
      snapshot resets that index before it is durable, and is itself applied
      only once its job is done).  A leader commits only what it holds durably
      (R3), so a batch whose quorum answered is applied and answered while the
      next batch is being fsynced; a follower that learns a commit ahead of its
      own fsync waits for it.  After-persist messages let out in the same
      ``poll`` leave before an apply (``more`` is set: the driver may flush
      them first, so a follower's acknowledgement does not wait for its apply).
   d. A compaction snapshot from an apply is a job too, after those in flight;
      ``compacted`` is called when it is done.

   ``persists_in_flight_max = 1`` is the strict one-Ready-at-a-time order.
4. Time.  Ticks are due every ``tick_us`` of the driver's clock; ``poll``
   delivers at most ``tick_catch_up_max`` at once after a stall, except with
   lease reads, where a lease must never outlive real time
   (``ticks_to_deliver``).  The ticks are delivered before the inputs that
   waited meanwhile, so a read that waited through a stall is not served on a
   lease that ran out during it.
5. Outcomes, reported as ``(token, outcome)`` completions.  A write is answered
   with its applied ``Result``; a write whose leader was lost, whose deadline
   passed, or that was proposed when the loop was failed is ``INDETERMINATE``;
   a write refused before proposing (not leader, inbox full, dropped, stopping)
   is ``Failed`` with a code that says it surely did not happen.  A read that
   cannot be confirmed fails (safe to retry).
6. Deadlines.  Every client request carries one (``request_timeout_ms`` after
   its submission), kept in one deque in submission order; ``expire`` answers
   the requests past theirs and the loop ignores their later completions.  The
   driver calls it from its timer, not from the owner, so the bound holds even
   while a job is stuck on a slow disk.
7. Stop.  ``fail_all`` answers everything still waiting per rule 5.
8. Events.  The Raft core's transitions (elections, step-downs, leader
   changes, membership changes, the lease-read mode: ``RaftEvent``) come out
   in ``Output.events`` of the ``poll`` during which they happened; the driver
   logs and counts them.  Draining is one list check per poll.
9. Groups.  The driver may write the jobs queued behind a running one (up to
   ``persist_group_max``) together, with ``persist_group``: their writes in
   order and one sync at the end (``RaftStorage`` rule 7), then ``job_done``
   once per job, in order.  Nothing changes for the loop: each job is still
   reported only once durable, and in order; a deeper pipeline
   (``persists_in_flight_max`` above 2) then costs no extra fdatasyncs.  The
   server's writer thread and the simulator both run ``persist_group``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from catenary.api.messages import ErrorCode
from catenary.core.metadata.replica import (
    MetadataReplica,
    Query,
    ReadCompleted,
    ReadFailed,
    ReplicaOutput,
    WriteCompleted,
    WriteIndeterminate,
)
from catenary.core.metadata.types import Command, Result
from catenary.core.raft.types import (
    HardState,
    Message,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RaftEvent,
    Ready,
    Snapshot,
)

T = TypeVar("T")


class HostConfig(msgspec.Struct, frozen=True, kw_only=True):
    tick_ms: int = 50
    queue_max: int = 20_000
    batch_max: int = 4096
    request_timeout_ms: int = 10_000
    tick_catch_up_max: int = 3
    # Persistence jobs in flight at once (rule 3): 2 lets batch N+1 be proposed,
    # sent and queued for the disk while batch N is being fsynced (measured
    # slower where the nodes share a disk: docs/benchmarks.md); with 1, commits,
    # applies and reads still go on during the fsync.
    persists_in_flight_max: int = 1
    # Jobs queued behind a running one that the driver writes as one group with
    # one fdatasync (rule 9); 1 writes each job with its own.
    persist_group_max: int = 16


def ticks_to_deliver(due: int, catch_up_max: int, raft: RaftConfig) -> int:
    """How many of ``due`` elapsed tick intervals to hand the core at once.

    A burst after a long stall would mostly start needless elections, so it is
    capped.  With leader-lease reads on, though, the core measures its lease in
    ticks: dropping ticks would let a lease outlive real time, and a leader
    waking from a stall could serve a stale read while another leader already
    took writes.  Then at least an election timeout's worth is delivered, which
    runs out any lease (its window is shorter than an election timeout).
    """
    if raft.lease_reads:
        return min(due, max(catch_up_max, raft.election_timeout_ticks))
    return min(due, catch_up_max)


@dataclass(frozen=True, slots=True)
class Failed:
    """A request's outcome when it has no result.

    ``INDETERMINATE``: it may or may not have taken effect.  Any other code:
    it surely did not (``NOT_LEADER`` with the known leader, ``OVERLOADED``,
    ``UNAVAILABLE``).
    """

    code: ErrorCode
    message: str
    leader: int = 0


@dataclass(frozen=True, slots=True)
class Raised:
    """The outcome of a ``submit_call`` whose function raised."""

    error: Exception


@dataclass(slots=True)
class Job:
    """One persistence step: save ``ready``, or compact to ``snapshot``."""

    ready: Ready | None = None
    snapshot: Snapshot | None = None
    done: bool = False


class GroupStorage(Protocol):
    """What ``persist_group`` needs of the storage (``RaftStorage`` rule 7)."""

    def save(self, ready: Ready, *, sync: bool = True) -> None: ...

    def compact(self, index: int, snapshot: Snapshot) -> None: ...

    def flush(self) -> None: ...

    def abandon(self) -> None: ...


class PersistJob(Protocol):
    """A ``Job`` as the driver holds it (the simulator keeps its own record)."""

    @property
    def ready(self) -> Ready | None: ...

    @property
    def snapshot(self) -> Snapshot | None: ...


def persist_group(storage: GroupStorage, jobs: Sequence[PersistJob]) -> BaseException | None:
    """Run ``jobs`` in order with one sync at the end (rule 9); the error, if any.

    All of them are durable when it returns None; none may be reported done
    when it returns an error (the driver retries from the first one: saving a
    Ready again is idempotent, it replaces the entries it wrote)."""
    try:
        for job in jobs:
            if job.ready is not None:
                storage.save(job.ready, sync=False)
            else:
                assert job.snapshot is not None
                storage.compact(job.snapshot.meta.index, job.snapshot)
        storage.flush()
    except Exception as exc:
        storage.abandon()
        return exc
    return None


@dataclass(slots=True)
class _Stage:
    """A persist half not finished yet (rule 3b): a job, or a Ready whose
    after-persist messages wait behind the jobs before it."""

    ready: Ready | None
    job: Job | None


@dataclass(slots=True)
class Output(Generic[T]):
    messages: list[Message] = field(default_factory=list)
    completions: list[tuple[T, Any]] = field(default_factory=list)
    # Jobs to start, in order, after every job started before (rule 3b).
    jobs: list[Job] = field(default_factory=list)
    # Poll again: work is left (after-persist messages should leave before an
    # apply, or a full batch).
    more: bool = False
    applied: bool = False  # the applied state changed (index or snapshot)
    inputs: int = 0
    readies: int = 0
    proposed: int = 0  # the writes of the largest proposal (one Ready's batch)
    # The Readies whose apply half ran (in order), for a driver that checks them.
    advanced: list[Ready] = field(default_factory=list)
    # The Raft core's transitions during this poll (rule 8), oldest first.
    events: list[RaftEvent] = field(default_factory=list)

    @property
    def job(self) -> Job | None:
        """The last job to start, if any (a driver of one job at a time)."""
        return self.jobs[-1] if self.jobs else None


class _Write(Generic[T]):
    __slots__ = ("commands", "done", "remaining", "results", "single", "token")

    def __init__(self, token: T, commands: list[Command], single: bool) -> None:
        self.token = token
        self.commands = commands
        self.single = single
        self.results: list[Result | Failed | None] = [None] * len(commands)
        self.remaining = len(commands)
        self.done = False


class _Read(Generic[T]):
    __slots__ = ("done", "query", "token")

    def __init__(self, token: T, query: Query) -> None:
        self.token = token
        self.query = query
        self.done = False


class _Call(Generic[T]):
    __slots__ = ("done", "fn", "token")

    def __init__(self, token: T, fn: Callable[[MetadataReplica], Any]) -> None:
        self.token = token
        self.fn = fn
        self.done = False


_Request = _Write[Any] | _Read[Any] | _Call[Any]


class HostLoop(Generic[T]):
    """Owns a MetadataReplica for a driver (see the module rules)."""

    def __init__(
        self,
        replica: MetadataReplica,
        config: HostConfig,
        *,
        durable: HardState,
        now_us: int,
        tick_us: int | None = None,
        first_tick_us: int | None = None,
        token_done: Callable[[T], bool] | None = None,
    ) -> None:
        """``durable``: the hard state on disk.  ``tick_us`` overrides
        ``config.tick_ms`` (a simulated member's drifting clock); the first tick
        is due at ``first_tick_us`` (default: one interval after ``now_us``).
        ``token_done(token)`` tells a request whose requester went away (it is
        then not proposed and never answered)."""
        self.replica = replica
        self.config = config
        self._raft_config = replica.raft.config
        # The term and vote of the last job's hard state (durable, or soon).
        self._handed = (durable.term, durable.vote)
        self._tick_us = tick_us if tick_us is not None else config.tick_ms * 1000
        self.next_tick_us = first_tick_us if first_tick_us is not None else now_us + self._tick_us
        self._token_done = token_done
        self._timeout_us = config.request_timeout_ms * 1000
        self._inbox: deque[Any] = deque()
        self._deadlines: deque[tuple[int, _Request]] = deque()
        self._next_request_id = 1
        # Request id -> (write, slot) of the proposed writes.
        self._writes: dict[int, tuple[_Write[T], int]] = {}
        self._reads: dict[int, _Read[T]] = {}
        self._unproposed: list[_Write[T]] = []
        # Rule 3: the jobs started and not done, the persist halves not finished,
        # the apply halves not run -- each in hand-out order.
        self._jobs: deque[Job] = deque()
        self._stages: deque[_Stage] = deque()
        self._applies: deque[Ready] = deque()
        self._snapshots_in_flight = 0
        self._persists_max = max(1, config.persists_in_flight_max)
        self._stopped = False
        self.peer_messages_dropped = 0

    # ------------------------------------------------------------- inputs

    @property
    def job(self) -> Job | None:
        """The oldest persistence step in flight, if any."""
        return self._jobs[0] if self._jobs else None

    @property
    def jobs_in_flight(self) -> int:
        return len(self._jobs)

    @property
    def tick_us(self) -> int:
        """The tick interval on the driver's clock.  A driver whose clock changes
        rate (a simulated member's drift) sets it; the next tick stays due when it
        was, the ones after it follow the new interval."""
        return self._tick_us

    @tick_us.setter
    def tick_us(self, tick_us: int) -> None:
        assert tick_us > 0, tick_us
        self._tick_us = tick_us

    @property
    def has_input(self) -> bool:
        return bool(self._inbox) or bool(self._unproposed)

    def not_leader(self, hint: int) -> Failed:
        return Failed(
            ErrorCode.NOT_LEADER,
            f"this node is not the metadata leader (leader: {f'n{hint}' if hint else 'unknown'})",
            hint,
        )

    def _admit(self) -> Failed | None:
        if self._stopped:
            return Failed(ErrorCode.UNAVAILABLE, "the node is shutting down")
        if len(self._inbox) >= self.config.queue_max:
            return Failed(
                ErrorCode.OVERLOADED,
                f"the metadata host's input queue is full (limit {self.config.queue_max})",
            )
        return None

    def submit_write(self, command: Command, token: T, now_us: int) -> Failed | None:
        """Queue one write; its outcome is a ``Result`` or a ``Failed``.

        Returns the refusal instead when it is refused at once (surely not applied)."""
        if not self.replica.is_leader:
            return self.not_leader(self.replica.leader)
        refused = self._admit()
        if refused is not None:
            return refused
        write = _Write(token, [command], True)
        self._inbox.append(write)
        self._deadlines.append((now_us + self._timeout_us, write))
        return None

    def submit_writes(self, commands: list[Command], token: T, now_us: int) -> Failed | None:
        """Queue writes proposed together; the outcome is one ``Result`` or
        ``Failed`` (indeterminate) per command in order, or one ``Failed`` for all
        when none was proposed or the deadline passed first."""
        if not self.replica.is_leader:
            return self.not_leader(self.replica.leader)
        refused = self._admit()
        if refused is not None:
            return refused
        write = _Write(token, commands, False)
        self._inbox.append(write)
        self._deadlines.append((now_us + self._timeout_us, write))
        return None

    def submit_read(self, query: Query, token: T, now_us: int) -> Failed | None:
        """Queue a linearizable read; its outcome is ``ReadCompleted`` or ``Failed``."""
        if not self.replica.is_leader:
            return self.not_leader(self.replica.leader)
        refused = self._admit()
        if refused is not None:
            return refused
        read = _Read(token, query)
        self._inbox.append(read)
        self._deadlines.append((now_us + self._timeout_us, read))
        return None

    def submit_call(self, fn: Callable[[MetadataReplica], Any], token: T) -> Failed | None:
        """Queue ``fn(replica)`` (membership changes, transfers); its outcome is
        what it returned, or ``Raised``."""
        refused = self._admit()
        if refused is not None:
            return refused
        self._inbox.append(_Call(token, fn))
        return None

    def step(self, message: Message) -> bool:
        """A peer message arrived; False when it was dropped (inbox full)."""
        if self._stopped:
            return False
        if len(self._inbox) >= self.config.queue_max:
            self.peer_messages_dropped += 1
            return False
        self._inbox.append(message)
        return True

    # ------------------------------------------------------------ the owner

    def poll(self, now_us: int) -> Output[T]:
        """Do what can be done without the world (see the module contract)."""
        out: Output[T] = Output()
        if self._stopped:
            return out
        replica = self.replica
        raft = replica.raft
        applies = self._applies
        fed = False
        # After-persist messages let out in this poll, to leave before an apply.
        released = False
        while True:
            if applies and self._appliable(applies[0]):
                if released:
                    out.more = True
                    break
                self._apply(applies.popleft(), out)
                continue
            room = len(self._jobs) < self._persists_max
            # (Completions alone -- writes a step-down made indeterminate -- come
            # out with the next apply, or with an empty Ready when none waits.)
            if (raft.has_ready() or (not applies and replica.has_ready())) and (
                room or not raft.has_unpersisted()
            ):
                ready = replica.ready()
                out.readies += 1
                out.messages.extend(self._messages_now(ready))
                after = self._messages_after(ready)
                if self._must_persist(ready):
                    self._start(_Stage(ready, Job(ready=ready)), out)
                elif after:
                    if self._behind_jobs():
                        self._stages.append(_Stage(ready, None))  # rule 3b
                    else:
                        out.messages.extend(after)
                        released = True
                applies.append(ready)
                continue
            if self._unproposed and room:
                writes, self._unproposed = self._unproposed, []
                self._propose(writes, out)
                continue
            if fed:
                out.more = bool(self._inbox)
                break
            fed = True
            if not self._take_batch(now_us, out):
                break
        if raft.events:
            out.events = raft.take_events()
        return out

    def job_done(self) -> Output[T]:
        """The oldest job in flight is durable; returns the after-persist messages
        it released (rule 3b).

        Poll next (``more`` is set), after letting the messages leave if possible."""
        assert self._jobs, "no job in flight"
        self._jobs.popleft().done = True
        out: Output[T] = Output(more=True)
        stages = self._stages
        replica = self.replica
        while stages and (stages[0].job is None or stages[0].job.done):
            stage = stages.popleft()
            ready = stage.ready
            if ready is not None:
                out.messages.extend(self._messages_after(ready))
                if stage.job is not None:
                    replica.persisted(ready)
                    if ready.snapshot is not None:
                        self._snapshots_in_flight -= 1
            else:
                assert stage.job is not None and stage.job.snapshot is not None
                replica.compacted(stage.job.snapshot)
        return out

    def expire(self, now_us: int) -> list[tuple[T, Any]]:
        """Answer the requests whose deadline passed (rule 6)."""
        deadlines = self._deadlines
        completions: list[tuple[T, Any]] = []
        token_done = self._token_done
        while deadlines:
            deadline_us, request = deadlines[0]
            if not request.done and not (token_done is not None and token_done(request.token)):
                if deadline_us > now_us:
                    break
                request.done = True
                timeout_ms = self.config.request_timeout_ms
                if type(request) is _Write:
                    outcome = Failed(
                        ErrorCode.INDETERMINATE,
                        f"the write did not complete within {timeout_ms} ms; "
                        "it may or may not have been applied",
                    )
                else:
                    outcome = Failed(
                        ErrorCode.UNAVAILABLE,
                        f"the read was not confirmed within {timeout_ms} ms",
                    )
                completions.append((request.token, outcome))
            deadlines.popleft()
        return completions

    def fail_all(self, reason: str) -> list[tuple[T, Any]]:
        """Stop: answer everything still waiting (rules 5 and 7)."""
        self._stopped = True
        completions: list[tuple[T, Any]] = []
        gone = Failed(ErrorCode.UNAVAILABLE, reason)
        maybe = Failed(
            ErrorCode.INDETERMINATE, f"{reason}; the write may or may not have been applied"
        )
        never: list[_Request] = [r for r in self._inbox if type(r) in (_Write, _Read, _Call)]
        never += self._unproposed
        never += self._reads.values()
        for request in never:
            if not request.done:
                request.done = True
                completions.append((request.token, gone))
        for write, _slot in self._writes.values():
            if not write.done:
                write.done = True
                completions.append((write.token, maybe))
        self._inbox.clear()
        self._unproposed = []
        self._reads.clear()
        self._writes.clear()
        self._deadlines.clear()
        return completions

    # ------------------------------------------------------------ internals

    @staticmethod
    def _messages_now(ready: Ready) -> list[Message]:
        """What may leave before the Ready is persisted (rule 3)."""
        return ready.messages

    @staticmethod
    def _messages_after(ready: Ready) -> list[Message]:
        """What may leave only once the Ready is durable (rule 3)."""
        return ready.messages_after_persist

    def _must_persist(self, ready: Ready) -> bool:
        if ready.entries or ready.snapshot is not None:
            return True
        hard_state = ready.hard_state
        if hard_state is None:
            return False
        # The commit index need not be durable (RaftStorage rule 4).
        return (hard_state.term, hard_state.vote) != self._handed

    def _start(self, stage: _Stage, out: Output[T]) -> None:
        job = stage.job
        assert job is not None
        ready = job.ready
        if ready is not None:
            if ready.hard_state is not None:
                self._handed = (ready.hard_state.term, ready.hard_state.vote)
            if ready.snapshot is not None:
                self._snapshots_in_flight += 1
        self._jobs.append(job)
        self._stages.append(stage)
        out.jobs.append(job)

    def _behind_jobs(self) -> bool:
        """Rule 3b: after-persist messages of a Ready without a job of its own
        wait for the jobs in flight."""
        return bool(self._stages)

    def _appliable(self, ready: Ready) -> bool:
        """Rule 3c: the apply half may run now."""
        if self._snapshots_in_flight:
            return False
        committed = ready.committed
        return not committed or committed[-1].index <= self.replica.raft.durable_index

    def _take_batch(self, now_us: int, out: Output[T]) -> bool:
        # Time first: inputs that waited through a stall (a slow disk, a paused
        # process) are judged by a replica that knows how long it was, so a
        # read is never released on a leader lease that ran out meanwhile.
        ticked = self._maybe_tick(now_us)
        inbox = self._inbox
        replica = self.replica
        token_done = self._token_done
        taken = 0
        batch_max = self.config.batch_max
        writes: list[_Write[T]] = []
        while inbox and taken < batch_max:
            item = inbox.popleft()
            taken += 1
            kind = type(item)
            if kind is _Write:
                if not item.done and not (token_done is not None and token_done(item.token)):
                    writes.append(item)
            elif kind is _Read:
                if not item.done and not (token_done is not None and token_done(item.token)):
                    self._feed_read(item, out)
            elif kind is _Call:
                if not (token_done is not None and token_done(item.token)):
                    item.done = True
                    try:
                        value = item.fn(replica)
                    except Exception as exc:
                        value = Raised(exc)
                    out.completions.append((item.token, value))
            else:
                replica.step(item)
        out.inputs += taken
        if writes:
            self._unproposed += writes
        return taken > 0 or ticked

    def _maybe_tick(self, now_us: int) -> bool:
        if now_us < self.next_tick_us:
            return False
        interval = self._tick_us
        due = (now_us - self.next_tick_us) // interval + 1
        now_ms = now_us // 1000
        tick = self.replica.tick
        for _ in range(ticks_to_deliver(due, self.config.tick_catch_up_max, self._raft_config)):
            tick(now_ms)
        self.next_tick_us += due * interval
        return True

    def _feed_read(self, read: _Read[T], out: Output[T]) -> None:
        request_id = self._next_request_id
        self._next_request_id += 1
        try:
            self.replica.read(request_id, read.query)
        except NotLeader as exc:
            read.done = True
            out.completions.append((read.token, self.not_leader(exc.leader_hint)))
        except ProposalDropped as exc:
            read.done = True
            out.completions.append(
                (read.token, Failed(ErrorCode.OVERLOADED, f"read not accepted: {exc}"))
            )
        else:
            self._reads[request_id] = read

    def _propose(self, writes: list[_Write[T]], out: Output[T]) -> None:
        token_done = self._token_done
        # (A request may have ended while the Ready before its proposal was
        # persisted: its deadline passed, or its requester went away.)
        writes = [
            w for w in writes if not w.done and not (token_done is not None and token_done(w.token))
        ]
        if not writes:
            return
        first_id = self._next_request_id
        requests: list[tuple[int, Command]] = []
        for w in writes:
            for command in w.commands:
                requests.append((first_id + len(requests), command))
        self._next_request_id += len(requests)
        out.proposed = max(out.proposed, len(requests))
        try:
            self.replica.propose_batch(requests)
        except NotLeader as exc:
            refused = self.not_leader(exc.leader_hint)
        except ProposalDropped as exc:
            # Not proposed at all: the client may retry safely.
            refused = Failed(ErrorCode.OVERLOADED, f"write not accepted now: {exc}")
        else:
            request_id = first_id
            table = self._writes
            for w in writes:
                for slot in range(len(w.commands)):
                    table[request_id] = (w, slot)
                    request_id += 1
            return
        for w in writes:
            w.done = True
            out.completions.append((w.token, refused))

    def _apply(self, ready: Ready, out: Output[T]) -> None:
        result: ReplicaOutput = self.replica.apply(ready)
        out.advanced.append(ready)
        if ready.committed or ready.snapshot is not None:
            out.applied = True
        if result.completions:
            self._complete(result, out)
        if result.snapshot is not None:
            self._start(_Stage(None, Job(snapshot=result.snapshot)), out)

    def _complete(self, result: ReplicaOutput, out: Output[T]) -> None:
        completions = out.completions
        for completion in result.completions:
            kind = type(completion)
            if kind is WriteCompleted:
                slot = self._writes.pop(completion.request_id, None)
                if slot is not None:
                    self._fill(slot[0], slot[1], completion.result, completions)  # type: ignore[union-attr]
            elif kind is WriteIndeterminate:
                slot = self._writes.pop(completion.request_id, None)
                if slot is not None:
                    leader = self.replica.leader
                    maybe = Failed(
                        ErrorCode.INDETERMINATE,
                        f"the write may or may not have been applied: {completion.reason}",  # type: ignore[union-attr]
                        leader,
                    )
                    self._fill(slot[0], slot[1], maybe, completions)
            elif kind is ReadCompleted:
                read = self._reads.pop(completion.request_id, None)
                if read is not None and not read.done:
                    read.done = True
                    completions.append((read.token, completion))
            elif kind is ReadFailed:
                read = self._reads.pop(completion.request_id, None)
                if read is not None and not read.done:
                    read.done = True
                    hint = completion.leader_hint  # type: ignore[union-attr]
                    completions.append((read.token, self.not_leader(hint)))

    @staticmethod
    def _fill(
        write: _Write[T],
        slot: int,
        outcome: Result | Failed,
        completions: list[tuple[T, Any]],
    ) -> None:
        if write.done or write.results[slot] is not None:
            return
        if write.single:
            write.done = True
            completions.append((write.token, outcome))
            return
        write.results[slot] = outcome
        write.remaining -= 1
        if write.remaining == 0:
            write.done = True
            completions.append((write.token, write.results))
