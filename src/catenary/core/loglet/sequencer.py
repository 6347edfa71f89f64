"""The sequencer core: the one writer of a replicated loglet (sans-IO).

Theory of operation
-------------------
The host calls ``append(payloads, token)`` for each batch, ``on_stored`` for
each ``Stored`` answer, and ``tick()`` every tick; after any of them it drains
``take_messages()`` (stores and tail releases to send) and ``take_outcomes()``
(tokens acknowledged with their last offset, or failed with an error).  The
sequencer keeps the batches that are not yet acknowledged; each remembers
which servers stored it durably.

Rules (docs/design/log.md; the tests and the simulation check each):

S1  Offsets are contiguous from 1: a batch of n records gets [next, next + n).
S2  At most ``records_inflight_max`` records are unacknowledged; an append
    beyond that raises ``Backpressure`` (the host queues it; memory does not
    grow).  Records over ``record_bytes_max`` raise ``RecordTooLarge`` up front.
S3  A batch goes to a server only when the server holds everything before it
    (the tail it reported, or the end of the last batch sent to it on the same
    connection) or everything before it is committed — so a log-server never
    has to buffer out of order.  An ``out_of_order`` answer resets the
    server's tail to what it reported.
S4  Waves: a batch not committed ``store_timeout_ticks`` after its wave began
    starts a new wave that skips the servers that did not answer the last one —
    unless without them no write quorum is left, then every server is asked.
S5  A batch is committed once the servers that stored it durably form a write
    quorum; the global tail moves over committed batches in order only, and
    appends are acknowledged in that order.
S6  The global tail rides on every store; when nothing is in flight and the
    servers have not been told the current tail, ``Tail`` releases it.
S7  When the servers that answered ``sealed`` form an f-majority, every
    unacknowledged append fails with ``LogletSealed`` and the sequencer stops.
    (So does a sequencer whose loglet some server pinned to another writer.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from catenary.core.loglet.replication import NodeId, NodeSetChecker, ReplicationProperty
from catenary.core.loglet.types import (
    OK,
    OUT_OF_ORDER,
    SEALED,
    WRONG_SEQUENCER,
    LogletId,
    Offset,
    SequencerId,
    Store,
    Stored,
    Tail,
)


class SequencerConfig(msgspec.Struct, frozen=True):
    records_inflight_max: int = 65_536
    record_bytes_max: int = 1 << 20
    store_timeout_ticks: int = 20  # a wave's answers, in ticks
    tail_release_ticks: int = 2  # idle ticks before the global tail is released

    def __post_init__(self) -> None:
        for name in ("records_inflight_max", "record_bytes_max", "store_timeout_ticks"):
            if getattr(self, name) < 1:
                raise ValueError(f"sequencer {name} must be >= 1")
        if self.tail_release_ticks < 0:
            raise ValueError("sequencer tail_release_ticks must be >= 0")


class AppendError(Exception):
    retryable = False


class Backpressure(AppendError):
    """Too many records in flight: retry once earlier appends are acknowledged."""

    retryable = True


class RecordTooLarge(AppendError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"record of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class LogletSealed(AppendError):
    """The loglet is sealed: append to the log's new segment instead."""

    retryable = True


@dataclass
class _Batch:
    first: Offset
    payloads: tuple[bytes, ...]
    token: int
    stored_by: set[NodeId] = field(default_factory=set)
    sent_to: set[NodeId] = field(default_factory=set)
    skip: set[NodeId] = field(default_factory=set)
    wave_tick: int = 0

    @property
    def end(self) -> Offset:
        return self.first + len(self.payloads)


class Sequencer:
    """Assigns offsets and replicates batches to a write quorum (rules S1-S7)."""

    def __init__(
        self,
        loglet: LogletId,
        me: SequencerId,
        nodeset: Sequence[NodeId],
        replication: ReplicationProperty,
        *,
        locations: Mapping[NodeId, str] | None = None,
        config: SequencerConfig | None = None,
    ) -> None:
        self.loglet = loglet
        self.me = me
        self.nodeset = tuple(sorted(set(nodeset)))
        self.checker = NodeSetChecker(self.nodeset, replication, locations)
        if not self.checker.admits():
            raise ValueError(f"nodeset {self.nodeset}: {self.checker.why_not()}")
        self.config = config or SequencerConfig()
        self._next: Offset = 1
        self._global_tail: Offset = 1
        self._released: dict[NodeId, Offset] = dict.fromkeys(self.nodeset, 1)
        self._batches: deque[_Batch] = deque()
        self._inflight_records = 0
        # S3: the offset each server is known (or, on one ordered connection, bound)
        # to hold everything below.
        self._server_tail: dict[NodeId, Offset] = dict.fromkeys(self.nodeset, 1)
        self._sealed_by: set[NodeId] = set()
        self._pinned_elsewhere: set[NodeId] = set()
        self._stopped = False
        self._ticks = 0
        self._idle_ticks = 0
        self._messages: list[tuple[NodeId, msgspec.Struct]] = []
        self._acks: list[tuple[int, Offset]] = []
        self._failures: list[tuple[int, AppendError]] = []

    # ------------------------------------------------------------ queries

    @property
    def global_tail(self) -> Offset:
        return self._global_tail

    @property
    def next_offset(self) -> Offset:
        return self._next

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def inflight_records(self) -> int:
        return self._inflight_records

    # ------------------------------------------------------------- inputs

    def append(self, payloads: Sequence[bytes], token: int) -> Offset:
        """Sequence a batch; returns the offset of its last record (S1, S2)."""
        if self._stopped:
            raise LogletSealed(f"loglet {self.loglet} is sealed")
        if not payloads:
            raise ValueError("an append needs at least one record")
        limit = self.config.record_bytes_max
        for payload in payloads:
            if len(payload) > limit:
                raise RecordTooLarge(len(payload), limit)
        if self._inflight_records + len(payloads) > self.config.records_inflight_max:
            raise Backpressure(
                f"{self._inflight_records} records in flight, "
                f"bound {self.config.records_inflight_max}"
            )
        batch = _Batch(self._next, tuple(payloads), token, wave_tick=self._ticks)
        self._next = batch.end
        self._inflight_records += len(payloads)
        self._batches.append(batch)
        self._dispatch()
        return batch.end - 1

    def on_stored(self, src: NodeId, m: Stored) -> None:
        if m.loglet != self.loglet or src not in self._server_tail or self._stopped:
            return
        if m.status == OK:
            for batch in self._batches:
                if batch.first == m.first_offset:
                    batch.stored_by.add(src)
                    break
            if m.local_tail > self._server_tail[src]:
                self._server_tail[src] = m.local_tail
            self._advance()
        elif m.status == SEALED:
            self._sealed_by.add(src)
            if self.checker.is_f_majority(self._sealed_by):
                self._stop(LogletSealed(f"loglet {self.loglet} is sealed"))
                return
        elif m.status == OUT_OF_ORDER:
            self._server_tail[src] = m.local_tail
            for batch in self._batches:
                if batch.first >= m.local_tail:
                    batch.sent_to.discard(src)
        elif m.status == WRONG_SEQUENCER:
            self._pinned_elsewhere.add(src)
            if self.checker.is_f_majority(self._pinned_elsewhere | self._sealed_by):
                self._stop(LogletSealed(f"loglet {self.loglet} belongs to another sequencer"))
                return
        self._dispatch()

    def tick(self) -> None:
        self._ticks += 1
        if self._stopped:
            return
        timeout = self.config.store_timeout_ticks
        for batch in self._batches:
            if self._ticks - batch.wave_tick < timeout:
                continue
            # S4: a new wave without the servers that did not answer the last one.
            silent = batch.sent_to - batch.stored_by
            batch.skip = silent
            if not self.checker.is_write_quorum(
                set(self.nodeset) - silent - self._pinned_elsewhere - self._sealed_by
            ):
                batch.skip = set()
            batch.sent_to = set(batch.stored_by)
            batch.wave_tick = self._ticks
            for node in silent:
                # Its tail is unknown again: only what it reported counts.
                if self._server_tail[node] > batch.first:
                    self._server_tail[node] = batch.first
        if not self._batches:
            self._idle_ticks += 1
            if self._idle_ticks >= self.config.tail_release_ticks:
                self._release_tail()
        else:
            self._idle_ticks = 0
        self._dispatch()

    # ------------------------------------------------------------ outputs

    def take_messages(self) -> list[tuple[NodeId, msgspec.Struct]]:
        out, self._messages = self._messages, []
        return out

    def take_outcomes(self) -> tuple[list[tuple[int, Offset]], list[tuple[int, AppendError]]]:
        """(acknowledged (token, last offset) in offset order, failed (token, error))."""
        acks, self._acks = self._acks, []
        failures, self._failures = self._failures, []
        return acks, failures

    # ---------------------------------------------------------- internals

    def _eligible(self, node: NodeId, batch: _Batch) -> bool:
        if node in batch.sent_to or node in batch.skip:
            return False
        if node in self._pinned_elsewhere or node in self._sealed_by:
            return False
        tail = self._server_tail[node]
        return tail == batch.first or batch.first <= self._global_tail

    def _dispatch(self) -> None:
        if self._stopped:
            return
        for batch in self._batches:
            for node in self.nodeset:
                if not self._eligible(node, batch):
                    continue
                batch.sent_to.add(node)
                self._messages.append(
                    (
                        node,
                        Store(
                            self.loglet,
                            self.me,
                            batch.first,
                            batch.payloads,
                            self._global_tail,
                        ),
                    )
                )
                self._released[node] = self._global_tail
                if self._server_tail[node] == batch.first:
                    # One ordered connection: the next batch can follow at once.
                    self._server_tail[node] = batch.end

    def _advance(self) -> None:
        while self._batches and self.checker.is_write_quorum(self._batches[0].stored_by):
            batch = self._batches.popleft()
            assert batch.first == self._global_tail, (batch.first, self._global_tail)
            self._global_tail = batch.end
            self._inflight_records -= len(batch.payloads)
            self._acks.append((batch.token, batch.end - 1))

    def _release_tail(self) -> None:
        for node in self.nodeset:
            if self._released[node] < self._global_tail and node not in self._pinned_elsewhere:
                self._released[node] = self._global_tail
                self._messages.append((node, Tail(self.loglet, self._global_tail)))

    def _stop(self, error: AppendError) -> None:
        self._stopped = True
        for batch in self._batches:
            self._failures.append((batch.token, error))
        self._batches.clear()
        self._inflight_records = 0


__all__ = [
    "AppendError",
    "Backpressure",
    "LogletSealed",
    "RecordTooLarge",
    "Sequencer",
    "SequencerConfig",
]
