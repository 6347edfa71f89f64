"""``catenary bench log-store`` runs end to end and prints every figure."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from catenary.cli.bench import bench

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("crash", [False, True])
def test_log_store_bench_prints_each_figure(crash: bool) -> None:
    args = ["log-store", "--records", "4000", "--per-write", "1", "--per-write", "10", "--json"]
    result = CliRunner().invoke(bench, [*args, "--crash"] if crash else args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    figures = {(row["figure"], row["per_write"]): row for row in rows}
    for per_write in (1, 10):
        assert figures[("log_store_open_s", per_write)]["value"] > 0
        assert figures[("log_store_open_rss_mb", per_write)]["value"] > 0
        read = figures[("log_store_read_records_per_s", per_write)]
        assert read["value"] > 0 and read["records"] == 4000 and read["crash"] is crash
    # A clean close checkpoints everything; after a crash the open replays what was left.
    replayed = figures[("log_store_open_replayed_writes", 1)]["value"]
    assert (replayed > 0) if crash else (replayed == 0)
