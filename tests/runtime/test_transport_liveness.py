"""Peer links notice a silent or stalled other side and redial (transport rule 11)."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable, Coroutine
from random import Random
from typing import Any, cast

import msgspec
import pytest

from catenary.core.raft.types import AppendEntries, Entry, Message, RequestVote
from catenary.runtime.transport import PeerTransport, TransportConfig
from catenary.server.config import NetworkSection
from catenary.wire import (
    LIVENESS_PROTOCOL_VERSION_MIN,
    FrameDecoder,
    FrameKind,
    HelloAck,
    LivenessClock,
    Role,
    encode_hello,
    encode_hello_reply,
    encode_ping,
    make_hello,
    tune_socket,
)

pytestmark = pytest.mark.timeout(30)

DECODER: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)
CLUSTER = "test"
# The bound under test is 0.5 s; detection is asserted within a generous 3 s.
LIVE = TransportConfig(
    handshake_timeout_ms=1000,
    connect_timeout_ms=500,
    reconnect_backoff_min_ms=10,
    reconnect_backoff_max_ms=100,
    ping_interval_ms=100,
    idle_timeout_ms=500,
)


def run(coro: Coroutine[Any, Any, None], timeout_s: float = 20.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout_s)

    asyncio.run(bounded())


async def until(predicate: Callable[[], bool], what: str, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def transport(node_id: int, config: TransportConfig = LIVE) -> PeerTransport[Message]:
    return PeerTransport(
        node_id,
        1,
        CLUSTER,
        "127.0.0.1",
        0,
        lambda peer, message: None,
        config,
        decoder=DECODER,
        rng=Random(node_id),
    )


class SilentPeer:
    """Answers a peer's hello as node 2, then never says another word.

    ``mode``: "reads" keeps reading (and records the frame kinds it gets),
    "stops" never reads again (the dialer's writes pile up in the socket).
    """

    def __init__(self, mode: str, version: int = LIVENESS_PROTOCOL_VERSION_MIN) -> None:
        self.mode = mode
        self.version = version
        self.accepted = 0
        self.kinds: list[int] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        decoder = FrameDecoder()
        frames = []
        while not frames:
            data = await reader.read(4096)
            if not data:
                return
            frames = decoder.feed(data)
        writer.write(encode_hello_reply(HelloAck(self.version, CLUSTER, 2, 1)))
        await writer.drain()
        if self.mode == "stops":
            await asyncio.Event().wait()  # never read again
        while data := await reader.read(4096):
            self.kinds += [f.kind for f in decoder.feed(data)]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()


@pytest.mark.parametrize("mode", ["reads", "stops"])
def test_a_silent_peer_is_detected_within_the_idle_bound_and_redialled(mode: str) -> None:
    async def main() -> None:
        fake = SilentPeer(mode)
        await fake.start()
        node = transport(1)
        await node.start()
        node.set_peer_address(2, fake.address)
        try:
            await until(lambda: node.connected(2), "the handshake", 3.0)
            assert fake.accepted == 1
            # Queue traffic that is never answered: only the silence tells.
            node.send(2, RequestVote(1, 2, 1, 0, 0))
            await until(lambda: not node.connected(2), "the silent link to be dropped", 3.0)
            await until(lambda: fake.accepted >= 2, "a redial", 3.0)
            await until(lambda: node.stats().peers[0].connects >= 2, "a second handshake", 3.0)
            if mode == "reads":
                assert FrameKind.PING in fake.kinds  # it asked before giving up
        finally:
            await node.close()
            await fake.stop()

    run(main())


def test_an_idle_but_healthy_link_is_kept_alive_by_pings() -> None:
    async def main() -> None:
        a, b = transport(1), transport(2)
        await a.start()
        await b.start()
        a.set_peer_address(2, b.listen_address)
        b.set_peer_address(1, a.listen_address)
        try:
            await until(lambda: a.connected(2) and b.connected(1), "the link", 3.0)
            await asyncio.sleep(1.5)  # three idle bounds with no traffic at all
            assert a.connected(2) and b.connected(1)
            assert a.stats().peers[0].connects == 1 and b.stats().peers[0].connects == 1
        finally:
            await a.close()
            await b.close()

    run(main())


def test_a_peer_of_protocol_2_gets_no_pings_and_is_not_timed_out() -> None:
    async def main() -> None:
        fake = SilentPeer("reads", version=2)
        await fake.start()
        node = transport(1)
        await node.start()
        node.set_peer_address(2, fake.address)
        try:
            await until(lambda: node.connected(2), "the handshake", 3.0)
            await asyncio.sleep(1.5)
            assert node.connected(2) and fake.accepted == 1
            assert FrameKind.PING not in fake.kinds
        finally:
            await node.close()
            await fake.stop()

    run(main())


def test_liveness_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="idle_timeout_ms"):
        TransportConfig(ping_interval_ms=500, idle_timeout_ms=500)
    with pytest.raises(ValueError, match="ping_interval_ms"):
        TransportConfig(ping_interval_ms=0)
    with pytest.raises(ValueError):
        LivenessClock(1.0, 0.5, 0.0)


def test_the_clock_pings_once_per_interval_and_declares_death_at_the_bound() -> None:
    clock = LivenessClock(1.0, 3.0, now=0.0)
    assert not clock.poll(0.5).ping
    first = clock.poll(1.0)
    assert first.ping and not first.dead
    assert not clock.poll(1.5).ping  # one ping per interval
    assert clock.poll(2.0).ping
    clock.heard(2.5)
    assert not clock.poll(3.0).dead and not clock.poll(3.0).ping
    assert clock.poll(5.5).dead


def test_sockets_get_keepalive_and_a_user_timeout() -> None:
    with socket.socket() as sock:
        tune_socket(sock, 2500)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2500
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 3


def test_a_peer_that_talks_but_never_reads_is_dropped_once_the_buffer_stops_draining() -> None:
    async def main() -> None:
        config = TransportConfig(
            connect_timeout_ms=500,
            reconnect_backoff_min_ms=10,
            reconnect_backoff_max_ms=100,
            ping_interval_ms=100,
            idle_timeout_ms=500,
            write_buffer_high_bytes=64 << 10,
        )
        node = transport(1, config)
        await node.start()
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
            writer.write(encode_hello(make_hello(CLUSTER, 3, 1, Role.PEER)))
            await until(lambda: node.connected(3), "the raw N3 registered", 3.0)
            blob = b"b" * (64 << 10)
            pinging = True

            async def keep_talking() -> None:  # heard from, yet never reads a byte
                while pinging:
                    writer.write(encode_ping())
                    await asyncio.sleep(0.05)

            talker = asyncio.create_task(keep_talking())
            for term in range(1, 200):
                node.send(3, AppendEntries(1, 3, term, 0, 0, (Entry(1, 1, 0, blob),), 0))
                await asyncio.sleep(0.001)
            await until(lambda: not node.connected(3), "the stalled link to be dropped", 3.0)
            pinging = False
            await talker
            writer.close()
        finally:
            await node.close()

    run(main())


def test_a_link_frozen_on_one_side_is_replaced_and_traffic_resumes() -> None:
    """A cut that heals: N2 stops reading and writing on the link (as if packets vanished)."""

    async def main() -> None:
        received: list[Message] = []
        a = transport(1)
        b = PeerTransport(
            2,
            1,
            CLUSTER,
            "127.0.0.1",
            0,
            lambda peer, message: received.append(message),
            LIVE,
            decoder=DECODER,
            rng=Random(2),
        )
        await a.start()
        await b.start()
        a.set_peer_address(2, b.listen_address)
        b.set_peer_address(1, a.listen_address)
        try:
            await until(lambda: a.connected(2) and b.connected(1), "the link", 3.0)
            frozen = b._peers[1].conns[1]
            assert frozen._transport is not None
            frozen._transport.pause_reading()  # N2 hears nothing more on it...
            if frozen._liveness_timer is not None:
                frozen._liveness_timer.cancel()  # ...and says nothing more on it
            frozen.liveness = None
            a.send(2, RequestVote(1, 2, 7, 0, 0))  # lost in the frozen link (Raft tolerates it)
            await until(lambda: a.stats().peers[0].connects >= 2, "N1 to redial", 3.0)
            await until(lambda: a.connected(2), "the new link", 3.0)
            a.send(2, RequestVote(1, 2, 8, 0, 0))
            await until(lambda: any(m.term == 8 for m in received), "traffic to resume", 3.0)
        finally:
            await a.close()
            await b.close()

    run(main())


def test_the_server_defaults_try_a_cut_off_peer_at_least_every_second() -> None:
    # A dial to a peer behind a network cut hangs until connect_timeout_ms; the
    # kernel resends the SYN only at 1 s, so a dial shorter than that sends one SYN.
    # After the cut heals the link waits for the next SYN: at most connect timeout +
    # the backoff cap.  (It was 2 s + 2 s, and a healed node stayed out for seconds.)
    options = NetworkSection().transport_options()
    assert options.connect_timeout_ms < 1000
    assert options.connect_timeout_ms + options.reconnect_backoff_max_ms <= 1000
    assert TransportConfig().connect_timeout_ms == options.connect_timeout_ms
    assert TransportConfig().reconnect_backoff_max_ms == options.reconnect_backoff_max_ms


def test_a_peer_that_stays_unreachable_is_still_redialled_at_least_every_second() -> None:
    # With the server's defaults, a peer that fails every dial for seconds (as during
    # a long cut) is dialled again at least every second once the backoff is capped,
    # so the moment it is reachable again costs at most that long.
    async def main() -> None:
        dials: list[float] = []
        loop = asyncio.get_running_loop()

        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            dials.append(loop.time())
            writer.transport.abort()  # the dial fails: no handshake

        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        node = transport(1, NetworkSection().transport_options())
        await node.start()
        node.set_peer_address(2, address)
        try:
            await asyncio.sleep(6.0)
        finally:
            await node.close()
            server.close()
            await server.wait_closed()
        assert len(dials) >= 6, dials
        gaps = [b - a for a, b in itertools.pairwise(dials)]
        # The backoff reaches its cap within the first ~2 s; every gap after is bounded.
        late = [g for a, g in zip(dials, gaps, strict=False) if a - dials[0] > 2.0]
        assert late, dials
        assert max(late) <= 1.0, [round(g, 3) for g in gaps]

    run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_failed_dials_leave_no_connection_behind(loop: str) -> None:
    # uvloop makes the protocol before connecting, so a dial that never connected
    # used to stay among the live connections until the transport closed: one more
    # per failed dial, for as long as a peer was cut off.
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # nothing listens there: every dial is refused
        config = TransportConfig(reconnect_backoff_min_ms=10, reconnect_backoff_max_ms=20)
        node = transport(1, config)
        await node.start()
        node.set_peer_address(2, f"127.0.0.1:{port}")
        try:
            await until(lambda: node.stats().peers[0].dial_failures >= 10, "10 dials", 5.0)
            assert node.live_connections <= 1  # at most the dial in progress
        finally:
            await node.close()

    if loop == "uvloop":
        uvloop.run(asyncio.wait_for(main(), 20.0))
    else:
        run(main())


class _ClosedUnderUs:
    """A socket closed without telling its protocol, as uvloop leaves one whose
    ``create_connection`` was cancelled by the dial timeout just as it connected:
    every write raises ``RuntimeError``."""

    def __init__(self, real: asyncio.BaseTransport) -> None:
        self.real = real

    def write(self, data: object) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    writelines = write

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_socket_closed_under_the_connection_is_dropped_and_redialled() -> None:
    # N1 holds the preferred connection (it dialled): while it believed that dead
    # connection alive it refused N2's dials as duplicates and failed every write and
    # ping, and the link never came back.
    async def main() -> None:
        received: list[Message] = []
        a = transport(1)
        b = PeerTransport(
            2,
            1,
            CLUSTER,
            "127.0.0.1",
            0,
            lambda peer, message: received.append(message),
            LIVE,
            decoder=DECODER,
            rng=Random(2),
        )
        await a.start()
        await b.start()
        a.set_peer_address(2, b.listen_address)
        b.set_peer_address(1, a.listen_address)
        try:
            await until(lambda: a.connected(2) and b.connected(1), "the link", 3.0)
            ghost = a._peers[2].conns[1]
            real = ghost._transport
            assert real is not None
            real.set_protocol(asyncio.Protocol())  # the connection is never told...
            real.abort()  # ...that its socket is gone
            ghost._transport = cast(asyncio.Transport, _ClosedUnderUs(real))
            a.send(2, RequestVote(1, 2, 7, 0, 0))
            await until(lambda: ghost.closed, "the dead connection to be dropped", 3.0)
            await until(lambda: a.connected(2) and b.connected(1), "the new link", 3.0)
            a.send(2, RequestVote(1, 2, 8, 0, 0))
            await until(lambda: any(m.term == 8 for m in received), "traffic to resume", 3.0)
        finally:
            await a.close()
            await b.close()

    run(main())
