"""MetadataHost in-process: one owner task, batched Readies, outcomes of writes and reads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from random import Random

import pytest

from catenary.api.errors import ServiceError
from catenary.api.messages import ErrorCode, NodeStatus
from catenary.core.metadata.replica import GetQuery, ListQuery, MetadataReplica, MultiGetQuery
from catenary.core.metadata.types import Precondition, PreconditionFailed, Put, Written
from catenary.core.raft.types import Membership, Message, ProposalDropped, RaftConfig, Ready
from catenary.persist.raft_storage import RaftStorage
from catenary.runtime.host import HostConfig, MetadataHost, ticks_to_deliver
from catenary.runtime.metrics import ServerMetrics
from catenary.storage.fs import OsFileSystem

pytestmark = pytest.mark.timeout(60)

STATUS = NodeStatus("c", 1, 1, "replicated", "leader", 1, 1, 0, 0, (), True)


def open_host(directory: Path, sent: list[Message], **config: int) -> MetadataHost:
    storage = RaftStorage.open(OsFileSystem(), str(directory))
    hard_state, snapshot, entries = storage.load()
    replica = MetadataReplica(
        1,
        RaftConfig(),
        Random(1),
        hard_state=hard_state,
        snapshot=snapshot,
        entries=entries,
        initial_membership=Membership(voters=(1,)),
    )
    replica.raft.campaign()
    return MetadataHost(
        replica,
        storage,
        sent.append,
        HostConfig(**{"tick_ms": 10, **config}),
        ServerMetrics(lambda: STATUS),
    )


async def until_leader(host: MetadataHost) -> None:
    async with asyncio.timeout(10):
        while not (host.replica.is_leader and host.replica.raft.commit_index > 0):
            await asyncio.sleep(0.01)


async def keys_after_restart(directory: Path, prefix: str) -> int:
    """Restart a host on ``directory``'s storage; how many keys under ``prefix`` it serves."""
    again = open_host(directory, [])
    again.start()
    try:
        await until_leader(again)
        return len((await again.read(ListQuery(prefix, 0))).kvs)
    finally:
        await again.stop()


def ready_batches(host: MetadataHost) -> float:
    value = host._metrics.registry.get_sample_value("catenary_raft_ready_batches_total")
    assert value is not None
    return value


def test_writes_reads_and_batching(tmp_path: Path) -> None:
    async def main() -> None:
        host = open_host(tmp_path / "raft", [])
        host.start()
        try:
            await until_leader(host)
            first = await host.write(Put("a", b"1"))
            assert isinstance(first, Written)
            failed = await host.write(Put("a", b"2", Precondition("absent")))
            assert failed == PreconditionFailed("a", first.version)

            before = ready_batches(host)
            results = await asyncio.gather(*(host.write(Put(f"k{i}", b"v")) for i in range(200)))
            assert all(isinstance(r, Written) for r in results)
            versions = [r.version for r in results if isinstance(r, Written)]
            assert versions == sorted(versions) and len(set(versions)) == 200
            # 200 concurrent writes share Readies (and fsyncs): far fewer than one each.
            assert ready_batches(host) - before < 100

            read = await host.read(GetQuery("k7"))
            assert read.kv is not None and read.kv.value == b"v"
            stale = host.read_stale(ListQuery("k", 0))
            assert len(stale.kvs) == 200 and stale.behind == 0
        finally:
            await host.stop()

        # Everything acknowledged is there after a restart from the same storage.
        assert await keys_after_restart(tmp_path / "raft", "k") == 200

    asyncio.run(main())


def test_a_write_not_applied_in_time_is_indeterminate_and_stop_fails_the_rest(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        host = open_host(tmp_path / "raft", [], request_timeout_ms=200)
        host.start()
        await until_leader(host)
        async with asyncio.timeout(10):  # the bootstrap entries are durable, nothing waits
            while host._storage.last_index < 3 or host.replica.has_ready():
                await asyncio.sleep(0.01)
        original = host._storage.save

        def slow_save(ready: Ready, *, sync: bool = True) -> None:
            time.sleep(0.5)  # a slow disk: the write cannot be applied in time
            original(ready, sync=sync)

        host._storage.save = slow_save  # type: ignore[method-assign]
        with pytest.raises(ServiceError) as info:
            await host.write(Put("slow", b"x"))
        assert info.value.code == ErrorCode.INDETERMINATE
        host._storage.save = original  # type: ignore[method-assign]
        # It was in fact applied a little later: "indeterminate", not "failed".
        async with asyncio.timeout(10):
            while host.read_stale(GetQuery("slow")).kv is None:
                await asyncio.sleep(0.01)
        await host.stop()
        with pytest.raises(ServiceError) as info:
            await host.write(Put("late", b"x"))
        assert info.value.code == ErrorCode.UNAVAILABLE

    asyncio.run(main())


def test_writes_taken_but_not_proposed_when_a_save_fails_are_answered_at_stop(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        host = open_host(tmp_path / "raft", [], request_timeout_ms=60_000)
        host.start()
        await until_leader(host)
        async with asyncio.timeout(10):  # the bootstrap entries are durable, nothing waits
            while host._storage.last_index < 3 or host.replica.has_ready():
                await asyncio.sleep(0.01)

        def failing_save(ready: Ready, *, sync: bool = True) -> None:
            raise OSError(5, "simulated fsync failure")

        host._storage.save = failing_save  # type: ignore[method-assign]

        def propose_other(replica: MetadataReplica) -> None:
            replica.propose(10_000, Put("other", b"x"))  # a Ready before the batch's writes

        # Queued with no await in between: the owner takes both in one batch.
        write = host.write_future(Put("w", b"x"))
        called: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        assert host.core.submit_call(propose_other, called) is None
        async with asyncio.timeout(10):
            await called
            await host.wait()
        assert host.failure is not None
        assert not write.done()
        await host.stop()
        # Never proposed: surely not applied, and answered (not left hanging).
        assert write.done()
        with pytest.raises(ServiceError) as info:
            write.result()
        assert info.value.code == ErrorCode.UNAVAILABLE

    asyncio.run(main())


def test_a_full_queue_answers_overloaded(tmp_path: Path) -> None:
    async def main() -> None:
        host = open_host(tmp_path / "raft", [], queue_max=4, batch_max=4)
        # Not started: nothing drains the queue.
        host.replica.raft.campaign()
        for _ in range(50):
            if host.replica.is_leader:
                break
            host.replica.tick(0)
        writes = [asyncio.ensure_future(host.write(Put(f"k{i}", b"v"))) for i in range(6)]
        await asyncio.sleep(0.05)
        errors = [w.exception() for w in writes if w.done()]
        assert errors and all(
            isinstance(e, ServiceError) and e.code == ErrorCode.OVERLOADED for e in errors
        )
        for w in writes:
            w.cancel()
        await asyncio.gather(*writes, return_exceptions=True)
        await host.stop()

    asyncio.run(main())


def test_ticks_after_a_stall_are_capped_but_never_let_a_lease_outlive_real_time() -> None:
    plain = RaftConfig(election_timeout_ticks=10)
    leased = RaftConfig(election_timeout_ticks=10, lease_reads=True)
    assert ticks_to_deliver(1, 3, plain) == 1
    assert ticks_to_deliver(500, 3, plain) == 3
    # With lease reads a stall of any length delivers a whole election timeout,
    # longer than the lease window (election timeout minus drift).
    assert ticks_to_deliver(500, 3, leased) == 10
    assert ticks_to_deliver(6, 3, leased) == 6
    assert ticks_to_deliver(1, 3, leased) == 1


def test_the_host_hands_a_lease_core_a_whole_election_timeout_after_a_stall(
    tmp_path: Path,
) -> None:
    """The host, not only the helper, delivers enough ticks to run out any lease."""

    async def main() -> None:
        storage = RaftStorage.open(OsFileSystem(), str(tmp_path / "raft"))
        hard_state, snapshot, entries = storage.load()
        # A follower that never campaigned: with the old cap of 3 ticks its
        # election clock would move by 3, less than its (randomized) timeout.
        replica = MetadataReplica(
            1,
            RaftConfig(lease_reads=True, election_timeout_ticks=10, lease_drift_ticks=2),
            Random(1),
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
            initial_membership=Membership(voters=(1,)),
        )
        host = MetadataHost(
            replica, storage, [].append, HostConfig(tick_ms=10), ServerMetrics(lambda: STATUS)
        )
        raft = replica.raft
        assert raft.role == "follower"
        before = raft._election_elapsed
        # A one-second stall: 100 tick intervals.
        host.core.next_tick_us = host._now_us() - 1_000_000
        host.core._maybe_tick(host._now_us())
        assert raft._election_elapsed - before >= 10 or raft.role != "follower"

    asyncio.run(main())


def test_a_write_batch_has_one_outcome_per_write_in_order_and_gets_share_one_read(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        host = open_host(tmp_path / "raft", [], request_timeout_ms=300)
        host.start()
        try:
            await until_leader(host)
            first = await host.write(Put("a", b"1"))
            assert isinstance(first, Written)
            # A batch and single writes proposed in the same Ready.
            batch = host.write_batch_future(
                [Put("b", b"1"), Put("a", b"2", Precondition("absent")), Put("c", b"1")]
            )
            single = host.write_future(Put("d", b"1"))
            outcomes = await batch
            assert isinstance(outcomes[0], Written) and isinstance(outcomes[2], Written)
            assert outcomes[1] == PreconditionFailed("a", first.version)
            assert outcomes[0].version < outcomes[2].version
            assert isinstance(await single, Written)
            read = await host.read(MultiGetQuery(("c", "nope", "b")))
            assert [kv.value if kv else None for kv in read.values] == [b"1", None, b"1"]

            # A batch whose writes cannot be applied in time is indeterminate...
            original = host._storage.save

            def slow_save(ready: Ready, *, sync: bool = True) -> None:
                time.sleep(0.6)
                original(ready, sync=sync)

            host._storage.save = slow_save  # type: ignore[method-assign]
            with pytest.raises(ServiceError) as info:
                await host.write_batch_future([Put("slow1", b"x"), Put("slow2", b"x")])
            assert info.value.code == ErrorCode.INDETERMINATE
            host._storage.save = original  # type: ignore[method-assign]
            # ...and was in fact applied a little later.
            async with asyncio.timeout(10):
                while host.read_stale(GetQuery("slow2")).kv is None:
                    await asyncio.sleep(0.01)
        finally:
            await host.stop()
        # After stop nothing more is taken.
        with pytest.raises(ServiceError) as info:
            host.write_batch_future([Put("late", b"x")])
        assert info.value.code in (ErrorCode.UNAVAILABLE, ErrorCode.NOT_LEADER)

    asyncio.run(main())


def test_a_refused_proposal_skips_writes_whose_futures_already_ended(tmp_path: Path) -> None:
    # A write's future can end (its client went away, its deadline passed) after
    # the owner took it and before it proposed it; a refused proposal must then
    # answer the others and not fail the node on the ended one.
    async def main() -> None:
        host = open_host(tmp_path / "raft", [])
        for _ in range(50):
            if host.replica.is_leader:
                break
            host.replica.tick(0)
        # Take the campaign's Ready out of the way (nothing of it matters here).
        while host.replica.has_ready():
            host.replica.advance(host.replica.ready())
        gone = host.write_batch_future([Put("a", b"1")])
        gone.cancel()
        timed_out = host.write_future(Put("b", b"1"))
        timed_out.set_exception(ServiceError(ErrorCode.INDETERMINATE, "deadline"))
        waiting = host.write_future(Put("c", b"1"))

        def refuse(requests: object) -> int:
            raise ProposalDropped("too many pending writes")

        host.replica.propose_batch = refuse  # type: ignore[assignment, method-assign]
        host._emit(host.core.poll(host._now_us()))
        with pytest.raises(ServiceError) as info:
            await waiting
        assert info.value.code == ErrorCode.OVERLOADED
        with pytest.raises(ServiceError):
            await timed_out  # its own outcome, untouched
        host._storage.close()

    asyncio.run(main())


def test_a_full_disk_refuses_writes_keeps_stale_reads_and_resumes_when_space_returns(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        host = open_host(tmp_path / "raft", [], request_timeout_ms=2_000)
        host.disk_full_retry_ms = 20
        host.start()
        try:
            await until_leader(host)
            await host.write(Put("kept", b"1"))
            real_save = host._storage.save
            full = True
            attempts: list[Ready] = []

            def save(ready: Ready, *, sync: bool = True) -> None:
                attempts.append(ready)
                if full:
                    raise OSError(28, "No space left on device")
                real_save(ready, sync=sync)

            host._storage.save = save  # type: ignore[method-assign]
            pending = host.write_future(Put("during", b"x"))  # its save fails: disk full
            async with asyncio.timeout(10):
                while not host.disk_full:
                    await asyncio.sleep(0.01)
            assert host.failure is None and host.running
            # Writes are refused at once, with the distinct code; nothing is proposed.
            with pytest.raises(ServiceError) as info:
                host.write_future(Put("refused", b"x"))
            assert info.value.code == ErrorCode.DISK_FULL
            with pytest.raises(ServiceError) as info:
                host.read_future(GetQuery("kept"))
            assert info.value.code == ErrorCode.UNAVAILABLE
            assert host.read_stale(GetQuery("kept")).kv is not None
            # The same job is retried, never dropped.
            async with asyncio.timeout(10):
                while len(attempts) < 3:
                    await asyncio.sleep(0.01)
            assert all(a is attempts[0] for a in attempts)
            full = False
            async with asyncio.timeout(10):
                written = await pending  # the retried save made it durable: applied
            assert isinstance(written, Written)
            assert not host.disk_full
            assert isinstance(await host.write(Put("after", b"y")), Written)
            read = await host.read(GetQuery("during"))
            assert read.kv is not None
        finally:
            await host.stop()

    asyncio.run(main())


def test_a_write_whose_save_waits_for_space_past_its_deadline_is_indeterminate(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        host = open_host(tmp_path / "raft", [], request_timeout_ms=300)
        host.disk_full_retry_ms = 20
        host.start()
        try:
            await until_leader(host)

            def save(ready: Ready, *, sync: bool = True) -> None:
                raise OSError(28, "No space left on device")

            host._storage.save = save  # type: ignore[method-assign]
            pending = host.write_future(Put("during", b"x"))
            with pytest.raises(ServiceError) as info:
                async with asyncio.timeout(10):
                    await pending
            # The retried save may still make it durable: never "surely failed".
            assert info.value.code == ErrorCode.INDETERMINATE
            assert host.disk_full and host.failure is None
        finally:
            await host.stop()
        assert host.failure is None

    asyncio.run(main())


def test_jobs_queued_behind_a_running_one_share_one_sync(tmp_path: Path) -> None:
    """HostLoop rule 9: with a pipeline deeper than two, the jobs that queued while
    a save ran are written as one group with one sync, and each is reported durable."""

    async def main() -> None:
        host = open_host(tmp_path / "raft", [], persists_in_flight_max=4, batch_max=1)
        host.start()
        try:
            await until_leader(host)
            storage = host._storage
            saves: list[bool] = []
            flushes: list[int] = []
            save, flush = storage.save, storage.flush

            def slow_save(ready: Ready, *, sync: bool = True) -> None:
                time.sleep(0.005)  # a slow disk: the next Readies queue meanwhile
                saves.append(sync)
                save(ready, sync=sync)

            def counted_flush() -> None:
                flushes.append(len(saves))
                flush()

            storage.save = slow_save  # type: ignore[method-assign]
            storage.flush = counted_flush  # type: ignore[method-assign]
            results = await asyncio.gather(*(host.write(Put(f"g{i}", b"v")) for i in range(60)))
            assert all(isinstance(r, Written) for r in results)
            assert not any(saves)  # every save of a group leaves the sync to the flush
            # Fewer syncs than saves: some groups held several Readies.
            assert len(flushes) < len(saves), (len(flushes), len(saves))
            storage.save, storage.flush = save, flush  # type: ignore[method-assign]
        finally:
            await host.stop()

        assert await keys_after_restart(tmp_path / "raft", "g") == 60

    asyncio.run(main())
