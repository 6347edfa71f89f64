"""Group commit: one thread turns many small appends into one write and one fsync.

Theory of operation
-------------------
Producers call :meth:`GroupCommitWriter.submit` with a list of payloads and a callback. The
submission joins a bounded FIFO queue (``queue_records_max`` records): when it is full,
``submit`` waits (``block=True``, optionally for at most ``timeout_ms``) or raises
:class:`Overloaded`. One daemon thread, the only one touching the store's write side, loops:

1. take as many queued submissions as ``batch_records_max`` / ``batch_bytes_max`` allow (at
   least one), after waiting up to ``batch_delay_us`` for the batch to fill when that is > 0;
2. ``store.append`` each submission (positions are assigned in queue order), then ONE
   ``store.sync()`` - one write and one fsync for the whole batch;
3. call every callback in queue order with ``(first_position, None)`` once its records are
   durable, or ``(None, exception)`` when they may not be. A submission whose records were all
   durable before a later failure in the same batch is still acknowledged.

Operations queued with :meth:`run` (truncations, reset) execute alone, in queue order, so
they are ordered with the appends around them. A writer created without a store runs such
operations only: it is the disk executor of a host whose persistence step does its own write
and fsync (``runtime.disk.DiskWriter``). Callbacks run on the writer thread: they must be
quick and must not call back into the writer synchronously with ``block=True``. An exception
raised by a callback is logged and does not stop the thread.

Wake-ups (the cost that matters for small batches): the queue is guarded by one plain mutex.
The thread sleeps on ``_wake``, a lock used as a binary semaphore, only after marking itself
``_sleeping`` under the mutex; a producer that clears ``_sleeping`` owes exactly one
``_wake.release()`` (done after dropping the mutex). So every release is matched by one
acquire, a submission arriving while the thread is busy costs no wake-up at all, and with
``batch_delay_us`` 0 the thread wakes at most once per batch (while it waits for a delayed batch
to fill, each submission wakes it to recount). Producers blocked on a full queue wait on a
separate condition that is only notified while one of them is waiting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from catenary.storage.errors import Overloaded, PartlyDurableError, StoreClosedError
from catenary.storage.store import SegmentedStore

__all__ = ["AppendCallback", "GroupCommitWriter", "Overloaded"]

log = logging.getLogger(__name__)

T = TypeVar("T")
AppendCallback = Callable[[int | None, BaseException | None], None]


class _Item:
    __slots__ = ("callback", "fn", "nbytes", "payloads")

    def __init__(
        self,
        payloads: Sequence[bytes],
        nbytes: int,
        callback: Callable[[Any, BaseException | None], None],
        fn: Callable[[SegmentedStore], Any] | None,
    ) -> None:
        self.payloads = payloads
        self.nbytes = nbytes
        self.callback = callback
        self.fn = fn


class GroupCommitWriter:
    """The single writer thread of a :class:`SegmentedStore` (see the module docstring)."""

    def __init__(
        self,
        store: SegmentedStore | None,
        *,
        batch_records_max: int = 8192,
        batch_bytes_max: int = 8 * 1024 * 1024,
        batch_delay_us: int = 0,
        queue_records_max: int = 65536,
        name: str = "catenary-group-commit",
    ) -> None:
        if batch_records_max < 1 or batch_bytes_max < 1 or queue_records_max < 1:
            raise ValueError("batch and queue bounds must be >= 1")
        if batch_delay_us < 0:
            raise ValueError("batch_delay_us must be >= 0")
        self._store = store
        self._batch_records_max = batch_records_max
        self._batch_bytes_max = batch_bytes_max
        self._batch_delay_s = batch_delay_us / 1e6
        self._queue_records_max = queue_records_max
        self._queue: deque[_Item] = deque()
        self._queued_records = 0
        self._mutex = threading.Lock()
        # Producers waiting for room in the queue (rare: only with block=True on a full queue).
        self._room = threading.Condition(self._mutex)
        self._room_waiters = 0
        # Binary semaphore the thread sleeps on; held (locked) whenever nobody owes a release.
        self._wake = threading.Lock()
        self._wake.acquire()
        self._sleeping = False
        self._closing = False
        # Statistics (read without the lock; for benchmarks and metrics).
        self.batches = 0
        self.records = 0
        self.callback_errors = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def store(self) -> SegmentedStore:
        assert self._store is not None, "a writer of jobs only (no store)"
        return self._store

    def submit(
        self,
        payloads: Sequence[bytes],
        callback: AppendCallback,
        *,
        block: bool = True,
        timeout_ms: int | None = None,
    ) -> None:
        """Queue ``payloads`` to be appended and synced; ``callback`` reports the outcome."""
        if self._store is None:
            raise StoreClosedError("this writer runs jobs only: it has no store to append to")
        n = len(payloads)
        nbytes = sum(map(len, payloads)) if n != 1 else len(payloads[0])
        self._put(_Item(payloads, nbytes, callback, None), n, block, timeout_ms)

    def run(
        self,
        fn: Callable[[SegmentedStore], T],
        callback: Callable[[T | None, BaseException | None], None],
        *,
        block: bool = True,
        timeout_ms: int | None = None,
    ) -> None:
        """Queue ``fn(store)`` to run on the writer thread, in order with the appends."""
        self._put(_Item((), 0, callback, fn), 1, block, timeout_ms)

    def _put(self, item: _Item, n: int, block: bool, timeout_ms: int | None) -> None:
        with self._mutex:
            if self._closing:
                raise StoreClosedError("group-commit writer is closed")
            # A submission larger than the whole bound is admitted into an empty queue,
            # otherwise it could never be admitted.
            if self._queued_records and self._queued_records + n > self._queue_records_max:
                if not block:
                    raise Overloaded(
                        f"write queue full ({self._queued_records} of "
                        f"{self._queue_records_max} records)"
                    )
                self._wait_for_room(n, timeout_ms)
            self._queue.append(item)
            self._queued_records += n
            if not self._sleeping:
                return  # the thread is busy and takes the queue when it is done
            self._sleeping = False
        self._wake.release()  # the one release owed for clearing _sleeping

    def _wait_for_room(self, n: int, timeout_ms: int | None) -> None:
        """Wait (mutex held) until ``n`` records fit; raises when closed or out of time."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        self._room_waiters += 1
        try:
            while self._queued_records and (self._queued_records + n > self._queue_records_max):
                if self._closing:
                    raise StoreClosedError("group-commit writer is closed")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Overloaded(f"write queue still full after {timeout_ms} ms")
                self._room.wait(remaining)
            if self._closing:
                raise StoreClosedError("group-commit writer is closed")
        finally:
            self._room_waiters -= 1

    def close(self, timeout_ms: int | None = None) -> None:
        """Stop accepting work, finish everything queued, and join the thread."""
        with self._mutex:
            self._closing = True
            self._room.notify_all()
            wake = self._sleeping
            self._sleeping = False
        if wake:
            self._wake.release()
        if threading.current_thread() is not self._thread:
            self._thread.join(None if timeout_ms is None else timeout_ms / 1000)

    # -- the writer thread --------------------------------------------------------------

    def _sleep(self, timeout_s: float | None) -> None:
        """Wait for a producer (mutex held on entry and on return)."""
        self._sleeping = True
        self._mutex.release()
        woken = self._wake.acquire() if timeout_s is None else self._wake.acquire(True, timeout_s)
        self._mutex.acquire()
        if woken:
            return
        if self._sleeping:
            self._sleeping = False  # timed out and nobody owes a release
            return
        # A producer cleared _sleeping and is about to release: consume that release so the
        # semaphore stays balanced (it does not need the mutex to release).
        self._mutex.release()
        self._wake.acquire()
        self._mutex.acquire()

    def _take(self) -> list[_Item] | None:
        self._mutex.acquire()
        try:
            while not self._queue:
                if self._closing:
                    return None
                self._sleep(None)
            if self._batch_delay_s > 0 and not self._closing:
                deadline = time.monotonic() + self._batch_delay_s
                while self._queued_records < self._batch_records_max and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._sleep(remaining)
            queue = self._queue
            batch: list[_Item] = []
            records = nbytes = 0
            while queue:
                item = queue[0]
                if item.fn is not None:
                    if not batch:
                        batch.append(queue.popleft())
                        records = 1
                    break
                n = len(item.payloads)
                if batch and (
                    records + n > self._batch_records_max
                    or nbytes + item.nbytes > self._batch_bytes_max
                ):
                    break
                batch.append(queue.popleft())
                records += n
                nbytes += item.nbytes
            self._queued_records -= records
            if self._room_waiters:
                self._room.notify_all()
            return batch
        finally:
            self._mutex.release()

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                if batch[0].fn is not None:
                    self._run_op(batch[0])
                else:
                    self._commit(batch)
            except BaseException:  # keep the thread alive: a dead writer hangs every caller
                log.exception("group-commit writer: unexpected error")

    def _run_op(self, item: _Item) -> None:
        assert item.fn is not None
        try:
            result = item.fn(self._store)  # type: ignore[arg-type]
        except Exception as exc:
            self._call(item, None, exc)
        else:
            self._call(item, result, None)

    def _commit(self, batch: list[_Item]) -> None:
        store = self._store
        assert store is not None
        firsts: list[int | BaseException] = []
        for item in batch:
            try:
                firsts.append(store.append(item.payloads))
            except Exception as exc:  # e.g. a record too large: fails that submission only
                firsts.append(exc)
        sync_error: BaseException | None = None
        try:
            store.sync()
        except Exception as exc:
            sync_error = exc
        durable = store.durable_next_position
        self.batches += 1
        for item, first in zip(batch, firsts):
            if isinstance(first, BaseException):
                self._call(item, None, first)
            elif sync_error is not None and first < durable < first + len(item.payloads):
                # Part of this submission is on disk: neither success nor a clean failure.
                partly = PartlyDurableError(first, durable, sync_error)
                store.fail(partly)
                self._call(item, None, partly)
            elif sync_error is not None and first + len(item.payloads) > durable:
                self._call(item, None, sync_error)
            else:
                self.records += len(item.payloads)
                self._call(item, first, None)

    def _call(self, item: _Item, value: Any, exc: BaseException | None) -> None:
        try:
            item.callback(value, exc)
        except BaseException:
            self.callback_errors += 1
            log.exception("group-commit writer: callback failed")
