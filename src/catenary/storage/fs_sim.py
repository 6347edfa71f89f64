"""A deterministic, in-memory file system that forgets what was never synced.

Theory of operation
-------------------
Every file is an *inode* with two contents: ``data`` (what reads see now) and ``durable``
(what survives a crash: the content at the last ``fsync`` of that file). Each content is kept
as explicit bytes plus a size; bytes past the explicit ones up to the size are zeros, so a
preallocated (``allocate``) file costs memory only for what was written into it. Every
directory entry lives in two namespaces: ``current`` (what ``open``/``listdir`` see now) and
``durable`` (the entries as of the last ``fsync_dir`` of their parent directory).

1. ``File.write``/``pwrite``/``allocate``/``truncate`` change ``data`` only; ``File.fsync``
   copies ``data`` to ``durable``.
2. ``open(create=True)`` of a new name, ``rename`` and ``remove`` change ``current`` only;
   ``fsync_dir(d)`` copies every entry whose parent is ``d`` from ``current`` to ``durable``
   (including the absence of removed entries).
3. ``crash()`` replaces ``current`` with ``durable`` and every inode's ``data`` with its
   ``durable`` content - except for a *torn write*. A file's unsynced change, when it did not
   shrink the file, is one region ``[a, b)``: from the first byte that differs from the durable
   content to the last one (or to the new end of a grown file) - an append, an in-place
   overwrite of preallocated zeros, or both. With probability ``tear_probability`` a random
   prefix ``[a, a + k)`` of that region survives and the durable (old) bytes stay after it:
   for an overwrite of zeros, a partial record followed by zeros. With probability
   ``garbage_probability`` a torn write also leaves random garbage (1 to ``GARBAGE_BYTES_MAX``
   bytes) right after the kept prefix, in place of some of the bytes that were being written (a sector written half-way,
   or stale blocks the file system exposed), so a crash can leave a bad checksum at the end
   of the written data. All handles opened before the crash become invalid (``EBADF``).
4. ``flip_bit`` corrupts both contents (media corruption survives crashes). Bit-rot, the
   fault a nemesis injects, is ``rot`` (one bit inside a file's synced bytes) or
   ``rot_somewhere`` (a random file first); ``crash()`` additionally rots one synced bit of
   each file with probability ``rot_probability``.
5. With ``capacity_bytes`` set, a write or allocation that would make the live files (their
   sizes, zeros included) exceed it raises ``OSError(ENOSPC)`` and changes nothing.
6. Every random choice comes from the injected ``Random``; iteration is in sorted path order.
   The same seed and the same calls give the same result.

Simplification (documented, deliberate): directories are durable as soon as ``mkdir`` returns;
only file entries are subject to rule 2.
"""

from __future__ import annotations

import errno
import posixpath
import threading
from random import Random


def _norm(path: str) -> str:
    return posixpath.normpath(path)


def _parent(path: str) -> str:
    return posixpath.dirname(path)


# A garbage tail is at most this long: a few sectors the crash caught half-written.
GARBAGE_BYTES_MAX = 4096


def _garbage(rng: Random, n: int) -> bytes:
    """``n`` random bytes, never all zero (a zero run is what an unwritten region reads as)."""
    data = bytearray(rng.randbytes(n))
    if not any(data):
        data[-1] = 0xFF
    return bytes(data)


def _pad(buf: bytearray, n: int) -> None:
    """Extend ``buf`` with zeros to at least ``n`` bytes."""
    if len(buf) < n:
        buf.extend(bytes(n - len(buf)))


def _padded(raw: bytes | bytearray, n: int) -> bytes:
    """The first ``n`` bytes of a content whose bytes past ``raw`` are zeros."""
    head = bytes(raw[:n])
    return head + bytes(n - len(head))


_STEP = 4096


def _first_diff(x: bytes, y: bytes) -> int:
    """First index where equally long ``x`` and ``y`` differ, or their length."""
    n = len(x)
    at = 0
    while at < n and x[at : at + _STEP] == y[at : at + _STEP]:
        at += _STEP
    while at < n and x[at] == y[at]:
        at += 1
    return min(at, n)


def _last_diff(x: bytes, y: bytes) -> int:
    """One past the last index where equally long ``x`` and ``y`` differ, or 0."""
    end = len(x)
    while end > 0 and x[max(0, end - _STEP) : end] == y[max(0, end - _STEP) : end]:
        end -= _STEP
    end = max(end, 0)
    while end > 0 and x[end - 1] == y[end - 1]:
        end -= 1
    return end


class _Inode:
    """Contents as explicit bytes plus a size; bytes from the explicit end to the size are
    zeros. ``len(data) <= size`` and ``len(durable) <= durable_size`` always."""

    __slots__ = ("data", "durable", "durable_size", "size")

    def __init__(self) -> None:
        self.data = bytearray()
        self.size = 0
        self.durable = b""
        self.durable_size = 0


class SimFile:
    """A handle on a simulated file; invalid after the file system's next ``crash()``."""

    __slots__ = ("_fs", "_generation", "_inode", "_open", "path")

    def __init__(self, fs: SimFileSystem, inode: _Inode, path: str) -> None:
        self._fs = fs
        self._inode = inode
        self._generation = fs._generation
        self._open = True
        self.path = path

    def _check(self) -> _Inode:
        if not self._open:
            raise OSError(errno.EBADF, "file is closed", self.path)
        if self._generation != self._fs._generation:
            raise OSError(errno.EBADF, "file handle invalidated by a simulated crash", self.path)
        return self._inode

    def _grow(self, inode: _Inode, size: int) -> None:
        """Check that growing ``inode`` to ``size`` fits the capacity (rule 5)."""
        cap = self._fs.capacity_bytes
        if (
            cap is not None
            and size > inode.size
            and self._fs._used_bytes_locked() + size - inode.size > cap
        ):
            raise OSError(errno.ENOSPC, "No space left on device (simulated)", self.path)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        with self._fs._lock:
            inode = self._check()
            self._pwrite(inode, inode.size, data)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        with self._fs._lock:
            inode = self._check()
            if offset < 0:
                raise OSError(errno.EINVAL, "negative offset", self.path)
            self._pwrite(inode, offset, data)

    def _pwrite(self, inode: _Inode, offset: int, data: bytes | bytearray | memoryview) -> None:
        end = offset + len(data)
        self._grow(inode, end)
        _pad(inode.data, offset)
        inode.data[offset:end] = data
        inode.size = max(inode.size, end)
        self._fs.write_count += 1

    def allocate(self, size: int) -> None:
        with self._fs._lock:
            inode = self._check()
            if size > inode.size:
                self._grow(inode, size)
                inode.size = size  # zeros: nothing explicit to store
                self._fs.write_count += 1

    def pread(self, offset: int, n: int) -> bytes:
        with self._fs._lock:
            inode = self._check()
            if offset < 0 or n < 0:
                raise OSError(errno.EINVAL, "negative offset or length", self.path)
            stop = min(offset + n, inode.size)
            if stop <= offset:
                return b""
            head = bytes(inode.data[offset:stop])
            return head + bytes(stop - offset - len(head))

    def fsync(self) -> None:
        with self._fs._lock:
            inode = self._check()
            if self._fs._fsync_errors > 0:
                self._fs._fsync_errors -= 1
                raise OSError(errno.EIO, "Input/output error (simulated fsync failure)", self.path)
            inode.durable = bytes(inode.data)
            inode.durable_size = inode.size
            self._fs.fsync_count += 1

    def truncate(self, size: int) -> None:
        with self._fs._lock:
            inode = self._check()
            if size < 0:
                raise OSError(errno.EINVAL, "negative size", self.path)
            del inode.data[size:]
            inode.size = size

    def size(self) -> int:
        with self._fs._lock:
            return self._check().size

    def close(self) -> None:
        self._open = False


class SimFileSystem:
    """In-memory :class:`~catenary.storage.fs.FileSystem` with crash, tear, bit-flip and ENOSPC."""

    def __init__(
        self,
        rng: Random,
        *,
        tear_probability: float = 0.5,
        capacity_bytes: int | None = None,
        garbage_probability: float = 0.0,
        rot_probability: float = 0.0,
    ) -> None:
        for name, value in (
            ("tear_probability", tear_probability),
            ("garbage_probability", garbage_probability),
            ("rot_probability", rot_probability),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        self._rng = rng
        self.tear_probability = tear_probability
        # Of the torn writes, the share that leaves garbage after the kept prefix (rule 3).
        self.garbage_probability = garbage_probability
        # Per file and crash, the chance that one synced bit rots (rule 4).
        self.rot_probability = rot_probability
        self.capacity_bytes = capacity_bytes
        self._lock = threading.RLock()
        self._current: dict[str, _Inode] = {}
        self._durable: dict[str, _Inode] = {}
        self._dirs: set[str] = {"/", "."}
        self._generation = 0
        self._fsync_errors = 0
        # Counters for tests and the simulator's statistics.
        self.fsync_count = 0
        self.fsync_dir_count = 0
        self.write_count = 0
        self.crash_count = 0
        self.torn_count = 0  # torn writes kept by crash()
        self.garbage_count = 0  # of those, the ones that left garbage
        self.rot_count = 0  # bits rotted by rot() or crash()

    # -- FileSystem -----------------------------------------------------------------------

    def open(self, path: str, create: bool) -> SimFile:
        path = _norm(path)
        with self._lock:
            inode = self._current.get(path)
            if inode is None:
                if path in self._dirs:
                    raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
                if not create:
                    raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
                if _parent(path) not in self._dirs:
                    raise FileNotFoundError(errno.ENOENT, "No such directory", _parent(path))
                inode = _Inode()
                self._current[path] = inode
            return SimFile(self, inode, path)

    def exists(self, path: str) -> bool:
        path = _norm(path)
        with self._lock:
            return path in self._current or path in self._dirs

    def listdir(self, path: str) -> list[str]:
        path = _norm(path)
        with self._lock:
            if path not in self._dirs:
                raise FileNotFoundError(errno.ENOENT, "No such directory", path)
            names = {posixpath.basename(p) for p in self._current if _parent(p) == path}
            names |= {posixpath.basename(d) for d in self._dirs if d != path and _parent(d) == path}
            return sorted(names)

    def mkdir(self, path: str) -> None:
        path = _norm(path)
        with self._lock:
            if path in self._current:
                raise FileExistsError(errno.EEXIST, "A file has that name", path)
            while path not in self._dirs:
                self._dirs.add(path)
                path = _parent(path)

    def remove(self, path: str) -> None:
        path = _norm(path)
        with self._lock:
            if path not in self._current:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            del self._current[path]

    def rename(self, src: str, dst: str) -> None:
        src, dst = _norm(src), _norm(dst)
        with self._lock:
            if src not in self._current:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", src)
            if _parent(dst) not in self._dirs:
                raise FileNotFoundError(errno.ENOENT, "No such directory", _parent(dst))
            if dst in self._dirs:
                raise IsADirectoryError(errno.EISDIR, "Is a directory", dst)
            self._current[dst] = self._current.pop(src)

    def fsync_dir(self, path: str) -> None:
        path = _norm(path)
        with self._lock:
            if path not in self._dirs:
                raise FileNotFoundError(errno.ENOENT, "No such directory", path)
            for name in sorted(set(self._current) | set(self._durable)):
                if _parent(name) != path:
                    continue
                inode = self._current.get(name)
                if inode is None:
                    del self._durable[name]
                else:
                    self._durable[name] = inode
            self.fsync_dir_count += 1

    def file_size(self, path: str) -> int:
        path = _norm(path)
        with self._lock:
            inode = self._current.get(path)
            if inode is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            return inode.size

    # -- Faults ---------------------------------------------------------------------------

    def crash(self) -> None:
        """Lose everything unsynced (rule 3): a torn write may keep a random prefix of the
        unsynced region, possibly followed by garbage; synced bits may rot (rule 4)."""
        with self._lock:
            rng = self._rng
            self._generation += 1
            self.crash_count += 1
            self._current = dict(self._durable)
            for path in sorted(self._current):
                inode = self._current[path]
                self._tear_locked(inode, rng)
                if (
                    self.rot_probability > 0.0
                    and inode.durable_size
                    and rng.random() < self.rot_probability
                ):
                    self._rot_locked(inode, rng, 0, inode.durable_size)
                inode.data = bytearray(inode.durable)
                inode.size = inode.durable_size

    def _tear_locked(self, inode: _Inode, rng: Random) -> None:
        """Maybe keep part of ``inode``'s unsynced region in its durable content (rule 3)."""
        old_size, new_size = inode.durable_size, inode.size
        if new_size < old_size:
            return  # an unsynced truncation is lost whole
        span = min(max(len(inode.data), len(inode.durable)), old_size)
        new_head = _padded(inode.data, span)
        old_head = _padded(inode.durable, span)
        a = _first_diff(new_head, old_head)
        if a == span:
            a = old_size  # equal up to the old end: the change (if any) is past it
        b = new_size if new_size > old_size else _last_diff(new_head, old_head)
        if b <= a or rng.random() >= self.tear_probability:
            return
        extra = b - a
        cut = a + rng.randrange(extra + 1)
        survived = bytearray(inode.data[:cut])
        if len(inode.durable) > cut:
            _pad(survived, cut)
            survived += inode.durable[cut:]
        size = max(old_size, cut)
        if self.garbage_probability > 0.0 and cut < b and rng.random() < self.garbage_probability:
            n = rng.randint(1, min(b - cut, GARBAGE_BYTES_MAX))
            _pad(survived, cut)
            survived[cut : cut + n] = _garbage(rng, n)
            size = max(size, cut + n)
            self.garbage_count += 1
        inode.durable = bytes(survived)
        inode.durable_size = size
        self.torn_count += 1

    def rot(
        self, path: str, rng: Random | None = None, *, start: int = 0, end: int | None = None
    ) -> int:
        """Bit-rot: flip one random bit among the synced bytes of ``path`` in ``[start, end)``
        (``end`` defaults to the synced size), in what survives a crash and in what reads
        see now. Returns the byte offset. ``rng`` defaults to the file system's own.
        ``ValueError`` if the file has no synced byte in that range."""
        path = _norm(path)
        with self._lock:
            inode = self._current.get(path)
            if inode is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            stop = inode.durable_size if end is None else min(end, inode.durable_size)
            if stop <= start:
                raise ValueError(f"{path} has no synced byte in [{start}, {end})")
            return self._rot_locked(inode, rng or self._rng, start, stop)

    def rot_somewhere(
        self, rng: Random | None = None, *, under: str = "/"
    ) -> tuple[str, int] | None:
        """Bit-rot in a random file below directory ``under`` that has synced bytes (chosen
        in sorted path order, so deterministic). Returns (path, byte offset), or None if no
        file qualifies."""
        under = _norm(under)
        prefix = under.rstrip("/") + "/"
        with self._lock:
            rng = rng or self._rng
            paths = [
                p
                for p in sorted(self._current)
                if p.startswith(prefix) and self._current[p].durable_size
            ]
            if not paths:
                return None
            path = paths[rng.randrange(len(paths))]
            inode = self._current[path]
            return path, self._rot_locked(inode, rng, 0, inode.durable_size)

    def _rot_locked(self, inode: _Inode, rng: Random, start: int, end: int) -> int:
        offset = rng.randrange(start, end)
        mask = 1 << rng.randrange(8)
        durable = bytearray(inode.durable)
        _pad(durable, offset + 1)
        old = durable[offset]
        durable[offset] ^= mask
        inode.durable = bytes(durable)
        if offset < inode.size:
            _pad(inode.data, offset + 1)
            if inode.data[offset] == old:  # reads see it too, unless an unsynced write is there
                inode.data[offset] ^= mask
        self.rot_count += 1
        return offset

    def flip_bit(self, path: str, offset: int, bit: int | None = None) -> None:
        """Flip one bit of byte ``offset`` (random bit unless given), durably."""
        path = _norm(path)
        with self._lock:
            inode = self._current[path]
            if not 0 <= offset < inode.size:
                raise ValueError(f"offset {offset} outside {path} ({inode.size} bytes)")
            if bit is None:
                bit = self._rng.randrange(8)
            mask = 1 << bit
            _pad(inode.data, offset + 1)
            inode.data[offset] ^= mask
            if offset < inode.durable_size:
                durable = bytearray(inode.durable)
                _pad(durable, offset + 1)
                durable[offset] ^= mask
                inode.durable = bytes(durable)

    def flip_random_bit(self, path: str, start: int = 0) -> int:
        """Flip a random bit at or after ``start``; returns the byte offset flipped."""
        size = self.file_size(path)
        if size <= start:
            raise ValueError(f"{path} has no byte at or after {start}")
        offset = self._rng.randrange(start, size)
        self.flip_bit(path, offset)
        return offset

    def inject_fsync_errors(self, count: int = 1) -> None:
        """Make the next ``count`` file fsyncs fail with ``EIO``."""
        with self._lock:
            self._fsync_errors = count

    def used_bytes(self) -> int:
        with self._lock:
            return self._used_bytes_locked()

    def _used_bytes_locked(self) -> int:
        return sum(inode.size for inode in self._current.values())
