"""The log-server store: what the core accepted survives crashes; reads; trims reclaim space."""

from __future__ import annotations

from pathlib import Path
from random import Random

import msgspec
import pytest

from catenary.core.loglet.log_server import Effects
from catenary.core.loglet.types import (
    SEALED,
    Gap,
    GetLogletInfo,
    GetRecords,
    LogletInfo,
    Records,
    Seal,
    SequencerId,
    Store,
    Stored,
    Tail,
    Trim,
    loglet_id,
)
from catenary.persist.log_store import LogStore, LogStoreCorruption
from catenary.storage.fs import OsFileSystem
from catenary.storage.fs_sim import SimFileSystem
from catenary.storage.store import StoreConfig
from catenary.testing.sim.crashfs import CrashPointFileSystem, SimulatedCrash

pytestmark = pytest.mark.timeout(60)

DIR = "/ls"
SMALL = StoreConfig(segment_bytes_max=512)
A = loglet_id(1, 0)
B = loglet_id(2, 5)
SEQ = SequencerId(1, 1)


def open_store(fs: object) -> LogStore:
    return LogStore.open(fs, DIR, node_id=3, store_config=SMALL)  # type: ignore[arg-type]


def handle(store: LogStore, message: msgspec.Struct, src: int = 1) -> Effects:
    effects = store.server.handle(src, message)
    store.write(effects.persist)
    store.sync()
    return effects


def batch(first: int, n: int, tag: str = "r") -> tuple[bytes, ...]:
    return tuple(f"{tag}{first + i}".encode() for i in range(n))


def test_records_of_many_loglets_survive_a_crash_and_read_back() -> None:
    fs = SimFileSystem(Random(1))
    store = open_store(fs)
    for first in range(1, 40, 3):
        handle(store, Store(A, SEQ, first, batch(first, 3, "a"), 1))
        handle(store, Store(B, SEQ, first, batch(first, 3, "b"), 1))
    handle(store, Tail(A, 30))
    fs.crash()
    reopened = open_store(fs)
    assert reopened.read(A, 1, 42, 1 << 20) == list(batch(1, 39, "a"))
    assert reopened.read(B, 10, 13, 1 << 20) == list(batch(10, 3, "b"))
    assert reopened.read(A, 5, 42, 10) == [b"a5", b"a6", b"a7", b"a8", b"a9"]  # byte budget
    assert reopened.read(A, 1, 2, 0) == [b"a1"]  # at least one record
    st = reopened.server.state(A)
    assert st is not None and st.local_tail == 40 and st.sequencer == SEQ
    assert reopened.segment_count > 1


def test_seal_trim_and_pin_survive_and_the_answer_fills_a_read_plan() -> None:
    fs = SimFileSystem(Random(2))
    store = open_store(fs)
    handle(store, Store(A, SEQ, 1, batch(1, 6), 7))
    handle(store, Trim(A, 2))
    handle(store, Seal(A))
    fs.crash()
    store = open_store(fs)
    refused = handle(store, Store(A, SEQ, 7, batch(7, 1), 1)).after_persist[0][1]
    assert isinstance(refused, Stored) and refused.status == SEALED
    info = store.server.handle(9, GetLogletInfo(A)).after_persist[0][1]
    assert info == LogletInfo(A, 7, 1, True, 2)
    plan = store.server.handle(9, GetRecords(A, 1, 100, 1 << 20, 5)).reads[0]
    answer = store.answer(plan)
    assert answer == Records(A, 1, (Gap(1, 3, "trim"), (b"r3", b"r4")), 5, 5, True)
    small = store.answer(store.server.handle(9, GetRecords(A, 3, 100, 2, 7)).reads[0])
    assert small.runs == ((b"r3",),) and small.next_offset == 4


def test_trim_reclaims_whole_segment_files_and_keeps_the_state() -> None:
    fs = SimFileSystem(Random(3))
    store = open_store(fs)
    handle(store, Store(B, SEQ, 1, batch(1, 2, "b"), 1))  # an old record of B...
    for first in range(1, 200, 10):
        handle(store, Store(A, SEQ, first, batch(first, 10), first))
    handle(store, Tail(A, 201))
    segments = store.segment_count
    handle(store, Trim(A, 150))
    assert store.reclaim() == 0  # ...B's record in the first file holds every file back
    handle(store, Tail(B, 3))
    handle(store, Trim(B, 2))
    dropped = store.reclaim()
    assert dropped > 0 and store.segment_count == segments - dropped
    fs.crash()
    store = open_store(fs)
    st_a, st_b = store.server.state(A), store.server.state(B)
    assert st_a is not None and st_a.trim_point == 150 and st_a.local_tail == 201
    assert st_a.sequencer == SEQ  # the pin lived in a dropped file: kept by the control file
    assert st_b is not None and st_b.trim_point == 2 and st_b.local_tail == 3
    assert store.read(A, 151, 201, 1 << 20) == list(batch(151, 50))


@pytest.mark.parametrize("budget", range(8))
def test_a_crash_in_a_write_keeps_a_prefix_of_the_accepted_writes(budget: int) -> None:
    disk = SimFileSystem(Random(10 + budget), tear_probability=1.0)
    fs = CrashPointFileSystem(disk)
    store = open_store(fs)
    handle(store, Store(A, SEQ, 1, batch(1, 3), 1))
    fs.arm(budget)
    try:
        handle(store, Store(A, SEQ, 4, batch(4, 30), 4))
        handle(store, Seal(A))
    except SimulatedCrash:
        pass
    fs.disarm()
    disk.crash()
    store = open_store(disk)
    st = store.server.state(A)
    assert st is not None and st.local_tail in (4, 34)
    assert store.read(A, 1, st.local_tail, 1 << 20) == list(batch(1, st.local_tail - 1))


def test_an_undecodable_write_is_reported_not_skipped() -> None:
    fs = SimFileSystem(Random(4))
    store = open_store(fs)
    handle(store, Store(A, SEQ, 1, batch(1, 2), 1))
    store._store.append([b"\xc1garbage"])
    store.sync()
    with pytest.raises(LogStoreCorruption, match="record 3"):
        open_store(fs)


def test_round_trip_on_the_real_file_system(tmp_path: Path) -> None:
    fs = OsFileSystem()
    store = LogStore.open(fs, str(tmp_path / "ls"), node_id=1, store_config=SMALL)
    handle(store, Store(A, SEQ, 1, batch(1, 50), 1))
    store.close()
    again = LogStore.open(fs, str(tmp_path / "ls"), node_id=1, store_config=SMALL)
    assert again.read(A, 1, 51, 1 << 20) == list(batch(1, 50))


def test_a_checkpoint_makes_a_restart_replay_only_the_tail() -> None:
    fs = SimFileSystem(Random(5))
    store = LogStore.open(fs, DIR, node_id=3, store_config=SMALL, checkpoint_writes=10)  # type: ignore[arg-type]
    for first in range(1, 60):
        handle(store, Store(A, SEQ, first, batch(first, 1), first))
    handle(store, Trim(A, 20))
    handle(store, Seal(B))
    fs.crash()  # no close: the last checkpoint is a few writes back
    again = LogStore.open(fs, DIR, node_id=3, store_config=SMALL, checkpoint_writes=10)  # type: ignore[arg-type]
    assert 0 < again.replayed < 10
    st = again.server.state(A)
    assert st is not None and st.trim_point == 20 and st.local_tail == 60
    assert st.sequencer == SEQ and st.runs == [[21, 60]]
    assert again.server.state(B) is not None and again.server.state(B).sealed  # type: ignore[union-attr]
    assert again.read(A, 21, 60, 1 << 20) == list(batch(21, 39))
    again.close()
    closed = LogStore.open(fs, DIR, node_id=3, store_config=SMALL)  # type: ignore[arg-type]
    assert closed.replayed == 0
    assert closed.server.state(A) == st
