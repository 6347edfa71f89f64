"""A client never waits on a stalled node past its bounds (client rule 8, connection rule 6)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest

from catenary.client import Client, ConnectionRefusedByNodeError, UnavailableError

from .fakenode import FakeNode

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")
# Bounds under test are a fraction of a second; behaviour is asserted within generous waits.
LIVE = {"ping_interval_s": 0.1, "idle_timeout_s": 0.5}


def run(body: Callable[..., Awaitable[T]], nodes: int = 1, version: int = 3) -> T:
    async def main() -> T:
        fakes = [await FakeNode(node_id=i + 1).start() for i in range(nodes)]
        for fake in fakes:
            fake.protocol_version = version
        try:
            async with asyncio.timeout(20):
                return await body(*fakes)
        finally:
            for fake in fakes:
                await fake.stop()

    return asyncio.run(main())


@asynccontextmanager
async def black_hole(kind: str) -> AsyncIterator[str]:
    """An address that takes the connection but never answers.

    "backlog": a listening socket that never accepts (the kernel completes the
    connect); "mute": a node that accepts and reads but never answers the hello.
    """
    if kind == "backlog":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen(8)
            yield f"127.0.0.1:{sock.getsockname()[1]}"
        return
    mute = await FakeNode().start()
    mute.hello_delay_s = 3600
    try:
        yield mute.address
    finally:
        await mute.stop()


async def until(predicate: Callable[[], bool], what: str, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("kind", ["backlog", "mute"])
def test_a_black_hole_first_address_leaves_time_for_the_second(kind: str) -> None:
    async def body(node: FakeNode) -> None:
        async with black_hole(kind) as hole:
            # The deadline equals the default connect timeout: the dial to the
            # black hole must not be allowed to use all of it.
            async with Client([hole, node.address], timeout_s=1.0) as client:
                assert (await client.status()).node == node.node_id
            async with Client([hole, node.address], timeout_s=1.0) as client:
                assert await client.metadata.put("/k", b"v") == 1

    run(body)


@pytest.mark.parametrize("kind", ["backlog", "mute"])
def test_connect_dials_every_address_at_once(kind: str) -> None:
    async def body(node: FakeNode) -> None:
        async with black_hole(kind) as hole:
            async with Client([hole, node.address], timeout_s=1.0) as client:
                assert await client.connect() == [node.address]
                # The next call goes to the connected node at once.
                assert (await client.status(timeout_s=0.2)).node == node.node_id
            async with Client([hole], timeout_s=0.3, connect_timeout_s=0.2) as client:
                with pytest.raises(UnavailableError, match="no node reachable"):
                    await client.connect()

    run(body)


def test_a_node_that_goes_silent_is_abandoned_and_reads_go_elsewhere() -> None:
    async def body(a: FakeNode, b: FakeNode) -> None:
        async with Client([a.address, b.address], timeout_s=3, attempt_timeout_s=0.3, **LIVE) as c:
            assert (await c.status()).node == a.node_id
            stalled = c._conns[a.address]
            a.silent = True
            assert (await c.status()).node == b.node_id
            # The stalled connection is dropped within the bounds, not left to the kernel.
            await until(lambda: stalled.closed, "the stalled connection to close", 3.0)
            assert (await c.status()).node == b.node_id

    run(body, nodes=2)


def test_a_silent_node_is_detected_by_pings_when_nothing_is_asked() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2, **LIVE) as client:
            await client.status()
            conn = client._conns[node.address]
            node.silent = True
            await until(lambda: conn.closed, "the idle, silent connection to close", 3.0)
            assert "heard nothing" in conn.close_reason

    run(body)


def test_an_idle_connection_to_a_live_node_stays_open() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2, **LIVE) as client:
            await client.status()
            conn = client._conns[node.address]
            await asyncio.sleep(1.5)  # three idle bounds without a request
            assert not conn.closed and node.pings > 0 and node.connections_accepted == 1

    run(body)


def test_a_node_of_protocol_1_is_never_pinged() -> None:
    async def body(node: FakeNode) -> None:
        async with Client([node.address], timeout_s=2, **LIVE) as client:
            await client.status()
            conn = client._conns[node.address]
            await asyncio.sleep(1.0)
            assert not conn.closed and node.pings == 0

    run(body, version=1)


def test_liveness_options_are_validated() -> None:
    with pytest.raises(ValueError, match="idle_timeout_s"):
        Client(["127.0.0.1:1"], ping_interval_s=1.0, idle_timeout_s=1.0)
    with pytest.raises(ValueError, match="ping_interval_s"):
        Client(["127.0.0.1:1"], ping_interval_s=0)


def test_connect_reports_a_refusal_rather_than_unavailability() -> None:
    async def body(node: FakeNode) -> None:
        async with black_hole("backlog") as hole:
            addresses = [hole, node.address]
            async with Client(addresses, cluster_name="other", connect_timeout_s=0.3) as client:
                with pytest.raises(ConnectionRefusedByNodeError, match="cluster"):
                    await client.connect(timeout_s=1.0)

    run(body)
