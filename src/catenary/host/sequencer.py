"""The sequencer host loop: the ``Sequencer`` cores of the loglets one node sequences.

Theory of operation
-------------------
A ``SequencerLoop`` hosts, per loglet this node sequences, one ``Sequencer``
core.  ``start`` creates it (once per loglet: a second ``start`` of a loglet
already hosted or stopped is refused, since a new core would hand out its
offsets again).  Appends come in with a token and a deadline; ``Stored``
answers and ticks go in; out come messages to send and completions, which the
host drains with ``take``:

- ``acked``: ``(token, loglet, last offset)``, in each loglet's offset order;
- ``failed``: ``(token, error)``; ``error.retryable`` says whether to retry.

Rules:

Q1  An append the core refuses with ``Backpressure`` is queued, not failed;
    queued appends are offered again, in arrival order, whenever an answer or
    a tick may have freed room.  At most ``queue_max`` appends wait (per loop);
    beyond that an append fails at once with ``Backpressure``.
Q2  An append whose deadline passes fails with ``AppendTimeout`` (retryable):
    if it was still queued it never reached the log; if the core had it, it is
    *indeterminate* (it may still be committed) and a later acknowledgement of
    it is dropped.  A token completes exactly once.
Q3  ``LogletSealed`` and ``RecordTooLarge`` from the core complete the append at
    once; an append for a loglet not hosted fails with ``NotSequencer``
    (retryable: the caller reads the chain again).
Q4  When a core stops (sealed), its queued appends fail with ``LogletSealed``
    and the loglet is no longer hosted.
Q5  No clock is read: ``now_us`` comes in with every call that needs it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from catenary.core.loglet.replication import NodeId, ReplicationProperty
from catenary.core.loglet.sequencer import (
    AppendError,
    Backpressure,
    LogletSealed,
    Sequencer,
    SequencerConfig,
)
from catenary.core.loglet.types import LogletId, Offset, SequencerId, Stored


class AppendTimeout(AppendError):
    """The append's deadline passed; if it had reached the sequencer it may still commit."""

    retryable = True


class NotSequencer(AppendError):
    """This node does not sequence the loglet (any more): read the chain again."""

    retryable = True


@dataclass
class _Pending:
    token: int
    loglet: LogletId
    payloads: tuple[bytes, ...]
    deadline_us: int


@dataclass
class SequencerOutput:
    messages: list[tuple[NodeId, msgspec.Struct]] = field(default_factory=list)
    acked: list[tuple[int, LogletId, Offset]] = field(default_factory=list)
    failed: list[tuple[int, AppendError]] = field(default_factory=list)


class SequencerLoop:
    """The sequencers of one node, with queued appends and deadlines (Q1-Q5)."""

    def __init__(
        self, node_id: int, *, queue_max: int = 1024, config: SequencerConfig | None = None
    ) -> None:
        if queue_max < 0:
            raise ValueError("queue_max must be >= 0")
        self.node_id = node_id
        self.queue_max = queue_max
        self.config = config or SequencerConfig()
        self._cores: dict[LogletId, Sequencer] = {}
        self._started: set[LogletId] = set()
        self._queue: deque[_Pending] = deque()
        self._inflight: dict[int, tuple[LogletId, int]] = {}  # token -> (loglet, deadline)
        self._out = SequencerOutput()

    # ------------------------------------------------------------ hosting

    def hosts(self, loglet: LogletId) -> bool:
        return loglet in self._cores

    def core(self, loglet: LogletId) -> Sequencer | None:
        return self._cores.get(loglet)

    def loglets(self) -> list[LogletId]:
        return sorted(self._cores)

    def start(
        self,
        loglet: LogletId,
        me: SequencerId,
        nodeset: Sequence[NodeId],
        replication: ReplicationProperty,
        *,
        locations: Mapping[NodeId, str] | None = None,
    ) -> bool:
        """Host the sequencer of ``loglet``; False if it was ever started here."""
        if loglet in self._started:
            return False
        self._started.add(loglet)
        self._cores[loglet] = Sequencer(
            loglet, me, nodeset, replication, locations=locations, config=self.config
        )
        return True

    # ------------------------------------------------------------- inputs

    def append(
        self,
        loglet: LogletId,
        payloads: Sequence[bytes],
        token: int,
        deadline_us: int,
        now_us: int,
    ) -> None:
        """Sequence a batch; the outcome comes out of ``take`` (Q1-Q3)."""
        pending = _Pending(token, loglet, tuple(payloads), deadline_us)
        if deadline_us <= now_us:
            self._out.failed.append((token, AppendTimeout("deadline passed before the append")))
            return
        if self._queue or not self._offer(pending):
            if len(self._queue) >= self.queue_max:
                self._out.failed.append((token, Backpressure("append queue full")))
                return
            self._queue.append(pending)
        self._drain_cores()

    def on_stored(self, src: NodeId, m: Stored, now_us: int) -> None:
        core = self._cores.get(m.loglet)
        if core is not None:
            core.on_stored(src, m)
        self._settle(now_us)

    def tick(self, now_us: int) -> None:
        for loglet in sorted(self._cores):
            self._cores[loglet].tick()
        self._settle(now_us)

    # ------------------------------------------------------------ outputs

    def take(self) -> SequencerOutput:
        out, self._out = self._out, SequencerOutput()
        return out

    # ---------------------------------------------------------- internals

    def _offer(self, pending: _Pending) -> bool:
        """Hand an append to its core; False when it must wait (Backpressure)."""
        core = self._cores.get(pending.loglet)
        if core is None:
            self._out.failed.append(
                (pending.token, NotSequencer(f"node {self.node_id} does not sequence it"))
            )
            return True
        try:
            core.append(pending.payloads, pending.token)
        except Backpressure:
            return False
        except AppendError as exc:
            self._out.failed.append((pending.token, exc))
            return True
        self._inflight[pending.token] = (pending.loglet, pending.deadline_us)
        return True

    def _settle(self, now_us: int) -> None:
        self._drain_cores()
        # Q2: queued appends past their deadline never reached the log.
        kept: deque[_Pending] = deque()
        for pending in self._queue:
            if pending.deadline_us <= now_us:
                self._out.failed.append((pending.token, AppendTimeout("queued past deadline")))
            else:
                kept.append(pending)
        self._queue = kept
        while self._queue and self._offer(self._queue[0]):
            self._queue.popleft()
        # Q2: in-flight appends past their deadline are indeterminate.
        for token in sorted(self._inflight):
            if self._inflight[token][1] <= now_us:
                del self._inflight[token]
                self._out.failed.append((token, AppendTimeout("not acknowledged in time")))
        self._drain_cores()

    def _drain_cores(self) -> None:
        for loglet in sorted(self._cores):
            core = self._cores[loglet]
            self._out.messages += core.take_messages()
            acks, failures = core.take_outcomes()
            for token, last in acks:
                if self._inflight.pop(token, None) is not None:
                    self._out.acked.append((token, loglet, last))
            for token, error in failures:
                if self._inflight.pop(token, None) is not None:
                    self._out.failed.append((token, error))
            if core.stopped:
                del self._cores[loglet]
                kept: deque[_Pending] = deque()
                for pending in self._queue:
                    if pending.loglet == loglet:
                        self._out.failed.append(
                            (pending.token, LogletSealed(f"loglet {loglet} is sealed"))
                        )
                    else:
                        kept.append(pending)
                self._queue = kept


__all__ = ["AppendTimeout", "NotSequencer", "SequencerLoop", "SequencerOutput"]
