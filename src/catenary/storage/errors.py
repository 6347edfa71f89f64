"""Errors raised by the storage engine.

Every error names what it is about (file, offset, position) so an operator can act on it.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every storage-engine error."""


class CorruptionError(StorageError):
    """Stored bytes fail their checksum or structure check where a torn tail cannot explain it.

    ``path`` names the file and ``offset`` the byte where the bad data starts (``None`` when the
    problem concerns the file as a whole, e.g. a missing segment in a chain).
    """

    def __init__(self, path: str, offset: int | None, reason: str) -> None:
        where = path if offset is None else f"{path} at offset {offset}"
        super().__init__(f"corruption in {where}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason

    def __reduce__(self) -> tuple[type[CorruptionError], tuple[str, int | None, str]]:
        return (CorruptionError, (self.path, self.offset, self.reason))


class PositionError(IndexError, StorageError):
    """A position outside the store's half-open range ``[first_position, next_position)``."""


class RecordTooLargeError(StorageError, ValueError):
    """A payload larger than ``StoreConfig.record_bytes_max``."""


class StoreFailedError(StorageError):
    """The store saw an I/O error it cannot safely recover from (e.g. a failed fsync).

    After a failed fsync the kernel may have dropped dirty pages, so nothing written since the
    last good fsync can be trusted; the store refuses further writes until it is reopened,
    which re-reads and re-validates what is actually on disk.
    """


class PartlyDurableError(StoreFailedError):
    """A submission ended durable only in part: its outcome is unknown to its submitter.

    Records ``[first_position, durable_next_position)`` of it reached the disk before the write
    of the rest failed (e.g. ENOSPC in a new segment file). Reporting that as a plain failure would
    let a caller retry records that are already stored; so the store refuses further writes until
    it is reopened, and the submitter must treat the outcome as indeterminate.
    """

    def __init__(self, first_position: int, durable_next_position: int, cause: BaseException):
        super().__init__(
            f"records from {first_position} are durable only below {durable_next_position} "
            f"after {cause!r}; outcome unknown, reopen the store"
        )
        self.first_position = first_position
        self.durable_next_position = durable_next_position
        self.cause = cause


class StoreClosedError(StorageError):
    """The store or writer was used after ``close()``."""


class Overloaded(StorageError):
    """A bounded queue is full and the caller asked not to wait."""
