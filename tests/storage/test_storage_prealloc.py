"""Segment format 2: preallocated segments, overwritten in place (both file systems).

A steady-state sync must change no file size; the records end at the first record header
that fails its check, with only zeros after it; a torn overwrite is zeroed and reported;
damage followed by a valid record is corruption; version 1 segments still read.
"""

from __future__ import annotations

import posixpath
from random import Random

import pytest
from storage_helpers import FsCase, as_version_1, record_offsets

from catenary.storage.errors import CorruptionError
from catenary.storage.fs import File, FileSystem
from catenary.storage.fs_sim import SimFileSystem
from catenary.storage.store import (
    FORMAT_VERSION,
    RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
    SegmentedStore,
    StoreConfig,
)

pytestmark = pytest.mark.timeout(60)

SEG = 4096
CONFIG = StoreConfig(segment_bytes_max=SEG, index_checkpoint_records=1 << 20)


def payload(i: int) -> bytes:
    return f"prealloc-{i:05d}-".encode() + bytes([1 + i % 250]) * (i % 41)


def segments(fs: FileSystem, d: str) -> list[str]:
    return [posixpath.join(d, n) for n in fs.listdir(d) if n.endswith(".seg")]


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


def fill(fs: FileSystem, d: str, start: int, stop: int, config: StoreConfig = CONFIG) -> None:
    store = SegmentedStore.open(fs, d, config)
    assert store.next_position == start
    store.append([payload(i) for i in range(start, stop)])
    store.sync()
    store.close()


class _WatchedFile:
    def __init__(self, inner: File, path: str, sizes: list[tuple[str, int]]) -> None:
        self._inner = inner
        self._path = path
        self._sizes = sizes

    def fsync(self) -> None:
        self._inner.fsync()
        self._sizes.append((self._path, self._inner.size()))

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


class _SizeWatch:
    """Wraps a FileSystem; records the file size at every fsync of a ``.seg`` file."""

    def __init__(self, inner: FileSystem) -> None:
        self.inner = inner
        self.sizes: list[tuple[str, int]] = []

    def open(self, path: str, create: bool) -> File:
        f = self.inner.open(path, create)
        if path.endswith(".seg"):
            return _WatchedFile(f, path, self.sizes)  # type: ignore[return-value]
        return f

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def drop_checkpoints(fs: FileSystem, d: str) -> None:
    """A torn write is never covered by a checkpoint (they cover synced bytes only)."""
    for name in fs.listdir(d):
        if name.endswith(".idx"):
            fs.remove(posixpath.join(d, name))
    fs.fsync_dir(d)


def test_segments_are_created_full_size_and_syncs_change_no_size(fscase: FsCase) -> None:
    watch = _SizeWatch(fscase.fs)
    d = fscase.path("s")
    store = SegmentedStore.open(watch, d, CONFIG)  # type: ignore[arg-type]
    for i in range(1, 200):
        store.append([payload(i)])
        store.sync()
    store.close()
    assert len({p for p, _ in watch.sizes}) >= 3  # rolled over a few times
    # Every fsync of every segment saw the same, preallocated size.
    assert {size for _, size in watch.sizes} == {SEG}
    for path in segments(fscase.fs, d):
        assert fscase.fs.file_size(path) == SEG
        raw = read_file(fscase.fs, path)
        assert int.from_bytes(raw[4:6], "little") == FORMAT_VERSION == 2
        _, end = record_offsets(raw)
        assert not any(raw[end:])  # the unused tail is zeros
    store = SegmentedStore.open(fscase.fs, d, CONFIG)
    assert store.read_range(1, 200) == [payload(i) for i in range(1, 200)]
    assert not store.recovery.torn_tail
    store.close()


def test_a_segment_is_full_when_its_preallocated_size_is_used(fscase: FsCase) -> None:
    d = fscase.path("s")
    fill(fscase.fs, d, 1, 300)
    fill(fscase.fs, d, 300, 301, CONFIG)
    store = SegmentedStore.open(fscase.fs, d, CONFIG)
    big = b"B" * (2 * SEG)  # larger than a segment: one of its own, allocated to fit
    store.append([big, b"after"])
    store.sync()
    store.close()
    paths = segments(fscase.fs, d)
    for path in paths[:-3]:
        raw = read_file(fscase.fs, path)
        _, end = record_offsets(raw)
        assert len(raw) == SEG
        assert SEG - end < RECORD_HEADER_BYTES + 41 + 15  # no room for the next record
    assert fscase.fs.file_size(paths[-2]) == SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 2 * SEG
    store = SegmentedStore.open(fscase.fs, d, CONFIG)
    assert store.read_range(300, 303) == [payload(300), big, b"after"]
    store.close()


def test_preallocate_off_grows_files_with_each_write(fscase: FsCase) -> None:
    d = fscase.path("s")
    flat = StoreConfig(segment_bytes_max=SEG, preallocate=False)
    fill(fscase.fs, d, 1, 10, flat)
    (path,) = segments(fscase.fs, d)
    raw = read_file(fscase.fs, path)
    assert record_offsets(raw)[1] == len(raw) < SEG
    fill(fscase.fs, d, 10, 20, CONFIG)  # turning it on later preallocates the same file
    assert fscase.fs.file_size(path) == SEG
    store = SegmentedStore.open(fscase.fs, d, flat)
    assert store.read_range(1, 20) == [payload(i) for i in range(1, 20)]
    store.close()


@pytest.mark.parametrize("zeros_after", [True, False])
def test_torn_overwrite_then_zeros_or_garbage_is_zeroed_and_reported(
    fscase: FsCase, zeros_after: bool
) -> None:
    fs, d = fscase.fs, fscase.path("s")
    fill(fs, d, 1, 20)
    drop_checkpoints(fs, d)
    (path,) = segments(fs, d)
    raw = read_file(fs, path)
    offsets, end = record_offsets(raw)
    torn_at = offsets[-1]
    half = torn_at + (end - torn_at) // 2
    tail = bytes(SEG - half) if zeros_after else Random(1).randbytes(40) + bytes(SEG - half - 40)
    overwrite(fs, path, raw[:half] + tail)
    store = SegmentedStore.open(fs, d, CONFIG)
    report = store.recovery
    assert report.torn_tail and report.torn_path == path and report.torn_offset == torn_at
    assert report.torn_bytes_dropped == len((raw[torn_at:half] + tail).rstrip(b"\0"))
    assert store.next_position == 19
    assert read_file(fs, path) == raw[:torn_at] + bytes(SEG - torn_at)  # zeroed, same size
    store.append([b"new"])
    store.sync()
    store.close()
    store = SegmentedStore.open(fs, d, CONFIG)
    assert not store.recovery.torn_tail
    assert store.read_range(17, 20) == [payload(17), payload(18), b"new"]
    store.close()


def test_bad_record_followed_by_a_valid_one_is_corruption_not_a_tail(fscase: FsCase) -> None:
    fs, d = fscase.fs, fscase.path("s")
    fill(fs, d, 1, 20)
    drop_checkpoints(fs, d)
    (path,) = segments(fs, d)
    raw = bytearray(read_file(fs, path))
    offsets, _ = record_offsets(bytes(raw))
    victim = offsets[5]
    raw[victim + RECORD_HEADER_BYTES] ^= 0x10  # record 6's payload; records 7.. are valid
    overwrite(fs, path, bytes(raw))
    with pytest.raises(CorruptionError) as info:
        SegmentedStore.open(fs, d, CONFIG)
    assert info.value.path == path and info.value.offset == victim
    assert "followed by a valid record" in info.value.reason
    # Zeroing a whole record header in the middle is no clean end either.
    raw[victim + RECORD_HEADER_BYTES] ^= 0x10
    raw[victim : victim + RECORD_HEADER_BYTES] = bytes(RECORD_HEADER_BYTES)
    overwrite(fs, path, bytes(raw))
    with pytest.raises(CorruptionError) as info:
        SegmentedStore.open(fs, d, CONFIG)
    assert info.value.offset == victim


def test_garbage_in_the_zero_tail_of_a_sealed_segment_is_corruption(fscase: FsCase) -> None:
    fs, d = fscase.fs, fscase.path("s")
    fill(fs, d, 1, 300)
    drop_checkpoints(fs, d)
    path = segments(fs, d)[0]
    raw = bytearray(read_file(fs, path))
    raw[-1] = 0x5A
    overwrite(fs, path, bytes(raw))
    with pytest.raises(CorruptionError) as info:
        SegmentedStore.open(fs, d, CONFIG)
    assert info.value.path == path
    assert "not the last" in info.value.reason


def test_truncate_suffix_never_lets_old_records_reappear(fscase: FsCase) -> None:
    fs, d = fscase.fs, fscase.path("s")
    fill(fs, d, 1, 20)
    store = SegmentedStore.open(fs, d, CONFIG)
    store.truncate_suffix(10)
    store.close()
    store = SegmentedStore.open(fs, d, CONFIG)
    assert store.next_position == 10  # records 10..19 are gone, not just hidden
    store.append([b"x"])
    store.sync()
    store.close()
    (path,) = segments(fs, d)
    assert fs.file_size(path) == SEG  # preallocated again by the next sync
    raw = read_file(fs, path)
    _, end = record_offsets(raw)
    assert not any(raw[end:])
    store = SegmentedStore.open(fs, d, CONFIG)
    assert store.read_range(9, 11) == [payload(9), b"x"]
    assert store.next_position == 11
    store.close()


def test_version_1_segments_still_read_and_take_appends(fscase: FsCase) -> None:
    fs, d = fscase.fs, fscase.path("s")
    flat = StoreConfig(segment_bytes_max=SEG, preallocate=False)
    fill(fs, d, 1, 150, flat)
    paths = segments(fs, d)
    assert len(paths) >= 2
    for path in paths:
        overwrite(fs, path, as_version_1(read_file(fs, path)))
        assert read_file(fs, path)[4] == 1
    v1_last = fs.file_size(paths[-1])
    store = SegmentedStore.open(fs, d, CONFIG)  # preallocating store, old files
    assert store.read_range(1, 150) == [payload(i) for i in range(1, 150)]
    store.append([payload(i) for i in range(150, 400)])
    store.sync()
    store.close()
    after = segments(fs, d)
    # The old last segment grew as version 1 files do (no zero tail); new ones are version 2.
    raw = read_file(fs, paths[-1])
    assert raw[4] == 1 and len(raw) > v1_last and record_offsets(raw)[1] == len(raw)
    for path in after[len(paths) :]:
        assert read_file(fs, path)[4] == 2 and fs.file_size(path) == SEG
    store = SegmentedStore.open(fs, d, CONFIG)
    assert store.read_range(1, 400) == [payload(i) for i in range(1, 400)]
    store.close()


def test_unknown_version_is_refused() -> None:
    fs = SimFileSystem(Random(3))
    fill(fs, "/s", 1, 5)
    (path,) = segments(fs, "/s")
    raw = bytearray(as_version_1(read_file(fs, path)))
    raw[4] = 3
    import crc32c

    raw[20:24] = crc32c.crc32c(bytes(raw[:20])).to_bytes(4, "little")
    overwrite(fs, path, bytes(raw) + payload(0))  # a valid-looking record after it
    with pytest.raises(CorruptionError) as info:
        SegmentedStore.open(fs, "/s", CONFIG)
    assert "unsupported format version 3" in info.value.reason


def test_crashes_during_overwrites_recover_a_prefix_and_report_garbage() -> None:
    # Random workloads on a disk whose crashes tear overwrites (prefix, then zeros or garbage).
    torn = 0
    for seed in range(40):
        rng = Random(seed)
        fs = SimFileSystem(Random(seed), tear_probability=1.0, garbage_probability=0.5)
        durable: list[bytes] = []  # acknowledged: must survive
        appended: list[bytes] = []  # what the store held before the crash
        for _ in range(4):
            store = SegmentedStore.open(fs, "/s", CONFIG)
            torn += store.recovery.torn_tail
            got = store.read_range(1, store.next_position)
            assert got[: len(durable)] == durable  # every acknowledged record survived
            assert got == appended[: len(got)]  # and nothing else than a prefix of the rest
            durable = appended = got
            for _ in range(rng.randrange(1, 6)):
                batch = [rng.randbytes(rng.randrange(0, 300)) for _ in range(rng.randrange(1, 8))]
                store.append(batch)
                appended = appended + batch
                if rng.random() < 0.7:
                    store.sync()
                    durable = appended
            if rng.random() < 0.5:
                fs.inject_fsync_errors(1)  # a last write reaches the file, its fsync fails
                store.append([b"unsynced" * 5])
                appended = [*appended, b"unsynced" * 5]
                with pytest.raises(OSError):
                    store.sync()
            fs.crash()
    assert torn > 10


def test_preallocation_in_steps_grows_a_step_at_a_time_up_to_the_segment(fscase: FsCase) -> None:
    config = StoreConfig(segment_bytes_max=5 * SEG // 2, preallocate_step_bytes=SEG)
    watch = _SizeWatch(fscase.fs)
    d = fscase.path("s")
    store = SegmentedStore.open(watch, d, config)  # type: ignore[arg-type]
    for i in range(1, 300):
        store.append([payload(i)])
        store.sync()
    store.close()
    sizes = [size for path, size in watch.sizes if path == segments(fscase.fs, d)[0]]
    # Whole steps, then the segment's size; each size lasts for many syncs.
    assert sorted(set(sizes)) == [SEG, 2 * SEG, 5 * SEG // 2]
    assert sizes == sorted(sizes)
    store = SegmentedStore.open(fscase.fs, d, config)
    assert store.read_range(1, 300) == [payload(i) for i in range(1, 300)]
    store.close()
    with pytest.raises(ValueError, match="preallocate_step_bytes"):
        StoreConfig(preallocate_step_bytes=100)
