"""The ``local`` metadata store: the metadata state machine on one node, with no Raft.

Theory of operation
-------------------
Layout under ``directory``::

    log/       a SegmentedStore; record position == index; payload = an encoded Request
    snapshot   atomic_write(MetadataStateMachine.snapshot()); covers indexes <= its applied index
    sealed     atomic_write(marker) once the store was exported for good (``seal``)

Rules:

1. A write (put, delete, any lease command) is appended to the log and the
   log is fsynced *before* the command is applied and its result returned:
   an answered write is durable.  A batch (``execute_batch``) shares one
   fsync.  Every command is logged, including those that will fail a
   precondition, so replay repeats exactly the same decisions.
2. A write whose sync fails is not applied: an ``OSError`` such as ENOSPC
   that left nothing of the batch in the log leaves the store at its last
   durable state (retry once space returns); a failed fsync, or a failed write
   after part of the batch was made durable (a batch spanning segments), leaves
   the outcome unknown (``MetadataStoreFailed``), so the store refuses every
   further write until it is reopened (reopening reads what is really on disk).
3. Every ``snapshot_every_writes`` entries a snapshot is written atomically,
   then whole log segments below it are dropped.  Open = restore the snapshot,
   then replay the log after it.  A log that starts after the snapshot's index
   + 1, or ends before it, is corruption and raises ``CorruptionError``; a
   corrupt snapshot or log likewise (the storage layer checks every checksum).
4. Lease time comes from the injected clock (monotonic milliseconds).  The
   store runs the ``Lessor`` as if always leader; ``tick()`` logs the
   ``LeaseExpire``/``LeaseCheckpoint`` commands it asks for, so a restart
   resumes each lease from its last checkpointed remaining time.
5. ``seal()`` makes the store read-only for good (a durable marker): the
   migration to the replicated store imports ``export()`` — a snapshot in the
   replicated state machine's own format, so every key keeps its version — and
   the local store can then never take another write.
6. Thread safety: writers are serialized by one lock (the server calls them
   from its writer thread); reads take only the state lock, which a write
   holds while applying in memory, never during an fsync.
"""

from __future__ import annotations

import posixpath
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from catenary.core.metadata.lessor import Lessor, LessorConfig
from catenary.core.metadata.state import LeaseInfo, MetadataConfig, MetadataStateMachine
from catenary.core.metadata.types import (
    Command,
    Compacted,
    Delete,
    KeyValue,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Precondition,
    Put,
    Rejected,
    Request,
    Result,
    WatchBatch,
    encode_request,
)
from catenary.storage.atomic import atomic_write, read_checked
from catenary.storage.errors import CorruptionError, StorageError
from catenary.storage.fs import FileSystem
from catenary.storage.store import RecoveryReport, SegmentedStore, StoreConfig

LOG_DIR = "log"
SNAPSHOT_NAME = "snapshot"
SEALED_NAME = "sealed"


class MetadataStoreSealed(StorageError):
    """The local store was sealed (exported to the replicated store); it takes no writes."""


class MetadataStoreFailed(StorageError):
    """An earlier fsync failed; the outcome of that write is unknown until the store is reopened."""


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class LocalMetadataConfig:
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    lessor: LessorConfig = field(default_factory=LessorConfig)
    store: StoreConfig = field(default_factory=lambda: StoreConfig(segment_bytes_max=16 << 20))
    snapshot_every_writes: int = 10_000  # entries between snapshots (then the log is truncated)
    batch_max: int = 1024  # commands per execute_batch call

    def __post_init__(self) -> None:
        if self.snapshot_every_writes < 1 or self.batch_max < 1:
            raise ValueError("snapshot_every_writes and batch_max must be >= 1")


class _Sealed(msgspec.Struct, array_like=True, frozen=True):
    applied_index: int
    revision: int


class LocalMetadataStore:
    """A durable single-node metadata store with the replicated store's API."""

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        config: LocalMetadataConfig,
        log: SegmentedStore,
        state: MetadataStateMachine,
        snapshot_index: int,
        sealed: bool,
        clock: Callable[[], int],
    ) -> None:
        # Use :meth:`open`.
        self._fs = fs
        self._dir = directory
        self.config = config
        self._log = log
        self._state = state
        self._snapshot_index = snapshot_index
        self._sealed = sealed
        self._clock = clock
        self._failed: BaseException | None = None
        self._closed = False
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._lessor = Lessor(config.lessor)
        self._lessor.become_leader(state, clock())
        self._listeners: list[Callable[[int], None]] = []
        self.snapshot_error: OSError | None = None  # the last failed snapshot attempt, if any

    @classmethod
    def open(
        cls,
        fs: FileSystem,
        directory: str,
        config: LocalMetadataConfig | None = None,
        *,
        clock: Callable[[], int] = monotonic_ms,
    ) -> LocalMetadataStore:
        """Open (creating if needed) and recover: snapshot, then replay of the log (rule 3)."""
        config = config or LocalMetadataConfig()
        fs.mkdir(directory)
        snapshot_path = posixpath.join(directory, SNAPSHOT_NAME)
        data = read_checked(fs, snapshot_path)
        if data is None:
            state = MetadataStateMachine(config.metadata)
        else:
            try:
                state = MetadataStateMachine.restore(data, config.metadata)
            except ValueError as exc:
                raise CorruptionError(snapshot_path, None, str(exc)) from exc
        snapshot_index = state.applied_index
        log_dir = posixpath.join(directory, LOG_DIR)
        log = SegmentedStore.open(fs, log_dir, config.store, first_position=1)
        try:
            start = state.applied_index + 1
            if log.first_position > start or log.next_position < start:
                raise CorruptionError(
                    log_dir,
                    None,
                    f"log holds [{log.first_position}, {log.next_position}) but the snapshot "
                    f"ends at index {state.applied_index}",
                )
            position = start
            while position < log.next_position:
                end = min(log.next_position, position + config.batch_max)
                for payload in log.read_range(position, end):
                    state.apply(position, payload)
                    position += 1
            sealed = read_checked(fs, posixpath.join(directory, SEALED_NAME)) is not None
        except BaseException:
            log.close()
            raise
        return cls(fs, directory, config, log, state, snapshot_index, sealed, clock)

    def close(self) -> None:
        with self._write_lock:
            if not self._closed:
                self._closed = True
                if self._failed is None:
                    self._log.close()

    # ----------------------------------------------------------------- writes

    def put(
        self,
        key: str,
        value: bytes,
        precondition: Precondition | None = None,
        lease: int = 0,
    ) -> Result:
        return self.execute(Put(key, value, precondition or Precondition(), lease))

    def delete(self, key: str, precondition: Precondition | None = None) -> Result:
        return self.execute(Delete(key, precondition or Precondition()))

    def grant(self, ttl_ms: int) -> Result:
        return self.execute(LeaseGrant(ttl_ms))

    def keep_alive(self, lease: int) -> Result:
        return self.execute(LeaseKeepAlive(lease))

    def revoke(self, lease: int) -> Result:
        return self.execute(LeaseRevoke(lease))

    def execute(self, command: Command) -> Result:
        """Log, fsync, apply one command; its result (rule 1)."""
        return self.execute_batch([command])[0]

    def execute_batch(self, commands: Sequence[Command]) -> list[Result]:
        """Log every command, fsync once, then apply them in order (rule 1)."""
        if len(commands) > self.config.batch_max:
            raise ValueError(f"{len(commands)} commands exceed batch_max={self.config.batch_max}")
        with self._write_lock:
            self._check_writable()
            results: list[Result | None] = []
            payloads: list[bytes] = []
            for command in commands:
                refused = self._refuse_early(command)
                results.append(refused)
                if refused is None:
                    payloads.append(encode_request(Request(0, command)))
            if payloads:
                before = self._log.next_position
                try:
                    first = self._log.append(payloads)
                    self._log.sync()
                except BaseException as exc:
                    if self._log.next_position != before:
                        # A failed fsync (the records may or may not be on disk), or a
                        # batch made durable only in part (a write failed in a later
                        # segment): either way the log is not what memory holds.
                        self._failed = exc
                        raise MetadataStoreFailed(
                            f"sync of the metadata log failed; outcome unknown, reopen: {exc!r}"
                        ) from exc
                    raise  # e.g. ENOSPC: rolled back to the last durable state (rule 2)
                now_ms = self._clock()
                with self._state_lock:
                    out: list[Result] = []
                    position = first
                    for result in results:
                        if result is not None:
                            out.append(result)
                            continue
                        _, applied = self._state.apply(position, payloads[position - first])
                        self._lessor.observe(position, self._state.last_command, applied, now_ms)
                        out.append(applied)
                        position += 1
                    revision = self._state.revision
                self._maybe_snapshot()
                self._notify(revision)
                return out
            return [result for result in results if result is not None]

    def tick(self) -> list[Result]:
        """Expire leases that ran out and checkpoint the others when due (rule 4)."""
        now_ms = self._clock()
        commands: list[Command] = []
        expire = self._lessor.expired(now_ms)
        if expire is not None:
            commands.append(expire)
        checkpoint = self._lessor.checkpoint(now_ms)
        if checkpoint is not None:
            commands.append(checkpoint)
        if not commands or self._sealed:
            return []
        return self.execute_batch(commands)

    def seal(self) -> None:
        """Refuse every further write, durably (rule 5)."""
        with self._write_lock:
            self._check_writable()
            with self._state_lock:
                marker = _Sealed(self._state.applied_index, self._state.revision)
            atomic_write(
                self._fs, posixpath.join(self._dir, SEALED_NAME), msgspec.msgpack.encode(marker)
            )
            self._sealed = True

    def export(self) -> bytes:
        """The whole state as a ``MetadataStateMachine`` snapshot (for the migration)."""
        with self._state_lock:
            return self._state.snapshot()

    def _check_writable(self) -> None:
        if self._closed:
            raise StorageError(f"local metadata store {self._dir} is closed")
        if self._failed is not None:
            raise MetadataStoreFailed(
                f"local metadata store {self._dir} failed earlier ({self._failed!r}); reopen it"
            )
        if self._sealed:
            raise MetadataStoreSealed(f"local metadata store {self._dir} is sealed")

    def _refuse_early(self, command: Command) -> Result | None:
        """Refuse oversized keys/values before they reach the log (the same answer replay gives)."""
        limits = self.config.metadata
        if isinstance(command, Put | Delete):
            size = len(command.key.encode("utf-8", "surrogatepass"))
            if size > limits.key_bytes_max:
                return Rejected(
                    "too_large", f"key of {size} bytes exceeds key_bytes_max={limits.key_bytes_max}"
                )
        if isinstance(command, Put) and len(command.value) > limits.value_bytes_max:
            return Rejected(
                "too_large",
                f"value of {len(command.value)} bytes exceeds "
                f"value_bytes_max={limits.value_bytes_max}",
            )
        return None

    def _maybe_snapshot(self) -> None:
        with self._state_lock:
            applied = self._state.applied_index
            if applied - self._snapshot_index < self.config.snapshot_every_writes:
                return
            data = self._state.snapshot()
        try:
            atomic_write(self._fs, posixpath.join(self._dir, SNAPSHOT_NAME), data)
        except OSError as exc:
            # The writes themselves are durable in the log; try again after the next one.
            self.snapshot_error = exc
            return
        self.snapshot_error = None
        self._snapshot_index = applied
        try:
            self._log.truncate_prefix(applied + 1)
        except BaseException as exc:
            self._failed = exc  # the store refuses writes now; reopening recovers

    # ------------------------------------------------------------------ reads

    def get(self, key: str) -> KeyValue | None:
        with self._state_lock:
            return self._state.get(key)

    def list(self, prefix: str, limit: int = 0) -> tuple[tuple[KeyValue, ...], bool]:
        with self._state_lock:
            return self._state.list(prefix, limit)

    def changes_since(
        self, from_version: int, key: str, prefix: bool = False, limit: int = 0
    ) -> WatchBatch | Compacted:
        with self._state_lock:
            return self._state.changes_since(from_version, key, prefix, limit)

    def lease(self, lease: int) -> LeaseInfo | None:
        with self._state_lock:
            return self._state.lease(lease)

    @property
    def revision(self) -> int:
        return self._state.revision

    @property
    def applied_index(self) -> int:
        return self._state.applied_index

    @property
    def sealed(self) -> bool:
        return self._sealed

    @property
    def snapshot_index(self) -> int:
        return self._snapshot_index

    @property
    def log_recovery(self) -> RecoveryReport:
        """What opening the log found and repaired (torn tail cut, files removed)."""
        return self._log.recovery

    def subscribe(self, listener: Callable[[int], None]) -> None:
        """``listener(revision)`` after every applied batch (from the writer's thread)."""
        self._listeners.append(listener)

    def _notify(self, revision: int) -> None:
        for listener in self._listeners:
            listener(revision)
