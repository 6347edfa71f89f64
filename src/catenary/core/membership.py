"""Cluster membership decisions: who may join under which id, when a learner
becomes a voter, who takes over leadership.  Sans-IO: plain values in,
decisions out; the server's membership service carries them out (writes,
configuration changes) and a simulator can drive the same functions.

Rules
-----
1. A NodeId is never reused for a node that held data.  A joiner asking
   without an id gets back an id handed out to the very same addresses only
   if that registration never received an entry (not a voter, and a learner
   with match index 0): its earlier ``JoinReply`` was lost, and giving it the
   same id leaves no orphan learner behind.
2. A node record refuses a join when the node was removed (it must join
   anew), when a restarted node names an id that is not registered, and when
   the joiner's generation is older than the recorded one (a stale
   incarnation).
3. A learner is promoted once it has matched something and either it is
   within ``lag_max`` entries of the leader's last index, or (under steady
   load, where a fixed bound may never be met) it has passed where the
   leader's log ended at the previous check.  One configuration change at a
   time: the first caught-up learner, in id order.
4. Before stopping, a leader hands over to the most caught-up other voter
   (ties: the lowest id).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from catenary.core.raft.node import RaftNode


@dataclass(frozen=True, slots=True)
class Registration:
    """What the membership rules need of a node record."""

    node: int
    peer_address: str
    client_address: str
    generation: int = 0
    removed: bool = False


@dataclass(frozen=True, slots=True)
class JoinRefused:
    """Rule 2: why a join cannot be recorded; ``kind`` is not_found | removed | stale."""

    kind: str
    message: str


def match_indexes(raft: RaftNode) -> dict[int, int]:
    """Match index per member as the leader sees it (empty elsewhere)."""
    if raft.role != "leader":
        return {}
    status = raft.status()
    out = {node: peer.match for node, peer in status.peers.items()}
    out[raft.node_id] = status.last_index
    return out


def reusable_node_id(
    registrations: Iterable[Registration],
    *,
    peer_address: str,
    client_address: str,
    voters: Iterable[int],
    learners: Iterable[int],
    matches: Mapping[int, int],
) -> int | None:
    """Rule 1: the id already handed to these addresses that never held data, if any."""
    voter_set, learner_set = set(voters), set(learners)
    for record in sorted(registrations, key=lambda r: r.node):
        if (
            record.removed
            or record.peer_address != peer_address
            or record.client_address != client_address
            or record.node in voter_set
            or (record.node in learner_set and matches.get(record.node, 0) > 0)
        ):
            continue
        return record.node
    return None


def join_refusal(
    node: int, recorded: Registration | None, *, asked_node: int, generation: int
) -> JoinRefused | None:
    """Rule 2: None when ``node``'s record may be (re)written for this join."""
    if recorded is None and asked_node != 0:
        return JoinRefused(
            "not_found",
            f"node n{node} is not registered in this cluster; "
            "wipe its data directory and join again",
        )
    if recorded is not None and recorded.removed:
        return JoinRefused(
            "removed", f"node n{node} was removed from the cluster; wipe its data and join anew"
        )
    if recorded is not None and generation and generation < recorded.generation:
        return JoinRefused(
            "stale",
            f"n{node} generation {generation} is older than the recorded "
            f"{recorded.generation}: a stale incarnation",
        )
    return None


@dataclass(slots=True)
class Promotion:
    """Rule 3, with the leader's last index remembered between checks."""

    lag_max: int
    marks: dict[int, int] = field(default_factory=dict)  # learner -> last index at last check

    def check(
        self, learners: Iterable[int], matches: Mapping[int, int], last_index: int
    ) -> int | None:
        """The learner to promote now (at most one), or None."""
        chosen: int | None = None
        for node in sorted(learners):
            match = matches.get(node, 0)
            caught_up = match > 0 and (
                last_index - match <= self.lag_max or match >= self.marks.get(node, last_index + 1)
            )
            self.marks[node] = last_index
            if caught_up and chosen is None:
                chosen = node
        return chosen


def transfer_target(voters: Iterable[int], self_id: int, matches: Mapping[int, int]) -> int | None:
    """Rule 4: the voter to hand leadership to before stopping, or None when alone."""
    others = [node for node in voters if node != self_id]
    if not others:
        return None
    return max(others, key=lambda node: (matches.get(node, 0), -node))
