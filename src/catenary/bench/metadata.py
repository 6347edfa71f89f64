"""``catenary bench metadata``: metadata put and linearizable get throughput and latency.

Setup: without ``--address`` it starts its own cluster of ``catenary server``
processes on 127.0.0.1 (free ports, a temporary data directory, fsync on as
always), the way ``catenary dev`` does: node 1 provisions a cluster of one,
the others join through it and become voters.  Every process it started is
stopped by PID afterwards (SIGTERM, then SIGKILL after a bound).

For each concurrency (1, 16, 64 by default) it runs puts, then linearizable
gets of the keys just written, each for ``--seconds``; the client tasks share
one ``Client`` (one multiplexed connection per node).  Latency is measured
per operation on the client (so it includes the client's own overhead, on the
same machine as the nodes); ops/s is completed operations over wall time.

``LocalCluster`` is also what the end-to-end tests use to run real nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from catenary.client import CatenaryError, Client

_LAUNCH = "import sys; from catenary.cli.main import main; sys.argv[0] = 'catenary'; main()"
STOP_GRACE_S_DEFAULT = 5.0


def free_port() -> int:
    """A port free right now on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class NodeProcess:
    """One ``catenary server`` process of a ``LocalCluster`` (``index`` is 1-based launch order)."""

    index: int
    data_dir: Path
    peer_address: str
    client_address: str
    admin_address: str
    seeds: list[str]
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"node{self.index}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class LocalCluster:
    """Real ``catenary server`` processes on loopback, controlled one by one by PID."""

    def __init__(
        self,
        root: Path,
        *,
        cluster_name: str = "local",
        settings: Sequence[str] = (),
        stop_grace_s: float = STOP_GRACE_S_DEFAULT,
    ) -> None:
        self.root = root
        self.cluster_name = cluster_name
        self.settings = list(settings)  # "--set option=value" for every node
        self.stop_grace_s = stop_grace_s
        self.nodes: list[NodeProcess] = []

    @property
    def client_addresses(self) -> list[str]:
        return [n.client_address for n in self.nodes]

    def node(self, index: int) -> NodeProcess:
        return self.nodes[index - 1]

    def add_node(self, *, seeds: Sequence[str] = (), extra_args: Sequence[str] = ()) -> NodeProcess:
        """Define and start one more node (with ``seeds`` it joins; without, it provisions)."""
        index = len(self.nodes) + 1
        node = NodeProcess(
            index=index,
            data_dir=self.root / f"node{index}",
            peer_address=f"127.0.0.1:{free_port()}",
            client_address=f"127.0.0.1:{free_port()}",
            admin_address=f"127.0.0.1:{free_port()}",
            seeds=list(seeds),
            extra_args=list(extra_args),
        )
        self.nodes.append(node)
        self.start(node)
        return node

    def command(self, node: NodeProcess) -> list[str]:
        args = [
            sys.executable,
            "-c",
            _LAUNCH,
            "server",
            "--cluster-name",
            self.cluster_name,
            "--data-dir",
            str(node.data_dir),
            "--peer-address",
            node.peer_address,
            "--client-address",
            node.client_address,
            "--admin-address",
            node.admin_address,
        ]
        for seed in node.seeds:
            args += ["--seed", seed]
        if node.seeds:
            args.append("--no-auto-provision")
        for setting in self.settings:
            args += ["--set", setting]
        return args + node.extra_args

    def start(self, node: NodeProcess) -> None:
        """(Re)start ``node`` on its data directory and addresses."""
        assert not node.running(), f"node {node.index} is already running"
        node.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with node.log_path.open("ab") as log:
            node.process = subprocess.Popen(
                self.command(node),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def kill(self, node: NodeProcess, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the node's process (by PID) and, for SIGKILL, reap it."""
        if node.process is None or node.process.poll() is not None:
            return
        os.kill(node.process.pid, sig)
        if sig == signal.SIGKILL:
            node.process.wait(timeout=10)

    def stop(self, node: NodeProcess) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_grace_s``; returns the exit code."""
        if node.process is None:
            return None
        if node.process.poll() is None:
            os.kill(node.process.pid, signal.SIGTERM)
            try:
                node.process.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                os.kill(node.process.pid, signal.SIGKILL)
                node.process.wait(timeout=10)
        return node.process.returncode

    def stop_all(self) -> None:
        """Stop every process this cluster started (by PID), in parallel."""
        running = [n for n in self.nodes if n.running()]
        for node in running:
            assert node.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        for node in running:
            assert node.process is not None
            try:
                node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.process.pid, signal.SIGKILL)
                node.process.wait(timeout=10)

    def describe(self) -> dict[str, Any]:
        return {
            "cluster_name": self.cluster_name,
            "nodes": [
                {
                    "index": n.index,
                    "pid": n.process.pid if n.process is not None else 0,
                    "peer_address": n.peer_address,
                    "client_address": n.client_address,
                    "admin_address": n.admin_address,
                }
                for n in self.nodes
            ],
        }

    # ------------------------------------------------------------- waiting

    async def wait_serving(self, node: NodeProcess, *, timeout_s: float = 20.0) -> None:
        """Until ``node`` answers a status with a known leader in a provisioned cluster."""
        await self._wait(
            lambda s: s.provisioned and s.leader != 0, [node.client_address], node, timeout_s
        )

    async def wait_voters(self, count: int, *, timeout_s: float = 30.0) -> None:
        """Until the leader reports ``count`` voters (learners promoted)."""
        live = [n for n in self.nodes if n.running()]
        await self._wait(
            lambda s: (
                s.raft_state == "leader" and sum(1 for x in s.members if x.role == "voter") == count
            ),
            [n.client_address for n in live],
            None,
            timeout_s,
        )

    async def _wait(
        self,
        ready: Any,
        addresses: list[str],
        node: NodeProcess | None,
        timeout_s: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last = "no answer yet"
        async with Client(
            addresses, cluster_name=self.cluster_name, timeout_s=1.0, connect_timeout_s=0.5
        ) as client:
            while loop.time() < deadline:
                if (
                    node is not None
                    and node.process is not None
                    and node.process.poll() is not None
                ):
                    raise RuntimeError(
                        f"node {node.index} exited with {node.process.returncode}; "
                        f"log tail:\n{node.log_text()[-2000:]}"
                    )
                for address in addresses:
                    try:
                        status = await client.status(address, timeout_s=0.5)
                    except CatenaryError as exc:
                        last = f"{address}: {exc}"
                        continue
                    if ready(status):
                        return
                    last = f"{address}: {status}"
                await asyncio.sleep(0.05)
        raise TimeoutError(f"cluster not ready after {timeout_s}s; last: {last}")

    async def start_cluster(self, size: int, *, timeout_s: float = 60.0) -> None:
        """Node 1 provisions a cluster of one; the others join through it and become voters."""
        first = self.add_node()
        await self.wait_serving(first, timeout_s=timeout_s)
        for _ in range(size - 1):
            self.add_node(seeds=[first.client_address])
        await self.wait_voters(size, timeout_s=timeout_s)


# ------------------------------------------------------------------ bench


@dataclass(frozen=True)
class Figure:
    figure: str
    value: float
    unit: str
    clients: int


def _percentile_ms(samples_s: list[float], q: float) -> float:
    if not samples_s:
        return 0.0
    ordered = sorted(samples_s)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


async def _phase(
    client: Client, kind: str, clients: int, seconds: float, value: bytes, keys_per_client: int
) -> list[Figure]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop_at = time.perf_counter() + seconds
    metadata = client.metadata

    async def worker(w: int) -> None:
        samples = latencies[w]
        i = 0
        clock = time.perf_counter  # uvloop's loop.time() has only millisecond resolution
        while True:
            key = f"/bench/{clients}/{w}/{i % keys_per_client}"
            start = clock()
            if start >= stop_at:
                return
            if kind == "put":
                await metadata.put(key, value)
            else:
                await metadata.get(key)
            samples.append(clock() - start)
            i += 1

    started = time.perf_counter()
    cpu_started = time.process_time()
    await asyncio.gather(*(worker(w) for w in range(clients)))
    elapsed = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    merged = [x for samples in latencies for x in samples]
    return [
        Figure(f"{kind}_ops_per_s", len(merged) / elapsed, "ops/s", clients),
        Figure(f"{kind}_p50_ms", _percentile_ms(merged, 0.50), "ms", clients),
        Figure(f"{kind}_p99_ms", _percentile_ms(merged, 0.99), "ms", clients),
        Figure(f"{kind}_mean_ms", sum(merged) / max(1, len(merged)) * 1000.0, "ms", clients),
        Figure(f"{kind}_seconds", elapsed, "s", clients),
        # The client process's CPU (all threads, this loop included) per operation.
        Figure(f"{kind}_client_cpu_us", cpu_s / max(1, len(merged)) * 1e6, "us/op", clients),
    ]


async def bench_metadata(
    addresses: list[str],
    *,
    cluster_name: str | None,
    seconds: float,
    concurrency: Sequence[int],
    value_bytes: int,
    ops: Sequence[str] = ("put", "get"),
    admin_addresses: Sequence[str] = (),
) -> tuple[list[Figure], int]:
    """Run every phase against ``addresses``; returns the figures and the voter count.

    It also reports, per phase and node (``admin_addresses``; by default those the
    cluster's nodes advertise, in node-id order, so ``--address`` clusters get them
    too; a node whose ``/metrics`` does not answer is left out), from
    each node's ``/metrics`` read before and after the phase: the mean time the
    node took to persist one Ready (write + fdatasync, its
    ``catenary_raft_persist_seconds`` histogram), what the disk costs under that
    load; the node's CPU per operation (``process_cpu_seconds_total``); and the
    mean time the nodes spent on a request, from decoding it to handing its reply
    to the socket (``catenary_request_seconds``): the client's mean latency
    minus that is what the client process and the loopback hops cost.
    """
    value = b"v" * value_bytes
    async with Client(addresses, cluster_name=cluster_name, timeout_s=10.0) as client:
        servers = await client.servers()
        voters = sum(1 for x in servers.members if x.role == "voter")
        if not admin_addresses:
            admin_addresses = [
                n.admin_address
                for n in sorted(await client.nodes(), key=lambda n: n.node)
                if n.state != "removed"
            ]
        figures: list[Figure] = []
        if admin_addresses:
            figures += await _idle_figures(admin_addresses, IDLE_SECONDS)
        for clients in concurrency:
            # Warm-up: connections open, keys exist for the get phase.
            await asyncio.gather(
                *(client.metadata.put(f"/bench/{clients}/{w}/0", value) for w in range(clients))
            )
            for kind, keys_per_client in (("put", 64), ("get", 1)):
                if kind not in ops:
                    continue
                before = await asyncio.to_thread(_scrape, admin_addresses, kind)
                phase = await _phase(client, kind, clients, seconds, value, keys_per_client)
                after = await asyncio.to_thread(_scrape, admin_addresses, kind)
                figures += phase
                figures += _node_figures(
                    kind, clients, phase, before, after, on_this_machine=_loopback(addresses)
                )
        return figures, voters


@dataclass(frozen=True)
class _NodeTotals:
    """Running totals read from one node's ``/metrics`` (``None``: unreachable)."""

    persist_s: float
    persists: float
    cpu_s: float
    request_s: float
    requests: float
    readies: float


IDLE_SECONDS = 2.0


async def _idle_figures(admin_addresses: Sequence[str], seconds: float) -> list[Figure]:
    """Each node's CPU while no request is sent (its ticks and timers): the share of one
    processor every operation's figures below also carry."""
    before = await asyncio.to_thread(_scrape, admin_addresses, "put")
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    after = await asyncio.to_thread(_scrape, admin_addresses, "put")
    elapsed = time.perf_counter() - started
    figures = []
    for node, (b, a) in enumerate(zip(before, after, strict=True), 1):
        if a is not None and b is not None:
            share = (a.cpu_s - b.cpu_s) / elapsed * 100.0
            figures.append(Figure(f"idle_cpu_pct_node{node}", share, "%", 0))
    return figures


def _loopback(addresses: Sequence[str]) -> bool:
    """Every node is reached on this machine's loopback (so its CPU is this machine's)."""
    return all(a.startswith(("127.", "localhost:", "[::1]:")) for a in addresses)


def _scrape(admin_addresses: Sequence[str], kind: str) -> list[_NodeTotals | None]:
    totals: list[_NodeTotals | None] = []
    wanted = {
        "catenary_raft_persist_seconds_sum": "persist_s",
        "catenary_raft_persist_seconds_count": "persists",
        "process_cpu_seconds_total": "cpu_s",
        f'catenary_request_seconds_sum{{kind="{kind}"}}': "request_s",
        f'catenary_request_seconds_count{{kind="{kind}"}}': "requests",
        "catenary_raft_ready_batches_total": "readies",
    }
    for address in admin_addresses:
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=2.0) as response:
                text = response.read().decode()
        except OSError:
            totals.append(None)
            continue
        found = dict.fromkeys(wanted.values(), 0.0)
        for line in text.splitlines():
            name, _, number = line.rpartition(" ")
            field_name = wanted.get(name)
            if field_name is not None:
                found[field_name] = float(number)
        totals.append(_NodeTotals(**found))
    return totals


def _node_figures(
    kind: str,
    clients: int,
    phase: list[Figure],
    before: list[_NodeTotals | None],
    after: list[_NodeTotals | None],
    *,
    on_this_machine: bool,
) -> list[Figure]:
    """Per node: persist mean and CPU per operation; over the nodes: the mean time a
    request spent in a node, and the CPU per operation of the client and nodes together
    (with the share of this machine's processors they kept busy, when the nodes run on
    it)."""
    by_name = {f.figure: f.value for f in phase}
    operations = by_name[f"{kind}_ops_per_s"] * by_name[f"{kind}_seconds"]
    if not before or operations <= 0:
        return []
    figures: list[Figure] = []
    total_cpu_us = by_name[f"{kind}_client_cpu_us"]
    request_s = requests = 0.0
    complete = True
    for node, (b, a) in enumerate(zip(before, after, strict=True), 1):
        if a is None or b is None:
            complete = False
            continue
        if a.persists > b.persists:
            mean_ms = (a.persist_s - b.persist_s) / (a.persists - b.persists) * 1000.0
            figures.append(Figure(f"{kind}_persist_mean_ms_node{node}", mean_ms, "ms", clients))
        cpu_us = (a.cpu_s - b.cpu_s) / operations * 1e6
        total_cpu_us += cpu_us
        figures.append(Figure(f"{kind}_cpu_us_node{node}", cpu_us, "us/op", clients))
        readies = (a.readies - b.readies) / operations
        figures.append(Figure(f"{kind}_readies_per_op_node{node}", readies, "readies/op", clients))
        request_s += a.request_s - b.request_s
        requests += a.requests - b.requests
    if requests > 0:
        node_ms = request_s / requests * 1000.0
        figures.append(Figure(f"{kind}_node_mean_ms", node_ms, "ms", clients))
        outside = by_name[f"{kind}_mean_ms"] - node_ms
        figures.append(Figure(f"{kind}_outside_nodes_mean_ms", outside, "ms", clients))
    if complete:
        figures.append(Figure(f"{kind}_cpu_us_total", total_cpu_us, "us/op", clients))
    if complete and on_this_machine:
        # The share of the machine's processors the client and nodes kept busy.
        busy = total_cpu_us * by_name[f"{kind}_ops_per_s"] / 1e6 / (os.cpu_count() or 1)
        figures.append(Figure(f"{kind}_cpu_busy_pct", busy * 100.0, "%", clients))
    return figures


def run_bench(
    *,
    address: Sequence[str],
    seconds: float,
    as_json: bool,
    nodes: int = 3,
    concurrency: Sequence[int] = (1, 16, 64),
    value_bytes: int = 100,
    cluster_name: str | None = None,
    ops: Sequence[str] = ("put", "get"),
    settings: Sequence[str] = (),
    base_dir: str | None = None,
    out: Any = None,
) -> int:
    """The ``catenary bench metadata`` command body; returns the exit code."""
    stream = out if out is not None else sys.stdout

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    with contextlib.suppress(ImportError):
        import uvloop

        new_loop = uvloop.new_event_loop

    def run(coro: Any) -> Any:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            return runner.run(coro)

    root: Path | None = None
    cluster: LocalCluster | None = None
    try:
        admin_addresses: list[str] = []
        if address:
            addresses = list(address)
            setup = f"cluster at {','.join(addresses)}"
        else:
            root = Path(tempfile.mkdtemp(prefix="catenary-bench-", dir=base_dir))
            cluster = LocalCluster(root, cluster_name="bench", settings=settings)
            cluster_name = cluster.cluster_name
            if not as_json:
                say(f"starting {nodes} local nodes in {root} ...")
            run(cluster.start_cluster(nodes))
            addresses = cluster.client_addresses
            admin_addresses = [n.admin_address for n in cluster.nodes]
            pids = ",".join(str(n.pid) for n in cluster.nodes)
            setup = f"{nodes} local catenary server processes (pids {pids}; data in {root})"
        figures, voters = run(
            bench_metadata(
                addresses,
                cluster_name=cluster_name,
                seconds=seconds,
                concurrency=concurrency,
                value_bytes=value_bytes,
                ops=ops,
                admin_addresses=admin_addresses,
            )
        )
    finally:
        if cluster is not None:
            cluster.stop_all()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    extra = {
        "nodes": voters,
        "fsync": True,
        "value_bytes": value_bytes,
        "seconds": seconds,
        "client_tasks_share_one_client": True,
        "settings": list(settings),
    }
    if as_json:
        for f in figures:
            say(
                msgspec.json.encode(
                    {
                        "figure": f.figure,
                        "value": round(f.value, 3),
                        "unit": f.unit,
                        "clients": f.clients,
                        **extra,
                    }
                ).decode()
            )
        return 0
    say(
        f"metadata bench: {setup}; {voters} voters; fsync on; value {value_bytes} B; "
        f"{seconds:g} s per figure; one client process on the same machine"
        + (f"; nodes set {' '.join(settings)}" if settings else "")
    )
    say(
        f"{'operation':<18} {'clients':>7} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'client CPU us/op':>17}"
    )
    by_key = {(f.figure, f.clients): f.value for f in figures}
    for clients in concurrency:
        for kind, label in (("put", "put"), ("get", "get (linearizable)")):
            if kind not in ops:
                continue
            say(
                f"{label:<18} {clients:>7} {by_key[(f'{kind}_ops_per_s', clients)]:>10.0f} "
                f"{by_key[(f'{kind}_p50_ms', clients)]:>8.2f} {by_key[(f'{kind}_p99_ms', clients)]:>8.2f} "
                f"{by_key[(f'{kind}_client_cpu_us', clients)]:>17.1f}"
            )
    persist = [f for f in figures if "_persist_mean_ms_node" in f.figure]
    if persist:
        say("mean persist of one job (write + fdatasync) per node during each figure, ms:")
        for clients in concurrency:
            for kind in ("put", "get"):
                row = [f for f in persist if f.clients == clients and f.figure.startswith(kind)]
                if row:
                    nodes_text = "  ".join(
                        f"n{f.figure.rsplit('node', 1)[1]} {f.value:.2f}" for f in row
                    )
                    say(f"  {kind:<4} {clients:>3} clients: {nodes_text}")
    _say_where_time_goes(say, figures, concurrency)
    return 0


def _say_where_time_goes(
    say: Callable[[str], None], figures: Sequence[Figure], concurrency: Sequence[int]
) -> None:
    """The mean latency split into time in the nodes and outside them, and the CPU
    per operation of each process (read from the nodes' ``/metrics``)."""
    by_key = {(f.figure, f.clients): f.value for f in figures}
    idle = [f for f in figures if f.figure.startswith("idle_cpu_pct_node")]
    if idle:
        say(
            f"idle nodes ({IDLE_SECONDS:g} s without requests, before the first figure), "
            "CPU as a share of one processor: "
            + "  ".join(f"n{f.figure.rsplit('node', 1)[1]} {f.value:.1f}%" for f in idle)
        )
    rows = [
        (kind, clients)
        for clients in concurrency
        for kind in ("put", "get")
        if (f"{kind}_node_mean_ms", clients) in by_key
    ]
    if not rows:
        return
    nodes = sorted(
        {int(f.figure.rsplit("node", 1)[1]) for f in figures if "_cpu_us_node" in f.figure}
    )
    say(
        "where the time goes: mean latency at the client = mean time in a node "
        "(request decoded to reply handed to the socket) + outside the nodes "
        "(client process, loopback); CPU per operation of each process, and the share "
        f"of the machine's {os.cpu_count()} processors they kept busy:"
    )
    say(
        f"  {'op':<4} {'clients':>7} {'mean ms':>8} {'in node':>8} {'outside':>8}   "
        + "CPU us/op: "
        + f"{'client':>7} "
        + " ".join(f"{'n' + str(n):>6}" for n in nodes)
        + f" {'total':>7} {'busy':>6}"
    )
    for kind, clients in rows:
        node_cpu = " ".join(
            f"{by_key.get((f'{kind}_cpu_us_node{n}', clients), float('nan')):>6.1f}" for n in nodes
        )
        total = by_key.get((f"{kind}_cpu_us_total", clients), float("nan"))
        busy = by_key.get((f"{kind}_cpu_busy_pct", clients), float("nan"))
        say(
            f"  {kind:<4} {clients:>7} {by_key[(f'{kind}_mean_ms', clients)]:>8.2f} "
            f"{by_key[(f'{kind}_node_mean_ms', clients)]:>8.2f} "
            f"{by_key[(f'{kind}_outside_nodes_mean_ms', clients)]:>8.2f}   "
            f"           {by_key[(f'{kind}_client_cpu_us', clients)]:>7.1f} {node_cpu} "
            f"{total:>7.1f} {busy:>5.0f}%"
        )
    say("  Raft Readies (host-loop passes that persist, send or apply) per operation on each node:")
    for kind, clients in rows:
        readies = "  ".join(
            f"n{n} {by_key.get((f'{kind}_readies_per_op_node{n}', clients), float('nan')):.3f}"
            for n in nodes
        )
        say(f"  {kind:<4} {clients:>7}   {readies}")
