"""One fault run: a cluster, a workload, a schedule of faults, the checkers' verdicts.

Sequence: form the cluster; print the schedule; run the workload while the
nemesis does the schedule; at the end of the last fault heal everything (the
final heal) and measure how long until a write and a linearizable get
succeed again (the recovery verdict fails past ``recovery_bound_s``); let
the workload run out its seconds; stop it; read back; run
the checkers; stop every process, unmount the disks, remove the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

from catenary.client import Client
from catenary.client.errors import CatenaryError
from catenary.testing.faults import disk as disk_module
from catenary.testing.faults import net as net_module
from catenary.testing.faults.cluster import CLUSTER_NAME, FaultCluster
from catenary.testing.faults.history import Clock, Verdict
from catenary.testing.faults.nemesis import (
    FAMILIES,
    PARTITIONS,
    Fault,
    Finding,
    Nemesis,
    schedule,
)
from catenary.testing.faults.workload import Context, MetadataWorkload, Workload

PLANT_ENV = "CATENARY_TEST_PLANT"


@dataclass
class RunOptions:
    seconds: float = 60.0
    seed: int = 0
    nodes: int = 3
    nemeses: tuple[str, ...] = FAMILIES
    directory: Path | None = None  # default: a new temporary directory, removed when ok
    plant: str = ""  # test-only: CATENARY_TEST_PLANT for every node (see docs/faults.md)
    recovery_bound_s: float = 30.0
    op_timeout_s: float = 2.0
    settings: tuple[str, ...] = ()
    workloads: Callable[[], list[Workload]] | None = None
    faults: list[Fault] | None = None  # a fixed schedule instead of one drawn from the seed


@dataclass
class Report:
    seed: int
    nodes: int
    seconds: float
    schedule: list[Fault] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # nemesis family -> why not run
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    recovery_write_s: float | None = None
    recovery_get_s: float | None = None
    directory: str = ""
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(v.failed for v in self.verdicts)

    def summary(self) -> str:
        lines = [f"seed {self.seed}, {self.nodes} nodes, {self.seconds:g} s of faults"]
        for family, why in self.skipped.items():
            lines.append(f"SKIPPED nemesis {family}: {why}")
        lines.append(f"faults done: {len(self.done)}")
        for name, counts in self.counts.items():
            shown = ", ".join(f"{k}={v}" for k, v in counts.items())
            lines.append(f"counts[{name}]: {shown}")
        for finding in self.findings:
            lines.append(f"finding at {finding.at:.2f}s: {finding.text}")
        lines.append("verdicts:")
        lines += ["  " + v.line() for v in self.verdicts]
        lines.append(f"VERDICT: {'ok' if self.ok else 'VIOLATION'} (data in {self.directory})")
        return "\n".join(lines)


async def _recover(
    addresses: list[str], clock: Clock, bound_s: float
) -> tuple[float | None, float | None]:
    """Seconds from now to the first successful write, then to the first linearizable get."""
    start = clock.now()
    wrote: float | None = None
    got: float | None = None
    async with Client(addresses, cluster_name=CLUSTER_NAME, timeout_s=1.0) as client:
        while clock.now() - start < bound_s:
            try:
                if wrote is None:
                    await client.metadata.put("/faults/recovery", b"%f" % clock.now())
                    wrote = clock.now() - start
                await client.metadata.get("/faults/recovery")
                got = clock.now() - start
                break
            except CatenaryError:
                await asyncio.sleep(0.02)
    return wrote, got


async def run(options: RunOptions, out: Callable[[str], None] = print) -> Report:
    seed = options.seed
    report = Report(seed, options.nodes, options.seconds)
    families = tuple(options.nemeses)
    network: net_module.Network | None = None
    if "partition" in families:
        reason = net_module.unavailable_reason()
        if reason is None:
            try:
                network = net_module.Network(options.nodes)
            except net_module.NetworkUnavailable as exc:
                reason = str(exc)
        if reason is not None:
            report.skipped["partition"] = reason
            out(f"SKIPPING the partition nemesis: {reason}")
    small_disks = False
    if "disk-full" in families:
        reason = disk_module.unavailable_reason()
        if reason is None:
            small_disks = True
        else:
            report.skipped["disk-full"] = reason
            out(f"SKIPPING the disk-full nemesis: {reason}")
    families = tuple(f for f in families if f not in report.skipped)
    directory = options.directory or Path(tempfile.mkdtemp(prefix="catenary-faults-"))
    directory.mkdir(parents=True, exist_ok=True)
    report.directory = str(directory)
    env = {PLANT_ENV: options.plant} if options.plant else {}
    cluster = FaultCluster(
        directory,
        options.nodes,
        network=network,
        small_disks=small_disks,
        env=env,
        settings=options.settings,
    )
    workloads: list[Workload] = options.workloads() if options.workloads else [MetadataWorkload()]
    began = time.monotonic()
    try:
        where = network.describe() if network is not None else "127.0.0.1"
        out(f"catenary faults: seed {seed}, {options.nodes} nodes on {where}, data in {directory}")
        if options.plant:
            out(f"PLANTED BUG (test only): {PLANT_ENV}={options.plant}")
        await cluster.start_all()
        if options.faults is not None:
            report.schedule = [f for f in options.faults if _family(f.kind) in families]
        else:
            report.schedule = schedule(seed, options.seconds, options.nodes, families)
        out(f"schedule ({len(report.schedule)} faults, nemeses {','.join(families) or 'none'}):")
        for fault in report.schedule:
            out("  " + fault.describe())
        clock = Clock()
        rng = Random(seed)
        stop = asyncio.Event()
        for workload in workloads:
            await workload.start(
                Context(cluster.addresses, clock, Random(rng.random()), options.op_timeout_s, out)
            )
        nemesis = Nemesis(cluster, clock.now, out)
        running = [asyncio.ensure_future(w.run(stop)) for w in workloads]
        try:
            # The last fault lasts until the final heal, so recovery is measured from it.
            await nemesis.run(report.schedule, asyncio.Event(), leave_last=True)
        except BaseException:
            # Interrupted (or the nemesis failed): undo, stop the clients, go.
            nemesis.heal()
            stop.set()
            for task in running:
                task.cancel()
            raise
        nemesis.heal()  # the final heal
        out(f"  {clock.now():7.2f}s final heal")
        report.done = nemesis.done
        wrote, got = await _recover(cluster.addresses, clock, options.recovery_bound_s)
        report.recovery_write_s, report.recovery_get_s = wrote, got
        remaining = options.seconds - clock.now()
        if remaining > 0:
            await asyncio.sleep(remaining)
        stop.set()
        done, pending = await asyncio.wait(running, timeout=options.op_timeout_s * 4 + 10)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        nemesis._check_exits("the read-back")
        for workload in workloads:
            await workload.finish()
        report.findings = nemesis.findings
        for workload in workloads:
            report.counts[workload.name] = workload.counts()
            report.verdicts += workload.check()
        report.verdicts.append(_recovery_verdict(report, options.recovery_bound_s))
    finally:
        for workload in workloads:
            with contextlib.suppress(Exception):
                await workload.close()
        cluster.close()
        report.elapsed_s = time.monotonic() - began
    if report.ok and options.directory is None:
        shutil.rmtree(directory, ignore_errors=True)
        report.directory += " (removed)"
    return report


def _family(kind: str) -> str:
    return "partition" if kind in PARTITIONS else kind


def _recovery_verdict(report: Report, bound_s: float) -> Verdict:
    wrote, got = report.recovery_write_s, report.recovery_get_s
    if wrote is None or got is None:
        return Verdict(
            "recovery",
            "violation",
            f"no successful write and linearizable get within {bound_s:g} s of the final heal",
        )
    return Verdict(
        "recovery",
        "ok",
        f"first write {wrote:.2f} s, first linearizable get {got:.2f} s after the final heal "
        f"(bound {bound_s:g} s)",
    )
