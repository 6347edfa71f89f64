"""The log-server core: which stores, seals and trims it accepts (sans-IO).

Theory of operation
-------------------
One ``LogServer`` serves every loglet of a node.  It keeps, per loglet, a
small ``LogletState`` — never the records themselves, which live in the node's
log store.  Each request is turned into an ``Effects``: durable writes to make
(``persist``, in order), replies to send only once those writes are durable
(``after_persist``), and read plans the host fills from its store.  The host
executes writes in the order given and group-commits them; a reply leaves after
every write handed out before it is durable, so a reply never promises more
than the disk holds (LS3).  The same ``apply`` that accepts a write rebuilds
the state from the store at restart (``recover``), so what is on disk and what
the core believes cannot drift apart.

Rules (docs/design/log.md; the tests check each):

LS1  Per loglet: the held offsets (runs), the local tail (first offset after the
     highest held), the sealed flag, the pinned sequencer and the trim point are
     durable; the known global tail is not (it is learned again).
LS2  A ``Store`` is accepted only if: well formed; the loglet is not sealed;
     its sequencer is the pinned one (the first accepted store pins it; seal
     and repair stores never pin); and it is in order — ``first_offset <=
     local_tail`` or ``first_offset <= known global tail`` (the gap below it is
     committed, so held elsewhere).  A repair store (sent by find-tail after a
     seal, rule T3) skips the seal, pin and order checks.  Offsets already held
     are never written again: a store only adds what is missing.
LS3  Every reply is sent after everything accepted before it is durable.
LS4  A read never covers an offset at or past the global tail known to either
     side, nor past the local tail; offsets not held below that are an
     "absent" gap, offsets at or below the trim point a "trim" gap.
LS5  A trim only grows, is clipped to the known global tail, and is durable
     before it is answered.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import msgspec

from catenary.core.loglet.types import (
    MALFORMED,
    OK,
    OUT_OF_ORDER,
    SEALED,
    WRONG_SEQUENCER,
    Digest,
    Gap,
    GetDigest,
    GetLogletInfo,
    GetRecords,
    LogletId,
    LogletInfo,
    Offset,
    Seal,
    Sealed,
    SequencerId,
    Store,
    Stored,
    Tail,
    Trim,
    Trimmed,
)

# ------------------------------------------------------------ durable writes


class PutRecords(msgspec.Struct, tag="pr", array_like=True, frozen=True):
    loglet: LogletId
    first_offset: Offset
    payloads: tuple[bytes, ...]


class PutSeal(msgspec.Struct, tag="ps", array_like=True, frozen=True):
    loglet: LogletId


class PutTrim(msgspec.Struct, tag="pt", array_like=True, frozen=True):
    loglet: LogletId
    trim_point: Offset


class PutSequencer(msgspec.Struct, tag="pq", array_like=True, frozen=True):
    loglet: LogletId
    sequencer: SequencerId


StoreWrite = PutRecords | PutSeal | PutTrim | PutSequencer


# ----------------------------------------------------------------- effects


class ReadPlan(msgspec.Struct, frozen=True):
    """What a ``GetRecords`` may return: the host reads the record runs from its
    store, in order, until ``bytes_max`` (at least one record), and answers
    ``Records`` with ``next_offset`` where it stopped."""

    src: int
    request: GetRecords
    runs: tuple[tuple[Offset, Offset] | Gap, ...]  # record ranges (half-open) and gaps
    end_offset: Offset  # where the plan ends: the reader continues here
    known_global_tail: Offset
    sealed: bool


@dataclass
class Effects:
    persist: list[StoreWrite] = field(default_factory=list)
    after_persist: list[tuple[int, msgspec.Struct]] = field(default_factory=list)
    reads: list[ReadPlan] = field(default_factory=list)


# ------------------------------------------------------------------- state


@dataclass
class LogletState:
    runs: list[list[int]] = field(default_factory=list)  # held [start, end), sorted, disjoint
    sealed: bool = False
    sequencer: SequencerId | None = None
    trim_point: Offset = 0
    known_global_tail: Offset = 1

    @property
    def local_tail(self) -> Offset:
        # A trim drops held runs but never moves the tail back.
        return max(self.runs[-1][1] if self.runs else 1, self.trim_point + 1)

    def holds(self, start: Offset, end: Offset) -> bool:
        """Are all of ``[start, end)`` held (or trimmed)?"""
        start = max(start, self.trim_point + 1)
        if start >= end:
            return True
        i = bisect.bisect_right(self.runs, [start, 1 << 64]) - 1
        return i >= 0 and self.runs[i][0] <= start and end <= self.runs[i][1]

    def missing(self, start: Offset, end: Offset) -> list[tuple[Offset, Offset]]:
        """The sub-ranges of ``[start, end)`` not held, in order."""
        out: list[tuple[Offset, Offset]] = []
        cursor = start
        for run_start, run_end in self.runs:
            if run_end <= cursor:
                continue
            if run_start >= end:
                break
            if run_start > cursor:
                out.append((cursor, min(run_start, end)))
            cursor = max(cursor, run_end)
            if cursor >= end:
                break
        if cursor < end:
            out.append((cursor, end))
        return out

    def add(self, start: Offset, end: Offset) -> None:
        runs = self.runs
        i = bisect.bisect_left(runs, [start, start])
        # Merge with the run before when it touches or overlaps.
        if i > 0 and runs[i - 1][1] >= start:
            i -= 1
            start = runs[i][0]
        j = i
        while j < len(runs) and runs[j][0] <= end:
            end = max(end, runs[j][1])
            j += 1
        runs[i:j] = [[start, end]]

    def drop_through(self, point: Offset) -> None:
        """Forget held offsets at or below ``point`` (a trim)."""
        kept: list[list[int]] = []
        for start, end in self.runs:
            if end <= point + 1:
                continue
            kept.append([max(start, point + 1), end])
        self.runs = kept


def apply(state: LogletState, write: StoreWrite) -> None:
    """The effect of one durable write on a loglet's state (accept and recovery alike)."""
    match write:
        case PutRecords(first_offset=first, payloads=payloads):
            state.add(first, first + len(payloads))
        case PutSeal():
            state.sealed = True
        case PutTrim(trim_point=point):
            if point > state.trim_point:
                state.trim_point = point
                state.drop_through(point)
        case PutSequencer(sequencer=sequencer):
            state.sequencer = sequencer


class LogServer:
    """Accepts or refuses the loglet requests of one node (rules LS1-LS5)."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self._loglets: dict[LogletId, LogletState] = {}

    def recover(self, writes: list[StoreWrite]) -> None:
        """Rebuild the state from the durable writes the store holds, in order."""
        for write in writes:
            apply(self._state(write.loglet), write)

    def restore(self, loglet: LogletId, state: LogletState) -> None:
        """Install a loglet's state from a checkpoint (what its writes had built)."""
        self._loglets[loglet] = state

    def state(self, loglet: LogletId) -> LogletState | None:
        return self._loglets.get(loglet)

    def loglets(self) -> list[LogletId]:
        return sorted(self._loglets)

    def handle(self, src: int, message: msgspec.Struct) -> Effects:
        effects = Effects()
        match message:
            case Store():
                self._store(src, message, effects)
            case Seal(loglet=loglet):
                st = self._state(loglet)
                if not st.sealed:
                    self._write(st, PutSeal(loglet), effects)
                effects.after_persist.append((src, Sealed(loglet, st.local_tail)))
            case Tail(loglet=loglet, global_tail=tail):
                st = self._state(loglet)
                st.known_global_tail = max(st.known_global_tail, tail)
            case Trim(loglet=loglet, trim_point=point):
                st = self._state(loglet)
                point = min(point, st.known_global_tail - 1)
                if point > st.trim_point:
                    self._write(st, PutTrim(loglet, point), effects)
                effects.after_persist.append((src, Trimmed(loglet, st.trim_point)))
            case GetLogletInfo(loglet=loglet):
                st = self._state(loglet)
                effects.after_persist.append(
                    (
                        src,
                        LogletInfo(
                            loglet, st.local_tail, st.known_global_tail, st.sealed, st.trim_point
                        ),
                    )
                )
            case GetDigest(loglet=loglet, from_offset=start, to_offset=end):
                st = self._state(loglet)
                held = tuple(
                    (max(a, start), min(b, end)) for a, b in st.runs if a < end and b > start
                )
                effects.after_persist.append(
                    (src, Digest(loglet, held, st.local_tail, st.trim_point))
                )
            case GetRecords():
                effects.reads.append(self._plan_read(src, message))
            case _:
                raise ValueError(f"not a log-server request: {type(message).__name__}")
        return effects

    # ------------------------------------------------------------ internals

    def _state(self, loglet: LogletId) -> LogletState:
        st = self._loglets.get(loglet)
        if st is None:
            st = self._loglets[loglet] = LogletState()
        return st

    def _write(self, st: LogletState, write: StoreWrite, effects: Effects) -> None:
        apply(st, write)
        effects.persist.append(write)

    def _store(self, src: int, m: Store, effects: Effects) -> None:
        st = self._state(m.loglet)

        def answer(status: str) -> None:
            effects.after_persist.append(
                (src, Stored(m.loglet, m.first_offset, status, st.local_tail))
            )

        if m.first_offset < 1 or not m.payloads or m.known_global_tail < 1:
            answer(MALFORMED)
            return
        st.known_global_tail = max(st.known_global_tail, m.known_global_tail)
        if st.sealed and not m.repair:
            answer(SEALED)
            return
        if not m.repair:
            if st.sequencer is None:
                self._write(st, PutSequencer(m.loglet, m.sequencer), effects)
            elif st.sequencer != m.sequencer:
                answer(WRONG_SEQUENCER)
                return
        if (
            not m.repair
            and m.first_offset > st.local_tail
            and m.first_offset > st.known_global_tail
        ):
            answer(OUT_OF_ORDER)
            return
        end = m.first_offset + len(m.payloads)
        for start, stop in st.missing(max(m.first_offset, st.trim_point + 1), end):
            payloads = m.payloads[start - m.first_offset : stop - m.first_offset]
            self._write(st, PutRecords(m.loglet, start, payloads), effects)
        answer(OK)

    def _plan_read(self, src: int, m: GetRecords) -> ReadPlan:
        st = self._state(m.loglet)
        # The reader's tail clips the read but is not adopted: a repairer reads
        # up to a sealed tail before the records below it are on write quorums,
        # and only the sequencer or a finished repair may tell servers a tail.
        tail = max(st.known_global_tail, m.known_global_tail)
        start = max(m.from_offset, 1)
        end = min(m.to_offset, tail)
        runs: list[tuple[Offset, Offset] | Gap] = []
        if start <= st.trim_point and start < end:
            stop = min(st.trim_point + 1, end)
            runs.append(Gap(start, stop, "trim"))
            start = stop
        if start < end:
            # Held records up to the local tail; beyond it the reader asks elsewhere.
            end = min(end, max(st.local_tail, start))
            cursor = start
            for gap_start, gap_end in st.missing(start, end):
                if gap_start > cursor:
                    runs.append((cursor, gap_start))
                runs.append(Gap(gap_start, gap_end, "absent"))
                cursor = gap_end
            if cursor < end:
                runs.append((cursor, end))
            start = max(start, end)
        return ReadPlan(src, m, tuple(runs), start, tail, st.sealed)


__all__ = [
    "Effects",
    "LogServer",
    "LogletState",
    "PutRecords",
    "PutSeal",
    "PutSequencer",
    "PutTrim",
    "ReadPlan",
    "StoreWrite",
    "apply",
]
