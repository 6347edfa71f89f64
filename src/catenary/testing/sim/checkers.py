"""Invariant checkers that run beside the simulated cluster.

Each check raises ``Violation`` with a message naming the members, terms and
indexes involved; the simulator stops the run there and reports it.

1. Election safety: at most one leader per term.
2. Log matching: two persisted entries with the same index and term carry
   the same kind and data (checked on every entry as it is persisted).
3. State-machine safety: every member applies entries in index order without
   gaps, and the entry applied at an index is the same on every member
   (so applied sequences are prefixes of one another).
4. No committed entry lost: every entry ever applied (hence committed) is
   remembered up to the highest commit seen, with an upper bound of the term
   in which it was committed (the term of the first member seen to know it
   committed).  A member that becomes leader of term L must hold each one
   committed in a term below L (leader completeness; a leader of an older
   term, elected late from delayed votes, need not), and no member may later
   apply anything else at those indexes.
5. Durability across crashes: what a member's storage acknowledged (a
   completed save) is what it loads after a crash: the same term and vote,
   a snapshot at least as new, and the same entries -- except what a
   persistence step cut short by the crash was rewriting.
6. Recovery: every entry a restarting member loads at or below the commit
   index it loads is the entry the cluster committed at that index.  Checked
   at load; an index the cluster has not yet been seen to commit is
   remembered and checked when some member applies it.
8. Watches (``WatchChecker``): what a watcher receives for its prefix is, in
   version order, every event the cluster applied for those keys -- none
   twice, none skipped, none different from the applied one -- and
   ``Compacted`` only when the events it needs are no longer kept.  A watcher
   that moves to another member (failover, crash) resumes from its last seen
   version and must continue without a gap.
10. Leader leases: a read a leader serves at once on its lease (no
    confirming round) must not come after a leader of a later term was seen.
9. Commit rule (Raft's Figure 8): a leader's commit index, seen to move
   within its term, always lands on an entry of that term.
7. Durability at delivery: when a vote grant (not a pre-vote) or an append /
   snapshot acknowledgement reaches its destination, the sender's storage
   must already hold what it promises -- the term and vote of the grant, the
   acknowledged entries up to the acknowledged index (with the terms the
   receiving leader holds there), the installed snapshot.  Checked against
   the durable model (completed saves), not the sender's memory.
11. Flow control (the Raft core's R6): after every step of a leader, no
    follower owes it answers to more than ``max_inflight_messages`` data
    messages (appends carrying entries, snapshot chunks).  White-box: the
    count is the leader's own (``RaftNode.unanswered``), kept where the core
    sends data and reset where it takes an answer in; a count of the messages
    on the wire would also count ones a leader made before an answer and sent
    after it (the host holds a Ready back while it persists).  A heartbeat
    that re-sent data to a follower that does not answer (cut off) would pile
    a copy of its backlog into a transport's queue for every heartbeat.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from catenary.core.metadata.replica import MetadataReplica
from catenary.core.metadata.state import MetadataStateMachine
from catenary.core.metadata.types import Compacted, Event, WatchBatch
from catenary.core.raft.types import (
    AppendEntriesResponse,
    Entry,
    HardState,
    InstallSnapshotResponse,
    Message,
    Ready,
    RequestVoteResponse,
    Snapshot,
)


def leader_log_terms(
    replica: MetadataReplica | None, term: int
) -> Callable[[int], int | None] | None:
    """The term at an index of a member's log, when it leads ``term``; else None
    (what ``check_delivery`` compares a delivered message against)."""
    if replica is None or not replica.is_leader or replica.term != term:
        return None
    raft = replica.raft

    def term_at(index: int) -> int | None:
        held = raft.entries(index, index + 1) if index > raft.snapshot_index else []
        return held[0].term if held else None

    return term_at


class Violation(Exception):
    """An invariant failed."""


def _digest(entry: Entry) -> bytes:
    return hashlib.blake2b(b"%d:" % entry.kind + entry.data, digest_size=12).digest()


@dataclass
class DurableModel:
    """What one member's storage has acknowledged as durable."""

    term: int = 0
    vote: int = 0
    snapshot_index: int = 0
    entries: dict[int, int] = field(default_factory=dict)  # index -> term

    def saved(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            self.snapshot_index = ready.snapshot.meta.index
            self.entries.clear()
        if ready.entries:
            first = ready.entries[0].index
            # Entries are kept in index order (dict insertion order), so the
            # overwritten suffix is at the end.
            while self.entries and next(reversed(self.entries)) >= first:
                self.entries.popitem()
            for entry in ready.entries:
                self.entries[entry.index] = entry.term
        if ready.hard_state is not None:
            self.term = ready.hard_state.term
            self.vote = ready.hard_state.vote

    def compacted(self, snapshot: Snapshot) -> None:
        self.snapshot_index = max(self.snapshot_index, snapshot.meta.index)
        for index in [i for i in self.entries if i <= self.snapshot_index]:
            del self.entries[index]

    def reload(
        self, hard_state: HardState, snapshot: Snapshot | None, entries: list[Entry]
    ) -> None:
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.snapshot_index = snapshot.meta.index if snapshot else 0
        self.entries = {e.index: e.term for e in entries}


class LeaderPresence:
    """When some leader was ticking: samples of (time, term) from leaders' ticks.

    Time between two samples more than ``gap_us`` apart counts as without a
    leader (none ticked: none was elected, or the leader was paused or down).
    """

    def __init__(self, gap_us: int) -> None:
        self.gap_us = gap_us
        self.times: list[int] = []
        self.terms: list[int] = []

    def seen(self, time_us: int, term: int) -> None:
        if self.times and self.times[-1] == time_us and self.terms[-1] == term:
            return
        self.times.append(time_us)
        self.terms.append(term)

    def leaderless_us(self, start_us: int, end_us: int) -> int:
        total = 0
        previous = start_us
        lo = bisect.bisect_left(self.times, start_us)
        for i in range(lo, len(self.times)):
            t = self.times[i]
            if t > end_us:
                break
            if t - previous > self.gap_us:
                total += t - previous
            previous = t
        if end_us - previous > self.gap_us:
            total += end_us - previous
        return total

    def changes(self, start_us: int, end_us: int) -> int:
        return len(self.change_times(start_us, end_us))

    def change_times(self, start_us: int, end_us: int) -> list[int]:
        """When a leader of a new term was first seen ticking, in (start, end]."""
        lo = bisect.bisect_left(self.times, start_us)
        hi = bisect.bisect_right(self.times, end_us)
        out: list[int] = []
        seen: set[int] = set(self.terms[lo : lo + 1])
        for i in range(lo + 1, hi):
            if self.terms[i] not in seen:
                seen.add(self.terms[i])
                out.append(self.times[i])
        return out


class SafetyChecker:
    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}  # term -> leader
        self.persisted: dict[tuple[int, int], bytes] = {}  # (index, term) -> digest
        self.committed: dict[int, tuple[int, bytes]] = {}  # index -> (term, digest)
        self.highest_commit = 0
        # index -> term of the first member seen to know the index committed;
        # never below the term of the leader that committed it.
        self.commit_terms: dict[int, int] = {}
        self.applied: dict[int, int] = {}  # node -> last applied index
        self.durable: dict[int, DurableModel] = {}
        # index -> (term, digest, node) loaded as committed by a restarting
        # member before the cluster was seen to commit that index.
        self.claimed: dict[int, tuple[int, bytes, int]] = {}
        self.leader_commits: dict[int, tuple[int, int]] = {}  # node -> (term, commit) as leader
        self.checks = 0
        # Called with every batch of persisted entries (the simulator notes when
        # leases were decided expired from it).
        self.persisted_listener: Callable[[int, list[Entry]], None] | None = None
        self.applied_listener: Callable[[int, list[Entry]], None] | None = None

    # ------------------------------------------------------------ election

    def observe_leader(self, node: int, term: int) -> bool:
        """Record that ``node`` leads ``term``; True when this is news."""
        self.checks += 1
        known = self.leaders.get(term)
        if known is None:
            self.leaders[term] = node
            return True
        if known != node:
            raise Violation(f"election safety: term {term} has two leaders, {known} and {node}")
        return False

    def check_lease_read(self, node: int, term: int) -> None:
        """A read served on the leader lease of ``term`` while a leader of a later
        term already exists: the lease did not hold (a quorum that backed it
        voted for someone else before it ran out)."""
        self.checks += 1
        later = sorted(t for t in self.leaders if t > term)
        if later:
            raise Violation(
                f"lease read: leader {node} of term {term} served a read on its lease while "
                f"node {self.leaders[later[0]]} already led term {later[0]}"
            )

    def check_leader_log(self, node: int, term: int, log: dict[int, int], first_index: int) -> None:
        """Leader completeness: the new leader holds every committed entry it has not compacted."""
        for index in range(max(first_index, 1), self.highest_commit + 1):
            known = self.committed.get(index)
            commit_term = self.commit_terms.get(index)
            if known is None or commit_term is None or commit_term >= term:
                continue
            held = log.get(index)
            if held != known[0]:
                raise Violation(
                    f"committed entry lost: leader {node} of term {term} holds term {held} at "
                    f"index {index}, but an entry of term {known[0]} was committed there"
                )

    def observe_leader_commit(
        self, node: int, term: int, commit: int, term_at_commit: int | None
    ) -> None:
        """Raft's commit rule (Figure 8): a leader moves its commit index only by
        counting replicas of an entry of its own term.  Each time a leader's
        commit index is seen higher than last seen in the same term, the entry
        there must be of that term."""
        previous = self.leader_commits.get(node)
        self.leader_commits[node] = (term, commit)
        if previous is None or previous[0] != term or commit <= previous[1]:
            return
        self.checks += 1
        if term_at_commit is not None and term_at_commit != term:  # None: compacted
            raise Violation(
                f"commit rule: leader {node} of term {term} moved its commit index from "
                f"{previous[1]} to {commit}, an entry of term {term_at_commit} (an earlier "
                "term's entry committed by counting replicas)"
            )

    # ----------------------------------------------------------------- logs

    def observe_persisted(self, node: int, entries: list[Entry]) -> None:
        if self.persisted_listener is not None:
            self.persisted_listener(node, entries)
        for entry in entries:
            self.checks += 1
            digest = _digest(entry)
            known = self.persisted.setdefault((entry.index, entry.term), digest)
            if known != digest:
                raise Violation(
                    f"log matching: node {node} persisted a different entry at index "
                    f"{entry.index} term {entry.term}"
                )

    def observe_commit(self, commit_index: int, term: int) -> None:
        """A member at ``term`` knows entries up to ``commit_index`` are committed."""
        for index in range(self.highest_commit + 1, commit_index + 1):
            self.commit_terms[index] = term
        self.highest_commit = max(self.highest_commit, commit_index)

    def observe_installed(self, node: int, snapshot: Snapshot) -> None:
        last = self.applied.get(node, 0)
        if snapshot.meta.index < last:
            raise Violation(
                f"state-machine safety: node {node} installed a snapshot at "
                f"{snapshot.meta.index} after applying up to {last}"
            )
        self.applied[node] = snapshot.meta.index

    def observe_applied(self, node: int, entries: list[Entry]) -> None:
        if self.applied_listener is not None:
            self.applied_listener(node, entries)
        last = self.applied.get(node, 0)
        for entry in entries:
            if entry.index <= last:
                continue  # covered by an installed snapshot
            self.checks += 1
            if entry.index != last + 1:
                raise Violation(
                    f"state-machine safety: node {node} applied index {entry.index} after {last}"
                )
            digest = _digest(entry)
            known = self.committed.setdefault(entry.index, (entry.term, digest))
            claim = self.claimed.pop(entry.index, None)
            if claim is not None and claim[:2] != known:
                raise Violation(
                    f"recovery: node {claim[2]} loaded term {claim[0]} at index {entry.index} "
                    f"as committed, but term {known[0]} was committed there"
                )
            if known != (entry.term, digest):
                raise Violation(
                    f"state-machine safety: node {node} applied term {entry.term} at index "
                    f"{entry.index}, another member applied term {known[0]} there"
                    + (" (same term, different data)" if known[0] == entry.term else "")
                )
            last = entry.index
        self.applied[node] = last

    def restarted(self, node: int) -> None:
        """A restarted member re-applies from its snapshot: forget its applied position."""
        self.applied[node] = 0

    # ----------------------------------------------------------- durability

    def model(self, node: int) -> DurableModel:
        return self.durable.setdefault(node, DurableModel())

    def check_recovered(
        self,
        node: int,
        hard_state: HardState,
        snapshot: Snapshot | None,
        entries: list[Entry],
        interrupted: list[Ready],
    ) -> None:
        """Compare what a member loads after a crash with what it had made durable.

        ``interrupted``: the Readies of the group whose persist the crash cut
        short (HostLoop rule 9), any prefix of whose writes may have landed."""
        model = self.model(node)
        allowed = {(model.term, model.vote)}
        for ready in interrupted:
            if ready.hard_state is not None:
                allowed.add((ready.hard_state.term, ready.hard_state.vote))
        if (hard_state.term, hard_state.vote) not in allowed:
            raise Violation(
                f"durability: node {node} recovered term {hard_state.term} vote {hard_state.vote}"
                f", but had made term {model.term} vote {model.vote} durable"
            )
        snapshot_index = snapshot.meta.index if snapshot else 0
        if snapshot_index < model.snapshot_index:
            raise Violation(
                f"durability: node {node} recovered snapshot {snapshot_index}, "
                f"but snapshot {model.snapshot_index} was durable"
            )
        if any(ready.snapshot is not None for ready in interrupted):
            # An install was cut short: the log may be the old or the new one,
            # and what was loaded is what is durable from now on.
            model.reload(hard_state, snapshot, entries)
            return
        touched = min((r.entries[0].index for r in interrupted if r.entries), default=None)
        loaded = {e.index: e.term for e in entries}
        for index in sorted(model.entries):
            if index <= snapshot_index or (touched is not None and index >= touched):
                continue
            if loaded.get(index) != model.entries[index]:
                raise Violation(
                    f"durability: node {node} recovered term {loaded.get(index)} at index "
                    f"{index}, but term {model.entries[index]} was durable there"
                )
        model.reload(hard_state, snapshot, entries)

    def reloaded(
        self,
        node: int,
        hard_state: HardState,
        snapshot: Snapshot | None,
        entries: list[Entry],
        interrupted: list[Ready],
    ) -> None:
        """A member restarted from what its storage loaded: every check of a restart,
        then it applies again from its snapshot."""
        self.check_recovered(node, hard_state, snapshot, entries, interrupted)
        self.check_recovered_commit(node, hard_state, snapshot, entries)
        self.restarted(node)
        if snapshot is not None:
            self.observe_installed(node, snapshot)

    # ------------------------------------------------------------- recovery

    def check_recovered_commit(
        self, node: int, hard_state: HardState, snapshot: Snapshot | None, entries: list[Entry]
    ) -> None:
        """Every loaded entry at or below the loaded commit is the committed one."""
        snapshot_index = snapshot.meta.index if snapshot else 0
        for entry in entries:
            if entry.index > hard_state.commit:
                break
            if entry.index <= snapshot_index:
                continue
            self.checks += 1
            digest = _digest(entry)
            known = self.committed.get(entry.index)
            if known is None:
                claim = self.claimed.setdefault(entry.index, (entry.term, digest, node))
                if claim[:2] != (entry.term, digest):
                    raise Violation(
                        f"recovery: nodes {claim[2]} and {node} loaded different entries "
                        f"(terms {claim[0]} and {entry.term}) at index {entry.index} "
                        "as committed"
                    )
            elif known != (entry.term, digest):
                raise Violation(
                    f"recovery: node {node} loaded commit {hard_state.commit} over term "
                    f"{entry.term} at index {entry.index}, but term {known[0]} was "
                    "committed there"
                )

    # ------------------------------------------------------- flow control

    def check_flow(
        self, node: int, term: int, unanswered: dict[int, int], inflight_max: int
    ) -> None:
        """Rule 11: no follower of leader ``node`` owes answers to more than
        ``inflight_max`` data messages."""
        self.checks += 1
        for peer, sent in unanswered.items():
            if sent > inflight_max:
                raise Violation(
                    f"flow control: leader {node} of term {term} sent node {peer} {sent} "
                    f"data messages since its last answer (at most {inflight_max})"
                )

    # -------------------------------------------------- durability at delivery

    def check_delivery(
        self, message: Message, leader_term_at: Callable[[int], int | None] | None
    ) -> None:
        """What a delivered grant or acknowledgement promises is durable on its sender.

        ``leader_term_at``: the term at an index of the receiving member's log
        when it leads the message's term, else None.
        """
        if isinstance(message, RequestVoteResponse):
            if message.pre_vote or not message.granted:
                return
            self.checks += 1
            model = self.model(message.src)
            if model.term < message.term or (
                model.term == message.term and model.vote != message.dst
            ):
                raise Violation(
                    f"durability at delivery: node {message.src} granted its vote in term "
                    f"{message.term} to {message.dst}, but its storage holds term "
                    f"{model.term} vote {model.vote}"
                )
        elif isinstance(message, AppendEntriesResponse):
            if not message.success:
                return
            self.checks += 1
            model = self.model(message.src)
            if model.term < message.term:
                raise Violation(
                    f"durability at delivery: node {message.src} acknowledged appends of "
                    f"term {message.term}, but its storage holds term {model.term}"
                )
            if model.term != message.term:
                return  # it moved on durably; its log may legally have changed since
            index = message.match_index
            if index <= model.snapshot_index:
                return
            held = model.entries.get(index)
            if held is None:
                raise Violation(
                    f"durability at delivery: node {message.src} acknowledged index {index} "
                    f"in term {message.term}, but its storage ends before it"
                )
            if leader_term_at is not None:
                expected = leader_term_at(index)
                if expected is not None and expected != held:
                    raise Violation(
                        f"durability at delivery: node {message.src} acknowledged index "
                        f"{index} in term {message.term}; its storage holds term {held} "
                        f"there, leader {message.dst} term {expected}"
                    )
        elif isinstance(message, InstallSnapshotResponse):
            if not message.done or message.reject:
                return
            self.checks += 1
            model = self.model(message.src)
            if (
                model.term == message.term
                and model.snapshot_index < message.index
                and (message.index not in model.entries)
            ):
                raise Violation(
                    f"durability at delivery: node {message.src} acknowledged snapshot "
                    f"{message.index}, but its storage holds snapshot {model.snapshot_index}"
                )


class WatchChecker:
    """The events every member applied, by version, and what watchers were told.

    The truth is read from each member's own kept history (not through
    ``changes_since``, the code under test), incrementally, and must agree
    across members.
    """

    def __init__(self) -> None:
        self.truth: dict[int, Event] = {}
        self.harvested: dict[int, tuple[int, int]] = {}  # node -> (state id, version)
        self.checks = 0

    def harvest(self, node: int, state: MetadataStateMachine) -> None:
        start = state.history_start
        key = id(state)
        known = self.harvested.get(node)
        done = known[1] if known is not None and known[0] == key else start
        if done > state.revision:
            done = start  # another state object at a reused id
        history = state._history  # the kept events, read directly
        offset = state._history_offset
        first = max(done, start) + 1
        for version in range(first, state.revision + 1):
            event = history[offset + (version - start - 1)]
            if event.version != version:
                raise Violation(
                    f"watch: node {node} keeps event version {event.version} at {version}"
                )
            seen = self.truth.setdefault(version, event)
            if seen != event:
                raise Violation(
                    f"watch: node {node} applied {event} at version {version}, "
                    f"another member {seen}"
                )
        self.harvested[node] = (key, max(done, state.revision))

    def check(
        self,
        watcher: int,
        node: int,
        prefix: str,
        from_version: int,
        answer: WatchBatch | Compacted,
        history_start: int,
    ) -> None:
        self.checks += 1
        if isinstance(answer, Compacted):
            if from_version >= history_start:
                raise Violation(
                    f"watch: watcher {watcher} on node {node} was told Compacted from "
                    f"{from_version}, but events after {history_start} are kept"
                )
            return
        where = f"watcher {watcher} (prefix {prefix!r}) on node {node} from {from_version}"
        if answer.revision < from_version:
            raise Violation(f"watch: {where} went back to revision {answer.revision}")
        previous = from_version
        got: dict[int, Event] = {}
        for event in answer.events:
            if event.version <= previous:
                raise Violation(
                    f"watch: {where} received version {event.version} after {previous} "
                    "(redelivered or out of order)"
                )
            if event.version > answer.revision:
                raise Violation(
                    f"watch: {where} received version {event.version} beyond the batch's "
                    f"revision {answer.revision}"
                )
            truth = self.truth.get(event.version)
            if truth is not None and truth != event:
                raise Violation(
                    f"watch: {where} received {event}, but {truth} was applied at that version"
                )
            previous = event.version
            got[event.version] = event
        if from_version < history_start:
            raise Violation(
                f"watch: {where} got a batch although the events after {history_start} "
                "are all that is kept (Compacted expected)"
            )
        for version in range(from_version + 1, answer.revision + 1):
            truth = self.truth.get(version)
            if truth is not None and truth.key.startswith(prefix) and version not in got:
                raise Violation(f"watch: {where} skipped {truth} (batch up to {answer.revision})")
