"""Crash at every single mutating file-system operation of a scripted workload.

For each k, the workload runs on a fresh simulated disk until its k-th mutating operation
(write, truncate, fsync, create, rename, remove, directory fsync) raises; the disk then crashes
(unsynced data lost, the last write maybe torn) and the store is reopened through the real
recovery path. The recovered store must open without error and hold either the state before
the interrupted step, the state after it, or - where the step allows - a state in between.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from random import Random

import pytest

from catenary.storage.fs_sim import SimFileSystem
from catenary.storage.store import SegmentedStore, StoreConfig
from catenary.testing.sim.crashfs import CrashPointFileSystem, SimulatedCrash

pytestmark = pytest.mark.timeout(60)

CONFIG = StoreConfig(segment_bytes_max=200, index_checkpoint_records=4)
# The same workload on segments that grow with each write (format 2 without preallocation).
FLAT = StoreConfig(segment_bytes_max=200, index_checkpoint_records=4, preallocate=False)
DIRECTORY = "/disk/store"


@dataclass(frozen=True)
class State:
    first: int
    records: tuple[bytes, ...]

    @property
    def next(self) -> int:
        return self.first + len(self.records)


def p(i: int) -> bytes:
    return f"payload-{i}".encode() * (1 + i % 3)


def _append(start: int, n: int) -> Callable[[SegmentedStore, State], State]:
    def step(store: SegmentedStore, state: State) -> State:
        assert store.append([p(i) for i in range(start, start + n)]) == state.next
        store.sync()
        return State(state.first, state.records + tuple(p(i) for i in range(start, start + n)))

    return step


def _truncate_prefix(position: int) -> Callable[[SegmentedStore, State], State]:
    def step(store: SegmentedStore, state: State) -> State:
        store.truncate_prefix(position)
        first = store.first_position
        return State(first, state.records[first - state.first :])

    return step


def _truncate_suffix(position: int) -> Callable[[SegmentedStore, State], State]:
    def step(store: SegmentedStore, state: State) -> State:
        store.truncate_suffix(position)
        return State(state.first, state.records[: position - state.first])

    return step


def _reset(position: int) -> Callable[[SegmentedStore, State], State]:
    def step(store: SegmentedStore, state: State) -> State:
        store.reset(position)
        return State(position, ())

    return step


STEPS: list[tuple[str, Callable[[SegmentedStore, State], State]]] = [
    ("append", _append(0, 6)),
    ("append", _append(6, 9)),
    ("truncate_prefix", _truncate_prefix(9)),
    ("append", _append(15, 12)),
    ("truncate_suffix", _truncate_suffix(20)),
    ("append", _append(27, 3)),
    ("reset", _reset(100)),
    ("append", _append(30, 5)),
    ("truncate_suffix", _truncate_suffix(100)),
    ("append", _append(40, 2)),
]


def run(
    budget: int | None, disk: SimFileSystem, config: StoreConfig = CONFIG
) -> tuple[int, State, int]:
    """Run STEPS until the crash point (none if ``budget`` is None).

    Returns (index of the interrupted step, the state before it, mutating operations done).
    """
    fs = CrashPointFileSystem(disk)
    if budget is not None:
        fs.arm(budget)
    state = State(1, ())
    index = -1  # -1: open; len(STEPS): close
    try:
        store = SegmentedStore.open(fs, DIRECTORY, config)
        for i, (_, step) in enumerate(STEPS):
            index = i
            state = step(store, state)
        index = len(STEPS)
        store.close()
    except SimulatedCrash:
        pass
    return index, state, fs.operations


def expected_after(index: int, before: State) -> State | None:
    if index < 0 or index >= len(STEPS):
        return None
    # Replay the step on a healthy disk from the same state to learn its outcome.
    disk = SimFileSystem(Random(0), tear_probability=0.0)
    store = SegmentedStore.open(disk, DIRECTORY, CONFIG)
    # Rebuild the records at their positions.
    if before.first != 1:
        store.reset(before.first)
    store.append(list(before.records))
    store.sync()
    after = STEPS[index][1](store, before)
    store.close()
    return after


def check(recovered: State, kind: str, before: State, after: State | None) -> None:
    if after is None:  # interrupted open or close: nothing may change
        assert recovered == before
        return
    if recovered in (before, after):
        return
    if kind == "append":  # a prefix of the appended records may have survived
        assert recovered.first == before.first
        assert before.next <= recovered.next <= after.next
        assert recovered.records == after.records[: len(recovered.records)]
    elif kind == "truncate_prefix":  # some of the old segments may still be there
        assert recovered.next == before.next
        assert before.first <= recovered.first <= after.first
        assert recovered.records == before.records[recovered.first - before.first :]
    elif kind == "truncate_suffix":  # some of the later segments may still be there
        assert recovered.first == before.first
        assert after.next <= recovered.next <= before.next
        assert recovered.records == before.records[: len(recovered.records)]
    else:
        pytest.fail(f"{kind} interrupted: recovered {recovered}, not {before} or {after}")


@pytest.mark.parametrize("config", [CONFIG, FLAT], ids=["preallocated", "growing"])
def test_crash_at_every_operation_recovers_a_valid_state(config: StoreConfig) -> None:
    _, _, total = run(None, SimFileSystem(Random(0), tear_probability=0.0), config)
    assert total > 50
    torn = garbage = 0
    for k in range(total):
        for seed in (k, k + 10_000):
            disk = SimFileSystem(Random(seed), tear_probability=0.7, garbage_probability=0.5)
            index, before, _ = run(k, disk, config)
            disk.crash()
            garbage += disk.garbage_count
            store = SegmentedStore.open(disk, DIRECTORY, config)
            torn += store.recovery.torn_tail
            recovered = State(
                store.first_position,
                tuple(store.read_range(store.first_position, store.next_position)),
            )
            store.close()
            kind = STEPS[index][0] if 0 <= index < len(STEPS) else "open"
            check(recovered, kind, before, expected_after(index, before))
    assert torn > 0  # the torn-tail path really ran
    assert garbage > 0  # and crashes really left garbage tails
