"""``catenary bench metadata`` end to end: it starts its own nodes, measures, reports, stops them."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from catenary.bench.metadata import LocalCluster, run_bench

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e"), pytest.mark.timeout(120)]


def test_bench_metadata_prints_every_figure_with_its_setup_and_stops_its_nodes(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from catenary.cli.main import main; sys.argv[0] = 'catenary'; main()",
            "bench",
            "metadata",
            "--json",
            "--seconds",
            "0.5",
            "--clients",
            "1",
            "--clients",
            "8",
            "--set",
            "metadata.persists_in_flight_max=4",
        ],
        capture_output=True,
        text=True,
        timeout=100,
        # Its nodes' data directories under this test's own directory: the check
        # below for leftovers then cannot see another benchmark's servers.
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = [json.loads(line) for line in done.stdout.splitlines()]
    by_key = {(f["figure"], f["clients"]): f for f in figures}
    assert figures[0]["settings"] == ["metadata.persists_in_flight_max=4"]
    for clients in (1, 8):
        for kind in ("put", "get"):
            rate = by_key[(f"{kind}_ops_per_s", clients)]
            assert rate["value"] > 0 and rate["unit"] == "ops/s"
            assert rate["nodes"] == 3 and rate["fsync"] is True and rate["value_bytes"] == 100
            assert by_key[(f"{kind}_p50_ms", clients)]["value"] > 0
            assert (
                by_key[(f"{kind}_p99_ms", clients)]["value"]
                >= (by_key[(f"{kind}_p50_ms", clients)]["value"])
            )
            assert by_key[(f"{kind}_client_cpu_us", clients)]["value"] > 0
        # Puts are persisted on every node: each reports its mean persist time.
        persist = [
            f["value"]
            for f in figures
            if f["clients"] == clients and f["figure"].startswith("put_persist_mean_ms_node")
        ]
        assert len(persist) == 3 and all(v > 0 for v in persist)
        for kind in ("put", "get"):
            # Where the time goes: each node's CPU per operation (the leader works on
            # every one), the mean time in a node, and the rest outside the nodes.
            node_cpu = [by_key[(f"{kind}_cpu_us_node{n}", clients)]["value"] for n in (1, 2, 3)]
            assert all(v >= 0 for v in node_cpu) and max(node_cpu) > 0, node_cpu
            total = by_key[(f"{kind}_cpu_us_total", clients)]["value"]
            client_cpu = by_key[(f"{kind}_client_cpu_us", clients)]["value"]
            assert abs(total - client_cpu - sum(node_cpu)) < 0.01 * total + 0.01
            assert by_key[(f"{kind}_cpu_busy_pct", clients)]["value"] > 0
            node_ms = by_key[(f"{kind}_node_mean_ms", clients)]["value"]
            mean_ms = by_key[(f"{kind}_mean_ms", clients)]["value"]
            assert 0 < node_ms < mean_ms
            # Every put went through a Ready on the node that led (at least one per
            # batch of operations), and each node reports its count.
            readies = [
                by_key[(f"{kind}_readies_per_op_node{n}", clients)]["value"] for n in (1, 2, 3)
            ]
            assert all(v >= 0 for v in readies) and (kind == "get" or max(readies) > 0)
            outside = by_key[(f"{kind}_outside_nodes_mean_ms", clients)]["value"]
            assert abs(node_ms + outside - mean_ms) < 0.01
    # Before the first figure, the idle nodes' own CPU (ticks, timers).
    idle = [f for f in figures if f["figure"].startswith("idle_cpu_pct_node")]
    assert len(idle) == 3 and all(f["clients"] == 0 and 0 <= f["value"] < 100 for f in idle)
    # Every node it started is gone: no server runs on a data directory under
    # tmp_path (the benchmark's catenary-bench-*/nodeN).
    left = subprocess.run(
        ["pgrep", "-f", f"server .*--data-dir {tmp_path}/catenary-bench-[^ /]*/node"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert left.stdout.strip() == "", left.stdout


def test_bench_metadata_of_a_running_cluster_finds_the_nodes_metrics(tmp_path: Path) -> None:
    """With ``--address`` the benchmark did not start the nodes: it asks the cluster for
    their admin addresses and still says where the time goes, node by node."""
    cluster = LocalCluster(tmp_path, cluster_name="given")
    try:
        asyncio.run(cluster.start_cluster(3))
        out = io.StringIO()
        code = run_bench(
            address=cluster.client_addresses[:1],
            seconds=0.3,
            as_json=True,
            concurrency=(2,),
            ops=("put",),
            out=out,
        )
    finally:
        cluster.stop_all()
    assert code == 0
    by_key = {f["figure"]: f["value"] for f in map(json.loads, out.getvalue().splitlines())}
    for node in (1, 2, 3):
        assert by_key[f"put_persist_mean_ms_node{node}"] > 0
        assert by_key[f"put_readies_per_op_node{node}"] > 0
    assert 0 < by_key["put_node_mean_ms"] < by_key["put_mean_ms"]
    # The nodes answer on this machine's loopback: their CPU is this machine's.
    assert by_key["put_cpu_busy_pct"] > 0
