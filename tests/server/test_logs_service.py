"""The log service of one node, in process: the API a client sees (server/logs.py, L1-L5).

Each test runs a real ``Server`` (log store on disk, fsync on) in this process and talks to
it through the real client over TCP; multi-node behaviour is in test_logs_process.py.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from catenary.api.messages import LogGap, LogRecord
from catenary.client import Client, NotFoundError, SealedError, TooLargeError
from catenary.client.errors import BadRequestError
from catenary.server.config import LogsSection, MetadataSection, ServerConfig
from catenary.server.node import Server

pytestmark = pytest.mark.timeout(60)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(
    directory: Path,
    *,
    metadata: str = "replicated",
    provider: str = "replicated",
    client_port: int = 0,
    peer_port: int = 0,
) -> ServerConfig:
    return ServerConfig(
        data_dir=str(directory),
        peer_address=f"127.0.0.1:{peer_port or _port()}",
        client_address=f"127.0.0.1:{client_port or _port()}",
        admin_address="",
        metadata=MetadataSection(server=metadata),
        logs=LogsSection(provider=provider, append_timeout_ms=2000, controller_interval_ms=200),
    )


async def _logs_ready(client: Client, count: int = 4) -> None:
    for _ in range(200):
        try:
            if len(await client.logs.list(timeout_s=1)) == count:
                return
        except Exception:  # not provisioned yet
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the logs were not created")


class Node:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.server = Server(config)

    async def __aenter__(self) -> Client:
        await self.server.start()
        self.client = Client([self.config.client_address], timeout_s=5)
        await _logs_ready(self.client)
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.server.stop()


async def _read_all(client: Client, log: int, start: int, end: int) -> list[LogRecord | LogGap]:
    return [item async for item in client.logs.read(log, start, end)]


@pytest.mark.parametrize(
    ("metadata", "provider"), [("replicated", "replicated"), ("local", "local")]
)
def test_append_then_read_back_in_order(tmp_path: Path, metadata: str, provider: str) -> None:
    async def main() -> None:
        async with Node(_config(tmp_path, metadata=metadata, provider=provider)) as client:
            first = await client.logs.append_result(0, [b"a", b"b", b"c"])
            assert (first.first_lsn, first.last_lsn) == (1, 3)
            assert await client.logs.append(0, b"d") == 4
            appender = client.logs.appender(0, batch_records_max=16)
            lsns = await asyncio.gather(*(appender.append(b"e%d" % i) for i in range(50)))
            assert sorted(lsns) == list(range(5, 55))
            items = await _read_all(client, 0, 1, 55)
            assert [i.lsn for i in items if isinstance(i, LogRecord)] == list(range(1, 55))
            by_lsn = {i.lsn: i.payload for i in items if isinstance(i, LogRecord)}
            assert by_lsn[1] == b"a" and by_lsn[4] == b"d"
            assert {by_lsn[lsn] for lsn in lsns} == {b"e%d" % i for i in range(50)}
            tail = await client.logs.find_tail(0)
            assert tail.tail == 55 and not tail.sealed
            # Other logs are independent.
            assert await client.logs.append(3, b"x") == 1

    asyncio.run(main())


def test_a_tailing_read_sees_what_is_appended_after_it_started(tmp_path: Path) -> None:
    async def main() -> None:
        async with Node(_config(tmp_path)) as client:
            await client.logs.append(0, b"before")
            seen: list[bytes] = []

            async def tail() -> None:
                async for item in client.logs.read(0, 1, wait_ms=200):
                    assert isinstance(item, LogRecord)
                    seen.append(item.payload)
                    if len(seen) == 3:
                        return

            reader = asyncio.create_task(tail())
            await asyncio.sleep(0.2)
            await client.logs.append(0, [b"after1", b"after2"])
            await asyncio.wait_for(reader, 10)
            assert seen == [b"before", b"after1", b"after2"]

    asyncio.run(main())


def test_bad_input_gets_its_own_error_and_the_node_serves_on(tmp_path: Path) -> None:
    async def main() -> None:
        async with Node(_config(tmp_path)) as client:
            with pytest.raises(NotFoundError, match="unknown log 9"):
                await client.logs.append(9, b"x")
            with pytest.raises(TooLargeError, match=r"logs\.record_bytes_max"):
                await client.logs.append(0, b"x" * ((1 << 20) + 1))
            with pytest.raises(BadRequestError):
                await client.logs.append(0, [])
            with pytest.raises(BadRequestError):
                async for _ in client.logs.read(0, 0):
                    pass
            with pytest.raises(NotFoundError):
                await client.logs.find_tail(77)
            assert await client.logs.append(0, b"still serving") == 1

    asyncio.run(main())


def test_a_read_below_the_trim_point_is_a_trim_gap(tmp_path: Path) -> None:
    async def main() -> None:
        async with Node(_config(tmp_path)) as client:
            for i in range(10):
                await client.logs.append(1, b"r%d" % i)
            trimmed = await client.logs.trim(1, 4)
            assert trimmed.trim_point == 4
            # A trim never goes back, and is clipped to the committed tail.
            assert (await client.logs.trim(1, 2)).trim_point == 4
            assert (await client.logs.trim(1, 1000)).trim_point == 10
            await client.logs.append(1, b"r10")
            items = await _read_all(client, 1, 1, 12)
            assert items[0] == LogGap(1, 11, "trim")
            assert items[1:] == [LogRecord(11, b"r10")]
            assert (await client.logs.find_tail(1)).trim_point == 10

    asyncio.run(main())


def test_seal_stops_appends_until_reconfigure_and_the_log_reads_across_segments(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with Node(_config(tmp_path)) as client:
            for i in range(5):
                await client.logs.append(2, b"s%d" % i)
            assert await client.logs.seal(2) == 6
            # A sealed log that takes no new segment: the node says so before the
            # caller's deadline, and the client raises SealedError (not a timeout).
            with pytest.raises(SealedError, match="sealed"):
                await client.logs.append(2, b"refused", timeout_s=1.5)
            info = await client.logs.reconfigure(2, replication="{node: 1}")
            assert len(info.segments) == 2 and info.segments[0].end_lsn == 6
            lsn = await client.logs.append(2, b"moved")
            items = await _read_all(client, 2, 1, lsn + 1)
            payloads = [i.payload for i in items if isinstance(i, LogRecord)]
            assert payloads[:5] == [b"s%d" % i for i in range(5)] and payloads[-1] == b"moved"
            # The append sent while the log was sealed may have been kept (at least once).
            assert len(payloads) in (6, 7)
            with pytest.raises(BadRequestError, match="replication"):
                await client.logs.reconfigure(2, replication="{node: x}")

    asyncio.run(main())


@pytest.mark.parametrize(
    ("metadata", "provider"), [("replicated", "replicated"), ("local", "local")]
)
def test_a_restart_keeps_every_record_and_appends_resume_without_a_command(
    tmp_path: Path, metadata: str, provider: str
) -> None:
    client_port, peer_port = _port(), _port()

    async def once(round_: int) -> list[LogRecord | LogGap]:
        config = _config(
            tmp_path,
            metadata=metadata,
            provider=provider,
            client_port=client_port,
            peer_port=peer_port,
        )
        async with Node(config) as client:
            lsn = await client.logs.append(0, [b"round%d.%d" % (round_, i) for i in range(3)])
            assert lsn == 3 * round_
            return await _read_all(client, 0, 1, lsn + 1)

    asyncio.run(once(1))
    asyncio.run(once(2))
    items = asyncio.run(once(3))
    assert [i.payload for i in items if isinstance(i, LogRecord)] == [
        b"round%d.%d" % (r, i) for r in (1, 2, 3) for i in range(3)
    ]
    assert [i.lsn for i in items if isinstance(i, LogRecord)] == list(range(1, 10))
