"""``catenary sim``: run the deterministic simulator from the command line.

``catenary sim metadata --seed N [--nodes 3|5] [--steps S] [--json]`` runs one
seed of the metadata-service simulation and prints the seed, the outcome and
the counters (``--log``: also the timeline of faults, leaders and phases); on a violation it prints it with the one-line replay command
and exits with status 1.  Without ``--seed`` a random seed is drawn (and
printed, so the run can be replayed).
"""

from __future__ import annotations

import os
import sys

import click


@click.group()
def sim() -> None:
    """Deterministic simulation: the real cores under simulated faults."""


@sim.command()
@click.option("--seed", type=int, default=None, help="The seed (default: a random one, printed).")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option(
    "--steps",
    type=click.IntRange(1, 10_000_000),
    default=1000,
    show_default=True,
    help="Length of the safety phase, in ticks (10 ms of simulated time each).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--log", "show_log", is_flag=True, help="Also print the timeline of faults and leaders."
)
def metadata(seed: int | None, nodes: int, steps: int, as_json: bool, show_log: bool) -> None:
    """Simulate the replicated metadata service for one seed."""
    from catenary.testing.sim.metadata import SimOptions, run_metadata_sim

    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    result = run_metadata_sim(SimOptions(seed=seed, nodes=nodes, steps=steps, keep_log=show_log))
    if as_json:
        click.echo(result.to_json())
    else:
        c = result.counters
        for line in result.log:
            click.echo(line)
        click.echo(f"seed: {result.seed}  nodes: {result.nodes}  steps: {result.steps}")
        click.echo(f"faults: {result.faults}")
        click.echo(f"outcome: {'ok' if result.ok else 'VIOLATION'}")
        click.echo(
            f"ops: {c.ops} (ok {c.ops_ok}, indeterminate {c.ops_indeterminate}, "
            f"failed {c.ops_failed})  leaders: {c.leaders}  commits: {c.commits}"
        )
        click.echo(
            f"crashes: {c.crashes} (mid-persist {c.crashes_mid_persist}, torn tails "
            f"{c.torn_tails})  partitions: {c.partitions}  snapshots: {c.snapshots} "
            f"(installed {c.snapshots_installed})  io errors: {c.io_errors}"
        )
        click.echo(
            f"messages: sent {c.messages_sent}, dropped {c.messages_dropped}, "
            f"duplicated {c.messages_duplicated}  transfers: {c.transfers}  reconfigurations: {c.reconfigurations}  pauses: {c.pauses}  "
            f"stale reads: {c.stale_reads}  checks: {c.checks}"
        )
        click.echo(f"linearizability: {result.linearizability}")
        liveness = "-" if result.liveness_ms is None else f"{result.liveness_ms} ms"
        click.echo(
            f"simulated: {result.sim_time_ms} ms, {result.events} events  "
            f"liveness: {liveness}  digest: {result.digest}"
        )
        if not result.ok:
            click.echo(f"violation: {result.violation}")
            for line in result.history_tail:
                click.echo(f"  {line}")
            click.echo(f"replay: {result.replay}")
    if not result.ok:
        sys.exit(1)
