"""RaftStorage: what save() makes durable is what load() returns, across crashes."""

from __future__ import annotations

import contextlib
from pathlib import Path
from random import Random

import msgspec
import pytest

from catenary.core.raft.node import RaftNode
from catenary.core.raft.types import (
    Entry,
    EntryKind,
    HardState,
    Membership,
    RaftConfig,
    Ready,
    Snapshot,
    SnapshotMeta,
)
from catenary.persist.raft_storage import RaftStorage, RaftStorageCorruption
from catenary.storage.errors import CorruptionError
from catenary.storage.fs import OsFileSystem
from catenary.storage.fs_sim import SimFileSystem
from catenary.storage.store import StoreConfig
from catenary.testing.sim.crashfs import CrashPointFileSystem, SimulatedCrash

pytestmark = pytest.mark.timeout(30)

DIR = "/raft"
SMALL = StoreConfig(segment_bytes_max=256)  # a few entries per segment file


def entries(first: int, last: int, term: int) -> list[Entry]:
    return [
        Entry(term, i, EntryKind.NORMAL, b"e%d-t%d" % (i, term)) for i in range(first, last + 1)
    ]


def snapshot(index: int, term: int) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, Membership(voters=(1, 2, 3))), b"state@%d" % index)


def fresh(fs: SimFileSystem) -> RaftStorage:
    storage = RaftStorage.open(fs, DIR, SMALL)
    storage.load()
    return storage


def reopen(fs: SimFileSystem) -> tuple[HardState, Snapshot | None, list[Entry]]:
    return RaftStorage.open(fs, DIR, SMALL).load()


def test_empty_directory_loads_empty() -> None:
    fs = SimFileSystem(Random(1))
    assert reopen(fs) == (HardState(), None, [])


def test_save_then_crash_keeps_everything_saved() -> None:
    fs = SimFileSystem(Random(2))
    storage = fresh(fs)
    storage.save(Ready(hard_state=HardState(3, 2, 5), entries=entries(1, 10, 3)))
    fs.crash()
    hard_state, snap, loaded = reopen(fs)
    assert (hard_state.term, hard_state.vote) == (3, 2)
    # The commit rides on the hard state written before the entries, so it may
    # only cover what was durable then: nothing (raft_storage rule 4).
    assert hard_state.commit == 0
    assert snap is None
    assert loaded == entries(1, 10, 3)
    # Once the entries are durable, the next hard state written carries the commit.
    storage = RaftStorage.open(fs, DIR, SMALL)
    storage.load()
    storage.save(Ready(hard_state=HardState(4, 0, 5)))
    fs.crash()
    assert reopen(fs)[0] == HardState(4, 0, 5)


def test_overlapping_entries_replace_the_suffix() -> None:
    fs = SimFileSystem(Random(3))
    storage = fresh(fs)
    storage.save(Ready(hard_state=HardState(2, 1, 0), entries=entries(1, 12, 2)))
    storage.save(Ready(hard_state=HardState(3, 0, 0), entries=entries(6, 8, 3)))
    fs.crash()
    _, _, loaded = reopen(fs)
    assert loaded == entries(1, 5, 2) + entries(6, 8, 3)


def test_a_gap_is_refused() -> None:
    storage = fresh(SimFileSystem(Random(4)))
    storage.save(Ready(entries=entries(1, 3, 1)))
    with pytest.raises(ValueError, match="gap"):
        storage.save(Ready(entries=entries(5, 6, 1)))


def test_hard_state_is_rewritten_only_when_term_or_vote_change() -> None:
    fs = SimFileSystem(Random(5))
    storage = fresh(fs)
    storage.save(Ready(hard_state=HardState(4, 1, 0), entries=entries(1, 3, 4)))
    renames = fs.fsync_dir_count
    storage.save(Ready(hard_state=HardState(4, 1, 3)))  # commit only: no file write
    assert fs.fsync_dir_count == renames
    fs.crash()
    hard_state, _, _ = reopen(fs)
    # The commit was not made durable, which is allowed; term and vote were.
    assert (hard_state.term, hard_state.vote, hard_state.commit) == (4, 1, 0)


def test_installed_snapshot_replaces_the_log() -> None:
    fs = SimFileSystem(Random(6))
    storage = fresh(fs)
    storage.save(Ready(hard_state=HardState(2, 0, 0), entries=entries(1, 20, 2)))
    storage.save(
        Ready(hard_state=HardState(3, 0, 50), snapshot=snapshot(50, 3), entries=entries(51, 53, 3))
    )
    fs.crash()
    _, snap, loaded = reopen(fs)
    assert snap == snapshot(50, 3)
    assert loaded == entries(51, 53, 3)


def test_compact_drops_the_prefix_and_load_skips_what_the_snapshot_covers() -> None:
    fs = SimFileSystem(Random(7))
    storage = fresh(fs)
    storage.save(Ready(hard_state=HardState(2, 0, 30), entries=entries(1, 40, 2)))
    storage.compact(30, snapshot(30, 2))
    assert storage.first_index == 31
    fs.crash()
    hard_state, snap, loaded = reopen(fs)
    assert snap == snapshot(30, 2)
    assert loaded == entries(31, 40, 2)
    assert hard_state.commit == 30  # never below the snapshot


def test_crash_between_snapshot_file_and_log_reset_is_reconciled() -> None:
    fs = SimFileSystem(Random(8))
    storage = fresh(fs)
    storage.save(Ready(hard_state=HardState(2, 0, 0), entries=entries(1, 20, 2)))
    # The snapshot file reaches the disk, the store reset does not: the stored
    # entry at the snapshot index has another term, so the old log is dropped.
    storage.save(Ready(hard_state=HardState(3, 0, 0)))
    storage._write_snapshot(snapshot(15, 3))
    fs.crash()
    reloaded = RaftStorage.open(fs, DIR, SMALL)
    _, snap, loaded = reloaded.load()
    assert snap == snapshot(15, 3)
    assert loaded == []
    assert reloaded.recovery_notes  # reported, not silent
    assert reloaded.last_index == 15


def test_store_ending_before_the_snapshot_is_reset() -> None:
    fs = SimFileSystem(Random(9))
    storage = fresh(fs)
    storage.save(Ready(hard_state=HardState(2, 0, 0), entries=entries(1, 5, 2)))
    storage.save(Ready(hard_state=HardState(3, 0, 0)))
    storage._write_snapshot(snapshot(40, 3))
    fs.crash()
    reloaded = RaftStorage.open(fs, DIR, SMALL)
    _, snap, loaded = reloaded.load()
    assert snap == snapshot(40, 3) and loaded == []
    reloaded.save(Ready(entries=entries(41, 42, 3)))
    fs.crash()
    assert reopen(fs)[2] == entries(41, 42, 3)


@pytest.mark.parametrize("budget", range(10))
def test_crash_at_any_point_of_a_save_keeps_the_old_log_or_a_prefix_of_the_new(
    budget: int,
) -> None:
    disk = SimFileSystem(Random(100 + budget), tear_probability=1.0)
    fs = CrashPointFileSystem(disk)
    storage = RaftStorage.open(fs, DIR, SMALL)
    storage.load()
    storage.save(Ready(hard_state=HardState(1, 1, 0), entries=entries(1, 4, 1)))
    fs.arm(budget)
    with contextlib.suppress(SimulatedCrash):
        storage.save(Ready(hard_state=HardState(2, 3, 0), entries=entries(3, 9, 2)))
    disk.crash()
    hard_state, _, loaded = reopen(disk)
    assert (hard_state.term, hard_state.vote) in {(1, 1), (2, 3)}
    old = entries(1, 4, 1)
    new = entries(1, 2, 1) + entries(3, 9, 2)
    if loaded[2:3] == new[2:3]:
        assert hard_state.term == 2, "entries of term 2 only after the term-2 hard state"
        assert loaded == new[: len(loaded)]
    else:
        assert loaded == old[: len(loaded)] and len(loaded) >= 2


def test_an_entry_stored_at_the_wrong_position_is_corruption() -> None:
    fs = SimFileSystem(Random(11))
    storage = fresh(fs)
    storage.save(Ready(entries=entries(1, 2, 1)))
    # Bypass save(): store an entry claiming index 7 at position 3.
    storage._store.append([_encode(Entry(1, 7, EntryKind.NORMAL, b"x"))])
    storage._store.sync()
    with pytest.raises(RaftStorageCorruption, match="position 3 claims index 7"):
        reopen(fs)


def test_a_term_going_back_is_corruption() -> None:
    fs = SimFileSystem(Random(12))
    storage = fresh(fs)
    storage.save(Ready(hard_state=HardState(5, 0, 0), entries=entries(1, 2, 5)))
    storage.save(Ready(entries=entries(3, 3, 4)))
    with pytest.raises(RaftStorageCorruption, match="term 4 after term 5"):
        reopen(fs)


def test_bit_flip_in_the_middle_of_the_log_is_reported() -> None:
    fs = SimFileSystem(Random(13))
    storage = fresh(fs)
    storage.save(Ready(hard_state=HardState(1, 0, 0), entries=entries(1, 40, 1)))
    names = sorted(n for n in fs.listdir(DIR + "/log") if n.endswith(".seg"))
    assert len(names) > 2
    fs.flip_bit(f"{DIR}/log/{names[0]}", 40)
    with pytest.raises(CorruptionError) as caught:
        reopen(fs)
    assert caught.value.path.endswith(names[0])


def _encode(entry: Entry) -> bytes:
    return msgspec.msgpack.encode(entry)


def test_a_hole_between_snapshot_and_log_is_corruption() -> None:
    fs = SimFileSystem(Random(14))
    storage = fresh(fs)
    storage.save(Ready(hard_state=HardState(3, 0, 0), snapshot=snapshot(10, 3)))
    storage.save(Ready(entries=entries(11, 12, 3)))
    storage._write_snapshot(snapshot(5, 3))  # an older snapshot: entries 6..10 are nowhere
    with pytest.raises(RaftStorageCorruption, match="missing"):
        reopen(fs)


def test_round_trip_on_the_real_file_system(tmp_path: Path) -> None:
    fs = OsFileSystem()
    directory = str(tmp_path / "raft")
    storage = RaftStorage.open(fs, directory, SMALL)
    assert storage.load() == (HardState(), None, [])
    storage.save(Ready(hard_state=HardState(2, 1, 0), entries=entries(1, 30, 2)))
    storage.compact(20, snapshot(20, 2))
    storage.save(Ready(entries=entries(25, 32, 2)))
    storage.close()
    hard_state, snap, loaded = RaftStorage.open(fs, directory, SMALL).load()
    assert (hard_state.term, hard_state.vote) == (2, 1)
    assert snap == snapshot(20, 2)
    assert loaded == entries(21, 32, 2)


# The commit rule (raft_storage rule 4): a follower holds entries 1-3 of term 6
# (commit 1); one Ready brings HardState(term=7, commit=3) and entry 3 of term 7.
# Whatever file operation of that save a crash lands on, the commit it loads must
# cover only entries in their final form, and the node built from it must never
# hand the stale entry 3 of term 6 to its state machine.
_CONFLICT_BEFORE = entries(1, 3, 6)
_CONFLICT_READY = Ready(hard_state=HardState(7, 0, 3), entries=entries(3, 3, 7))
_CONFLICT_FINAL = entries(1, 2, 6) + entries(3, 3, 7)


def _conflicting_save_operations() -> int:
    disk = SimFileSystem(Random(0))
    fs = CrashPointFileSystem(disk)
    storage = RaftStorage.open(fs, DIR, SMALL)
    storage.load()
    storage.save(Ready(hard_state=HardState(6, 0, 1), entries=_CONFLICT_BEFORE))
    before = fs.operations
    storage.save(_CONFLICT_READY)
    return fs.operations - before


_CONFLICT_OPERATIONS = _conflicting_save_operations()


@pytest.mark.parametrize("tear", [0.0, 1.0])
@pytest.mark.parametrize("budget", range(_CONFLICT_OPERATIONS + 1))
def test_a_crash_anywhere_in_a_conflicting_save_never_loads_a_commit_over_stale_entries(
    budget: int, tear: float
) -> None:
    assert _CONFLICT_OPERATIONS >= 6  # temp+fsync+rename+dir fsync, truncate, write, fsync
    disk = SimFileSystem(Random(300 + budget), tear_probability=tear)
    fs = CrashPointFileSystem(disk)
    storage = RaftStorage.open(fs, DIR, SMALL)
    storage.load()
    storage.save(Ready(hard_state=HardState(6, 0, 1), entries=_CONFLICT_BEFORE))
    fs.arm(budget)
    with contextlib.suppress(SimulatedCrash):
        storage.save(_CONFLICT_READY)
    disk.crash()
    hard_state, snap, loaded = reopen(disk)
    assert snap is None
    for entry in loaded[: hard_state.commit]:
        assert entry == _CONFLICT_FINAL[entry.index - 1], (
            f"crash after {budget} operations: commit {hard_state.commit} covers "
            f"entry {entry.index} of term {entry.term}, which was never committed"
        )
    node = RaftNode(
        2,
        RaftConfig(),
        Random(budget),
        hard_state=hard_state,
        entries=loaded,
        initial_membership=None,
    )
    ready = node.ready()
    for entry in ready.committed:
        assert entry == _CONFLICT_FINAL[entry.index - 1], f"applies stale entry {entry.index}"


def test_a_clean_restart_reports_no_repair() -> None:
    # The hard state's commit is as of the last term change (rule 4), usually below the
    # snapshot: raising it to the snapshot is not a repair an operator must look at.
    fs = SimFileSystem(Random(15))
    storage = fresh(fs)
    storage.save(Ready(hard_state=HardState(2, 1, 0), entries=entries(1, 40, 2)))
    storage.save(Ready(hard_state=HardState(2, 1, 30)))
    storage.compact(30, snapshot(30, 2))
    fs.crash()
    reloaded = RaftStorage.open(fs, DIR, SMALL)
    hard_state, _, _ = reloaded.load()
    assert hard_state.commit == 30
    assert reloaded.recovery_notes == []
