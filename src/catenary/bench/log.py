"""``catenary bench log``: log appends (latency, pipelined throughput) and catch-up reads.

Setup: it starts its own cluster of three ``catenary server`` processes on
127.0.0.1 (``LocalCluster``, as ``bench metadata`` does; fsync on as always),
with ``logs.replication={node: 2}`` passed to every node, and waits until the
tail segment of every log is replicated ``{node: 2}`` before measuring.  Logs
0 and 2 stay ``replicated`` (100 B and 1 KiB records); logs 1 and 3 are
reconfigured to the ``local`` provider on the replicated logs' sequencer node
(100 B and 1 KiB): the same processes, disks and client, only the provider
differs, so the two columns show what replication costs.  Every process it
started is stopped by PID afterwards (SIGTERM, then SIGKILL after a bound),
also on an error, Ctrl-C or SIGTERM; the whole run is bounded in time.

Phases, each for ``--seconds`` (reads stop early when everything is read):

* ``latency``: one writer awaiting each one-record append.
* ``pipelined``: ``--writers`` tasks, each awaiting appends of ``--batch``
  records (a task keeps one batch in flight).
* ``appender``: ``--callers`` tasks each awaiting one record through one
  ``client.logs.appender`` (which batches them): the per-record client API.
* ``read``: one reader reading back log 0 (100 B) and log 2 (1 KiB) from LSN 1
  to the tail, through a client of all nodes.
* ``read_spread``: one reader per node, each connected to that node only,
  each reading a third of log 0.  Each node's share of the records its
  log-server served (``records_served`` deltas from ``/v1/status``) and the
  CPU of every node process (``/proc/<pid>/stat`` utime+stime deltas) show
  whether reads spread over the log-servers and stay off the sequencer.

For every phase it also reports each node's mean store persist (one
``write`` + ``fdatasync`` of a group of log-server inputs: delta
``store_persist_seconds`` / delta ``store_persists``) and the CPU of every
node and of the bench process (the client) itself.  Writers share one
``Client`` (one multiplexed connection per node) whose first address is the
sequencer's node, so appends are not forwarded.  Latency is measured per
operation on the client, on the same machine as the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catenary.bench.metadata import LocalCluster
from catenary.client import Client, LogRecord

REPLICATION = "{node: 2}"
REPLICATED_LOGS = {100: 0, 1024: 2}  # record bytes -> log
LOCAL_LOGS = {100: 1, 1024: 3}
RECORD_SIZES = (100, 1024)

# Targets of the issue on this 2-core machine, and NATS JetStream on the same
# machine (3 replicas, fsync on every write) for reference.
TARGET_P50_MS = 0.8
TARGET_PIPELINED_RPS = 250_000
TARGET_READ_RPS = 500_000
NATS_P50_MS = 1.85
NATS_PIPELINED_RPS = 25_000
NATS_READ_RPS = 16_500


@dataclass(frozen=True)
class Figure:
    figure: str
    value: float
    unit: str
    phase: str
    labels: dict[str, Any] = field(default_factory=dict)

    def as_json(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "value": round(self.value, 4),
            "unit": self.unit,
            "phase": self.phase,
            **self.labels,
            **extra,
        }


def _percentile_ms(samples_s: list[float], q: float) -> float:
    if not samples_s:
        return 0.0
    ordered = sorted(samples_s)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


# ------------------------------------------------------------- node probes


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from /proc (0 if unreadable)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime, stime are fields 14, 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _runqueue_seconds(pid: int) -> float:
    """Time every thread of ``pid`` spent runnable but waiting for a CPU (/proc schedstat)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def _log_figures(admin_address: str) -> dict[str, Any]:
    """``log_service.figures`` of a node's ``/v1/status`` ({} if unreachable)."""
    try:
        with urllib.request.urlopen(f"http://{admin_address}/v1/status", timeout=2.0) as r:
            body = json.loads(r.read())
    except (OSError, ValueError):
        return {}
    figures: dict[str, Any] = body.get("log_service", {}).get("figures", {})
    return figures


@dataclass
class _Probe:
    """CPU and log-service counters of every node (and of this process) at one instant."""

    at: float
    cpu: list[float]
    waited: list[float]
    client_cpu: float
    figures: list[dict[str, Any]]


class Probes:
    def __init__(self, pids: Sequence[int], admin_addresses: Sequence[str]) -> None:
        self.pids = list(pids)
        self.admin_addresses = list(admin_addresses)

    async def take(self) -> _Probe:
        figures = await asyncio.to_thread(lambda: [_log_figures(a) for a in self.admin_addresses])
        times = os.times()
        return _Probe(
            time.perf_counter(),
            [_cpu_seconds(p) for p in self.pids],
            [_runqueue_seconds(p) for p in self.pids],
            times.user + times.system,
            figures,
        )

    @staticmethod
    def figures(before: _Probe, after: _Probe, phase: str, labels: dict[str, Any]) -> list[Figure]:
        """Per node: mean persist, CPU, records served; and the client's CPU."""
        out: list[Figure] = []
        elapsed = max(after.at - before.at, 1e-9)
        for i, (f0, f1) in enumerate(zip(before.figures, after.figures, strict=True)):
            node = i + 1
            persists = f1.get("store_persists", 0) - f0.get("store_persists", 0)
            if persists > 0:
                seconds = f1["store_persist_seconds"] - f0["store_persist_seconds"]
                out.append(
                    Figure(
                        "persist_mean_ms",
                        seconds / persists * 1000.0,
                        "ms",
                        phase,
                        {**labels, "node": node, "persists": persists},
                    )
                )
            served = f1.get("records_served", 0) - f0.get("records_served", 0)
            out.append(Figure("records_served", served, "records", phase, {**labels, "node": node}))
            cpu = (after.cpu[i] - before.cpu[i]) / elapsed * 100.0
            out.append(Figure("cpu_percent", cpu, "%", phase, {**labels, "node": node}))
            waited = (after.waited[i] - before.waited[i]) / elapsed * 100.0
            out.append(Figure("cpu_wait_percent", waited, "%", phase, {**labels, "node": node}))
        client_cpu = (after.client_cpu - before.client_cpu) / elapsed * 100.0
        out.append(Figure("client_cpu_percent", client_cpu, "%", phase, dict(labels)))
        return out


def _cpu_per_record(
    before: _Probe, after: _Probe, phase: str, labels: dict[str, Any], records: float
) -> Figure:
    """CPU of every node and the client per record (µs): what the phase costs the machine,
    whatever share of the CPUs other work left it."""
    cpu = sum(after.cpu) - sum(before.cpu) + after.client_cpu - before.client_cpu
    return Figure("cpu_us_per_record", cpu / max(records, 1.0) * 1e6, "us", phase, dict(labels))


# ------------------------------------------------------------------ phases


async def _latency(client: Client, log: int, seconds: float, record: bytes) -> dict[str, float]:
    samples: list[float] = []
    clock = time.perf_counter
    stop_at = clock() + seconds
    append = client.logs.append
    started = clock()
    while True:
        start = clock()
        if start >= stop_at:
            break
        await append(log, record)
        samples.append(clock() - start)
    elapsed = clock() - started
    return {
        "ops": len(samples) / elapsed,
        "p50": _percentile_ms(samples, 0.50),
        "p90": _percentile_ms(samples, 0.90),
        "p99": _percentile_ms(samples, 0.99),
    }


async def _pipelined(
    client: Client, log: int, seconds: float, record: bytes, writers: int, batch: int
) -> dict[str, float]:
    records = tuple([record] * batch)
    samples: list[list[float]] = [[] for _ in range(writers)]
    clock = time.perf_counter
    stop_at = clock() + seconds
    append = client.logs.append

    async def writer(w: int) -> None:
        mine = samples[w]
        while True:
            start = clock()
            if start >= stop_at:
                return
            await append(log, records)
            mine.append(clock() - start)

    started = clock()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed = clock() - started
    merged = [x for s in samples for x in s]
    count = len(merged) * batch
    return {
        "records": count / elapsed,
        "mb": count * len(record) / elapsed / 1e6,
        "p50": _percentile_ms(merged, 0.50),
        "p99": _percentile_ms(merged, 0.99),
    }


async def _appender(
    client: Client, log: int, seconds: float, record: bytes, callers: int
) -> dict[str, float]:
    appender = client.logs.appender(log, batch_records_max=1024, inflight_max=8)
    clock = time.perf_counter
    stop_at = clock() + seconds
    counts = [0] * callers

    async def caller(c: int) -> None:
        while clock() < stop_at:
            await appender.append(record)
            counts[c] += 1

    started = clock()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    elapsed = clock() - started
    await appender.aclose()
    total = sum(counts)
    return {
        "records": total / elapsed,
        "mb": total * len(record) / elapsed / 1e6,
        "requests": appender.requests,
    }


async def _read_range(
    client: Client, log: int, from_lsn: int, to_lsn: int, stop_at: float, records_max: int
) -> tuple[int, int]:
    """(records, bytes) read of ``[from_lsn, to_lsn)`` until done or ``stop_at``."""
    records = size = 0
    if to_lsn <= from_lsn:
        return 0, 0
    clock = time.perf_counter
    stream = client.logs.read(log, from_lsn, to_lsn, records_max=records_max)
    try:
        async for item in stream:
            if isinstance(item, LogRecord):
                records += 1
                size += len(item.payload)
                if records % 1024 == 0 and clock() >= stop_at:
                    break
    finally:
        await stream.aclose()
    return records, size


async def _wait_replicated(client: Client, logs: Sequence[int], timeout_s: float) -> None:
    """Until every log's tail segment is replicated ``{node: 2}``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last = "no answer yet"
    while loop.time() < deadline:
        try:
            infos = [await client.logs.describe(log, timeout_s=2.0) for log in logs]
        except Exception as exc:  # not created yet, no leader yet, ...
            last = str(exc)
        else:
            tails = [info.segments[-1] for info in infos]
            if all(t.provider == "replicated" and t.replication == REPLICATION for t in tails):
                return
            last = "; ".join(f"log {i.log}: {i.segments[-1]}" for i in infos)
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the logs were not replicated {REPLICATION} after {timeout_s}s: {last}")


def _sequencer_node(text: str) -> int:
    """The node of a segment's sequencer as ``describe`` prints it ("N1:1")."""
    return int(text.lstrip("N").split(":", 1)[0])


@dataclass
class Options:
    seconds: float = 3.0
    writers: int = 16
    batch: int = 256
    callers: int = 1024
    read_records_max: int = 8192
    with_local: bool = True


async def bench_log(
    cluster: LocalCluster, opts: Options, say: Callable[[str], None]
) -> list[Figure]:
    """Every phase against ``cluster`` (started, three nodes); returns the figures."""
    nodes = cluster.nodes
    logs = sorted(REPLICATED_LOGS.values()) + sorted(LOCAL_LOGS.values())
    figures: list[Figure] = []
    probes = Probes([n.pid for n in nodes], [n.admin_address for n in nodes])
    async with Client(
        cluster.client_addresses, cluster_name=cluster.cluster_name, timeout_s=30.0
    ) as setup:
        await _wait_replicated(setup, logs, 60.0)
        info = await setup.logs.describe(REPLICATED_LOGS[100])
        seq_node = _sequencer_node(info.segments[-1].sequencer)
        if opts.with_local:
            for log in LOCAL_LOGS.values():
                await setup.logs.reconfigure(log, provider="local", sequencer=seq_node)
    say(f"sequencer of the replicated logs and node of the local logs: node {seq_node}")
    # The writers' client dials the sequencer's node first (appends are not forwarded).
    first = nodes[seq_node - 1].client_address
    addresses = [first] + [a for a in cluster.client_addresses if a != first]
    providers = [("replicated", REPLICATED_LOGS)] + (
        [("local", LOCAL_LOGS)] if opts.with_local else []
    )
    async with Client(
        addresses,
        cluster_name=cluster.cluster_name,
        timeout_s=30.0,
        attempt_timeout_s=10.0,
    ) as client:
        for _, by_size in providers:  # warm-up: connections, sequencers, stores
            for size, log in by_size.items():
                await client.logs.append(log, b"w" * size)
        for provider, by_size in providers:
            for size in RECORD_SIZES:
                log = by_size[size]
                record = b"r" * size
                labels = {"provider": provider, "record_bytes": size, "log": log}
                say(f"  latency, {provider}, {size} B ...")
                before = await probes.take()
                r = await _latency(client, log, opts.seconds, record)
                after = await probes.take()
                one = {**labels, "writers": 1, "batch": 1}
                figures += [
                    Figure("append_ops_per_s", r["ops"], "ops/s", "latency", one),
                    Figure("append_p50_ms", r["p50"], "ms", "latency", one),
                    Figure("append_p90_ms", r["p90"], "ms", "latency", one),
                    Figure("append_p99_ms", r["p99"], "ms", "latency", one),
                ]
                figures += Probes.figures(before, after, "latency", one)

                say(f"  pipelined, {provider}, {size} B ...")
                many = {**labels, "writers": opts.writers, "batch": opts.batch}
                before = await probes.take()
                r = await _pipelined(client, log, opts.seconds, record, opts.writers, opts.batch)
                after = await probes.take()
                figures += [
                    Figure("append_records_per_s", r["records"], "records/s", "pipelined", many),
                    Figure("append_mb_per_s", r["mb"], "MB/s", "pipelined", many),
                    Figure("append_batch_p50_ms", r["p50"], "ms", "pipelined", many),
                    Figure("append_batch_p99_ms", r["p99"], "ms", "pipelined", many),
                ]
                figures += Probes.figures(before, after, "pipelined", many)
                records = r["records"] * (after.at - before.at)
                figures.append(_cpu_per_record(before, after, "pipelined", many, records))
        # The per-record client API: many callers through one Appender (100 B, replicated).
        say("  appender, replicated, 100 B ...")
        log = REPLICATED_LOGS[100]
        labels = {"provider": "replicated", "record_bytes": 100, "log": log}
        labels |= {"writers": opts.callers, "batch": 1024}
        before = await probes.take()
        r = await _appender(client, log, opts.seconds, b"a" * 100, opts.callers)
        after = await probes.take()
        figures += [
            Figure("append_records_per_s", r["records"], "records/s", "appender", labels),
            Figure("append_mb_per_s", r["mb"], "MB/s", "appender", labels),
            Figure("append_requests", r["requests"], "requests", "appender", labels),
        ]
        figures += Probes.figures(before, after, "appender", labels)
        records = r["records"] * (after.at - before.at)
        figures.append(_cpu_per_record(before, after, "appender", labels, records))

        # Catch-up reads: everything appended to the replicated logs, from LSN 1.
        tails = {
            size: (await client.logs.find_tail(log)).tail for size, log in REPLICATED_LOGS.items()
        }
        for size, log in REPLICATED_LOGS.items():
            say(f"  read, one reader, {size} B ({tails[size] - 1} records) ...")
            labels = {"provider": "replicated", "record_bytes": size, "log": log, "readers": 1}
            before = await probes.take()
            started = time.perf_counter()
            count, size_read = await _read_range(
                client, log, 1, tails[size], started + opts.seconds, opts.read_records_max
            )
            elapsed = time.perf_counter() - started
            after = await probes.take()
            figures += [
                Figure("read_records_per_s", count / elapsed, "records/s", "read", labels),
                Figure("read_mb_per_s", size_read / elapsed / 1e6, "MB/s", "read", labels),
                Figure("read_records", count, "records", "read", labels),
            ]
            figures += Probes.figures(before, after, "read", labels)
            figures.append(_cpu_per_record(before, after, "read", labels, count))

    # Readers spread over the nodes: one per node, connected to that node only.
    log = REPLICATED_LOGS[100]
    tail = tails[100]
    say(f"  read, one reader per node, 100 B ({tail - 1} records in thirds) ...")
    bounds = [1 + (tail - 1) * i // len(nodes) for i in range(len(nodes) + 1)]
    readers = [
        Client([n.client_address], cluster_name=cluster.cluster_name, timeout_s=30.0) for n in nodes
    ]
    async with contextlib.AsyncExitStack() as stack:
        for reader in readers:
            await stack.enter_async_context(reader)
        labels = {"provider": "replicated", "record_bytes": 100, "log": log, "readers": len(nodes)}
        before = await probes.take()
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                _read_range(
                    reader,
                    log,
                    bounds[i],
                    bounds[i + 1],
                    started + opts.seconds,
                    opts.read_records_max,
                )
                for i, reader in enumerate(readers)
            )
        )
        elapsed = time.perf_counter() - started
        after = await probes.take()
    count = sum(c for c, _ in results)
    size_read = sum(s for _, s in results)
    figures += [
        Figure("read_records_per_s", count / elapsed, "records/s", "read_spread", labels),
        Figure("read_mb_per_s", size_read / elapsed / 1e6, "MB/s", "read_spread", labels),
        Figure("read_records", count, "records", "read_spread", labels),
    ]
    node_figures = Probes.figures(before, after, "read_spread", labels)
    figures.append(_cpu_per_record(before, after, "read_spread", labels, count))
    figures += node_figures
    served = {f.labels["node"]: f.value for f in node_figures if f.figure == "records_served"}
    total_served = sum(served.values()) or 1.0
    for node, value in served.items():
        share = {**labels, "node": node}
        figures.append(
            Figure("records_served_share", value / total_served, "", "read_spread", share)
        )
    seq_cpu = [
        f.value for f in node_figures if f.figure == "cpu_percent" and f.labels["node"] == seq_node
    ]
    figures.append(
        Figure(
            "sequencer_cpu_percent",
            seq_cpu[0] if seq_cpu else 0.0,
            "%",
            "read_spread",
            {**labels, "node": seq_node},
        )
    )
    return figures


# ------------------------------------------------------------------ command


def _budget_s(opts: Options) -> float:
    """A bound on the whole run: start-up, 13 phases, reconfigurations and drains."""
    return 120.0 + 13 * (opts.seconds + 10.0)


def run_bench(*, opts: Options, as_json: bool, out: Any = None) -> int:
    """The ``catenary bench log`` command body; returns the exit code."""
    stream = out if out is not None else sys.stdout

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    def progress(text: str) -> None:
        if not as_json:
            say(text)

    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    with contextlib.suppress(ImportError):
        import uvloop

        new_loop = uvloop.new_event_loop

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    root = Path(tempfile.mkdtemp(prefix="catenary-bench-"))
    cluster = LocalCluster(root, cluster_name="bench", settings=[f"logs.replication={REPLICATION}"])

    async def main() -> list[Figure]:
        async with asyncio.timeout(_budget_s(opts)):
            await cluster.start_cluster(3)
            return await bench_log(cluster, opts, progress)

    try:
        progress(f"starting 3 local nodes in {root} ...")
        with asyncio.Runner(loop_factory=new_loop) as runner:
            figures: list[Figure] = runner.run(main())
        pids = ",".join(str(n.pid) for n in cluster.nodes)
    finally:
        cluster.stop_all()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(root, ignore_errors=True)
    extra = {
        "nodes": 3,
        "replication": REPLICATION,
        "fsync": True,
        "seconds": opts.seconds,
        "pids": [n.pid for n in cluster.nodes],
    }
    if as_json:
        for f in figures:
            say(json.dumps(f.as_json(extra)))
        return 0
    for line in report(figures, opts, pids):
        say(line)
    return 0


def _find(figures: list[Figure], name: str, phase: str, **labels: Any) -> list[Figure]:
    return [
        f
        for f in figures
        if f.figure == name
        and f.phase == phase
        and all(f.labels.get(k) == v for k, v in labels.items())
    ]


def _one(figures: list[Figure], name: str, phase: str, **labels: Any) -> float:
    found = _find(figures, name, phase, **labels)
    return found[0].value if found else 0.0


def _nodes_text(figures: list[Figure], name: str, phase: str, fmt: str, **labels: Any) -> str:
    row = sorted(_find(figures, name, phase, **labels), key=lambda f: f.labels["node"])
    return "  ".join(f"n{f.labels['node']} {format(f.value, fmt)}" for f in row) or "-"


def report(figures: list[Figure], opts: Options, pids: str) -> list[str]:
    """The text output: the setup, one table per phase, per-node figures, targets."""
    lines = [
        f"log bench: 3 local catenary server processes (pids {pids}); replication "
        f"{REPLICATION}; fsync on; {opts.seconds:g} s per figure; one client process on the "
        "same 2-core machine (figures are noisy when other work shares it)",
        "",
        f"{'append':<28} {'provider':<10} {'record':>6} {'ops/s':>9} {'p50 ms':>7} "
        f"{'p90 ms':>7} {'p99 ms':>7}",
    ]
    providers = ["replicated", "local"] if opts.with_local else ["replicated"]
    for provider in providers:
        for size in RECORD_SIZES:
            k = {"provider": provider, "record_bytes": size}
            lines.append(
                f"{'1 writer awaiting each':<28} {provider:<10} {size:>4} B "
                f"{_one(figures, 'append_ops_per_s', 'latency', **k):>9.0f} "
                f"{_one(figures, 'append_p50_ms', 'latency', **k):>7.2f} "
                f"{_one(figures, 'append_p90_ms', 'latency', **k):>7.2f} "
                f"{_one(figures, 'append_p99_ms', 'latency', **k):>7.2f}"
            )
    lines += [
        "",
        f"{'append, pipelined':<28} {'provider':<10} {'record':>6} {'records/s':>10} "
        f"{'MB/s':>7} {'batch p50 ms':>12} {'p99 ms':>7} {'CPU us/rec':>10}",
    ]
    for provider in providers:
        for size in RECORD_SIZES:
            k = {"provider": provider, "record_bytes": size}
            label = f"{opts.writers} writers x {opts.batch} records"
            lines.append(
                f"{label:<28} {provider:<10} {size:>4} B "
                f"{_one(figures, 'append_records_per_s', 'pipelined', **k):>10.0f} "
                f"{_one(figures, 'append_mb_per_s', 'pipelined', **k):>7.1f} "
                f"{_one(figures, 'append_batch_p50_ms', 'pipelined', **k):>12.2f} "
                f"{_one(figures, 'append_batch_p99_ms', 'pipelined', **k):>7.2f} "
                f"{_one(figures, 'cpu_us_per_record', 'pipelined', **k):>10.2f}"
            )
    label = f"Appender, {opts.callers} callers"
    lines.append(
        f"{label:<28} {'replicated':<10} {100:>4} B "
        f"{_one(figures, 'append_records_per_s', 'appender'):>10.0f} "
        f"{_one(figures, 'append_mb_per_s', 'appender'):>7.1f} "
        f"{'':>12} {'':>7} {_one(figures, 'cpu_us_per_record', 'appender'):>10.2f} "
        f"({_one(figures, 'append_requests', 'appender'):.0f} requests)"
    )
    lines += [
        "",
        f"{'catch-up read':<28} {'record':>6} {'records':>9} {'records/s':>10} {'MB/s':>7} {'CPU us/rec':>10}",
    ]
    for size in RECORD_SIZES:
        lines.append(
            f"{'1 reader, all nodes':<28} {size:>4} B "
            f"{_one(figures, 'read_records', 'read', record_bytes=size):>9.0f} "
            f"{_one(figures, 'read_records_per_s', 'read', record_bytes=size):>10.0f} "
            f"{_one(figures, 'read_mb_per_s', 'read', record_bytes=size):>7.1f} "
            f"{_one(figures, 'cpu_us_per_record', 'read', record_bytes=size):>10.2f}"
        )
    lines.append(
        f"{'1 reader per node':<28} {100:>4} B "
        f"{_one(figures, 'read_records', 'read_spread'):>9.0f} "
        f"{_one(figures, 'read_records_per_s', 'read_spread'):>10.0f} "
        f"{_one(figures, 'read_mb_per_s', 'read_spread'):>7.1f} "
        f"{_one(figures, 'cpu_us_per_record', 'read_spread'):>10.2f}"
    )
    seq = _find(figures, "sequencer_cpu_percent", "read_spread")
    seq_node = seq[0].labels["node"] if seq else 0
    lines += [
        "  share of the records served, per node: "
        + _nodes_text(figures, "records_served_share", "read_spread", ".0%"),
        f"  CPU during the spread read (sequencer: n{seq_node}), % of one core: "
        + _nodes_text(figures, "cpu_percent", "read_spread", ".0f")
        + f"  client {_one(figures, 'client_cpu_percent', 'read_spread'):.0f}",
        "",
        "per phase: mean store persist (write + fdatasync of one group) per node, ms | "
        "CPU per node and client, % of one core | time a node's threads were runnable "
        "but waited for a CPU (other work on the machine), % of the phase:",
    ]
    phases: list[tuple[str, dict[str, Any], str]] = []
    for provider in providers:
        for size in RECORD_SIZES:
            for phase in ("latency", "pipelined"):
                k = {"provider": provider, "record_bytes": size}
                phases.append((phase, k, f"{phase} {provider} {size} B"))
    phases.append(("appender", {}, "appender replicated 100 B"))
    for size in RECORD_SIZES:
        phases.append(("read", {"record_bytes": size}, f"read 1 reader {size} B"))
    phases.append(("read_spread", {}, "read 1 reader per node 100 B"))
    for phase, k, label in phases:
        lines.append(
            f"  {label:<30} persist {_nodes_text(figures, 'persist_mean_ms', phase, '.2f', **k)}"
            f" | cpu {_nodes_text(figures, 'cpu_percent', phase, '.0f', **k)}"
            f"  client {_one(figures, 'client_cpu_percent', phase, **k):.0f}"
            f" | waited {_nodes_text(figures, 'cpu_wait_percent', phase, '.0f', **k)}"
        )
    p50 = _one(figures, "append_p50_ms", "latency", provider="replicated", record_bytes=100)
    pipelined = max(
        _one(figures, "append_records_per_s", "pipelined", provider="replicated", record_bytes=100),
        _one(figures, "append_records_per_s", "appender"),
    )
    read = max(
        _one(figures, "read_records_per_s", "read", record_bytes=100),
        _one(figures, "read_records_per_s", "read_spread"),
    )

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines += [
        "",
        "CPU us/rec: CPU time of the three nodes and the client per record (all processes,"
        " all threads): the cost of a record whatever share of the two cores other work left.",
        "",
        "targets (replicated, 100 B) | NATS JetStream on this machine (3 replicas, fsync each write):",
        f"  1 awaiting writer p50 {p50:.2f} ms, target <= {TARGET_P50_MS} ms: "
        f"{verdict(p50 <= TARGET_P50_MS)} | NATS p50 {NATS_P50_MS} ms",
        f"  pipelined {pipelined:,.0f} records/s, target >= {TARGET_PIPELINED_RPS:,}: "
        f"{verdict(pipelined >= TARGET_PIPELINED_RPS)} | NATS about {NATS_PIPELINED_RPS:,} msgs/s",
        f"  catch-up read {read:,.0f} records/s, target >= {TARGET_READ_RPS:,}: "
        f"{verdict(read >= TARGET_READ_RPS)} | NATS about {NATS_READ_RPS:,} msgs/s",
    ]
    return lines
