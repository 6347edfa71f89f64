"""Planted bugs in the log service (and in the metadata service under it): each is monkeypatched
here and ``catenary sim log`` must catch it.

Each test plants one realistic bug and runs a short list of seeds (the first
ones found to catch it, plus a margin); at least one must report a violation,
and the catching seed is printed.  A plant no seed catches fails the test:
strengthen the simulator, never the budget.

To look for catching seeds after a simulator change::

    python tests/sim/test_sim_log_planted.py <plant name> [first seed] [count] [nodes]
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import msgspec
import pytest

from catenary.core.bifrost.chain import Chain
from catenary.core.bifrost.reconfigure import placement
from catenary.core.loglet.log_server import Effects, LogServer
from catenary.core.loglet.repair import REPAIRING, SEALING, TailFinder
from catenary.core.loglet.sequencer import Sequencer
from catenary.core.loglet.types import Store
from catenary.core.metadata.replica import Query
from catenary.core.metadata.state import MetadataStateMachine
from catenary.core.metadata.types import Precondition, Result
from catenary.host.log_node import AppendDone, AppendFailed, LogNode
from catenary.host.log_server import LogServerLoop, LogServerOutput
from catenary.host.loop import Failed, HostLoop
from catenary.testing.sim.log import LogSimOptions, LogSimResult, run_log_sim

pytestmark = pytest.mark.timeout(120)

Plant = Callable[[pytest.MonkeyPatch], None]


def commit_below_quorum(mp: pytest.MonkeyPatch) -> None:
    """The sequencer commits a batch as soon as one server stored it."""

    def _advance(self: Sequencer) -> None:
        while self._batches and self._batches[0].stored_by:
            batch = self._batches.popleft()
            self._global_tail = batch.end
            self._inflight_records -= len(batch.payloads)
            self._acks.append((batch.token, batch.end - 1))

    mp.setattr(Sequencer, "_advance", _advance)


def store_after_seal(mp: pytest.MonkeyPatch) -> None:
    """A log-server accepts a (non-repair) store into a sealed loglet."""
    original = LogServer._store

    def _store(self: LogServer, src: int, m: Store, effects: Effects) -> None:
        st = self._state(m.loglet)
        sealed, st.sealed = st.sealed, False
        try:
            original(self, src, m, effects)
        finally:
            st.sealed = st.sealed or sealed

    mp.setattr(LogServer, "_store", _store)


def find_tail_without_repair(mp: pytest.MonkeyPatch) -> None:
    """Find-tail reports the highest sealed local tail without copying the records
    below it to write quorums."""

    def _plan(self: TailFinder) -> None:
        self._pieces = []
        self.phase = REPAIRING
        self._finish()

    mp.setattr(TailFinder, "_plan", _plan)


def find_tail_lowest(mp: pytest.MonkeyPatch) -> None:
    """Find-tail takes the lowest local tail of the sealed f-majority, not the highest."""
    original = TailFinder.on_message

    def on_message(self: TailFinder, src: int, m: msgspec.Struct) -> None:
        before = self.phase
        original(self, src, m)
        if before == SEALING and self.phase != SEALING and self._sealed:
            self._candidate = min(self._sealed.values())

    mp.setattr(TailFinder, "on_message", on_message)


def reply_before_durable(mp: pytest.MonkeyPatch) -> None:
    """The log-server host loop sends its replies before the batch's job is durable."""
    original = LogServerLoop.poll

    def poll(self: LogServerLoop, now_us: int) -> LogServerOutput:
        out = original(self, now_us)
        if out.job is not None:
            out.send += self._held.send
            self._held.send = []
        return out

    mp.setattr(LogServerLoop, "poll", poll)


def sequencer_of_an_older_generation(mp: pytest.MonkeyPatch) -> None:
    """A node starts the sequencer of a segment the chain names it for in an earlier
    generation (N1 without the generation check): after a restart it hands out offsets
    that segment already gave."""

    def _maybe_start(self: LogNode, log: int, chain: Chain) -> None:
        tail = chain.tail
        params = placement(tail)
        if params is None or params.sequencer.node != self.node_id:
            return
        loglet = tail.loglet(log)
        if not self.sequencers.hosts(loglet):
            self.sequencers.start(
                loglet,
                params.sequencer,
                params.nodeset,
                params.replication,
                locations=self.locations,
            )

    mp.setattr(LogNode, "_maybe_start", _maybe_start)


def forwarded_lsn_from_the_current_chain(mp: pytest.MonkeyPatch) -> None:
    """A forwarded append's answer is turned into LSNs with the base of the segment the
    node's chain has now, not of the segment the append was sent to."""
    original = LogNode._forward_answered

    def _forward_answered(self: LogNode, m: AppendDone | AppendFailed) -> None:
        entry = self._forwarded.get(m.token)
        if entry is not None:
            entry.base_lsn = self.chains[1][0].tail.base_lsn
        original(self, m)

    mp.setattr(LogNode, "_forward_answered", _forward_answered)


def chain_read_served_by_a_follower(mp: pytest.MonkeyPatch) -> None:
    """A metadata member that does not lead answers a linearizable read (a chain read of
    a reconfiguration or trim) from its own applied state instead of refusing it
    (``NOT_LEADER``): it may be behind the chain the leader committed."""
    original = HostLoop.submit_read

    def submit_read(
        self: HostLoop[object], query: Query, token: object, now_us: int
    ) -> Failed | None:
        if not self.replica.is_leader:
            return self.submit_call(lambda replica: replica.read_stale(0, query), token)
        return original(self, query, token, now_us)

    mp.setattr(HostLoop, "submit_read", submit_read)


def chain_cas_without_its_version(mp: pytest.MonkeyPatch) -> None:
    """The metadata state machine applies a put whatever version it was conditioned on:
    a compare-and-set of the chain is answered written without its version check."""
    original = MetadataStateMachine._precondition

    def _precondition(self: MetadataStateMachine, key: str, pre: Precondition) -> Result | None:
        if pre.kind == "version":
            return None
        return original(self, key, pre)

    mp.setattr(MetadataStateMachine, "_precondition", _precondition)


# The first seeds found to catch each bug, then a margin (the first twelve 3-node
# seeds): a simulator change moves the scenarios, and the margin keeps the battery
# meaningful until the list is refreshed with the search below.
MARGIN = [(seed, 3) for seed in range(12)]

PLANTS: dict[str, tuple[Plant, list[tuple[int, int]]]] = {
    # name -> (plant, [(seed, nodes)])
    "commit_below_quorum": (commit_below_quorum, [(9, 3), (10, 3), (7, 3), *MARGIN]),
    "store_after_seal": (store_after_seal, [(0, 3), (1, 3), *MARGIN]),
    "find_tail_without_repair": (find_tail_without_repair, [(1, 3), (2, 3), *MARGIN]),
    "find_tail_lowest": (find_tail_lowest, [(0, 3), (1, 3), *MARGIN]),
    "reply_before_durable": (reply_before_durable, [(0, 3), (1, 3), *MARGIN]),
    "sequencer_of_an_older_generation": (
        sequencer_of_an_older_generation,
        [(0, 3), (5, 3), *MARGIN],
    ),
    "forwarded_lsn_from_the_current_chain": (
        forwarded_lsn_from_the_current_chain,
        [(75, 5), (465, 3), (519, 3), *MARGIN],
    ),
    # The metadata service under the log: caught by the chain checkers.
    "chain_read_served_by_a_follower": (
        chain_read_served_by_a_follower,
        [(1, 3), (6, 3), *MARGIN],
    ),
    "chain_cas_without_its_version": (chain_cas_without_its_version, [(1, 3), (2, 3), *MARGIN]),
}


def _catch(name: str, seeds: list[tuple[int, int]]) -> LogSimResult | None:
    for seed, nodes in seeds:
        result = run_log_sim(LogSimOptions(seed=seed, nodes=nodes))
        if not result.ok:
            return result
    return None


@pytest.mark.parametrize("name", sorted(PLANTS))
def test_planted_bug_is_caught(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plant, seeds = PLANTS[name]
    plant(monkeypatch)
    result = _catch(name, seeds)
    assert result is not None, f"planted bug {name} not caught by seeds {seeds}"
    print(f"{name}: caught by seed {result.seed} nodes {result.nodes}: {result.violation}")


def _search(name: str, first: int, count: int, nodes: int) -> None:
    plant, _ = PLANTS[name]
    mp = pytest.MonkeyPatch()
    plant(mp)
    try:
        for seed in range(first, first + count):
            result = run_log_sim(LogSimOptions(seed=seed, nodes=nodes))
            if not result.ok:
                print(f"{name}: seed {seed} nodes {nodes}: {result.violation}")
    finally:
        mp.undo()


if __name__ == "__main__":
    args = sys.argv[1:]
    _search(
        args[0],
        int(args[1]) if len(args) > 1 else 0,
        int(args[2]) if len(args) > 2 else 50,
        int(args[3]) if len(args) > 3 else 3,
    )
