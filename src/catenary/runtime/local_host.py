"""``LocalMetadataHost``: the ``local`` metadata store behind the node's client API.

Theory of operation
-------------------
1. One writer thread (``runtime.disk.DiskWriter``, the node's one kind of disk
   executor) owns every call that writes (``open``, ``execute_batch``, ``tick``,
   ``close``): writes never block the event loop on fsync.
2. Group commit.  Writes wait in a bounded list (``queue_max``; past it
   ``OVERLOADED``).  A writer task hands everything waiting (at most
   ``batch_max``) to the thread as one ``execute_batch``: one append, one fsync;
   writes arriving meanwhile form the next batch.
3. Outcomes.  A write is answered once durable and applied.  A disk error that
   the store rolled back answers ``DISK_FULL`` for ENOSPC/EDQUOT, else
   ``UNAVAILABLE`` — surely not applied, retry once space returns.  A failed fsync leaves the outcome
   unknown: those writes answer ``INDETERMINATE`` and the host stops taking
   writes (``failure`` is set; the node stops, and a restart reads what is
   really on disk).  A sealed store (migrated away) answers ``REFUSED``.
4. Reads (get, list, watch) are answered on the event loop from the store's
   applied state; the store guards it with a lock that a writer holds only
   while applying in memory, never during an fsync.  There is no Raft: every
   read is linearizable and ``behind`` is 0.
5. Lease time: every ``tick_ms`` the writer task runs ``store.tick()`` (expiry
   and checkpoints, logged like any write) between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from catenary.api.errors import ServiceError
from catenary.api.messages import ErrorCode
from catenary.core.metadata.lessor import LessorConfig
from catenary.core.metadata.replica import GetQuery, ListQuery, ReadCompleted
from catenary.core.metadata.state import MetadataConfig
from catenary.core.metadata.types import Command, Compacted, Result, WatchBatch
from catenary.persist.local_metadata import (
    LocalMetadataConfig,
    LocalMetadataStore,
    MetadataStoreFailed,
    MetadataStoreSealed,
)
from catenary.runtime.disk import DiskWriter, is_disk_full
from catenary.storage.fs import OsFileSystem
from catenary.storage.store import StoreConfig

log = logging.getLogger(__name__)


class LocalHostConfig(msgspec.Struct, frozen=True, kw_only=True):
    key_bytes_max: int = 4096
    value_bytes_max: int = 1 << 20
    watch_history_max: int = 10_000
    snapshot_every_writes: int = 10_000
    segment_bytes_max: int = 16 << 20
    index_checkpoint_records: int = 100_000
    record_bytes_max: int = 32 << 20
    lease_checkpoint_interval_ms: int = 5000
    tick_ms: int = 50
    queue_max: int = 20_000
    batch_max: int = 1024
    request_timeout_ms: int = 10_000


@dataclass(slots=True)
class _Write:
    command: Command
    future: asyncio.Future[Result]


def _tick(store: LocalMetadataStore) -> list[Result]:
    return store.tick()


def _consume(future: asyncio.Future[Result]) -> None:
    if not future.cancelled():
        future.exception()


class LocalMetadataHost:
    """Serves the client API from a ``LocalMetadataStore`` (see the module rules)."""

    def __init__(
        self,
        directory: str,
        config: LocalHostConfig,
        *,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = directory
        self._on_failure = on_failure
        self.config = config
        self._store: LocalMetadataStore | None = None
        self._disk = DiskWriter("local-metadata")
        self._pending: list[_Write] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Future[None] | None = None
        self._stopping = False
        self.failure: BaseException | None = None

    @property
    def store(self) -> LocalMetadataStore:
        assert self._store is not None, "start() first"
        return self._store

    async def start(self) -> None:
        config = self.config
        store_config = LocalMetadataConfig(
            metadata=MetadataConfig(
                key_bytes_max=config.key_bytes_max,
                value_bytes_max=config.value_bytes_max,
                watch_history_max=config.watch_history_max,
            ),
            lessor=LessorConfig(checkpoint_interval_ms=config.lease_checkpoint_interval_ms),
            store=StoreConfig(
                segment_bytes_max=config.segment_bytes_max,
                index_checkpoint_records=config.index_checkpoint_records,
                record_bytes_max=config.record_bytes_max,
            ),
            snapshot_every_writes=config.snapshot_every_writes,
            batch_max=config.batch_max,
        )
        loop = asyncio.get_running_loop()
        self._store = await self._disk.run(
            lambda directory: LocalMetadataStore.open(OsFileSystem(), directory, store_config),
            self.directory,
        )
        recovery = self._store.log_recovery
        if recovery.torn_tail or recovery.checkpoints_rejected or recovery.removed_files:
            log.warning("local metadata log recovered: %s", recovery.summary())
        self._changed = loop.create_future()

        def changed(_revision: int) -> None:  # in the writer thread
            loop.call_soon_threadsafe(self._notify_changed)

        self._store.subscribe(changed)
        self._task = loop.create_task(self._writer(), name="local-metadata-writer")

    @property
    def applied_index(self) -> int:
        return self._store.applied_index if self._store is not None else 0

    # ---------------------------------------------------------------- writes

    async def write(self, command: Command) -> Result:
        if self._stopping:
            raise ServiceError(ErrorCode.UNAVAILABLE, "the node is shutting down")
        if self.failure is not None:
            raise ServiceError(
                ErrorCode.UNAVAILABLE, f"the local store stopped taking writes: {self.failure}"
            )
        if len(self._pending) >= self.config.queue_max:
            raise ServiceError(
                ErrorCode.OVERLOADED,
                f"too many writes waiting for the disk (limit {self.config.queue_max})",
            )
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        self._pending.append(_Write(command, future))
        self._wakeup.set()
        try:
            async with asyncio.timeout(self.config.request_timeout_ms / 1000):
                return await future
        except TimeoutError:
            raise ServiceError(
                ErrorCode.INDETERMINATE,
                f"the write did not complete within {self.config.request_timeout_ms} ms; "
                "it may or may not have been applied",
            ) from None

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        tick_s = self.config.tick_ms / 1000
        next_tick = loop.time() + tick_s
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_tick - loop.time())):
                    await self._wakeup.wait()
            self._wakeup.clear()
            if self.failure is not None:
                self._fail_pending(ErrorCode.UNAVAILABLE, "the local store stopped taking writes")
                continue
            if loop.time() >= next_tick:
                next_tick = loop.time() + tick_s
                await self._run(_tick, self.store, [])
            while self._pending and not self._stopping:
                batch = [w for w in self._pending[: self.config.batch_max] if not w.future.done()]
                del self._pending[: self.config.batch_max]
                if batch:
                    commands = [w.command for w in batch]
                    await self._run(self.store.execute_batch, commands, batch)

    async def _run(self, job: Callable[[Any], list[Result]], arg: Any, batch: list[_Write]) -> None:
        try:
            # The thread finishes the batch even if this task is cancelled.
            results = await self._disk.run(job, arg)
        except MetadataStoreSealed as exc:
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(ServiceError(ErrorCode.REFUSED, str(exc)))
            return
        except MetadataStoreFailed as exc:
            log.critical("local metadata store failed: %s", exc)
            self.failure = exc
            if self._on_failure is not None:
                self._on_failure(f"local metadata store failed: {exc}")
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(
                        ServiceError(
                            ErrorCode.INDETERMINATE,
                            "the fsync failed; the write may or may not have been applied",
                        )
                    )
            return
        except OSError as exc:
            # Rolled back to the last durable state (e.g. a full disk): surely not applied.
            log.error("local metadata write failed: %s", exc)
            if is_disk_full(exc):
                error = ServiceError(
                    ErrorCode.DISK_FULL,
                    f"disk full ({exc.strerror or exc}): the write was not applied; "
                    "retry once space returns",
                )
            else:
                error = ServiceError(ErrorCode.UNAVAILABLE, f"the disk refused the write: {exc}")
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(error)
            return
        for w, result in zip(batch, results):
            if not w.future.done():
                w.future.set_result(result)

    def _fail_pending(self, code: ErrorCode, reason: str) -> None:
        pending, self._pending = self._pending, []
        for w in pending:
            if not w.future.done():
                w.future.set_exception(ServiceError(code, reason))

    # ----------------------------------------------------------------- reads

    async def read(self, query: GetQuery | ListQuery) -> ReadCompleted:
        store = self.store
        revision = store.revision
        if isinstance(query, GetQuery):
            return ReadCompleted(0, store.get(query.key), (), False, revision)
        kvs, more = store.list(query.prefix, query.limit)
        return ReadCompleted(0, None, kvs, more, revision)

    def revision_now(self) -> int:
        return self.store.revision

    def changes_since(
        self, from_version: int, key: str, prefix: bool, limit: int
    ) -> WatchBatch | Compacted:
        return self.store.changes_since(from_version, key, prefix, limit)

    def changed_future(self) -> asyncio.Future[None]:
        assert self._changed is not None
        return self._changed

    def _notify_changed(self) -> None:
        changed = self._changed
        if changed is not None and not changed.done():
            changed.set_result(None)
        if not self._stopping:
            self._changed = asyncio.get_running_loop().create_future()

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10.0)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        self._fail_pending(ErrorCode.UNAVAILABLE, "the node is shutting down")
        loop = asyncio.get_running_loop()
        if self._store is not None:
            await self._disk.run(LocalMetadataStore.close, self._store)
        await loop.run_in_executor(None, self._disk.close)
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
