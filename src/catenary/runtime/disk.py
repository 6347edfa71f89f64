"""asyncio facade over a :class:`SegmentedStore` and its group-commit writer thread.

Theory of operation
-------------------
1. ``append``/``append_many`` never block the event loop: they add the payloads to a batch
   owned by the loop and return a future; the first append of a loop iteration schedules one
   ``call_soon`` that hands the whole batch to the writer thread as ONE submission.
2. The writer thread appends, fsyncs, and reports back. Completions are collected under a
   small lock and the loop is woken with at most one ``call_soon_threadsafe`` per writer batch
   (fewer when the loop is slower than the disk), which resolves every future of the batch in
   position order, in one C-level pass (``map`` over ``Future.set_result``) when none was
   cancelled. No future is resolved before its record is durable.
3. Truncations and reset go through the same writer queue (:meth:`GroupCommitWriter.run`)
   after flushing the loop's batch, so they are ordered with the appends around them.
4. Reads run inline when they are small (``read_inline_bytes_max``), else in a worker thread;
   the store's lock makes them safe beside the writer.
5. Bounds: at most ``inflight_records_max`` records may be waiting for durability; beyond that
   ``append`` raises :class:`Overloaded` at once instead of queueing without limit.
6. ``DiskWriter`` is the same writer thread for a host whose persistence is a job rather
   than records (``RaftStorage.save``, ``LocalMetadataStore.execute_batch``): ``await
   writer.run(fn, arg)`` runs ``fn(arg)`` on the thread, in submission order, and settles the
   awaiting future with one ``call_soon_threadsafe``.  The job does its own write and fsync
   (one for the whole Ready or batch); its exception is re-raised to the awaiting task.  This
   is catenary's one disk executor: ``GroupCommitWriter``'s thread, behind two facades.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from catenary.storage.errors import Overloaded, RecordTooLargeError, StoreClosedError
from catenary.storage.fs import FileSystem
from catenary.storage.store import SegmentedStore, StoreConfig
from catenary.storage.writer import GroupCommitWriter

__all__ = ["AsyncStore", "DiskWriter", "is_disk_full"]

T = TypeVar("T")

_Futures = list[asyncio.Future[int]]
_Many = list[tuple[int, int]]
# (futures, append_many marks, records, first position or None, error or None)
_Done = tuple[_Futures, _Many, int, int | None, BaseException | None]


def _positions(first: int, count: int, many: _Many) -> list[int]:
    """Position of each future's first record when some futures cover several records."""
    positions = []
    position = first
    marks = iter(many)
    index, extra = next(marks, (-1, 0))
    for i in range(count):
        positions.append(position)
        position += 1
        if i == index:
            position += extra
            index, extra = next(marks, (-1, 0))
    return positions


def _settle(future: asyncio.Future[T], value: T | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)  # type: ignore[arg-type]


def _submit(
    loop: asyncio.AbstractEventLoop,
    writer: GroupCommitWriter,
    fn: Callable[[SegmentedStore], T],
    future: asyncio.Future[T],
) -> None:
    def done(value: T | None, error: BaseException | None) -> None:  # writer thread
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
            loop.call_soon_threadsafe(_settle, future, value, error)

    try:
        writer.run(fn, done, block=False)
    except Exception as exc:  # closed
        _settle(future, None, exc)


class DiskWriter:
    """Jobs for one writer thread, awaited from asyncio (rule 6)."""

    def __init__(self, name: str) -> None:
        self._writer = GroupCommitWriter(None, name=name)

    async def run(self, fn: Callable[[Any], T], arg: Any, *, after_flush: bool = False) -> T:
        """``fn(arg)`` on the writer thread.  ``after_flush``: hand it over from a
        callback queued behind what the event loop already scheduled (a transport's
        flush of messages that should leave before the job takes the interpreter)."""
        return await self.submit(fn, arg, after_flush=after_flush)

    def submit(
        self, fn: Callable[[Any], T], arg: Any, *, after_flush: bool = False
    ) -> asyncio.Future[T]:
        """``run`` without awaiting: the future settles when ``fn(arg)`` ended.  Jobs
        run in submission order (a job submitted with ``after_flush`` is submitted
        when its callback runs: submit later ones the same way to keep the order)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def job(_store: SegmentedStore) -> T:
            return fn(arg)

        if after_flush:
            loop.call_soon(_submit, loop, self._writer, job, future)
        else:
            _submit(loop, self._writer, job, future)
        return future

    def close(self) -> None:
        """Finish the jobs submitted so far, then end the thread (blocks)."""
        self._writer.close()


class AsyncStore:
    """``await store.append(payload) -> position`` over a group-committing writer thread."""

    def __init__(
        self,
        store: SegmentedStore,
        *,
        batch_records_max: int = 8192,
        batch_bytes_max: int = 8 * 1024 * 1024,
        batch_delay_us: int = 0,
        queue_records_max: int = 65536,
        inflight_records_max: int = 65536,
        read_inline_bytes_max: int = 64 * 1024,
    ) -> None:
        """Must be created inside the running event loop that will use it."""
        self._loop = asyncio.get_running_loop()
        self._store = store
        self._writer = GroupCommitWriter(
            store,
            batch_records_max=batch_records_max,
            batch_bytes_max=batch_bytes_max,
            batch_delay_us=batch_delay_us,
            queue_records_max=queue_records_max,
        )
        self._inflight_records_max = inflight_records_max
        self._admit_max = inflight_records_max  # -1 once closed
        self._create_future = self._loop.create_future
        self._record_bytes_max = store.config.record_bytes_max
        self._read_inline_bytes_max = read_inline_bytes_max
        self._inflight = 0
        # The loop's current batch: the payloads, one future per append call, and for each
        # append_many (rare) the index of its future and how many extra records follow it, so
        # a batch of single appends maps futures to positions with a plain range.
        self._payloads: list[bytes] = []
        self._futures: list[asyncio.Future[int]] = []
        self._many: list[tuple[int, int]] = []
        self._flush_scheduled = False
        self._call_soon = self._loop.call_soon
        sink: deque[None] = deque(maxlen=0)
        self._consume = sink.extend  # runs an iterator to its end in C
        # Completions handed over by the writer thread.
        self._done_lock = threading.Lock()
        self._done: list[_Done] = []
        self._wake_scheduled = False
        self._closed = False

    @classmethod
    async def open(
        cls,
        fs: FileSystem,
        directory: str,
        config: StoreConfig | None = None,
        *,
        first_position: int = 1,
        batch_records_max: int = 8192,
        batch_bytes_max: int = 8 * 1024 * 1024,
        batch_delay_us: int = 0,
        queue_records_max: int = 65536,
        inflight_records_max: int = 65536,
        read_inline_bytes_max: int = 64 * 1024,
    ) -> AsyncStore:
        """Open (and recover) the store off the event loop, then start its writer."""
        store = await asyncio.to_thread(
            SegmentedStore.open, fs, directory, config, first_position=first_position
        )
        return cls(
            store,
            batch_records_max=batch_records_max,
            batch_bytes_max=batch_bytes_max,
            batch_delay_us=batch_delay_us,
            queue_records_max=queue_records_max,
            inflight_records_max=inflight_records_max,
            read_inline_bytes_max=read_inline_bytes_max,
        )

    @property
    def store(self) -> SegmentedStore:
        return self._store

    @property
    def writer(self) -> GroupCommitWriter:
        return self._writer

    @property
    def first_position(self) -> int:
        return self._store.first_position

    @property
    def next_position(self) -> int:
        """Next position to be assigned by the writer (appends still in the loop's batch or
        queue are not counted)."""
        return self._store.next_position

    # -- appends ------------------------------------------------------------------------

    def append(self, payload: bytes) -> asyncio.Future[int]:
        """Append one record; the future resolves to its position once it is durable."""
        # The hot path: one comparison covers both "closed" and "too much in flight".
        if self._inflight >= self._admit_max:
            self._refuse()
        # Checked here, not in the writer: the loop's batch shares one submission, and one
        # oversized record must not fail the others' appends.
        if len(payload) > self._record_bytes_max:
            raise RecordTooLargeError(
                f"record of {len(payload)} bytes exceeds record_bytes_max {self._record_bytes_max}"
            )
        self._inflight += 1
        fut: asyncio.Future[int] = self._create_future()
        self._payloads.append(payload)
        self._futures.append(fut)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._call_soon(self._flush)
        return fut

    def _refuse(self) -> None:
        if self._closed:
            raise StoreClosedError("store is closed")
        raise Overloaded(f"{self._inflight} records already waiting for the disk")

    def append_many(self, payloads: Sequence[bytes]) -> asyncio.Future[int]:
        """Append records in order; the future resolves to the first one's position."""
        if self._closed:
            raise StoreClosedError("store is closed")
        n = len(payloads)
        if n == 0:
            raise ValueError("append_many needs at least one payload")
        if self._inflight and self._inflight + n > self._inflight_records_max:
            raise Overloaded(f"{self._inflight} records already waiting for the disk")
        largest = max(map(len, payloads))
        if largest > self._record_bytes_max:
            raise RecordTooLargeError(
                f"record of {largest} bytes exceeds record_bytes_max {self._record_bytes_max}"
            )
        self._inflight += n
        fut: asyncio.Future[int] = self._loop.create_future()
        self._payloads.extend(payloads)
        if n > 1:
            self._many.append((len(self._futures), n - 1))
        self._futures.append(fut)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._payloads:
            return
        payloads, futures, many = self._payloads, self._futures, self._many
        self._payloads, self._futures, self._many = [], [], []
        records = len(payloads)

        def done(first: int | None, exc: BaseException | None) -> None:  # writer thread
            with self._done_lock:
                self._done.append((futures, many, records, first, exc))
                if self._wake_scheduled:
                    return
                self._wake_scheduled = True
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._resolve)

        try:
            self._writer.submit(payloads, done, block=False)
        except Exception as exc:
            self._inflight -= records
            self._fail(futures, exc)

    @staticmethod
    def _fail(futures: _Futures, exc: BaseException) -> None:
        for fut in futures:
            if not fut.done():
                fut.set_exception(exc)

    def _resolve(self) -> None:
        with self._done_lock:
            done, self._done = self._done, []
            self._wake_scheduled = False
        for futures, many, records, first, exc in done:
            self._inflight -= records
            if exc is not None or first is None:
                self._fail(futures, exc or RuntimeError("no position"))
                continue
            positions: Sequence[int]
            if many:
                positions = _positions(first, len(futures), many)
            else:
                positions = range(first, first + len(futures))
            try:
                # Every future of a batch comes from the same create_future, so one unbound
                # set_result serves them all.
                self._consume(map(type(futures[0]).set_result, futures, positions))
            except asyncio.InvalidStateError:
                # A cancelled future stopped the fast pass: finish the others one by one.
                for fut, position in zip(futures, positions):
                    if not fut.done():
                        fut.set_result(position)

    # -- operations ordered with appends ------------------------------------------------

    async def _run(self, fn: Callable[[SegmentedStore], T]) -> T:
        if self._closed:
            raise StoreClosedError("store is closed")
        self._flush()
        fut: asyncio.Future[T] = self._loop.create_future()
        _submit(self._loop, self._writer, fn, fut)
        return await fut

    async def truncate_prefix(self, position: int) -> None:
        await self._run(lambda s: s.truncate_prefix(position))

    async def truncate_suffix(self, position: int) -> None:
        await self._run(lambda s: s.truncate_suffix(position))

    async def reset(self, next_position: int) -> None:
        await self._run(lambda s: s.reset(next_position))

    async def sync(self) -> None:
        """Wait until everything appended before this call is durable."""
        await self._run(lambda s: s.sync())

    # -- reads --------------------------------------------------------------------------

    async def read(self, position: int) -> bytes:
        store = self._store
        if store.range_bytes(position, position + 1) <= self._read_inline_bytes_max:
            return store.read(position)
        return await asyncio.to_thread(store.read, position)

    async def read_range(self, start: int, end: int, bytes_max: int | None = None) -> list[bytes]:
        store = self._store
        estimate = store.range_bytes(start, end)
        if bytes_max is not None:
            estimate = min(estimate, bytes_max)
        if estimate <= self._read_inline_bytes_max:
            return store.read_range(start, end, bytes_max)
        return await asyncio.to_thread(store.read_range, start, end, bytes_max)

    # -- lifecycle ----------------------------------------------------------------------

    async def close(self) -> None:
        """Finish queued appends (their futures resolve), stop the writer, close the store."""
        if self._closed:
            return
        self._flush()
        self._closed = True
        self._admit_max = -1
        await asyncio.to_thread(self._writer.close)
        self._resolve()
        await asyncio.to_thread(self._store.close)


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for want of space: the store rolled it back, so it may be retried."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS
