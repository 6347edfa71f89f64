"""The simulator drives the server's host loop, so a bug planted in that loop is caught.

``HostLoop`` (``catenary.host.loop``) is the code between a replica and the world
that the asyncio host and the simulator share.  Each test plants one realistic
bug in it (monkeypatched here only), runs a short fixed list of seeds and
expects a violation of the expected kind; it prints the catching seed.  The
first seed listed was found to catch the bug; the others are a margin for a
simulator change that moves the scenario.

To look for catching seeds after a simulator change::

    python tests/sim/test_sim_hostloop.py <plant name> [first seed] [count]
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from catenary.api.messages import ErrorCode
from catenary.core.raft.types import AppendEntriesResponse, Message, Ready
from catenary.host.loop import Failed, HostLoop, _Write
from catenary.testing.sim.metadata import SimOptions, SimResult, run_metadata_sim

pytestmark = pytest.mark.timeout(180)

Plant = Callable[[pytest.MonkeyPatch], None]


def plant_acks_before_persist(mp: pytest.MonkeyPatch) -> None:
    """The loop sends a Ready's append acknowledgements with its other messages,
    before the Ready is persisted: the leader commits a write, and answers it,
    before it is durable on a majority."""

    def now(ready: Ready) -> list[Message]:
        acks = [m for m in ready.messages_after_persist if isinstance(m, AppendEntriesResponse)]
        return ready.messages + acks

    def after(ready: Ready) -> list[Message]:
        return [m for m in ready.messages_after_persist if not isinstance(m, AppendEntriesResponse)]

    mp.setattr(HostLoop, "_messages_now", staticmethod(now))
    mp.setattr(HostLoop, "_messages_after", staticmethod(after))


def plant_expired_write_reported_failed(mp: pytest.MonkeyPatch) -> None:
    """A write whose deadline passed is answered "unavailable" (surely not
    applied, safe to retry) instead of "indeterminate": the client retries a
    write that may already be in the log."""
    expire = HostLoop.expire

    def wrong(self: HostLoop[Any], now_us: int) -> list[tuple[Any, Any]]:
        writes = {id(r.token) for _d, r in self._deadlines if type(r) is _Write}
        out = []
        for token, outcome in expire(self, now_us):
            if id(token) in writes and isinstance(outcome, Failed):
                outcome = Failed(ErrorCode.UNAVAILABLE, "timed out")
            out.append((token, outcome))
        return out

    mp.setattr(HostLoop, "expire", wrong)


def plant_acks_ahead_of_the_pipeline(mp: pytest.MonkeyPatch) -> None:
    """A Ready with nothing of its own to persist sends its after-persist
    messages at once, ahead of the jobs still in flight (rule 3b): a follower
    acknowledges an append naming its last index while an earlier Ready holding
    those entries is still being written."""
    mp.setattr(HostLoop, "_behind_jobs", lambda self: False)


def plant_apply_before_durable(mp: pytest.MonkeyPatch) -> None:
    """The loop applies a Ready's committed entries as soon as it is handed out,
    without waiting for them to be durable on this node (rule 3c): a follower
    applies (and may compact into a snapshot) entries its own disk may lose."""

    def appliable(self: HostLoop[Any], ready: Ready) -> bool:
        return not self._snapshots_in_flight

    mp.setattr(HostLoop, "_appliable", appliable)


@dataclass(frozen=True)
class Case:
    plant: Plant
    seeds: Sequence[int]
    expect: tuple[str, ...]  # the violation names one of these
    nodes: int = 3
    steps: int = 500


CASES: dict[str, Case] = {
    "acks_before_persist": Case(
        plant_acks_before_persist, [1, 2, 3, 4, 5], ("durability at delivery",)
    ),
    "acks_ahead_of_the_pipeline": Case(
        plant_acks_ahead_of_the_pipeline, [1, 2, 3, 4, 5, 6, 7, 8], ("durability at delivery",)
    ),
    "apply_before_durable": Case(
        plant_apply_before_durable, [1, 2, 3, 4, 5, 6, 7, 8], ("durability at apply",)
    ),
    "expired_write_reported_failed": Case(
        plant_expired_write_reported_failed,
        [9, 10, 26, *range(1, 39)],
        ("linearizability",),
    ),
}


def _catch(case: Case) -> tuple[int, SimResult] | None:
    for seed in case.seeds:
        result = run_metadata_sim(SimOptions(seed=seed, nodes=case.nodes, steps=case.steps))
        if not result.ok:
            return seed, result
    return None


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bug_planted_in_the_host_loop_is_caught(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    case.plant(monkeypatch)
    found = _catch(case)
    assert found is not None, f"planted host-loop bug {name!r} escaped seeds {list(case.seeds)}"
    seed, result = found
    violation = result.violation or ""
    print(f"planted host-loop bug {name} caught by seed {seed}: {violation.splitlines()[0]}")
    assert any(word in violation for word in case.expect), violation


def test_the_simulator_exercises_the_host_loop() -> None:
    """Batches, deadlines and refusals happen in the simulator, not only in the server."""
    batches = expired = refused = indeterminate = 0
    for seed in range(1, 9):
        counters = run_metadata_sim(SimOptions(seed=seed, nodes=3, steps=500)).counters
        batches += counters.host_batches
        expired += counters.host_expired
        refused += counters.host_refused
        indeterminate += counters.ops_indeterminate
    assert batches > 0 and expired > 0 and refused > 0 and indeterminate > 0


if __name__ == "__main__":
    name = sys.argv[1]
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    chosen = CASES[name]
    with pytest.MonkeyPatch.context() as patch:
        chosen.plant(patch)
        for s in range(first, first + count):
            r = run_metadata_sim(SimOptions(seed=s, nodes=chosen.nodes, steps=chosen.steps))
            print(s, "ok" if r.ok else (r.violation or "").splitlines()[0][:200], flush=True)
