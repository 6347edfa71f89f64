"""Data types shared by the Raft core, its hosts and the simulator.

Every message is a msgspec Struct so the wire layer can encode it without a
second schema.  Indexes and terms are plain ints (u64 on the wire); index 0
and term 0 mean "none".  Node ids are small positive ints; 0 means "none".
"""

from __future__ import annotations

from enum import IntEnum

import msgspec


class EntryKind(IntEnum):
    NORMAL = 0  # data is an opaque state-machine command
    CONFIG = 1  # data is an encoded ConfChange
    NOOP = 2  # appended by every new leader to commit entries of earlier terms


class Entry(msgspec.Struct, array_like=True, frozen=True):
    term: int
    index: int
    kind: int  # an EntryKind value
    data: bytes


class HardState(msgspec.Struct, array_like=True, frozen=True):
    term: int = 0
    vote: int = 0
    commit: int = 0


class Membership(msgspec.Struct, array_like=True, frozen=True):
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


class ConfChangeKind(IntEnum):
    ADD_LEARNER = 0
    PROMOTE = 1  # learner -> voter
    REMOVE = 2  # voter or learner


class ConfChange(msgspec.Struct, array_like=True, frozen=True):
    kind: int  # a ConfChangeKind value
    node: int


class SnapshotMeta(msgspec.Struct, array_like=True, frozen=True):
    index: int
    term: int
    membership: Membership


class Snapshot(msgspec.Struct, array_like=True, frozen=True):
    meta: SnapshotMeta
    data: bytes


# ---------------------------------------------------------------- messages


class RequestVote(msgspec.Struct, tag="rv", array_like=True, frozen=True):
    src: int
    dst: int
    term: int  # for a pre-vote: the term the candidate would campaign in
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False  # campaign forced by TimeoutNow: ignores leader stickiness


class RequestVoteResponse(msgspec.Struct, tag="rvr", array_like=True, frozen=True):
    src: int
    dst: int
    term: int
    granted: bool
    pre_vote: bool = False


class AppendEntries(msgspec.Struct, tag="ae", array_like=True, frozen=True):
    src: int
    dst: int
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    # The leader's read-confirmation round this append belongs to (0 = none); the
    # follower echoes it.  Rounds are the core's own counter, not host read contexts.
    read_ctx: int = 0


class AppendEntriesResponse(msgspec.Struct, tag="aer", array_like=True, frozen=True):
    src: int
    dst: int
    term: int
    success: bool
    match_index: int  # on success: last index known to match; on reject: the rejected prev_index
    hint_index: int = 0  # on reject: follower's suggestion for the next probe (fast backup)
    hint_term: int = 0
    read_ctx: int = 0


class InstallSnapshot(msgspec.Struct, tag="is", array_like=True, frozen=True):
    src: int
    dst: int
    term: int
    meta: SnapshotMeta
    offset: int  # byte offset of chunk within the snapshot data
    chunk: bytes
    done: bool  # last chunk


class InstallSnapshotResponse(msgspec.Struct, tag="isr", array_like=True, frozen=True):
    src: int
    dst: int
    term: int
    index: int  # snapshot index this answers
    next_offset: int  # byte offset the follower wants next
    done: bool  # snapshot fully received and installed (persist-gated)
    reject: bool = False


class TimeoutNow(msgspec.Struct, tag="tn", array_like=True, frozen=True):
    src: int
    dst: int
    term: int


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
)


# ----------------------------------------------------------- host interface


class ReadState(msgspec.Struct, frozen=True):
    """A ReadIndex request that may be served once applied index >= index."""

    ctx: int
    index: int


class EventKind:
    """What a ``RaftEvent`` tells (rare transitions only; see ``RaftNode.take_events``)."""

    ELECTION_STARTED = "election_started"  # reason: pre-vote | election | transfer
    ELECTION_WON = "election_won"  # reason: pre-vote | election; detail: the votes
    ELECTION_LOST = "election_lost"  # reason: rejected | timeout | leader | higher-term
    STEP_DOWN = "step_down"  # reason: check-quorum | higher-term | removed | transfer
    LEADER_CHANGED = "leader_changed"  # a non-leader learned of a new leader (node, term)
    MEMBERSHIP = "membership"  # reason: add-learner | promote | remove; node: the member
    LEASE_LOST = "lease_lost"  # the leader can no longer serve lease reads
    LEASE_REGAINED = "lease_regained"  # ... and can again


class RaftEvent(msgspec.Struct, frozen=True):
    """One transition of a Raft node worth a line in its log.

    ``node`` is the node the event is about: the one that started or won the
    election, the peer whose higher term made a leader step down, the new
    leader, the member added or removed.  ``reason`` is a short label (a
    metric label), ``detail`` the rest in words.
    """

    kind: str
    term: int
    node: int
    reason: str = ""
    detail: str = ""


class Ready(msgspec.Struct):
    """Work the host must do, in this order, then call ``RaftNode.advance(ready)``.

    1. send ``messages`` (they do not depend on this Ready's persistence);
    2. durably persist ``hard_state`` first (a term or vote must be on disk
       before entries of that term, so a crash part-way never leaves entries
       above the stored term), then ``snapshot`` (if any; it replaces the whole
       log -- entries after it come in ``entries`` -- and must be restored into
       the state machine), then ``entries`` (each entry replaces any stored entry
       with the same or a higher index); fsync.  The commit index the stored
       hard state carries is clamped to what is durable in final form, so a
       restart never claims a commit it cannot read back;
    3. only then send ``messages_after_persist``;
    4. apply ``committed`` entries in order to the state machine;
    5. serve ``reads`` once the applied index reaches each one's index.
    """

    hard_state: HardState | None = None
    entries: list[Entry] = msgspec.field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[Message] = msgspec.field(default_factory=list)
    messages_after_persist: list[Message] = msgspec.field(default_factory=list)
    committed: list[Entry] = msgspec.field(default_factory=list)
    reads: list[ReadState] = msgspec.field(default_factory=list)
    # The core asks the host for a state-machine snapshot at the applied index
    # (the log passed its entry-count or byte threshold).  The host answers with
    # RaftNode.compact(index, data) after persisting the snapshot.
    want_snapshot: bool = False


class RaftConfig(msgspec.Struct, frozen=True):
    """Every bound of the Raft core.  Units are ticks, entries or bytes."""

    election_timeout_ticks: int = 10  # randomized in [t, 2t)
    heartbeat_interval_ticks: int = 2
    max_entries_per_message: int = 512
    max_bytes_per_message: int = 1 << 20
    max_inflight_messages: int = 64  # per follower
    snapshot_chunk_bytes: int = 256 << 10
    compact_after_entries: int = 10_000
    compact_after_bytes: int = 64 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    lease_reads: bool = False
    # Leader-lease reads are served only while the lease, shortened by this
    # bound on clock drift between nodes, has not run out.
    lease_drift_ticks: int = 2
    max_pending_proposals: int = 10_000
    max_pending_reads: int = 10_000
    # ReadIndex confirmation rounds in flight at once: a read waits for the next
    # round to start, and with several in flight it need not wait for the one
    # before it to come back first.
    max_read_rounds_in_flight: int = 4
    # Tell followers of a commit advance at once (an empty append) instead of on
    # the next append, heartbeat or tick.
    eager_commit_broadcast: bool = False

    def problems(self) -> list[RaftConfigProblem]:
        """Every rule these bounds break; the one statement of the rules.

        ``RaftNode`` refuses a configuration with any; the server reports them
        at load, under its own option names.
        """
        out: list[RaftConfigProblem] = []
        for name in (
            "election_timeout_ticks",
            "heartbeat_interval_ticks",
            "max_entries_per_message",
            "max_inflight_messages",
            "snapshot_chunk_bytes",
        ):
            if getattr(self, name) < 1:
                out.append(RaftConfigProblem(name, "at_least_1"))
        if 1 <= self.election_timeout_ticks <= self.heartbeat_interval_ticks:
            # Followers must hear a heartbeat before their election timeout runs out.
            out.append(
                RaftConfigProblem("heartbeat_interval_ticks", "below", "election_timeout_ticks")
            )
        return out


class RaftConfigProblem(msgspec.Struct, frozen=True):
    """A broken rule of a RaftConfig: ``field`` must be ``relation`` (``at_least_1``, or
    ``below`` the field ``other``)."""

    field: str
    relation: str
    other: str = ""

    def __str__(self) -> str:
        if self.relation == "below":
            return f"{self.field} must be below {self.other}"
        return f"{self.field} must be at least 1"


class NotLeader(Exception):
    """A proposal or read reached a node that is not the leader."""

    def __init__(self, leader_hint: int) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint


class ProposalDropped(Exception):
    """A proposal could not be accepted (queue full, transfer in progress, change in flight)."""


class InvalidConfChange(ValueError):
    """A membership change that cannot apply to the current membership."""
