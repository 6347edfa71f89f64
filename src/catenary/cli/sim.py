"""``catenary sim``: run the deterministic simulator from the command line.

``catenary sim metadata --seed N [--nodes 3|5] [--steps S] [--json]`` runs one
seed of the metadata-service simulation and prints the seed, the outcome and
the counters (``--log``: also the timeline of faults, leaders and phases); on a violation it prints it with the one-line replay command
and exits with status 1.  Without ``--seed`` a random seed is drawn (and
printed, so the run can be replayed).

``catenary sim log --seed N [--nodes 3|5] [--steps S] [--json]`` does the same
for the log service, with the replicated metadata service that holds its chain
(docs/design/simulation.md, "The log simulation").

``catenary sim sweep --first S --count N [--nodes 3 --nodes 5] [--jobs J]
[--service metadata|log]`` runs
many consecutive seeds in J worker processes and prints how many passed, every
violation with its replay command, and for each kind of fault the share of seeds
in which it actually fired (its counter above zero), not only was enabled.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from catenary.testing.sim.log import LogSimResult
    from catenary.testing.sim.metadata import SimResult as MetadataSimResult


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
        click.echo(
            f"host loop: batches {c.host_batches}  answered at deadline {c.host_expired}  "
            f"refused {c.host_refused}"
        )
        click.echo(f"linearizability: {result.linearizability}")
        _echo_outcome(result)
    if not result.ok:
        sys.exit(1)


def _echo_outcome(result: MetadataSimResult | LogSimResult) -> None:
    """The closing lines both simulations print: time, liveness, digest, any violation."""
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


@sim.command(name="log")
@click.option("--seed", type=int, default=None, help="The seed (default: a random one, printed).")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option(
    "--steps",
    type=click.IntRange(1, 10_000_000),
    default=400,
    show_default=True,
    help="Length of the safety phase, in ticks (10 ms of simulated time each).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def log_(seed: int | None, nodes: int, steps: int, as_json: bool) -> None:
    """Simulate the log service (log-servers, sequencers, readers, reconfigurations)
    with the replicated metadata service that holds its chain."""
    from catenary.testing.sim.log import LogSimOptions, run_log_sim

    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    result = run_log_sim(LogSimOptions(seed=seed, nodes=nodes, steps=steps))
    if as_json:
        click.echo(result.to_json())
    else:
        click.echo(f"seed: {result.seed}  nodes: {result.nodes}  steps: {result.steps}")
        click.echo(f"faults: {result.faults}")
        click.echo(f"outcome: {'ok' if result.ok else 'VIOLATION'}")
        for name, value in asdict(result.counters).items():
            click.echo(f"  {name:26} {value}")
        _echo_outcome(result)
    if not result.ok:
        sys.exit(1)


def _sweep_log_one(seed: int, nodes: int, steps: int) -> tuple[int, int, bool, str, dict[str, int]]:
    from catenary.testing.sim.log import LogSimOptions, run_log_sim

    result = run_log_sim(LogSimOptions(seed=seed, nodes=nodes, steps=steps))
    detail = "" if result.ok else f"{result.violation}\n  replay: {result.replay}"
    return seed, nodes, result.ok, detail, asdict(result.counters)


def _sweep_one(seed: int, nodes: int, steps: int) -> tuple[int, int, bool, str, dict[str, int]]:
    from catenary.testing.sim.metadata import SimOptions, run_metadata_sim

    result = run_metadata_sim(SimOptions(seed=seed, nodes=nodes, steps=steps))
    detail = "" if result.ok else f"{result.violation}\n  replay: {result.replay}"
    return seed, nodes, result.ok, detail, asdict(result.counters)


@sim.command()
@click.option("--first", type=int, required=True, help="The first seed of the sweep.")
@click.option("--count", type=click.IntRange(1, 10_000_000), required=True, help="Seeds per size.")
@click.option(
    "--nodes",
    "sizes",
    type=click.IntRange(1, 9),
    multiple=True,
    default=(3,),
    show_default=True,
    help="Cluster size; repeat for several (each runs --count seeds).",
)
@click.option(
    "--steps",
    type=click.IntRange(1, 10_000_000),
    default=None,
    help="Safety-phase ticks (default: 1000 for metadata, 400 for log).",
)
@click.option("--jobs", type=click.IntRange(1, 64), default=os.cpu_count() or 1, show_default=True)
@click.option(
    "--service",
    type=click.Choice(["metadata", "log"]),
    default="metadata",
    show_default=True,
    help="Which simulation to sweep.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sweep(
    first: int,
    count: int,
    sizes: tuple[int, ...],
    steps: int | None,
    jobs: int,
    service: str,
    as_json: bool,
) -> None:
    """Run many seeds of a simulation; report violations and fault coverage."""
    if steps is None:
        steps = 400 if service == "log" else 1000
    one = _sweep_log_one if service == "log" else _sweep_one
    runs = [(seed, nodes) for nodes in sizes for seed in range(first, first + count)]
    fired: dict[str, int] = {}
    passed = 0
    violations: list[str] = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, seed, nodes, steps) for seed, nodes in runs]
        for future in futures:
            seed, nodes, ok, detail, counters = future.result()
            passed += ok
            if not ok:
                violations.append(f"seed {seed} nodes {nodes}: {detail}")
            for name, value in counters.items():
                fired[name] = fired.get(name, 0) + (value > 0)
    total = len(runs)
    shares = {name: round(fired[name] / total, 4) for name in sorted(fired)}
    if as_json:
        click.echo(
            json.dumps(
                {
                    "service": service,
                    "first": first,
                    "count": count,
                    "nodes": list(sizes),
                    "steps": steps,
                    "seeds": total,
                    "passed": passed,
                    "violations": violations,
                    "fired_share": shares,
                },
                sort_keys=True,
            )
        )
    else:
        click.echo(
            f"{service}: seeds {first}..{first + count - 1} x nodes {list(sizes)}, "
            f"steps {steps}: "
            f"{total} runs, {passed} passed, {len(violations)} violations"
        )
        for line in violations:
            click.echo(f"VIOLATION {line}")
        click.echo("share of seeds in which each counter fired:")
        for name, share in shares.items():
            click.echo(f"  {name:24} {share:7.2%}")
    if violations:
        sys.exit(1)
