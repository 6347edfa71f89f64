"""The Raft core's events (``RaftEvent``) as log lines and metrics.

The core records its rare transitions (R11 in ``core/raft/node.py``); the host
loop hands them out in ``Output.events``; ``RaftEventLog`` writes each as one
INFO line on the ``catenary.raft`` logger and counts it in ``ServerMetrics``.
Every line reads ``n<this node> term <t>: <what> (<reason>): <detail>``.

A node cut off from the others starts a pre-vote every election timeout and
loses it; after the first, such repeats of the same term are logged at most
once per ``repeat_interval_s``, the line saying how many were left out (the
metrics count every one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from catenary.core.raft.types import EventKind, RaftEvent
from catenary.runtime.metrics import ServerMetrics
from catenary.runtime.ratelimit import RepeatLimiter

log = logging.getLogger("catenary.raft")

REPEAT_INTERVAL_S_DEFAULT = 10.0

_WHAT = {
    EventKind.ELECTION_STARTED: "election started",
    EventKind.ELECTION_WON: "election won",
    EventKind.ELECTION_LOST: "election lost",
    EventKind.STEP_DOWN: "stepped down",
    EventKind.LEADER_CHANGED: "leader changed",
    EventKind.MEMBERSHIP: "membership change",
    EventKind.LEASE_LOST: "lease reads lost",
    EventKind.LEASE_REGAINED: "lease reads regained",
}


def describe(node_id: int, event: RaftEvent) -> str:
    """The log line of ``event`` on node ``node_id``."""
    what = _WHAT.get(event.kind, event.kind)
    kind = event.kind
    if kind == EventKind.LEADER_CHANGED:
        return (
            f"n{node_id} term {event.term}: leader changed: n{event.node} leads term {event.term}"
        )
    if kind == EventKind.MEMBERSHIP:
        what = f"membership change {event.reason} n{event.node}"
        return f"n{node_id} term {event.term}: {what}: {event.detail}"
    reason = f" ({event.reason})" if event.reason else ""
    detail = f": {event.detail}" if event.detail else ""
    return f"n{node_id} term {event.term}: {what}{reason}{detail}"


class RaftEventLog:
    """Logs and counts the events of node ``node_id`` (see the module docstring)."""

    def __init__(
        self,
        node_id: int,
        metrics: ServerMetrics,
        *,
        repeat_interval_s: float = REPEAT_INTERVAL_S_DEFAULT,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.node_id = node_id
        self._metrics = metrics
        self._limiter = (
            RepeatLimiter(repeat_interval_s)
            if clock is None
            else RepeatLimiter(repeat_interval_s, clock)
        )

    def record(self, events: list[RaftEvent]) -> None:
        metrics = self._metrics
        for event in events:
            metrics.raft_event(event)
            line = describe(self.node_id, event)
            if self._is_repeat(event):
                left_out = self._limiter.admit(("pre-vote", event.kind, event.term))
                if left_out is None:
                    log.debug("%s", line)
                    continue
                if left_out:
                    line += f" ({left_out} more like it since the last such line)"
            log.info("%s", line)

    @staticmethod
    def _is_repeat(event: RaftEvent) -> bool:
        """A pre-vote round of a node that cannot reach a quorum: same term, again."""
        if event.kind == EventKind.ELECTION_STARTED:
            return event.reason == "pre-vote"
        if event.kind == EventKind.ELECTION_LOST:
            return event.detail.startswith("pre-vote")
        return False
