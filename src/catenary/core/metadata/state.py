"""The metadata state machine: versioned keys, leases, a watch history, snapshots.

Theory of operation
-------------------
Every member applies the same committed Raft entries in the same order, so
every rule below depends only on the entry data and the state before it; no
clock, no randomness, no iteration over an unordered container where order
matters.  The rules:

1. ``revision`` grows by exactly one per change: a put, a delete of a present
   key, and every key deleted by a lease revoke/expire.  A delete of an absent
   key changes nothing and answers ``Written(revision, absent=True)``.  Each change produces
   exactly one ``Event`` whose ``version`` is that new revision, so the watch
   history is contiguous: event ``i`` has version ``history_start + 1 + i``.
2. A key's version is the revision of its last change; version 0 = absent.
   Versions never go down (also across delete and re-create).
3. A command that fails a check changes nothing and returns a result saying
   why: ``PreconditionFailed`` (naming the current version), ``LeaseNotFound``,
   or ``Rejected`` (undecodable entry, empty/oversized key or value, bad TTL,
   count bound reached).  ``apply`` never raises on entry data: a bad entry
   must not stop the member, and every member rejects it identically.
4. Leases carry ``remaining_ms`` as last recorded by a ``LeaseCheckpoint`` (a
   grant or keep-alive resets it to the TTL).  Expiry is not decided here (no
   clock): the leader's ``Lessor`` proposes ``LeaseExpire``.  An expiry spares a
   lease refreshed by an entry after the proposer's ``applied_index``.
5. Deleting a key of a lease (revoke/expire) goes in key order; leases of one
   command in id order.  A put moves its key to the named lease (or detaches
   it with lease 0).
6. The watch history keeps the last ``watch_history_max`` events.  A watcher
   asks for changes with version > ``from_version``; if such events were
   dropped the answer is ``Compacted`` (resync by listing, then watch from the
   list's revision).  An answer never reports a revision lower than the
   watcher's ``from_version``, so a watcher never goes back in time even when
   it moves to a member that is behind.
7. ``snapshot()`` is a deterministic encoding (keys and leases sorted) of the
   whole state except the watch history; after ``restore`` the history starts
   at the snapshot's revision.  Two members that applied the same entries
   produce byte-identical snapshots.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field

import msgspec

from catenary.core.metadata.types import (
    Command,
    Compacted,
    Delete,
    Done,
    Event,
    KeyValue,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseGranted,
    LeaseKeepAlive,
    LeaseNotFound,
    LeaseRevoke,
    Precondition,
    PreconditionFailed,
    Put,
    Rejected,
    Request,
    Result,
    WatchBatch,
    Written,
    decode_request,
)

SNAPSHOT_FORMAT = 1


class MetadataConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds of the state machine; every member of a group must use the same values."""

    key_bytes_max: int = 4096  # UTF-8 length of a key
    value_bytes_max: int = 1024 * 1024
    watch_history_max: int = 10_000  # events kept for watchers
    leases_max: int = 100_000
    lease_ttl_ms_min: int = 1
    lease_ttl_ms_max: int = 7 * 24 * 3600 * 1000

    def __post_init__(self) -> None:
        if self.key_bytes_max < 1 or self.value_bytes_max < 0:
            raise ValueError("key_bytes_max must be >= 1 and value_bytes_max >= 0")
        if self.watch_history_max < 0 or self.leases_max < 0:
            raise ValueError("watch_history_max and leases_max must be >= 0")
        if not 1 <= self.lease_ttl_ms_min <= self.lease_ttl_ms_max:
            raise ValueError("need 1 <= lease_ttl_ms_min <= lease_ttl_ms_max")


class LeaseInfo(msgspec.Struct, array_like=True, frozen=True):
    """A lease as the state knows it (``remaining_ms`` as of the last checkpoint)."""

    lease: int
    ttl_ms: int
    remaining_ms: int
    refreshed_index: int  # Raft index of the last grant / keep-alive
    keys: tuple[str, ...] = ()


class SnapshotError(ValueError):
    """The snapshot data is not a valid metadata snapshot."""


class _Snapshot(msgspec.Struct, array_like=True, frozen=True):
    format: int
    applied_index: int
    revision: int
    next_lease: int
    kvs: tuple[KeyValue, ...]  # sorted by key
    leases: tuple[LeaseInfo, ...]  # sorted by lease, keys omitted (derived from kvs)


_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(_Snapshot)


@dataclass(slots=True)
class _Lease:
    ttl_ms: int
    remaining_ms: int
    refreshed_index: int
    keys: set[str] = field(default_factory=set)


class MetadataStateMachine:
    """Applies committed metadata commands; answers reads from the applied state."""

    def __init__(self, config: MetadataConfig | None = None) -> None:
        self.config = config or MetadataConfig()
        self._applied_index = 0
        self._revision = 0
        self._next_lease = 1
        self._kvs: dict[str, KeyValue] = {}
        self._sorted_keys: list[str] = []  # the keys of _kvs, in order, for list()
        self._leases: dict[int, _Lease] = {}
        # Watch history: _history[_history_offset:] are the kept events; the
        # first kept one has version _history_start + 1.  Dropping is amortized
        # (a slice delete once the dead prefix is as long as the bound).
        self._history: list[Event] = []
        self._history_offset = 0
        self._history_start = 0
        self.last_command: Command | None = None  # of the last apply(), for the Lessor

    # ------------------------------------------------------------ properties

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def history_start(self) -> int:
        """Watchers may resume from any ``from_version >= history_start``."""
        return self._history_start

    @property
    def key_count(self) -> int:
        return len(self._kvs)

    # ----------------------------------------------------------------- apply

    def apply_noop(self, index: int) -> None:
        """A NOOP or CONFIG entry: only the applied index moves."""
        assert index > self._applied_index, (index, self._applied_index)
        self._applied_index = index
        self.last_command = None

    def apply(self, index: int, data: bytes) -> tuple[int, Result]:
        """Apply one committed NORMAL entry; returns (request_id, result).

        Undecodable data gives request id 0 and ``Rejected("bad_request")``.
        """
        assert index > self._applied_index, (index, self._applied_index)
        self._applied_index = index
        self.last_command = None
        try:
            request = decode_request(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return 0, Rejected("bad_request", f"undecodable entry at index {index}: {exc}")
        self.last_command = request.command
        return request.request_id, self._apply_command(index, request.command)

    def apply_request(self, index: int, request: Request) -> Result:
        """Like ``apply`` for an already decoded request (hosts with no Raft)."""
        assert index > self._applied_index, (index, self._applied_index)
        self._applied_index = index
        self.last_command = request.command
        return self._apply_command(index, request.command)

    def _apply_command(self, index: int, command: Command) -> Result:
        match command:
            case Put():
                return self._put(command)
            case Delete():
                return self._delete(command)
            case LeaseGrant():
                return self._grant(index, command)
            case LeaseKeepAlive():
                return self._keep_alive(index, command)
            case LeaseRevoke():
                return self._revoke(command)
            case LeaseCheckpoint():
                return self._checkpoint(command)
            case LeaseExpire():
                return self._expire(command)
        raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover

    # ---------------------------------------------------------------- writes

    def _check_key(self, key: str) -> Rejected | None:
        if not key:
            return Rejected("bad_request", "empty key")
        size = len(key.encode("utf-8", "surrogatepass"))
        if size > self.config.key_bytes_max:
            return Rejected(
                "too_large",
                f"key of {size} bytes exceeds key_bytes_max={self.config.key_bytes_max}",
            )
        return None

    def _precondition(self, key: str, precondition: Precondition) -> Result | None:
        """None when it holds; else the result to return."""
        current = self._kvs.get(key)
        version = current.version if current is not None else 0
        if precondition.kind == "none":
            return None
        if precondition.kind == "absent":
            return None if version == 0 else PreconditionFailed(key, version)
        if precondition.kind == "version":
            if precondition.version < 0:
                return Rejected(
                    "bad_request", f"negative precondition version {precondition.version}"
                )
            return None if version == precondition.version else PreconditionFailed(key, version)
        return Rejected("bad_request", f"unknown precondition kind {precondition.kind!r}")

    def _put(self, command: Put) -> Result:
        rejected = self._check_key(command.key)
        if rejected is not None:
            return rejected
        if len(command.value) > self.config.value_bytes_max:
            return Rejected(
                "too_large",
                f"value of {len(command.value)} bytes exceeds "
                f"value_bytes_max={self.config.value_bytes_max}",
            )
        if command.lease < 0:
            return Rejected("bad_request", f"negative lease id {command.lease}")
        failed = self._precondition(command.key, command.precondition)
        if failed is not None:
            return failed
        if command.lease and command.lease not in self._leases:
            return LeaseNotFound(command.lease)
        previous = self._kvs.get(command.key)
        if previous is None:
            insort(self._sorted_keys, command.key)
        elif previous.lease and previous.lease != command.lease:
            self._leases[previous.lease].keys.discard(command.key)
        if command.lease:
            self._leases[command.lease].keys.add(command.key)
        self._revision += 1
        self._kvs[command.key] = KeyValue(command.key, command.value, self._revision, command.lease)
        self._record(Event("put", command.key, command.value, self._revision))
        return Written(self._revision)

    def _delete(self, command: Delete) -> Result:
        rejected = self._check_key(command.key)
        if rejected is not None:
            return rejected
        failed = self._precondition(command.key, command.precondition)
        if failed is not None:
            return failed
        if command.key not in self._kvs:
            return Written(self._revision, absent=True)  # nothing to delete: no change, no event
        self._remove_key(command.key)
        return Written(self._revision)

    def _remove_key(self, key: str) -> None:
        previous = self._kvs.pop(key)
        position = bisect_left(self._sorted_keys, key)
        assert self._sorted_keys[position] == key
        del self._sorted_keys[position]
        if previous.lease:
            self._leases[previous.lease].keys.discard(key)
        self._revision += 1
        self._record(Event("delete", key, b"", self._revision))

    def _record(self, event: Event) -> None:
        history_max = self.config.watch_history_max
        self._history.append(event)
        kept = len(self._history) - self._history_offset
        assert event.version == self._history_start + kept, (event, self._history_start, kept)
        if kept > history_max:
            self._history_offset += 1
            self._history_start += 1
            if self._history_offset >= max(history_max, 64):
                del self._history[: self._history_offset]
                self._history_offset = 0

    # ---------------------------------------------------------------- leases

    def _grant(self, index: int, command: LeaseGrant) -> Result:
        ttl_ms = command.ttl_ms
        if not self.config.lease_ttl_ms_min <= ttl_ms <= self.config.lease_ttl_ms_max:
            return Rejected(
                "bad_request",
                f"lease ttl_ms={ttl_ms} outside [{self.config.lease_ttl_ms_min}, "
                f"{self.config.lease_ttl_ms_max}]",
            )
        if len(self._leases) >= self.config.leases_max:
            return Rejected("limit", f"leases_max={self.config.leases_max} leases already exist")
        lease = self._next_lease
        self._next_lease += 1
        self._leases[lease] = _Lease(ttl_ms, ttl_ms, index)
        return LeaseGranted(lease, ttl_ms)

    def _keep_alive(self, index: int, command: LeaseKeepAlive) -> Result:
        held = self._leases.get(command.lease)
        if held is None:
            return LeaseNotFound(command.lease)
        held.remaining_ms = held.ttl_ms
        held.refreshed_index = index
        return LeaseGranted(command.lease, held.ttl_ms)

    def _revoke(self, command: LeaseRevoke) -> Result:
        if command.lease not in self._leases:
            return LeaseNotFound(command.lease)
        self._drop_lease(command.lease)
        return Done()

    def _drop_lease(self, lease: int) -> None:
        held = self._leases[lease]
        for key in sorted(held.keys):
            current = self._kvs.get(key)
            assert current is not None and current.lease == lease, (key, current, lease)
            self._remove_key(key)  # also detaches it from the lease
        assert not held.keys
        del self._leases[lease]

    def _checkpoint(self, command: LeaseCheckpoint) -> Result:
        for lease, remaining_ms in command.remaining_ms:
            held = self._leases.get(lease)
            if held is not None and (
                command.applied_index == 0 or held.refreshed_index <= command.applied_index
            ):
                # A lease refreshed after the proposer measured keeps its fresh TTL.
                # (0: a checkpoint written before checkpoints carried the index; it is
                # replayed as it was first applied.)
                held.remaining_ms = max(0, min(remaining_ms, held.ttl_ms))
        return Done()

    def _expire(self, command: LeaseExpire) -> Result:
        for lease in sorted(set(command.leases)):
            held = self._leases.get(lease)
            if held is None or held.refreshed_index > command.applied_index:
                continue  # already gone, or refreshed after the proposer decided
            self._drop_lease(lease)
        return Done()

    # ----------------------------------------------------------------- reads

    def get(self, key: str) -> KeyValue | None:
        return self._kvs.get(key)

    def list(self, prefix: str, limit: int = 0) -> tuple[tuple[KeyValue, ...], bool]:
        """Keys starting with ``prefix`` in key order; ``limit`` <= 0 = no limit.

        Returns (kvs, more): ``more`` is True when the limit cut the answer.
        """
        start = bisect_left(self._sorted_keys, prefix)
        found: list[KeyValue] = []
        keys = self._sorted_keys
        for position in range(start, len(keys)):
            key = keys[position]
            if not key.startswith(prefix):
                break
            if 0 < limit <= len(found):
                return tuple(found), True
            found.append(self._kvs[key])
        return tuple(found), False

    def lease(self, lease: int) -> LeaseInfo | None:
        held = self._leases.get(lease)
        if held is None:
            return None
        return LeaseInfo(
            lease, held.ttl_ms, held.remaining_ms, held.refreshed_index, tuple(sorted(held.keys))
        )

    def leases(self) -> tuple[LeaseInfo, ...]:
        """Every lease, by id, without its keys."""
        return tuple(
            LeaseInfo(lease, held.ttl_ms, held.remaining_ms, held.refreshed_index)
            for lease, held in sorted(self._leases.items())
        )

    def changes_since(
        self, from_version: int, key: str, prefix: bool = False, limit: int = 0
    ) -> WatchBatch | Compacted:
        """Events with version > ``from_version`` for ``key`` (or keys starting with it).

        ``limit`` <= 0 = no limit.  The batch's ``revision`` is what the watcher
        is caught up to: pass it as the next ``from_version``.  (A host that
        offers "0 = from now" maps 0 to ``revision`` before calling.)
        """
        if from_version < self._history_start:
            return Compacted(self._history_start, self._revision)
        if from_version >= self._revision:
            return WatchBatch((), from_version)  # never back in time, even when behind
        history = self._history
        first = self._history_offset + (from_version - self._history_start)
        found: list[Event] = []
        for position in range(first, len(history)):
            event = history[position]
            if event.key == key or (prefix and event.key.startswith(key)):
                found.append(event)
                if 0 < limit <= len(found):
                    return WatchBatch(tuple(found), event.version)
        return WatchBatch(tuple(found), self._revision)

    # ------------------------------------------------------------- snapshots

    def snapshot(self) -> bytes:
        kvs = tuple(self._kvs[key] for key in self._sorted_keys)
        leases = tuple(
            LeaseInfo(lease, held.ttl_ms, held.remaining_ms, held.refreshed_index)
            for lease, held in sorted(self._leases.items())
        )
        return _snapshot_encoder.encode(
            _Snapshot(
                SNAPSHOT_FORMAT,
                self._applied_index,
                self._revision,
                self._next_lease,
                kvs,
                leases,
            )
        )

    @classmethod
    def restore(cls, data: bytes, config: MetadataConfig | None = None) -> MetadataStateMachine:
        """Rebuild from ``snapshot()`` output; raises ``SnapshotError`` on bad data."""
        try:
            snap = _snapshot_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SnapshotError(f"undecodable metadata snapshot: {exc}") from exc
        if snap.format != SNAPSHOT_FORMAT:
            raise SnapshotError(f"unknown metadata snapshot format {snap.format}")
        if min(snap.applied_index, snap.revision) < 0 or snap.next_lease < 1:
            raise SnapshotError("negative index/revision or next_lease < 1 in snapshot")
        machine = cls(config)
        machine._applied_index = snap.applied_index
        machine._revision = snap.revision
        machine._next_lease = snap.next_lease
        machine._history_start = snap.revision
        for info in snap.leases:
            if info.lease in machine._leases or not 0 < info.lease < snap.next_lease:
                raise SnapshotError(f"lease {info.lease} duplicated or not below next_lease")
            machine._leases[info.lease] = _Lease(
                info.ttl_ms, info.remaining_ms, info.refreshed_index
            )
        previous = ""
        for kv in snap.kvs:
            if kv.key <= previous:
                raise SnapshotError(f"snapshot keys not strictly sorted at {kv.key!r}")
            if not 0 < kv.version <= snap.revision:
                raise SnapshotError(f"key {kv.key!r} version {kv.version} outside revision")
            if kv.lease:
                held = machine._leases.get(kv.lease)
                if held is None:
                    raise SnapshotError(f"key {kv.key!r} names missing lease {kv.lease}")
                held.keys.add(kv.key)
            machine._kvs[kv.key] = kv
            previous = kv.key
        machine._sorted_keys = [kv.key for kv in snap.kvs]
        return machine
