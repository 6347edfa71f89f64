"""The client port answers pings, pings silent clients and drops them (client port rule 8)."""

from __future__ import annotations

import asyncio

import pytest

from catenary.api import messages as api
from catenary.client import Client, ConnectionRefusedByNodeError, UnavailableError
from catenary.runtime.client_port import Begun, ClientPort, ClientPortConfig, Emit
from catenary.runtime.metrics import ServerMetrics
from catenary.wire import (
    PROTOCOL_VERSION,
    FrameDecoder,
    FrameKind,
    Hello,
    Role,
    encode_hello,
    encode_ping,
)

pytestmark = pytest.mark.timeout(30)

STATUS = api.NodeStatus("blue", 1, 1, "replicated", "leader", 1, 1, 0, 0, (), True)


class Handler:
    def identity(self) -> tuple[str, int, int]:
        return "blue", 1, 1

    async def handle(self, request: api.Request) -> api.Reply:
        return api.StatusReply(request.id, STATUS)

    async def watch(self, request: api.Watch, emit: Emit) -> None:
        await asyncio.sleep(3600)

    def begin_gets(self, requests: list[api.Get]) -> Begun | None:
        return None

    def begin_puts(self, requests: list[api.Put]) -> Begun | None:
        return None


async def start_port(**config: int) -> tuple[ClientPort, str]:
    port = ClientPort(Handler(), ServerMetrics(lambda: STATUS), ClientPortConfig(**config))
    await port.start("127.0.0.1", 0)
    assert port._server is not None
    host, number = port._server.sockets[0].getsockname()[:2]
    return port, f"{host}:{number}"


async def handshake(
    address: str, version: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    hello = Hello(
        protocol_version=version,
        cluster_name="blue",
        node_id=0,
        generation=0,
        role=str(Role.CLIENT),
    )
    writer.write(encode_hello(hello))
    await reader.read(4096)  # the ack
    return reader, writer


def test_a_silent_client_is_pinged_then_dropped() -> None:
    async def main() -> None:
        port, address = await start_port(ping_interval_ms=100, idle_timeout_ms=500)
        try:
            reader, writer = await handshake(address, PROTOCOL_VERSION)
            kinds: list[int] = []
            decoder = FrameDecoder()
            async with asyncio.timeout(3.0):  # the bound is 0.5 s
                while data := await reader.read(4096):
                    kinds += [f.kind for f in decoder.feed(data)]
            assert FrameKind.PING in kinds
            await asyncio.sleep(0.05)
            assert port.connection_count == 0
            writer.close()
        finally:
            await port.close()

    asyncio.run(main())


def test_a_ping_is_answered_and_an_old_client_is_left_alone() -> None:
    async def main() -> None:
        port, address = await start_port(ping_interval_ms=100, idle_timeout_ms=500)
        try:
            reader, writer = await handshake(address, 2)
            writer.write(encode_ping(b"abc"))
            data = await asyncio.wait_for(reader.read(4096), 3.0)
            (pong,) = FrameDecoder().feed(data)
            assert pong == (FrameKind.PONG, b"abc")
            await asyncio.sleep(1.0)  # two idle bounds: a version-2 client is never timed out
            assert port.connection_count == 1
            writer.close()
        finally:
            await port.close()

    asyncio.run(main())


def test_an_idle_client_of_this_version_keeps_its_connection() -> None:
    async def main() -> None:
        port, address = await start_port(ping_interval_ms=100, idle_timeout_ms=500)
        try:
            async with Client([address], ping_interval_s=0.1, idle_timeout_s=0.5) as client:
                await client.status()
                conn = client._conns[address]
                await asyncio.sleep(1.5)
                assert not conn.closed and port.connection_count == 1
                await client.status()
        finally:
            await port.close()

    asyncio.run(main())


def test_liveness_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="idle_timeout_ms"):
        ClientPortConfig(ping_interval_ms=1000, idle_timeout_ms=900)


def test_connections_that_never_send_a_request_are_closed_and_free_their_slots() -> None:
    async def main() -> None:
        port, address = await start_port(
            connections_max=2, request_idle_ms=300, ping_interval_ms=1000, idle_timeout_ms=60_000
        )
        try:
            idle = [await handshake(address, PROTOCOL_VERSION) for _ in range(2)]
            assert port.connection_count == 2
            # The node is full; the idle connections go within the bound and a client gets in.
            async with Client([address], timeout_s=10) as client:
                await client.status()
            for reader, writer in idle:
                async with asyncio.timeout(5):
                    while await reader.read(4096):
                        pass  # closed by the node
                writer.close()
        finally:
            await port.close()

    asyncio.run(main())


def test_a_full_node_is_unavailable_and_the_client_tries_the_others() -> None:
    async def main() -> None:
        full, full_address = await start_port(connections_max=1, idle_timeout_ms=60_000)
        other, other_address = await start_port()
        try:
            _, writer = await handshake(full_address, PROTOCOL_VERSION)
            async with Client([full_address], timeout_s=0.5) as client:
                with pytest.raises(UnavailableError) as caught:
                    await client.status()
                assert "too many client connections" in str(caught.value)
                assert not isinstance(caught.value, ConnectionRefusedByNodeError)
            async with Client([full_address, other_address], timeout_s=5) as client:
                await client.status()
            writer.close()
        finally:
            await full.close()
            await other.close()

    asyncio.run(main())
