"""Durable Raft state of one member: log entries, hard state and the last snapshot.

Theory of operation
-------------------
Layout under ``directory``::

    log/        a SegmentedStore; record position == Raft index; payload = msgpack(Entry)
    hardstate   atomic_write(msgpack(HardState)); rewritten only when term or vote change
    snapshot    atomic_write(msgpack(Snapshot)); the last state-machine snapshot

Rules (each one is what a restart relies on):

1. ``save(ready)`` persists, in this order, the hard state (when term or vote
   changed), the snapshot (if any), then the entries, and returns only once all
   of it is durable.  The entries are written with one ``store.sync()``; the
   small files by ``atomic_write`` (write temp, fsync, rename, fsync dir).  The
   host sends ``messages_after_persist`` only after ``save`` returned.  The hard
   state goes first so that a crash part-way never leaves entries of a term
   above the stored term (Raft's "term never decreases" holds on disk too; a
   lost vote is harmless because its grant was not sent yet).
2. An installed snapshot replaces the whole log: the snapshot file is written
   first, then the store is reset to start at ``snapshot.index + 1``.  A crash
   between the two leaves older entries in the store; ``load`` reconciles them
   (rule 5).
3. Entries that overlap stored ones replace them and everything after them
   (``truncate_suffix`` at the first new index, then ``append``): Raft only ever
   overwrites an uncommitted suffix.  A gap (first new index beyond the next
   position) is a bug in the caller and raises.
4. The commit index need not be durable: the hard state file is rewritten only
   when term or vote change (a vote must be durable before it is granted; a
   term before it is acted on).  A stale commit on load is safe: Raft learns the
   commit again from the leader.  A commit that is too *high* is not: it would
   make a restarted member apply entries that were never committed.  Hence the
   **commit rule**: *the commit index in the hard state file covers only entries
   that were durable, in their final form, when that file was written.*  Because
   the hard state is written before this Ready's snapshot and entries (rule 1),
   ``save`` writes ``min(commit, bound)`` where ``bound`` is

   - ``first index of the Ready's entries - 1`` when it carries entries: the
     entries below it are durable (earlier saves) and match the leader's log
     (the core appends from the first conflicting index on, and a conflict is
     never at or below the commit); the Ready's own entries, and whatever stale
     suffix they replace, are not durable in their final form yet;
   - the highest commit of a completed ``save`` when it carries a snapshot (the
     old log beyond that may be replaced wholesale by the snapshot);
   - the Ready's commit otherwise (every entry the core holds is durable).

   After ``save`` returns, every entry at or below the Ready's commit is durable
   and final, so a later hard state may cover them.  Raft never rewrites an
   entry at or below a commit, so what a written commit covers stays final
   through any later truncation, torn tail or crash.  (Without the rule a member
   holding entries 1-3 of term 6 that crashes between writing
   ``HardState(term=7, commit=3)`` and replacing entry 3 with term 7's would
   restart with commit 3 over its own stale entry 3 and apply it.)
5. ``load`` returns (hard state, snapshot, entries after the snapshot).  If the
   store's entry at the snapshot's index has another term (or the store ends
   before the snapshot), the store is reset to ``snapshot.index + 1``: those
   entries belonged to the log the snapshot replaced.  A hole between the
   snapshot and the first stored entry, an entry whose index is not its
   position, or a term that goes back, is corruption and raises
   ``RaftStorageCorruption`` (never skipped).
6. ``compact(index, snapshot)`` persists the snapshot, then drops whole segment
   files below ``index + 1``; entries at or below the snapshot index that
   survive in a partly kept segment are ignored by ``load``.
7. Several Readies, one sync.  ``save(ready, sync=False)`` appends the Ready's
   entries without syncing them; ``flush()`` syncs everything appended so far
   with one ``store.sync()`` (one write, one ``fdatasync``), and only then do
   those Readies count as durable (and their commits as final, rule 4).  A
   ``save`` that writes a hard state (term or vote changed) or a snapshot, and
   every ``compact``, flushes first, so rule 1's order and rule 4's bound hold
   as if each earlier Ready had been saved alone.  The host uses it to write
   the jobs queued behind a running one as one group.

Single owner, synchronous: the server calls it from its writer thread, the
simulator from its event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import msgspec

from catenary.core.raft.types import Entry, HardState, Ready, Snapshot
from catenary.storage.atomic import atomic_write, read_checked
from catenary.storage.fs import FileSystem
from catenary.storage.store import RecoveryReport, SegmentedStore, StoreConfig

_T = TypeVar("_T")

_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(Entry)
_hard_state_decoder = msgspec.msgpack.Decoder(HardState)
_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)


class RaftStorageCorruption(Exception):
    """The stored Raft state is inconsistent; the member must not start on it."""

    def __init__(self, directory: str, reason: str) -> None:
        super().__init__(f"raft storage {directory}: {reason}")
        self.directory = directory
        self.reason = reason


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


class RaftStorage:
    """Raft log + hard state + snapshot of one member, on a FileSystem."""

    def __init__(self, fs: FileSystem, directory: str, store: SegmentedStore) -> None:
        self._fs = fs
        self._directory = directory
        self._store = store
        self._hard_state = HardState()
        self._snapshot: Snapshot | None = None
        self._loaded = False
        # What load() had to repair (empty when nothing): for logs and reports.
        self.recovery_notes: list[str] = []
        # The highest commit of a completed save (rule 4): every entry at or
        # below it is durable in its final form.
        self._final_commit = 0
        # Rule 7: the highest commit of a save not flushed yet, and whether the
        # store holds entries appended since the last sync.
        self._pending_commit = 0
        self._unsynced = False

    @classmethod
    def open(
        cls, fs: FileSystem, directory: str, store_config: StoreConfig | None = None
    ) -> RaftStorage:
        fs.mkdir(directory)
        store = SegmentedStore.open(
            fs, _join(directory, "log"), store_config or StoreConfig(), first_position=1
        )
        return cls(fs, directory, store)

    # ------------------------------------------------------------ properties

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def store_recovery(self) -> RecoveryReport:
        """What opening the entry store found (torn tail truncated, files removed, ...)."""
        return self._store.recovery

    @property
    def hard_state(self) -> HardState:
        """The hard state on disk (its commit is as of the last term/vote change).

        A host may skip ``save`` for a Ready whose only change is the commit index
        (rule 4): compare the Ready's term and vote with this one's.
        """
        return self._hard_state

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def first_index(self) -> int:
        """First index held as an entry (after the snapshot)."""
        snap_index = self._snapshot.meta.index if self._snapshot else 0
        return max(self._store.first_position, snap_index + 1)

    @property
    def last_index(self) -> int:
        """Last index held: the last entry, else the snapshot's index, else 0."""
        snap_index = self._snapshot.meta.index if self._snapshot else 0
        return max(self._store.next_position - 1, snap_index)

    # ------------------------------------------------------------------ load

    def load(self) -> tuple[HardState, Snapshot | None, list[Entry]]:
        """Read back what was persisted, reconciling a crash mid-snapshot (rule 5)."""
        raw_snapshot = read_checked(self._fs, _join(self._directory, "snapshot"))
        snapshot = None
        if raw_snapshot is not None:
            snapshot = self._decode(_snapshot_decoder, raw_snapshot, "snapshot")
        raw_hard_state = read_checked(self._fs, _join(self._directory, "hardstate"))
        hard_state = HardState()
        if raw_hard_state is not None:
            hard_state = self._decode(_hard_state_decoder, raw_hard_state, "hardstate")

        store = self._store
        snap_index = snapshot.meta.index if snapshot else 0
        if snapshot is not None:
            keep = False
            if store.first_position <= snap_index < store.next_position:
                at_snapshot = self._read_entry(snap_index)
                keep = at_snapshot.term == snapshot.meta.term
            elif store.first_position == snap_index + 1:
                keep = True
            elif (
                store.first_position > snap_index + 1 and store.next_position > store.first_position
            ):
                raise RaftStorageCorruption(
                    self._directory,
                    f"entries ({snap_index}, {store.first_position}) between the snapshot "
                    "and the log are missing",
                )
            if not keep and store.next_position != store.first_position:
                self.recovery_notes.append(
                    f"log [{store.first_position}, {store.next_position}) does not continue "
                    f"the snapshot at {snap_index} (term {snapshot.meta.term}): reset"
                )
            if not keep:
                store.reset(snap_index + 1)
        elif store.first_position > 1:
            raise RaftStorageCorruption(
                self._directory,
                f"log starts at {store.first_position} but there is no snapshot",
            )

        start = max(store.first_position, snap_index + 1)
        entries = [
            self._check_entry(position, payload)
            for position, payload in enumerate(
                store.read_range(start, store.next_position) if start < store.next_position else [],
                start,
            )
        ]
        previous_term = snapshot.meta.term if snapshot else 0
        for entry in entries:
            if entry.term < previous_term:
                raise RaftStorageCorruption(
                    self._directory,
                    f"entry {entry.index} has term {entry.term} after term {previous_term}",
                )
            previous_term = entry.term
        if hard_state.term < previous_term:
            raise RaftStorageCorruption(
                self._directory,
                f"hard state term {hard_state.term} below the log's last term {previous_term}",
            )
        last_index = entries[-1].index if entries else snap_index
        # A commit below the snapshot is the usual case (the file's commit is as
        # of the last term or vote change, rule 4): the snapshot proves more.  A
        # commit above the last entry means entries the commit covered are gone.
        commit = max(snap_index, hard_state.commit)
        if commit > last_index:
            self.recovery_notes.append(
                f"commit {commit} is beyond the last entry {last_index}: clamped"
            )
            commit = last_index
        if commit != hard_state.commit:
            hard_state = HardState(term=hard_state.term, vote=hard_state.vote, commit=commit)
        self._final_commit = commit
        self._pending_commit = commit
        self._hard_state = hard_state
        self._snapshot = snapshot
        self._loaded = True
        return hard_state, snapshot, entries

    # ------------------------------------------------------------------ save

    def save(self, ready: Ready, *, sync: bool = True) -> None:
        """Persist the Ready's hard state, snapshot and entries (rule 1); durable on return.

        ``sync=False`` (rule 7): the entries are appended but not synced; the Ready is
        durable only after a later ``flush`` (or a ``save`` with ``sync``)."""
        assert self._loaded, "load() before save()"
        hard_state = ready.hard_state
        if ready.snapshot is not None or (
            hard_state is not None
            and (hard_state.term, hard_state.vote) != (self._hard_state.term, self._hard_state.vote)
        ):
            # Rule 7: what this Ready writes outside the store (and the commit
            # rule's bound) presumes every earlier Ready durable.
            self.flush()
        if hard_state is not None:
            # The commit rule (rule 4): the file's commit covers only entries
            # already durable in their final form.
            if ready.snapshot is not None:
                bound = self._final_commit
            elif ready.entries:
                bound = ready.entries[0].index - 1
            else:
                bound = hard_state.commit
            self._write_hard_state(hard_state, min(hard_state.commit, bound))
        if ready.snapshot is not None:
            self._write_snapshot(ready.snapshot)
            self._store.reset(ready.snapshot.meta.index + 1)
        if ready.entries:
            self._append(ready.entries)
        if hard_state is not None and hard_state.commit > self._pending_commit:
            self._pending_commit = hard_state.commit
        if sync:
            self.flush()

    def flush(self) -> None:
        """Make every ``save(..., sync=False)`` so far durable with one store sync (rule 7)."""
        if self._unsynced:
            self._store.sync()
            self._unsynced = False
        if self._pending_commit > self._final_commit:
            self._final_commit = self._pending_commit

    def abandon(self) -> None:
        """A group failed part-way (rule 7): none of its saves counts as durable; the
        host saves them again from the first, which replaces what they appended."""
        self._pending_commit = self._final_commit
        self._unsynced = True

    def compact(self, index: int, snapshot: Snapshot) -> None:
        """Persist a state-machine snapshot, then drop log entries up to ``index`` (rule 6)."""
        assert self._loaded, "load() before compact()"
        self.flush()
        assert index <= snapshot.meta.index, (index, snapshot.meta.index)
        current = self._snapshot.meta.index if self._snapshot else 0
        if snapshot.meta.index <= current:
            return  # an older snapshot than the one we hold: nothing to gain
        self._write_snapshot(snapshot)
        self._final_commit = max(self._final_commit, snapshot.meta.index)
        if index + 1 > self._store.first_position:
            self._store.truncate_prefix(min(index + 1, self._store.next_position))

    def entries(self, start: int, end: int) -> list[Entry]:
        """Stored entries in [start, end) (half-open), clipped to what is held."""
        start = max(start, self.first_index)
        end = min(end, self._store.next_position)
        if start >= end:
            return []
        payloads = self._store.read_range(start, end)
        return [self._check_entry(p, payload) for p, payload in enumerate(payloads, start)]

    def close(self) -> None:
        self._store.close()

    # ------------------------------------------------------------- internals

    def _append(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        for offset, entry in enumerate(entries):
            assert entry.index == first + offset, "entries of a Ready are contiguous"
        store = self._store
        if first < self.first_index:
            raise ValueError(f"entry {first} is at or below the snapshot/log start")
        if first > store.next_position:
            raise ValueError(f"entry {first} leaves a gap after {store.next_position - 1}")
        if first < store.next_position:
            store.truncate_suffix(first)
        position = store.append([_encoder.encode(e) for e in entries])
        assert position == first, (position, first)
        self._unsynced = True

    def _write_hard_state(self, hard_state: HardState, commit: int) -> None:
        previous = self._hard_state
        if hard_state.term < previous.term or (
            hard_state.term == previous.term and previous.vote and hard_state.vote != previous.vote
        ):
            # An older Ready saved again after its group failed (rule 7): the
            # durable term never goes back, nor a durable vote within its term.
            return
        if (hard_state.term, hard_state.vote) != (previous.term, previous.vote):
            durable = HardState(term=hard_state.term, vote=hard_state.vote, commit=commit)
            atomic_write(self._fs, _join(self._directory, "hardstate"), _encoder.encode(durable))
            self._hard_state = durable

    def _write_snapshot(self, snapshot: Snapshot) -> None:
        atomic_write(self._fs, _join(self._directory, "snapshot"), _encoder.encode(snapshot))
        self._snapshot = snapshot

    def _read_entry(self, index: int) -> Entry:
        return self._check_entry(index, self._store.read(index))

    def _check_entry(self, position: int, payload: bytes) -> Entry:
        entry = self._decode(_entry_decoder, payload, f"entry at position {position}")
        if entry.index != position:
            raise RaftStorageCorruption(
                self._directory, f"entry at position {position} claims index {entry.index}"
            )
        return entry

    def _decode(self, decoder: msgspec.msgpack.Decoder[_T], data: bytes, what: str) -> _T:
        try:
            return decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise RaftStorageCorruption(self._directory, f"{what} undecodable: {exc}") from exc
