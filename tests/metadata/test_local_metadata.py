"""The local (single-node, no Raft) metadata store on a simulated disk."""

from __future__ import annotations

import errno
from random import Random

import pytest

from catenary.core.metadata.lessor import LessorConfig
from catenary.core.metadata.state import MetadataConfig, MetadataStateMachine
from catenary.core.metadata.types import (
    Command,
    Delete,
    Done,
    Event,
    KeyValue,
    LeaseGrant,
    LeaseGranted,
    Precondition,
    PreconditionFailed,
    Put,
    Rejected,
    Request,
    WatchBatch,
    Written,
    encode_request,
)
from catenary.persist.local_metadata import (
    LocalMetadataConfig,
    LocalMetadataStore,
    MetadataStoreFailed,
    MetadataStoreSealed,
)
from catenary.storage.errors import CorruptionError
from catenary.storage.fs_sim import SimFileSystem
from catenary.storage.store import StoreConfig

DIR = "/meta"


class Clock:
    def __init__(self) -> None:
        self.now_ms = 0

    def __call__(self) -> int:
        return self.now_ms


def small_config(**overrides: object) -> LocalMetadataConfig:
    base: dict[str, object] = {
        "store": StoreConfig(segment_bytes_max=512),
        "snapshot_every_writes": 7,
        "metadata": MetadataConfig(value_bytes_max=64),
        "lessor": LessorConfig(checkpoint_interval_ms=500),
    }
    base.update(overrides)
    return LocalMetadataConfig(**base)  # type: ignore[arg-type]


def open_store(
    fs: SimFileSystem, config: LocalMetadataConfig | None = None, clock: Clock | None = None
) -> LocalMetadataStore:
    return LocalMetadataStore.open(fs, DIR, config or small_config(), clock=clock or Clock())


def test_reads_and_writes_survive_a_clean_reopen() -> None:
    fs = SimFileSystem(Random(1))
    store = open_store(fs)
    assert store.put("a", b"1") == Written(1)
    assert store.put("b/x", b"2") == Written(2)
    assert store.put("a", b"3", Precondition("absent")) == PreconditionFailed("a", 1)
    assert store.put("a", b"3", Precondition("version", 1)) == Written(3)
    assert store.delete("b/x") == Written(4)
    assert store.get("a") == KeyValue("a", b"3", 3)
    assert store.list("") == ((KeyValue("a", b"3", 3),), False)
    assert store.changes_since(2, "a") == WatchBatch((Event("put", "a", b"3", 3),), 4)
    store.close()
    again = open_store(fs)
    assert again.get("a") == KeyValue("a", b"3", 3)
    assert again.get("b/x") is None
    assert again.revision == 4
    assert again.applied_index == 5  # the failed precondition was logged too


def test_oversized_values_are_refused_before_the_log() -> None:
    fs = SimFileSystem(Random(1))
    store = open_store(fs)
    result = store.put("k", b"x" * 65)
    assert isinstance(result, Rejected) and result.code == "too_large"
    assert store.applied_index == 0
    results = store.execute_batch([Put("k", b"x" * 65), Put("k", b"ok")])
    assert isinstance(results[0], Rejected) and results[1] == Written(1)


def test_acknowledged_writes_survive_crashes_and_snapshots_bound_the_log() -> None:
    rng = Random(7)
    fs = SimFileSystem(Random(8), tear_probability=1.0)
    config = small_config()
    model = MetadataStateMachine(config.metadata)
    store = open_store(fs, config)
    for index in range(1, 301):
        key = f"k{rng.randrange(6)}"
        roll = rng.random()
        command: Command
        if roll < 0.6:
            command = Put(key, f"v{index}".encode())
        elif roll < 0.8:
            current = model.get(key)
            command = Put(key, b"c", Precondition("version", current.version if current else 0))
        else:
            command = Delete(key)
        result = store.execute(command)
        assert result == model.apply(index, encode_request(Request(0, command)))[1]
        if rng.random() < 0.05:
            fs.crash()  # no close: only what was synced survives
            store = open_store(fs, config)
            assert store.applied_index == index
            assert store.export() == model.snapshot()
    assert store.snapshot_index > 0
    assert store._log.first_position > 1  # whole segments below the snapshot were dropped
    fs.crash()
    store = open_store(fs, config)
    assert store.export() == model.snapshot()


def test_a_write_whose_fsync_failed_is_unknown_and_the_store_must_reopen() -> None:
    fs = SimFileSystem(Random(3), tear_probability=1.0)
    store = open_store(fs)
    assert store.put("a", b"1") == Written(1)
    fs.inject_fsync_errors(1)
    with pytest.raises(MetadataStoreFailed):
        store.put("a", b"2")
    with pytest.raises(MetadataStoreFailed):
        store.put("a", b"3")
    fs.crash()
    store = open_store(fs)
    # either outcome is allowed, nothing else
    assert store.get("a") in (KeyValue("a", b"1", 1), KeyValue("a", b"2", 2))
    assert store.put("z", b"") == Written(store.revision)


def test_full_disk_fails_cleanly_and_recovers() -> None:
    fs = SimFileSystem(Random(4))
    # Segments that grow with each write: a preallocated one has room for "b" already.
    flat = StoreConfig(segment_bytes_max=512, preallocate=False)
    store = open_store(fs, small_config(snapshot_every_writes=1000, store=flat))
    assert store.put("a", b"1") == Written(1)
    fs.capacity_bytes = fs.used_bytes() + 10
    with pytest.raises(OSError) as raised:
        store.put("b", b"x" * 60)
    assert raised.value.errno == errno.ENOSPC
    assert store.get("b") is None and store.revision == 1
    fs.capacity_bytes = None
    assert store.put("b", b"2") == Written(2)
    fs.crash()
    assert open_store(fs).get("b") == KeyValue("b", b"2", 2)


def test_full_disk_after_part_of_a_batch_was_made_durable_is_unknown() -> None:
    # A batch spanning two segments: the first segment's part is written and
    # fsynced, then the new segment does not fit.  Part of the batch is durable,
    # so the batch is not "surely not applied": the outcome is unknown and the
    # store must refuse writes until reopened (else memory and disk diverge).
    fs = SimFileSystem(Random(4))
    config = small_config(snapshot_every_writes=1000)
    store = open_store(fs, config)
    index = 0
    while store._log.segment_count == 0 or store._log._segments[-1].size + 200 <= 512:
        store.put(f"k{index}", b"x" * 60)
        index += 1
    applied = store.applied_index
    fs.capacity_bytes = fs.used_bytes() + 100  # room for one record, not a new segment
    with pytest.raises(MetadataStoreFailed):
        store.execute_batch([Put("a", b"y" * 60), Put("b", b"y" * 60), Put("c", b"y" * 60)])
    fs.capacity_bytes = None
    with pytest.raises(MetadataStoreFailed):
        store.put("d", b"1")
    fs.crash()
    store = open_store(fs, config)
    assert store.applied_index == applied + 1  # "a" was durable: a reopen applies it
    assert store.get("a") == KeyValue("a", b"y" * 60, applied + 1)
    assert store.put("d", b"1") == Written(applied + 2)


def test_corrupt_snapshot_is_reported() -> None:
    fs = SimFileSystem(Random(5))
    store = open_store(fs)
    for i in range(8):
        store.put("k", bytes([i]))
    assert store.snapshot_index == 7
    store.close()
    fs.flip_bit(f"{DIR}/snapshot", 20)
    with pytest.raises(CorruptionError):
        open_store(fs)


def test_leases_expire_and_resume_from_checkpoint_after_restart() -> None:
    fs = SimFileSystem(Random(6))
    clock = Clock()
    config = small_config(snapshot_every_writes=1000)
    store = open_store(fs, config, clock)
    assert store.grant(1000) == LeaseGranted(1, 1000)
    assert store.put("owned", b"x", lease=1) == Written(1)
    clock.now_ms = 600
    assert store.tick() == [Done()]  # a checkpoint: 400 ms left
    lease = store.lease(1)
    assert lease is not None and lease.remaining_ms == 400
    store.close()
    clock.now_ms = 50_000  # a long outage does not expire it at once...
    store = open_store(fs, config, clock)
    clock.now_ms = 50_399
    store.tick()
    assert store.get("owned") is not None
    clock.now_ms = 50_400  # ...but neither does it get a fresh TTL
    store.tick()
    assert store.get("owned") is None and store.lease(1) is None


def test_keepalive_extends_a_lease() -> None:
    fs = SimFileSystem(Random(6))
    clock = Clock()
    store = open_store(fs, clock=clock)
    store.execute(LeaseGrant(100))
    clock.now_ms = 90
    assert store.keep_alive(1) == LeaseGranted(1, 100)
    clock.now_ms = 150
    store.tick()
    assert store.lease(1) is not None
    clock.now_ms = 190
    store.tick()
    assert store.lease(1) is None
    assert store.revoke(1) == store.keep_alive(1)  # both: LeaseNotFound(1)


def test_sealed_store_takes_no_writes_and_exports_every_version() -> None:
    fs = SimFileSystem(Random(9))
    store = open_store(fs)
    store.put("a", b"1")
    store.put("b", b"2")
    store.delete("a")
    store.seal()
    with pytest.raises(MetadataStoreSealed):
        store.put("c", b"3")
    assert store.tick() == []
    store.close()
    store = open_store(fs)
    assert store.sealed
    with pytest.raises(MetadataStoreSealed):
        store.delete("b")
    imported = MetadataStateMachine.restore(store.export())
    assert imported.get("b") == KeyValue("b", b"2", 2)
    assert imported.revision == 3


def test_listeners_hear_each_applied_batch() -> None:
    fs = SimFileSystem(Random(10))
    store = open_store(fs)
    heard: list[int] = []
    store.subscribe(heard.append)
    store.execute_batch([Put("a", b""), Put("b", b"")])
    store.put("a", b"x")
    assert heard == [2, 3]
