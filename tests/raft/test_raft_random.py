"""Randomized runs of the in-memory cluster with safety checks after every step.

Each seed drives reordering, loss, duplication, partitions, crashes with restart from
persisted state, proposals, reads, membership changes, transfers and compaction.  The
checks are Raft's safety properties: one leader per term, applied sequences that agree
(state machine safety), reads that see every entry committed before they were asked
(linearizable ReadIndex / lease reads), and liveness once faults stop.
"""

from __future__ import annotations

import contextlib
from random import Random

import pytest
from raft_harness import Cluster

from catenary.core.raft.types import (
    ConfChange,
    ConfChangeKind,
    Membership,
    NotLeader,
    ProposalDropped,
    RaftConfig,
)


class Checker:
    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.leaders: dict[int, int] = {}
        self.read_floor: dict[tuple[int, int], int] = {}  # (node, ctx) -> min index

    def check(self) -> None:
        c = self.c
        for nid, node in sorted(c.nodes.items()):
            if nid in c.down:
                continue
            if node.role == "leader":
                prev = self.leaders.setdefault(node.term, nid)
                assert prev == nid, f"two leaders in term {node.term}: {prev} and {nid}"
        live = sorted(c.applied.items())
        for i, (a, la) in enumerate(live):
            for b, lb in live[i + 1 :]:
                n = min(len(la), len(lb))
                assert la[:n] == lb[:n], f"applied logs of {a} and {b} diverge"
        for nid, rs in sorted(c.reads.items()):
            for r in rs:
                floor = self.read_floor.pop((nid, r.ctx), None)
                if floor is not None:
                    assert r.index >= floor, f"stale read on {nid}: {r.index} < {floor}"

    def committed_anywhere(self) -> int:
        return max(
            (n.commit_index for i, n in self.c.nodes.items() if i not in self.c.down), default=0
        )


def run_seed(seed: int, steps: int, *, lease: bool = False) -> Cluster:
    rng = Random(seed)
    cfg = RaftConfig(
        election_timeout_ticks=10,
        heartbeat_interval_ticks=2,
        max_entries_per_message=rng.choice([1, 3, 64]),
        max_inflight_messages=rng.choice([1, 2, 8]),
        snapshot_chunk_bytes=rng.choice([7, 64, 4096]),
        compact_after_entries=rng.choice([8, 30, 10_000]),
        lease_reads=lease,
        pre_vote=rng.random() < 0.8,
        check_quorum=lease or rng.random() < 0.8,
    )
    c = Cluster(cfg, seed)
    voters = (1, 2, 3)
    for nid in voters:
        c.add_node(nid, Membership(voters=voters))
    checker = Checker(c)
    ctx = 0
    seq = 0
    spare = 4
    for step in range(steps):
        faults = step < steps * 3 // 4
        live = [n for n in sorted(c.nodes) if n not in c.down]
        r = rng.random()
        if r < 0.25:
            # Lease reads rely on bounded clock drift: tick everyone together then.
            if lease or rng.random() < 0.5:
                for n in live:
                    c.nodes[n].tick()
            else:
                c.nodes[rng.choice(live)].tick()
        elif r < 0.50:
            if c.net:
                k = rng.randrange(len(c.net)) if faults else 0
                m = c.net.pop(k)
                if faults and rng.random() < 0.05:
                    c.net.append(m)  # duplicate
                if c.linked(m.src, m.dst):
                    c.step(m)
        elif r < 0.70:
            for n in live:
                x = rng.random()
                if x < 0.6:
                    c.process_ready(n, None)
                elif x < 0.8:
                    c.begin_ready(n)  # persistence lags; the node keeps stepping
                else:
                    c.finish_ready(n)
        elif r < 0.78:
            leader = next((n for n in live if c.nodes[n].role == "leader"), None)
            if leader is not None:
                seq += 1
                with contextlib.suppress(ProposalDropped):
                    c.nodes[leader].propose_batch([f"v{seq}.{k}".encode() for k in range(3)])
        elif r < 0.82:
            leader = next((n for n in live if c.nodes[n].role == "leader"), None)
            if leader is not None:
                ctx += 1
                try:
                    c.nodes[leader].read_index(ctx)
                    checker.read_floor[(leader, ctx)] = checker.committed_anywhere()
                except (NotLeader, ProposalDropped):
                    pass
        elif r < 0.84 and faults:
            if c.net:
                c.net.pop(rng.randrange(len(c.net)))
        elif r < 0.86 and faults:
            a, b = rng.sample(sorted(c.nodes), 2)
            c.cut.add((a, b))
            if rng.random() < 0.5:
                c.cut.add((b, a))
        elif r < 0.88:
            c.cut.clear()
        elif r < 0.895 and faults:
            victim = rng.choice(sorted(c.nodes))
            if victim in c.down:
                c.restart(victim)
            elif len(c.down) < 1:
                c.crash(victim)
                # Reads of a crashed leader are never answered.
                for key in [k for k in checker.read_floor if k[0] == victim]:
                    del checker.read_floor[key]
        elif r < 0.92:
            for n in live:
                node = c.nodes[n]
                if node.applied_index - node.snapshot_index > 10 and rng.random() < 0.5:
                    c.compact(n)
        elif r < 0.94:
            leader = next((n for n in live if c.nodes[n].role == "leader"), None)
            if leader is not None:
                node = c.nodes[leader]
                m = node.membership
                choice = rng.random()
                try:
                    if m.learners and choice < 0.5:
                        node.propose_conf_change(ConfChange(ConfChangeKind.PROMOTE, m.learners[0]))
                    elif len(m.voters) > 3 and choice < 0.8:
                        node.propose_conf_change(
                            ConfChange(ConfChangeKind.REMOVE, rng.choice(m.voters))
                        )
                    elif spare <= 6 and not m.learners:
                        node.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, spare))
                        c.add_node(spare, None)
                        spare += 1
                except (ProposalDropped, ValueError):
                    pass
        else:
            leader = next((n for n in live if c.nodes[n].role == "leader"), None)
            if leader is not None and rng.random() < 0.3:
                target = rng.choice(c.nodes[leader].membership.voters)
                c.nodes[leader].transfer_leadership(target)
        # Reads pending on a node that lost leadership are dropped by the core.
        for key in [k for k in checker.read_floor if c.nodes[k[0]].role != "leader"]:
            del checker.read_floor[key]
        checker.check()
    # Liveness: with faults over, some leader gets a fresh entry applied by every
    # member within a bounded number of ticks (a removed node that never learned of its
    # removal may still force an election or two when pre-vote is off).
    c.cut.clear()
    for n in sorted(c.down):
        c.restart(n)
    proposed: tuple[int, int] | None = None  # (leader, term) that took "final"
    done = False
    for _ in range(600):
        for n in sorted(c.nodes):
            c.nodes[n].tick()
        c.stabilize(None)
        checker.check()
        leaders = [n for n in sorted(c.nodes) if c.nodes[n].role == "leader"]
        if not leaders:
            continue
        leader = c.nodes[leaders[0]]
        if proposed != (leaders[0], leader.term):
            try:
                leader.propose(b"final")
                proposed = (leaders[0], leader.term)
            except ProposalDropped:  # a transfer in flight
                continue
        members = set(leader.membership.voters) | set(leader.membership.learners)
        if all("final" in c.applied[n] for n in sorted(members)):
            done = True
            break
    assert done, f"seed {seed}: no fresh entry applied everywhere after faults stopped"
    return c


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(60))
def test_random_faults_keep_raft_safe(seed: int) -> None:
    run_seed(seed, 2000)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(100, 130))
def test_random_faults_with_lease_reads(seed: int) -> None:
    run_seed(seed, 2000, lease=True)


@pytest.mark.timeout(30)
def test_same_seed_same_run() -> None:
    # Every message of the run, in order, feeds the digest: the core draws randomness
    # only from the injected generator and iterates nothing in hash order.
    assert run_seed(7, 600).trace.hexdigest() == run_seed(7, 600).trace.hexdigest()
    assert run_seed(7, 600).trace.hexdigest() != run_seed(8, 600).trace.hexdigest()
