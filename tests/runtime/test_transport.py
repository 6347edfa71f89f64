"""The peer transport and framed connections over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Coroutine, Iterator
from random import Random
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catenary.core.raft.types import AppendEntries, Entry, Message, RequestVote, TimeoutNow
from catenary.runtime.transport import (
    ConnectionConfig,
    FramedConnection,
    PeerTransport,
    TransportConfig,
    parse_address,
)
from catenary.wire import (
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameKind,
    HelloAck,
    PeerService,
    Role,
    decode_hello_reply,
    decode_peer_message,
    encode_frame,
    encode_hello,
    make_hello,
)

pytestmark = pytest.mark.timeout(30)

DECODER: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)
FAST = TransportConfig(
    handshake_timeout_ms=1000,
    connect_timeout_ms=500,
    reconnect_backoff_min_ms=10,
    reconnect_backoff_max_ms=100,
)
CLUSTER = "test"


LOOP_FACTORY: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def event_loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every socket test runs on both loops: the server runs on uvloop when importable."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        LOOP_FACTORY[0] = uvloop.new_event_loop
    else:
        LOOP_FACTORY[0] = asyncio.new_event_loop
    yield str(request.param)
    LOOP_FACTORY[0] = asyncio.new_event_loop


def run(coro: Coroutine[Any, Any, None], timeout_s: float = 20.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout_s)

    with asyncio.Runner(loop_factory=LOOP_FACTORY[0]) as runner:
        runner.run(bounded())


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class Node:
    """A transport plus the messages it received, in order."""

    def __init__(
        self,
        node_id: int,
        generation: int = 1,
        *,
        cluster: str = CLUSTER,
        port: int = 0,
        config: TransportConfig = FAST,
    ) -> None:
        self.received: list[tuple[int, Message]] = []
        self.transport: PeerTransport[Message] = PeerTransport(
            node_id,
            generation,
            cluster,
            "127.0.0.1",
            port,
            self._on_message,
            config,
            decoder=DECODER,
            rng=Random(node_id),
        )

    def _on_message(self, peer_id: int, message: Message) -> None:
        self.received.append((peer_id, message))

    @property
    def address(self) -> str:
        return self.transport.listen_address

    def got(self, peer_id: int) -> list[Message]:
        return [m for p, m in self.received if p == peer_id]


async def start(*nodes: Node) -> None:
    for node in nodes:
        await node.transport.start()
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.transport.set_peer_address(b.transport.node_id, b.address)


async def settled(*nodes: Node) -> None:
    """Until every pair holds exactly one connection, the one the lower id dialed."""

    def check() -> bool:
        for n in nodes:
            peers = n.transport.stats().peers
            if len(peers) != len(nodes) - 1:
                return False
            for s in peers:
                if n.transport.connection_count(s.peer_id) != 1:
                    return False
                if s.connection_dialer != min(n.transport.node_id, s.peer_id):
                    return False
        return True

    await until(check, "one connection per pair, dialed by the lower id")


async def stop(*nodes: Node) -> None:
    for node in nodes:
        await node.transport.close()
        assert node.transport.live_connections == 0


def vote(src: int, dst: int, term: int) -> RequestVote:
    return RequestVote(src, dst, term, 0, 0)


# ------------------------------------------------------------------ tests


def test_two_nodes_exchange_messages_both_ways() -> None:
    async def main() -> None:
        a, b = Node(1), Node(2)
        await start(a, b)
        try:
            await settled(a, b)
            big = AppendEntries(1, 2, 3, 0, 0, (Entry(3, 1, 0, b"x" * 100_000),), 0)
            for term in range(1, 51):
                assert a.transport.send(2, vote(1, 2, term))
                assert b.transport.send(1, vote(2, 1, term))
            a.transport.send(2, big)
            await until(lambda: len(a.got(2)) == 50 and len(b.got(1)) == 51, "all messages")
            assert b.got(1) == [vote(1, 2, t) for t in range(1, 51)] + [big]
            assert a.got(2) == [vote(2, 1, t) for t in range(1, 51)]
            stats = a.transport.stats()
            assert stats.peers[0].sent_messages == 51
            assert stats.peers[0].received_messages == 50
        finally:
            await stop(a, b)

    run(main())


def test_three_nodes_settle_on_one_connection_per_pair_dialed_by_the_lower_id() -> None:
    async def main() -> None:
        nodes = [Node(1), Node(2), Node(3)]
        await start(*nodes)
        try:
            ids = [1, 2, 3]
            await settled(*nodes)
            for n, me in zip(nodes, ids):
                for p in ids:
                    if p != me:
                        n.transport.send(p, TimeoutNow(me, p, 7))
            await until(lambda: all(len(n.received) == 2 for n in nodes), "all-to-all")
            for n, me in zip(nodes, ids):
                assert sorted(n.received, key=lambda r: r[0]) == [
                    (p, TimeoutNow(p, me, 7)) for p in ids if p != me
                ]
        finally:
            await stop(*nodes)

    run(main())


def test_higher_id_alone_knowing_the_address_still_connects() -> None:
    async def main() -> None:
        a, b = Node(1), Node(2)
        await a.transport.start()
        await b.transport.start()
        try:
            b.transport.set_peer_address(1, a.address)  # a does not know b's address
            await until(lambda: a.transport.connected(2), "b dialed a")
            a.transport.send(2, vote(1, 2, 1))  # rides the connection b dialed
            await until(lambda: b.got(1) == [vote(1, 2, 1)], "a's message")
        finally:
            await stop(a, b)

    run(main())


def test_switching_to_the_preferred_connection_loses_nothing() -> None:
    async def main() -> None:
        a, b = Node(1), Node(2)
        await a.transport.start()
        await b.transport.start()
        try:
            b.transport.set_peer_address(1, a.address)  # only the higher id dials at first
            await until(lambda: a.transport.connected(2), "b's connection")
            term = 0
            for burst in range(30):
                if burst == 10:
                    a.transport.set_peer_address(2, b.address)  # a's dial will win
                for _ in range(20):
                    term += 1
                    a.transport.send(2, vote(1, 2, term))
                    b.transport.send(1, vote(2, 1, term))
                await asyncio.sleep(0.002)
            await until(lambda: len(a.received) == term and len(b.received) == term, "all")
            await settled(a, b)
            # Frames may be reordered across the switch, never lost or duplicated.
            assert sorted(m.term for m in b.got(1)) == list(range(1, term + 1))
            assert sorted(m.term for m in a.got(2)) == list(range(1, term + 1))
            assert a.transport.stats().peers[0].dropped_queue_full == 0
        finally:
            await stop(a, b)

    run(main())


def test_peer_restart_traffic_resumes_and_queued_messages_are_delivered() -> None:
    async def main() -> None:
        a, b = Node(1), Node(2)
        await start(a, b)
        b2: Node | None = None
        try:
            await until(lambda: a.transport.connected(2), "connected")
            a.transport.send(2, vote(1, 2, 1))
            await until(lambda: b.got(1) == [vote(1, 2, 1)], "first message")
            port = b.transport.port
            await b.transport.close()
            await until(lambda: not a.transport.connected(2), "a notices b is gone")
            for term in range(2, 6):
                a.transport.send(2, vote(1, 2, term))  # queued while b is down
            await until(lambda: a.transport.stats().peers[0].dial_failures >= 2, "failed redials")
            b2 = Node(2, generation=2, port=port)
            await b2.transport.start()
            b2.transport.set_peer_address(1, a.address)
            await until(lambda: len(b2.got(1)) == 4, "queued messages after restart")
            assert b2.got(1) == [vote(1, 2, t) for t in range(2, 6)]
            b2.transport.send(1, vote(2, 1, 9))
            await until(lambda: a.got(2) == [vote(2, 1, 9)], "reply from the new incarnation")
            assert a.transport.stats().peers[0].generation == 2
        finally:
            await stop(a, *([b2] if b2 else []))

    run(main())


def test_older_generation_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        a, b = Node(1), Node(2, generation=5)
        await start(a, b)
        try:
            await until(lambda: a.transport.connected(2), "connected")
            old = Node(2, generation=4)
            await old.transport.start()
            old.transport.set_peer_address(1, a.address)
            await until(lambda: a.transport.stats().refused_hellos >= 1, "refusal")
            assert not old.transport.connected(1)
            a.transport.send(2, vote(1, 2, 1))
            await until(lambda: b.got(1) == [vote(1, 2, 1)], "the current incarnation still served")
            await old.transport.close()
        finally:
            await stop(a, b)

    with caplog.at_level(logging.INFO, logger="catenary.runtime.transport"):
        run(main())
    assert "stale_generation" in caplog.text
    assert "N2:4 is older than N2:5" in caplog.text


def test_another_clusters_node_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        a, stranger = Node(1), Node(2, cluster="elsewhere")
        await start(a, stranger)
        try:
            await until(
                lambda: (
                    a.transport.stats().refused_hellos >= 1
                    and stranger.transport.stats().refused_hellos >= 1
                ),
                "refusals both ways",
            )
            await asyncio.sleep(0.05)
            assert not a.transport.connected(2)
            assert not stranger.transport.connected(1)
            assert not a.transport.send(3, vote(1, 3, 1))  # unknown peer: dropped at once
        finally:
            await stop(a, stranger)

    with caplog.at_level(logging.INFO, logger="catenary.runtime.transport"):
        run(main())
    assert "cluster 'elsewhere' is not this cluster ('test')" in caplog.text
    assert "refused the hello (cluster)" in caplog.text


async def _raw(port: int, data: bytes, *, then: bytes = b"", close_write: bool = False) -> bytes:
    """Send ``data`` to the port (and ``then`` once it answered); return all it sent back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        answer = b""
        if then:
            answer = await asyncio.wait_for(reader.read(4096), 5.0)
            writer.write(then)
        if close_write:
            writer.write_eof()
        return answer + await asyncio.wait_for(reader.read(), 5.0)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def test_bad_input_drops_only_that_connection(caplog: pytest.LogCaptureFixture) -> None:
    hello = encode_hello(make_hello(CLUSTER, 3, 1, Role.PEER))
    answers: dict[str, bytes] = {}

    async def main() -> None:
        a, b = Node(1), Node(2)
        await start(a, b)
        try:
            await until(lambda: a.transport.connected(2), "connected")
            port = a.transport.port
            answers["garbage"] = await _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answers["unknown kind"] = await _raw(port, b"\x00\x00\x00\x01\x99x")
            answers["not hello first"] = await _raw(port, encode_frame(FrameKind.PEER, b"\x90"))
            answers["bad hello"] = await _raw(
                port, encode_frame(FrameKind.HELLO, b"\x93\x01\x02\x03")
            )
            answers["truncated"] = await _raw(port, hello[:-3], close_write=True)
            answers["oversized"] = await _raw(
                port, hello, then=struct.pack(">IB", 1 << 30, FrameKind.PEER)
            )
            answers["bad payload"] = await _raw(
                port, hello, then=encode_frame(FrameKind.PEER, b"\x00\xc1")
            )
            answers["no service tag"] = await _raw(
                port, hello, then=encode_frame(FrameKind.PEER, b"")
            )
            answers["unknown service"] = await _raw(
                port, hello, then=encode_frame(FrameKind.PEER, b"\x07\x90")
            )
            answers["wrong kind"] = await _raw(
                port, hello + encode_frame(FrameKind.REQUEST, b"\x90")
            )
            for term in range(1, 4):
                a.transport.send(2, vote(1, 2, term))
                b.transport.send(1, vote(2, 1, term))
            await until(lambda: len(a.got(2)) == 3 and len(b.got(1)) == 3, "peers unaffected")
            assert a.transport.connection_count(2) == 1
            assert a.transport.stats().bad_connections >= 9
            assert a.got(3) == []
        finally:
            await stop(a, b)

    with caplog.at_level(logging.INFO, logger="catenary.runtime.transport"):
        run(main())
    # A refused or malformed hello is answered, then the socket closed; framing errors just close.
    decoder = FrameDecoder()
    (reply,) = decoder.feed(answers["bad hello"])
    with pytest.raises(Exception, match="malformed"):
        decode_hello_reply(reply, cluster_name=CLUSTER)
    for case in ("garbage", "unknown kind", "not hello first", "truncated"):
        assert answers[case] == b"", case
    for case in ("oversized", "bad payload", "no service tag", "unknown service", "wrong kind"):
        frames = FrameDecoder().feed(answers[case])
        assert [f.kind for f in frames] == [FrameKind.HELLO_ACK], case
    text = caplog.text
    assert "FrameTooLarge: frame of 1195725861 bytes exceeds the limit of 4096 bytes" in text
    assert "UnknownFrameKind: unknown frame kind 153" in text
    assert "expected HELLO as the first frame" in text
    assert "refused the hello (malformed)" in text
    assert "FrameTooLarge: frame of 1073741829 bytes" in text
    assert "malformed payload in frame of kind 16" in text
    assert "a peer frame without a service tag" in text
    assert "peer frame for service tag 7, which this node does not serve (it serves raft=0)" in text
    assert "unexpected frame kind 32; expected PEER" in text
    assert "closed by the other side" in text


def test_silent_connection_is_closed_after_the_handshake_timeout() -> None:
    async def main() -> None:
        config = TransportConfig(handshake_timeout_ms=100)
        a = Node(1, config=config)
        await a.transport.start()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await _raw(a.transport.port, b"") == b""
            assert loop.time() - started < 4.0  # the timeout, not _raw's own 5 s bound
        finally:
            await stop(a)

    run(main())


async def closed_peer_port() -> int:
    """A port node 2 listened on and closed: its peer is down until a node starts there."""
    probe = Node(2)
    await probe.transport.start()
    port: int = probe.transport.port
    await probe.transport.close()
    return port


def quick_redial(**bounds: int) -> TransportConfig:
    """Short reconnect backoff, so a peer that comes up is reached within tens of ms."""
    return TransportConfig(
        reconnect_backoff_min_ms=10, reconnect_backoff_max_ms=50, connect_timeout_ms=500, **bounds
    )


def test_send_queue_bound_drops_the_oldest() -> None:
    async def main() -> None:
        port = await closed_peer_port()
        a = Node(1, config=quick_redial(send_queue_messages_max=10))
        await a.transport.start()
        b: Node | None = None
        try:
            a.transport.set_peer_address(2, f"127.0.0.1:{port}")
            for term in range(1, 101):
                assert a.transport.send(2, vote(1, 2, term))
            stats = a.transport.stats().peers[0]
            assert stats.queued_messages == 10
            assert stats.dropped_queue_full == 90
            b = Node(2, port=port)
            await b.transport.start()
            await until(lambda: len(b.got(1)) == 10, "the newest ten")
            assert b.got(1) == [vote(1, 2, t) for t in range(91, 101)]
        finally:
            await stop(a, *([b] if b else []))

    run(main())


def test_frames_queued_too_long_are_dropped_not_sent() -> None:
    """Rule 8: a peer back after a cut gets the frames of the last
    ``send_queue_age_max_ms``, not everything queued while it was away."""

    async def main() -> None:
        port = await closed_peer_port()
        a = Node(1, config=quick_redial(send_queue_age_max_ms=300))
        await a.transport.start()
        b: Node | None = None
        try:
            a.transport.set_peer_address(2, f"127.0.0.1:{port}")
            for term in range(1, 51):
                assert a.transport.send(2, vote(1, 2, term))
            await asyncio.sleep(0.5)  # older than the bound by the time the link is up
            for term in range(51, 56):
                assert a.transport.send(2, vote(1, 2, term))
            b = Node(2, port=port)
            await b.transport.start()
            await until(lambda: len(b.got(1)) == 5, "the five recent frames")
            await asyncio.sleep(0.1)
            assert b.got(1) == [vote(1, 2, t) for t in range(51, 56)]
            stats = a.transport.stats().peers[0]
            assert stats.dropped_stale == 50
            assert stats.queued_messages == 0 and stats.dropped_queue_full == 0
        finally:
            await stop(a, *([b] if b else []))

    run(main())


def test_slow_reader_backpressure_bounds_memory_and_keeps_the_newest() -> None:
    async def main() -> None:
        config = TransportConfig(
            send_queue_messages_max=20,
            write_buffer_high_bytes=256 << 10,
            write_batch_bytes_max=1 << 20,
            # The raw N3 below neither reads nor answers pings: not what this test is about.
            ping_interval_ms=30_000,
            idle_timeout_ms=60_000,
        )
        a = Node(1, config=config)
        await a.transport.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", a.transport.port)
            writer.write(encode_hello(make_hello(CLUSTER, 3, 1, Role.PEER)))
            await until(lambda: a.transport.connected(3), "raw N3 registered")
            blob = b"b" * (256 << 10)
            total = 0
            for _burst in range(40):  # ~40 MB offered while N3 reads nothing
                for _ in range(4):
                    total += 1
                    a.transport.send(
                        3, AppendEntries(1, 3, total, 0, 0, (Entry(1, 1, 0, blob),), 0)
                    )
                await asyncio.sleep(0.002)
            stats = a.transport.stats().peers[0]
            assert stats.queued_messages == 20  # the bound held
            assert stats.dropped_queue_full > 0
            assert stats.sent_messages + stats.dropped_queue_full + 20 == total
            # N3 starts reading: everything not dropped arrives, in order, newest last.
            decoder = FrameDecoder()
            terms: list[int] = []
            expected = total - stats.dropped_queue_full
            while len(terms) < expected:
                chunk = await asyncio.wait_for(reader.read(1 << 20), 5.0)
                assert chunk, "connection closed early"
                for frame in decoder.feed(chunk):  # the HELLO_ACK first, then PEER frames
                    if frame.kind == FrameKind.PEER:
                        message = decode_peer_message(frame, DECODER)
                        assert isinstance(message, AppendEntries)
                        terms.append(message.term)
            assert terms == sorted(terms)
            assert terms[-1] == total
            assert len(terms) == expected
            writer.close()
        finally:
            await stop(a)

    run(main(), timeout_s=25.0)


def test_send_queue_byte_bound() -> None:
    async def main() -> None:
        config = TransportConfig(frame_bytes_max=1 << 12, send_queue_bytes_max=1 << 12)
        a = Node(1, config=config)
        await a.transport.start()
        try:
            a.transport.set_peer_address(2, "127.0.0.1:1")  # never connects
            # Each frame is 1024 bytes (header, service tag, message): four fit the bound.
            payload = AppendEntries(1, 2, 1, 0, 0, (Entry(1, 1, 0, b"y" * 999),), 0)
            for _ in range(20):
                a.transport.send(2, payload)
            stats = a.transport.stats().peers[0]
            assert stats.queued_bytes <= 1 << 12
            assert stats.queued_messages == 4
            assert stats.dropped_queue_full == 16
            huge = AppendEntries(1, 2, 1, 0, 0, (Entry(1, 1, 0, b"z" * 5000),), 0)
            assert not a.transport.send(2, huge)
            assert a.transport.stats().dropped_too_large == 1
        finally:
            await stop(a)

    run(main())


def test_framed_connection_reusable_as_dialer_and_acceptor() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: list[Frame] = []
        config = ConnectionConfig(handshake_timeout_ms=1000)

        def answer(conn: FramedConnection, hello: object) -> HelloAck:
            return HelloAck(1, CLUSTER, 9, 3)

        def on_frame(conn: FramedConnection, frame: Frame) -> None:
            got.append(frame)
            conn.write(encode_frame(FrameKind.REPLY, frame.payload[::-1]))

        server = await loop.create_server(
            lambda: FramedConnection(config=config, on_frame=on_frame, answer=answer),
            "127.0.0.1",
            0,
        )
        replies: list[Frame] = []
        try:
            port = server.sockets[0].getsockname()[1]
            _, conn = await loop.create_connection(
                lambda: FramedConnection(
                    config=config,
                    on_frame=lambda c, f: replies.append(f),
                    hello=make_hello(CLUSTER, 0, 0, Role.CLIENT),
                    cluster_name=CLUSTER,
                    expect_node_id=9,
                ),
                "127.0.0.1",
                port,
            )
            await conn.handshake
            assert conn.peer_ack == HelloAck(1, CLUSTER, 9, 3)
            conn.write(
                encode_frame(FrameKind.REQUEST, b"abc") + encode_frame(FrameKind.REQUEST, b"de")
            )
            await until(lambda: len(replies) == 2, "replies")
            assert replies == [Frame(FrameKind.REPLY, b"cba"), Frame(FrameKind.REPLY, b"ed")]
            assert got == [Frame(FrameKind.REQUEST, b"abc"), Frame(FrameKind.REQUEST, b"de")]
            conn.close("done")
            assert conn.closed
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_retired_connection_delivers_what_was_already_sent() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        config = ConnectionConfig(handshake_timeout_ms=1000, retire_timeout_ms=2000)
        at_server: list[Frame] = []
        at_client: list[Frame] = []
        accepted: list[FramedConnection] = []
        reasons: list[str] = []

        def factory() -> FramedConnection:
            conn = FramedConnection(
                config=config,
                on_frame=lambda c, f: at_server.append(f),
                on_close=lambda c, r: reasons.append(r),
                answer=lambda c, h: HelloAck(PROTOCOL_VERSION, CLUSTER, 1, 1),
            )
            accepted.append(conn)
            return conn

        server = await loop.create_server(factory, "127.0.0.1", 0)
        try:
            _, client = await loop.create_connection(
                lambda: FramedConnection(
                    config=config,
                    on_frame=lambda c, f: at_client.append(f),
                    hello=make_hello(CLUSTER, 2, 1, Role.PEER),
                    cluster_name=CLUSTER,
                ),
                "127.0.0.1",
                server.sockets[0].getsockname()[1],
            )
            await client.handshake
            await until(lambda: len(accepted) == 1 and accepted[0].ready, "accepted")
            sent = [Frame(FrameKind.PEER, i.to_bytes(2, "big") * 50) for i in range(200)]
            client.write(b"".join(encode_frame(f.kind, f.payload) for f in sent))
            # Retire before the server read a byte: what the client sent must still arrive.
            accepted[0].retire("superseded")
            assert accepted[0].retiring
            accepted[0].write(encode_frame(FrameKind.PEER, b"dropped: retiring"))
            await until(lambda: client.closed and accepted[0].closed, "both sides closed")
            assert at_server == sent
            assert at_client == []
            assert reasons == ["retired: both sides finished"]
        finally:
            server.close()
            await server.wait_closed()

    run(main())


class FakeTransport:
    """Just enough of asyncio.Transport to drive a FramedConnection without a socket."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.eof = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 9) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof
        self.written += data

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(
    prefix=st.sampled_from(["none", "hello", "hello+frames"]),
    noise=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
    flip=st.one_of(st.none(), st.tuples(st.integers(min_value=0), st.integers(1, 255))),
)
def test_acceptor_fed_any_bytes_never_raises(
    prefix: str, noise: bytes, cuts: list[int], flip: tuple[int, int] | None
) -> None:
    sent = [Frame(FrameKind.PEER, bytes([i]) * i) for i in range(5)]
    stream = bytearray()
    if prefix != "none":
        stream += encode_hello(make_hello(CLUSTER, 2, 1, Role.PEER))
    if prefix == "hello+frames":
        stream += b"".join(encode_frame(f.kind, f.payload) for f in sent)
    stream += noise
    if flip is not None and stream:
        stream[flip[0] % len(stream)] ^= flip[1]
    points = [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]

    async def main() -> None:
        got: list[Frame] = []
        closes: list[str] = []
        conn = FramedConnection(
            config=ConnectionConfig(hello_frame_bytes_max=256, frame_bytes_max=4096),
            on_frame=lambda c, f: got.append(f),
            on_close=lambda c, r: closes.append(r),
            answer=lambda c, h: HelloAck(PROTOCOL_VERSION, CLUSTER, 1, 1),
        )
        fake = FakeTransport()
        conn.connection_made(fake)  # type: ignore[arg-type]
        last = 0
        for point in points:
            conn.data_received(bytes(stream[last:point]))
            last = point
        conn.eof_received()
        conn.connection_lost(None)
        assert conn.closed and fake.closed
        assert len(closes) == 1 and closes[0]
        # Whatever happened, what was delivered is a prefix of what a valid stream held,
        # and the node only ever answered with one handshake frame.
        if flip is None and prefix == "hello+frames":
            # Noise in the same read as valid frames kills the whole read (rule 4 of the codec).
            assert got[: len(sent)] == sent[: len(got)]
        answers = FrameDecoder().feed(bytes(fake.written))
        assert len(answers) <= 1
        assert all(a.kind in (FrameKind.HELLO_ACK, FrameKind.HELLO_REFUSED) for a in answers)
        if got:
            assert answers[0].kind == FrameKind.HELLO_ACK

    with asyncio.Runner(loop_factory=LOOP_FACTORY[0]) as runner:
        runner.run(main())


def test_dialer_that_reaches_the_wrong_node_drops_it() -> None:
    async def main() -> None:
        a, b = Node(1), Node(2)
        await a.transport.start()
        await b.transport.start()
        try:
            c = Node(3)
            await c.transport.start()
            c.transport.set_peer_address(1, b.address)  # stale address: b is N2
            await until(lambda: c.transport.stats().peers[0].dial_failures >= 2, "failed dials")
            assert not c.transport.connected(1)
            assert not c.transport.connected(2)
            await c.transport.close()
        finally:
            await stop(a, b)

    run(main())


def test_frames_queued_in_one_loop_iteration_leave_in_one_write() -> None:
    async def main() -> None:
        a, b = Node(1), Node(2)
        await start(a, b)
        try:
            await settled(a, b)
            before = a.transport.stats().peers[0].writes
            for term in range(1, 201):
                a.transport.send(2, vote(1, 2, term))
            await until(lambda: len(b.got(1)) == 200, "the batch")
            assert a.transport.stats().peers[0].writes == before + 1
            assert b.got(1) == [vote(1, 2, t) for t in range(1, 201)]
        finally:
            await stop(a, b)

    run(main())


def test_write_batches_are_bounded_in_bytes() -> None:
    async def main() -> None:
        config = TransportConfig(write_batch_bytes_max=1000, reconnect_backoff_min_ms=10)
        a, b = Node(1, config=config), Node(2, config=config)
        await start(a, b)
        try:
            await settled(a, b)
            before = a.transport.stats().peers[0].writes
            message = AppendEntries(1, 2, 1, 0, 0, (Entry(1, 1, 0, b"q" * 400),), 0)
            for _ in range(10):
                a.transport.send(2, message)  # ~420 B frames: two per write
            await until(lambda: len(b.got(1)) == 10, "all frames")
            assert a.transport.stats().peers[0].writes == before + 5
        finally:
            await stop(a, b)

    run(main())


def test_on_message_exception_is_logged_and_the_link_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        a, b = Node(1), Node(2)
        seen: list[Message] = []

        def fragile(peer_id: int, message: Message) -> None:
            seen.append(message)
            if len(seen) == 1:
                raise RuntimeError("host bug")

        b.transport._services[PeerService.RAFT] = (DECODER, fragile)
        await start(a, b)
        try:
            await settled(a, b)
            a.transport.send(2, vote(1, 2, 1))
            a.transport.send(2, vote(1, 2, 2))
            await until(lambda: len(seen) == 2, "both messages")
            assert b.transport.connection_count(1) == 1
        finally:
            await stop(a, b)

    with caplog.at_level(logging.ERROR, logger="catenary.runtime.transport"):
        run(main())
    assert "on_message failed for a message from N1" in caplog.text
    assert "host bug" in caplog.text


def test_address_change_redials_and_remove_peer_forgets() -> None:
    async def main() -> None:
        a, b = Node(1), Node(2)
        await start(a, b)
        b_moved: Node | None = None
        try:
            await settled(a, b)
            await b.transport.close()
            b_moved = Node(2, generation=2)  # a new port
            await b_moved.transport.start()
            a.transport.set_peer_address(2, b_moved.address)
            a.transport.send(2, vote(1, 2, 3))
            await until(lambda: b_moved.got(1) == [vote(1, 2, 3)], "message at the new address")
            a.transport.remove_peer(2)
            assert not a.transport.connected(2)
            assert not a.transport.send(2, vote(1, 2, 4))
            assert a.transport.stats().peers == []
        finally:
            await stop(a, *([b_moved] if b_moved else []))

    run(main())


def test_config_and_address_validation() -> None:
    with pytest.raises(ValueError):
        TransportConfig(reconnect_backoff_min_ms=100, reconnect_backoff_max_ms=10)
    with pytest.raises(ValueError):
        TransportConfig(send_queue_messages_max=0)
    with pytest.raises(ValueError):
        TransportConfig(reconnect_jitter_ratio=1.5)
    with pytest.raises(ValueError):
        TransportConfig(frame_bytes_max=2)
    assert parse_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    for bad in ("nohost", ":80", "h:", "h:x", "h:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_backoff_grows_bounded_and_jittered() -> None:
    config = TransportConfig(reconnect_backoff_min_ms=50, reconnect_backoff_max_ms=2000)
    rng = Random(1)
    delays = [config.backoff_ms(attempt, rng) for attempt in range(12)]
    for attempt, delay in enumerate(delays):
        ceiling = min(2000, 50 * 2**attempt)
        assert ceiling * 0.5 <= delay <= ceiling
    replay = Random(1)
    assert delays == [config.backoff_ms(attempt, replay) for attempt in range(12)]
    assert config.backoff_ms(10_000, rng) <= 2000


def test_a_second_service_shares_the_link_with_raft() -> None:
    # What the loglet's traffic will do: its own tag, decoder and handler, one connection.
    loglet_tag = 1
    log_decoder: msgspec.msgpack.Decoder[list[str]] = msgspec.msgpack.Decoder(list[str])

    async def main() -> None:
        a, b = Node(1), Node(2)
        at_b: list[tuple[int, list[str]]] = []
        a_log = a.transport.add_service(loglet_tag, log_decoder, lambda p, m: None)
        b.transport.add_service(loglet_tag, log_decoder, lambda p, m: at_b.append((p, m)))
        with pytest.raises(ValueError, match="already served"):
            b.transport.add_service(PeerService.RAFT, log_decoder, lambda p, m: None)
        await start(a, b)
        try:
            await settled(a, b)
            assert a_log.send(2, ["append", "x"])
            a.transport.send(2, vote(1, 2, 1))
            assert a_log.send(2, ["append", "y"])
            await until(lambda: len(at_b) == 2 and len(b.got(1)) == 1, "both services")
            assert at_b == [(1, ["append", "x"]), (1, ["append", "y"])]
            assert b.got(1) == [vote(1, 2, 1)]
            assert b.transport.connection_count(1) == 1
        finally:
            await stop(a, b)

    run(main())


def test_a_frame_for_a_service_not_served_drops_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        a, b = Node(1), Node(2)
        a_log = a.transport.add_service(1, DECODER, lambda p, m: None)  # b serves Raft only
        await start(a, b)
        try:
            await settled(a, b)
            before = b.transport.stats().bad_connections
            a_log.send(2, vote(1, 2, 1))
            await until(lambda: b.transport.stats().bad_connections > before, "refused")
            # The link comes back (the refusal is per connection) and Raft still flows.
            a.transport.send(2, vote(1, 2, 2))
            await until(lambda: vote(1, 2, 2) in b.got(1), "raft after the refusal")
            assert vote(1, 2, 1) not in b.got(1)
        finally:
            await stop(a, b)

    with caplog.at_level(logging.INFO, logger="catenary.runtime.transport"):
        run(main())
    assert "peer frame for service tag 1, which this node does not serve (it serves raft=0)" in (
        caplog.text
    )


def test_a_peer_link_lost_and_restored_is_one_rate_limited_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="catenary.runtime.transport")
    changes: list[tuple[int, bool]] = []

    async def main() -> None:
        a = Node(1)
        a.transport._on_link = lambda peer, up: changes.append((peer, up))
        b = Node(2)
        await start(a, b)
        nodes = [a, b]
        try:
            await until(lambda: a.transport.connected(2), "connected")
            port = b.transport.port
            for generation in (2, 3):
                await nodes[-1].transport.close()
                await until(lambda: not a.transport.connected(2), "a notices b is gone")
                await until(
                    lambda: a.transport.stats().peers[0].dial_failures >= 2, "failed redials"
                )
                again = Node(2, generation=generation, port=port)
                nodes.append(again)
                await again.transport.start()
                again.transport.set_peer_address(1, a.address)
                await until(lambda: a.transport.connected(2), "reconnected")
        finally:
            await stop(*nodes[:1], *nodes[-1:])

    run(main())
    assert changes == [(2, True), (2, False), (2, True), (2, False), (2, True)]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    link = [line for line in lines if line.startswith("N1: peer link")]
    # The first of each kind is logged; the second loss and restore fall within the
    # interval (10 s by default) and are only counted.
    assert link[0].startswith("N1: peer link to N2:1 up (dialed by N1)")
    assert link[1].startswith("N1: peer link to N2 lost: ")
    assert link[2].startswith("N1: peer link to N2:2 restored (dialed by N")
    assert " s down" in link[2]
    assert len(link) == 3, link
    unreachable = [line for line in lines if line.startswith("N1 cannot reach")]
    assert len(unreachable) <= 2, unreachable  # one per outage, not one per redial
    # Connection-level opens and orderly closes are no longer INFO.
    assert not [line for line in lines if "connected to N" in line]


def test_the_link_log_interval_is_a_bound_like_the_others() -> None:
    assert TransportConfig(link_log_interval_ms=0).link_log_interval_ms == 0
    with pytest.raises(ValueError, match="link_log_interval_ms"):
        TransportConfig(link_log_interval_ms=-1)
