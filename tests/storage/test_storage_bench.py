"""``catenary bench storage`` runs end to end and prints one JSON object per figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from catenary.cli.bench import bench


def _bench_storage(tmp_path: Path, *options: str) -> list[dict[str, Any]]:
    """``catenary bench storage --json`` for 0.2 s per case in ``tmp_path``; its rows."""
    result = CliRunner().invoke(
        bench,
        [
            "storage",
            "--json",
            "--seconds",
            "0.2",
            "--dir",
            str(tmp_path),
            "--segment-mib",
            "1",
            *options,
        ],
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


@pytest.mark.timeout(60)
def test_bench_storage_json_figures(tmp_path: Path) -> None:
    rows = _bench_storage(tmp_path, "--loop", "asyncio")
    figures = {(r["figure"], r["appenders"], r["record_bytes"], r["preallocate"]) for r in rows}
    for preallocate in (True, False):  # both modes in one run, by default
        for appenders in (1, 64):
            for record_bytes in (100, 4096):
                for name in (
                    "append_records_per_s",
                    "append_mb_per_s",
                    "append_latency_p50_ms",
                    "append_latency_p99_ms",
                    "fsyncs_per_s",
                    "fsync_latency_p50_ms",
                    "fsync_latency_p99_ms",
                    "cpu_us_per_record",
                    "cpu_user_us_per_record",
                    "cpu_system_us_per_record",
                    "cpu_busy_pct",
                ):
                    assert (name, appenders, record_bytes, preallocate) in figures
    assert all(r["segment_bytes_max"] == 1 << 20 for r in rows)
    assert all(r["fsync"] is True for r in rows)
    assert all(r["value"] > 0 for r in rows if r["figure"] == "append_records_per_s")
    # The process worked while records were appended: its CPU per record is counted.
    assert all(r["value"] > 0 for r in rows if r["figure"] == "cpu_us_per_record")
    assert list(tmp_path.iterdir()) == []  # the temporary store is deleted


@pytest.mark.timeout(60)
def test_bench_storage_several_records_per_append(tmp_path: Path) -> None:
    """``--records-per-append 4``: each await carries four records, counted as four."""
    rows = _bench_storage(tmp_path, "--preallocate", "on", "--records-per-append", "4")
    assert rows and all(r["records_per_append"] == 4 for r in rows)
    # Every record is counted once in the latency samples: a multiple of four.
    assert all(r["records"] % 4 == 0 and r["records"] > 0 for r in rows)
    # An fsync carries a whole call's records (about 4 with one appender: the window's
    # edges cut a call in two now and then; one record per call would give about 1).
    per_fsync = [r["value"] for r in rows if r["figure"] == "records_per_fsync"]
    assert per_fsync and all(v > 3 for v in per_fsync)
    assert list(tmp_path.iterdir()) == []
