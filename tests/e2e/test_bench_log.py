"""``catenary bench log`` end to end: it starts its own nodes, measures, reports, stops them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e"), pytest.mark.timeout(120)]


def test_bench_log_prints_every_figure_with_its_setup_and_stops_its_nodes() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from catenary.cli.main import main; sys.argv[0] = 'catenary'; main()",
            "bench",
            "log",
            "--json",
            "--seconds",
            "0.3",
            "--writers",
            "4",
            "--batch",
            "16",
            "--callers",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = [json.loads(line) for line in done.stdout.splitlines()]
    for f in figures:
        assert f["nodes"] == 3 and f["fsync"] is True and f["replication"] == "{node: 2}"

    def find(name: str, phase: str, **labels: object) -> list[dict[str, object]]:
        return [
            f
            for f in figures
            if f["figure"] == name
            and f["phase"] == phase
            and all(f.get(k) == v for k, v in labels.items())
        ]

    def value(name: str, phase: str, **labels: object) -> float:
        (f,) = find(name, phase, **labels)
        assert isinstance(f["value"], float | int)
        return float(f["value"])

    for provider in ("replicated", "local"):
        for size in (100, 1024):
            k = {"provider": provider, "record_bytes": size}
            assert value("append_ops_per_s", "latency", **k) > 0
            p50 = value("append_p50_ms", "latency", **k)
            assert 0 < p50 <= value("append_p90_ms", "latency", **k)
            assert value("append_p90_ms", "latency", **k) <= value("append_p99_ms", "latency", **k)
            assert value("append_records_per_s", "pipelined", **k) > 0
            assert value("append_mb_per_s", "pipelined", **k) > 0
            # Appends are persisted: two nodes for a replicated log, one for a local one.
            persisting = [f for f in find("persist_mean_ms", "pipelined", **k) if f["value"]]
            assert len(persisting) >= (2 if provider == "replicated" else 1)
    assert value("append_records_per_s", "appender") > 0
    for size in (100, 1024):
        assert value("read_records", "read", record_bytes=size) > 0
        assert value("read_records_per_s", "read", record_bytes=size) > 0
    assert value("read_records", "read_spread") > 0
    shares = find("records_served_share", "read_spread")
    assert len(shares) == 3 and abs(sum(float(f["value"]) for f in shares) - 1.0) < 0.01  # type: ignore[arg-type]
    assert len(find("cpu_percent", "read_spread")) == 3
    assert len(find("sequencer_cpu_percent", "read_spread")) == 1
    # Every node it started is gone (by PID: other benchmarks may run on the machine).
    pids = figures[0]["pids"]
    assert isinstance(pids, list) and len(pids) == 3
    for pid in pids:
        assert not Path(f"/proc/{pid}/cmdline").exists() or "catenary-bench-" not in Path(
            f"/proc/{pid}/cmdline"
        ).read_text(errors="replace"), pid
