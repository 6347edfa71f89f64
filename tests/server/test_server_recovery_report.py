"""A torn tail cut at start-up is reported in the node's log, never repaired silently."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from catenary.core.metadata.types import Put, Written
from catenary.core.raft.types import Entry, HardState, Ready
from catenary.persist.raft_storage import RaftStorage
from catenary.runtime.local_host import LocalHostConfig, LocalMetadataHost
from catenary.server.metadata import log_store_recovery
from catenary.storage.fs import OsFileSystem

pytestmark = pytest.mark.timeout(30)


def _tear_last_segment(directory: Path) -> None:
    segments = sorted(p for p in directory.iterdir() if p.suffix == ".seg")
    with open(segments[-1], "ab") as f:
        f.write(b"\x07\x00\x00")  # a record header cut short: a torn tail
        f.flush()
        os.fsync(f.fileno())


def test_a_torn_raft_log_tail_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage = RaftStorage.open(OsFileSystem(), str(tmp_path))
    storage.load()
    storage.save(
        Ready(hard_state=HardState(1, 1, 0), entries=[Entry(1, 1, 0, b"a"), Entry(1, 2, 0, b"b")])
    )
    storage.close()
    _tear_last_segment(tmp_path / "log")
    storage = RaftStorage.open(OsFileSystem(), str(tmp_path))
    try:
        with caplog.at_level(logging.INFO, logger="catenary.server"):
            log_store_recovery("raft log", storage.store_recovery)
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert "torn tail cut" in caplog.records[0].getMessage()
        caplog.clear()
        assert [e.index for e in storage.load()[2]] == [1, 2]
    finally:
        storage.close()
    storage = RaftStorage.open(OsFileSystem(), str(tmp_path))  # nothing left to repair
    try:
        with caplog.at_level(logging.INFO, logger="catenary.server"):
            log_store_recovery("raft log", storage.store_recovery)
        assert [r.levelno for r in caplog.records] == [logging.INFO]
    finally:
        storage.close()


def test_a_torn_local_metadata_log_tail_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> None:
        host = LocalMetadataHost(str(tmp_path), LocalHostConfig())
        await host.start()
        assert await host.write(Put("k", b"v")) == Written(1)
        await host.stop()
        _tear_last_segment(tmp_path / "log")
        host = LocalMetadataHost(str(tmp_path), LocalHostConfig())
        with caplog.at_level(logging.WARNING, logger="catenary.runtime.local_host"):
            await host.start()
        try:
            assert any("torn tail cut" in r.getMessage() for r in caplog.records)
            assert host.store.get("k") is not None
        finally:
            await host.stop()

    asyncio.run(run())


def test_a_local_write_refused_by_a_full_disk_answers_disk_full(tmp_path: Path) -> None:
    import errno

    from catenary.api.errors import ServiceError
    from catenary.api.messages import ErrorCode

    async def run() -> None:
        host = LocalMetadataHost(str(tmp_path), LocalHostConfig())
        await host.start()
        try:
            assert await host.write(Put("k", b"v")) == Written(1)
            store = host.store
            real = store.execute_batch

            def full(commands: list[object]) -> list[object]:
                raise OSError(errno.ENOSPC, "No space left on device")

            store.execute_batch = full  # type: ignore[method-assign,assignment]
            with pytest.raises(ServiceError) as info:
                await host.write(Put("k", b"w"))
            assert info.value.code == ErrorCode.DISK_FULL and "disk full" in str(info.value)
            store.execute_batch = real  # type: ignore[method-assign]
            assert await host.write(Put("k", b"w")) == Written(2)
        finally:
            await host.stop()

    asyncio.run(run())
