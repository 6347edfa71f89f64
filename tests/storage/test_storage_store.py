"""SegmentedStore conformance on both file systems, corruption, torn tails, ENOSPC, fsync errors."""

from __future__ import annotations

import errno
import posixpath
from random import Random

import pytest
from storage_helpers import FsCase, as_version_1, record_offsets

from catenary.storage.atomic import atomic_write
from catenary.storage.errors import (
    CorruptionError,
    PositionError,
    RecordTooLargeError,
    StoreClosedError,
    StoreFailedError,
)
from catenary.storage.fs import FileSystem
from catenary.storage.fs_sim import SimFileSystem
from catenary.storage.store import (
    _META,
    META_NAME,
    RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
    SegmentedStore,
    StoreConfig,
)

pytestmark = pytest.mark.timeout(60)

SMALL = StoreConfig(segment_bytes_max=256, index_checkpoint_records=4)


def payload(i: int) -> bytes:
    return f"record-{i:05d}-".encode() + bytes([i % 251]) * (i % 37)


def fill(store: SegmentedStore, start: int, count: int) -> None:
    store.append([payload(i) for i in range(start, start + count)])
    store.sync()


def segment_files(fs: FileSystem, directory: str) -> list[str]:
    return [n for n in fs.listdir(directory) if n.endswith(".seg")]


def read_file(fs: FileSystem, path: str) -> bytes:
    f = fs.open(path, create=False)
    try:
        return f.pread(0, f.size())
    finally:
        f.close()


def overwrite(fs: FileSystem, path: str, data: bytes) -> None:
    f = fs.open(path, create=False)
    f.truncate(0)
    f.write(data)
    f.fsync()
    f.close()


# -- basic conformance -------------------------------------------------------------------------


def test_empty_store_then_append_read_and_reopen(fscase: FsCase) -> None:
    d = fscase.path("s")
    store = SegmentedStore.open(fscase.fs, d, SMALL)
    assert store.first_position == store.next_position == 1
    assert store.append([]) == 1
    assert store.append([b"a", b"", b"ccc"]) == 1
    assert store.next_position == 4
    assert store.read(2) == b""  # unsynced records are readable
    store.sync()
    assert store.durable_next_position == 4
    assert store.read_range(1, 4) == [b"a", b"", b"ccc"]
    store.close()
    with pytest.raises(StoreClosedError):
        store.append([b"x"])
    store = SegmentedStore.open(fscase.fs, d, SMALL)
    assert (store.first_position, store.next_position) == (1, 4)
    assert store.read_range(1, 4) == [b"a", b"", b"ccc"]
    store.close()


def test_first_position_applies_only_to_a_new_store(fscase: FsCase) -> None:
    d = fscase.path("s")
    store = SegmentedStore.open(fscase.fs, d, SMALL, first_position=100)
    assert store.append([b"x"]) == 100
    store.close()
    store = SegmentedStore.open(fscase.fs, d, SMALL, first_position=5)
    assert (store.first_position, store.next_position) == (100, 101)
    store.close()


def test_roll_over_segments_and_read_across_them(fscase: FsCase) -> None:
    d = fscase.path("s")
    store = SegmentedStore.open(fscase.fs, d, SMALL)
    fill(store, 1, 60)
    fill(store, 61, 1)
    assert store.segment_count > 5
    assert len(segment_files(fscase.fs, d)) == store.segment_count
    expected = [payload(i) for i in range(1, 62)]
    assert store.read_range(1, 62) == expected
    assert [store.read(p) for p in range(1, 62)] == expected
    store.close()
    store = SegmentedStore.open(fscase.fs, d, SMALL)
    assert store.read_range(1, 62) == expected
    assert store.recovery.checkpoints_used == store.segment_count
    assert store.recovery.records_scanned == 0  # checkpoints cover everything after close
    store.close()


def test_read_range_bytes_max_and_position_errors(fscase: FsCase) -> None:
    store = SegmentedStore.open(fscase.fs, fscase.path("s"), SMALL)
    store.append([b"x" * 10] * 20)
    store.sync()
    assert len(store.read_range(1, 21, bytes_max=35)) == 3
    assert len(store.read_range(1, 21, bytes_max=1)) == 1  # at least one record
    assert len(store.read_range(5, 21, bytes_max=10**6)) == 16
    assert store.read_range(7, 7) == []
    for bad in (0, 21, 100):
        with pytest.raises(PositionError):
            store.read(bad)
    with pytest.raises(PositionError):
        store.read_range(0, 3)
    with pytest.raises(PositionError):
        store.read_range(3, 22)
    with pytest.raises(IndexError):  # PositionError is an IndexError
        store.read(22)
    store.close()


def test_record_too_large_appends_nothing(fscase: FsCase) -> None:
    store = SegmentedStore.open(fscase.fs, fscase.path("s"), StoreConfig(record_bytes_max=100))
    with pytest.raises(RecordTooLargeError):
        store.append([b"ok", b"x" * 101])
    assert store.next_position == 1
    store.append([b"y" * 100])
    store.sync()
    assert store.read(1) == b"y" * 100
    store.close()


def test_a_record_larger_than_a_segment_gets_its_own(fscase: FsCase) -> None:
    store = SegmentedStore.open(fscase.fs, fscase.path("s"), SMALL)
    store.append([b"a", b"b" * 1000, b"c"])
    store.sync()
    assert store.read_range(1, 4) == [b"a", b"b" * 1000, b"c"]
    store.close()


def test_truncate_prefix_removes_whole_segments_and_persists(fscase: FsCase) -> None:
    d = fscase.path("s")
    store = SegmentedStore.open(fscase.fs, d, SMALL)
    fill(store, 1, 60)
    store.truncate_prefix(30)
    first = store.first_position
    assert 1 < first <= 30
    assert store.read(first) == payload(first)
    with pytest.raises(PositionError):
        store.read(first - 1)
    store.truncate_prefix(10**9)  # never removes the last segment
    assert store.segment_count == 1
    last_first = store.first_position
    store.close()
    store = SegmentedStore.open(fscase.fs, d, SMALL)
    assert (store.first_position, store.next_position) == (last_first, 61)
    store.close()


def test_truncate_suffix_mid_segment_across_segments_and_to_empty(fscase: FsCase) -> None:
    d = fscase.path("s")
    store = SegmentedStore.open(fscase.fs, d, SMALL)
    fill(store, 1, 60)
    store.truncate_suffix(45)
    assert store.next_position == 45
    store.append([b"new-45", b"new-46"])  # unsynced, then truncated again
    store.truncate_suffix(46)
    assert store.read(45) == b"new-45"
    store.close()
    store = SegmentedStore.open(fscase.fs, d, SMALL)
    assert store.next_position == 46
    assert store.read(45) == b"new-45"
    assert store.read_range(1, 45) == [payload(i) for i in range(1, 45)]
    # Cut exactly at a segment boundary and at the very first record.
    boundary = store._segments[2].first
    store.truncate_suffix(boundary)
    assert store.next_position == boundary
    store.truncate_suffix(1)
    assert store.first_position == store.next_position == 1
    fill(store, 1, 3)
    store.close()
    store = SegmentedStore.open(fscase.fs, d, SMALL)
    assert store.read_range(1, 4) == [payload(i) for i in range(1, 4)]
    with pytest.raises(PositionError):
        store.truncate_suffix(10)
    store.close()


def test_reset_restarts_empty_at_a_position_and_persists(fscase: FsCase) -> None:
    d = fscase.path("s")
    store = SegmentedStore.open(fscase.fs, d, SMALL)
    fill(store, 1, 30)
    store.reset(500)
    assert store.first_position == store.next_position == 500
    assert segment_files(fscase.fs, d) == []
    store.close()
    store = SegmentedStore.open(fscase.fs, d, SMALL)
    assert store.first_position == store.next_position == 500
    assert store.append([b"five hundred"]) == 500
    store.reset(10)  # backwards works too: a new generation
    fill(store, 10, 2)
    store.close()
    store = SegmentedStore.open(fscase.fs, d, SMALL)
    assert (store.first_position, store.next_position) == (10, 12)
    store.close()


def test_checkpoint_is_written_every_n_records_and_limits_the_scan(fscase: FsCase) -> None:
    d = fscase.path("s")
    config = StoreConfig(index_checkpoint_records=100)
    store = SegmentedStore.open(fscase.fs, d, config)
    for _ in range(25):
        store.append([b"r" * 20] * 10)
        store.sync()
    assert fscase.fs.exists(store._segments[0].index_path)
    # Leave without close(): the checkpoint covers 200 of the 250 records.
    for seg in store._segments:
        assert seg.file is not None
        seg.file.close()
    store = SegmentedStore.open(fscase.fs, d, config)
    assert store.recovery.checkpoints_used == 1
    assert store.recovery.records_scanned == 50
    assert store.next_position == 251
    store.close()


def test_checkpoint_blocks_with_a_torn_or_stray_tail_are_used_up_to_it(fscase: FsCase) -> None:
    fs, d = fscase.fs, fscase.path("s")
    config = StoreConfig(index_checkpoint_records=10)
    store = SegmentedStore.open(fs, d, config)
    for i in range(5):
        fill(store, 1 + 10 * i, 10)
    index_path = store._segments[0].index_path
    store.close()
    raw = read_file(fs, index_path)
    assert len(raw) == 5 * (44 + 80)  # one block per 10 records, 8 bytes per offset
    overwrite(fs, index_path, raw[:-7])  # tear the last block
    store = SegmentedStore.open(fs, d, config)
    assert store.recovery.checkpoints_used == 1
    assert store.recovery.records_scanned == 10
    assert store.read_range(1, 51) == [payload(i) for i in range(1, 51)]
    fill(store, 51, 10)  # the torn block is cut before the next one is added
    store.close()
    store = SegmentedStore.open(fs, d, config)
    assert store.recovery.records_scanned == 0
    store.close()
    overwrite(fs, index_path, read_file(fs, index_path) + b"stray bytes" * 10)
    store = SegmentedStore.open(fs, d, config)
    assert store.recovery.records_scanned == 0
    assert not store.recovery.checkpoints_rejected
    fill(store, 61, 10)
    store.close()
    store = SegmentedStore.open(fs, d, config)
    assert store.recovery.records_scanned == 0
    assert store.read_range(1, 71) == [payload(i) for i in range(1, 71)]
    store.close()


def test_checkpoint_of_another_generation_is_rejected(fscase: FsCase) -> None:
    fs, d = fscase.fs, fscase.path("s")
    store = SegmentedStore.open(fs, d, SMALL)
    fill(store, 1, 3)
    index_path = store._segments[0].index_path
    store.close()
    old_index = read_file(fs, index_path)
    store = SegmentedStore.open(fs, d, SMALL)
    store.reset(1)  # same first position, new generation
    fill(store, 1, 3)
    store.close()
    overwrite(fs, index_path, old_index)
    store = SegmentedStore.open(fs, d, SMALL)
    assert len(store.recovery.checkpoints_rejected) == 1
    assert store.read_range(1, 4) == [payload(i) for i in range(1, 4)]
    store.close()


# -- corruption and torn tails ----------------------------------------------------------------


def _cycle(fs: FileSystem, d: str, count: int = 60) -> SegmentedStore:
    store = SegmentedStore.open(fs, d, SMALL)
    fill(store, 1, count)
    store.close()
    return store


def _drop_checkpoints(fs: FileSystem, d: str) -> None:
    for name in fs.listdir(d):
        if name.endswith(".idx"):
            fs.remove(posixpath.join(d, name))


def test_bit_flip_in_the_middle_is_corruption_with_file_and_offset(fscase: FsCase) -> None:
    fs, d = fscase.fs, fscase.path("s")
    _cycle(fs, d)
    _drop_checkpoints(fs, d)
    victim = posixpath.join(d, segment_files(fs, d)[2])
    raw = bytearray(read_file(fs, victim))
    at = SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 2  # inside the first record's payload
    raw[at] ^= 0x40
    overwrite(fs, victim, bytes(raw))
    with pytest.raises(CorruptionError) as info:
        SegmentedStore.open(fs, d, SMALL)
    assert info.value.path == victim
    assert info.value.offset == SEGMENT_HEADER_BYTES


def test_bad_record_followed_by_valid_one_in_last_segment_is_corruption(fscase: FsCase) -> None:
    fs, d = fscase.fs, fscase.path("s")
    store = SegmentedStore.open(fs, d, StoreConfig())
    fill(store, 1, 10)
    store.close()
    _drop_checkpoints(fs, d)
    path = posixpath.join(d, segment_files(fs, d)[-1])
    raw = bytearray(read_file(fs, path))
    second = SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + len(payload(1))
    raw[second + RECORD_HEADER_BYTES] ^= 0x01  # record 2's payload; records 3.. are valid
    overwrite(fs, path, bytes(raw))
    with pytest.raises(CorruptionError) as info:
        SegmentedStore.open(fs, d, StoreConfig())
    assert info.value.path == path
    assert info.value.offset == second
    assert "followed by a valid record" in info.value.reason


MODES = ["preallocated", "flat", "version1"]


def _mode_config(mode: str) -> StoreConfig:
    return StoreConfig(segment_bytes_max=1 << 16, preallocate=mode == "preallocated")


def _fill_in_mode(fs: FileSystem, d: str, mode: str, count: int) -> str:
    """A closed store of ``count`` records in one segment written in ``mode``; checkpoints
    dropped (a torn write is never covered by one). Returns the segment's path."""
    store = SegmentedStore.open(fs, d, _mode_config(mode))
    fill(store, 1, count)
    store.close()
    _drop_checkpoints(fs, d)
    fs.fsync_dir(d)
    path = posixpath.join(d, segment_files(fs, d)[-1])
    if mode == "version1":
        overwrite(fs, path, as_version_1(read_file(fs, path)))
    return path


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cut", [1, 5, 8, 9, 20])
def test_torn_tail_is_truncated_and_reported(fscase: FsCase, cut: int, mode: str) -> None:
    fs, d = fscase.fs, fscase.path("s")
    config = _mode_config(mode)
    path = _fill_in_mode(fs, d, mode, 10)
    raw = read_file(fs, path)
    offsets, _ = record_offsets(raw)
    torn_at = offsets[-1]
    kept = raw[torn_at : torn_at + cut]
    if mode == "preallocated":  # a torn overwrite: part of the record, then the old zeros
        overwrite(fs, path, raw[: torn_at + cut] + bytes(len(raw) - torn_at - cut))
        dropped = len(kept.rstrip(b"\0"))
    else:  # a torn append: part of the record, then the end of the file
        overwrite(fs, path, raw[: torn_at + cut])
        dropped = cut
    store = SegmentedStore.open(fs, d, config)
    report = store.recovery
    assert report.torn_tail
    assert report.torn_path == path
    assert report.torn_offset == torn_at
    assert report.torn_bytes_dropped == dropped
    assert "torn tail" in report.summary()
    assert store.next_position == 10
    if mode == "preallocated":  # zeroed in place, durably: the file keeps its size
        assert read_file(fs, path) == raw[:torn_at] + bytes(len(raw) - torn_at)
    else:
        assert fs.file_size(path) == torn_at  # cut back, durably
    assert store.append([b"again"]) == 10
    store.sync()
    store.close()
    store = SegmentedStore.open(fs, d, config)
    assert not store.recovery.torn_tail
    assert store.read_range(1, 11) == [payload(i) for i in range(1, 10)] + [b"again"]
    store.close()


@pytest.mark.parametrize("mode", MODES)
def test_zero_filled_tail_is_torn_in_version_1_and_the_end_in_version_2(
    fscase: FsCase, mode: str
) -> None:
    fs, d = fscase.fs, fscase.path("s")
    path = _fill_in_mode(fs, d, mode, 5)
    raw = read_file(fs, path)
    overwrite(fs, path, raw + bytes(4096))
    store = SegmentedStore.open(fs, d, _mode_config(mode))
    if mode == "version1":  # version 1 files never end in zeros: a torn append
        assert store.recovery.torn_tail
        assert store.recovery.torn_bytes_dropped == 4096
        assert fs.file_size(path) == len(raw)
    else:  # version 2: zeros after the records are the (preallocated) unused space
        assert not store.recovery.torn_tail, store.recovery.summary()
        assert fs.file_size(path) == len(raw) + 4096
    assert store.next_position == 6
    store.close()


def test_torn_tail_in_a_segment_that_is_not_last_is_corruption(fscase: FsCase) -> None:
    fs, d = fscase.fs, fscase.path("s")
    _cycle(fs, d)
    _drop_checkpoints(fs, d)
    path = posixpath.join(d, segment_files(fs, d)[1])
    raw = read_file(fs, path)
    overwrite(fs, path, raw[:-3])
    with pytest.raises(CorruptionError) as info:
        SegmentedStore.open(fs, d, SMALL)
    assert info.value.path == path
    assert "not the last" in info.value.reason


def test_missing_middle_segment_is_corruption(fscase: FsCase) -> None:
    fs, d = fscase.fs, fscase.path("s")
    _cycle(fs, d)
    names = segment_files(fs, d)
    fs.remove(posixpath.join(d, names[2]))
    with pytest.raises(CorruptionError) as info:
        SegmentedStore.open(fs, d, SMALL)
    assert info.value.path == posixpath.join(d, names[3])
    assert "previous segment ends" in info.value.reason


def test_bad_header_in_middle_is_corruption_and_torn_new_last_file_is_dropped(
    fscase: FsCase,
) -> None:
    fs, d = fscase.fs, fscase.path("s")
    _cycle(fs, d)
    names = segment_files(fs, d)
    path = posixpath.join(d, names[1])
    raw = bytearray(read_file(fs, path))
    raw[12] ^= 0x01
    overwrite(fs, path, bytes(raw))
    with pytest.raises(CorruptionError) as info:
        SegmentedStore.open(fs, d, SMALL)
    assert info.value.path == path
    assert info.value.offset == 0
    raw[12] ^= 0x01
    overwrite(fs, path, bytes(raw))
    # A new last segment whose header write was torn: dropped, reported.
    store = SegmentedStore.open(fs, d, SMALL)
    nxt = store.next_position
    store.close()
    torn = posixpath.join(d, f"{nxt:020d}.seg")
    f = fs.open(torn, create=True)
    f.write(b"CTSG\x01")
    f.close()
    store = SegmentedStore.open(fs, d, SMALL)
    assert store.recovery.torn_tail
    assert store.recovery.torn_path == torn
    assert not fs.exists(torn)
    assert store.next_position == nxt
    store.close()


def test_corrupt_or_stale_checkpoint_falls_back_to_a_scan(fscase: FsCase) -> None:
    fs, d = fscase.fs, fscase.path("s")
    _cycle(fs, d)
    idx = sorted(n for n in fs.listdir(d) if n.endswith(".idx"))
    # Corrupt one checkpoint, make another claim more bytes than its segment holds.
    p0 = posixpath.join(d, idx[0])
    raw = bytearray(read_file(fs, p0))
    raw[-1] ^= 0xFF
    overwrite(fs, p0, bytes(raw))
    seg1 = posixpath.join(d, segment_files(fs, d)[1])
    data = read_file(fs, seg1)
    overwrite(fs, seg1, data[: SEGMENT_HEADER_BYTES + 10])
    with pytest.raises(CorruptionError):  # seg1 now torn but not last: corruption
        SegmentedStore.open(fs, d, SMALL)
    overwrite(fs, seg1, data)
    store = SegmentedStore.open(fs, d, SMALL)
    assert len(store.recovery.checkpoints_rejected) == 1
    assert idx[0] in store.recovery.checkpoints_rejected[0]
    assert store.read_range(1, 61) == [payload(i) for i in range(1, 61)]
    store.close()


def test_missing_meta_with_segments_is_corruption(fscase: FsCase) -> None:
    fs, d = fscase.fs, fscase.path("s")
    _cycle(fs, d, 5)
    fs.remove(posixpath.join(d, META_NAME))
    with pytest.raises(CorruptionError) as info:
        SegmentedStore.open(fs, d, SMALL)
    assert info.value.path == posixpath.join(d, META_NAME)


def test_read_verifies_the_checksum() -> None:
    fs = SimFileSystem(Random(9))
    store = SegmentedStore.open(fs, "/d", StoreConfig())
    fill(store, 1, 3)
    path = store._segments[0].path
    fs.flip_bit(path, SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 1)
    with pytest.raises(CorruptionError) as info:
        store.read(1)
    assert info.value.path == path
    with pytest.raises(CorruptionError):
        store.read_range(1, 3)
    assert store.read(2) == payload(2)
    store.close()


# -- crashes on the simulated disk ----------------------------------------------------------


def test_crash_keeps_synced_records_and_drops_unsynced_ones() -> None:
    for seed in range(30):
        fs = SimFileSystem(Random(seed), tear_probability=0.7)
        store = SegmentedStore.open(fs, "/d", SMALL)
        fill(store, 1, 40)
        store.append([payload(i) for i in range(41, 60)])  # never synced
        fs.crash()
        store = SegmentedStore.open(fs, "/d", SMALL)
        n = store.next_position
        assert 41 <= n <= 60
        assert store.read_range(1, n) == [payload(i) for i in range(1, n)]
        store.close()


def test_crash_during_reset_leaves_old_or_new_store() -> None:
    fs = SimFileSystem(Random(10), tear_probability=0.0)
    store = SegmentedStore.open(fs, "/d", SMALL)
    fill(store, 1, 30)
    # A crash right after reset's generation bump: the old files are still there.
    atomic_write(fs, "/d/" + META_NAME, _META.pack(1, 777))
    fs.crash()
    store = SegmentedStore.open(fs, "/d", SMALL)
    assert store.first_position == store.next_position == 777
    assert len(store.recovery.removed_files) >= 2
    assert segment_files(fs, "/d") == []
    store.close()


# -- disk full and failed fsync ------------------------------------------------------------


def test_enospc_fails_the_sync_keeps_acknowledged_data_and_resumes() -> None:
    fs = SimFileSystem(Random(11))
    store = SegmentedStore.open(fs, "/d", SMALL)
    fill(store, 1, 20)
    fs.capacity_bytes = fs.used_bytes() + 100
    store.append([payload(i) for i in range(21, 40)])
    with pytest.raises(OSError) as info:
        store.sync()
    assert info.value.errno == errno.ENOSPC
    # Everything unsynced was rolled back; acknowledged records are intact.
    assert store.next_position == store.durable_next_position
    n = store.next_position
    assert 21 <= n < 40
    assert store.read_range(1, n) == [payload(i) for i in range(1, n)]
    fs.capacity_bytes = None
    store.append([payload(i) for i in range(n, 40)])
    store.sync()
    store.close()
    fs.crash()
    store = SegmentedStore.open(fs, "/d", SMALL)
    assert store.read_range(1, 40) == [payload(i) for i in range(1, 40)]
    store.close()


def test_failed_fsync_poisons_the_store_until_reopen() -> None:
    fs = SimFileSystem(Random(12))
    store = SegmentedStore.open(fs, "/d", SMALL)
    fill(store, 1, 5)
    store.append([b"maybe"])
    fs.inject_fsync_errors(1)
    with pytest.raises(OSError):
        store.sync()
    with pytest.raises(StoreFailedError):
        store.append([b"more"])
    assert store.read(3) == payload(3)  # reads still work
    store.close()
    store = SegmentedStore.open(fs, "/d", SMALL)
    assert store.next_position in (6, 7)
    assert store.read_range(1, 6) == [payload(i) for i in range(1, 6)]
    store.close()
