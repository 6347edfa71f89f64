"""``catenary server``: run one node.

Exit codes: 0 after a graceful stop (SIGTERM/SIGINT), 1 when the node failed
while running, 2 when the configuration or the data directory is unusable
(one line per problem on stderr) or the cluster refused the node (another
cluster's seed, a removed node).
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from catenary.server.config import ConfigError, load_config, to_toml


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="CATENARY_CONFIG",
    help="TOML configuration file (env CATENARY_CONFIG).",
)
@click.option("--cluster-name", help="Name of the cluster to create or join.")
@click.option("--node-name", help="Free-text name shown in status.")
@click.option("--data-dir", help="Data directory of this node.")
@click.option("--peer-address", help="host:port for other nodes (Raft).")
@click.option("--client-address", help="host:port for clients.")
@click.option("--admin-address", help="host:port of the HTTP admin API ('' disables it).")
@click.option(
    "--seed", "seeds", multiple=True, help="Client address of a member to join (repeatable)."
)
@click.option(
    "--role", "roles", multiple=True, help="A role of this node (repeatable; default: all)."
)
@click.option("--metadata-server", help='"replicated" (default) or "local".')
@click.option("--production/--no-production", default=None, help="Turn off auto-provisioning.")
@click.option(
    "--auto-provision/--no-auto-provision",
    default=None,
    help="Provision a cluster of one when none exists (default: on unless --production).",
)
@click.option("--log-level", help="debug, info, warning or error.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="OPTION=VALUE",
    help="Set any option, e.g. --set raft.tick_ms=20 (repeatable).",
)
@click.option("--print-config", is_flag=True, help="Print the effective configuration and exit.")
def server(
    config_path: str | None,
    cluster_name: str | None,
    node_name: str | None,
    data_dir: str | None,
    peer_address: str | None,
    client_address: str | None,
    admin_address: str | None,
    seeds: tuple[str, ...],
    roles: tuple[str, ...],
    metadata_server: str | None,
    production: bool | None,
    auto_provision: bool | None,
    log_level: str | None,
    settings: tuple[str, ...],
    print_config: bool,
) -> None:
    """Run a catenary node (defaults: a replicated metadata server, a cluster of one)."""
    # A stop request that arrives while the node is still importing and starting
    # is remembered, so it ends in a graceful stop (exit 0), never in a kill.
    early_stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early_stop.append(signum))
    flags: dict[str, Any] = {}
    for option, value in (
        ("cluster_name", cluster_name),
        ("node_name", node_name),
        ("data_dir", data_dir),
        ("peer_address", peer_address),
        ("client_address", client_address),
        ("admin_address", admin_address),
        ("metadata.server", metadata_server),
        ("production", production),
        ("auto_provision", auto_provision),
        ("log_level", log_level),
    ):
        if value is not None:
            flags[option] = value
    if seeds:
        flags["seeds"] = [s for seed in seeds for s in seed.split(",") if s]
    if roles:
        flags["roles"] = [r for role in roles for r in role.split(",") if r]
    flag_texts: dict[str, str] = {}
    problems: list[str] = []
    for setting in settings:
        option, sep, text = setting.partition("=")
        if not sep or not option.strip():
            problems.append(f"--set {setting!r}: expected OPTION=VALUE")
            continue
        flag_texts[option.strip()] = text
    try:
        config = load_config(config_path, flags=flags, flag_texts=flag_texts)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        for problem in problems:
            click.echo(f"catenary server: {problem}", err=True)
        sys.exit(2)
    if print_config:
        click.echo(to_toml(config), nl=False)
        return
    # Imported here so that --help and config errors stay fast.
    from catenary.server.node import AdminAppFactory
    from catenary.server.process import run_server

    admin_app: AdminAppFactory | None
    try:
        from catenary.admin.http import create_app
    except ModuleNotFoundError as exc:
        if exc.name not in ("catenary.admin", "catenary.admin.http"):
            raise
        admin_app = None
    else:
        admin_app = create_app
    sys.exit(run_server(config, admin_app=admin_app, stop_requested=lambda: bool(early_stop)))
