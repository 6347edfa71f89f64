"""What a leader knows about one follower (or learner) while replicating to it.

Theory of operation
-------------------
A follower is in one of three states:

* ``probe``: the leader does not know where the logs match.  It sends one append at a
  time (``probe_sent`` pauses further sends) and waits for the answer or the next
  heartbeat; a reject moves ``next`` back using the follower's hint.
* ``replicate``: the logs match at ``match``; the leader streams appends optimistically,
  advancing ``next`` as it sends, with at most ``max_inflight_messages`` unacknowledged
  appends (``inflight`` holds the last index of each, ascending).
* ``snapshot``: the entries the follower needs were compacted away; the leader sends the
  snapshot ``snap_index`` in chunks, one chunk in flight, resuming at the follower's
  ``next_offset``.

``unanswered`` counts the data messages (appends carrying entries, snapshot chunks) sent
since the follower last answered; any answer resets it.  While it is not zero a
heartbeat re-sends no data (the core's R6), so a follower that hears nothing -- cut off
-- is sent heartbeats only, not a copy of its backlog on every one of them, and the
count never exceeds ``max_inflight_messages``.

Invariants: ``match < next``; ``match`` never decreases within a term; ``inflight`` is
ascending and bounded.
"""

from __future__ import annotations

from collections import deque

PROBE = "probe"
REPLICATE = "replicate"
SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "ack_round",
        "inflight",
        "learner",
        "match",
        "next",
        "probe_sent",
        "recent_active",
        "snap_chunk_unacked",
        "snap_index",
        "snap_offset",
        "snap_queried",
        "state",
        "unanswered",
    )

    def __init__(self, next_index: int, learner: bool) -> None:
        self.match = 0
        self.next = next_index
        self.state = PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()
        self.learner = learner
        self.recent_active = False
        # Highest confirmation round this peer answered (echoed in AppendEntriesResponse).
        self.ack_round = 0
        self.snap_index = 0
        self.snap_offset = 0
        self.snap_chunk_unacked = False
        self.snap_queried = False  # asked where the snapshot stands (chunk unanswered)
        # Data messages (entries, snapshot chunks) sent since the follower last answered.
        self.unanswered = 0

    def become_probe(self) -> None:
        # After a snapshot the follower holds everything up to it.
        if self.state == SNAPSHOT:
            self.next = max(self.match + 1, self.snap_index + 1)
        else:
            self.next = self.match + 1
        self.state = PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.snap_index = 0
        self.snap_offset = 0
        self.snap_chunk_unacked = False
        self.snap_queried = False

    def become_replicate(self) -> None:
        self.state = REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, snap_index: int) -> None:
        self.state = SNAPSHOT
        self.inflight.clear()
        self.probe_sent = False
        self.snap_index = snap_index
        self.snap_offset = 0
        self.snap_chunk_unacked = False
        self.snap_queried = False

    def update(self, match: int) -> bool:
        """Record an acknowledged match; True if it moved forward."""
        updated = False
        if match > self.match:
            self.match = match
            updated = True
            self.probe_sent = False
        self.next = max(self.next, match + 1)
        while self.inflight and self.inflight[0] <= match:
            self.inflight.popleft()
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Handle a reject of an append whose prev index was ``rejected``.

        Returns False for a stale reject (an answer to an older message).
        """
        if self.state == REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def paused(self, inflight_max: int) -> bool:
        if self.state == PROBE:
            return self.probe_sent
        if self.state == REPLICATE:
            return len(self.inflight) >= inflight_max
        return True  # SNAPSHOT: chunks flow separately
