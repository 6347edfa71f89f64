"""The log-server store: the records and loglet state of every loglet of a node.

Theory of operation
-------------------
Layout under ``directory``::

    records/     a SegmentedStore; one stored record per durable write of the
                 log-server core (``PutRecords`` with its whole batch, or a
                 seal, trim or pinned-sequencer write), in the order accepted
    checkpoint   atomic_write(msgpack): the state of every loglet (sealed,
                 pinned sequencer, trim point, index) as of a store position;
                 written before whole segment files are dropped, and every
                 ``checkpoint_writes`` writes so a restart replays only the tail

Rules:

1. One store for all loglets: one ``sync`` (one fdatasync) makes the writes of
   many loglets durable together.  ``write`` appends in the order the core
   handed the writes out; the host replies only after ``sync`` returned.
2. The state is what the writes say: ``open`` loads the checkpoint, then
   replays every stored write after it in order, through the same ``apply`` the
   core used when it accepted them (``LogServer.recover``).  Replay reads only
   each write's head (kind, loglet, offsets, the count of records), never the
   payloads.  A checkpoint covers only synced writes; a missing one means a
   replay from the first stored write.
3. Index: per loglet, three arrays (first offset, store position, record
   count) of the ``PutRecords`` that hold its live records — 20 bytes a batch,
   no Python object per record.
4. Trim reclaims space: ``reclaim`` drops the whole segment files below the
   lowest store position any live record still needs, after a durable
   checkpoint (so seals, trims and pins in those files survive).
5. Torn or corrupt tails are the storage engine's to find: a torn tail is
   truncated and reported at open (``recovery``), corruption in the middle is
   ``CorruptionError``; an undecodable stored write is ``LogStoreCorruption``.

Single owner, synchronous: the host calls it from its disk thread, the
simulator from its event loop.
"""

from __future__ import annotations

import bisect
import contextlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from catenary.core.loglet.log_server import (
    LogletState,
    LogServer,
    PutRecords,
    PutSeal,
    PutSequencer,
    PutTrim,
    ReadPlan,
    StoreWrite,
)
from catenary.core.loglet.types import Gap, LogletId, Offset, Records, SequencerId
from catenary.storage.atomic import atomic_write, read_checked
from catenary.storage.errors import StoreClosedError, StoreFailedError
from catenary.storage.fs import FileSystem
from catenary.storage.store import RecoveryReport, SegmentedStore, StoreConfig

_RECORDS = 0
_SEAL = 1
_TRIM = 2
_SEQUENCER = 3

_encoder = msgspec.msgpack.Encoder()


class _Head(msgspec.Struct, array_like=True):
    kind: int
    loglet: int
    a: int
    b: msgspec.Raw = msgspec.Raw(b"")  # the payload array, or the generation


_head_decoder = msgspec.msgpack.Decoder(_Head)
_payloads_decoder = msgspec.msgpack.Decoder(tuple[int, int, int, tuple[bytes, ...]])


class _Control(msgspec.Struct, array_like=True, frozen=True):
    loglet: int
    sealed: bool
    trim_point: int
    sequencer: SequencerId | None
    firsts: bytes = b""  # the index arrays, machine order (array.tobytes)
    positions: bytes = b""
    counts: bytes = b""


class _Checkpoint(msgspec.Struct, array_like=True, frozen=True):
    covered: int  # every stored write below this position is in ``loglets``
    loglets: list[_Control]


_checkpoint_decoder = msgspec.msgpack.Decoder(_Checkpoint)


class LogStoreCorruption(Exception):
    def __init__(self, directory: str, reason: str) -> None:
        super().__init__(f"log store {directory}: {reason}")
        self.directory = directory
        self.reason = reason


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def encode_write(write: StoreWrite) -> bytes:
    match write:
        case PutRecords(loglet=loglet, first_offset=first, payloads=payloads):
            return _encoder.encode((_RECORDS, loglet, first, payloads))
        case PutSeal(loglet=loglet):
            return _encoder.encode((_SEAL, loglet, 0))
        case PutTrim(loglet=loglet, trim_point=point):
            return _encoder.encode((_TRIM, loglet, point))
        case PutSequencer(loglet=loglet, sequencer=sequencer):
            return _encoder.encode((_SEQUENCER, loglet, sequencer.node, sequencer.generation))


def _msgpack_array_len(raw: memoryview) -> int:
    head = raw[0]
    if 0x90 <= head <= 0x9F:
        return head & 0x0F
    if head == 0xDC:
        return int.from_bytes(raw[1:3], "big")
    if head == 0xDD:
        return int.from_bytes(raw[1:5], "big")
    raise ValueError(f"not a msgpack array (0x{head:02x})")


@dataclass
class _Index:
    """Where a loglet's live records are: runs sorted by first offset (rule 3)."""

    firsts: array  # type: ignore[type-arg]
    positions: array  # type: ignore[type-arg]
    counts: array  # type: ignore[type-arg]

    @classmethod
    def empty(cls) -> _Index:
        return cls(array("Q"), array("Q"), array("I"))

    def add(self, first: int, position: int, count: int) -> None:
        if not self.firsts or first > self.firsts[-1]:
            self.firsts.append(first)
            self.positions.append(position)
            self.counts.append(count)
            return
        i = bisect.bisect_left(self.firsts, first)
        self.firsts.insert(i, first)
        self.positions.insert(i, position)
        self.counts.insert(i, count)

    def find(self, offset: int) -> int:
        """Index of the run whose range may hold ``offset`` (-1: none)."""
        return bisect.bisect_right(self.firsts, offset) - 1

    def drop_through(self, point: int) -> None:
        keep = 0
        while keep < len(self.firsts) and self.firsts[keep] + self.counts[keep] - 1 <= point:
            keep += 1
        if keep:
            del self.firsts[:keep], self.positions[:keep], self.counts[:keep]

    def lowest_position(self) -> int | None:
        return min(self.positions) if self.positions else None


class LogStore:
    """Records and loglet state of one node's log-server (rules 1-5)."""

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        store: SegmentedStore,
        checkpoint_writes: int = 100_000,
    ) -> None:
        if checkpoint_writes < 1:
            raise ValueError("checkpoint_writes must be >= 1")
        self._fs = fs
        self._directory = directory
        self._store = store
        self.server = LogServer(0)
        self._index: dict[LogletId, _Index] = {}
        self._checkpoint_writes = checkpoint_writes
        self._covered = 0  # store position the last checkpoint covers
        self.replayed = 0  # stored writes replayed at open (after the checkpoint)

    @classmethod
    def open(
        cls,
        fs: FileSystem,
        directory: str,
        node_id: int,
        store_config: StoreConfig | None = None,
        *,
        checkpoint_writes: int = 100_000,
    ) -> LogStore:
        fs.mkdir(directory)
        store = SegmentedStore.open(
            fs, _join(directory, "records"), store_config or StoreConfig(), first_position=1
        )
        self = cls(fs, directory, store, checkpoint_writes)
        self.server = LogServer(node_id)
        self._recover()
        return self

    @property
    def recovery(self) -> RecoveryReport:
        return self._store.recovery

    @property
    def segment_count(self) -> int:
        return self._store.segment_count

    # ------------------------------------------------------------- writes

    def write(self, writes: Sequence[StoreWrite]) -> None:
        """Append the writes (not yet durable: ``sync``)."""
        if not writes:
            return
        position = self._store.append([encode_write(w) for w in writes])
        for offset, write in enumerate(writes):
            self._index_write(write, position + offset)

    def sync(self) -> None:
        self._store.sync()
        if self._store.durable_next_position - self._covered >= self._checkpoint_writes:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Write the state of every loglet as of the synced store (durable on return)."""
        covered = self._store.durable_next_position
        controls = []
        for loglet in self.server.loglets():
            st = self.server.state(loglet)
            assert st is not None
            index = self._index.get(loglet) or _Index.empty()
            controls.append(
                _Control(
                    loglet,
                    st.sealed,
                    st.trim_point,
                    st.sequencer,
                    index.firsts.tobytes(),
                    index.positions.tobytes(),
                    index.counts.tobytes(),
                )
            )
        atomic_write(
            self._fs,
            _join(self._directory, "checkpoint"),
            _encoder.encode(_Checkpoint(covered, controls)),
        )
        self._covered = covered

    # -------------------------------------------------------------- reads

    def read(self, loglet: LogletId, start: Offset, end: Offset, bytes_max: int) -> list[bytes]:
        """Records at consecutive offsets from ``start`` (held), up to ``end`` or the
        byte budget (at least one record)."""
        index = self._index.get(loglet)
        out: list[bytes] = []
        if index is None:
            return out
        used = 0
        offset = start
        i = index.find(offset)
        while offset < end and 0 <= i < len(index.firsts):
            first, count = index.firsts[i], index.counts[i]
            if not first <= offset < first + count:
                break
            payloads = self._payloads(index.positions[i])
            for payload in payloads[offset - first : min(first + count, end) - first]:
                if out and used + len(payload) > bytes_max:
                    return out
                out.append(payload)
                used += len(payload)
                offset += 1
            i += 1
        return out

    def answer(self, plan: ReadPlan) -> Records:
        """The ``Records`` reply for a read plan of the core, within its byte budget."""
        m = plan.request
        budget = m.bytes_max
        runs: list[tuple[bytes, ...] | Gap] = []
        next_offset = plan.end_offset
        for run in plan.runs:
            if isinstance(run, Gap):
                runs.append(run)
                continue
            start, end = run
            records = self.read(m.loglet, start, end, max(budget, 1))
            if records:
                runs.append(tuple(records))
                budget -= sum(len(r) for r in records)
            if start + len(records) < end:
                next_offset = start + len(records)
                break
            if budget <= 0:
                next_offset = end
                break
        first = m.from_offset if plan.runs else plan.end_offset
        return Records(
            m.loglet, first, tuple(runs), next_offset, plan.known_global_tail, plan.sealed
        )

    # ------------------------------------------------------- trim & space

    def reclaim(self) -> int:
        """Drop whole segment files no live record needs (rule 4); returns how many."""
        lowest = self._store.next_position
        for index in self._index.values():
            position = index.lowest_position()
            if position is not None and position < lowest:
                lowest = position
        before = self._store.segment_count
        if lowest <= self._store.first_position:
            return 0
        self._store.sync()
        self.checkpoint()
        self._store.truncate_prefix(lowest)
        return before - self._store.segment_count

    def close(self) -> None:
        """Checkpoint (so the next open replays nothing) and close.  A store that
        failed is only closed: the next open replays what it holds."""
        with contextlib.suppress(StoreClosedError, StoreFailedError):
            self._store.sync()
            self.checkpoint()
        self._store.close()

    # ---------------------------------------------------------- internals

    def _index_write(self, write: StoreWrite, position: int) -> None:
        match write:
            case PutRecords(loglet=loglet, first_offset=first, payloads=payloads):
                self._index_of(loglet).add(first, position, len(payloads))
            case PutTrim(loglet=loglet, trim_point=point):
                self._index_of(loglet).drop_through(point)
            case _:
                pass

    def _index_of(self, loglet: LogletId) -> _Index:
        index = self._index.get(loglet)
        if index is None:
            index = self._index[loglet] = _Index.empty()
        return index

    def _payloads(self, position: int) -> tuple[bytes, ...]:
        raw = self._store.read(position)
        try:
            kind, _, _, payloads = _payloads_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise LogStoreCorruption(
                self._directory, f"record {position} undecodable: {exc}"
            ) from exc
        if kind != _RECORDS:
            raise LogStoreCorruption(self._directory, f"record {position} holds no records")
        return payloads

    def _recover(self) -> None:
        raw = read_checked(self._fs, _join(self._directory, "checkpoint"))
        store = self._store
        position = store.first_position
        if raw is not None:
            try:
                checkpoint = _checkpoint_decoder.decode(raw)
            except msgspec.DecodeError as exc:
                raise LogStoreCorruption(self._directory, f"checkpoint undecodable: {exc}") from exc
            if checkpoint.covered > store.next_position:
                raise LogStoreCorruption(
                    self._directory,
                    f"checkpoint covers writes up to {checkpoint.covered}, the store "
                    f"ends at {store.next_position}",
                )
            for c in checkpoint.loglets:
                self._restore(c)
            position = max(position, checkpoint.covered)
            self._covered = checkpoint.covered
        chunk = 4096
        while position < store.next_position:
            end = min(position + chunk, store.next_position)
            for offset, raw_write in enumerate(store.read_range(position, end)):
                write = self._decode_head(position + offset, raw_write)
                self.server.recover([write])
                self._index_write(write, position + offset)
                self.replayed += 1
            position = end

    def _restore(self, c: _Control) -> None:
        index = _Index.empty()
        index.firsts.frombytes(c.firsts)
        index.positions.frombytes(c.positions)
        index.counts.frombytes(c.counts)
        if not len(index.firsts) == len(index.positions) == len(index.counts):
            raise LogStoreCorruption(self._directory, f"checkpoint of loglet {c.loglet} torn")
        self._index[c.loglet] = index
        # The held runs, merged from the index (what replaying its PutRecords would add).
        runs: list[list[int]] = []
        for first, count in zip(index.firsts, index.counts):
            if runs and runs[-1][1] >= first:
                runs[-1][1] = max(runs[-1][1], first + count)
            else:
                runs.append([first, first + count])
        self.server.restore(
            c.loglet,
            LogletState(runs=runs, sealed=c.sealed, sequencer=c.sequencer, trim_point=c.trim_point),
        )

    def _decode_head(self, position: int, raw: bytes) -> StoreWrite:
        try:
            head = _head_decoder.decode(raw)
            if head.kind == _RECORDS:
                count = _msgpack_array_len(memoryview(head.b))
                if count < 1:
                    raise ValueError("an empty batch of records")
                # Replay needs the count only: the payloads stay on disk.
                return PutRecords(head.loglet, head.a, (b"",) * count)
            if head.kind == _SEAL:
                return PutSeal(head.loglet)
            if head.kind == _TRIM:
                return PutTrim(head.loglet, head.a)
            if head.kind == _SEQUENCER:
                generation = msgspec.msgpack.decode(head.b, type=int)
                return PutSequencer(head.loglet, SequencerId(head.a, generation))
            raise ValueError(f"unknown kind {head.kind}")
        except (msgspec.DecodeError, ValueError, IndexError) as exc:
            raise LogStoreCorruption(self._directory, f"record {position}: {exc}") from exc
