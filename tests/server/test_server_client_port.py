"""The client port: handshake, replies by id, bad input drops only that connection."""

from __future__ import annotations

import asyncio
import struct

import msgspec
import pytest

from catenary.api import messages as api
from catenary.api.errors import ServiceError
from catenary.runtime.client_port import Begun, ClientPort, ClientPortConfig, Emit
from catenary.runtime.metrics import ServerMetrics
from catenary.runtime.rpc import call, call_many
from catenary.wire import FrameDecoder, FrameKind, encode_frame, encode_hello, make_hello
from catenary.wire.handshake import Role

pytestmark = pytest.mark.timeout(30)

STATUS = api.NodeStatus("blue", 1, 1, "replicated", "leader", 1, 1, 0, 0, (), True)


class FakeNode:
    def __init__(self) -> None:
        self.gate = asyncio.Event()

    def identity(self) -> tuple[str, int, int]:
        return "blue", 1, 1

    async def handle(self, request: api.Request) -> api.Reply:
        if isinstance(request, api.Get):
            if request.key == "slow":
                await self.gate.wait()
            if request.key == "boom":
                raise RuntimeError("bug")
            if request.key == "err":
                raise ServiceError(api.ErrorCode.NOT_LEADER, "no", leader=2, leader_address="x:1")
            return api.GetReply(request.id, None, 7)
        return api.StatusReply(request.id, STATUS)

    async def watch(self, request: api.Watch, emit: Emit) -> None:
        await asyncio.sleep(3600)

    # The metadata family (client_port rule 7): None serves each request with ``handle``.
    def begin_gets(self, requests: list[api.Get]) -> Begun | None:
        return None

    def begin_puts(self, requests: list[api.Put]) -> Begun | None:
        return None


async def start_port(**config: int) -> tuple[ClientPort, str]:
    port = ClientPort(FakeNode(), ServerMetrics(lambda: STATUS), ClientPortConfig(**config))
    await port.start("127.0.0.1", 0)
    assert port._server is not None
    host, number = port._server.sockets[0].getsockname()[:2]
    return port, f"{host}:{number}"


async def raw(address: str, *chunks: bytes) -> bytes:
    """Send each chunk after the node answered the previous one; all it sent until it closed."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    received = b""
    for number, chunk in enumerate(chunks):
        writer.write(chunk)
        if number < len(chunks) - 1:
            received += await asyncio.wait_for(reader.read(65536), 5)
    received += await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return received


def hello(cluster: str = "blue") -> bytes:
    return encode_hello(make_hello(cluster, 0, 0, Role.CLIENT))


def test_requests_are_answered_by_id_and_errors_mapped() -> None:
    async def main() -> None:
        port, address = await start_port()
        try:
            replies = await call_many(
                address,
                [api.Get(5, "a"), api.GetStatus(6), api.Get(7, "boom"), api.Get(8, "err")],
                cluster_name="blue",
            )
            assert replies[0] == api.GetReply(5, None, 7)
            assert replies[1] == api.StatusReply(6, STATUS)
            assert isinstance(replies[2], api.ErrorReply) and replies[2].code == "internal"
            assert replies[3] == api.ErrorReply(8, "not_leader", "no", 2, "x:1")
            # A client that names no cluster is accepted.
            assert await call(address, api.Get(1, "a")) == api.GetReply(1, None, 7)
        finally:
            await port.close()

    asyncio.run(main())


def test_a_one_shot_call_answers_the_nodes_pings_while_it_waits() -> None:
    """A request the node takes long to answer (a join waiting for its commit): the node
    pings the silent caller, and the one-shot call answers and keeps waiting."""

    async def main() -> None:
        port, address = await start_port(ping_interval_ms=50, idle_timeout_ms=2000)
        node = port.handler
        assert isinstance(node, FakeNode)
        try:
            waiting = asyncio.ensure_future(call(address, api.Get(1, "slow"), timeout_s=10))
            await asyncio.sleep(0.4)  # several ping intervals with the request in progress
            assert not waiting.done()
            node.gate.set()
            assert await waiting == api.GetReply(1, None, 7)
        finally:
            await port.close()

    asyncio.run(main())


def test_bad_input_drops_only_that_connection() -> None:
    async def main() -> None:
        port, address = await start_port(frame_bytes_max=1 << 16)
        try:
            # Not even a hello: dropped without an answer.
            assert await raw(address, b"GET / HTTP/1.1\r\n\r\n") == b""
            # Another cluster: refused with the reason, then closed.
            refused = await raw(address, hello("green"))
            assert refused[4] == FrameKind.HELLO_REFUSED and b"green" in refused
            # After the handshake: undecodable payload, unknown kind, oversized length.
            for bad in (
                encode_frame(FrameKind.REQUEST, b"\xc1junk"),
                struct.pack(">IB", 1, 99) + b"x",
                struct.pack(">IB", 1 << 20, FrameKind.REQUEST),
                encode_frame(FrameKind.REQUEST, msgspec.msgpack.encode(["nope", 1])),
            ):
                answer = await raw(address, hello(), bad)
                assert answer[4] == FrameKind.HELLO_ACK  # only the ack, then closed
                assert len(answer) == struct.unpack(">I", answer[:4])[0] + 5
            # The node still serves everyone else.
            assert await call(address, api.Get(2, "a"), cluster_name="blue") == api.GetReply(
                2, None, 7
            )
            registry = port.metrics.registry
            for reason in ("MalformedPayload", "UnknownFrameKind", "FrameTooLarge"):
                labels = {"reason": reason}
                count = registry.get_sample_value(
                    "catenary_client_connections_dropped_total", labels
                )
                assert count is not None and count >= 1, reason
        finally:
            await port.close()

    asyncio.run(main())


def test_inflight_bound_answers_overloaded() -> None:
    async def main() -> None:
        port, address = await start_port(inflight_max=1)
        node = port.handler
        assert isinstance(node, FakeNode)

        async def release() -> None:
            await asyncio.sleep(0.2)
            node.gate.set()

        try:
            releaser = asyncio.ensure_future(release())
            replies = await call_many(
                address, [api.Get(1, "slow"), api.Get(2, "a")], cluster_name="blue"
            )
            await releaser
        finally:
            await port.close()
        assert replies[0] == api.GetReply(1, None, 7)
        assert isinstance(replies[1], api.ErrorReply) and replies[1].code == "overloaded"

    asyncio.run(main())


def test_handshake_timeout_closes_silent_connections() -> None:
    async def main() -> None:
        port, address = await start_port(handshake_timeout_ms=100)
        try:
            host, number = address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(number))
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        finally:
            await port.close()

    asyncio.run(main())


async def one_read(
    host: str, number: int, requests: list[api.Request], *, count: int
) -> list[api.Reply]:
    """Send ``requests`` in one write (the node reads them in one go); ``count`` replies."""
    reader, writer = await asyncio.open_connection(host, number)
    writer.write(
        hello()
        + b"".join(encode_frame(FrameKind.REQUEST, msgspec.msgpack.encode(r)) for r in requests)
    )
    decoder = FrameDecoder(1 << 20)
    got: list[api.Reply] = []
    async with asyncio.timeout(5):
        while len(got) < count:
            for frame in decoder.feed(await reader.read(65536)):
                if frame.kind == FrameKind.REPLY:
                    got.append(api.reply_decoder.decode(frame.payload))
    writer.close()
    return got


class PutNode(FakeNode):
    """Begins puts without a task (client_port rule 7); the rest through ``handle``."""

    def __init__(self) -> None:
        super().__init__()
        self.futures: list[asyncio.Future[object]] = []

    def begin_puts(self, requests: list[api.Put]) -> Begun | None:
        if any(r.key == "refused" for r in requests):
            raise ServiceError(api.ErrorCode.NOT_LEADER, "no", leader=2, leader_address="x:1")
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        keys = {r.key for r in requests}
        if "fails" in keys:
            future.set_exception(ServiceError(api.ErrorCode.INDETERMINATE, "maybe"))
        elif "bug" in keys:
            future.set_result("not a result")
        elif "hang" not in keys:
            future.set_result(3)

        def finish(outcome: object) -> list[api.Reply]:
            if not isinstance(outcome, int):
                raise RuntimeError("bug")
            return [api.OkReply(r.id, f"put {outcome}") for r in requests]

        return Begun([], future, requests, finish)


def test_begun_puts_answer_map_errors_count_toward_the_bound_and_cancel_on_close() -> None:
    async def main() -> None:
        node = PutNode()
        port = ClientPort(node, ServerMetrics(lambda: STATUS), ClientPortConfig(), metadata=node)
        await port.start("127.0.0.1", 0)
        assert port._server is not None
        host, number = port._server.sockets[0].getsockname()[:2]
        try:
            replies = [
                (await one_read(host, number, [request], count=1))[0]
                for request in (
                    api.Put(1, "a", b"v"),
                    api.Put(2, "refused", b"v"),
                    api.Put(3, "fails", b"v"),
                    api.Put(4, "bug", b"v"),
                    api.Get(5, "a"),
                )
            ]
            assert replies[0] == api.OkReply(1, "put 3")
            assert replies[1] == api.ErrorReply(2, "not_leader", "no", 2, "x:1")
            assert isinstance(replies[2], api.ErrorReply) and replies[2].code == "indeterminate"
            assert isinstance(replies[3], api.ErrorReply) and replies[3].code == "internal"
            assert replies[4] == api.GetReply(5, None, 7)
            # A request left pending counts toward inflight_max...
            port.config = ClientPortConfig(inflight_max=1)  # for connections from now on
            reader, writer = await asyncio.open_connection(host, number)
            writer.write(hello())
            for request in (api.Put(6, "hang", b"v"), api.Put(7, "a", b"v")):
                writer.write(encode_frame(FrameKind.REQUEST, msgspec.msgpack.encode(request)))
            decoder = FrameDecoder(1 << 20)
            got: list[api.Reply] = []
            async with asyncio.timeout(5):
                while not got:
                    for frame in decoder.feed(await reader.read(65536)):
                        if frame.kind == FrameKind.REPLY:
                            got.append(api.reply_decoder.decode(frame.payload))
            assert isinstance(got[0], api.ErrorReply) and got[0].id == 7
            assert got[0].code == "overloaded"
            hung = node.futures[-1]
            assert not hung.done()
            # ...and is cancelled once its connection is gone.
            writer.close()
            async with asyncio.timeout(5):
                while not hung.cancelled():
                    await asyncio.sleep(0.01)
        finally:
            await port.close()

    asyncio.run(main())


class BatchNode(FakeNode):
    """Serves linearizable gets in batches (client_port rule 7)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.futures: list[asyncio.Future[object]] = []

    def begin_gets(self, requests: list[api.Get]) -> Begun | None:
        if any(r.key == "not-here" for r in requests):
            raise ServiceError(api.ErrorCode.NOT_LEADER, "no", leader=2, leader_address="x:1")
        refused: list[api.Reply] = [
            api.ErrorReply(r.id, "bad_request", "bad key") for r in requests if r.key == "bad"
        ]
        batched = [r for r in requests if r.key != "bad"]
        self.batches.append([r.key for r in batched])
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        if any(r.key == "hang" for r in batched):
            pass
        elif any(r.key == "lost" for r in batched):
            future.set_exception(ServiceError(api.ErrorCode.UNAVAILABLE, "leader lost"))
        else:
            future.set_result(11)

        def finish(revision: object) -> list[api.Reply]:
            assert isinstance(revision, int)
            return [api.GetReply(r.id, None, revision) for r in batched]

        return Begun(refused, future, batched, finish)


def test_gets_of_one_read_share_one_begin_and_keep_their_ids() -> None:
    async def main() -> None:
        node = BatchNode()
        port = ClientPort(node, ServerMetrics(lambda: STATUS), ClientPortConfig(), metadata=node)
        await port.start("127.0.0.1", 0)
        assert port._server is not None
        host, number = port._server.sockets[0].getsockname()[:2]

        try:
            got = await one_read(
                host,
                number,
                [
                    api.Get(1, "a"),
                    api.GetStatus(2),
                    api.Get(3, "bad"),
                    api.Get(4, "b"),
                    api.Get(5, "c", stale=True),  # stale: not batched
                ],
                count=5,
            )
            by_id = {r.id: r for r in got}
            assert by_id[1] == api.GetReply(1, None, 11)
            assert by_id[4] == api.GetReply(4, None, 11)
            assert isinstance(by_id[2], api.StatusReply)
            assert by_id[3] == api.ErrorReply(3, "bad_request", "bad key")
            assert by_id[5] == api.GetReply(5, None, 7)  # served by handle()
            assert node.batches == [["a", "b"]]
            # A failed read fails each of its gets with the same error.
            got = await one_read(host, number, [api.Get(6, "x"), api.Get(7, "lost")], count=2)
            assert sorted((r.id, getattr(r, "code", "")) for r in got) == [
                (6, "unavailable"),
                (7, "unavailable"),
            ]
            # A refused batch answers each get.
            got = await one_read(host, number, [api.Get(8, "x"), api.Get(9, "not-here")], count=2)
            assert sorted((r.id, getattr(r, "code", "")) for r in got) == [
                (8, "not_leader"),
                (9, "not_leader"),
            ]
            # A batch counts each of its gets toward inflight_max.
            port.config = ClientPortConfig(inflight_max=2)
            got = await one_read(
                host, number, [api.Get(10, "hang"), api.Get(11, "y"), api.Get(12, "z")], count=1
            )
            assert [(r.id, getattr(r, "code", "")) for r in got] == [(12, "overloaded")]
            assert node.batches[-1] == ["hang", "y"]
            hung = node.futures[-1]
            async with asyncio.timeout(5):
                while not hung.cancelled():  # its connection closed
                    await asyncio.sleep(0.01)
            stats = port.metrics.requests
            assert stats.count("get", "ok") == 3 and stats.count("get", "overloaded") == 1
            assert stats.count("get", "bad_request") == 1 and stats.count("get", "unavailable") == 2
        finally:
            await port.close()

    asyncio.run(main())


class PutBatchNode(FakeNode):
    """Proposes the puts of one read together (client_port rule 7)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    def begin_puts(self, requests: list[api.Put]) -> Begun | None:
        refused: list[api.Reply] = [
            api.ErrorReply(r.id, "too_large", "value too large") for r in requests if not r.value
        ]
        batched = [r for r in requests if r.value]
        self.batches.append([r.key for r in batched])
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        # One outcome per put: applied, or an error of its own.
        future.set_result(
            [
                ServiceError(api.ErrorCode.INDETERMINATE, "maybe") if r.key == "lost" else n
                for n, r in enumerate(batched)
            ]
        )

        def finish(outcomes: object) -> list[api.Reply]:
            assert isinstance(outcomes, list)
            return [
                o.reply(r.id) if isinstance(o, ServiceError) else api.OkReply(r.id, f"put {o}")
                for r, o in zip(batched, outcomes, strict=True)
            ]

        return Begun(refused, future, batched, finish)


def test_puts_of_one_read_are_proposed_together_each_with_its_outcome() -> None:
    async def main() -> None:
        node = PutBatchNode()
        port = ClientPort(node, ServerMetrics(lambda: STATUS), ClientPortConfig(), metadata=node)
        await port.start("127.0.0.1", 0)
        assert port._server is not None
        host, number = port._server.sockets[0].getsockname()[:2]
        try:
            requests: list[api.Request] = [
                api.Put(1, "a", b"v"),
                api.Put(2, "empty", b""),
                api.Get(3, "g"),  # not a put: served by handle()
                api.Put(4, "lost", b"v"),
                api.Put(5, "b", b"v"),
            ]
            replies = await one_read(host, number, requests, count=len(requests))
            got = {reply.id: reply for reply in replies}
            assert node.batches == [["a", "lost", "b"]]
            assert got[1] == api.OkReply(1, "put 0")
            assert got[2] == api.ErrorReply(2, "too_large", "value too large")
            assert got[3] == api.GetReply(3, None, 7)
            assert isinstance(got[4], api.ErrorReply) and got[4].code == "indeterminate"
            assert got[5] == api.OkReply(5, "put 2")
            stats = port.metrics.requests
            assert stats.count("put", "ok") == 2
            assert stats.count("put", "indeterminate") == stats.count("put", "too_large") == 1
        finally:
            await port.close()

    asyncio.run(main())
