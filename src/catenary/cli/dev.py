"""``catenary dev``: a local multi-node cluster in one command.

Starts ``--nodes`` ``catenary server`` processes on 127.0.0.1, prints their
addresses and PIDs (also written to ``DIR/cluster.json``), shows a live status
line, and stops them all (SIGTERM, then SIGKILL after a bound) on Ctrl-C or
SIGTERM.  Run it again on the same ``--data-dir`` to bring the same cluster
back.  Exit codes: 0 after a clean stop, 1 when the cluster did not come up.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import click

from catenary.server.launcher import DevCluster, LaunchError, status_line


@click.command()
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 9))
@click.option(
    "--data-dir",
    default=".catenary-dev",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Holds every node's data, config and log, and cluster.json.",
)
@click.option("--cluster-name", default="catenary-dev", show_default=True)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="OPTION=VALUE",
    help="Passed to every node, e.g. --set raft.tick_ms=20.",
)
@click.option("--start-timeout", default=60.0, show_default=True, help="Seconds.")
@click.option("--stop-timeout", default=10.0, show_default=True, help="Seconds before SIGKILL.")
def dev(
    nodes: int,
    data_dir: str,
    cluster_name: str,
    settings: tuple[str, ...],
    start_timeout: float,
    stop_timeout: float,
) -> None:
    """Run a local cluster of NODES processes until Ctrl-C."""
    cluster = DevCluster(
        data_dir,
        nodes=nodes,
        cluster_name=cluster_name,
        settings=settings,
        stop_timeout_s=stop_timeout,
    )
    try:
        code = asyncio.run(_run(cluster, start_timeout))
    finally:
        codes = cluster.stop()
        if codes:
            summary = ", ".join(f"n{n}: {c}" for n, c in codes.items())
            click.echo(f"\nstopped ({summary})")
    sys.exit(code)


async def _run(cluster: DevCluster, start_timeout: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(cluster.start(start_timeout))
    stopping = asyncio.ensure_future(stop.wait())
    click.echo(
        f"catenary dev: cluster {cluster.cluster_name!r}, {cluster.wanted} node(s), "
        f"data in {cluster.directory}"
    )
    await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        stopping.cancel()
        click.echo("interrupted while starting")
        return 1
    try:
        starting.result()
    except LaunchError as exc:
        stopping.cancel()
        click.echo(f"catenary dev: {exc}", err=True)
        return 1
    for node in cluster.nodes:
        click.echo(
            f"  n{node.node}  pid {node.pid:<7}  client {node.client_address}  "
            f"peer {node.peer_address}  admin http://{node.admin_address}  log {node.log}"
        )
    click.echo(f"wrote {cluster.manifest_path}; Ctrl-C stops every node")
    tty = sys.stdout.isatty()
    last = ""
    while not stop.is_set():
        line = status_line(cluster, await cluster.statuses())
        if tty:
            click.echo("\r\x1b[2K" + line, nl=False)
        else:
            # Without a terminal print only changes of role/term (not every commit).
            shape = " ".join(w for w in line.split() if not (w.startswith("c") and w[1:].isdigit()))
            if shape != last:
                click.echo(line)
                last = shape
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    stopping.cancel()
    return 0
