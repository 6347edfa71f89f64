"""The discrete-event loop of the simulator: a heap of (time_us, seq, event).

Rules:

1. Time is simulated and only moves forward, to the time of the next event;
   nothing reads a wall clock.
2. Events at the same time run in the order they were scheduled (``seq``), so
   a run depends only on the seed.
3. Every event that runs is folded into a trace digest (time, name, and a
   caller-given detail such as the encoded message).  Two runs of one seed
   must end with the same digest: that is how determinism is tested.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable

Action = Callable[[], None]


# (time_us, seq, name, action, detail): seq is unique, so comparison never
# reaches the action.
_Event = tuple[int, int, str, Action, bytes]


class EventLoop:
    """A single-threaded simulated clock and its agenda."""

    def __init__(self, *, keep_notes: bool = False) -> None:
        self._heap: list[_Event] = []
        # With keep_notes, notes are also kept as a timeline (for ``--log``).
        self.notes: list[str] | None = [] if keep_notes else None
        self._seq = 0
        self.now_us = 0
        self.events_run = 0
        self._trace = hashlib.blake2b(digest_size=16)

    @property
    def now_ms(self) -> int:
        return self.now_us // 1000

    def at(self, time_us: int, name: str, action: Action, detail: bytes = b"") -> None:
        """Run ``action`` at ``time_us`` (never in the past)."""
        time_us = max(time_us, self.now_us)
        self._seq += 1
        heapq.heappush(self._heap, (time_us, self._seq, name, action, detail))

    def after(self, delay_us: int, name: str, action: Action, detail: bytes = b"") -> None:
        self.at(self.now_us + max(0, delay_us), name, action, detail)

    def run_until(self, time_us: int, stop: Callable[[], bool] | None = None) -> None:
        """Run events up to and including ``time_us`` (or until ``stop()`` holds)."""
        heap = self._heap
        trace = self._trace
        while heap and heap[0][0] <= time_us:
            at_us, _seq, name, action, detail = heapq.heappop(heap)
            self.now_us = at_us
            self.events_run += 1
            trace.update(b"%d %s " % (at_us, name.encode()))
            if detail:
                trace.update(detail)
            action()
            if stop is not None and stop():
                return
        self.now_us = max(self.now_us, time_us)

    def note(self, text: str) -> None:
        """Fold something that is not an event (e.g. a checker's finding) into the trace."""
        self._trace.update(text.encode())
        if self.notes is not None:
            self.notes.append(f"{self.now_us / 1000:10.3f} ms  {text}")

    def digest(self) -> str:
        return self._trace.hexdigest()
