"""Raft consensus as a pure state machine (``RaftNode``), after etcd-io/raft's RawNode.

Theory of operation
-------------------
The host feeds the node three kinds of input -- ``tick()`` (logical time),
``step(message)`` (a message from a peer) and requests (``propose``,
``propose_conf_change``, ``read_index``, ``transfer_leadership``) -- then drains the
output with ``ready()``, does the work it describes in the order documented on
``Ready`` (send, persist + fsync, send-after-persist, apply, serve reads) and calls
``advance(ready)``.  The node performs no I/O, reads no clock and draws randomness only
from the injected ``Random``: the same inputs give the same outputs, byte for byte.

Rules (numbered so tests and comments can cite them):

R1  Terms never decrease; a node votes at most once per term; commit never decreases;
    nothing at or below commit is ever truncated (asserted).
R2  Persist before you depend on it: vote grants, append/snapshot acknowledgements and
    vote requests go to ``messages_after_persist``, so no peer sees a promise that a
    crash could take back.  Pre-vote traffic and the leader's appends depend on nothing
    unpersisted (the leader's term was persisted before it could win), so they go to
    ``messages`` and leave at once.
R3  The leader counts its own log toward commit only up to what the host made durable
    (``advance``); it commits by counting only entries of its own term (Raft §5.4.2), so
    every new leader appends a NOOP.
R4  Elections: randomized timeout in ``[t, 2t)`` from the injected rng.  With pre-vote a
    node first asks "would you vote for me at term+1?" without changing any state, and
    only a quorum of yeses lets it bump its term, so a partitioned node never inflates
    terms.  Leader stickiness: a node that heard from a leader within the election
    timeout ignores (pre-)vote requests unless the campaign is a transfer (TimeoutNow).
R5  Check-quorum: every election timeout the leader checks that a quorum of voters was
    heard from since the last check, else it steps down.
R6  Replication: per follower a Progress (see progress.py): probe one message at a time,
    replicate with at most ``max_inflight_messages`` unacknowledged appends, snapshot when
    the needed entries are compacted.  Rejects carry a hint (index, term) for fast
    backup: the leader skips a whole conflicting term per round trip.  Proposals made
    between two ``ready()`` calls leave in one message per follower (batching).  A
    commit advance rides on the next append (or heartbeat); if none left by the next
    tick, an empty append carries it then (``eager_commit_broadcast`` sends one at
    once): followers apply while the leader waits on the next batch's fsync, not while
    it answers the clients of this one.  Data (entries, a snapshot chunk) goes to a
    follower only while it answers: once some went out unanswered, a heartbeat
    re-probes with an empty append (at ``next``, or at the snapshot index when that is
    compacted) and asks where a snapshot stands with an empty chunk, and the data
    follows the answer.  So at most ``max_inflight_messages`` data messages are ever
    unanswered, and a follower cut off for a minute is owed heartbeats on its return,
    not a full probe per heartbeat of the cut (which a transport queue would deliver).
R7  Reads (ReadIndex): every AppendEntries carries the leader's current confirmation
    round (``read_ctx``, the core's own counter) and followers echo it; a heartbeat
    broadcast starts a new round.  A read is registered with the commit index (once the
    leader has committed an entry of its term) and released as a ``ReadState`` once a
    quorum of voters answered a round that started after the read.  Reads asked between
    two Readies share the next round; up to ``max_read_rounds_in_flight`` rounds travel at
    once (each batch of reads starts its own), beyond that reads wait to share the round
    started when one comes back.  With ``lease_reads`` and check-quorum the
    leader answers at once while a quorum answered rounds *started* within
    ``election_timeout - lease_drift_ticks`` ticks: each such follower reset its election
    timer on receiving the round, later, and refuses votes for an election timeout (R4);
    a (re)started node refuses votes for its first election timeout too; never during a
    transfer.  Reads pending when the node stops leading are dropped: the host fails any
    read whose ReadState has not arrived when the term or the leader changes.
R8  Membership: one change at a time (at most one uncommitted CONFIG entry, and none
    before the leader committed an entry of its term); a change takes effect when its
    entry is appended, and is rolled back if that entry is truncated.  Learners never
    count toward quorum; votes are counted among the voters of the latest config only.
    A leader that removed itself steps down once the removal commits, after announcing
    the commit and sending TimeoutNow to an up-to-date voter.  A node whose removal is
    appended but not committed still campaigns (it may hold the newest entries) and,
    if it wins, leads just until its removal commits, so a node holding its removal
    uncommitted still answers its vote requests.  Other vote requests from outside the
    membership are ignored (a removed node cannot disrupt the cluster), except by a
    node that knows no membership yet; responses from nodes the leader does not track
    are ignored.
R9  Snapshots: the host produces them (``Ready.want_snapshot`` -> ``compact``); the
    leader streams its latest snapshot in ``snapshot_chunk_bytes`` chunks, one chunk in
    flight, resuming at the follower's ``next_offset``; the follower hands the whole
    snapshot to the host in ``Ready.snapshot`` and acknowledges it after persistence.
R10 Leadership transfer: the leader refuses proposals, catches the target up, sends
    TimeoutNow (after which it serves no lease reads this term) and gives up after an
    election timeout.

R11 Events: the rare transitions an operator reads in the log -- elections started, won
    and lost (with the votes), step-downs with their reason, a new leader seen by a
    non-leader, membership changes as their entries are appended, the lease-read mode
    lost and regained -- are recorded as ``RaftEvent`` structs; the host drains them
    with ``take_events()`` and logs and counts them.  The core only appends to a list,
    only on those transitions (never per message or per entry), and logs nothing.

R12 Readies in flight: the host may take the next ``ready()`` before it advanced the ones
    before it (etcd-raft's asynchronous storage writes).  Each Ready has a persist half
    (``hard_state``, ``snapshot``, ``entries``, then ``messages_after_persist``), reported
    with ``advance_persisted``, and an apply half (``committed``, ``reads``,
    ``want_snapshot``), reported with ``advance_applied``; ``advance`` does both.  The
    host must (a) complete the persist halves in the order the Readies were handed out,
    each durable before the next is reported (the log on disk is then always a prefix
    of what was handed, and a later Ready's rewrite of a suffix lands after the earlier
    write); (b) send a Ready's ``messages_after_persist`` only once its own persist half
    and every earlier one are durable (an acknowledgement names the sender's last index,
    which an earlier Ready may still be writing); (c) apply the apply halves in order,
    a committed entry only once it is durable locally (``durable_index`` reached it) and
    an installed snapshot only once its Ready's persist half is durable -- so a node never
    applies, compacts into a snapshot, or serves a read from, an entry a crash could take
    back from its own disk.  A leader's committed entries are always durable locally
    (R3), so its apply halves never wait on a later Ready's fsync; a follower may learn a
    commit index beyond its durable log and waits for its own fsync.

Bootstrap: a brand-new cluster's nodes get ``initial_membership``; a node started with it
and with nothing persisted writes the membership into its log as committed CONFIG entries
of term 1 (every bootstrapping node writes the same ones), so a restart needs only what
was persisted.  CONFIG entries carry a msgpack-encoded ``ConfChange``
(``encode_conf_change``).
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random

import msgspec

from catenary.core.raft.log import RaftLog
from catenary.core.raft.progress import PROBE, REPLICATE, SNAPSHOT, Progress
from catenary.core.raft.types import (
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    EventKind,
    HardState,
    InstallSnapshot,
    InstallSnapshotResponse,
    InvalidConfChange,
    Membership,
    Message,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RaftEvent,
    ReadState,
    Ready,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)

LEADER = "leader"
FOLLOWER = "follower"
CANDIDATE = "candidate"
PRE_CANDIDATE = "pre-candidate"

_INF = 1 << 62

# Events kept for a host that does not drain them (a test harness); beyond it the
# oldest are dropped.
EVENTS_MAX = 1024

_CHANGE_NAMES = {
    ConfChangeKind.ADD_LEARNER: "add-learner",
    ConfChangeKind.PROMOTE: "promote",
    ConfChangeKind.REMOVE: "remove",
}

_conf_encoder = msgspec.msgpack.Encoder()
_conf_decoder = msgspec.msgpack.Decoder(ConfChange)


def encode_conf_change(cc: ConfChange) -> bytes:
    return _conf_encoder.encode(cc)


def decode_conf_change(data: bytes) -> ConfChange:
    try:
        return _conf_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"corrupt CONFIG entry: {exc}") from exc


def apply_conf_change(m: Membership, cc: ConfChange) -> Membership:
    """The membership after ``cc``; a change that does not apply leaves it unchanged."""
    voters, learners = set(m.voters), set(m.learners)
    if cc.kind == ConfChangeKind.ADD_LEARNER:
        if cc.node not in voters:
            learners.add(cc.node)
    elif cc.kind == ConfChangeKind.PROMOTE:
        if cc.node in learners:
            learners.discard(cc.node)
            voters.add(cc.node)
    elif cc.kind == ConfChangeKind.REMOVE:
        voters.discard(cc.node)
        learners.discard(cc.node)
    return Membership(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))


def _voters(count: int) -> str:
    return f"{count} voter" if count == 1 else f"{count} voters"


def _well_formed(msg: Message) -> bool:
    """Structural checks on a peer's message, before any of it is trusted."""
    if msg.src <= 0 or msg.term < 0:
        return False
    if isinstance(msg, AppendEntries):
        if msg.prev_index < 0 or msg.prev_term < 0 or msg.commit < 0:
            return False
        prev_term = msg.prev_term
        for k, e in enumerate(msg.entries):
            if e.index != msg.prev_index + 1 + k or not prev_term <= e.term <= msg.term:
                return False
            if e.kind not in _KINDS:
                return False
            if e.kind == EntryKind.CONFIG:
                try:
                    decode_conf_change(e.data)
                except ValueError:
                    return False
            prev_term = e.term
        return True
    if isinstance(msg, AppendEntriesResponse):
        return min(msg.match_index, msg.hint_index, msg.hint_term) >= 0
    if isinstance(msg, InstallSnapshot):
        meta = msg.meta
        return msg.offset >= 0 and meta.index >= 0 and 0 <= meta.term <= msg.term
    if isinstance(msg, InstallSnapshotResponse):
        return msg.index >= 0 and msg.next_offset >= 0
    if isinstance(msg, RequestVote):
        return msg.last_log_index >= 0 and msg.last_log_term >= 0
    return True


_KINDS = frozenset(int(k) for k in EntryKind)


class PeerStatus(msgspec.Struct, frozen=True):
    match: int
    next: int
    state: str  # "probe" | "replicate" | "snapshot"
    learner: bool
    recent_active: bool
    unanswered: int = 0  # data messages sent since its last answer (R6)


class RaftStatus(msgspec.Struct, frozen=True):
    node_id: int
    role: str
    term: int
    leader: int
    commit: int
    applied: int
    last_index: int
    membership: Membership
    # Leader only: every other member (voters and learners), by id.
    peers: dict[int, PeerStatus] = msgspec.field(default_factory=dict)
    transfer_target: int = 0
    invalid_messages: int = 0  # malformed peer messages dropped


class _PendingRead:
    __slots__ = ("confirmed", "ctx", "index", "need_round")

    def __init__(self, ctx: int, index: int | None, need_round: int) -> None:
        self.ctx = ctx
        self.index = index
        self.need_round = need_round
        self.confirmed = False


class _IncomingSnapshot:
    __slots__ = ("buf", "meta")

    def __init__(self, meta: SnapshotMeta) -> None:
        self.meta = meta
        self.buf = bytearray()


class RaftNode:
    def __init__(
        self,
        node_id: int,
        config: RaftConfig,
        rng: Random,
        *,
        hard_state: HardState = HardState(),  # noqa: B008 - frozen struct
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
        initial_membership: Membership | None = None,
    ) -> None:
        if node_id <= 0:
            raise ValueError("node_id must be positive")
        problems = config.problems()
        if problems:
            raise ValueError("; ".join(str(problem) for problem in problems))
        self._id = node_id
        self._cfg = config
        self._rng = rng

        snap_index = snapshot.meta.index if snapshot else 0
        snap_term = snapshot.meta.term if snapshot else 0
        self._log = RaftLog(snap_index, snap_term, entries)
        self._snapshot: Snapshot | None = snapshot
        self._unstable_snapshot: Snapshot | None = None
        # R12: a received snapshot not yet durable, and the durable index before it.
        self._snapshot_unpersisted = 0
        self._durable_before_snapshot = 0
        self._incoming: _IncomingSnapshot | None = None

        self._term = hard_state.term
        self._vote = hard_state.vote
        # Commit need not be durable: clamp what was saved to what the log can show.
        self._commit = max(snap_index, min(hard_state.commit, self._log.last_index))
        self._applied = snap_index
        self._applying = snap_index  # highest committed index handed to the host
        self._applied_bytes = 0  # payload bytes of (snap_index, applied]
        # Applied index when the host was last asked for a snapshot (None: not asked).
        self._snapshot_requested_at: int | None = None

        # Membership: the one at the snapshot, then one per CONFIG entry in the log.
        self._base_membership = snapshot.meta.membership if snapshot else Membership()
        self._configs: list[tuple[int, Membership]] = []
        # An empty log (no snapshot, no entries) means the bootstrap entries never became
        # durable (a crash may have kept only the hard state): write them (again).
        bootstrap = initial_membership is not None and snapshot is None and not entries
        for e in self._log.slice(snap_index + 1, self._log.last_index + 1):
            if e.kind == EntryKind.CONFIG:
                self._record_config(e)

        self._role = FOLLOWER
        self._leader = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._ticks = 0
        self._randomized_timeout = 0
        self._reset_randomized_timeout()
        # With lease reads on, a (re)started node refuses votes for one election timeout,
        # as if it had just heard from a leader: its memory of that leader was lost.
        self._start_sticky = config.lease_reads

        self._votes: dict[int, bool] = {}
        self._progress: dict[int, Progress] = {}
        self._pending_conf_index = 0
        self._transfer_target = 0
        self._transfer_elapsed = 0
        self._lease_disabled = False
        self._bcast_append = False
        self._bcast_heartbeat = False
        self._commit_unsent = False  # the commit advanced; no append carried it yet

        self._pending_reads: list[_PendingRead] = []
        self._reads_ready: list[ReadState] = []
        # Confirmation rounds (R7): every AppendEntries carries the leader's current round
        # in ``read_ctx``; followers echo it.  A heartbeat broadcast starts a new round.
        self._round = 0
        self._round_confirmed = 0  # highest round a quorum of voters answered
        self._round_tick: dict[int, int] = {}  # round -> leader tick it started (leases)

        self._msgs: list[Message] = []
        self._msgs_after: list[Message] = []
        # R11: transitions for the host to log; appended to only on rare transitions.
        self.events: list[RaftEvent] = []
        self._leader_seen = (0, 0)  # (leader, term) last reported by LEADER_CHANGED
        self._lease_held = False  # the lease-read mode last reported (leader only)
        self.invalid_messages = 0  # malformed messages dropped by step()

        # The last hard state handed to the host (what it holds durably, or soon will).
        self._prev_hs = hard_state
        if bootstrap:
            assert initial_membership is not None
            self._bootstrap(initial_membership)

    def _bootstrap(self, m: Membership) -> None:
        changes: list[ConfChange] = []
        for v in sorted(m.voters):
            changes.append(ConfChange(ConfChangeKind.ADD_LEARNER, v))
            changes.append(ConfChange(ConfChangeKind.PROMOTE, v))
        for lrn in sorted(m.learners):
            changes.append(ConfChange(ConfChangeKind.ADD_LEARNER, lrn))
        entries = [
            Entry(1, k + 1, EntryKind.CONFIG, encode_conf_change(cc))
            for k, cc in enumerate(changes)
        ]
        self._log.append(entries)
        self._log.handed_index = 0
        self._log.stable_index = 0
        for e in entries:
            self._record_config(e)
        self._term = max(self._term, 1)
        self._commit = len(entries)

    # ------------------------------------------------------------ properties

    @property
    def node_id(self) -> int:
        return self._id

    @property
    def config(self) -> RaftConfig:
        return self._cfg

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader(self) -> int:
        return self._leader

    @property
    def role(self) -> str:
        return self._role

    @property
    def membership(self) -> Membership:
        return self._configs[-1][1] if self._configs else self._base_membership

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def vote(self) -> int:
        return self._vote

    @property
    def snapshot_index(self) -> int:
        return self._log.snap_index

    @property
    def latest_snapshot(self) -> Snapshot | None:
        """The newest snapshot (from ``compact`` or installed from the leader)."""
        return self._snapshot

    def unanswered(self) -> dict[int, int]:
        """Leader only: per follower, the data messages (appends carrying entries,
        snapshot chunks) sent since it last answered -- at most
        ``max_inflight_messages`` (R6); a checker reads it."""
        return {pid: pr.unanswered for pid, pr in self._progress.items()}

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries ``[lo, hi)`` still held in memory (for tests and inspection)."""
        return self._log.slice(max(lo, self._log.snap_index + 1), hi)

    def status(self) -> RaftStatus:
        peers: dict[int, PeerStatus] = {}
        if self._role == LEADER:
            for pid in sorted(self._progress):
                pr = self._progress[pid]
                peers[pid] = PeerStatus(
                    pr.match, pr.next, pr.state, pr.learner, pr.recent_active, pr.unanswered
                )
        return RaftStatus(
            node_id=self._id,
            role=self._role,
            term=self._term,
            leader=self._leader,
            commit=self._commit,
            applied=self._applied,
            last_index=self._log.last_index,
            membership=self.membership,
            peers=peers,
            transfer_target=self._transfer_target,
            invalid_messages=self.invalid_messages,
        )

    # ---------------------------------------------------------------- inputs

    def tick(self) -> None:
        self._ticks += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._cfg.election_timeout_ticks:
            self._start_sticky = False
        if self._role == LEADER:
            self._tick_leader()
            return
        if self._promotable() and self._election_elapsed >= self._randomized_timeout:
            self.campaign()

    def _tick_leader(self) -> None:
        cfg = self._cfg
        if self._transfer_target:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= cfg.election_timeout_ticks:
                self._transfer_target = 0  # R10: give up; proposals flow again
        if self._election_elapsed >= cfg.election_timeout_ticks:
            self._election_elapsed = 0
            if cfg.check_quorum:
                if not self._quorum_active():
                    self._become_follower(self._term, 0, reason="check-quorum")  # R5
                    return
                for pr in self._progress.values():
                    pr.recent_active = False
        # Rounds older than an election timeout can no longer back a lease.
        cutoff = self._ticks - cfg.election_timeout_ticks
        for r in list(self._round_tick):
            if self._round_tick[r] >= cutoff:
                break
            del self._round_tick[r]
        if cfg.lease_reads:
            self._observe_lease()
        if self._commit_unsent:
            self._bcast_append = True  # R6: followers learn the commit within a tick
        self._heartbeat_elapsed += 1
        if self._heartbeat_elapsed >= cfg.heartbeat_interval_ticks:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat = True

    def campaign(self, *, transfer: bool = False) -> None:
        """Start an election now (as if the election timeout fired)."""
        if not self._promotable() or self._role == LEADER:
            return
        if self._role in (PRE_CANDIDATE, CANDIDATE):
            # The last campaign neither won nor lost before its timeout ran out.
            self._event(
                EventKind.ELECTION_LOST,
                self._id,
                "timeout",
                f"{'pre-vote' if self._role == PRE_CANDIDATE else 'election'}: "
                + self._votes_text(),
            )
        if self._cfg.pre_vote and not transfer:
            self._become_pre_candidate()
        else:
            self._become_candidate(transfer)

    def propose(self, data: bytes) -> int:
        return self.propose_batch((data,))

    def propose_batch(self, datas: Sequence[bytes]) -> int:
        if not datas:
            raise ValueError("propose_batch needs at least one proposal")
        self._check_can_propose(len(datas))
        first = self._log.last_index + 1
        self._append_own(
            [Entry(self._term, first + k, EntryKind.NORMAL, bytes(d)) for k, d in enumerate(datas)]
        )
        return first

    def propose_conf_change(self, cc: ConfChange) -> int:
        self._check_can_propose(1)
        if self._pending_conf_index > self._commit:
            raise ProposalDropped("a membership change is already in flight")
        if not self._committed_in_term():
            raise ProposalDropped("the leader has not committed an entry of its term yet")
        m = self.membership
        members = set(m.voters) | set(m.learners)
        if cc.node <= 0:
            raise InvalidConfChange(f"bad node id {cc.node}")
        if cc.kind == ConfChangeKind.ADD_LEARNER:
            if cc.node in members:
                raise InvalidConfChange(f"node {cc.node} is already a member")
        elif cc.kind == ConfChangeKind.PROMOTE:
            if cc.node not in m.learners:
                raise InvalidConfChange(f"node {cc.node} is not a learner")
        elif cc.kind == ConfChangeKind.REMOVE:
            if cc.node not in members:
                raise InvalidConfChange(f"node {cc.node} is not a member")
            if m.voters == (cc.node,):
                raise InvalidConfChange("cannot remove the last voter")
        else:
            raise InvalidConfChange(f"unknown change kind {cc.kind}")
        index = self._log.last_index + 1
        self._append_own([Entry(self._term, index, EntryKind.CONFIG, encode_conf_change(cc))])
        return index

    def read_index(self, ctx: int) -> None:
        if self._role != LEADER:
            raise NotLeader(self._leader)
        if len(self._pending_reads) >= self._cfg.max_pending_reads:
            raise ProposalDropped("too many pending reads")
        if self._committed_in_term() and self._lease_valid():
            self._reads_ready.append(ReadState(ctx, self._commit))
            return
        # Only a round that starts after this read can confirm it.
        self._pending_reads.append(
            _PendingRead(ctx, self._commit if self._committed_in_term() else None, self._round + 1)
        )
        if self._round - self._round_confirmed < self._cfg.max_read_rounds_in_flight:
            self._bcast_heartbeat = True  # room for one more round: start it now
        if self._quorum() == 1:
            # A lone voter confirms at once.  Otherwise only an acknowledgement of a
            # round started after this read confirms it, and acknowledgements and
            # commits run the check themselves: a scan here (per read, over every
            # pending read) would find nothing new.
            self._check_reads()

    def transfer_leadership(self, target: int) -> None:
        if self._role != LEADER:
            raise NotLeader(self._leader)
        if target == self._id:
            return
        if target not in self.membership.voters:
            raise ValueError(f"transfer target {target} is not a voter")
        if self._transfer_target == target:
            return
        self._transfer_target = target
        self._transfer_elapsed = 0
        pr = self._progress[target]
        if pr.match == self._log.last_index:
            self._send_timeout_now(target)
        else:
            if pr.state == PROBE and not pr.unanswered:
                pr.probe_sent = False  # do not wait for a heartbeat to catch it up
            self._fill_pipeline(target)

    def compact(self, index: int, data: bytes) -> None:
        """The host persisted a state-machine snapshot at ``index`` (<= applied)."""
        if index > self._applying:
            raise ValueError(f"cannot compact to {index}: only {self._applying} handed to apply")
        self._snapshot_requested_at = None
        if index <= self._log.snap_index:
            return
        term = self._log.term_at(index)
        assert term is not None
        m = self._membership_at(index)
        dropped_bytes = self._log.bytes_between(self._log.snap_index + 1, index + 1)
        self._applied_bytes = max(0, self._applied_bytes - dropped_bytes)
        self._log.compact_to(index)
        self._base_membership = m
        self._configs = [(i, cm) for i, cm in self._configs if i > index]
        self._snapshot = Snapshot(SnapshotMeta(index, term, m), bytes(data))
        # Followers receiving an older snapshot restart with this one.
        for pid in sorted(self._progress):
            pr = self._progress[pid]
            if pr.state == SNAPSHOT and pr.snap_index != index:
                pr.become_snapshot(index)
                if pr.unanswered:
                    pr.snap_chunk_unacked = True  # R6: ask first, the chunk follows
                    self._send_snapshot_query(pid)
                else:
                    self._send_snapshot_chunk(pid)

    # ---------------------------------------------------------------- output

    def has_ready(self) -> bool:
        if self._bcast_append or self._bcast_heartbeat:
            return True
        return bool(
            self._msgs
            or self._msgs_after
            or self._reads_ready
            or self._unstable_snapshot is not None
            or self._log.handed_index < self._log.last_index
            or self._hard_state_changed()
            or self._commit > self._applying
            or self._wants_snapshot()
        )

    def has_unpersisted(self) -> bool:
        """The next Ready would carry something to persist (entries, a snapshot, a
        term or vote change): a host at its bound of Readies in flight waits (R12)."""
        p = self._prev_hs
        return (
            self._unstable_snapshot is not None
            or self._log.handed_index < self._log.last_index
            or (self._term, self._vote) != (p.term, p.vote)
        )

    def _hard_state_changed(self) -> bool:
        p = self._prev_hs
        return (self._term, self._vote, self._commit) != (p.term, p.vote, p.commit)

    def ready(self) -> Ready:
        self._flush()
        rd = Ready()
        hs = HardState(self._term, self._vote, self._commit)
        if hs != self._prev_hs:
            rd.hard_state = hs
            self._prev_hs = hs
        if self._unstable_snapshot is not None:
            rd.snapshot = self._unstable_snapshot
            self._unstable_snapshot = None
        rd.entries = self._log.unstable()
        self._log.handed_index = self._log.last_index
        rd.messages, self._msgs = self._msgs, []
        rd.messages_after_persist, self._msgs_after = self._msgs_after, []
        lo = max(self._applying, self._log.snap_index) + 1
        if lo <= self._commit:
            rd.committed = self._log.slice(lo, self._commit + 1)
            self._applying = self._commit
        rd.reads, self._reads_ready = self._reads_ready, []
        if self._wants_snapshot():
            rd.want_snapshot = True
            self._snapshot_requested_at = self._applied
        return rd

    def advance(self, rd: Ready) -> None:
        """The host did all of ``rd``: ``advance_persisted`` then ``advance_applied``."""
        self.advance_persisted(rd)
        self.advance_applied(rd)

    @property
    def durable_index(self) -> int:
        """The last index of the log the host made durable (R12): committed entries
        up to here may be applied.  A snapshot received resets the log at once,
        before the host persisted it: until then what was durable before counts."""
        if self._snapshot_unpersisted:
            return min(self._log.stable_index, self._durable_before_snapshot)
        return self._log.stable_index

    def advance_persisted(self, rd: Ready) -> None:
        """The host made ``rd``'s snapshot, entries and hard state durable (R12)."""
        if rd.snapshot is not None:
            self._log.stable_to(rd.snapshot.meta.index, rd.snapshot.meta.term)
            if rd.snapshot.meta.index == self._snapshot_unpersisted:
                self._snapshot_unpersisted = 0  # the latest received is durable
        if rd.entries:
            last = rd.entries[-1]
            self._log.stable_to(last.index, last.term)
        if self._role == LEADER:
            self._maybe_commit()  # R3: our own entries count once durable

    def advance_applied(self, rd: Ready) -> None:
        """The host applied ``rd``'s snapshot and committed entries (R12)."""
        if rd.snapshot is not None:
            self._applied = max(self._applied, rd.snapshot.meta.index)
        if rd.committed:
            top = rd.committed[-1].index
            if top > self._applied:
                self._applied_bytes += sum(
                    len(e.data) for e in rd.committed if e.index > self._applied
                )
                self._applied = top

    def _wants_snapshot(self) -> bool:
        if self._applied <= self._log.snap_index:
            return False
        asked = self._snapshot_requested_at
        if asked is not None and self._applied - asked <= self._cfg.compact_after_entries:
            return False  # asked already; ask again only if the host let it grow as much
        return (
            self._applied - self._log.snap_index > self._cfg.compact_after_entries
            or self._applied_bytes > self._cfg.compact_after_bytes
        )

    def _flush(self) -> None:
        """Send the appends and heartbeats that inputs since the last Ready asked for."""
        if self._role != LEADER:
            self._bcast_append = self._bcast_heartbeat = False
            return
        if self._bcast_heartbeat:
            self._bcast_heartbeat = False
            self._round += 1
            self._round_tick[self._round] = self._ticks
            for pid in sorted(self._progress):
                self._send_heartbeat(pid)
        if self._bcast_append:
            self._bcast_append = False
            self._commit_unsent = False
            for pid in sorted(self._progress):
                pr = self._progress[pid]
                if pr.next > self._log.last_index and pr.state != SNAPSHOT:
                    # Nothing new to send: an empty append carries the commit index (and,
                    # to a new or probing follower, asks where its log ends).
                    self._send_append(pid, allow_empty=True)
                else:
                    self._fill_pipeline(pid)

    # ------------------------------------------------------------- stepping

    def step(self, msg: Message) -> None:
        if msg.dst != self._id or msg.src == self._id:
            return
        if not _well_formed(msg):
            # A peer's bug or a corrupt frame: never let it reach the state (or raise in
            # the host's loop).  Counted so the host can report it.
            self.invalid_messages += 1
            return
        if msg.term > self._term:
            if isinstance(msg, RequestVote):
                if not msg.transfer and self._in_lease():
                    return  # R4: stickiness; a live leader exists
                if not msg.pre_vote:
                    if not self._may_vote_for(msg.src):
                        return  # R8
                    self._become_follower(msg.term, 0, src=msg.src)
            elif isinstance(msg, RequestVoteResponse) and msg.pre_vote and msg.granted:
                pass  # a grant carries the term we asked for; our own term stays
            elif isinstance(msg, (AppendEntries, InstallSnapshot, TimeoutNow)):
                self._become_follower(msg.term, msg.src, src=msg.src)
            else:
                self._become_follower(msg.term, 0, src=msg.src)
        elif msg.term < self._term:
            if isinstance(msg, (AppendEntries, InstallSnapshot)):
                # A stale leader: tell it our term so it steps down (it may not hear from
                # anyone else, since pre-vote keeps terms from moving elsewhere).
                self._msgs.append(
                    AppendEntriesResponse(self._id, msg.src, self._term, False, 0, read_ctx=0)
                )
            elif isinstance(msg, RequestVote) and msg.pre_vote:
                self._msgs.append(
                    RequestVoteResponse(self._id, msg.src, self._term, False, pre_vote=True)
                )
            return

        if isinstance(msg, RequestVote):
            self._handle_vote_request(msg)
        elif isinstance(msg, RequestVoteResponse):
            self._handle_vote_response(msg)
        elif isinstance(msg, AppendEntries):
            self._heard_from_leader(msg.src)
            self._handle_append(msg)
        elif isinstance(msg, AppendEntriesResponse):
            self._handle_append_response(msg)
        elif isinstance(msg, InstallSnapshot):
            self._heard_from_leader(msg.src)
            self._handle_snapshot(msg)
        elif isinstance(msg, InstallSnapshotResponse):
            self._handle_snapshot_response(msg)
        elif isinstance(msg, TimeoutNow) and self._role != LEADER:
            self._leader = msg.src
            self.campaign(transfer=True)

    def _heard_from_leader(self, src: int) -> None:
        assert self._role != LEADER, f"two leaders in term {self._term}"  # election safety
        if self._role != FOLLOWER or self._leader != src:
            self._become_follower(self._term, src)
        else:
            self._election_elapsed = 0

    # --------------------------------------------------------------- voting

    def _in_lease(self) -> bool:
        if self._role == LEADER:
            return self._cfg.check_quorum
        if self._start_sticky:
            return True
        return (
            self._cfg.check_quorum
            and self._leader != 0
            and self._election_elapsed < self._cfg.election_timeout_ticks
        )

    def _may_vote_for(self, src: int) -> bool:
        """R8: nodes outside the membership (removed ones) get no say.  Learners are
        heard: our config may lag a promotion the rest of the cluster already holds.  A
        node whose removal we hold but have not committed is heard too: it still
        campaigns (``_promotable``) and may be the only one that can win.  A node that
        knows no membership yet (it joined and was promoted before anything reached it)
        cannot tell, and votes by the log rule alone: refusing would leave it a voter
        that blocks every election."""
        m = self.membership
        if src in m.voters or src in m.learners or not (m.voters or m.learners):
            return True
        return src in self._membership_at(self._commit).voters

    def _handle_vote_request(self, m: RequestVote) -> None:
        if not self._may_vote_for(m.src):
            return
        if m.pre_vote:
            can_vote = m.term > self._term
        else:
            can_vote = self._vote == m.src or (self._vote == 0 and self._leader == 0)
        grant = can_vote and self._log.is_up_to_date(m.last_log_index, m.last_log_term)
        if m.pre_vote:
            term = m.term if grant else self._term
            self._msgs.append(RequestVoteResponse(self._id, m.src, term, grant, pre_vote=True))
            return
        if grant:
            self._vote = m.src
            self._election_elapsed = 0
        # R2: the grant must survive a crash before the candidate may count it.
        self._msgs_after.append(RequestVoteResponse(self._id, m.src, self._term, grant))

    def _handle_vote_response(self, m: RequestVoteResponse) -> None:
        if m.src not in self.membership.voters:
            return  # only voters of our latest config count
        if m.pre_vote:
            if self._role != PRE_CANDIDATE or (m.granted and m.term != self._term + 1):
                return
        elif self._role != CANDIDATE:
            return
        self._votes.setdefault(m.src, m.granted)
        self._tally()

    def _tally(self) -> None:
        """Count the votes of our latest config's voters (ourselves only if one)."""
        voters = self.membership.voters
        granted = sum(1 for v, g in self._votes.items() if g and v in voters)
        rejected = sum(1 for v, g in self._votes.items() if not g and v in voters)
        q = self._quorum()
        if granted >= q:
            phase = "pre-vote" if self._role == PRE_CANDIDATE else "election"
            self._event(EventKind.ELECTION_WON, self._id, phase, self._votes_text())
            if self._role == PRE_CANDIDATE:
                self._become_candidate(False)
            else:
                self._become_leader()
        elif rejected >= q:
            self._become_follower(self._term, 0, reason="rejected")

    def _become_pre_candidate(self) -> None:
        self._leave_leadership()
        self._role = PRE_CANDIDATE
        self._leader = 0
        self._votes = {self._id: True}
        self._event(
            EventKind.ELECTION_STARTED,
            self._id,
            "pre-vote",
            f"asking {_voters(len(self.membership.voters))} whether they would vote "
            f"in term {self._term + 1}",
        )
        self._reset_election()
        self._reset_leader_state()
        self._tally()  # a lone voter wins at once
        if self._role != PRE_CANDIDATE:
            return
        for v in self.membership.voters:
            if v != self._id:
                self._msgs.append(
                    RequestVote(
                        self._id,
                        v,
                        self._term + 1,
                        self._log.last_index,
                        self._log.last_term,
                        pre_vote=True,
                    )
                )

    def _become_candidate(self, transfer: bool) -> None:
        self._leave_leadership()
        self._term += 1
        self._vote = self._id
        self._role = CANDIDATE
        self._leader = 0
        self._votes = {self._id: True}
        self._event(
            EventKind.ELECTION_STARTED,
            self._id,
            "transfer" if transfer else "election",
            f"asking {_voters(len(self.membership.voters))} for their vote"
            + (" (leadership handed over)" if transfer else ""),
        )
        self._reset_election()
        self._reset_leader_state()
        self._tally()
        if self._role != CANDIDATE:
            return
        for v in self.membership.voters:
            if v != self._id:
                # R2: the candidate's own term and vote are durable before anyone is asked.
                self._msgs_after.append(
                    RequestVote(
                        self._id,
                        v,
                        self._term,
                        self._log.last_index,
                        self._log.last_term,
                        transfer=transfer,
                    )
                )

    def _become_follower(
        self, term: int, leader: int, *, reason: str = "higher-term", src: int = 0
    ) -> None:
        """``reason`` (R11): why a leader steps down or a campaign ends -- ``higher-term``
        (seen from ``src``), ``check-quorum``, ``removed``, ``rejected``; a leader whose
        transfer target outran it reports ``transfer``."""
        assert term >= self._term, (term, self._term)  # R1
        was = self._role
        old_term = self._term
        if was == LEADER:
            if reason == "higher-term" and src and src == self._transfer_target:
                reason = "transfer"
            detail = f"term {old_term} -> {term}" if term > old_term else ""
            if reason in ("higher-term", "transfer") and src:
                detail = f"n{src} is in term {term} (was {old_term})"
            elif reason == "check-quorum":
                detail = "heard from fewer than a quorum of voters in an election timeout"
            elif reason == "removed":
                detail = "this node's removal from the voters committed"
            self._leave_leadership()
            self._event(EventKind.STEP_DOWN, src or self._id, reason, detail)
        elif was in (PRE_CANDIDATE, CANDIDATE):
            lost = "leader" if leader else reason
            text = self._votes_text()
            if leader:
                text = f"n{leader} leads term {term}; " + text
            elif src:
                text = f"n{src} is in term {term}; " + text
            self._event(
                EventKind.ELECTION_LOST,
                self._id,
                lost,
                f"{'pre-vote' if was == PRE_CANDIDATE else 'election'}: {text}",
            )
        if term > self._term:
            self._term = term
            self._vote = 0
        self._role = FOLLOWER
        self._leader = leader
        if leader != 0 and leader != self._id and (leader, term) != self._leader_seen:
            self._leader_seen = (leader, term)
            self._event(EventKind.LEADER_CHANGED, leader, "", f"leader n{leader} in term {term}")
        if leader != 0 or was != FOLLOWER:
            self._reset_election()
        self._reset_leader_state()

    def _leave_leadership(self) -> None:
        """R11: a leader that held the lease-read mode reports it gone."""
        if self._lease_held:
            self._lease_held = False
            self._event(EventKind.LEASE_LOST, self._id, "not-leader", "no longer the leader")

    def _become_leader(self) -> None:
        assert self._role == CANDIDATE
        self._role = LEADER
        self._leader = self._id
        self._leader_seen = (self._id, self._term)
        self._lease_held = False
        self._reset_election()
        self._reset_leader_state()
        last = self._log.last_index
        m = self.membership
        for pid in sorted(set(m.voters) | set(m.learners)):
            if pid != self._id:
                self._progress[pid] = Progress(last + 1, pid in m.learners)
        # Any uncommitted CONFIG entry from an earlier term blocks new changes (R8).
        self._pending_conf_index = self._configs[-1][0] if self._configs else 0
        self._append_own([Entry(self._term, last + 1, EntryKind.NOOP, b"")])

    def _reset_election(self) -> None:
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_randomized_timeout()

    def _reset_randomized_timeout(self) -> None:
        t = self._cfg.election_timeout_ticks
        self._randomized_timeout = t + self._rng.randrange(t)

    def _reset_leader_state(self) -> None:
        self._progress = {}
        self._transfer_target = 0
        self._transfer_elapsed = 0
        self._lease_disabled = False
        self._bcast_append = False
        self._bcast_heartbeat = False
        self._commit_unsent = False
        self._pending_reads = []
        self._round = 0
        self._round_confirmed = 0
        self._round_tick = {}

    def _promotable(self) -> bool:
        """Voters campaign -- also one whose removal is appended but not committed: it
        may hold the only copy of the newest entries, and must be able to lead long
        enough to commit its own removal (then it steps down, R8)."""
        if self._id in self.membership.voters:
            return True
        return self._id in self._membership_at(self._commit).voters

    def _quorum(self) -> int:
        return len(self.membership.voters) // 2 + 1

    def _quorum_active(self) -> bool:
        voters = self.membership.voters
        active = sum(
            1
            for v in voters
            if v == self._id or (v in self._progress and self._progress[v].recent_active)
        )
        return active >= self._quorum()

    # ----------------------------------------------------------- replication

    def _check_can_propose(self, count: int) -> None:
        if self._role != LEADER:
            raise NotLeader(self._leader)
        if self._transfer_target:
            raise ProposalDropped("leadership transfer in progress")
        if self._log.last_index - self._commit + count > self._cfg.max_pending_proposals:
            raise ProposalDropped("too many uncommitted proposals")

    def _append_own(self, entries: list[Entry]) -> None:
        """The leader appends to its own log; followers get it at the next flush."""
        self._log.append(entries)
        changed = False
        for e in entries:
            if e.kind == EntryKind.CONFIG:
                self._record_config(e, emit=True)
                self._pending_conf_index = e.index
                changed = True
        if changed:
            self._sync_progress()
        self._bcast_append = True
        self._maybe_commit()

    def _record_config(self, e: Entry, *, emit: bool = False) -> None:
        cc = decode_conf_change(e.data)
        m = apply_conf_change(self.membership, cc)
        self._configs.append((e.index, m))
        if emit:
            self._event(
                EventKind.MEMBERSHIP,
                cc.node,
                _CHANGE_NAMES.get(ConfChangeKind(cc.kind), str(cc.kind)),
                f"at index {e.index}; voters {list(m.voters)}, learners {list(m.learners)}",
            )

    # ---------------------------------------------------------------- events

    def _event(self, kind: str, node: int, reason: str = "", detail: str = "") -> None:
        events = self.events
        if len(events) >= EVENTS_MAX:
            del events[0]
        events.append(RaftEvent(kind, self._term, node, reason, detail))

    def take_events(self) -> list[RaftEvent]:
        """The events since the last call (R11), oldest first."""
        events, self.events = self.events, []
        return events

    def _votes_text(self) -> str:
        voters = self.membership.voters
        granted = sorted(v for v, g in self._votes.items() if g and v in voters)
        rejected = sorted(v for v, g in self._votes.items() if not g and v in voters)
        return (
            f"{len(granted)} of {len(voters)} votes granted "
            f"(granted by {granted}, rejected by {rejected}, quorum {self._quorum()})"
        )

    def _membership_at(self, index: int) -> Membership:
        m = self._base_membership
        for i, cm in self._configs:
            if i > index:
                break
            m = cm
        return m

    def _sync_progress(self) -> None:
        """Track exactly the current members (R8: effective on append)."""
        if self._role != LEADER:
            return
        m = self.membership
        members = (set(m.voters) | set(m.learners)) - {self._id}
        for pid in sorted(set(self._progress) - members):
            del self._progress[pid]
            if self._transfer_target == pid:
                self._transfer_target = 0
        for pid in sorted(members):
            pr = self._progress.get(pid)
            if pr is None:
                pr = self._progress[pid] = Progress(self._log.last_index + 1, False)
                self._bcast_append = True
            pr.learner = pid in m.learners

    def _maybe_commit(self) -> None:
        assert self._role == LEADER
        voters = self.membership.voters
        if not voters:
            return
        matches = sorted(
            (self._log.stable_index if v == self._id else self._progress[v].match for v in voters),
            reverse=True,
        )
        candidate = matches[self._quorum() - 1]
        # R3: only entries of the current term are committed by counting.
        if candidate > self._commit and self._log.term_at(candidate) == self._term:
            self._commit_to(candidate)
            if self._cfg.eager_commit_broadcast:
                self._bcast_append = True
            else:
                self._commit_unsent = True

    def _commit_to(self, index: int) -> None:
        if index <= self._commit:
            return
        assert index <= self._log.last_index, (index, self._log.last_index)
        self._commit = index
        if self._role != LEADER:
            return
        if self._committed_in_term():
            for r in self._pending_reads:
                if r.index is None:
                    r.index = self._commit
            self._check_reads()
        m = self.membership
        if self._id not in m.voters and (not self._configs or self._configs[-1][0] <= index):
            self._step_down_removed()

    def _step_down_removed(self) -> None:
        """R8: our removal committed.  Tell the others it did, hand leadership to the
        most up-to-date voter at once (rather than after an election timeout), step down."""
        best = 0
        for pid in sorted(self._progress):
            pr = self._progress[pid]
            prev_term = self._log.term_at(pr.match)
            if prev_term is not None and pr.match > 0:
                self._send(
                    AppendEntries(
                        self._id, pid, self._term, pr.match, prev_term, (), self._commit, 0
                    )
                )
            if not pr.learner and pr.match == self._log.last_index and best == 0:
                best = pid
        if best:
            self._send(TimeoutNow(self._id, best, self._term))
        self._become_follower(self._term, 0, reason="removed")

    def _committed_in_term(self) -> bool:
        return self._log.term_at(self._commit) == self._term

    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)

    def _send_append(self, pid: int, allow_empty: bool = False, data: bool = True) -> None:
        """Send ``pid`` the append its progress calls for; ``data=False`` sends no
        entries and no snapshot (R6: the follower has not answered the last data)."""
        pr = self._progress[pid]
        if pr.paused(self._cfg.max_inflight_messages):
            return
        prev = pr.next - 1
        prev_term = self._log.term_at(prev)
        if prev_term is None:
            # R9: what the follower needs is compacted away.
            assert prev < self._log.snap_index and self._snapshot is not None
            if not data:
                # Ask where its log ends at the snapshot's index (its term is known):
                # the answer lets the snapshot, or the entries after it, follow.
                prev, prev_term = self._log.snap_index, self._log.snap_term
            else:
                pr.become_snapshot(self._snapshot.meta.index)
                self._send_snapshot_chunk(pid)
                return
        entries: list[Entry] = []
        if data and pr.next <= self._log.last_index:
            entries = self._log.slice_bounded(
                pr.next, self._cfg.max_entries_per_message, self._cfg.max_bytes_per_message
            )
        if not entries and not allow_empty:
            return
        if entries:
            pr.unanswered += 1
            if pr.state == REPLICATE:
                pr.next = entries[-1].index + 1
                pr.inflight.append(entries[-1].index)
            else:
                pr.probe_sent = True
        elif pr.state == PROBE:
            pr.probe_sent = True
        self._send(
            AppendEntries(
                self._id,
                pid,
                self._term,
                prev,
                prev_term,
                tuple(entries),
                self._commit,
                self._round,
            )
        )

    def _send_heartbeat(self, pid: int) -> None:
        pr = self._progress[pid]
        if pr.state == PROBE:
            # R6: entries only if the follower answered the last data sent to it.
            pr.probe_sent = False
            self._send_append(pid, allow_empty=True, data=not pr.unanswered)
            return
        if pr.state == SNAPSHOT:
            # The follower cannot use an append until the snapshot is in.  The chunk
            # in flight, or its answer, may be lost: resend it if the follower answered
            # since it went out, else ask where it stands (R6).
            if pr.snap_chunk_unacked:
                if pr.unanswered:
                    self._send_snapshot_query(pid)
                else:
                    self._send_snapshot_chunk(pid)
            return
        # Replicate: probe at the optimistic point.  If an append was lost the follower
        # rejects and the leader falls back to probing from the match (R6).
        prev = pr.next - 1
        prev_term = self._log.term_at(prev)
        if prev_term is None:
            # Compacted past what it holds: it needs the snapshot.
            pr.become_probe()
            self._send_append(pid, allow_empty=True, data=not pr.unanswered)
            return
        self._send(
            AppendEntries(
                self._id,
                pid,
                self._term,
                prev,
                prev_term,
                (),
                self._commit,
                self._round,
            )
        )

    def _send_snapshot_chunk(self, pid: int) -> None:
        pr = self._progress[pid]
        snap = self._snapshot
        assert snap is not None and snap.meta.index == pr.snap_index
        size = self._cfg.snapshot_chunk_bytes
        chunk = snap.data[pr.snap_offset : pr.snap_offset + size]
        done = pr.snap_offset + len(chunk) >= len(snap.data)
        pr.snap_chunk_unacked = True
        pr.snap_queried = False
        pr.unanswered += 1
        self._send(
            InstallSnapshot(self._id, pid, self._term, snap.meta, pr.snap_offset, chunk, done)
        )

    def _send_snapshot_query(self, pid: int) -> None:
        """An empty chunk at the offset in flight: the follower answers where it stands
        (R6), and the chunk is resent, or the next one sent, on its answer."""
        pr = self._progress[pid]
        snap = self._snapshot
        assert snap is not None and snap.meta.index == pr.snap_index
        pr.snap_queried = True
        self._send(
            InstallSnapshot(self._id, pid, self._term, snap.meta, pr.snap_offset, b"", False)
        )

    def _send_timeout_now(self, pid: int) -> None:
        self._lease_disabled = True  # R10: the target may win without waiting out leases
        self._send(TimeoutNow(self._id, pid, self._term))

    def _handle_append(self, m: AppendEntries) -> None:
        log = self._log
        entries: Sequence[Entry] = m.entries
        prev = m.prev_index
        if prev < self._commit:
            # Our log matches the leader's through commit: skip what we already hold.
            entries = [e for e in entries if e.index > self._commit]
            prev = self._commit
        elif log.term_at(prev) != m.prev_term:
            hint = log.find_conflict_by_term(min(prev, log.last_index), m.prev_term)
            self._msgs_after.append(
                AppendEntriesResponse(
                    self._id,
                    m.src,
                    self._term,
                    False,
                    m.prev_index,
                    hint_index=hint,
                    hint_term=log.term_at(hint) or 0,
                    read_ctx=m.read_ctx,
                )
            )
            return
        for k, e in enumerate(entries):
            assert e.index == prev + 1 + k, "entries in an append must be contiguous"
            if log.term_at(e.index) != e.term:
                assert e.index > self._commit, "a committed entry would be overwritten"  # R1
                if e.index <= log.last_index:
                    self._truncate_from(e.index)
                new = entries[k:]
                log.append(new)
                for ne in new:
                    if ne.kind == EntryKind.CONFIG:
                        self._record_config(ne, emit=True)
                break
        last_new = prev + len(entries)
        self._commit_to(min(m.commit, last_new))
        # R2: the ack promises durability of what it acknowledges.
        self._msgs_after.append(
            AppendEntriesResponse(self._id, m.src, self._term, True, last_new, read_ctx=m.read_ctx)
        )

    def _truncate_from(self, index: int) -> None:
        self._log.truncate_from(index)
        while self._configs and self._configs[-1][0] >= index:
            self._configs.pop()  # R8: a change undone with its entry

    def _handle_append_response(self, m: AppendEntriesResponse) -> None:
        if self._role != LEADER:
            return
        pr = self._progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        pr.unanswered = 0
        if m.read_ctx > pr.ack_round:
            pr.ack_round = m.read_ctx
            self._check_reads()
        if not m.success:
            next_probe = m.hint_index
            if m.hint_term > 0:
                next_probe = self._log.find_conflict_by_term(m.hint_index, m.hint_term)
            if pr.maybe_decr_to(m.match_index, next_probe):
                if pr.state == REPLICATE:
                    pr.become_probe()
                self._send_append(pid=m.src)
            return
        if pr.update(m.match_index):
            if pr.state == PROBE:
                pr.become_replicate()
            elif pr.state == SNAPSHOT and pr.match >= pr.snap_index:
                pr.become_probe()
            self._maybe_commit()
            if self._role != LEADER:
                return
            if m.src == self._transfer_target and pr.match == self._log.last_index:
                self._send_timeout_now(m.src)
        elif pr.state == PROBE and m.match_index == pr.match and pr.next == pr.match + 1:
            # A probe answered at the known match point: the logs match, stream on.
            pr.become_replicate()
        self._fill_pipeline(m.src)

    def _fill_pipeline(self, pid: int) -> None:
        """Send appends to ``pid`` until it is up to date or paused (R6)."""
        pr = self._progress[pid]
        while pr.next <= self._log.last_index and not pr.paused(self._cfg.max_inflight_messages):
            before = pr.next, len(pr.inflight), pr.probe_sent, pr.state
            self._send_append(pid)
            if (pr.next, len(pr.inflight), pr.probe_sent, pr.state) == before:
                break

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        meta = m.meta
        if meta.index <= self._commit:
            # Already have everything it covers; tell the leader where we are.
            self._incoming = None
            self._msgs_after.append(
                InstallSnapshotResponse(self._id, m.src, self._term, meta.index, 0, True)
            )
            return
        inc = self._incoming
        if m.offset == 0:
            inc = self._incoming = _IncomingSnapshot(meta)
        elif inc is None or inc.meta != meta or m.offset != len(inc.buf):
            # Out of order or another snapshot: ask for what we can use.
            want = len(inc.buf) if inc is not None and inc.meta == meta else 0
            self._msgs.append(
                InstallSnapshotResponse(self._id, m.src, self._term, meta.index, want, False)
            )
            return
        inc.buf += m.chunk
        if not m.done:
            self._msgs.append(
                InstallSnapshotResponse(
                    self._id, m.src, self._term, meta.index, len(inc.buf), False
                )
            )
            return
        self._incoming = None
        self._install_snapshot(Snapshot(meta, bytes(inc.buf)))
        self._msgs_after.append(
            InstallSnapshotResponse(self._id, m.src, self._term, meta.index, len(inc.buf), True)
        )

    def _install_snapshot(self, snap: Snapshot) -> None:
        meta = snap.meta
        if self._log.matches(meta.index, meta.term):
            # Our log already holds it: just commit up to it (the tail stays valid).
            self._commit_to(meta.index)
            return
        if not self._snapshot_unpersisted:
            self._durable_before_snapshot = self._log.stable_index
        self._snapshot_unpersisted = meta.index
        self._log.reset_to_snapshot(meta.index, meta.term)
        self._snapshot = snap
        self._unstable_snapshot = snap
        self._base_membership = meta.membership
        self._configs = []
        self._commit = meta.index
        self._applying = max(self._applying, meta.index)
        self._applied_bytes = 0
        self._snapshot_requested_at = None

    def _handle_snapshot_response(self, m: InstallSnapshotResponse) -> None:
        if self._role != LEADER:
            return
        pr = self._progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        pr.unanswered = 0
        if pr.state != SNAPSHOT or m.index != pr.snap_index:
            return  # stale
        if m.done:
            pr.update(m.index)
            pr.become_probe()
            self._send_append(m.src)
            return
        if m.reject:
            pr.become_probe()
            self._send_append(m.src)
            return
        if m.next_offset == pr.snap_offset:
            if pr.snap_queried:
                # The answer to an empty chunk (R6): the chunk in flight never arrived.
                pr.snap_queried = False
                self._send_snapshot_chunk(m.src)
            return  # else a duplicate answer: that chunk is in flight (or resent on heartbeat)
        # Forward: the chunk arrived.  Backward: the follower lost its buffer (restart).
        pr.snap_chunk_unacked = False
        pr.snap_offset = m.next_offset
        self._send_snapshot_chunk(m.src)

    # ----------------------------------------------------------------- reads

    def _lease_valid(self) -> bool:
        """R7: a quorum answered rounds started within the lease window.

        The window runs from when a round was *sent*: the follower reset its election
        timer on receiving it, later, so it refuses votes for at least
        ``election_timeout_ticks`` after that start (less the drift between clocks).
        """
        cfg = self._cfg
        if not (cfg.lease_reads and cfg.check_quorum) or self._lease_disabled:
            return False
        if self._transfer_target:
            return False
        window = cfg.election_timeout_ticks - cfg.lease_drift_ticks
        if window <= 0:
            return False
        fresh = 0
        for v in self.membership.voters:
            if v == self._id:
                fresh += 1
            elif v in self._progress:
                started = self._round_tick.get(self._progress[v].ack_round)
                if started is not None and self._ticks - started < window:
                    fresh += 1
        return fresh >= self._quorum()

    def _observe_lease(self) -> None:
        """R11: report the lease-read mode when it changes (checked once a tick)."""
        held = self._committed_in_term() and self._lease_valid()
        if held == self._lease_held:
            return
        self._lease_held = held
        if held:
            self._event(EventKind.LEASE_REGAINED, self._id, "quorum", "a quorum answered recently")
        else:
            if self._transfer_target or self._lease_disabled:
                reason, why = "transfer", "leadership is being handed over"
            else:
                reason, why = "quorum", "fewer than a quorum answered within the lease window"
            self._event(EventKind.LEASE_LOST, self._id, reason, why)

    def _check_reads(self) -> None:
        if self._role != LEADER or not self.membership.voters:
            return
        acks = sorted(
            (
                _INF if v == self._id else self._progress[v].ack_round
                for v in self.membership.voters
            ),
            reverse=True,
        )
        confirmed = acks[self._quorum() - 1]
        # Capped at the newest round: "everything confirmed" (a lone voter) must not
        # outlive a membership change.
        self._round_confirmed = max(self._round_confirmed, min(confirmed, self._round))
        keep: list[_PendingRead] = []
        for r in self._pending_reads:
            if r.need_round <= confirmed:
                r.confirmed = True
            if r.confirmed and r.index is not None:
                self._reads_ready.append(ReadState(r.ctx, r.index))
            else:
                keep.append(r)
        self._pending_reads = keep
        if (
            keep
            and keep[-1].need_round > self._round
            and self._round - self._round_confirmed < self._cfg.max_read_rounds_in_flight
        ):
            # Reads that found every round slot taken: start their round now.
            self._bcast_heartbeat = True
