"""The log-server host loop: a bounded inbox in front of ``LogServer``, with group commit.

Theory of operation
-------------------
One ``LogServerLoop`` runs per node, over the node's one ``LogServer`` core.
The transport ``offer``s each incoming ``(src, message)``; the inbox is bounded
and a full inbox drops the message (the loglet protocol tolerates loss: every
request is resent after a timeout).  The host calls ``poll(now_us)``; it feeds
up to ``batch_max`` inputs to the core and returns a ``LogServerOutput``:

- ``send``: replies that may leave now (nothing they report waits on a write);
- ``reads``: read plans the host answers from its ``LogStore``
  (``LogStore.answer``) and sends;
- ``job``: at most one persistence ``Job`` — the ``StoreWrite``s of the whole
  batch, of every loglet, in the order the core handed them out.  The host
  executes it as one ``LogStore.write`` and one ``sync`` (group commit) and
  then calls ``job_done()``, which returns the replies and read plans that
  waited for it.

Rules:

H1  (LS3) A reply never leaves before every write handed out before it is
    durable: the replies and read plans of a batch that wrote anything wait
    for its job (a read answered from the store then sees only durable state).
H2  One job at a time.  While it is in flight ``poll`` feeds nothing to the
    core; inputs arriving meanwhile wait in the inbox and form the next batch,
    so a reply can never overtake the job in flight either.
H3  Nothing reads a clock: ``now_us`` is handed in (kept for the counters).
H4  The inbox holds at most ``inbox_max`` inputs; beyond that ``offer`` drops
    the message and returns False (counted in ``dropped``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import msgspec

from catenary.core.loglet.log_server import LogServer, ReadPlan, StoreWrite

Outgoing = tuple[int, msgspec.Struct]


@dataclass(frozen=True)
class Job:
    """The durable writes of one batch: one ``LogStore.write`` + one ``sync``."""

    writes: tuple[StoreWrite, ...]
    started_us: int


@dataclass
class LogServerOutput:
    send: list[Outgoing] = field(default_factory=list)
    reads: list[ReadPlan] = field(default_factory=list)
    job: Job | None = None


class LogServerLoop:
    """Bounded inbox, batching and persist-before-send for one node's log-server (H1-H4)."""

    def __init__(self, server: LogServer, *, inbox_max: int = 4096, batch_max: int = 256) -> None:
        if inbox_max < 1 or batch_max < 1:
            raise ValueError("inbox_max and batch_max must be >= 1")
        self.server = server
        self.inbox_max = inbox_max
        self.batch_max = batch_max
        self._inbox: deque[Outgoing] = deque()
        self._job: Job | None = None
        self._held = LogServerOutput()  # replies and reads waiting for the job in flight
        self.dropped = 0
        self.jobs = 0
        self.batches = 0
        self.last_poll_us = 0

    @property
    def busy(self) -> bool:
        """A job is in flight (``job_done`` not yet called)."""
        return self._job is not None

    @property
    def pending(self) -> int:
        return len(self._inbox)

    def offer(self, src: int, message: msgspec.Struct) -> bool:
        """Queue an input; False (dropped) when the inbox is full (H4)."""
        if len(self._inbox) >= self.inbox_max:
            self.dropped += 1
            return False
        self._inbox.append((src, message))
        return True

    def poll(self, now_us: int) -> LogServerOutput:
        """Feed the next batch to the core (H2) and hand out what it caused."""
        self.last_poll_us = now_us
        out = LogServerOutput()
        if self._job is not None or not self._inbox:
            return out
        writes: list[StoreWrite] = []
        ready = LogServerOutput()
        for _ in range(min(self.batch_max, len(self._inbox))):
            src, message = self._inbox.popleft()
            effects = self.server.handle(src, message)
            writes += effects.persist
            ready.send += effects.after_persist
            ready.reads += effects.reads
        self.batches += 1
        if not writes:
            return ready
        self._job = out.job = Job(tuple(writes), now_us)
        self._held = ready
        self.jobs += 1
        return out

    def job_done(self) -> LogServerOutput:
        """The job is durable: release the replies and reads that waited for it (H1)."""
        if self._job is None:
            raise RuntimeError("no persistence job in flight")
        self._job = None
        released, self._held = self._held, LogServerOutput()
        return released


__all__ = ["Job", "LogServerLoop", "LogServerOutput"]
