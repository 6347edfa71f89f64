"""Same seed, same run; a planted Raft bug is caught; the CLI reports and replays."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from catenary.cli.sim import sim
from catenary.core.metadata.lessor import Lessor
from catenary.core.metadata.replica import MetadataReplica, Query, _PendingRead
from catenary.core.metadata.state import MetadataStateMachine
from catenary.core.raft.log import RaftLog
from catenary.core.raft.types import NotLeader
from catenary.storage.fs_sim import SimFile
from catenary.testing.sim.metadata import SimOptions, run_metadata_sim

pytestmark = pytest.mark.timeout(120)

MAIN = "from catenary.cli.main import main; main()"
ARGS = ["--seed", "4242", "--nodes", "3", "--steps", "300", "--json"]


def test_same_seed_same_events_in_process() -> None:
    first = run_metadata_sim(SimOptions(seed=77, nodes=3, steps=400))
    second = run_metadata_sim(SimOptions(seed=77, nodes=3, steps=400))
    assert first.ok, first.violation
    assert first.events == second.events
    assert first.digest == second.digest
    assert first.to_json() == second.to_json()
    other = run_metadata_sim(SimOptions(seed=78, nodes=3, steps=400))
    assert other.digest != first.digest  # the digest does depend on the run


def test_same_seed_same_output_across_processes_and_hash_seeds() -> None:
    # str hashing differs per process (PYTHONHASHSEED): no set-of-str order may leak.
    outputs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        done = subprocess.run(
            [sys.executable, "-c", MAIN, "sim", "metadata", *ARGS],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1]
    assert outputs[0]["seed"] == 4242 and outputs[0]["ok"] is True


def _vote_for_anyone(self: RaftLog, last_index: int, last_term: int) -> bool:
    return True  # the planted bug: grant votes without the log up-to-date check


def test_planted_bug_is_caught_within_the_seed_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RaftLog, "is_up_to_date", _vote_for_anyone)
    caught = []
    for seed in range(1, 61):
        result = run_metadata_sim(SimOptions(seed=seed, nodes=3, steps=500))
        if not result.ok:
            caught.append((seed, result.violation))
            break
    assert caught, "the simulator missed a Raft without the up-to-date vote check"
    seed, violation = caught[0]
    print(f"planted bug caught by seed {seed}: {violation}")
    assert violation is not None
    assert "committed entry lost" in violation or "safety" in violation or "linear" in violation


def _first_violation(seeds: range, steps: int = 500) -> tuple[int, str] | None:
    for seed in seeds:
        result = run_metadata_sim(SimOptions(seed=seed, nodes=3, steps=steps))
        if not result.ok:
            assert result.violation is not None
            return seed, result.violation
    return None


def test_reads_served_without_read_index_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # Planted: the leader answers "linearizable" reads from its own state at once,
    # so a deposed leader that does not know it yet serves stale data.
    def read_at_once(self: MetadataReplica, request_id: int, query: Query) -> None:
        if not self.is_leader:
            raise NotLeader(self.raft.leader)
        self._completions.append(self._answer(_PendingRead(request_id, query)))

    monkeypatch.setattr(MetadataReplica, "read", read_at_once)
    found = _first_violation(range(1, 41))
    assert found is not None, "stale reads from a deposed leader went unnoticed"
    print(f"caught by seed {found[0]}: {found[1].splitlines()[0]}")
    assert "linearizability" in found[1]


def test_log_segments_never_fsynced_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # Planted: segment files are never fsynced (the small atomic files still are).
    fsync = SimFile.fsync

    def fsync_all_but_segments(self: SimFile) -> None:
        if not self.path.endswith(".seg"):
            fsync(self)

    monkeypatch.setattr(SimFile, "fsync", fsync_all_but_segments)
    found = _first_violation(range(1, 21))
    assert found is not None, "lost acknowledged entries went unnoticed"
    print(f"caught by seed {found[0]}: {found[1].splitlines()[0]}")
    # Either the durability check or the store's own corruption check notices.
    assert "durability" in found[1] or "CorruptionError" in found[1]


def test_lease_deadlines_reset_on_election_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # Planted: a new leader forgets each lease's remaining time and expires it at once.
    become_leader = Lessor.become_leader

    def forgetful(self: Lessor, state: MetadataStateMachine, now_ms: int) -> None:
        become_leader(self, state, now_ms)
        for held in self._held.values():
            held.deadline_ms = now_ms

    monkeypatch.setattr(Lessor, "become_leader", forgetful)
    found = _first_violation(range(1, 41))
    assert found is not None, "leases expiring early went unnoticed"
    print(f"caught by seed {found[0]}: {found[1].splitlines()[0]}")
    assert "expired early" in found[1]


def test_cli_prints_seed_outcome_and_counters() -> None:
    runner = CliRunner()
    done = runner.invoke(sim, ["metadata", "--seed", "9", "--steps", "200"])
    assert done.exit_code == 0, done.output
    assert "seed: 9" in done.output
    assert "outcome: ok" in done.output
    for word in (
        "ops:",
        "leaders:",
        "crashes:",
        "partitions:",
        "dropped",
        "commits:",
        "snapshots:",
    ):
        assert word in done.output
    done = runner.invoke(sim, ["metadata", "--seed", "9", "--steps", "200", "--json"])
    assert done.exit_code == 0
    data = json.loads(done.output)
    assert data["seed"] == 9 and data["ok"] is True
    assert data["counters"]["ops"] > 0


def test_cli_reports_a_violation_with_the_replay_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(RaftLog, "is_up_to_date", _vote_for_anyone)
    runner = CliRunner()
    for seed in range(1, 61):
        done = runner.invoke(sim, ["metadata", "--seed", str(seed), "--steps", "500"])
        if done.exit_code != 0:
            break
    assert done.exit_code == 1, "no seed caught the planted bug"
    assert "outcome: VIOLATION" in done.output
    assert f"replay: catenary sim metadata --seed {seed} --nodes 3 --steps 500" in done.output


def test_cli_without_seed_draws_and_prints_one() -> None:
    done = CliRunner().invoke(sim, ["metadata", "--steps", "50", "--json"])
    assert done.exit_code == 0, done.output
    assert isinstance(json.loads(done.output)["seed"], int)
