"""The in-memory Raft log of one node: a snapshot boundary plus the entries after it.

Theory of operation
-------------------
The log holds entries ``(snap_index, last_index]`` in a list; ``snap_index``/``snap_term``
describe the last entry covered by the latest snapshot (0/0 when there is none).  Two
cursors tell the node what the host has done with the tail:

* ``handed_index``: entries up to here were returned in a ``Ready`` (the host is
  persisting them or has done so);
* ``stable_index``: entries up to here are durable (the host called ``advance``).

Rules:

1. ``snap_index <= stable_index <= handed_index <= last_index`` after every operation
   (``stable_index`` and ``handed_index`` may be below ``snap_index`` only transiently,
   and are raised to it when a snapshot is installed).
2. Entries are contiguous: ``entries[k].index == snap_index + 1 + k``, and terms never
   decrease along the log.
3. Truncating the tail at ``index`` pulls both cursors back below ``index``: entries the
   host was given and that were then replaced must be handed out again.
4. The byte count covers the payloads of the entries held, so thresholds are cheap.
"""

from __future__ import annotations

from collections.abc import Sequence

from catenary.core.raft.types import Entry


class RaftLog:
    __slots__ = ("_entries", "handed_index", "snap_index", "snap_term", "stable_index")

    def __init__(self, snap_index: int, snap_term: int, entries: Sequence[Entry]) -> None:
        self.snap_index = snap_index
        self.snap_term = snap_term
        self._entries: list[Entry] = []
        for k, e in enumerate(entries):
            if e.index != snap_index + 1 + k:
                raise ValueError(
                    f"entries must follow the snapshot contiguously: expected index "
                    f"{snap_index + 1 + k}, got {e.index}"
                )
            prev_term = self._entries[-1].term if self._entries else snap_term
            if e.term < prev_term:
                raise ValueError(f"entry {e.index} has term {e.term} below its predecessor")
            self._entries.append(e)
        self.stable_index = self.last_index
        self.handed_index = self.last_index

    # ------------------------------------------------------------ queries

    @property
    def last_index(self) -> int:
        return self.snap_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snap_term

    @property
    def first_index(self) -> int:
        """The first index held as an entry (may be last_index + 1 when empty)."""
        return self.snap_index + 1

    def term_at(self, index: int) -> int | None:
        """The term of ``index``, or None when it is compacted away or beyond the end."""
        if index == self.snap_index:
            return self.snap_term
        if index < self.snap_index or index > self.last_index:
            return None
        return self._entries[index - self.snap_index - 1].term

    def entry(self, index: int) -> Entry:
        return self._entries[index - self.snap_index - 1]

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries ``[lo, hi)``; ``lo`` must be above the snapshot."""
        assert lo > self.snap_index, (lo, self.snap_index)
        hi = min(hi, self.last_index + 1)
        if lo >= hi:
            return []
        base = self.snap_index + 1
        return self._entries[lo - base : hi - base]

    def slice_bounded(self, lo: int, count_max: int, bytes_max: int) -> list[Entry]:
        """Entries from ``lo``: at most ``count_max`` and ``bytes_max`` (at least one)."""
        out: list[Entry] = []
        size = 0
        base = self.snap_index + 1
        for k in range(lo - base, len(self._entries)):
            e = self._entries[k]
            size += len(e.data)
            if out and (len(out) >= count_max or size > bytes_max):
                break
            out.append(e)
        return out

    def matches(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: a candidate's log at least as up to date as ours."""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` (fast backup).

        Stops at the snapshot boundary: nothing below it can be examined.
        """
        index = min(index, self.last_index)
        while index > self.snap_index:
            t = self.term_at(index)
            assert t is not None
            if t <= term:
                return index
            index -= 1
        return index

    def bytes_between(self, lo: int, hi: int) -> int:
        """Payload bytes of entries ``[lo, hi)``."""
        return sum(len(e.data) for e in self.slice(max(lo, self.snap_index + 1), hi))

    def unstable(self) -> list[Entry]:
        """Entries not yet handed to the host."""
        return self.slice(self.handed_index + 1, self.last_index + 1)

    # ---------------------------------------------------------- mutations

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries right after the last one (the caller resolved conflicts)."""
        if not entries:
            return
        # Log matching: contiguous after our last entry, terms never going back.  Checking
        # the ends keeps this O(1); every caller builds the run contiguously.
        first, last = entries[0], entries[-1]
        assert first.index == self.last_index + 1, (first.index, self.last_index)
        assert last.index == first.index + len(entries) - 1, (first.index, last.index)
        assert self.last_term <= first.term <= last.term, (self.last_term, first.term)
        self._entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Drop entries ``>= index`` (a conflicting suffix)."""
        assert index > self.snap_index, (index, self.snap_index)
        del self._entries[index - self.snap_index - 1 :]
        self.handed_index = min(self.handed_index, index - 1)
        self.stable_index = min(self.stable_index, index - 1)

    def compact_to(self, index: int) -> None:
        """Drop entries ``<= index``; they are covered by a snapshot now."""
        assert self.snap_index < index <= self.last_index, (index, self.snap_index)
        term = self.term_at(index)
        assert term is not None
        del self._entries[: index - self.snap_index]
        self.snap_index = index
        self.snap_term = term

    def reset_to_snapshot(self, index: int, term: int) -> None:
        """Discard everything: the log now starts after an installed snapshot."""
        self._entries = []
        self.snap_index = index
        self.snap_term = term
        self.handed_index = index
        self.stable_index = index

    def stable_to(self, index: int, term: int) -> None:
        """The host made entries up to (``index``, ``term``) durable.

        If the entry was replaced since it was handed out, nothing is marked: the
        replacement will be handed out and acknowledged on its own.
        """
        if index <= self.snap_index:
            # Compacted meanwhile: the snapshot covers it, which is durable too.
            self.stable_index = max(self.stable_index, index)
        elif self.term_at(index) == term and index > self.stable_index:
            self.stable_index = min(index, self.handed_index)
