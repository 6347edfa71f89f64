"""A read stream over a virtual log: records and gaps in LSN order, across segments (sans-IO).

Theory of operation
-------------------
A ``ReadStream`` reads one log from ``from_lsn`` to ``to_lsn`` (exclusive;
None tails the log forever).  The host feeds it the log's chain
(``on_chain``), the log-servers' answers (``on_message``) and ticks
(``tick``); it hands out requests to send (``take_messages``), raises
``need_chain`` when it needs a fresher chain, and buffers the items to
deliver, which the consumer takes with ``take``.  At most one request is in
flight: a stream is a cursor, and one request at a time is enough to saturate
it with ``bytes_max`` per answer.

A segment is read from the servers of its nodeset, one at a time, rotating
after every answer, so reads spread over the copies and never touch the
sequencer.  A sealed segment's end is in the chain (the next segment's base),
and every record below it is on a write quorum (find-tail repaired it, T3), so
the stream reads it up to that end and passes the end as its known tail (LS4
clips a read to the higher of the server's and the reader's tail).  The open
segment is read up to the highest global tail learned from the answers of
*unsealed* servers: a tail carried by a sealed server may come from a finder
that lost the chain's compare-and-set (T4), so it is not trusted; once a
server says the segment is sealed the stream stops at the tail it has and
asks for a fresh chain.  When caught up with the open segment's tail it sends
``WaitForTail`` (answered by a ``LogletInfo`` once the server knows a higher
tail, LS6) to one server, and waits on the next one after ``wait_ticks``
without an answer (a lost message, a restarted server, an idle log).

Memory segments are read in place from the ``MemoryLoglet`` the host's lookup
returns (the same ``Records`` answers, without a message).

Rules (docs/design/log.md, R1-R8; the tests check each):

R1  Items are delivered in LSN order without holes: each LSN from ``from_lsn``
    to ``to_lsn`` is covered by exactly one record or one gap.
R2  Nothing at or past the global tail: a sealed segment is read up to its end
    in the chain, the open one up to the highest tail learned from unsealed
    servers (``Records.known_global_tail``, ``LogletInfo``); answers are clipped
    to that limit whatever the server sent.
R3  An LSN at or below the chain's trim point, below the chain's first segment,
    or in a server's trim gap is a trim gap; adjacent trim gaps are one
    ``TrimGap`` item.
R4  An "absent" gap (or an empty answer) from one server is asked of the next
    server of the nodeset; only when every server of the nodeset answered
    absent for the cursor is the range (the shortest of their absent ranges) a
    ``DataLoss`` gap.
R5  Requests rotate over the nodeset's servers (never the sequencer); a server
    that does not answer within ``resend_ticks`` (``wait_ticks`` for a
    ``WaitForTail``) is skipped for the retry.
R6  Back-pressure: the buffer never holds more than ``buffer_max`` items; a
    request asks for at most the free room, and none is sent while it is full.
R7  A segment reported sealed while the chain still has it open stops the
    stream at its tail and sets ``need_chain``; a chain update that ends the
    segment lets it read on up to the end.
R8  A chain older than the one held (a lower tail index or trim point) is
    ignored; answers that do not match the request in flight are ignored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import msgspec

from catenary.core.bifrost.chain import LOCAL, MEMORY, REPLICATED, Chain, Segment
from catenary.core.bifrost.memory import MemoryLoglet, local_placement
from catenary.core.loglet.replication import NodeId
from catenary.core.loglet.types import (
    Gap,
    GetRecords,
    LogletId,
    LogletInfo,
    Lsn,
    Offset,
    Records,
    WaitForTail,
    to_lsn,
    to_offset,
)


class Record(msgspec.Struct, array_like=True, frozen=True):
    lsn: Lsn
    payload: bytes


class TrimGap(msgspec.Struct, array_like=True, frozen=True):
    """LSNs ``[from_lsn, to_lsn)`` were trimmed."""

    from_lsn: Lsn
    to_lsn: Lsn


class DataLoss(msgspec.Struct, array_like=True, frozen=True):
    """LSNs ``[from_lsn, to_lsn)`` below the tail that no server of the nodeset holds."""

    from_lsn: Lsn
    to_lsn: Lsn


Item = Record | TrimGap | DataLoss


class ReadConfig(msgspec.Struct, frozen=True):
    buffer_max: int = 1024  # items buffered before the stream stops asking
    bytes_max: int = 1 << 20  # per GetRecords answer
    wait_ticks: int = 100  # a WaitForTail unanswered this long is sent elsewhere
    resend_ticks: int = 10  # an unanswered request is sent elsewhere

    def __post_init__(self) -> None:
        for name in ("buffer_max", "bytes_max", "wait_ticks", "resend_ticks"):
            if getattr(self, name) < 1:
                raise ValueError(f"read {name} must be >= 1")


MEMORY_SOURCE: NodeId = -1  # the "server" of a memory segment's answers

MemoryLookup = Callable[[LogletId], MemoryLoglet | None]


def segment_nodeset(segment: Segment) -> tuple[NodeId, ...]:
    """The log-servers that hold a segment (none for a memory segment)."""
    if segment.provider == REPLICATED and segment.replicated is not None:
        return segment.replicated.nodeset
    if segment.provider == LOCAL and segment.local is not None:
        return local_placement(segment.local).nodeset
    return ()


class ReadStream:
    """Reads a log across its segments (rules R1-R8)."""

    def __init__(
        self,
        chain: Chain,
        from_lsn: Lsn,
        to_lsn: Lsn | None = None,
        *,
        config: ReadConfig | None = None,
        memory: MemoryLookup | None = None,
        salt: int = 0,
    ) -> None:
        if from_lsn < 1:
            raise ValueError("a read starts at LSN 1 or later")
        self.chain = chain
        self.next_lsn = from_lsn
        self.to_lsn = to_lsn
        self.config = config or ReadConfig()
        self.need_chain = False
        self._memory = memory
        self._buffer: deque[Item] = deque()
        self._tails: dict[int, Offset] = {}  # open segment index -> known global tail
        self._sealed_seen: set[int] = set()
        self._rotation = salt
        self._absent: dict[NodeId, Offset] = {}  # for the cursor: server -> end of its gap
        self._absent_at: Lsn = 0
        self._skip: NodeId | None = None  # did not answer the last request
        self._pending: tuple[NodeId, msgspec.Struct, int] | None = None
        self._ticks = 0
        self._messages: list[tuple[NodeId, msgspec.Struct]] = []
        self._pump()

    # ------------------------------------------------------------ queries

    @property
    def finished(self) -> bool:
        return self.to_lsn is not None and self.next_lsn >= self.to_lsn and not self._buffer

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # ------------------------------------------------------------- inputs

    def on_chain(self, chain: Chain) -> None:
        """A chain read from the metadata service (R8: an older one is ignored)."""
        if chain.log_id != self.chain.log_id:
            return
        old = self.chain
        if chain.tail.index < old.tail.index or chain.trim_point < old.trim_point:
            return
        self.chain = chain
        self.need_chain = False
        self._pump()

    def on_message(self, src: NodeId, m: msgspec.Struct) -> None:
        pending = self._pending
        if pending is None or pending[0] != src:
            return
        request = pending[1]
        match m:
            case Records() if isinstance(request, GetRecords) and (
                m.loglet == request.loglet and m.first_offset == request.from_offset
            ):
                self._pending = None
                self._on_records(src, m)
            case LogletInfo() if isinstance(request, WaitForTail) and (m.loglet == request.loglet):
                self._pending = None
                self._on_info(m)
            case _:
                return
        self._pump()

    def tick(self) -> None:
        self._ticks += 1
        pending = self._pending
        if pending is not None:
            waiting = isinstance(pending[1], WaitForTail)
            timeout = self.config.wait_ticks if waiting else self.config.resend_ticks
            if self._ticks - pending[2] >= timeout:
                self._skip = pending[0]  # R5: retry elsewhere
                self._pending = None
        self._pump()

    def wake(self) -> None:
        """Look again now (a memory loglet was appended to)."""
        self._pump()

    # ------------------------------------------------------------ outputs

    def take_messages(self) -> list[tuple[NodeId, msgspec.Struct]]:
        out, self._messages = self._messages, []
        return out

    def take(self, n: int | None = None) -> list[Item]:
        """Up to ``n`` items (all buffered when None); frees room for more reads (R6)."""
        count = len(self._buffer) if n is None else min(n, len(self._buffer))
        out = [self._buffer.popleft() for _ in range(count)]
        if out:
            self._pump()
        return out

    def take_within(self, n: int, bytes_max: int, record_overhead: int = 0) -> list[Item]:
        """Items as ``take(1)`` called while fewer than ``n`` are taken and their size
        (a record's payload plus ``record_overhead``; a gap 0) is under ``bytes_max``,
        but with one look for more reads at the end (R6): a read per item taken would
        ask the log-servers for one record at a time."""
        buffer = self._buffer
        out: list[Item] = []
        size = 0
        while buffer and len(out) < n and size < bytes_max:
            item = buffer.popleft()
            if isinstance(item, Record):
                size += len(item.payload) + record_overhead
            out.append(item)
        if out:
            self._pump()
        return out

    # ---------------------------------------------------------- internals

    def _limit(self, segment: Segment) -> tuple[Lsn, Offset, bool]:
        """(first LSN not readable now, known tail offset, segment ended in the chain)."""
        end = self.chain.end_of(segment)
        if end is not None:
            return end, to_offset(segment.base_lsn, end), True
        tail = self._tails.get(segment.index, 1)
        return to_lsn(segment.base_lsn, tail), tail, False

    def _pump(self) -> None:
        while self._pending is None:
            room = self.config.buffer_max - len(self._buffer)
            lsn = self.next_lsn
            if room <= 0 or (self.to_lsn is not None and lsn >= self.to_lsn):
                return
            chain = self.chain
            if lsn <= chain.trim_point:
                self._trim_gap(lsn, chain.trim_point + 1)
                continue
            segment = chain.find(lsn)
            if segment is None:  # R3: below the chain's first segment
                self._trim_gap(lsn, chain.segments[0].base_lsn)
                continue
            limit, known, ended = self._limit(segment)
            if self.to_lsn is not None:
                limit = min(limit, self.to_lsn)
            loglet = segment.loglet(chain.log_id)
            if lsn >= limit:
                if ended:
                    return  # only with to_lsn: done
                if segment.index in self._sealed_seen:
                    self.need_chain = True  # R7
                    return
                if segment.provider == MEMORY:
                    memory = self._memory(loglet) if self._memory else None
                    if memory is None:
                        return
                    self._on_info(memory.info())
                    if self._limit(segment)[0] > lsn or segment.index in self._sealed_seen:
                        continue
                    return
                self._wait(segment, loglet)
                return
            first = to_offset(segment.base_lsn, lsn)
            last = min(to_offset(segment.base_lsn, limit), first + room)
            request = GetRecords(loglet, first, last, self.config.bytes_max, known)
            if segment.provider == MEMORY:
                memory = self._memory(loglet) if self._memory else None
                if memory is None:
                    return
                self._on_records(MEMORY_SOURCE, memory.get_records(request))
                continue
            node = self._choose(segment)
            self._pending = (node, request, self._ticks)
            self._messages.append((node, request))
            return

    def _choose(self, segment: Segment) -> NodeId:
        nodeset = segment_nodeset(segment)
        candidates = [
            n for n in nodeset if n not in self._absent or self._absent_at != self.next_lsn
        ]
        if self._skip is not None and len(candidates) > 1 and self._skip in candidates:
            candidates.remove(self._skip)
        if not candidates:
            candidates = list(nodeset)
        node = candidates[self._rotation % len(candidates)]
        self._rotation += 1
        self._skip = None
        return node

    def _wait(self, segment: Segment, loglet: LogletId) -> None:
        node = self._choose(segment)
        request = WaitForTail(loglet, self._tails.get(segment.index, 1))
        self._pending = (node, request, self._ticks)
        self._messages.append((node, request))

    def _current(self, loglet: LogletId) -> Segment | None:
        segment = self.chain.find(self.next_lsn)
        if segment is None or segment.loglet(self.chain.log_id) != loglet:
            return None
        if self.next_lsn <= self.chain.trim_point:
            return None
        return segment

    def _learn(self, segment: Segment, tail: Offset, sealed: bool) -> None:
        if self.chain.end_of(segment) is not None:
            return
        if sealed:
            self._sealed_seen.add(segment.index)  # R2/R7: its tail is not trusted
        elif tail > self._tails.get(segment.index, 1):
            self._tails[segment.index] = tail

    def _on_info(self, m: LogletInfo) -> None:
        segment = self._current(m.loglet)
        if segment is not None:
            self._learn(segment, m.known_global_tail, m.sealed)

    def _on_records(self, src: NodeId, m: Records) -> None:
        segment = self._current(m.loglet)
        if segment is None:
            return  # R8: the chain moved under the request
        base = segment.base_lsn
        if m.first_offset != to_offset(base, self.next_lsn):
            return
        self._learn(segment, m.known_global_tail, m.sealed)
        limit = self._limit(segment)[0]
        if self.to_lsn is not None:
            limit = min(limit, self.to_lsn)
        stop = to_offset(base, limit)  # R2: clip whatever the server sent
        offset = m.first_offset
        for run in m.runs:
            if offset >= stop:
                break
            if isinstance(run, Gap):
                if run.from_offset != offset or run.to_offset <= offset:
                    break
                end = min(run.to_offset, stop)
                if run.kind == "trim":
                    self._trim_gap(to_lsn(base, offset), to_lsn(base, end))
                    offset = end
                    continue
                self._absent_from(src, segment, offset, end)
                return
            for payload in run:
                if offset >= stop:
                    break
                self._push(Record(to_lsn(base, offset), payload), to_lsn(base, offset) + 1)
                offset += 1
        if offset == m.first_offset and offset < stop and src != MEMORY_SOURCE:
            # An empty answer: the server's local tail is below the cursor (R4).
            self._absent_from(src, segment, offset, stop)

    def _absent_from(self, src: NodeId, segment: Segment, offset: Offset, end: Offset) -> None:
        lsn = to_lsn(segment.base_lsn, offset)
        if self._absent_at != lsn:
            self._absent = {}
            self._absent_at = lsn
        self._absent[src] = min(end, self._absent.get(src, end))
        nodeset = segment_nodeset(segment)
        if nodeset and all(node in self._absent for node in nodeset):
            lost_end = min(self._absent[node] for node in nodeset)
            self._push(
                DataLoss(lsn, to_lsn(segment.base_lsn, lost_end)),
                to_lsn(segment.base_lsn, lost_end),
            )

    def _trim_gap(self, from_lsn: Lsn, to_lsn_: Lsn) -> None:
        if self.to_lsn is not None:
            to_lsn_ = min(to_lsn_, self.to_lsn)
        if to_lsn_ <= from_lsn:
            return
        last = self._buffer[-1] if self._buffer else None
        if isinstance(last, TrimGap) and last.to_lsn == from_lsn:
            self._buffer[-1] = TrimGap(last.from_lsn, to_lsn_)
            self.next_lsn = to_lsn_
            return
        self._push(TrimGap(from_lsn, to_lsn_), to_lsn_)

    def _push(self, item: Item, next_lsn: Lsn) -> None:
        self._buffer.append(item)
        self.next_lsn = next_lsn
        self._absent = {}
        self._absent_at = 0


__all__ = [
    "DataLoss",
    "Item",
    "MemoryLookup",
    "ReadConfig",
    "ReadStream",
    "Record",
    "TrimGap",
    "segment_nodeset",
]
