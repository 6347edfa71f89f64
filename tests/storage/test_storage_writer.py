"""Group commit (GroupCommitWriter) and its asyncio facade (AsyncStore)."""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Callable
from pathlib import Path
from random import Random
from typing import Any

import pytest

from catenary.runtime.disk import AsyncStore, DiskWriter
from catenary.storage.errors import (
    Overloaded,
    PartlyDurableError,
    RecordTooLargeError,
    StoreClosedError,
    StoreFailedError,
)
from catenary.storage.fs import OsFileSystem
from catenary.storage.fs_sim import SimFileSystem
from catenary.storage.store import SegmentedStore, StoreConfig
from catenary.storage.writer import GroupCommitWriter

pytestmark = pytest.mark.timeout(60)

Result = tuple[int | None, BaseException | None]


class Results:
    """Collects callback outcomes from the writer thread."""

    def __init__(self) -> None:
        self.items: dict[int, Result] = {}
        self.order: list[int] = []
        self.cond = threading.Condition()

    def callback(self, key: int) -> Callable[[int | None, BaseException | None], None]:
        def cb(first: int | None, exc: BaseException | None) -> None:
            with self.cond:
                self.items[key] = (first, exc)
                self.order.append(key)
                self.cond.notify_all()

        return cb

    def wait(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= count, timeout=20)


def gate(writer: GroupCommitWriter) -> threading.Event:
    """Hold the writer thread inside a callback until the returned event is set."""
    release = threading.Event()
    entered = threading.Event()

    def cb(first: int | None, exc: BaseException | None) -> None:
        entered.set()
        assert release.wait(20)

    writer.submit([b"gate"], cb)
    assert entered.wait(20)
    return release


def sim_store(**kwargs: Any) -> tuple[SimFileSystem, SegmentedStore]:
    fs = SimFileSystem(Random(3), **kwargs)
    return fs, SegmentedStore.open(fs, "/d", StoreConfig(segment_bytes_max=4096))


def test_queued_submissions_share_one_write_and_fsync() -> None:
    fs, store = sim_store()
    writer = GroupCommitWriter(store)
    release = gate(writer)
    results = Results()
    for i in range(100):
        writer.submit([f"r{i}".encode()], results.callback(i))
    syncs_before = fs.fsync_count
    release.set()
    results.wait(100)
    writer.close()
    assert fs.fsync_count - syncs_before == 1
    assert results.order == list(range(100))  # callbacks in queue order
    assert [results.items[i] for i in range(100)] == [(i + 2, None) for i in range(100)]
    assert store.read(50) == b"r48"
    store.close()


def test_batch_bounds_split_batches() -> None:
    _, store = sim_store()
    writer = GroupCommitWriter(store, batch_records_max=10, batch_bytes_max=10**6)
    release = gate(writer)
    results = Results()
    for i in range(100):
        writer.submit([b"x"], results.callback(i))
    batches_before = writer.batches
    release.set()
    results.wait(100)
    writer.close()
    assert writer.batches - batches_before == 10
    writer2 = GroupCommitWriter(store, batch_records_max=1000, batch_bytes_max=300)
    release = gate(writer2)
    results = Results()
    for i in range(20):
        writer2.submit([b"y" * 100], results.callback(i))
    batches_before = writer2.batches
    release.set()
    results.wait(20)
    writer2.close()
    assert writer2.batches - batches_before == 7  # 3 records of 100 B per batch, 20 records
    store.close()


def test_full_queue_raises_overloaded_or_blocks_until_timeout() -> None:
    _, store = sim_store()
    writer = GroupCommitWriter(store, queue_records_max=5)
    release = gate(writer)
    results = Results()
    writer.submit([b"a"] * 3, results.callback(0))
    writer.submit([b"b"] * 2, results.callback(1))
    with pytest.raises(Overloaded):
        writer.submit([b"c"], results.callback(2), block=False)
    with pytest.raises(Overloaded):
        writer.submit([b"c"], results.callback(2), timeout_ms=50)
    # A blocked producer proceeds once the writer drains the queue.
    done = threading.Event()
    t = threading.Thread(target=lambda: (writer.submit([b"d"], results.callback(3)), done.set()))
    t.start()
    assert not done.wait(0.1)
    release.set()
    assert done.wait(10)
    t.join(10)
    results.wait(3)
    writer.close()
    assert results.items[3] == (7, None)
    store.close()


def test_run_is_ordered_with_appends_and_errors_are_per_submission() -> None:
    _, store = sim_store()
    store_config_max = store.config.record_bytes_max
    writer = GroupCommitWriter(store)
    release = gate(writer)
    results = Results()
    writer.submit([b"a", b"b"], results.callback(0))
    writer.submit([b"x" * (store_config_max + 1)], results.callback(1))
    writer.submit([b"c"], results.callback(2))
    seen: list[Any] = []
    writer.run(lambda s: s.next_position, lambda v, e: seen.append((v, e)))
    writer.run(lambda s: s.truncate_suffix(3), lambda v, e: seen.append((v, e)))
    writer.submit([b"after"], results.callback(3))
    release.set()
    results.wait(4)
    writer.close()
    assert results.items[0] == (2, None)
    assert isinstance(results.items[1][1], RecordTooLargeError)
    assert results.items[2] == (4, None)
    assert seen == [(5, None), (None, None)]
    assert results.items[3] == (3, None)  # the truncation ran before it
    assert store.read_range(1, 4) == [b"gate", b"a", b"after"]
    store.close()


def test_enospc_fails_the_batch_and_writes_resume_when_space_returns() -> None:
    # Without preallocation, so that a write inside a segment can hit ENOSPC.
    fs = SimFileSystem(Random(3))
    store = SegmentedStore.open(fs, "/d", StoreConfig(segment_bytes_max=4096, preallocate=False))
    writer = GroupCommitWriter(store)
    results = Results()
    writer.submit([b"one", b"two"], results.callback(0))
    results.wait(1)
    fs.capacity_bytes = fs.used_bytes() + 20
    writer.submit([b"z" * 50], results.callback(1))
    results.wait(2)
    first, exc = results.items[1]
    assert first is None and isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    fs.capacity_bytes = None
    writer.submit([b"three"], results.callback(2))
    results.wait(3)
    writer.close()
    assert results.items[2] == (3, None)  # the failed record's position is reused
    store.close()
    fs.crash()
    store = SegmentedStore.open(fs, "/d", StoreConfig(segment_bytes_max=4096))
    assert store.read_range(1, store.next_position) == [b"one", b"two", b"three"]
    store.close()


def test_a_failing_callback_does_not_stop_the_writer_and_close_drains() -> None:
    _, store = sim_store()
    writer = GroupCommitWriter(store)

    def bad(first: int | None, exc: BaseException | None) -> None:
        raise RuntimeError("callback bug")

    release = gate(writer)
    writer.submit([b"a"], bad)
    results = Results()
    writer.submit([b"b"], results.callback(0))
    release.set()
    writer.close()  # drains what was queued
    assert results.items[0] == (3, None)
    assert writer.callback_errors == 1
    with pytest.raises(StoreClosedError):
        writer.submit([b"c"], results.callback(1))
    store.close()


# -- AsyncStore --------------------------------------------------------------------------------


def test_async_store_under_load_from_many_tasks(tmp_path: Path) -> None:
    appenders, per_task = 64, 40

    async def main() -> tuple[list[list[int]], int, int, int]:
        store = await AsyncStore.open(OsFileSystem(), str(tmp_path / "s"))
        loop = asyncio.get_running_loop()
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal wakeups
            wakeups += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]

        async def appender(task: int) -> list[int]:
            got = []
            for i in range(per_task):
                got.append(await store.append(f"{task}:{i}".encode()))
            return got

        positions = await asyncio.gather(*(appender(t) for t in range(appenders)))
        for task, got in enumerate(positions):
            assert await store.read(got[-1]) == f"{task}:{per_task - 1}".encode()
        batches = store.writer.batches
        await store.close()
        return positions, batches, wakeups, store.store.next_position

    positions, batches, wakeups, next_position = asyncio.run(main())
    flat = sorted(p for got in positions for p in got)
    assert flat == list(range(1, appenders * per_task + 1))
    assert all(got == sorted(got) for got in positions)  # each task's appends stay in order
    assert batches < appenders * per_task / 4  # group commit really groups
    assert wakeups <= batches + 2  # at most one loop wake-up per writer batch (+ close)
    assert next_position == appenders * per_task + 1


def test_async_append_many_ordering_truncation_and_reads(tmp_path: Path) -> None:
    async def main() -> None:
        store = await AsyncStore.open(
            OsFileSystem(), str(tmp_path / "s"), read_inline_bytes_max=100
        )
        f1 = store.append(b"a")
        f2 = store.append_many([b"b", b"c", b"d"])
        f3 = store.append(b"e")
        assert (await f1, await f2, await f3) == (1, 2, 5)
        await store.truncate_suffix(3)
        assert await store.append(b"C") == 3
        assert await store.read_range(1, 4) == [b"a", b"b", b"C"]
        big = b"B" * 5000  # read through a worker thread
        position = await store.append(big)
        assert await store.read(position) == big
        assert await store.read_range(1, position + 1, bytes_max=10**6) == [
            b"a",
            b"b",
            b"C",
            big,
        ]
        await store.truncate_prefix(2)
        await store.reset(100)
        assert (store.first_position, store.next_position) == (100, 100)
        assert await store.append(b"z") == 100
        pending = [store.append(b"p") for _ in range(10)]
        await store.close()  # resolves what was appended before closing
        assert [await f for f in pending] == list(range(101, 111))
        with pytest.raises(StoreClosedError):
            store.append(b"late")

    asyncio.run(main())


def test_async_store_bounds_inflight_records(tmp_path: Path) -> None:
    async def main() -> None:
        store = await AsyncStore.open(OsFileSystem(), str(tmp_path / "s"), inflight_records_max=3)
        futures = [store.append(b"x") for _ in range(3)]
        with pytest.raises(Overloaded):
            store.append(b"y")
        assert await asyncio.gather(*futures) == [1, 2, 3]
        assert await store.append(b"z") == 4  # room again once they are durable
        await store.close()

    asyncio.run(main())


def test_async_store_reports_write_errors_to_every_waiter() -> None:
    async def main() -> None:
        fs = SimFileSystem(Random(8))
        store = await AsyncStore.open(fs, "/d", StoreConfig(preallocate=False))
        assert await store.append(b"ok") == 1
        fs.capacity_bytes = fs.used_bytes()
        futures = [store.append(b"no") for _ in range(5)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(r, OSError) and r.errno == errno.ENOSPC for r in results)
        fs.capacity_bytes = None
        assert await store.append(b"ok again") == 2
        await store.close()

    asyncio.run(main())


def test_reads_from_another_thread_while_the_writer_appends(tmp_path: Path) -> None:
    store = SegmentedStore.open(
        OsFileSystem(), str(tmp_path / "s"), StoreConfig(segment_bytes_max=8192)
    )
    writer = GroupCommitWriter(store)
    total = 3000
    acked = threading.Semaphore(0)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        rng = Random(5)
        try:
            while not stop.is_set():
                last = store.durable_next_position
                if last <= 1:
                    continue
                position = rng.randrange(1, last)
                assert store.read(position) == f"record {position}".encode()
                start = rng.randrange(1, last)
                got = store.read_range(start, min(last, start + 50))
                assert got == [f"record {p}".encode() for p in range(start, start + len(got))]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(1, total + 1):
        writer.submit([f"record {i}".encode()], lambda first, exc: acked.release())
    for _ in range(total):
        assert acked.acquire(timeout=20)
    stop.set()
    for t in threads:
        t.join(20)
    writer.close()
    assert not errors, errors[0]
    assert store.segment_count > 3
    store.close()


def test_batch_delay_waits_for_more_but_never_strands_a_submission() -> None:
    fs, store = sim_store()
    writer = GroupCommitWriter(store, batch_delay_us=20_000, batch_records_max=3)
    results = Results()
    writer.submit([b"lonely"], results.callback(0))
    results.wait(1)  # completes once the delay expires, with nothing else queued
    release = gate(writer)
    for i in range(1, 7):
        writer.submit([b"x"], results.callback(i))
    syncs_before = fs.fsync_count
    release.set()
    results.wait(7)
    writer.close()
    assert results.items[0] == (1, None)
    # The six queued records go as two full batches of three.
    assert fs.fsync_count - syncs_before == 2
    store.close()


def test_async_oversized_record_fails_alone(tmp_path: Path) -> None:
    async def main() -> None:
        store = await AsyncStore.open(
            OsFileSystem(), str(tmp_path / "s"), StoreConfig(record_bytes_max=10)
        )
        ok = store.append(b"fine")
        with pytest.raises(RecordTooLargeError):
            store.append(b"x" * 11)
        with pytest.raises(RecordTooLargeError):
            store.append_many([b"ok", b"y" * 11])
        also_ok = store.append(b"fine too")
        assert (await ok, await also_ok) == (1, 2)
        await store.close()

    asyncio.run(main())


def test_a_full_delayed_batch_wakes_the_writer_before_the_delay_expires() -> None:
    _, store = sim_store()
    # A delay far longer than the test's bound: only a producer's wake-up can end it early.
    writer = GroupCommitWriter(store, batch_delay_us=30_000_000, batch_records_max=3)
    results = Results()
    for i in range(3):
        writer.submit([b"x"], results.callback(i))
    results.wait(3)  # bounded at 20 s by Results.wait, well under the 30 s delay
    assert [results.items[i] for i in range(3)] == [(1, None), (2, None), (3, None)]
    writer.close()
    store.close()


def test_wake_ups_stay_balanced_under_concurrent_producers_and_short_delays() -> None:
    # Timeouts racing with producers' releases: every submission completes, nothing hangs,
    # and the sleeping thread is woken again afterwards (the semaphore stayed balanced).
    _, store = sim_store()
    writer = GroupCommitWriter(store, batch_delay_us=50, batch_records_max=7)
    results = Results()
    per_thread = 300

    def produce(base: int) -> None:
        for i in range(per_thread):
            writer.submit([b"r"], results.callback(base + i))

    threads = [threading.Thread(target=produce, args=(t * per_thread,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    results.wait(3 * per_thread)
    assert all(exc is None for _, exc in results.items.values())
    assert sorted(first for first, _ in results.items.values()) == list(
        range(1, 3 * per_thread + 1)
    )
    writer.submit([b"again"], results.callback(-1))
    results.wait(3 * per_thread + 1)
    assert results.items[-1] == (3 * per_thread + 1, None)
    writer.close()
    store.close()


def test_async_cancelled_append_does_not_stop_the_others_resolving(tmp_path: Path) -> None:
    async def main() -> None:
        store = await AsyncStore.open(OsFileSystem(), str(tmp_path / "s"))
        futures = [store.append(f"r{i}".encode()) for i in range(10)]
        futures[3].cancel()  # still written (it is in the batch), just not awaited
        many = store.append_many([b"m1", b"m2"])
        last = store.append(b"last")
        assert [await f for f in futures if not f.cancelled()] == [1, 2, 3, 5, 6, 7, 8, 9, 10]
        assert (await many, await last) == (11, 13)
        assert await store.read_range(11, 14) == [b"m1", b"m2", b"last"]
        assert await store.append(b"after") == 14
        await store.close()

    asyncio.run(main())


def test_async_positions_with_several_append_many_in_one_batch(tmp_path: Path) -> None:
    async def main() -> None:
        store = await AsyncStore.open(OsFileSystem(), str(tmp_path / "s"))
        f = [
            store.append_many([b"a", b"b", b"c"]),
            store.append(b"d"),
            store.append_many([b"e"]),
            store.append_many([b"f", b"g"]),
            store.append(b"h"),
        ]
        assert [await x for x in f] == [1, 4, 5, 6, 8]
        assert await store.read_range(1, 9) == [bytes([c]) for c in b"abcdefgh"]
        await store.close()

    asyncio.run(main())


def test_a_submission_durable_only_in_part_is_unknown_and_stops_the_store() -> None:
    # 60-byte records in 512-byte segment files: a three-record submission after five records
    # crosses into a new segment file, where the disk runs full; its first records are durable.
    fs = SimFileSystem(Random(3))
    store = SegmentedStore.open(fs, "/d", StoreConfig(segment_bytes_max=512))
    writer = GroupCommitWriter(store)
    results = Results()
    for i in range(5):
        writer.submit([bytes(60)], results.callback(i))
        results.wait(i + 1)
    fs.capacity_bytes = fs.used_bytes() + 150
    writer.submit([bytes(60)] * 3, results.callback(5))
    results.wait(6)
    first, exc = results.items[5]
    assert first is None and isinstance(exc, PartlyDurableError), exc
    assert exc.first_position == 6 and 6 < exc.durable_next_position < 9
    # Not a clean failure: nothing more is written until the store is reopened.
    fs.capacity_bytes = None
    writer.submit([b"after"], results.callback(6))
    results.wait(7)
    assert isinstance(results.items[6][1], StoreFailedError)
    writer.close()
    store.close()
    fs.crash()
    reopened = SegmentedStore.open(fs, "/d", StoreConfig(segment_bytes_max=512))
    assert reopened.next_position == exc.durable_next_position  # what it said is on disk
    reopened.close()


# -- DiskWriter: the same writer thread running a host's jobs ----------------------------


def test_a_writer_without_a_store_runs_jobs_in_order_and_refuses_appends() -> None:
    writer = GroupCommitWriter(None)
    ran: list[int] = []
    done = threading.Event()
    for i in range(5):
        writer.run(lambda _store, i=i: ran.append(i), lambda value, exc: None)
    writer.run(lambda _store: None, lambda value, exc: done.set())
    assert done.wait(5)
    assert ran == [0, 1, 2, 3, 4]
    with pytest.raises(StoreClosedError):
        writer.submit([b"x"], lambda first, exc: None)
    writer.close()


def test_disk_writer_returns_a_jobs_result_and_raises_its_error() -> None:
    async def main() -> None:
        disk = DiskWriter("test-writer")
        try:
            assert await disk.run(lambda x: x * 2, 21) == 42
            assert await disk.run(lambda x: x + 1, 1, after_flush=True) == 2

            def fail(_arg: object) -> None:
                raise OSError(errno.EIO, "simulated fsync failure")

            with pytest.raises(OSError):
                await disk.run(fail, None)
            assert thread_name_of(disk) == "test-writer"
        finally:
            await asyncio.get_running_loop().run_in_executor(None, disk.close)
        with pytest.raises(StoreClosedError):
            await disk.run(lambda x: x, 1)

    def thread_name_of(disk: DiskWriter) -> str:
        return disk._writer._thread.name

    asyncio.run(main())
