"""SegmentedStore on the simulated disk against a list model, with crashes and torn writes.

The model keeps the payloads of ``[first, next)`` and how many of them are durable. After a
crash the store must hold every durable record; it may also hold a prefix of the unsynced
ones (a torn write kept some bytes), which the model then adopts.
"""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from catenary.storage.errors import PositionError
from catenary.storage.fs_sim import SimFileSystem
from catenary.storage.store import SegmentedStore, StoreConfig

CONFIG = StoreConfig(segment_bytes_max=160, index_checkpoint_records=3)
DIRECTORY = "/data/store"

payloads = st.lists(st.binary(max_size=48), min_size=1, max_size=6)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.rng = Random(0)  # the disk's randomness; reseeded by each crash
        self.fs = SimFileSystem(self.rng, tear_probability=0.5, garbage_probability=0.5)
        self.store = SegmentedStore.open(self.fs, DIRECTORY, CONFIG)
        self.first = 1
        self.records: list[bytes] = []  # payloads of [first, first + len)
        self.durable = 0  # how many of them are durable

    @property
    def next(self) -> int:
        return self.first + len(self.records)

    def teardown(self) -> None:
        self.store.close()

    @rule(data=payloads)
    def append(self, data: list[bytes]) -> None:
        assert self.store.append(data) == self.next
        self.records += data

    @rule()
    def sync(self) -> None:
        self.store.sync()
        self.durable = len(self.records)

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        position = data.draw(st.integers(self.first - 2, self.next + 1))
        if self.first <= position < self.next:
            assert self.store.read(position) == self.records[position - self.first]
        else:
            with pytest.raises(PositionError):
                self.store.read(position)

    @precondition(lambda self: bool(self.records))
    @rule(data=st.data(), bytes_max=st.none() | st.integers(0, 200))
    def read_range(self, data: st.DataObject, bytes_max: int | None) -> None:
        start = data.draw(st.integers(self.first, self.next))
        end = data.draw(st.integers(start, self.next))
        got = self.store.read_range(start, end, bytes_max)
        want = self.records[start - self.first : end - self.first]
        if bytes_max is None or start == end:
            assert got == want
        else:
            assert 1 <= len(got) <= len(want)
            assert got == want[: len(got)]
            assert len(got) == 1 or sum(map(len, got)) <= bytes_max
            if len(got) < len(want):
                assert sum(map(len, want[: len(got) + 1])) > bytes_max

    @rule(data=st.data())
    def truncate_prefix(self, data: st.DataObject) -> None:
        position = data.draw(st.integers(self.first, self.next + 3))
        self.store.truncate_prefix(position)
        new_first = self.store.first_position
        assert self.first <= new_first <= max(self.first, min(position, self.next))
        dropped = new_first - self.first
        assert dropped <= self.durable  # only durable segments are removed
        self.records = self.records[dropped:]
        self.durable -= dropped
        self.first = new_first

    @rule(data=st.data())
    def truncate_suffix(self, data: st.DataObject) -> None:
        position = data.draw(st.integers(self.first, self.next))
        self.store.truncate_suffix(position)
        self.records = self.records[: position - self.first]
        self.durable = len(self.records)  # truncate_suffix syncs and is durable

    @rule(position=st.integers(0, 400))
    def reset(self, position: int) -> None:
        self.store.reset(position)
        self.first, self.records, self.durable = position, [], 0

    @rule()
    def reopen(self) -> None:
        self.store.close()  # a clean close syncs
        self.durable = len(self.records)
        self.store = SegmentedStore.open(self.fs, DIRECTORY, CONFIG)
        assert not self.store.recovery.torn_tail

    @rule(seed=st.integers(0, 2**32 - 1))
    def crash(self, seed: int) -> None:
        self.rng.seed(seed)  # lets hypothesis choose (and shrink) which bytes a tear keeps
        self.fs.crash()
        self.store = SegmentedStore.open(self.fs, DIRECTORY, CONFIG)
        assert self.store.first_position == self.first
        n = self.store.next_position - self.first
        assert self.durable <= n <= len(self.records)
        self.records = self.records[:n]
        self.durable = n
        assert self.store.read_range(self.first, self.next) == self.records

    @invariant()
    def positions_match(self) -> None:
        assert self.store.first_position == self.first
        assert self.store.next_position == self.next


TestStoreModel = StoreMachine.TestCase
TestStoreModel.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
