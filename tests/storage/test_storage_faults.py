"""Disk faults of the simulator (garbage tails, bit-rot) and the store detecting each of them.

The store's promise under these faults: a garbage tail left by a crash is cut at open and
reported; rotten synced bytes are a :class:`CorruptionError` (at open, or at the latest when
the record is read) - never skipped, never returned as data.
"""

from __future__ import annotations

import posixpath
from random import Random

import pytest
from storage_helpers import record_offsets

from catenary.storage.errors import CorruptionError
from catenary.storage.fs import FileSystem
from catenary.storage.fs_sim import SimFileSystem
from catenary.storage.store import RECORD_HEADER_BYTES, SegmentedStore, StoreConfig

pytestmark = pytest.mark.timeout(60)

SMALL = StoreConfig(segment_bytes_max=256, index_checkpoint_records=4)


def payload(i: int) -> bytes:
    return f"fault-{i:05d}-".encode() + bytes([i % 251]) * (i % 29)


def segments(fs: FileSystem, d: str) -> list[str]:
    return [posixpath.join(d, n) for n in fs.listdir(d) if n.endswith(".seg")]


def drop_checkpoints(fs: FileSystem, d: str) -> None:
    for name in fs.listdir(d):
        if name.endswith(".idx"):
            fs.remove(posixpath.join(d, name))
    fs.fsync_dir(d)


def file_bytes(fs: FileSystem, path: str) -> bytes:
    f = fs.open(path, create=False)
    try:
        return f.pread(0, f.size())
    finally:
        f.close()


def write_synced(fs: SimFileSystem, path: str, data: bytes) -> None:
    f = fs.open(path, create=True)
    f.write(data)
    f.fsync()
    f.close()
    fs.fsync_dir(posixpath.dirname(path))


# -- the simulator's faults --------------------------------------------------------------------


def test_garbage_tail_replaces_unsynced_bytes_after_a_kept_prefix() -> None:
    shapes = set()
    for seed in range(40):
        fs = SimFileSystem(Random(seed), tear_probability=1.0, garbage_probability=1.0)
        fs.mkdir("/d")
        write_synced(fs, "/d/f", b"S" * 10)
        f = fs.open("/d/f", create=False)
        f.write(b"U" * 50)
        fs.crash()
        raw = file_bytes(fs, "/d/f")
        assert raw[:10] == b"S" * 10  # synced bytes are never touched
        kept = len(raw[10:]) - len(raw[10:].lstrip(b"U"))
        garbage = raw[10 + kept :]
        assert len(raw) <= 60
        if fs.garbage_count:
            assert garbage and any(garbage) and garbage != b"U" * len(garbage)
        shapes.add((kept, len(garbage)))
        assert fs.torn_count == 1
    assert len(shapes) > 10  # prefix and garbage length both vary


def test_garbage_and_rot_are_deterministic_per_seed() -> None:
    def run(seed: int) -> tuple[bytes, int]:
        fs = SimFileSystem(
            Random(seed), tear_probability=1.0, garbage_probability=0.5, rot_probability=0.5
        )
        fs.mkdir("/d")
        write_synced(fs, "/d/f", bytes(range(200)))
        f = fs.open("/d/f", create=False)
        f.write(b"x" * 300)
        fs.crash()
        return file_bytes(fs, "/d/f"), fs.rot("/d/f", Random(seed))

    assert run(3) == run(3)
    assert len({run(s) for s in range(10)}) > 1


def test_no_garbage_by_default_keeps_old_behaviour() -> None:
    for seed in range(30):
        fs = SimFileSystem(Random(seed), tear_probability=1.0)
        fs.mkdir("/d")
        f = fs.open("/d/f", create=True)
        f.write(b"abcdefgh")
        fs.fsync_dir("/d")
        fs.crash()
        assert b"abcdefgh".startswith(file_bytes(fs, "/d/f"))
        assert fs.garbage_count == 0 and fs.rot_count == 0


def test_rot_flips_exactly_one_synced_bit_durably() -> None:
    fs = SimFileSystem(Random(5))
    fs.mkdir("/d")
    write_synced(fs, "/d/f", bytes(100))
    f = fs.open("/d/f", create=False)
    f.write(b"\x01" * 20)  # unsynced: never rotted
    offset = fs.rot("/d/f", start=40)
    assert 40 <= offset < 100
    raw = file_bytes(fs, "/d/f")
    assert bin(int.from_bytes(raw[:100], "little")).count("1") == 1  # visible now
    assert raw[offset] != 0
    fs.crash()
    raw = file_bytes(fs, "/d/f")
    assert len(raw) == 100 and raw[offset] != 0  # and after a crash
    assert fs.rot_count == 1
    with pytest.raises(ValueError):
        fs.rot("/d/f", start=100)
    with pytest.raises(FileNotFoundError):
        fs.rot("/d/missing")


def test_rot_somewhere_picks_a_file_with_synced_bytes() -> None:
    fs = SimFileSystem(Random(8))
    fs.mkdir("/a")
    fs.mkdir("/b")
    assert fs.rot_somewhere(under="/a") is None
    f = fs.open("/a/unsynced", create=True)
    f.write(b"zzz")
    write_synced(fs, "/a/synced", bytes(64))
    write_synced(fs, "/b/other", bytes(64))
    for _ in range(5):
        hit = fs.rot_somewhere(under="/a")
        assert hit is not None and hit[0] == "/a/synced"
    assert file_bytes(fs, "/b/other") == bytes(64)


def test_rot_probability_rots_at_crash() -> None:
    fs = SimFileSystem(Random(11), rot_probability=1.0)
    fs.mkdir("/d")
    write_synced(fs, "/d/f", bytes(64))
    fs.crash()
    assert fs.rot_count == 1
    assert any(file_bytes(fs, "/d/f"))


def test_bad_probabilities_are_refused() -> None:
    with pytest.raises(ValueError, match="garbage_probability"):
        SimFileSystem(Random(1), garbage_probability=1.5)
    with pytest.raises(ValueError, match="rot_probability"):
        SimFileSystem(Random(1), rot_probability=-0.1)


# -- the store detects them --------------------------------------------------------------------


def test_garbage_tail_after_a_crash_is_cut_and_reported() -> None:
    config = StoreConfig(segment_bytes_max=4096, index_checkpoint_records=4)
    cut_seen = 0
    for seed in range(60):
        fs = SimFileSystem(Random(seed), tear_probability=1.0, garbage_probability=1.0)
        store = SegmentedStore.open(fs, "/s", config)
        store.append([payload(i) for i in range(1, 31)])
        store.sync()
        store.append([payload(i) for i in range(31, 34)])
        fs.inject_fsync_errors(1)  # the write happens, its fsync fails: then the crash
        with pytest.raises(OSError):
            store.sync()
        fs.crash()
        store = SegmentedStore.open(fs, "/s", config)
        n = store.next_position
        assert 31 <= n <= 34
        assert store.read_range(1, n) == [payload(i) for i in range(1, n)]
        report = store.recovery
        if fs.garbage_count and n < 34:
            assert report.torn_tail, report.summary()
            cut_seen += 1
            assert report.torn_path == segments(fs, "/s")[-1]
            assert report.torn_offset is not None and report.torn_bytes_dropped > 0
            raw = file_bytes(fs, report.torn_path)
            assert not any(raw[report.torn_offset :])  # zeroed in place, durably
        store.close()
    assert cut_seen > 20


def _store_with_sealed_segments(fs: FileSystem, d: str, count: int = 40) -> list[str]:
    store = SegmentedStore.open(fs, d, SMALL)
    store.append([payload(i) for i in range(1, count + 1)])
    store.sync()
    store.close()
    paths = segments(fs, d)
    assert len(paths) >= 3
    return paths


def _last_record_payload_offset(fs: FileSystem, path: str) -> int:
    """Offset of the first payload byte of the last record of segment ``path``."""
    offsets, _ = record_offsets(file_bytes(fs, path))
    return offsets[-1] + RECORD_HEADER_BYTES


def _flip(fs: SimFileSystem, path: str, offset: int) -> None:
    fs.flip_bit(path, offset, bit=0)


@pytest.mark.parametrize("checkpoints", [True, False])
def test_last_record_checksum_of_a_sealed_segment_is_verified_at_open(checkpoints: bool) -> None:
    fs = SimFileSystem(Random(21))
    paths = _store_with_sealed_segments(fs, "/s")
    if not checkpoints:
        drop_checkpoints(fs, "/s")
    victim = paths[1]
    at = _last_record_payload_offset(fs, victim)
    _flip(fs, victim, at)
    with pytest.raises(CorruptionError) as info:
        SegmentedStore.open(fs, "/s", SMALL)
    assert info.value.path == victim
    assert info.value.offset == at - RECORD_HEADER_BYTES


def test_last_record_of_the_last_segment_covered_by_a_checkpoint_is_corruption() -> None:
    fs = SimFileSystem(Random(22))
    paths = _store_with_sealed_segments(fs, "/s")  # close() checkpoints the last segment too
    victim = paths[-1]
    at = _last_record_payload_offset(fs, victim)
    _flip(fs, victim, at)
    with pytest.raises(CorruptionError) as info:
        SegmentedStore.open(fs, "/s", SMALL)
    assert info.value.path == victim
    assert info.value.offset == at - RECORD_HEADER_BYTES
    assert "checkpoint says was durable" in info.value.reason


def test_last_record_of_the_last_segment_without_checkpoint_is_a_reported_tail() -> None:
    # Without a checkpoint, a bad last record cannot be told from a torn write: it is cut and
    # reported (documented in storage-format.md), never returned.
    fs = SimFileSystem(Random(23))
    paths = _store_with_sealed_segments(fs, "/s")
    drop_checkpoints(fs, "/s")
    victim = paths[-1]
    at = _last_record_payload_offset(fs, victim)
    _flip(fs, victim, at)
    store = SegmentedStore.open(fs, "/s", SMALL)
    assert store.recovery.torn_tail
    assert store.recovery.torn_offset == at - RECORD_HEADER_BYTES
    assert store.next_position == 40
    store.close()


@pytest.mark.parametrize("preallocate", [True, False])
def test_rot_before_a_last_record_ending_in_zeros_is_corruption(preallocate: bool) -> None:
    # A bad record with a valid one after it is damage, never a torn tail -- also when the
    # valid one's payload ends in zero bytes (the look-ahead once stopped at the last
    # non-zero byte, cut both records as a tail and lost a durable one).
    fs = SimFileSystem(Random(24))
    config = StoreConfig(segment_bytes_max=4096, preallocate=preallocate)
    store = SegmentedStore.open(fs, "/s", config)
    store.append([payload(1), payload(2), b"ends in zeros" + bytes(6)])
    store.sync()
    store.close()
    drop_checkpoints(fs, "/s")
    (path,) = segments(fs, "/s")
    offsets, _ = record_offsets(file_bytes(fs, path))
    _flip(fs, path, offsets[1] + RECORD_HEADER_BYTES)
    with pytest.raises(CorruptionError) as info:
        SegmentedStore.open(fs, "/s", config)
    assert info.value.offset == offsets[1]
    assert "followed by a valid record" in info.value.reason


def test_rot_in_the_middle_is_corruption_at_open_or_read_never_data() -> None:
    detected_at_open = detected_at_read = 0
    for seed in range(80):
        fs = SimFileSystem(Random(seed))
        _store_with_sealed_segments(fs, "/s")
        if seed % 2:
            drop_checkpoints(fs, "/s")
        rng = Random(seed)
        path = rng.choice(segments(fs, "/s")[:-1])  # a sealed segment: never a tail
        offset = fs.rot(path, rng)
        try:
            store = SegmentedStore.open(fs, "/s", SMALL)
        except CorruptionError as exc:
            assert exc.path == path
            detected_at_open += 1
            continue
        with pytest.raises(CorruptionError) as info:
            store.read_range(1, 41)
        assert info.value.path == path
        assert info.value.offset is not None and info.value.offset <= offset
        detected_at_read += 1
        store.close()
    assert detected_at_open > 0 and detected_at_read > 0


def test_garbage_is_bounded_and_never_past_the_written_region() -> None:
    from catenary.storage.fs_sim import GARBAGE_BYTES_MAX

    for seed in range(20):
        fs = SimFileSystem(Random(seed), tear_probability=1.0, garbage_probability=1.0)
        fs.mkdir("/d")
        f = fs.open("/d/f", create=True)
        f.allocate(1 << 20)
        f.fsync()
        fs.fsync_dir("/d")
        f.pwrite(0, b"\x01" * 100_000)
        fs.crash()
        raw = file_bytes(fs, "/d/f")
        assert len(raw) == 1 << 20
        kept = len(raw) - len(raw.lstrip(b"\x01"))
        rest = raw[kept:].rstrip(b"\0")
        assert len(rest) <= GARBAGE_BYTES_MAX and kept + len(rest) <= 100_000
