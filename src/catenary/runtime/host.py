"""``MetadataHost``: the asyncio task that owns one ``MetadataReplica``.

Theory of operation
-------------------
1. One owner.  Only the host's task calls the replica's mutating methods
   (``tick``, ``step``, ``propose*``, ``read``, ``ready``/``advance``, membership
   and transfer calls).  Everyone else — client requests, peer messages, admin
   actions — puts an input on one bounded queue (``queue_max``) and, if it
   wants an answer, awaits a future.  A full queue answers ``OVERLOADED`` to a
   client (the request surely did not happen) and drops a peer message (Raft
   tolerates loss).  Read-only looks at the replica (stale reads, status) are
   plain synchronous calls: the loop is single-threaded and the replica is
   only ever changed by synchronous calls of the owner, so a reader sees a
   consistent state.
2. Batching.  The owner waits for one input, then drains up to ``batch_max``
   more without waiting, feeds them all, ticks if a tick is due, handles the
   Ready that the peer messages produced (on a leader: commits, applies and
   answers, with nothing to fsync), then proposes the batch's writes in one
   ``propose_batch`` and handles their Ready: many writes, one Ready, one write
   and one fsync.  Inputs that arrive while
   a Ready is being persisted wait for the next batch, so the batch grows with
   the load (group commit).
3. Ready order (the replica's documented host order): send ``messages``;
   persist (``RaftStorage.save``) in the single writer thread, awaiting it —
   the event loop never blocks on fsync; the job is handed over only after the
   transport flushed the messages, so a leader's appends travel while it
   fsyncs; send ``messages_after_persist`` (and, when there are entries to
   apply, yield once so they leave before the apply); ``advance`` (applies
   committed entries, serves reads); persist a compaction snapshot if one was
   produced, then ``compacted``; deliver completions.
4. Time.  A ticker wakes the owner every ``tick_ms``; the owner calls
   ``replica.tick(now_ms)`` once per elapsed tick interval on the monotonic
   clock, at most ``tick_catch_up_max`` at once (after a long stall, a burst
   of ticks would only start needless elections) — except with lease reads,
   where a lease must never outlive real time (``ticks_to_deliver``).
5. Outcomes.  A write is answered with its result when applied; a write whose
   leader was lost (or that timed out, or was in flight at shutdown) is
   ``INDETERMINATE``; a write refused before proposing (not leader, queue
   full, shutting down) surely did not happen and says so.  A read that
   cannot be confirmed is ``UNAVAILABLE`` (safe to retry).
6. Stop.  ``stop()`` lets the owner finish the Ready in hand, then fails what
   is still waiting (per rule 5), stops the writer thread and closes storage.
7. Timeouts.  A client write or read carries a deadline (``request_timeout_ms``)
   kept in one deque in request order; the ticker (not the owner, which may be
   stuck on a slow disk) fails the futures whose deadline passed, so the bound
   holds to within ``tick_ms`` without a timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any

import msgspec

from catenary.api.errors import ServiceError
from catenary.api.messages import ErrorCode
from catenary.core.metadata.replica import (
    Completion,
    MetadataReplica,
    Query,
    ReadCompleted,
    ReadFailed,
    WriteCompleted,
    WriteIndeterminate,
)
from catenary.core.metadata.types import Command, Compacted, Result, WatchBatch
from catenary.core.raft.types import (
    ConfChange,
    Message,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    Ready,
    Snapshot,
)
from catenary.persist.raft_storage import RaftStorage
from catenary.runtime.metrics import ServerMetrics

log = logging.getLogger(__name__)


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


class HostConfig(msgspec.Struct, frozen=True, kw_only=True):
    tick_ms: int = 50
    queue_max: int = 20_000
    batch_max: int = 4096
    request_timeout_ms: int = 10_000
    tick_catch_up_max: int = 3


@dataclass(slots=True)
class _Write:
    command: Command
    future: asyncio.Future[Result]


@dataclass(slots=True)
class _WriteBatch:
    """Writes that arrived together: one input, one future for all their outcomes.

    ``results[i]`` becomes the applied result of ``commands[i]``, or the
    ``ServiceError`` that answers it (indeterminate); the future resolves with
    the list once every slot is filled.
    """

    commands: list[Command]
    future: asyncio.Future[list[Result | ServiceError]]
    results: list[Result | ServiceError | None]
    remaining: int


@dataclass(slots=True)
class _Read:
    query: Query
    future: asyncio.Future[ReadCompleted]


@dataclass(slots=True)
class _Step:
    message: Message


@dataclass(slots=True)
class _Call:
    """Run ``fn(replica)`` in the owner task (membership changes, transfers)."""

    fn: Callable[[MetadataReplica], Any]
    future: asyncio.Future[Any]


class _Wake:
    pass


class _WriterThread:
    """The one thread that persists (fsync happens here, never on the event loop).

    A job is ``(loop, fn, arg, future)``; the thread runs ``fn(arg)`` and settles the
    asyncio future with one ``call_soon_threadsafe``: fewer hand-offs than an executor
    future wrapped into an asyncio one.  Jobs run one at a time, in submission order.
    """

    def __init__(self) -> None:
        self._jobs: SimpleQueue[
            tuple[asyncio.AbstractEventLoop, Callable[[Any], None], Any, asyncio.Future[None]]
            | None
        ] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="raft-writer", daemon=True)
        self._thread.start()

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[[Any], None],
        arg: Any,
        future: asyncio.Future[None],
    ) -> None:
        self._jobs.put((loop, fn, arg, future))

    def close(self) -> None:
        """Finish the jobs submitted so far, then end the thread (blocks)."""
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, fn, arg, future = job
            try:
                fn(arg)
            except BaseException as exc:  # reported to the owner, which fails the node
                error = exc
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    loop.call_soon_threadsafe(_settle, future, error)
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, future, None)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


_WAKE = _Wake()
_Input = _Write | _WriteBatch | _Read | _Step | _Call | _Wake


class MetadataHost:
    """Owns a MetadataReplica (see the module rules)."""

    def __init__(
        self,
        replica: MetadataReplica,
        storage: RaftStorage,
        send: Callable[[Message], None],
        config: HostConfig,
        metrics: ServerMetrics,
        *,
        leader_address: Callable[[int], str] = lambda node: "",
        on_applied: Callable[[], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.replica = replica
        self._raft_config = replica.raft.config
        self._storage = storage
        self._send = send
        self.config = config
        self._metrics = metrics
        self._leader_address = leader_address
        self._on_applied = on_applied
        self._on_failure = on_failure
        self._queue: asyncio.Queue[_Input] = asyncio.Queue(config.queue_max)
        self._writer = _WriterThread()
        self._next_request_id = 1
        self._timeout_s = config.request_timeout_ms / 1000
        # (deadline on the monotonic clock, future, is a write) per client request,
        # in request order (rule 7).
        self._deadlines: deque[tuple[float, asyncio.Future[Any], bool]] = deque()
        self._writes: dict[int, asyncio.Future[Result]] = {}
        # Request id -> (batch, slot) of the writes proposed as part of a batch.
        self._batched_writes: dict[int, tuple[_WriteBatch, int]] = {}
        # The writes taken off the queue but not proposed yet (the owner may fail
        # or be cancelled while persisting the Ready before their proposal).
        self._unproposed: list[_Write | _WriteBatch] = []
        self._reads: dict[int, asyncio.Future[ReadCompleted]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = False
        self._wake_pending = False
        self._clock_origin = time.monotonic()
        self._next_tick_s = 0.0
        self._changed: asyncio.Future[None] | None = None
        self.peer_messages_dropped = 0
        self.failure: BaseException | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._changed = loop.create_future()
        self._next_tick_s = time.monotonic() + self.config.tick_ms / 1000
        self._task = loop.create_task(self._run(), name="metadata-host")
        self._ticker = loop.create_task(self._tick_loop(), name="metadata-ticker")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait(self) -> None:
        """Return when the owner task ends (stopped, or failed: see ``failure``)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopping = True
        self._wake()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10.0)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self._fail_waiting("the node is shutting down")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._writer.close)
        self._storage.close()
        self._stopped = True

    # -------------------------------------------------------------- clients

    def _now_ms(self) -> int:
        return int((time.monotonic() - self._clock_origin) * 1000)

    def _not_leader(self, hint: int) -> ServiceError:
        address = self._leader_address(hint) if hint else ""
        return ServiceError(
            ErrorCode.NOT_LEADER,
            f"this node is not the metadata leader (leader: {f'n{hint}' if hint else 'unknown'})",
            leader=hint,
            leader_address=address,
        )

    def _enqueue(self, item: _Input) -> None:
        if self._stopping:
            raise ServiceError(ErrorCode.UNAVAILABLE, "the node is shutting down")
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise ServiceError(
                ErrorCode.OVERLOADED,
                f"the metadata host's input queue is full (limit {self.config.queue_max})",
            ) from None

    async def write(self, command: Command) -> Result:
        """Propose a write and await its applied result (see rule 5 for the errors)."""
        return await self.write_future(command)

    def write_future(self, command: Command) -> asyncio.Future[Result]:
        """``write`` without a coroutine: the future resolves to the applied result.

        The future is this request's alone: the ticker fails it once its deadline
        passed (rule 7), the caller going away cancels it, and a completion
        arriving later is ignored.
        """
        if not self.replica.is_leader:
            raise self._not_leader(self.replica.leader)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._enqueue(_Write(command, future))
        self._deadlines.append((time.monotonic() + self._timeout_s, future, True))
        return future

    def write_batch_future(
        self, commands: list[Command]
    ) -> asyncio.Future[list[Result | ServiceError]]:
        """Propose several writes together; the future resolves with one outcome
        per command, in order: its applied result, or the ``ServiceError``
        (indeterminate) that answers it.  The whole future fails only when none
        was proposed (not leader, overloaded: surely not applied), or with
        ``INDETERMINATE`` when the deadline passed first (rule 7).
        """
        if not self.replica.is_leader:
            raise self._not_leader(self.replica.leader)
        future: asyncio.Future[list[Result | ServiceError]] = (
            asyncio.get_running_loop().create_future()
        )
        self._enqueue(_WriteBatch(commands, future, [None] * len(commands), len(commands)))
        self._deadlines.append((time.monotonic() + self._timeout_s, future, True))
        return future

    async def read(self, query: Query) -> ReadCompleted:
        """A linearizable read (ReadIndex on the leader)."""
        return await self.read_future(query)

    def read_future(self, query: Query) -> asyncio.Future[ReadCompleted]:
        """``read`` without a coroutine (see ``write_future``)."""
        if not self.replica.is_leader:
            raise self._not_leader(self.replica.leader)
        future: asyncio.Future[ReadCompleted] = asyncio.get_running_loop().create_future()
        self._enqueue(_Read(query, future))
        self._deadlines.append((time.monotonic() + self._timeout_s, future, False))
        return future

    def _expire(self, now_s: float) -> None:
        """Fail the client futures whose deadline passed; forget the finished ones.

        Deadlines are appended in request order with one fixed timeout, so they
        are sorted: the scan stops at the first unfinished future still in time.
        """
        deadlines = self._deadlines
        while deadlines:
            deadline_s, future, is_write = deadlines[0]
            if not future.done():
                if deadline_s > now_s:
                    return
                if is_write:
                    future.set_exception(
                        ServiceError(
                            ErrorCode.INDETERMINATE,
                            f"the write did not complete within "
                            f"{self.config.request_timeout_ms} ms; "
                            "it may or may not have been applied",
                        )
                    )
                else:
                    future.set_exception(
                        ServiceError(
                            ErrorCode.UNAVAILABLE,
                            f"the read was not confirmed within "
                            f"{self.config.request_timeout_ms} ms",
                        )
                    )
            deadlines.popleft()

    def read_stale(self, query: Query) -> ReadCompleted:
        return self.replica.read_stale(0, query)

    async def call(self, fn: Callable[[MetadataReplica], Any]) -> Any:
        """Run ``fn(replica)`` in the owner task; its exception is re-raised here."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(_Call(fn, future))
        try:
            async with asyncio.timeout(self.config.request_timeout_ms / 1000):
                return await future
        except TimeoutError:
            raise ServiceError(
                ErrorCode.UNAVAILABLE,
                f"the metadata host did not get to it within {self.config.request_timeout_ms} ms",
            ) from None

    async def conf_change(self, change: ConfChange) -> int:
        """Propose a membership change; returns its index (not yet committed)."""

        def propose(replica: MetadataReplica) -> int:
            return replica.propose_conf_change(change)

        try:
            index: int = await self.call(propose)
        except NotLeader as exc:
            raise self._not_leader(exc.leader_hint) from None
        except ProposalDropped as exc:
            raise ServiceError(
                ErrorCode.UNAVAILABLE, f"membership change not accepted now: {exc}"
            ) from None
        return index

    def step(self, message: Message) -> None:
        """A peer message arrived (called by the transport; never blocks)."""
        if self._stopping:
            return
        try:
            self._queue.put_nowait(_Step(message))
        except asyncio.QueueFull:
            self.peer_messages_dropped += 1

    def changed_future(self) -> asyncio.Future[None]:
        """Resolves at the next change of the applied state (index or revision).

        Take it *before* reading the state, then await it (shielded: it is shared),
        so that no change between the read and the wait can be missed.
        """
        assert self._changed is not None
        return self._changed

    async def changed(self) -> None:
        """Wait until the applied state changes."""
        await asyncio.shield(self.changed_future())

    def revision_now(self) -> int:
        return self.replica.state.revision

    def changes_since(
        self, from_version: int, key: str, prefix: bool, limit: int
    ) -> WatchBatch | Compacted:
        return self.replica.state.changes_since(from_version, key, prefix, limit)

    # ------------------------------------------------------------ the owner

    def _wake(self) -> None:
        if self._wake_pending:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_WAKE)
            self._wake_pending = True

    async def _tick_loop(self) -> None:
        interval = self.config.tick_ms / 1000
        while True:
            await asyncio.sleep(max(0.0, self._next_tick_s - time.monotonic()))
            self._wake()
            # Here, not in the owner: a request times out even while the owner
            # is stuck (a slow disk).
            self._expire(time.monotonic())
            # The owner moves _next_tick_s forward; wait at least a fraction of
            # a tick so a stalled owner is not flooded with wake-ups.
            await asyncio.sleep(interval / 4)

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # The node cannot go on without its metadata replica: record why, so
            # the server stops (never half-alive).
            log.critical("metadata host failed: %s", exc, exc_info=True)
            self.failure = exc
            self._stopping = True
            if self._on_failure is not None:
                self._on_failure(f"metadata host failed: {exc!r}")

    async def _loop(self) -> None:
        queue = self._queue
        replica = self.replica
        batch_max = self.config.batch_max
        while not self._stopping:
            item = await queue.get()
            inputs = 1
            writes: list[_Write | _WriteBatch] = []
            self._feed(item, writes)
            while inputs < batch_max and not queue.empty():
                self._feed(queue.get_nowait(), writes)
                inputs += 1
            self._maybe_tick()
            self._metrics.ready_inputs.inc(inputs)
            if writes:
                self._unproposed = writes
                # First the Ready of what the peers said (acks that commit earlier
                # writes): on a leader it has nothing new to persist, so those
                # writes are applied and answered now instead of after the fsync
                # of the new batch.
                if replica.has_ready() and not self._stopping:
                    await self._handle_ready()
                self._propose(writes)
                self._unproposed = []
            while replica.has_ready() and not self._stopping:
                await self._handle_ready()

    def _feed(self, item: _Input, writes: list[_Write | _WriteBatch]) -> None:
        replica = self.replica
        if isinstance(item, _Step):
            replica.step(item.message)
        elif isinstance(item, _Write | _WriteBatch):
            if not item.future.done():
                writes.append(item)
        elif isinstance(item, _Read):
            if item.future.done():
                return
            request_id = self._next_request_id
            self._next_request_id += 1
            try:
                replica.read(request_id, item.query)
            except NotLeader as exc:
                item.future.set_exception(self._not_leader(exc.leader_hint))
            except ProposalDropped as exc:
                item.future.set_exception(
                    ServiceError(ErrorCode.OVERLOADED, f"read not accepted: {exc}")
                )
            else:
                self._reads[request_id] = item.future
        elif isinstance(item, _Call):
            if item.future.done():
                return
            try:
                item.future.set_result(item.fn(replica))
            except Exception as exc:
                item.future.set_exception(exc)
        else:
            self._wake_pending = False

    def _propose(self, writes: list[_Write | _WriteBatch]) -> None:
        first_id = self._next_request_id
        requests: list[tuple[int, Command]] = []
        for w in writes:
            if isinstance(w, _Write):
                requests.append((first_id + len(requests), w.command))
            else:
                for command in w.commands:
                    requests.append((first_id + len(requests), command))
        self._next_request_id += len(requests)
        try:
            self.replica.propose_batch(requests)
        except NotLeader as exc:
            error = self._not_leader(exc.leader_hint)
            for w in writes:
                # (A future may have ended while the Ready before the proposal was
                # persisted: its client went away, or its deadline passed.)
                if not w.future.done():
                    w.future.set_exception(error)
            return
        except ProposalDropped as exc:
            # Not proposed at all: the client may retry safely.
            dropped = ServiceError(ErrorCode.OVERLOADED, f"write not accepted now: {exc}")
            for w in writes:
                if not w.future.done():
                    w.future.set_exception(dropped)
            return
        request_id = first_id
        for w in writes:
            if isinstance(w, _Write):
                self._writes[request_id] = w.future
                request_id += 1
            else:
                for slot in range(len(w.commands)):
                    self._batched_writes[request_id] = (w, slot)
                    request_id += 1

    @staticmethod
    def _fill(batch: _WriteBatch, slot: int, outcome: Result | ServiceError) -> None:
        if batch.future.done() or batch.results[slot] is not None:
            return
        batch.results[slot] = outcome
        batch.remaining -= 1
        if batch.remaining == 0:
            batch.future.set_result(batch.results)  # type: ignore[arg-type]

    def _maybe_tick(self) -> None:
        now_s = time.monotonic()
        if now_s < self._next_tick_s:
            return
        interval_s = self.config.tick_ms / 1000
        due = int((now_s - self._next_tick_s) / interval_s) + 1
        now_ms = self._now_ms()
        for _ in range(ticks_to_deliver(due, self.config.tick_catch_up_max, self._raft_config)):
            self.replica.tick(now_ms)
        self._next_tick_s += due * interval_s

    async def _handle_ready(self) -> None:
        replica = self.replica
        ready = replica.ready()
        self._metrics.ready_batches.inc()
        send = self._send
        for message in ready.messages:
            send(message)
        if self._must_persist(ready):
            await self._persist(self._storage.save, ready, after_flush=bool(ready.messages))
        if ready.messages_after_persist:
            for message in ready.messages_after_persist:
                send(message)
            if ready.committed:
                # Let the transport's flush run first: a follower's acknowledgement
                # (what the leader's commit waits for) must not wait for this
                # batch's apply.
                await asyncio.sleep(0)
        out = replica.advance(ready)
        if out.snapshot is not None:
            snapshot = out.snapshot
            await self._persist(self._compact, snapshot)
            replica.compacted(snapshot)
        self._deliver(out.completions)
        if ready.committed or ready.snapshot is not None:
            if self._on_applied is not None:
                self._on_applied()
            self._notify_changed()

    def _must_persist(self, ready: Ready) -> bool:
        if ready.entries or ready.snapshot is not None:
            return True
        hard_state = ready.hard_state
        if hard_state is None:
            return False
        # The commit index need not be durable (RaftStorage rule 4): a Ready that
        # only moves it is not worth a trip to the writer thread.
        durable = self._storage.hard_state
        return (hard_state.term, hard_state.vote) != (durable.term, durable.vote)

    def _compact(self, snapshot: Snapshot) -> None:
        self._storage.compact(snapshot.meta.index, snapshot)

    async def _persist(
        self, fn: Callable[[Any], None], arg: Ready | Snapshot, *, after_flush: bool = False
    ) -> None:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if after_flush:
            # Handed over by a callback queued behind the transport's flushes of
            # this Ready's messages: the appends leave before the writer thread
            # takes the interpreter to encode the entries.
            loop.call_soon(self._writer.submit, loop, fn, arg, done)
        else:
            self._writer.submit(loop, fn, arg, done)
        # A cancelled owner stops waiting here, but the save runs to its end:
        # stop() waits for the writer thread before it closes the storage.
        await done
        self._metrics.persist_seconds.observe(time.perf_counter() - started)

    def _notify_changed(self) -> None:
        changed = self._changed
        if changed is not None and not changed.done():
            changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()

    def _deliver(self, completions: list[Completion]) -> None:
        for completion in completions:
            if isinstance(completion, WriteCompleted):
                future = self._writes.pop(completion.request_id, None)
                if future is not None:
                    if not future.done():
                        future.set_result(completion.result)
                else:
                    slot = self._batched_writes.pop(completion.request_id, None)
                    if slot is not None:
                        self._fill(slot[0], slot[1], completion.result)
            elif isinstance(completion, WriteIndeterminate):
                error = ServiceError(
                    ErrorCode.INDETERMINATE,
                    f"the write may or may not have been applied: {completion.reason}",
                    leader=self.replica.leader,
                    leader_address=self._leader_address(self.replica.leader)
                    if self.replica.leader
                    else "",
                )
                wfuture = self._writes.pop(completion.request_id, None)
                if wfuture is not None:
                    if not wfuture.done():
                        wfuture.set_exception(error)
                else:
                    slot = self._batched_writes.pop(completion.request_id, None)
                    if slot is not None:
                        self._fill(slot[0], slot[1], error)
            elif isinstance(completion, ReadCompleted):
                rfuture = self._reads.pop(completion.request_id, None)
                if rfuture is not None and not rfuture.done():
                    rfuture.set_result(completion)
            elif isinstance(completion, ReadFailed):
                rfuture = self._reads.pop(completion.request_id, None)
                if rfuture is not None and not rfuture.done():
                    rfuture.set_exception(self._not_leader(completion.leader_hint))

    def _fail_waiting(self, reason: str) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Write | _WriteBatch | _Read | _Call) and not item.future.done():
                # Never proposed: surely not applied.
                item.future.set_exception(ServiceError(ErrorCode.UNAVAILABLE, reason))
        for write in self._unproposed:
            if not write.future.done():
                write.future.set_exception(ServiceError(ErrorCode.UNAVAILABLE, reason))
        self._unproposed = []
        for wfuture in self._writes.values():
            if not wfuture.done():
                wfuture.set_exception(
                    ServiceError(
                        ErrorCode.INDETERMINATE,
                        f"{reason}; the write may or may not have been applied",
                    )
                )
        self._writes.clear()
        for batch, _slot in self._batched_writes.values():
            if not batch.future.done():
                batch.future.set_exception(
                    ServiceError(
                        ErrorCode.INDETERMINATE,
                        f"{reason}; the writes may or may not have been applied",
                    )
                )
        self._batched_writes.clear()
        for rfuture in self._reads.values():
            if not rfuture.done():
                rfuture.set_exception(ServiceError(ErrorCode.UNAVAILABLE, reason))
        self._reads.clear()
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
