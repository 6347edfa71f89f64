"""``catenary logs ...`` against real ``catenary server`` processes.

Every node is started by ``LocalCluster`` and stopped by PID in a ``finally``;
``catenary logs tail`` runs as a child process of its own, killed by PID.
The other commands run in-process through click's runner, as a user's shell
would run them (same options, same exit codes).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from catenary.bench.metadata import LocalCluster
from catenary.cli.main import cli
from catenary.client import Client

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e"), pytest.mark.timeout(120)]

RECORD_BYTES_MAX = 4096  # small, so an oversized record is cheap to send
LOGS = 4  # [logs] count, the default


async def wait_logs(addresses: list[str], count: int, timeout_s: float = 30.0) -> None:
    """Until the cluster's logs exist (they are created just after provisioning)."""
    deadline = time.monotonic() + timeout_s
    async with Client(addresses, timeout_s=5) as client:
        while len(await client.logs.list()) < count:
            assert time.monotonic() < deadline, "the logs were not created"
            await asyncio.sleep(0.1)


def start(root: Path, size: int, name: str) -> LocalCluster:
    cluster = LocalCluster(
        root, cluster_name=name, settings=[f"logs.record_bytes_max={RECORD_BYTES_MAX}"]
    )
    try:
        asyncio.run(cluster.start_cluster(size, timeout_s=60))
        asyncio.run(wait_logs(cluster.client_addresses, LOGS))
    except BaseException:
        cluster.stop_all()
        raise
    return cluster


@pytest.fixture
def one(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = start(tmp_path, 1, "logs1")
    try:
        yield cluster
    finally:
        cluster.stop_all()  # by PID


@pytest.fixture
def three(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = start(tmp_path, 3, "logs3")
    try:
        yield cluster
    finally:
        cluster.stop_all()  # by PID


def logs(address: str, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        cli, ["logs", *args, "--address", address, "--timeout", "10"], input=stdin
    )
    return result.exit_code, result.stdout, result.stderr


def records_of(out: str) -> list[tuple[int, str | None]]:
    return [(d["lsn"], d["value"]) for d in map(json.loads, out.splitlines()) if "lsn" in d]


def http_get(address: str, path: str) -> bytes:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
        body: bytes = response.read()
        return body


def test_append_stdin_then_read_from_every_node(three: LocalCluster) -> None:
    lines = [f"line {i}" for i in range(2500)]
    first = three.node(1).client_address
    code, out, err = logs(first, "append", "0", "--json", stdin=("\n".join(lines) + "\n").encode())
    assert code == 0, err
    appended = json.loads(out)
    assert appended["records"] == 2500
    assert appended["last_lsn"] - appended["first_lsn"] == 2499  # the only writer
    expected = [(appended["first_lsn"] + i, line) for i, line in enumerate(lines)]
    for node in three.nodes:
        code, out, err = logs(node.client_address, "read", "0", "--json")
        assert code == 0, err
        assert records_of(out) == expected, node.client_address


def test_every_logs_command_on_one_node(one: LocalCluster) -> None:
    node = one.node(1)
    address = node.client_address

    # list and describe
    code, out, err = logs(address, "list", "--json")
    assert code == 0, err
    assert [entry["log"] for entry in json.loads(out)["logs"]] == [0, 1, 2, 3]
    code, out, _ = logs(address, "list")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["LOG", "TAIL", "TRIM"]
    code, out, _ = logs(address, "describe", "0", "--json")
    info = json.loads(out)
    assert code == 0 and info["log"] == 0 and info["sealed"] is False
    open_segment = info["segments"][-1]
    assert open_segment["end_lsn"] == 0 and open_segment["nodeset"] == [1]
    assert open_segment["replication"] == "{node: 1}" and open_segment["provider"] == "replicated"
    code, out, _ = logs(address, "describe", "0")
    assert code == 0 and "REPLICATION" in out and "tail 1" in out

    # append: records as arguments, then stdin lines (one binary)
    code, out, err = logs(address, "append", "0", "a", "b")
    assert code == 0 and out.strip() == "appended 2 record(s) to log 0: LSN 1..2", err
    code, out, err = logs(address, "append", "0", "--batch", "2", stdin=b"c\r\nd\n\xff\xfe\n")
    assert code == 0 and "LSN 3..5" in out, err

    # read: text, JSON, a range; stops at the tail found at start
    code, out, _ = logs(address, "read", "0")
    assert code == 0 and out.splitlines() == ["1\ta", "2\tb", "3\tc", "4\td", "5\t0xfffe"]
    code, out, _ = logs(address, "read", "0", "--json", "--from", "4", "--to", "5")
    items = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and items[0] == {"lsn": 4, "value": "d", "value_base64": "ZA=="}
    assert items[1]["lsn"] == 5 and items[1]["value"] is None and len(items) == 2

    # tail: follows from the tail it finds, printing records appended after it started
    tail = subprocess.Popen(
        [
            *(sys.executable, "-c", "from catenary.cli.main import main; main()"),
            *("logs", "tail", "0", "--json", "--count", "2", "--address", address),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        n = 0
        while tail.poll() is None and time.monotonic() < deadline:
            code, _, err = logs(address, "append", "0", f"t{n}")
            assert code == 0, err
            n += 1
            time.sleep(0.3)
        out_b, err_b = tail.communicate(timeout=10)
    finally:
        if tail.poll() is None:
            os.kill(tail.pid, signal.SIGKILL)
            tail.wait(timeout=10)
    assert tail.returncode == 0, err_b.decode()
    tailed = records_of(out_b.decode())
    assert len(tailed) == 2 and tailed[0][0] > 5 and tailed[1][0] == tailed[0][0] + 1
    k = int(str(tailed[0][1])[1:])  # the first record appended after tail found the tail
    assert [v for _, v in tailed] == [f"t{k}", f"t{k + 1}"]

    # trim: a reader from below the trim point gets a trim gap, then the records
    code, out, err = logs(address, "trim", "0", "2", "--json")
    assert code == 0 and json.loads(out)["trim_point"] == 2, err
    code, out, _ = logs(address, "read", "0", "--json", "--to", "3")
    assert json.loads(out.splitlines()[0]) == {
        "gap": "trim",
        "from_lsn": 1,
        "to_lsn": 3,
    }
    code, out, _ = logs(address, "read", "0", "--to", "3")
    assert code == 0 and out.splitlines() == [
        "1..2\ttrim gap: these LSNs were trimmed away",
        "3\tc",
    ]

    # seal, then reconfigure onto the local provider: appends go on
    logs(address, "append", "1", "before")
    code, out, err = logs(address, "seal", "1", "--json")
    assert code == 0 and json.loads(out) == {"log": 1, "sealed": True, "tail": 2}, err
    code, out, err = logs(address, "reconfigure", "1", "--provider", "local", "--json")
    assert code == 0, err
    assert json.loads(out)["segments"][-1]["provider"] == "local"
    code, out, err = logs(address, "append", "1", "after", "--json")
    assert code == 0 and json.loads(out)["first_lsn"] == 2, err
    code, out, _ = logs(address, "read", "1", "--json")
    assert records_of(out) == [(1, "before"), (2, "after")]

    # bad input: an unknown log (1), an oversized record (2), a bad range (2)
    code, out, err = logs(address, "describe", "99")
    assert code == 1 and out == "" and "unknown log 99" in err
    code, _, err = logs(address, "append", "99", "x")
    assert code == 1 and "unknown log 99" in err
    code, _, err = logs(address, "append", "0", "x" * (RECORD_BYTES_MAX + 1))
    assert code == 2 and "exceeds logs.record_bytes_max" in err
    too_large = b"ok\n" + b"y" * (RECORD_BYTES_MAX + 1)
    code, _, err = logs(address, "append", "0", "--batch", "1", stdin=too_large)
    assert code == 2 and "1 record(s) were appended before the failure" in err
    code, _, _ = logs(address, "read", "0", "--from", "5", "--to", "4")
    assert code == 2
    code, _, _ = logs(address, "read", "-1")
    assert code == 2

    # The node's HTTP admin API counts the appends and lists the logs.
    metrics = http_get(node.admin_address, "/metrics").decode()
    appends = next(
        float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("catenary_log_appends_total ")
    )
    assert appends >= 4
    status = json.loads(http_get(node.admin_address, "/v1/status"))
    assert [entry["log"] for entry in status["log_service"]["logs"]] == [0, 1, 2, 3]
    assert status["log_service"]["figures"]["appends"] == appends
