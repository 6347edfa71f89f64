"""Same seed, same run; the CLI reports and replays (planted bugs: test_planted_bugs.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from catenary.cli.sim import sim
from catenary.core.raft.log import RaftLog
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
