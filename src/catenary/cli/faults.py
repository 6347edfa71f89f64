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
from catenary.testing.faults.heal import DIRECTIONS, TARGETS, HealOptions, HealReport, run_heals
from catenary.testing.faults.nemesis import FAMILIES
from catenary.testing.faults.net import NetworkUnavailable
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


def _choices(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [c for c in chosen if c not in allowed]
    if unknown or not chosen:
        raise click.BadParameter(f"unknown {what} {unknown}; choose from {','.join(allowed)}")
    return chosen


def _seconds(text: str) -> tuple[float, ...]:
    try:
        chosen = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"not a list of seconds: {text!r}") from None
    if not chosen or any(c <= 0 for c in chosen):
        raise click.BadParameter(f"cut lengths must be > 0 s: {text!r}")
    return chosen


@faults.command("heal")
@click.option("--nodes", type=click.Choice(["3", "5"]), default="3", show_default=True)
@click.option(
    "--cut-seconds",
    default="5",
    show_default=True,
    help="Length of each cut; comma-separated for several heals (e.g. 5,20,60).",
)
@click.option(
    "--target",
    default="follower",
    show_default=True,
    help="Node cut off: follower, leader (the leader when the cut starts), or both: "
    "follower,leader.",
)
@click.option(
    "--direction",
    default="both",
    show_default=True,
    help="both (isolated), out (its packets to its peers dropped), in (its peers' "
    "packets to it dropped); comma-separated for several.",
)
@click.option(
    "--bound",
    default=30.0,
    show_default=True,
    help="Seconds after a heal a figure may take before it counts as missing.",
)
@click.option("--settle", default=2.0, show_default=True, help="Seconds of calm between heals.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Keep every node's data and log here (default: a temporary directory, removed "
    "after a run where every heal recovered).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON too.")
def heal_command(
    nodes: str,
    cut_seconds: str,
    target: str,
    direction: str,
    bound: float,
    settle: float,
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Cut one node off its peers, heal, and time how long until it is back.

    Every combination of --target, --direction and --cut-seconds is one heal,
    done in turn on one new cluster under a steady load.  Per heal the table
    gives seconds after the heal until the node's peer links are up (links),
    it names the leader on the leader's term (leader), it applied the
    leader's commit index of the heal (caughtup), every node did (all), a put
    and a linearizable get sent to it succeed (write, get); stepdown is the
    seconds after the cut a cut leader stopped leading.  Exit 0 when every
    figure was reached within --bound, 1 otherwise, 2 when the cluster could
    not be formed or namespaces cannot be made (needs root, ip and tc).
    """
    options = HealOptions(
        nodes=int(nodes),
        cuts_s=_seconds(cut_seconds),
        targets=_choices(target, TARGETS, "target"),
        directions=_choices(direction, DIRECTIONS, "direction"),
        bound_s=bound,
        settle_s=settle,
        directory=Path(data_dir) if data_dir else None,
    )

    async def main() -> object:
        task = asyncio.ensure_future(run_heals(options, out=click.echo))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            return None

    try:
        report = asyncio.run(main())
    except NetworkUnavailable as exc:
        click.echo(f"catenary faults heal: {exc}", err=True)
        sys.exit(2)
    if report is None:
        click.echo("interrupted: every node stopped, every namespace removed", err=True)
        sys.exit(130)
    assert isinstance(report, HealReport)
    click.echo("")
    click.echo(report.table())
    worst = [r.worst_s for r in report.results]
    if report.results and all(w is not None for w in worst):
        click.echo(f"slowest heal: {max(w for w in worst if w is not None):.2f} s after the heal")
    if report.error:
        click.echo(f"ERROR: {report.error}")
    click.echo(
        f"{'ok' if report.ok else 'NOT RECOVERED'}: {len(report.results)} heals in "
        f"{report.elapsed_s:.0f} s (data in {report.directory})"
    )
    if as_json:
        click.echo(report.to_json())
    sys.exit(0 if report.ok else (2 if report.error and not report.results else 1))
