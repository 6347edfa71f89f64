"""``catenary faults``: fault runs on real processes (see docs/faults.md).

``catenary faults run`` starts a cluster of ``catenary server`` processes
(each in its own network namespace when run as root), drives the metadata
workload while a seeded schedule of faults is done to it, then prints the
schedule, the counts and every checker's verdict.  Exit codes: 0 when every
checker passed, 1 on a violation, 2 when the cluster could not be formed.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from pathlib import Path

import click

from catenary.testing.faults.cluster import ClusterError
from catenary.testing.faults.nemesis import FAMILIES
from catenary.testing.faults.runner import Report, RunOptions, run


@click.group()
def faults() -> None:
    """Fault runs on real processes: kills, pauses, partitions, full disks."""


def _families(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown:
        raise click.BadParameter(f"unknown nemesis {unknown}; choose from {','.join(FAMILIES)}")
    return chosen


@faults.command("run")
@click.option("--seconds", default=60.0, show_default=True, help="Length of the fault period.")
@click.option("--seed", type=int, default=None, help="Seed of the schedule (default: random).")
@click.option("--nodes", type=click.Choice(["3", "5"]), default="3", show_default=True)
@click.option(
    "--nemesis",
    "nemeses",
    default=",".join(FAMILIES),
    show_default=True,
    help="Comma-separated nemesis families.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Keep every node's data and log here (default: a temporary directory, "
    "removed after a clean run).",
)
@click.option("--recovery-bound", default=30.0, show_default=True, help="Seconds.")
@click.option(
    "--plant",
    default="",
    hidden=True,
    help="Test only: start the nodes with CATENARY_TEST_PLANT set to this (docs/faults.md).",
)
def run_command(
    seconds: float,
    seed: int | None,
    nodes: str,
    nemeses: str,
    data_dir: str | None,
    recovery_bound: float,
    plant: str,
) -> None:
    """Run faults against a new local cluster and check what the clients saw."""
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 31)
    options = RunOptions(
        seconds=seconds,
        seed=seed,
        nodes=int(nodes),
        nemeses=_families(nemeses),
        directory=Path(data_dir) if data_dir else None,
        plant=plant,
        recovery_bound_s=recovery_bound,
    )
    click.echo(f"seed {seed} (replay with --seed {seed})")
    try:
        report = asyncio.run(_interruptible(options))
    except ClusterError as exc:
        click.echo(f"catenary faults: {exc}", err=True)
        sys.exit(2)
    if report is None:
        click.echo("interrupted: every node stopped, every mount and namespace removed", err=True)
        sys.exit(130)
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


async def _interruptible(options: RunOptions) -> Report | None:
    """The run; SIGINT or SIGTERM cancels it, so its cleanup (processes, mounts,
    namespaces) runs on the way out.  None when interrupted."""
    task = asyncio.ensure_future(run(options, out=click.echo))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return None
