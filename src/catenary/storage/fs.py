"""The file-system interface the storage engine talks to, and its real implementation.

Theory of operation
-------------------
The engine never calls ``os`` directly: it goes through :class:`FileSystem` and :class:`File`,
so the very same engine code runs on real disks (:class:`OsFileSystem`) and on the
deterministic in-memory simulator (:class:`catenary.storage.fs_sim.SimFileSystem`) that loses
unsynced data on a simulated crash. A conformance suite (``tests/storage``) runs over both.

Rules every implementation keeps (and every caller relies on):

1. ``File.write`` appends at the end of the file; ``File.pwrite`` writes at an offset
   (overwriting in place, or extending the file, a gap reading as zeros); ``File.allocate``
   extends the file with zeros that are really written, so later overwrites inside it change
   no file size. Nothing written or allocated is durable until ``File.fsync`` returns.
2. Creating, renaming and removing a directory entry is durable only after ``fsync_dir`` of the
   parent directory returns.
3. ``rename`` is atomic: after a crash the destination holds either the old or the new file.
4. ``listdir`` returns names sorted, so callers iterate deterministically.
5. Errors are ``OSError`` with a meaningful ``errno`` (``ENOENT``, ``ENOSPC``, ...).

Paths are plain ``str``; the engine builds them with ``posixpath``/``os.path.join``.
"""

from __future__ import annotations

import errno
import os
from typing import Protocol


class File(Protocol):
    """An open file: append-only writes, positional reads."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append all of ``data`` at the end of the file (not durable until :meth:`fsync`)."""

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at ``offset`` (not durable until :meth:`fsync`)."""

    def allocate(self, size: int) -> None:
        """Grow the file to at least ``size`` bytes of zeros (never shrinks; not durable until
        :meth:`fsync`). ``ENOSPC`` when the space is not there."""

    def pread(self, offset: int, n: int) -> bytes:
        """Read up to ``n`` bytes at ``offset`` (fewer only at the end of the file)."""

    def fsync(self) -> None:
        """Make every write and truncation of this file so far durable."""

    def truncate(self, size: int) -> None:
        """Cut the file to ``size`` bytes (not durable until :meth:`fsync`)."""

    def size(self) -> int:
        """Current size in bytes, including unsynced writes."""

    def close(self) -> None:
        """Release the handle; unsynced data is not made durable by closing."""


class FileSystem(Protocol):
    """The directory operations the engine needs."""

    def open(self, path: str, create: bool) -> File:
        """Open ``path`` for reading and appending; create it if ``create`` (else ``ENOENT``)."""

    def exists(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str]:
        """Names in directory ``path``, sorted."""

    def mkdir(self, path: str) -> None:
        """Create ``path`` and any missing parents; no error if it exists."""

    def remove(self, path: str) -> None: ...

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` with ``src``."""

    def fsync_dir(self, path: str) -> None:
        """Make creations, renames and removals in directory ``path`` durable."""

    def file_size(self, path: str) -> int: ...


# Zeros are written in pieces of this size, from a buffer made per allocate call and dropped
# after it (so no zero buffer outlives the allocation).
ALLOCATE_CHUNK_BYTES = 1 << 20


class OsFile:
    """A real file; ``write`` appends (seek to the end), ``pwrite``/``pread`` are positional,
    syncs use ``os.fdatasync``.

    ``fdatasync`` suffices: it flushes the data and the metadata needed to read it back
    (including the file size), skipping only timestamps. The file is not opened ``O_APPEND``,
    because Linux ignores ``pwrite``'s offset on such files.

    ``allocate`` writes real zeros rather than calling ``posix_fallocate``: on ext4 and XFS
    fallocate leaves *unwritten* extents, and the first write into one converts it, a metadata
    change that makes that ``fdatasync`` commit the journal anyway. Written zeros make every
    later overwrite a pure data write.
    """

    __slots__ = ("_fd", "_path")

    def __init__(self, path: str, create: bool) -> None:
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        if create:
            flags |= os.O_CREAT
        self._path = path
        self._fd = os.open(path, flags, 0o644)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.pwrite(os.lseek(self._fd, 0, os.SEEK_END), data)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        total = len(view)
        done = 0
        while done < total:
            # A short write is legal (e.g. the disk just filled up); keep going until the
            # kernel either takes everything or raises (ENOSPC, EIO).
            done += os.pwrite(self._fd, view[done:], offset + done)

    def allocate(self, size: int) -> None:
        at = self.size()
        if at >= size:
            return
        zeros = bytes(min(ALLOCATE_CHUNK_BYTES, size - at))
        while at < size:
            n = min(len(zeros), size - at)
            self.pwrite(at, memoryview(zeros)[:n])
            at += n

    def pread(self, offset: int, n: int) -> bytes:
        data = os.pread(self._fd, n, offset)
        if len(data) == n or not data:
            return data
        # pread may return short even before end of file (signals); finish the read.
        parts = [data]
        got = len(data)
        while got < n:
            more = os.pread(self._fd, n - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def fsync(self) -> None:
        os.fdatasync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        return f"OsFile({self._path!r})"


class OsFileSystem:
    """The real file system."""

    def open(self, path: str, create: bool) -> OsFile:
        return OsFile(path, create)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def mkdir(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def remove(self, path: str) -> None:
        os.remove(path)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        except OSError as exc:
            # Some file systems refuse fsync on a directory; they order metadata themselves.
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
                raise
        finally:
            os.close(fd)

    def file_size(self, path: str) -> int:
        return os.stat(path).st_size
