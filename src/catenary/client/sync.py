"""A blocking wrapper of the asyncio client, for scripts.

It runs one private event loop in a daemon thread and submits every call to
it, so it works from any thread (including one that has its own loop) and
keeps connections open between calls.  Errors are the client's own typed
errors.  ``close()`` (or leaving the ``with`` block) stops the loop and joins
the thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from catenary.api import messages as m
from catenary.api.types import Event, KeyValue
from catenary.client.client import Client, GetResult, ListResult, ServerSet
from catenary.client.errors import ClientClosedError
from catenary.client.logs import AppendResult, LogInfo, LogItem, TailInfo, TrimResult

T = TypeVar("T")


class SyncClient:
    """``SyncClient(addresses, **client_options)``: the ``Client`` API, blocking."""

    def __init__(self, addresses: str | Sequence[str], **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="catenary-sync-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._client = self._run(self._make(addresses, options))
        except BaseException:
            self._stop_loop()
            raise
        self.metadata = SyncMetadataClient(self)
        self.logs = SyncLogsClient(self)

    @staticmethod
    async def _make(addresses: str | Sequence[str], options: dict[str, Any]) -> Client:
        return Client(addresses, **options)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise ClientClosedError("SyncClient is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._client.close())
        finally:
            self._closed = True
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def client(self) -> Client:
        """The wrapped asyncio client (use only from coroutines submitted to its loop)."""
        return self._client

    def status(self, address: str | None = None, *, timeout_s: float | None = None) -> m.NodeStatus:
        return self._run(self._client.status(address, timeout_s=timeout_s))

    def nodes(self, *, timeout_s: float | None = None) -> tuple[m.NodeInfo, ...]:
        return self._run(self._client.nodes(timeout_s=timeout_s))

    def servers(self, *, timeout_s: float | None = None) -> ServerSet:
        return self._run(self._client.servers(timeout_s=timeout_s))

    def add_server(self, node: int, *, timeout_s: float | None = None) -> str:
        return self._run(self._client.add_server(node, timeout_s=timeout_s))

    def remove_server(self, node: int, *, timeout_s: float | None = None) -> str:
        return self._run(self._client.remove_server(node, timeout_s=timeout_s))

    def provision(self, cluster_name: str = "", *, timeout_s: float | None = None) -> str:
        return self._run(self._client.provision(cluster_name, timeout_s=timeout_s))


class SyncMetadataClient:
    def __init__(self, owner: SyncClient) -> None:
        self._owner = owner
        self._metadata = owner.client.metadata

    def get(
        self, key: str, *, stale: bool = False, timeout_s: float | None = None
    ) -> KeyValue | None:
        return self._owner._run(self._metadata.get(key, stale=stale, timeout_s=timeout_s))

    def get_result(
        self, key: str, *, stale: bool = False, timeout_s: float | None = None
    ) -> GetResult:
        return self._owner._run(self._metadata.get_result(key, stale=stale, timeout_s=timeout_s))

    def put(
        self,
        key: str,
        value: bytes,
        *,
        if_absent: bool = False,
        if_version: int | None = None,
        lease: int = 0,
        timeout_s: float | None = None,
    ) -> int:
        return self._owner._run(
            self._metadata.put(
                key,
                value,
                if_absent=if_absent,
                if_version=if_version,
                lease=lease,
                timeout_s=timeout_s,
            )
        )

    def delete(
        self, key: str, *, if_version: int | None = None, timeout_s: float | None = None
    ) -> int:
        return self._owner._run(
            self._metadata.delete(key, if_version=if_version, timeout_s=timeout_s)
        )

    def list(
        self, prefix: str, limit: int = 0, *, stale: bool = False, timeout_s: float | None = None
    ) -> ListResult:
        return self._owner._run(
            self._metadata.list(prefix, limit, stale=stale, timeout_s=timeout_s)
        )

    def grant(self, ttl_ms: int, *, timeout_s: float | None = None) -> int:
        return self._owner._run(self._metadata.grant(ttl_ms, timeout_s=timeout_s))

    def keep_alive(self, lease: int, *, timeout_s: float | None = None) -> None:
        self._owner._run(self._metadata.keep_alive(lease, timeout_s=timeout_s))

    def revoke(self, lease: int, *, timeout_s: float | None = None) -> None:
        self._owner._run(self._metadata.revoke(lease, timeout_s=timeout_s))

    def watch(self, key: str, prefix: bool = False, from_version: int = 0) -> Iterator[Event]:
        """A blocking iterator of events; closing the generator stops the watch."""
        watcher = self._metadata.watch(key, prefix=prefix, from_version=from_version)

        async def next_event() -> Event | None:
            try:
                return await watcher.__anext__()
            except StopAsyncIteration:
                return None

        try:
            while True:
                event = self._owner._run(next_event())
                if event is None:
                    return
                yield event
        finally:
            if not self._owner._closed:
                self._owner._run(watcher.aclose())


class SyncLogsClient:
    """``client.logs``, blocking (see ``catenary.client.logs``)."""

    def __init__(self, owner: SyncClient) -> None:
        self._owner = owner
        self._logs = owner.client.logs

    def append(
        self, log: int, records: bytes | Sequence[bytes], *, timeout_s: float | None = None
    ) -> int:
        return self._owner._run(self._logs.append(log, records, timeout_s=timeout_s))

    def append_result(
        self, log: int, records: bytes | Sequence[bytes], *, timeout_s: float | None = None
    ) -> AppendResult:
        return self._owner._run(self._logs.append_result(log, records, timeout_s=timeout_s))

    def read(
        self,
        log: int,
        from_lsn: int = 1,
        to_lsn: int | None = None,
        *,
        records_max: int = 1000,
        wait_ms: int = 1000,
    ) -> Iterator[LogItem]:
        """A blocking iterator of records and gaps; closing the generator stops the read."""
        reader = self._logs.read(log, from_lsn, to_lsn, records_max=records_max, wait_ms=wait_ms)

        async def next_items() -> list[LogItem] | None:
            try:
                return [await reader.__anext__()]
            except StopAsyncIteration:
                return None

        try:
            while True:
                items = self._owner._run(next_items())
                if items is None:
                    return
                yield from items
        finally:
            if not self._owner._closed:
                self._owner._run(reader.aclose())

    def find_tail(self, log: int, *, timeout_s: float | None = None) -> TailInfo:
        return self._owner._run(self._logs.find_tail(log, timeout_s=timeout_s))

    def trim(self, log: int, lsn: int, *, timeout_s: float | None = None) -> TrimResult:
        return self._owner._run(self._logs.trim(log, lsn, timeout_s=timeout_s))

    def seal(self, log: int, *, timeout_s: float | None = None) -> int:
        return self._owner._run(self._logs.seal(log, timeout_s=timeout_s))

    def reconfigure(
        self,
        log: int,
        *,
        provider: str = "",
        replication: str = "",
        sequencer: int = 0,
        timeout_s: float | None = None,
    ) -> LogInfo:
        return self._owner._run(
            self._logs.reconfigure(
                log,
                provider=provider,
                replication=replication,
                sequencer=sequencer,
                timeout_s=timeout_s,
            )
        )

    def describe(self, log: int, *, timeout_s: float | None = None) -> LogInfo:
        return self._owner._run(self._logs.describe(log, timeout_s=timeout_s))

    def list(self, *, timeout_s: float | None = None) -> tuple[LogInfo, ...]:
        return self._owner._run(self._logs.list(timeout_s=timeout_s))
