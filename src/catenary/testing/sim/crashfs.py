"""A FileSystem wrapper that can stop the world in the middle of a persistence step.

The simulator runs a member's persistence (``RaftStorage.save``/``compact``) at
the simulated moment its fsync completes.  When the member crashes while that
step is in flight, the step is instead run with a crash point armed: the
wrapper lets ``budget`` mutating operations through (writes, allocations, truncations,
fsyncs, renames, removals, directory fsyncs, file creations) and raises
``SimulatedCrash`` at the next one.  The simulated file system's ``crash()``
then drops whatever was not synced and may tear the last write.  So a crash
can land between any two operations of the real persistence code, including
between a write and its fsync.
"""

from __future__ import annotations

from catenary.storage.fs import File, FileSystem


class SimulatedCrash(Exception):
    """Raised at the armed crash point; the member is going down."""


class _Budget:
    def __init__(self) -> None:
        self.remaining: int | None = None  # None = not armed
        self.operations = 0

    def spend(self) -> None:
        self.operations += 1
        if self.remaining is None:
            return
        if self.remaining <= 0:
            raise SimulatedCrash
        self.remaining -= 1


class CrashPointFile:
    def __init__(self, inner: File, budget: _Budget) -> None:
        self._inner = inner
        self._budget = budget

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._budget.spend()
        self._inner.write(data)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._budget.spend()
        self._inner.pwrite(offset, data)

    def allocate(self, size: int) -> None:
        self._budget.spend()
        self._inner.allocate(size)

    def pread(self, offset: int, n: int) -> bytes:
        return self._inner.pread(offset, n)

    def fsync(self) -> None:
        self._budget.spend()
        self._inner.fsync()

    def truncate(self, size: int) -> None:
        self._budget.spend()
        self._inner.truncate(size)

    def size(self) -> int:
        return self._inner.size()

    def close(self) -> None:
        self._inner.close()


class CrashPointFileSystem:
    """Passes every call through to ``inner``, counting the mutating ones."""

    def __init__(self, inner: FileSystem) -> None:
        self.inner = inner
        self._budget = _Budget()

    def arm(self, budget: int) -> None:
        """Let ``budget`` more mutating operations through, then raise SimulatedCrash."""
        self._budget.remaining = budget

    def disarm(self) -> None:
        self._budget.remaining = None

    @property
    def operations(self) -> int:
        return self._budget.operations

    def open(self, path: str, create: bool) -> File:
        if create and not self.inner.exists(path):
            self._budget.spend()
        return CrashPointFile(self.inner.open(path, create), self._budget)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def listdir(self, path: str) -> list[str]:
        return self.inner.listdir(path)

    def mkdir(self, path: str) -> None:
        if not self.inner.exists(path):
            self._budget.spend()
        self.inner.mkdir(path)

    def remove(self, path: str) -> None:
        self._budget.spend()
        self.inner.remove(path)

    def rename(self, src: str, dst: str) -> None:
        self._budget.spend()
        self.inner.rename(src, dst)

    def fsync_dir(self, path: str) -> None:
        self._budget.spend()
        self.inner.fsync_dir(path)

    def file_size(self, path: str) -> int:
        return self.inner.file_size(path)
