"""Nemeses: a schedule of faults drawn from one seed, and the code that does them.

The schedule is a pure function of (seed, seconds, nodes, nemeses): the same
arguments print the same schedule, so a run is replayed with ``--seed``.
Faults come one at a time (a 3-node cluster survives one), each for 2-6 s,
with 1-3 s of calm between them.  A target of ``leader`` is resolved when
the fault starts (the run prints which node it was).

Families (``--nemesis``) and the faults they draw from:

- ``kill``: SIGKILL a node; restart it on the same data when the fault ends.
- ``pause``: SIGSTOP a node; SIGCONT when the fault ends.
- ``partition``: ``isolate`` (cut a node from every peer, both ways; clients
  still reach it), ``split`` (a minority from a majority, both ways), ``one-way``
  (a node's packets to every peer are dropped, the peers' to it arrive),
  ``flap`` (the link between two nodes cut and healed every 0.2-0.8 s),
  ``disconnect`` (the node's link down: no peer and no client reaches it).
- ``disk-full``: fill the node's small filesystem until writes fail, then
  write up to 6 MiB of ballast (64 KiB values to ``/faults/ballast``) through
  the cluster so the node uses up the log space it preallocated; free the
  space when the fault ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random

from catenary.client import Client
from catenary.client.errors import CatenaryError
from catenary.testing.faults.cluster import FaultCluster

FAMILIES = ("kill", "pause", "partition", "disk-full")
PARTITIONS = ("isolate", "split", "one-way", "flap", "disconnect")
LEADER = 0  # a target resolved to the leader when the fault starts
BALLAST_VALUE_BYTES = 64 << 10
BALLAST_BYTES = 6 << 20  # more than one preallocation step of the node's log (4 MiB)


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the workload started
    duration: float
    kind: str  # kill | pause | isolate | split | one-way | flap | disconnect | disk-full
    target: int  # a node (1-based) or LEADER
    other: tuple[int, ...] = ()  # split: the rest of the minority; flap: the peer
    seed: int = 0  # for flap timings
    inbound: bool = False  # one-way: True = peers -> target dropped

    def describe(self, target: int | None = None) -> str:
        who = f"n{target}" if target else ("leader" if self.target == LEADER else f"n{self.target}")
        if target and self.target == LEADER:
            who += " (leader)"
        extra = ""
        if self.kind == "split":
            extra = " + " + ",".join(f"n{n}" for n in self.other) if self.other else ""
            extra += " from the rest"
        elif self.kind == "flap":
            extra = f" <-> n{self.other[0]}"
        elif self.kind == "one-way":
            extra = " (peers -> it dropped)" if self.inbound else " (it -> peers dropped)"
        return f"+{self.at:6.2f}s {self.kind:<10} {who}{extra} for {self.duration:.2f}s"


def schedule(seed: int, seconds: float, nodes: int, families: tuple[str, ...]) -> list[Fault]:
    rng = Random(seed)
    faults: list[Fault] = []
    t = 2.0
    end = seconds - 1.0
    if not families:
        return faults
    while t + 2.0 < end:
        family = rng.choice(families)
        duration = min(rng.uniform(2.0, 6.0), end - t)
        target = rng.choice([LEADER, *range(1, nodes + 1)])
        kind = family
        other: tuple[int, ...] = ()
        inbound = False
        if family == "partition":
            kind = rng.choice(PARTITIONS)
            if kind == "split":
                size = (nodes - 1) // 2
                pool = [n for n in range(1, nodes + 1) if n != target]
                other = tuple(sorted(rng.sample(pool, size - 1))) if size > 1 else ()
            elif kind == "flap":
                pool = [n for n in range(1, nodes + 1) if n != target]
                other = (rng.choice(pool),)
            elif kind == "one-way":
                inbound = rng.random() < 0.5
        faults.append(Fault(round(t, 2), round(duration, 2), kind, target, other,
                            rng.randrange(1 << 30), inbound))  # fmt: skip
        t += duration + rng.uniform(1.0, 3.0)
    return faults


@dataclass
class Finding:
    at: float
    text: str


@dataclass
class Nemesis:
    """Does the faults of a schedule to a cluster, and undoes them."""

    cluster: FaultCluster
    clock: Callable[[], float]
    log: Callable[[str], None] = print
    findings: list[Finding] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    _killed: set[int] = field(default_factory=set)

    async def _resolve(self, fault: Fault) -> int:
        if fault.target != LEADER:
            return fault.target
        leader = await self.cluster.leader()
        if leader is not None:
            return leader
        return 1

    def _check_exits(self, during: str) -> None:
        for node in self.cluster.nodes:
            if node.index in self._killed:
                continue
            code = self.cluster.exited(node.index)
            if code is not None:
                lines = node.log_tail(6000).strip().splitlines()
                errors = [x for x in lines if "ERROR" in x or "CRITICAL" in x or "Error" in x]
                tail = " | ".join((errors or lines)[-2:])
                self.findings.append(
                    Finding(
                        self.clock(),
                        f"n{node.index} exited with code {code}, noticed during {during}: {tail}",
                    )
                )
                self.log(f"  ! n{node.index} exited by itself (code {code}) during {during}")

    def _restart_dead(self) -> None:
        for node in self.cluster.nodes:
            if not node.running():
                node.process = None
                self.cluster.start(node.index)
                self.log(f"  restarted n{node.index}")
        self._killed.clear()

    async def run(
        self, faults: list[Fault], stop: asyncio.Event, *, leave_last: bool = False
    ) -> None:
        """Do each fault and heal it; ``leave_last``: the last one is left for the final heal."""
        for number, fault in enumerate(faults):
            delay = fault.at - self.clock()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return
                except TimeoutError:
                    pass
            if stop.is_set():
                return
            target = await self._resolve(fault)
            text = fault.describe(target)
            self.log(f"  {self.clock():7.2f}s start {text}")
            self.done.append(text)
            last = leave_last and number == len(faults) - 1
            try:
                await self._do(fault, target)
            except BaseException:
                self.heal()
                raise
            if not last:
                self.heal()
                self.log(f"  {self.clock():7.2f}s healed")

    async def _hold(self, fault: Fault, during: str) -> None:
        end = self.clock() + fault.duration
        while self.clock() < end:
            self._check_exits(during)
            await asyncio.sleep(min(0.2, max(0.0, end - self.clock())))
        self._check_exits(during)

    async def _do(self, fault: Fault, target: int) -> None:
        cluster, net = self.cluster, self.cluster.network
        others = [n.index for n in cluster.nodes if n.index != target]
        during = f"{fault.kind} of n{target}"
        if fault.kind == "kill":
            cluster.kill(target)
            self._killed.add(target)
            await self._hold(fault, during)
        elif fault.kind == "pause":
            cluster.pause(target)
            await self._hold(fault, during)
        elif fault.kind == "disk-full":
            disk = cluster.node(target).disk
            assert disk is not None, "disk-full needs small disks"
            filled = disk.fill()
            self.log(f"           filled n{target}'s disk with {filled >> 10} KiB")
            ballast = asyncio.ensure_future(self._ballast(target, self.clock() + fault.duration))
            try:
                await self._hold(fault, during)
            finally:
                ballast.cancel()
                with contextlib.suppress(BaseException):
                    await ballast
        else:
            assert net is not None, "partitions need the network"
            if fault.kind == "isolate":
                net.split([[target], others])
            elif fault.kind == "split":
                minority = [target, *fault.other]
                net.split([minority, [n for n in others if n not in minority]])
            elif fault.kind == "one-way":
                for peer in others:
                    if fault.inbound:
                        net.cut(peer, target)
                    else:
                        net.cut(target, peer)
            elif fault.kind == "disconnect":
                net.isolate(target)
            elif fault.kind == "flap":
                peer = fault.other[0] if fault.other[0] != target else others[0]
                rng = Random(fault.seed)
                end = self.clock() + fault.duration
                cut = False
                while self.clock() < end:
                    cut = not cut
                    if cut:
                        net.split([[target], [peer]])
                    else:
                        net.heal()
                    self._check_exits(during)
                    await asyncio.sleep(min(rng.uniform(0.2, 0.8), max(0.0, end - self.clock())))
                return
            await self._hold(fault, during)

    async def _ballast(self, target: int, until: float) -> None:
        """Write ``BALLAST_BYTES`` to a key of its own, so the full node needs more space.

        A node preallocates its log in steps, so a filled disk is felt only once
        the step in hand is used up; the workload's small writes take minutes.
        """
        value = b"b" * BALLAST_VALUE_BYTES
        written = 0
        async with Client(self.cluster.addresses, timeout_s=1.0) as client:
            while written < BALLAST_BYTES and self.clock() < until:
                if not self.cluster.node(target).running():
                    return
                try:
                    await client.metadata.put("/faults/ballast", value)
                    written += len(value)
                except CatenaryError:
                    await asyncio.sleep(0.05)

    def heal(self) -> None:
        """Undo every fault: network whole, disks freed, paused nodes continued, dead restarted."""
        if self.cluster.network is not None:
            self.cluster.network.heal()
        for node in self.cluster.nodes:
            if node.disk is not None and node.disk.filled_bytes:
                node.disk.release()
            if node.paused:
                self.cluster.resume(node.index)
        self._check_exits("the heal")
        self._restart_dead()
