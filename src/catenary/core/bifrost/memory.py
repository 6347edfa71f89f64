"""The memory loglet, and how the local provider maps onto the replicated cores (sans-IO).

Theory of operation
-------------------
``MemoryLoglet`` is a whole loglet in one object: appends are durable the
moment they return (there is no disk), so the global tail is simply the next
offset.  It answers the log-server's read and info messages itself
(``get_records``, ``info``), so a read stream treats a memory segment like a
one-server nodeset that never lacks a record.  It backs the ``memory``
provider (tests, the simulator's control runs) and is the reference the
conformance suite holds the other providers to.

The ``local`` provider is *not* a third implementation: a local segment is a
replicated loglet over the single-node nodeset ``(node,)`` with replication
``{node: 1}`` (``local_placement``) — the same ``Sequencer`` and ``LogServer``
cores, the same seal and find-tail (an f-majority of one).  One code path means
the local loglet inherits every rule the replicated one is tested for (ordered
stores, seal before answer, durable before acknowledged), and a local segment
can be read by the same read stream.  The cost is a message hop inside the
node, which the host short-circuits.  A local sequencer is named
``SequencerId(node, 0)``: it does not survive a restart (its next offset is not
durable), so after a restart the host seals the segment and reconfigures, just
as for a replicated sequencer that died.

Rules (docs/design/log.md, M1-M4; the tests check each):

M1  Offsets are contiguous from 1; ``append`` returns the last offset of the
    batch; an empty batch is refused.
M2  After ``seal`` every append raises ``LogletSealed``; the tail is final.
M3  ``trim`` only grows, is clipped to the tail (``tail - 1``), and answers
    the effective trim point; trimmed records are gone (a trim gap).
M4  A read never covers an offset at or past the tail; offsets at or below the
    trim point are one ``trim`` gap.
"""

from __future__ import annotations

from collections.abc import Sequence

from catenary.core.bifrost.chain import LocalParams, ReplicatedParams
from catenary.core.loglet.replication import ReplicationProperty
from catenary.core.loglet.sequencer import LogletSealed
from catenary.core.loglet.types import (
    Gap,
    GetRecords,
    LogletId,
    LogletInfo,
    Offset,
    Records,
    SequencerId,
)

LOCAL_REPLICATION = ReplicationProperty(node=1)


def local_placement(params: LocalParams) -> ReplicatedParams:
    """The replicated parameters a local segment runs with: one node, ``{node: 1}``."""
    return ReplicatedParams(SequencerId(params.node, 0), (params.node,), LOCAL_REPLICATION)


class MemoryLoglet:
    """An in-process loglet (rules M1-M4)."""

    def __init__(self, loglet: LogletId) -> None:
        self.loglet = loglet
        self._records: list[bytes] = []  # offsets [_first, tail)
        self._first: Offset = 1
        self._sealed = False
        self._trim_point: Offset = 0

    @property
    def tail(self) -> Offset:
        return self._first + len(self._records)

    @property
    def sealed(self) -> bool:
        return self._sealed

    def append(self, payloads: Sequence[bytes]) -> Offset:
        if self._sealed:
            raise LogletSealed(f"loglet {self.loglet} is sealed")
        if not payloads:
            raise ValueError("an append needs at least one record")
        self._records.extend(payloads)
        return self.tail - 1

    def find_tail(self) -> tuple[bool, Offset]:
        return self._sealed, self.tail

    def seal(self) -> Offset:
        self._sealed = True
        return self.tail

    def trim(self, offset: Offset) -> Offset:
        point = min(offset, self.tail - 1)
        if point > self._trim_point:
            del self._records[: point + 1 - self._first]
            self._first = point + 1
            self._trim_point = point
        return self._trim_point

    def trim_point(self) -> Offset:
        return self._trim_point

    def read(self, from_offset: Offset, to_offset: Offset) -> list[tuple[Offset, bytes] | Gap]:
        """Records and trim gaps of ``[from_offset, min(to_offset, tail))``."""
        out: list[tuple[Offset, bytes] | Gap] = []
        end = min(to_offset, self.tail)
        start = max(from_offset, 1)
        if start <= self._trim_point and start < end:
            stop = min(self._trim_point + 1, end)
            out.append(Gap(start, stop, "trim"))
            start = stop
        for offset in range(start, end):
            out.append((offset, self._records[offset - self._first]))
        return out

    # The log-server's read messages, answered in place (for the read stream).

    def get_records(self, m: GetRecords) -> Records:
        runs: list[tuple[bytes, ...] | Gap] = []
        offset = m.from_offset
        budget = m.bytes_max
        batch: list[bytes] = []
        for item in self.read(m.from_offset, m.to_offset):
            if isinstance(item, Gap):
                runs.append(item)
                offset = item.to_offset
                continue
            if batch and budget < len(item[1]):
                break
            batch.append(item[1])
            budget -= len(item[1])
            offset = item[0] + 1
        if batch:
            runs.append(tuple(batch))
        return Records(self.loglet, m.from_offset, tuple(runs), offset, self.tail, self._sealed)

    def info(self) -> LogletInfo:
        return LogletInfo(self.loglet, self.tail, self.tail, self._sealed, self._trim_point)


__all__ = ["LOCAL_REPLICATION", "MemoryLoglet", "local_placement"]
