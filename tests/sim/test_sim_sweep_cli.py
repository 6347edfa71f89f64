"""``catenary sim sweep``: many seeds, violations listed, fault coverage reported."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from catenary.cli.sim import sim

pytestmark = pytest.mark.timeout(60)


def test_sweep_reports_every_run_and_the_share_of_seeds_each_fault_fired_in() -> None:
    result = CliRunner().invoke(
        sim,
        [
            "sweep",
            "--first",
            "1",
            "--count",
            "3",
            "--nodes",
            "3",
            "--nodes",
            "5",
            "--steps",
            "200",
            "--jobs",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["seeds"] == 6 and report["passed"] == 6 and report["violations"] == []
    shares = report["fired_share"]
    assert shares["ops"] == 1.0  # every seed runs a workload
    assert all(0.0 <= share <= 1.0 for share in shares.values())
    assert {"crashes", "partitions", "torn_tails", "pauses"} <= set(shares)


def test_a_violating_seed_fails_the_sweep_and_names_its_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from catenary.cli import sim as sim_cli

    def violating(seed: int, nodes: int, steps: int) -> tuple[int, int, bool, str, dict[str, int]]:
        return seed, nodes, seed != 2, "planted\n  replay: catenary sim metadata --seed 2", {}

    monkeypatch.setattr(sim_cli, "_sweep_one", violating)
    # A worker process would import the unpatched function: run the sweep in this one.
    monkeypatch.setattr(sim_cli, "ProcessPoolExecutor", _InlineExecutor)
    result = CliRunner().invoke(sim, ["sweep", "--first", "1", "--count", "3", "--steps", "10"])
    assert result.exit_code == 1
    assert "1 violations" in result.output and "seed 2 nodes 3: planted" in result.output


class _InlineExecutor:
    def __init__(self, max_workers: int) -> None:
        del max_workers

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn, *args):  # type: ignore[no-untyped-def]
        from concurrent.futures import Future

        future: Future[object] = Future()
        future.set_result(fn(*args))
        return future
