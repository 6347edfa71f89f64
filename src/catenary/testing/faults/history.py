"""What a fault run records: every invocation and its completion, and verdicts.

Each client operation is one ``Record``: who called it, when (seconds since
the run's start, on this process's monotonic clock), what, and how it ended:

- ``ok``: the node answered (a failed precondition is an ``ok`` answer);
- ``failed``: it surely did not take effect (no node reachable in time, or a
  read that got no answer: reads change nothing);
- ``indeterminate``: a write whose outcome is unknown.  The checkers treat it
  as possibly applied, at any instant after its call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

Outcome = Literal["ok", "failed", "indeterminate"]


class Clock:
    """Seconds since the run started (monotonic)."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.start


@dataclass(slots=True)
class Record:
    process: int
    kind: str  # get | stale-get | put | delete | grant | keepalive | revoke | watch-event ...
    key: str
    call: float
    value: bytes = b""
    precondition: str = "none"  # none | absent | version
    if_version: int = 0
    ret: float | None = None
    outcome: Outcome | None = None  # None while in flight
    version: int = 0  # Written version / read version / PreconditionFailed current version
    found: bool = False  # a get: the key was present
    got: bytes = b""  # a get: the value read
    precondition_failed: bool = False
    error: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    checker: str
    status: Literal["ok", "violation", "unknown", "skipped"]
    detail: str = ""

    @property
    def failed(self) -> bool:
        # "unknown" (a checker gave up) fails too: nothing was shown.
        return self.status in ("violation", "unknown")

    def line(self) -> str:
        return f"{self.checker:<22} {self.status.upper():<9} {self.detail}"
