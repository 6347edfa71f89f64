"""The client against a fake node: semantics, leader hints, retries, the indeterminate outcome."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from catenary.api import messages as m
from catenary.client import (
    BadRequestError,
    CatenaryError,
    Client,
    CompactedError,
    ConnectionRefusedByNodeError,
    DeadlineExceededError,
    IndeterminateError,
    LeaseNotFoundError,
    PreconditionFailedError,
    SyncClient,
    TooLargeError,
    UnavailableError,
)
from catenary.client.client import split_addresses
from catenary.client.connection import NodeConnection
from catenary.wire import FrameDecoder

from .fakenode import FakeNode, not_leader

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")


def run(body: Callable[..., Awaitable[T]], nodes: int = 1) -> T:
    async def main() -> T:
        fakes = [await FakeNode(node_id=i + 1).start() for i in range(nodes)]
        try:
            async with asyncio.timeout(20):
                return await body(*fakes)
        finally:
            for fake in fakes:
                await fake.stop()

    return asyncio.run(main())


def closed_port_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_put_get_delete_list_round_trip() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2) as client:
            v1 = await client.metadata.put("/a", b"1")
            v2 = await client.metadata.put("/a", b"2", if_version=v1)
            assert v2 > v1
            kv = await client.metadata.get("/a")
            assert kv is not None and kv.value == b"2" and kv.version == v2
            await client.metadata.put("/b", b"x", if_absent=True)
            listed = await client.metadata.list("/")
            assert [kv.key for kv in listed.kvs] == ["/a", "/b"] and not listed.more
            limited = await client.metadata.list("/", limit=1)
            assert len(limited.kvs) == 1 and limited.more
            await client.metadata.delete("/a", if_version=v2)
            assert await client.metadata.get("/a") is None
            assert client.cluster_name == "test"  # learnt in the handshake

    run(body)


def test_failed_precondition_names_the_current_version() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2) as client:
            v1 = await client.metadata.put("/k", b"1")
            with pytest.raises(PreconditionFailedError) as info:
                await client.metadata.put("/k", b"2", if_absent=True)
            assert info.value.current_version == v1 and info.value.key == "/k"
            with pytest.raises(PreconditionFailedError) as info:
                await client.metadata.delete("/k", if_version=v1 + 7)
            assert info.value.current_version == v1
            with pytest.raises(PreconditionFailedError) as info:
                await client.metadata.put("/absent", b"2", if_version=3)
            assert info.value.current_version == 0
            with pytest.raises(BadRequestError):
                await client.metadata.put("/k", b"2", if_absent=True, if_version=1)

    run(body)


def test_not_leader_hint_leads_to_the_leader() -> None:
    async def body(follower: FakeNode, leader: FakeNode) -> None:
        follower.hook = lambda req: (
            not_leader(req, leader.address) if not isinstance(req, m.GetStatus) else None
        )
        async with Client([follower.address], timeout_s=2) as client:
            await client.metadata.put("/k", b"v")
            assert client.leader_address == leader.address
            assert (await client.metadata.get("/k")) is not None
            # Only the first request went to the follower; the rest went straight to the leader.
            assert len(follower.received) == 1
            assert [type(r) for r in leader.received] == [m.Put, m.Get]
            assert "/k" in leader.kv and "/k" not in follower.kv

    run(body, nodes=2)


def test_not_leader_without_hint_tries_the_next_node() -> None:
    async def body(follower: FakeNode, leader: FakeNode) -> None:
        follower.hook = lambda req: not_leader(req, "")
        async with Client([follower.address, leader.address], timeout_s=2) as client:
            await client.metadata.put("/k", b"v")
            assert "/k" in leader.kv

    run(body, nodes=2)


def test_dead_node_in_the_list_is_skipped() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([closed_port_address(), node.address], timeout_s=2) as client:
            assert await client.metadata.put("/k", b"v") == 1
            assert (await client.status()).node == node.node_id

    run(body)


def test_write_lost_after_sending_is_indeterminate() -> None:
    async def body(node: FakeNode) -> None:
        node.hook = lambda req: "drop" if isinstance(req, m.Put) else None
        async with Client([node.address], timeout_s=2) as client:
            with pytest.raises(IndeterminateError):
                await client.metadata.put("/k", b"v")
            assert sum(isinstance(r, m.Put) for r in node.received) == 1  # never retried

    run(body)


def test_read_lost_after_sending_is_retried() -> None:
    async def body(node: FakeNode) -> None:
        drops = [1]

        def hook(req: m.Request) -> str | None:
            if isinstance(req, m.Get) and drops:
                drops.pop()
                return "drop"
            return None

        node.hook = hook
        async with Client([node.address], timeout_s=2) as client:
            assert await client.metadata.get("/k") is None
            assert sum(isinstance(r, m.Get) for r in node.received) == 2

    run(body)


def test_indeterminate_reply_is_never_a_plain_failure() -> None:
    async def body(node: FakeNode) -> None:
        node.hook = lambda req: (
            m.ErrorReply(req.id, m.ErrorCode.INDETERMINATE, "leader lost")
            if isinstance(req, m.Put | m.Delete | m.GrantLease)
            else None
        )
        async with Client([node.address], timeout_s=2) as client:
            with pytest.raises(IndeterminateError):
                await client.metadata.put("/k", b"v")
            with pytest.raises(IndeterminateError):
                await client.metadata.delete("/k")
            with pytest.raises(IndeterminateError):
                await client.metadata.grant(1000)

    run(body)


def test_write_in_flight_at_the_deadline_is_indeterminate() -> None:
    async def body(node: FakeNode) -> None:
        node.hook = lambda req: "ignore" if isinstance(req, m.Put) else None
        async with Client([node.address], timeout_s=0.3) as client:
            with pytest.raises(IndeterminateError):
                await client.metadata.put("/k", b"v")

    run(body)


def test_read_without_answer_times_out_as_unavailable() -> None:
    async def body(node: FakeNode) -> None:
        node.hook = lambda req: "ignore"
        async with Client([node.address], timeout_s=0.4, attempt_timeout_s=0.1) as client:
            with pytest.raises(DeadlineExceededError) as info:
                await client.metadata.get("/k")
            assert isinstance(info.value, UnavailableError) and isinstance(info.value, TimeoutError)
            assert sum(isinstance(r, m.Get) for r in node.received) >= 2  # retried

    run(body)


def test_unavailable_and_overloaded_writes_are_retried() -> None:
    async def body(node: FakeNode) -> None:
        codes = [m.ErrorCode.UNAVAILABLE, m.ErrorCode.OVERLOADED]

        def hook(req: m.Request) -> m.Reply | None:
            if isinstance(req, m.Put) and codes:
                return m.ErrorReply(req.id, codes.pop(0), "busy")
            return None

        node.hook = hook
        async with Client([node.address], timeout_s=2) as client:
            assert await client.metadata.put("/k", b"v") == 1
            assert sum(isinstance(r, m.Put) for r in node.received) == 3

    run(body)


def test_no_retry_is_started_too_close_to_the_deadline() -> None:
    """Rule 3: a write refused again and again is retried while ``retry_time_min_s`` of
    its deadline is left, and then ends as a deadline with nothing in flight; an attempt
    sent later could not be answered in time and would make the write indeterminate."""

    async def body(node: FakeNode) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        late: list[float] = []

        def hook(req: m.Request) -> m.Reply | str | None:
            if not isinstance(req, m.Put):
                return None
            at = loop.time() - start
            if at > 0.85:  # under 0.15 s left: this node would answer too late
                late.append(at)
                return "ignore"
            return m.ErrorReply(req.id, m.ErrorCode.UNAVAILABLE, "no leader yet")

        node.hook = hook
        async with Client(
            [node.address], backoff_initial_ms=10, backoff_max_ms=20, retry_time_min_s=0.2
        ) as client:
            with pytest.raises(DeadlineExceededError, match="too close to retry"):
                await client.metadata.put("/k", b"v", timeout_s=1.0)
            assert late == []
            assert 0.75 <= loop.time() - start < 0.95
            assert sum(isinstance(r, m.Put) for r in node.received) > 10  # it did retry

    run(body)


def test_nothing_reachable_is_a_deadline_not_indeterminate() -> None:
    async def body() -> None:
        async with Client([closed_port_address()], timeout_s=0.3) as client:
            with pytest.raises(DeadlineExceededError):
                await client.metadata.put("/k", b"v")

    asyncio.run(body())


def test_bad_request_and_too_large_are_not_retried() -> None:
    async def body(node: FakeNode) -> None:
        node.hook = lambda req: (
            m.ErrorReply(req.id, m.ErrorCode.TOO_LARGE, "value too large")
            if isinstance(req, m.Put)
            else m.ErrorReply(req.id, m.ErrorCode.BAD_REQUEST, "bad key")
        )
        async with Client([node.address], timeout_s=2) as client:
            with pytest.raises(TooLargeError):
                await client.metadata.put("/k", b"v")
            with pytest.raises(BadRequestError):
                await client.metadata.get("")
            assert len(node.received) == 2

    run(body)


def test_oversized_request_is_refused_before_sending() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2, frame_bytes_max=1024) as client:
            with pytest.raises(TooLargeError):
                await client.metadata.put("/k", b"x" * 2048)
            assert await client.metadata.put("/k", b"small") == 1
            assert [type(r) for r in node.received] == [m.Put]

    run(body)


def test_many_concurrent_requests_share_one_connection() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=5) as client:
            versions = await asyncio.gather(
                *(client.metadata.put(f"/k{i}", b"v") for i in range(200))
            )
            assert sorted(versions) == list(range(1, 201))
            assert node.connections_accepted == 1

    run(body)


def test_leases() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2) as client:
            lease = await client.metadata.grant(5000)
            await client.metadata.put("/l", b"v", lease=lease)
            await client.metadata.keep_alive(lease)
            await client.metadata.revoke(lease)
            with pytest.raises(LeaseNotFoundError):
                await client.metadata.keep_alive(lease)
            with pytest.raises(LeaseNotFoundError):
                await client.metadata.put("/l", b"v", lease=lease)

    run(body)


def test_watch_survives_a_lost_connection_without_gaps_or_repeats() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2) as client:
            v0 = await client.metadata.put("/w/0", b"before")
            async with client.metadata.watch("/w/", prefix=True, from_version=v0) as watcher:
                seen: list[str] = []

                async def consume() -> None:
                    async for event in watcher:
                        seen.append(event.key)
                        if len(seen) == 4:
                            return

                task = asyncio.create_task(consume())
                for i in (1, 2):
                    await client.metadata.put(f"/w/{i}", b"v")
                while len(seen) < 2:
                    await asyncio.sleep(0.01)
                old = list(client._conns.values())
                node.drop_connections()  # watch and client connection both lost
                while not all(conn.closed for conn in old):
                    await asyncio.sleep(0.005)
                await client.metadata.put("/w/3", b"v")  # happens while the watch is away
                await client.metadata.put("/other", b"v")
                await client.metadata.put("/w/4", b"v")
                await task
            assert seen == ["/w/1", "/w/2", "/w/3", "/w/4"]
            assert watcher.revision >= 5

    run(body)


def test_watch_from_compacted_history_raises_compacted() -> None:
    async def body(node: FakeNode) -> None:
        node.history_oldest = 50
        node.revision = 60
        async with Client([node.address], timeout_s=2) as client:
            with pytest.raises(CompactedError) as info:
                async for _event in client.metadata.watch("/k", from_version=3):
                    pass
            assert info.value.oldest_version == 50

    run(body)


def test_another_clusters_node_is_refused() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], cluster_name="other", timeout_s=1) as client:
            with pytest.raises(ConnectionRefusedByNodeError, match="cluster"):
                await client.metadata.get("/k")
        node.accept_any_cluster = False
        async with Client([node.address], timeout_s=1) as client:
            with pytest.raises(ConnectionRefusedByNodeError, match="cluster"):
                await client.metadata.get("/k")
        async with Client([node.address], cluster_name="test", timeout_s=1) as client:
            assert await client.metadata.get("/k") is None

    run(body)


def test_admin_requests() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2) as client:
            status = await client.status(node.address)
            assert status.provisioned and status.leader == node.node_id
            assert [n.node for n in await client.nodes()] == [node.node_id]
            servers = await client.servers()
            assert servers.leader == node.node_id and servers.members[0].role == "voter"
            assert await client.provision() == "done"
            assert await client.add_server(2) == "done"
            assert await client.remove_server(2) == "done"

    run(body)


def test_sync_client() -> None:
    async def body(node: FakeNode) -> None:
        def script() -> None:
            with SyncClient([node.address], timeout_s=2) as client:
                version = client.metadata.put("/s", b"1")
                kv = client.metadata.get("/s")
                assert kv is not None and kv.version == version
                events = client.metadata.watch("/s", from_version=version)
                client.metadata.put("/s", b"2")
                first = next(events)
                assert first.value == b"2"
                events.close()  # type: ignore[attr-defined]
                with pytest.raises(PreconditionFailedError):
                    client.metadata.put("/s", b"3", if_absent=True)

        await asyncio.to_thread(script)

    run(body)


def test_addresses_are_validated() -> None:
    assert split_addresses(["a:1,b:2", "a:1", " c:3 "]) == ["a:1", "b:2", "c:3"]
    for bad in ("", "nohost", "h:0", "h:99999", "h:x"):
        with pytest.raises(ValueError):
            split_addresses(bad)


def test_slow_watch_consumer_is_resubscribed_without_gaps() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2, watch_queue_max=2) as client:
            v0 = await client.metadata.put("/s/0", b"v")
            watcher = client.metadata.watch("/s/", prefix=True, from_version=v0)
            task = asyncio.create_task(watcher.__anext__())  # subscribes
            while not node.watchers:
                await asyncio.sleep(0.005)
            for i in range(1, 11):
                await client.metadata.put(f"/s/{i}", b"v")
            events = [await task]
            while len(events) < 10:
                events.append(await watcher.__anext__())
            assert [e.key for e in events] == [f"/s/{i}" for i in range(1, 11)]
            assert any(isinstance(r, m.CancelWatch) for r in node.received)  # it fell behind
            assert sum(isinstance(r, m.Watch) for r in node.received) >= 2  # and came back
            await watcher.aclose()

    run(body)


def test_works_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def body() -> None:
        node = await FakeNode().start()
        try:
            async with Client([node.address], timeout_s=2) as client:
                version = await client.metadata.put("/u", b"v")
                kv = await client.metadata.get("/u")
                assert kv is not None and kv.version == version
        finally:
            await node.stop()

    uvloop.run(body())


def test_write_queued_but_not_written_when_the_connection_closes_is_retried() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2) as client:
            await client.metadata.get("/warm")  # the connection is open
            conn = client._conns[node.address]
            # The only request in flight is written at once; the next one queues
            # behind it for the connection's flush.
            first = asyncio.create_task(client.metadata.put("/first", b"v"))
            task = asyncio.create_task(client.metadata.put("/k", b"v"))
            await asyncio.sleep(0)  # both begun: "/k" is queued, its frame not written yet
            assert conn._unwritten
            conn.close("closed by the test")
            with pytest.raises(IndeterminateError):
                await first  # it was written: its outcome is unknown
            assert isinstance(await task, int)  # surely not sent, so retried on a new connection
            assert sum(isinstance(r, m.Put) and r.key == "/k" for r in node.received) == 1

    run(body)


def test_closing_a_watch_ends_an_iteration_waiting_in_another_task() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2) as client:
            watcher = client.metadata.watch("/quiet")
            seen: list[object] = []

            async def consume() -> None:
                async for event in watcher:
                    seen.append(event)

            task = asyncio.create_task(consume())
            while not node.watchers:
                assert not task.done(), task  # the iteration failed to subscribe: say why
                await asyncio.sleep(0.005)
            await watcher.aclose()
            async with asyncio.timeout(2):
                await task
            assert seen == []
            async with asyncio.timeout(2):  # and the node is told
                while not any(isinstance(r, m.CancelWatch) for r in node.received):
                    await asyncio.sleep(0.005)

    run(body)


def test_closing_a_watch_while_its_iteration_is_still_dialling_ends_it_and_sends_no_watch() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2) as client:
            watcher = client.metadata.watch("/quiet")
            seen: list[object] = []

            async def consume() -> None:
                async for event in watcher:
                    seen.append(event)

            task = asyncio.create_task(consume())
            await asyncio.sleep(0)  # the iteration is waiting for its connection to open
            assert not task.done() and not node.connections_accepted
            await watcher.aclose()
            async with asyncio.timeout(2):
                await task
            assert seen == []
            await client.metadata.get("/warm")  # the same connection, now surely open
            assert not node.watchers
            assert not any(isinstance(r, m.Watch) for r in node.received)

    run(body)


def test_a_burst_of_requests_leaves_in_writes_of_at_most_write_batch_max_frames() -> None:
    class Transport:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        def is_closing(self) -> bool:
            return False

    async def main() -> None:
        conn = NodeConnection("127.0.0.1:1", cluster_name="c", write_batch_max=2)
        transport = Transport()
        conn._transport = transport  # type: ignore[assignment]
        futures = [conn.call(lambda i: m.Get(id=i, key=f"k{i}")) for _ in range(5)]
        # The lone first request leaves at once, then each full batch of two as
        # soon as it is full: five requests, three writes, all in this iteration.
        decoder = FrameDecoder(1 << 20)
        assert [len(decoder.feed(w)) for w in transport.writes] == [1, 2, 2]
        await asyncio.sleep(0)
        assert len(transport.writes) == 3  # the queued flushes found nothing left
        assert len(futures) == 5 and not conn._unwritten

    asyncio.run(main())


def test_the_deadline_covers_a_slow_dial_and_the_first_attempt_together() -> None:
    async def body(node: FakeNode) -> None:
        node.hello_delay_s = 0.6  # the dial takes 0.6 s...
        node.hook = lambda request: "ignore" if isinstance(request, m.Put) else None
        async with Client([node.address], timeout_s=1.0, connect_timeout_s=1.0) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(IndeterminateError):
                await client.metadata.put("/k", b"v")  # ...and the put is never answered
            # One deadline for the call: not the dial plus a whole timeout after it.
            assert loop.time() - started < 1.3

    run(body)


def test_first_attempt_deadlines_leave_no_queue_behind() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2.0, deadline_resolution_s=0.01) as client:
            for timeout_s in (0.5, 0.6, 0.7):  # a queue per distinct duration...
                await client.metadata.get("/k", timeout_s=timeout_s)
            async with asyncio.timeout(2):
                while client._deadlines._fifos:  # ...each gone once it emptied
                    await asyncio.sleep(0.01)

    run(body)


BAD_TEXT = "/bad\udc80key"  # a lone surrogate: a str that has no UTF-8 form


def test_text_that_is_not_utf8_is_a_bad_request_naming_the_argument() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2) as client:
            md = client.metadata
            calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("key", lambda: md.put(BAD_TEXT, b"v")),
                ("key", lambda: md.get(BAD_TEXT)),
                ("key", lambda: md.get(BAD_TEXT, stale=True)),
                ("key", lambda: md.get_result(BAD_TEXT)),
                ("key", lambda: md.delete(BAD_TEXT)),
                ("prefix", lambda: md.list(BAD_TEXT)),
                ("cluster_name", lambda: client.provision(BAD_TEXT)),
            ]
            for argument, call in calls:
                with pytest.raises(BadRequestError) as info:
                    await call()
                assert argument in str(info.value) and "UTF-8" in str(info.value)
            with pytest.raises(BadRequestError, match=r"key.*UTF-8"):
                async with md.watch(BAD_TEXT) as watcher:
                    await anext(watcher)
            # Nothing was sent: the connection still serves.
            assert await md.put("/fine", b"v") > 0

    run(body)


def test_every_client_error_is_a_catenary_error() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2) as client:
            md = client.metadata
            with pytest.raises(BadRequestError, match="key must be a str"):
                await md.put(b"/bytes-key", b"v")  # type: ignore[arg-type]
            with pytest.raises(BadRequestError, match="prefix must be a str"):
                await md.list(7)  # type: ignore[arg-type]
            with pytest.raises(BadRequestError, match="key must be a str"):
                await md.get(None)  # type: ignore[arg-type]
            with pytest.raises(BadRequestError, match="put not sent: cannot encode"):
                await md.put("/k", b"v", lease=2**70)
        for bad in ({"cluster_name": BAD_TEXT}, {"timeout_s": 0}):
            with pytest.raises(CatenaryError):
                Client([node.address], **bad)  # type: ignore[arg-type]
        with pytest.raises(CatenaryError, match="UTF-8"):
            Client(["h\udc80st:1"])
        with pytest.raises(CatenaryError):
            Client("nohost")

    run(body)
    sync = SyncClient(["127.0.0.1:1"], timeout_s=0.1)
    sync.close()
    with pytest.raises(CatenaryError, match="closed"):
        sync.metadata.get("/k")


def test_a_full_disk_is_a_retryable_disk_full_error_and_reads_still_work() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2) as client:
            await client.metadata.put("/k", b"v")
            node.hook = lambda req: (
                m.ErrorReply(req.id, m.ErrorCode.DISK_FULL, "disk full (No space left on device)")
                if isinstance(req, m.Put)
                else None
            )
            with pytest.raises(UnavailableError) as info:
                await client.metadata.put("/k", b"w", timeout_s=0.5)
            assert info.value.code == "disk_full" and "disk full" in str(info.value)
            assert not isinstance(info.value, IndeterminateError)
            kv = await client.metadata.get("/k")
            assert kv is not None and kv.value == b"v"
            node.hook = None  # space returned
            await client.metadata.put("/k", b"w")

    run(body)


def test_deadline_fifos_fire_a_shorter_deadline_in_time_and_drop_answered_requests() -> None:
    from catenary.client.client import _Deadlines, _NoAnswerError

    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = _Deadlines(0.01)
        long_wait: asyncio.Future[m.Reply] = loop.create_future()
        deadlines.add(loop, 5.0, long_wait)  # the timer is armed for 5 s from now...
        short: asyncio.Future[m.Reply] = loop.create_future()
        started = loop.time()
        deadlines.add(loop, 0.2, short)  # ...and moves earlier for this one
        with pytest.raises(_NoAnswerError):
            await asyncio.wait_for(short, 2.0)
        assert 0.2 <= loop.time() - started < 1.0
        assert not long_wait.done()
        long_wait.cancel()  # its caller went away
        # Answered requests leave the FIFO as the next ones are added.
        for _ in range(1000):
            answered: asyncio.Future[m.Reply] = loop.create_future()
            deadlines.add(loop, 5.0, answered)
            answered.cancel()
        assert len(deadlines._fifos[5.0]) == 1
        deadlines.close()

    asyncio.run(main())
