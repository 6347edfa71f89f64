"""FileSystem conformance (real and simulated), the simulator's fault model, atomic files."""

from __future__ import annotations

import errno
from random import Random

import pytest
from storage_helpers import FsCase

from catenary.storage.atomic import HEADER_BYTES, atomic_write, read_checked
from catenary.storage.errors import CorruptionError
from catenary.storage.fs_sim import SimFileSystem

pytestmark = pytest.mark.timeout(30)


# -- conformance: both file systems -----------------------------------------------------------


def test_open_missing_without_create_raises_enoent(fscase: FsCase) -> None:
    with pytest.raises(FileNotFoundError):
        fscase.fs.open(fscase.path("nope"), create=False)


def test_write_appends_and_pread_reads_back(fscase: FsCase) -> None:
    fs = fscase.fs
    f = fs.open(fscase.path("a"), create=True)
    f.write(b"hello ")
    f.write(bytearray(b"world"))
    f.write(memoryview(b"!!"))
    assert f.size() == 13
    assert f.pread(0, 5) == b"hello"
    assert f.pread(6, 100) == b"world!!"
    assert f.pread(13, 4) == b""
    f.fsync()
    f.close()
    assert fs.file_size(fscase.path("a")) == 13
    g = fs.open(fscase.path("a"), create=False)
    g.write(b"?")  # appends at the end, even on a fresh handle
    assert g.pread(0, 100) == b"hello world!!?"
    g.close()


def test_truncate_shrinks_and_writes_continue_at_new_end(fscase: FsCase) -> None:
    f = fscase.fs.open(fscase.path("t"), create=True)
    f.write(b"0123456789")
    f.truncate(4)
    assert f.size() == 4
    f.write(b"xy")
    assert f.pread(0, 10) == b"0123xy"
    f.close()


def test_pwrite_overwrites_in_place_and_extends_with_a_zero_gap(fscase: FsCase) -> None:
    fs = fscase.fs
    f = fs.open(fscase.path("p"), create=True)
    f.write(b"0123456789")
    f.pwrite(2, b"ab")
    assert f.size() == 10
    assert f.pread(0, 10) == b"01ab456789"
    f.pwrite(12, memoryview(b"zz"))  # past the end: the gap reads as zeros
    assert f.size() == 14
    assert f.pread(8, 10) == b"89\0\0zz"
    f.write(b"!")  # write still appends at the (new) end
    assert f.pread(13, 5) == b"z!"
    f.fsync()
    f.close()
    g = fs.open(fscase.path("p"), create=False)
    assert g.pread(0, 100) == b"01ab456789\0\0zz!"
    g.close()


def test_allocate_grows_with_zeros_never_shrinks_and_keeps_content(fscase: FsCase) -> None:
    fs = fscase.fs
    f = fs.open(fscase.path("z"), create=True)
    f.write(b"head")
    f.allocate(3 << 20)  # more than one allocation chunk
    assert f.size() == 3 << 20
    assert fs.file_size(fscase.path("z")) == 3 << 20
    assert f.pread(0, 8) == b"head\0\0\0\0"
    assert f.pread((3 << 20) - 4, 100) == bytes(4)
    f.allocate(10)  # never shrinks
    assert f.size() == 3 << 20
    f.pwrite(4, b"body")  # an overwrite inside the allocation changes no size
    assert f.size() == 3 << 20
    f.fsync()
    f.close()
    g = fs.open(fscase.path("z"), create=False)
    assert g.pread(0, 12) == b"headbody\0\0\0\0"
    g.truncate(6)
    assert g.pread(0, 100) == b"headbo"
    g.allocate(9)  # zeros again after a cut, not the old bytes
    assert g.pread(0, 100) == b"headbo\0\0\0"
    g.close()


def test_listdir_is_sorted_and_mkdir_makes_parents(fscase: FsCase) -> None:
    fs = fscase.fs
    fs.mkdir(fscase.path("d", "e", "f"))
    fs.mkdir(fscase.path("d", "e", "f"))  # no error when it exists
    for name in ["c", "a", "b"]:
        fs.open(fscase.path("d", name), create=True).close()
    assert fs.listdir(fscase.path("d")) == ["a", "b", "c", "e"]
    assert fs.exists(fscase.path("d", "e"))
    assert not fs.exists(fscase.path("d", "zz"))


def test_rename_replaces_atomically_and_remove_deletes(fscase: FsCase) -> None:
    fs = fscase.fs
    for name, data in [("src", b"new"), ("dst", b"old")]:
        f = fs.open(fscase.path(name), create=True)
        f.write(data)
        f.close()
    fs.rename(fscase.path("src"), fscase.path("dst"))
    fs.fsync_dir(fscase.root)
    assert not fs.exists(fscase.path("src"))
    f = fs.open(fscase.path("dst"), create=False)
    assert f.pread(0, 10) == b"new"
    f.close()
    fs.remove(fscase.path("dst"))
    assert not fs.exists(fscase.path("dst"))
    with pytest.raises(FileNotFoundError):
        fs.remove(fscase.path("dst"))


def test_atomic_write_round_trip_and_missing_is_none(fscase: FsCase) -> None:
    fs = fscase.fs
    path = fscase.path("state")
    assert read_checked(fs, path) is None
    atomic_write(fs, path, b"term=3")
    assert read_checked(fs, path) == b"term=3"
    atomic_write(fs, path, b"")
    assert read_checked(fs, path) == b""
    assert fs.listdir(fscase.root) == ["state"]  # no temp file left behind


@pytest.mark.parametrize("where", ["header", "data", "short"])
def test_atomic_file_corruption_names_the_file(fscase: FsCase, where: str) -> None:
    fs = fscase.fs
    path = fscase.path("state")
    atomic_write(fs, path, b"some important bytes")
    f = fs.open(path, create=False)
    raw = bytearray(f.pread(0, 1000))
    if where == "header":
        raw[9] ^= 0x10
    elif where == "data":
        raw[HEADER_BYTES + 3] ^= 0x01
    else:
        raw = raw[:10]
    f.truncate(0)
    f.write(raw)
    f.close()
    with pytest.raises(CorruptionError) as info:
        read_checked(fs, path)
    assert info.value.path == path
    assert path in str(info.value)


# -- the simulator's fault model ----------------------------------------------------------------


def _write(fs: SimFileSystem, path: str, data: bytes, sync: bool) -> None:
    f = fs.open(path, create=True)
    f.write(data)
    if sync:
        f.fsync()
    f.close()


def _read(fs: SimFileSystem, path: str) -> bytes:
    f = fs.open(path, create=False)
    try:
        return f.pread(0, f.size())
    finally:
        f.close()


def test_sim_crash_loses_unsynced_writes_and_unsynced_creates() -> None:
    fs = SimFileSystem(Random(1), tear_probability=0.0)
    fs.mkdir("/d")
    _write(fs, "/d/durable", b"abc", sync=True)
    fs.fsync_dir("/d")
    _write(fs, "/d/durable", b"def", sync=False)  # unsynced append
    _write(fs, "/d/synced-not-linked", b"x", sync=True)  # file synced, entry not
    fs.crash()
    assert fs.listdir("/d") == ["durable"]
    assert _read(fs, "/d/durable") == b"abc"


def test_sim_rename_and_remove_are_durable_only_after_fsync_dir() -> None:
    fs = SimFileSystem(Random(2), tear_probability=0.0)
    fs.mkdir("/d")
    _write(fs, "/d/a", b"A", sync=True)
    _write(fs, "/d/b", b"B", sync=True)
    fs.fsync_dir("/d")
    fs.rename("/d/a", "/d/c")
    fs.remove("/d/b")
    fs.crash()
    assert fs.listdir("/d") == ["a", "b"]
    fs.rename("/d/a", "/d/c")
    fs.remove("/d/b")
    fs.fsync_dir("/d")
    fs.crash()
    assert fs.listdir("/d") == ["c"]
    assert _read(fs, "/d/c") == b"A"


def test_sim_handles_are_invalid_after_crash() -> None:
    fs = SimFileSystem(Random(3))
    fs.mkdir("/d")
    f = fs.open("/d/a", create=True)
    fs.crash()
    with pytest.raises(OSError) as info:
        f.write(b"x")
    assert info.value.errno == errno.EBADF


def test_sim_torn_write_keeps_a_prefix_of_the_unsynced_bytes() -> None:
    seen = set()
    for seed in range(40):
        fs = SimFileSystem(Random(seed), tear_probability=1.0)
        fs.mkdir("/d")
        _write(fs, "/d/a", b"durable|", sync=True)
        fs.fsync_dir("/d")
        _write(fs, "/d/a", b"0123456789", sync=False)
        fs.crash()
        data = _read(fs, "/d/a")
        assert b"durable|0123456789".startswith(data)
        assert data.startswith(b"durable|")
        seen.add(len(data))
    assert len(seen) > 3  # tearing really varies the kept prefix


def test_sim_is_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[bytes]:
        fs = SimFileSystem(Random(seed), tear_probability=0.5)
        fs.mkdir("/d")
        out = []
        for i in range(20):
            _write(fs, f"/d/f{i % 3}", bytes([i]) * 50, sync=i % 4 == 0)
            fs.fsync_dir("/d")
            if i % 5 == 4:
                fs.crash()
                out += [_read(fs, f"/d/{n}") for n in fs.listdir("/d")]
        return out

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_sim_flip_bit_survives_crash() -> None:
    fs = SimFileSystem(Random(4))
    fs.mkdir("/d")
    _write(fs, "/d/a", b"\x00" * 8, sync=True)
    fs.fsync_dir("/d")
    fs.flip_bit("/d/a", 3, bit=2)
    assert _read(fs, "/d/a") == b"\x00\x00\x00\x04" + b"\x00" * 4
    fs.crash()
    assert _read(fs, "/d/a")[3] == 4
    offset = fs.flip_random_bit("/d/a")
    assert 0 <= offset < 8


def test_sim_enospc_writes_nothing_and_recovers_when_space_returns() -> None:
    fs = SimFileSystem(Random(5), capacity_bytes=10)
    fs.mkdir("/d")
    f = fs.open("/d/a", create=True)
    f.write(b"12345678")
    with pytest.raises(OSError) as info:
        f.write(b"abc")
    assert info.value.errno == errno.ENOSPC
    assert f.size() == 8
    fs.capacity_bytes = None
    f.write(b"abc")
    assert f.pread(0, 20) == b"12345678abc"


def test_sim_injected_fsync_error_is_eio() -> None:
    fs = SimFileSystem(Random(6))
    fs.mkdir("/d")
    f = fs.open("/d/a", create=True)
    fs.inject_fsync_errors(1)
    with pytest.raises(OSError) as info:
        f.fsync()
    assert info.value.errno == errno.EIO
    f.fsync()  # only the one injected failure


def test_atomic_write_survives_crash_at_every_step() -> None:
    # A crash after atomic_write returns keeps the new content; before it, the old one.
    fs = SimFileSystem(Random(7), tear_probability=1.0)
    fs.mkdir("/d")
    atomic_write(fs, "/d/state", b"old")
    fs.crash()
    assert read_checked(fs, "/d/state") == b"old"
    # Interrupted: temp written and renamed, directory not synced.
    f = fs.open("/d/state.tmp", create=True)
    f.write(b"garbage that was never synced")
    fs.rename("/d/state.tmp", "/d/state")
    fs.crash()
    assert read_checked(fs, "/d/state") == b"old"
    atomic_write(fs, "/d/state", b"new")
    fs.crash()
    assert read_checked(fs, "/d/state") == b"new"


def test_sim_torn_overwrite_of_preallocated_zeros_keeps_a_prefix_then_zeros() -> None:
    shapes = set()
    for seed in range(60):
        fs = SimFileSystem(Random(seed), tear_probability=1.0)
        fs.mkdir("/d")
        f = fs.open("/d/a", create=True)
        f.write(b"durable|")
        f.allocate(64)
        f.fsync()
        fs.fsync_dir("/d")
        f.pwrite(8, b"0123456789")
        fs.crash()
        data = _read(fs, "/d/a")
        assert len(data) == 64  # an overwrite in place changes no size
        assert data[:8] == b"durable|"
        kept = len(data[8:].rstrip(b"\0"))
        assert data[8 : 8 + kept] == b"0123456789"[:kept]
        assert data[8 + kept :] == bytes(56 - kept)  # the old bytes (zeros) after it
        shapes.add(kept)
    assert len(shapes) > 5


def test_sim_torn_overwrite_may_leave_garbage_in_the_zeros() -> None:
    garbage = 0
    for seed in range(60):
        fs = SimFileSystem(Random(seed), tear_probability=1.0, garbage_probability=1.0)
        fs.mkdir("/d")
        f = fs.open("/d/a", create=True)
        f.allocate(64)
        f.fsync()
        fs.fsync_dir("/d")
        f.pwrite(0, b"A" * 20)
        fs.crash()
        data = _read(fs, "/d/a")
        assert len(data) == 64 and data[20:] == bytes(44)  # nothing past the written region
        kept = len(data) - len(data.lstrip(b"A"))
        if fs.garbage_count:
            rest = data[kept:20]
            assert rest != b"A" * len(rest) and any(rest)
            garbage += 1
    assert garbage > 30


def test_sim_allocation_counts_against_capacity_and_costs_no_memory() -> None:
    fs = SimFileSystem(Random(1), capacity_bytes=1000)
    fs.mkdir("/d")
    f = fs.open("/d/a", create=True)
    f.allocate(900)
    assert fs.used_bytes() == 900
    with pytest.raises(OSError) as info:
        f.allocate(1001)
    assert info.value.errno == errno.ENOSPC
    assert f.size() == 900
    f.pwrite(100, b"x" * 800)  # inside the allocation: no new space needed
    with pytest.raises(OSError):
        f.pwrite(950, b"x" * 100)
    g = fs.open("/d/big", create=True)
    fs.capacity_bytes = None
    g.allocate(1 << 40)  # a terabyte of zeros, stored as a size
    assert g.pread((1 << 40) - 2, 10) == bytes(2)
