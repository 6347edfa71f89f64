"""``RepeatLimiter``: at most one log line per key per interval, counting the rest.

A flapping peer link or a partitioned node campaigning over and over must not
flood the log, yet the line that does appear should say how much was left
out.  ``admit(key)`` answers ``None`` for an event to leave out (it is
counted) and otherwise the number left out since the last admitted one.  The
clock is injected (seconds, monotonic) so tests need not sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class RepeatLimiter:
    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s < 0:
            raise ValueError("interval_s must be >= 0")
        self.interval_s = interval_s
        self._clock = clock
        # key -> (time of the last admitted line, events left out since)
        self._last: dict[Hashable, tuple[float, int]] = {}

    def admit(self, key: Hashable) -> int | None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return None
        self._last[key] = (now, 0)
        return 0 if last is None else last[1]

    def forget(self, key: Hashable) -> None:
        self._last.pop(key, None)
