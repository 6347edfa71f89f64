"""Recovery after a heal: cut one node off, heal the cut, time how long until it is back.

Theory of operation
-------------------
1. One cluster per run (``FaultCluster`` in network namespaces, the HTTP admin
   API on every node), and a steady load through a client in the root
   namespace that knows every node: puts and linearizable gets, so the cluster
   commits all through the cut and the cut node falls behind.
2. The cases are the product of ``targets`` (``follower``: a node that does
   not lead; ``leader``: the leader when the cut starts), ``directions``
   (``both``: every packet between the node and its peers dropped; ``out``:
   the node's packets to its peers dropped; ``in``: its peers' packets to it
   dropped) and ``cuts_s``, done one after the other on the same cluster.
   Cuts are ``tc`` filters between node addresses (``net.Network.cut``): the
   test process still reaches every node, so the cut node is watched all along.
3. During the cut every node's ``/metrics`` is read every ``poll_s``: a cut
   leader's step-down and the election of another are timed from the cut.
4. The heal.  Just before it, the leader's commit index ``C`` is read; the
   clock starts when the first ``tc`` filter is deleted.  Then, polling every
   ``poll_s`` (each figure is the time the answer that showed it arrived):

   - ``links``: every peer link between the cut node and the others is up, on
     both sides (``catenary_peer_link_up``);
   - ``leader``: the cut node no longer leads (unless it leads again by a new
     election), is on the leader's term and names the leader;
   - ``caught-up``: that, and its applied index is at least ``C``;
   - ``all``: every node is on the leader's term, names it, and applied ``C``;
   - ``write`` / ``get``: a put, and a linearizable get, sent to the cut node
     by a new client that knows only that node succeed (a follower redirects
     to the leader: it must know it).  An attempt starts every ``poll_s``, each
     with its own client, so one attempt stuck on a dead connection does not
     hide a later one that succeeds.

   A figure not reached within ``bound_s`` is missing (``None``) and fails the
   run.  Before the next case the cluster must be whole again (every node
   caught up, every link up), then ``settle_s`` passes.
5. Everything started is stopped in ``finally`` (and ``atexit``) by the
   cluster and the network: processes by PID, namespaces, veths, the bridge.
   Every read after each heal is written to ``heal-trace.txt`` in the run's
   directory (kept with ``--data-dir``, next to each node's ``node.log``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from catenary.client import Client
from catenary.client.errors import CatenaryError
from catenary.testing.faults import net as net_module
from catenary.testing.faults.cluster import CLUSTER_NAME, ClusterError, FaultCluster

TARGETS = ("follower", "leader")
DIRECTIONS = ("both", "out", "in")
_SAMPLE = re.compile(r'^(catenary_[a-z_]+)(?:\{peer="(\d+)"\})? ([-+0-9.eE]+|NaN)$', re.M)


@dataclass
class HealOptions:
    nodes: int = 3
    cuts_s: tuple[float, ...] = (5.0,)
    targets: tuple[str, ...] = ("follower",)
    directions: tuple[str, ...] = ("both",)
    bound_s: float = 30.0  # per heal: a figure not reached by then is missing
    settle_s: float = 2.0  # calm between a recovered heal and the next cut
    poll_s: float = 0.05
    writers: int = 2
    directory: Path | None = None  # default: a temporary directory, removed when every heal ok
    settings: tuple[str, ...] = ()  # ``--set`` for every node

    def cases(self) -> list[tuple[str, str, float]]:
        return list(itertools.product(self.targets, self.directions, self.cuts_s))

    def time_bound_s(self) -> float:
        """How long the whole run may take: forming, every case, stopping."""
        per_case = sum(c + 2 * self.bound_s + self.settle_s + 15.0 for _, _, c in self.cases())
        return 120.0 + per_case


@dataclass
class Sample:
    """One node's figures from one read of its ``/metrics``."""

    at: float  # seconds after the heal (or the cut), when the answer arrived
    term: int
    leader: int
    is_leader: bool
    commit: int
    applied: int
    links: dict[int, bool]  # peer -> link up


@dataclass
class HealResult:
    nodes: int
    target: str
    direction: str
    cut_s: float
    node: int = 0  # the node cut off
    leader_before: int = 0  # the leader when the cut started
    leader_after: int = 0  # the leader when the node was caught up
    step_down_s: float | None = None  # leader only: from the cut until it no longer led
    new_leader_s: float | None = None  # leader only: from the cut until another node led
    links_down_at_heal: int = 0  # links of the node that were down when the heal began
    behind_at_heal: int = 0  # entries the node lacked of the leader's commit at the heal
    heal_ms: float = 0.0  # time the tc commands of the heal took
    links_s: float | None = None
    leader_s: float | None = None
    caught_up_s: float | None = None
    all_s: float | None = None
    write_s: float | None = None
    get_s: float | None = None
    load_ok: int = 0  # the steady load's operations during the cut and the measurement
    load_failed: int = 0

    FIGURES = ("links_s", "leader_s", "caught_up_s", "all_s", "write_s", "get_s")

    @property
    def worst_s(self) -> float | None:
        figures: list[float | None] = [getattr(self, name) for name in self.FIGURES]
        known = [f for f in figures if f is not None]
        return max(known) if len(known) == len(figures) else None

    @property
    def ok(self) -> bool:
        return self.worst_s is not None


@dataclass
class HealReport:
    nodes: int
    results: list[HealResult] = field(default_factory=list)
    directory: str = ""
    elapsed_s: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.results) and all(r.ok for r in self.results)

    def table(self) -> str:
        return format_table(self.results)

    def to_json(self) -> str:
        rows = []
        for result in self.results:
            row = asdict(result)
            row["worst_s"] = result.worst_s
            rows.append(row)
        data = {
            "nodes": self.nodes,
            "ok": self.ok,
            "error": self.error,
            "elapsed_s": round(self.elapsed_s, 1),
            "directory": self.directory,
            "heals": rows,
        }
        return json.dumps(data, indent=2)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(results: list[HealResult]) -> str:
    """One line per heal; figures in seconds after the heal (step-down: after the cut)."""
    header = (
        f"{'nodes':>5} {'target':<8} {'cut':<4} {'secs':>4} {'node':>4} {'behind':>6} "
        f"{'stepdown':>8} {'links':>6} {'leader':>6} {'caughtup':>8} {'all':>6} "
        f"{'write':>6} {'get':>6} {'worst':>6}"
    )
    lines = [header]
    for r in results:
        lines.append(
            f"{r.nodes:>5} {r.target:<8} {r.direction:<4} {r.cut_s:>4g} {'n' + str(r.node):>4} "
            f"{r.behind_at_heal:>6} {_figure(r.step_down_s):>8} {_figure(r.links_s):>6} "
            f"{_figure(r.leader_s):>6} {_figure(r.caught_up_s):>8} {_figure(r.all_s):>6} "
            f"{_figure(r.write_s):>6} {_figure(r.get_s):>6} {_figure(r.worst_s):>6}"
        )
    return "\n".join(lines)


def parse_metrics(text: str, at: float) -> Sample:
    values: dict[str, float] = {}
    links: dict[int, bool] = {}
    for name, peer, value in _SAMPLE.findall(text):
        if name == "catenary_peer_link_up" and peer:
            links[int(peer)] = float(value) >= 1.0
        elif not peer:
            values[name] = float(value)
    return Sample(
        at=at,
        term=int(values.get("catenary_raft_term", 0)),
        leader=int(values.get("catenary_raft_leader", 0)),
        is_leader=values.get("catenary_raft_is_leader", 0.0) >= 1.0,
        commit=int(values.get("catenary_raft_commit_index", 0)),
        applied=int(values.get("catenary_raft_applied_index", 0)),
        links=links,
    )


class _Load:
    """Puts and linearizable gets through a client that knows every node, until stopped."""

    def __init__(self, addresses: list[str], writers: int) -> None:
        self.addresses = addresses
        self.writers = writers
        self.ok = 0
        self.failed = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: Client | None = None

    def start(self) -> None:
        self._client = Client(
            self.addresses, cluster_name=CLUSTER_NAME, timeout_s=2.0, attempt_timeout_s=0.5
        )
        self._tasks = [asyncio.ensure_future(self._writer(w)) for w in range(self.writers)]

    async def _writer(self, worker: int) -> None:
        assert self._client is not None
        key = f"/heal/load{worker}"
        sequence = 0
        while not self._stop.is_set():
            sequence += 1
            try:
                await self._client.metadata.put(key, b"%d" % sequence)
                self.ok += 1
                await self._client.metadata.get(key)
                self.ok += 1
            except CatenaryError:
                self.failed += 1
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()


class HealRun:
    def __init__(self, options: HealOptions, out: Callable[[str], None]) -> None:
        self.options = options
        self.out = out
        self.cluster: FaultCluster | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ids: dict[int, int] = {}  # node id -> cluster index (equal when formed in order)
        self._case = 0
        self.trace: list[str] = []  # every read after each heal, written to heal-trace.txt

    # ------------------------------------------------------------ reading

    async def sample(self, index: int, started: float) -> Sample | None:
        assert self.cluster is not None and self.session is not None
        node = self.cluster.node(index)
        try:
            async with self.session.get(
                f"http://{node.admin_address}/metrics",
                timeout=aiohttp.ClientTimeout(total=1.0),
            ) as response:
                if response.status != 200:
                    return None
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
        return parse_metrics(text, time.monotonic() - started)

    async def samples(self, started: float) -> dict[int, Sample | None]:
        assert self.cluster is not None
        indexes = [n.index for n in self.cluster.nodes]
        got = await asyncio.gather(*(self.sample(i, started) for i in indexes))
        return dict(zip(indexes, got, strict=True))

    @staticmethod
    def leader_of(samples: dict[int, Sample | None], exclude: int = 0) -> Sample | None:
        best: Sample | None = None
        for index, sample in samples.items():
            if index == exclude or sample is None or not sample.is_leader:
                continue
            if best is None or sample.term > best.term:
                best = sample
        return best

    # ------------------------------------------------------------- cases

    async def whole(self, timeout_s: float) -> Sample:
        """Wait until every node names one leader on its term, has applied what that
        leader had committed one read earlier, and has every peer link up."""
        assert self.cluster is not None
        deadline = time.monotonic() + timeout_s
        last: object = None
        wanted = -1  # the leader's commit index at the previous read
        while time.monotonic() < deadline:
            samples = await self.samples(time.monotonic())
            leader = self.leader_of(samples)
            if leader is not None and wanted >= 0 and self._whole(samples, leader, wanted):
                return leader
            wanted = leader.commit if leader is not None else -1
            last = samples
            await asyncio.sleep(0.1)
        raise ClusterError(f"the cluster was not whole within {timeout_s:g} s; last: {last}")

    def _whole(self, samples: dict[int, Sample | None], leader: Sample, wanted: int) -> bool:
        assert self.cluster is not None
        for index, s in samples.items():
            peers = [self.ids[n.index] for n in self.cluster.nodes if n.index != index]
            if s is None or s.term != leader.term or s.leader != leader.leader:
                return False
            if s.applied < wanted or not all(s.links.get(p, False) for p in peers):
                return False
        return True

    def _cut(self, target: int, direction: str) -> None:
        assert self.cluster is not None and self.cluster.network is not None
        net = self.cluster.network
        others = [n.index for n in self.cluster.nodes if n.index != target]
        if direction == "both":
            net.split([[target], others])
        elif direction == "out":
            for peer in others:
                net.cut(target, peer)
        else:
            for peer in others:
                net.cut(peer, target)

    async def case(self, target_kind: str, direction: str, cut_s: float, load: _Load) -> HealResult:
        assert self.cluster is not None and self.cluster.network is not None
        options = self.options
        result = HealResult(self.options.nodes, target_kind, direction, cut_s)
        leader = await self.whole(options.bound_s * 2)
        leader_index = leader.leader
        result.leader_before = leader_index
        if target_kind == "leader":
            target = leader_index
        else:
            followers = [n.index for n in self.cluster.nodes if n.index != leader_index]
            target = followers[self._case % len(followers)]
        self._case += 1
        result.node = target
        target_id = self.ids[target]
        ok0, failed0 = load.ok, load.failed
        self.out(
            f"cut n{target} ({target_kind}, {direction}) for {cut_s:g} s; leader n{leader_index}"
        )
        # The cut: watch who leads while it lasts.
        cut_at = time.monotonic()
        self._cut(target, direction)
        while time.monotonic() - cut_at < cut_s:
            samples = await self.samples(cut_at)
            own = samples.get(target)
            if (
                target_kind == "leader"
                and result.step_down_s is None
                and own is not None
                and not own.is_leader
            ):
                result.step_down_s = own.at
            other = self.leader_of(samples, exclude=target)
            if (
                target_kind == "leader"
                and result.new_leader_s is None
                and other is not None
                and other.term > leader.term
            ):
                result.new_leader_s = other.at
            await asyncio.sleep(max(0.0, min(0.1, cut_s - (time.monotonic() - cut_at))))
        # The heal: the leader's commit index just before it, then the clock starts.
        before = await self.samples(time.monotonic())
        current = self.leader_of(before, exclude=target) or self.leader_of(before)
        commit = current.commit if current is not None else leader.commit
        own_before = before.get(target)
        if own_before is not None:
            result.behind_at_heal = max(0, commit - own_before.applied)
            result.links_down_at_heal = sum(1 for up in own_before.links.values() if not up)
        self.trace.append(
            f"heal of n{target} ({target_kind}, {direction}, {cut_s:g} s) at "
            f"{time.time():.3f}, leader commit {commit}"
        )
        healed_at = time.monotonic()
        self.cluster.network.heal()
        result.heal_ms = (time.monotonic() - healed_at) * 1000.0
        await self._measure(result, target, target_id, commit, healed_at)
        result.load_ok, result.load_failed = load.ok - ok0, load.failed - failed0
        self.out(
            f"  healed n{target}: links {_figure(result.links_s)} s, leader "
            f"{_figure(result.leader_s)} s, caught up {_figure(result.caught_up_s)} s, all "
            f"{_figure(result.all_s)} s, write {_figure(result.write_s)} s, get "
            f"{_figure(result.get_s)} s ({result.behind_at_heal} entries behind at the heal)"
        )
        return result

    async def _measure(
        self, result: HealResult, target: int, target_id: int, commit: int, healed_at: float
    ) -> None:
        assert self.cluster is not None
        bound = self.options.bound_s
        address = self.cluster.node(target).client_address
        write = asyncio.ensure_future(self._probe(address, healed_at, write=True))
        get = asyncio.ensure_future(self._probe(address, healed_at, write=False))
        try:
            while time.monotonic() - healed_at < bound:
                samples = await self.samples(healed_at)
                self._trace(samples)
                self._judge(result, samples, target, target_id, commit)
                measured = result.all_s is not None and result.links_s is not None
                if measured and write.done() and get.done():
                    break
                await asyncio.sleep(self.options.poll_s)
            for probe, name in ((write, "write_s"), (get, "get_s")):
                left = max(0.0, bound - (time.monotonic() - healed_at))
                with contextlib.suppress(TimeoutError):
                    setattr(result, name, await asyncio.wait_for(asyncio.shield(probe), left))
        finally:
            for probe in (write, get):
                probe.cancel()
                with contextlib.suppress(BaseException):
                    await probe

    def _trace(self, samples: dict[int, Sample | None]) -> None:
        for index, s in samples.items():
            if s is None:
                self.trace.append(f"  n{index}: no answer")
                continue
            links = ",".join(f"{p}:{int(up)}" for p, up in sorted(s.links.items()))
            self.trace.append(
                f"  +{s.at:.3f}s n{index} term {s.term} leader {s.leader} "
                f"{'L' if s.is_leader else '-'} commit {s.commit} applied {s.applied} "
                f"links {links}"
            )

    def _judge(
        self,
        result: HealResult,
        samples: dict[int, Sample | None],
        target: int,
        target_id: int,
        commit: int,
    ) -> None:
        assert self.cluster is not None
        leader = self.leader_of(samples)
        own = samples.get(target)
        if own is None:
            return
        if result.links_s is None:
            others = [n.index for n in self.cluster.nodes if n.index != target]
            mine = all(own.links.get(self.ids[p], False) for p in others)
            theirs = all(
                (s := samples.get(p)) is not None and s.links.get(target_id, False) for p in others
            )
            if mine and theirs:
                result.links_s = max(
                    own.at, *(s.at for p in others if (s := samples.get(p)) is not None)
                )
        if leader is None:
            return
        knows = own.term == leader.term and own.leader == leader.leader
        if result.leader_s is None and knows:
            result.leader_s = own.at
            result.leader_after = leader.leader
        if result.caught_up_s is None and knows and own.applied >= commit:
            result.caught_up_s = own.at
        if result.all_s is None and all(
            s is not None and s.term == leader.term and s.leader == leader.leader
            and s.applied >= commit
            for s in samples.values()
        ):  # fmt: skip
            result.all_s = max(s.at for s in samples.values() if s is not None)

    async def _probe(self, address: str, healed_at: float, *, write: bool) -> float:
        """Seconds from the heal until a write (or a linearizable get) sent to ``address``
        succeeds; a new client per attempt, an attempt every ``poll_s``."""
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        async def attempt() -> None:
            client = Client(
                [address],
                cluster_name=CLUSTER_NAME,
                timeout_s=1.0,
                attempt_timeout_s=0.5,
                connect_timeout_s=0.5,
            )
            try:
                if write:
                    await client.metadata.put("/heal/probe", b"%f" % time.time())
                else:
                    await client.metadata.get("/heal/probe")
                if not done.done():
                    done.set_result(time.monotonic() - healed_at)
            except CatenaryError:
                pass
            finally:
                with contextlib.suppress(Exception):
                    await client.close()

        attempts: set[asyncio.Task[None]] = set()
        try:
            while not done.done():
                task = asyncio.ensure_future(attempt())
                attempts.add(task)
                task.add_done_callback(attempts.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(done), self.options.poll_s)
            return done.result()
        finally:
            for task in list(attempts):
                task.cancel()
            for task in list(attempts):
                with contextlib.suppress(BaseException):
                    await task

    # --------------------------------------------------------------- run

    async def run(self, report: HealReport) -> None:
        options = self.options
        reason = net_module.unavailable_reason()
        if reason is not None:
            raise net_module.NetworkUnavailable(reason)
        network = net_module.Network(options.nodes)
        directory = options.directory or Path(tempfile.mkdtemp(prefix="catenary-heal-"))
        directory.mkdir(parents=True, exist_ok=True)
        report.directory = str(directory)
        self.cluster = FaultCluster(
            directory, options.nodes, network=network, settings=options.settings, admin=True
        )
        load: _Load | None = None
        try:
            self.out(
                f"catenary faults heal: {options.nodes} nodes on {network.describe()}, "
                f"data in {directory}"
            )
            await self.cluster.start_all()
            statuses = await self.cluster.statuses()
            for node, status in zip(self.cluster.nodes, statuses, strict=True):
                self.ids[node.index] = status.node if status is not None else node.index
            self.session = aiohttp.ClientSession()
            load = _Load(self.cluster.addresses, options.writers)
            load.start()
            for target, direction, cut_s in options.cases():
                result = await self.case(target, direction, cut_s, load)
                report.results.append(result)
                await asyncio.sleep(options.settle_s)
        finally:
            if load is not None:
                await load.stop()
            if self.session is not None:
                await self.session.close()
            self.cluster.close()
            with contextlib.suppress(OSError):
                (directory / "heal-trace.txt").write_text("\n".join(self.trace) + "\n")


async def run_heals(options: HealOptions, out: Callable[[str], None] = print) -> HealReport:
    """Every case of ``options`` on one new cluster; bounded by ``options.time_bound_s()``."""
    report = HealReport(options.nodes)
    began = time.monotonic()
    try:
        async with asyncio.timeout(options.time_bound_s()):
            await HealRun(options, out).run(report)
    except TimeoutError:
        report.error = f"the run did not finish within {options.time_bound_s():.0f} s"
    except ClusterError as exc:
        report.error = str(exc)
    finally:
        report.elapsed_s = time.monotonic() - began
    if report.ok and options.directory is None:
        shutil.rmtree(report.directory, ignore_errors=True)
        report.directory += " (removed)"
    return report
