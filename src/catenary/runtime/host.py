"""``MetadataHost``: the asyncio shell that drives one ``HostLoop``.

Theory of operation
-------------------
The loop between the replica and the world (the inbox, batching, the Ready
order, outcomes, deadlines) is ``catenary.host.loop.HostLoop``, the same code
the simulator drives; its module rules hold here.  This shell adds only what
needs asyncio, a thread or a clock:

1. Inputs.  Client requests and peer messages are submitted to the loop
   synchronously (a refusal is raised at once as a ``ServiceError``) and wake
   the owner task; a client awaits its own future, which is the request's
   token: a future that ended (cancelled, timed out) is never proposed.
   Read-only looks at the replica (stale reads, status) are plain synchronous
   calls: the event loop is single-threaded and only the owner changes the
   replica, so a reader sees a consistent state.
2. The owner task polls the loop on each wake-up and executes its output
   (the Raft core's events are logged and counted, ``runtime/raft_events.py``):
   sends the messages through the transport, hands the persistence jobs to the
   disk writer thread in order (after the transport flushed the messages, so a
   leader's appends travel while it fsyncs) and goes on polling: up to
   ``persists_in_flight_max`` jobs are in flight (``HostLoop`` rule 3), the
   event loop never blocks on fsync.  One group runs on the writer at a time;
   the jobs started meanwhile wait and go together as the next group (up to
   ``persist_group_max``: their writes, then one fdatasync, ``HostLoop`` rule
   9).  As a group ends the owner wakes and reports its jobs done, oldest
   first (``job_done``).  After
   after-persist messages it yields once, so a follower's acknowledgement
   leaves before the apply.
3. Time.  A ticker wakes the owner when the loop's next tick is due, and
   itself answers the requests whose deadline passed (``HostLoop.expire``), so
   the bound holds while the owner is stuck on a slow disk.
4. Failure.  A persistence job that raises stops the owner (``failure``, and
   ``on_failure`` so the node stops: never half-alive) -- except a full disk.
   A job that fails with ENOSPC/EDQUOT (the store rolled the write back) is
   retried, the same job, every ``disk_full_retry_ms`` until it succeeds: the
   Raft core believes it handed those entries out, so they are never dropped.
   No job of a group that failed counts as written; nothing more goes to the
   writer (the jobs behind would leave a gap in the log) until the retry of the
   oldest succeeds, then the others are handed over again, in order.  Meanwhile the owner does nothing else, so this member sends nothing (no
   acks, no votes, no heartbeats: a leader loses its followers, who elect
   another) and ``disk_full`` says why.  New writes are refused at once with
   ``DISK_FULL`` (surely not proposed), linearizable reads with
   ``UNAVAILABLE`` (this member cannot confirm them); stale reads and status
   are served.  Writes already taken time out as usual (``INDETERMINATE``:
   the retried save may still make them durable).  A store that failed for
   good (``StoreFailedError``, e.g. a write durable only in part) still stops
   the node.
5. Stop.  ``stop()`` lets the owner finish the job in hand, then answers what
   is still waiting (``HostLoop.fail_all``), closes the writer and storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from catenary.api.errors import ServiceError
from catenary.api.messages import ErrorCode
from catenary.core.metadata.replica import MetadataReplica, Query, ReadCompleted
from catenary.core.metadata.types import Command, Compacted, Result, WatchBatch
from catenary.core.raft.types import ConfChange, Message, NotLeader, ProposalDropped
from catenary.host.loop import (
    Failed,
    HostConfig,
    HostLoop,
    Job,
    Output,
    Raised,
    persist_group,
    ticks_to_deliver,
)
from catenary.persist.raft_storage import RaftStorage
from catenary.runtime.disk import DiskWriter, is_disk_full
from catenary.runtime.metrics import ServerMetrics
from catenary.runtime.raft_events import RaftEventLog

__all__ = ["HostConfig", "MetadataHost", "ticks_to_deliver"]


log = logging.getLogger(__name__)


_Token = asyncio.Future[Any]


def _token_done(future: _Token) -> bool:
    return future.done()


class MetadataHost:
    """Drives a HostLoop over a MetadataReplica (see the module rules)."""

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
        events: RaftEventLog | None = None,
        disk_full_retry_ms: int = 1000,
    ) -> None:
        """``events`` logs and counts the Raft core's transitions (default: on the
        ``catenary.raft`` logger, counted in ``metrics``)."""
        self.replica = replica
        self.disk_full_retry_ms = disk_full_retry_ms
        self.disk_full = ""  # why persistence waits for space (rule 4); "" when it does not
        self._storage = storage
        self._send = send
        self.config = config
        self._metrics = metrics
        self._leader_address = leader_address
        self._on_applied = on_applied
        self._on_failure = on_failure
        self._events = events if events is not None else RaftEventLog(replica.node_id, metrics)
        self._clock_origin = time.monotonic()
        self.core: HostLoop[_Token] = HostLoop(
            replica,
            config,
            durable=storage.hard_state,
            now_us=0,
            token_done=_token_done,
        )
        self._writer = DiskWriter("raft-writer")
        # Jobs handed to the writer and not yet reported done, in order, each with
        # the future its end settles (to the perf_counter its run started at).
        self._inflight: deque[tuple[Job, asyncio.Future[float]]] = deque()
        # Jobs not handed to the writer yet (rule 2): while a group runs they
        # wait here, and the next group takes up to persist_group_max of them.
        self._queued: list[tuple[Job, asyncio.Future[float]]] = []
        self._group_max = max(1, config.persist_group_max)
        self._writer_busy = False
        self._handover_scheduled = False  # behind a transport flush
        self._held = False  # a group failed for want of space: wait for _recover
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = False
        self._changed: asyncio.Future[None] | None = None
        self.failure: BaseException | None = None

    @property
    def peer_messages_dropped(self) -> int:
        return self.core.peer_messages_dropped

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._changed = loop.create_future()
        self.core.next_tick_us = self._now_us() + self.config.tick_ms * 1000
        self._task = loop.create_task(self._run(), name="metadata-host")
        self._ticker = loop.create_task(self._tick_loop(), name="metadata-ticker")
        self._wakeup.set()  # the replica may have a Ready already (a campaign)

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
        self._wakeup.set()
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
        self._deliver(self.core.fail_all("the node is shutting down"))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._writer.close)
        self._storage.close()
        self._stopped = True
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    # -------------------------------------------------------------- clients

    def _now_us(self) -> int:
        return int((time.monotonic() - self._clock_origin) * 1_000_000)

    def _error(self, failed: Failed) -> ServiceError:
        leader = failed.leader
        return ServiceError(
            failed.code,
            failed.message,
            leader=leader,
            leader_address=self._leader_address(leader) if leader else "",
        )

    def _not_leader(self, hint: int) -> ServiceError:
        return self._error(self.core.not_leader(hint))

    def _accepted(self, refused: Failed | None) -> None:
        if refused is not None:
            raise self._error(refused)
        if not self._wakeup.is_set():
            self._wakeup.set()

    def _check_open(self) -> None:
        if self._stopping:
            raise ServiceError(ErrorCode.UNAVAILABLE, "the node is shutting down")

    def _check_writable(self) -> None:
        if self.disk_full:
            raise ServiceError(
                ErrorCode.DISK_FULL,
                f"disk full ({self.disk_full}): writes are refused until space returns; "
                "nothing was proposed",
            )

    def _check_confirmable(self) -> None:
        if self.disk_full:
            raise ServiceError(
                ErrorCode.UNAVAILABLE,
                f"disk full ({self.disk_full}): this node cannot confirm a linearizable read; "
                "try another node or a stale read",
            )

    async def write(self, command: Command) -> Result:
        """Propose a write and await its applied result (``HostLoop`` rule 5)."""
        return await self.write_future(command)

    def write_future(self, command: Command) -> asyncio.Future[Result]:
        """``write`` without a coroutine: the future resolves to the applied result.

        The future is this request's alone: the ticker fails it once its deadline
        passed, the caller going away cancels it, and a completion arriving later
        is ignored.
        """
        if not self.replica.is_leader:
            raise self._not_leader(self.replica.leader)
        self._check_writable()
        self._check_open()
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._accepted(self.core.submit_write(command, future, self._now_us()))
        return future

    def write_batch_future(
        self, commands: list[Command]
    ) -> asyncio.Future[list[Result | ServiceError]]:
        """Propose several writes together; the future resolves with one outcome
        per command, in order: its applied result, or the ``ServiceError``
        (indeterminate) that answers it.  The whole future fails only when none
        was proposed (not leader, overloaded: surely not applied), or with
        ``INDETERMINATE`` when the deadline passed first.
        """
        if not self.replica.is_leader:
            raise self._not_leader(self.replica.leader)
        self._check_writable()
        self._check_open()
        future: asyncio.Future[list[Result | ServiceError]] = (
            asyncio.get_running_loop().create_future()
        )
        self._accepted(self.core.submit_writes(commands, future, self._now_us()))
        return future

    async def read(self, query: Query) -> ReadCompleted:
        """A linearizable read (ReadIndex on the leader)."""
        return await self.read_future(query)

    def read_future(self, query: Query) -> asyncio.Future[ReadCompleted]:
        """``read`` without a coroutine (see ``write_future``)."""
        self._check_confirmable()
        if not self.replica.is_leader:
            raise self._not_leader(self.replica.leader)
        self._check_open()
        future: asyncio.Future[ReadCompleted] = asyncio.get_running_loop().create_future()
        self._accepted(self.core.submit_read(query, future, self._now_us()))
        return future

    def read_stale(self, query: Query) -> ReadCompleted:
        return self.replica.read_stale(0, query)

    async def call(self, fn: Callable[[MetadataReplica], Any]) -> Any:
        """Run ``fn(replica)`` in the owner task; its exception is re-raised here."""
        self._check_open()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._accepted(self.core.submit_call(fn, future))
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
        if self.core.step(message) and not self._wakeup.is_set():
            self._wakeup.set()

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

    async def _tick_loop(self) -> None:
        interval = self.config.tick_ms / 1000
        core = self.core
        while True:
            await asyncio.sleep(max(0, core.next_tick_us - self._now_us()) / 1_000_000)
            self._wakeup.set()
            # Here, not in the owner: a request times out even while the owner
            # is stuck (a slow disk).
            self._deliver(core.expire(self._now_us()))
            # The owner moves next_tick_us forward; wait at least a fraction of
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
        core = self.core
        wakeup = self._wakeup
        inflight = self._inflight
        while not self._stopping:
            await wakeup.wait()
            wakeup.clear()
            # The jobs that ended, oldest first (the writer runs them in order).
            while inflight and inflight[0][1].done() and not self._stopping:
                job, future = inflight.popleft()
                error = future.exception()
                if error is not None:
                    await self._recover(job, error)
                else:
                    self._metrics.persist_seconds.observe(time.perf_counter() - future.result())
                await self._execute(core.job_done())
            if not self._stopping:
                await self._execute(core.poll(self._now_us()))

    async def _execute(self, out: Output[_Token]) -> None:
        core = self.core
        while True:
            self._emit(out)
            if out.jobs:
                self._submit(out.jobs, after_flush=bool(out.messages))
            if not out.more or self._stopping:
                return
            if out.messages:
                # Let the transport's flush run first: a follower's
                # acknowledgement (what the leader's commit waits for) must
                # not wait for this batch's apply.
                await asyncio.sleep(0)
            out = core.poll(self._now_us())

    def _submit(self, jobs: list[Job], *, after_flush: bool) -> None:
        # With after_flush the jobs are handed over by a callback queued behind
        # the transport's flushes of this Ready's messages: the appends leave
        # before the writer thread takes the interpreter to encode the entries.
        loop = asyncio.get_running_loop()
        for job in jobs:
            future: asyncio.Future[float] = loop.create_future()
            self._inflight.append((job, future))
            self._queued.append((job, future))
        if self._writer_busy or self._handover_scheduled or self._held:
            return
        if after_flush:
            self._handover_scheduled = True
            loop.call_soon(self._handover)
        else:
            self._handover()

    def _handover(self) -> None:
        """Give the writer the next group: the jobs queued (rule 2), oldest first."""
        self._handover_scheduled = False
        if self._writer_busy or self._held or not self._queued:
            return
        group = self._queued[: self._group_max]
        del self._queued[: len(group)]
        self._writer_busy = True
        ran = self._writer.submit(self._run_group, [job for job, _future in group])
        ran.add_done_callback(functools.partial(self._group_ended, group))

    def _group_ended(
        self,
        group: list[tuple[Job, asyncio.Future[float]]],
        ran: asyncio.Future[tuple[float, BaseException | None]],
    ) -> None:
        self._writer_busy = False
        if ran.exception() is not None:
            started, error = 0.0, ran.exception()
        else:
            started, error = ran.result()
        for _job, future in group:
            if future.done():
                continue
            if error is None:
                future.set_result(started)
            else:
                future.set_exception(error)
        if error is None:
            self._handover()
        else:
            self._held = True  # rule 4: the jobs behind would leave a gap
        if not self._wakeup.is_set():
            self._wakeup.set()

    def _emit(self, out: Output[_Token]) -> None:
        send = self._send
        for message in out.messages:
            send(message)
        if out.completions:
            self._deliver(out.completions)
        if out.events:
            self._events.record(out.events)
        metrics = self._metrics
        if out.inputs:
            metrics.ready_inputs.inc(out.inputs)
        if out.readies:
            metrics.ready_batches.inc(out.readies)
        if out.applied:
            if self._on_applied is not None:
                self._on_applied()
            self._notify_changed()

    def _run_group(self, jobs: list[Job]) -> tuple[float, BaseException | None]:
        """In the writer thread: the group's writes and one sync (``HostLoop`` rule 9)."""
        started = time.perf_counter()
        return started, persist_group(self._storage, jobs)

    def _run_job(self, job: Job) -> float:  # in the writer thread
        started = time.perf_counter()
        error = persist_group(self._storage, [job])
        if error is not None:
            raise error
        return started

    async def _recover(self, job: Job, error: BaseException) -> None:
        """Rule 4: retry a job that failed for want of space, then hand the jobs
        the writer refused behind it over again, in order; any other error stops
        the owner."""
        if not (isinstance(error, OSError) and is_disk_full(error)):
            raise error
        # A cancelled owner stops waiting, but a job runs to its end: stop()
        # waits for the writer before it closes the storage.
        exc: OSError = error
        while True:
            if not self.disk_full:
                log.error(
                    "disk full: %s; writes refused, retrying the save every %d ms",
                    exc.strerror or exc,
                    self.disk_full_retry_ms,
                )
            self.disk_full = exc.strerror or str(exc)
            if self._stopping:
                raise asyncio.CancelledError from exc
            await asyncio.sleep(self.disk_full_retry_ms / 1000)
            if self._stopping:
                raise asyncio.CancelledError from exc
            try:
                started = await self._writer.run(self._run_job, job)
                break
            except OSError as again:
                if not is_disk_full(again):
                    raise
                exc = again
        log.warning("disk space returned: the save succeeded, writes resume")
        self.disk_full = ""
        self._metrics.persist_seconds.observe(time.perf_counter() - started)
        # The jobs behind it (the rest of its group, and those queued since)
        # were not written: hand them over again, in order.  No group runs now.
        held = [queued for queued, _future in self._inflight]
        self._inflight.clear()
        self._queued.clear()
        self._held = False
        self._submit(held, after_flush=False)

    def _notify_changed(self) -> None:
        changed = self._changed
        if changed is not None and not changed.done():
            changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()

    def _deliver(self, completions: list[tuple[_Token, Any]]) -> None:
        for future, outcome in completions:
            if future.done():
                continue
            kind = type(outcome)
            if kind is Failed:
                future.set_exception(self._error(outcome))
            elif kind is Raised:
                future.set_exception(outcome.error)
            elif kind is list:
                if Failed in map(type, outcome):
                    outcome = [self._error(o) if type(o) is Failed else o for o in outcome]
                future.set_result(outcome)
            else:
                future.set_result(outcome)
