"""``catenary status``, ``nodes``, ``provision`` and ``metadata-server``: the operator's commands.

Every command reaches the cluster through any node named by ``--address``
(repeatable or comma-separated; default ``$CATENARY_ADDRESS``, else the
client addresses in ``.catenary-dev/cluster.json`` when the current directory
holds the cluster that ``make run`` started, else 127.0.0.1:5123), prints a human table by default and one JSON document with
``--json``.  Exit codes mean the same everywhere:

    0 ok, 1 the operation failed (precondition failed, not found, refused),
    2 usage or bad input, 3 unavailable or timed out (``status``: at least
    one node did not answer; the others' rows are still printed), 4
    indeterminate (a write that may or may not have been applied).

A failure prints one line with the reason on stderr.  Given several
addresses, a command dials them all at once (``Client.connect``) and works
through the first that answers, so an unreachable node costs it nothing;
``status`` asks every node at once and prints an unreachable node's row with
the reason.  These helpers are
shared with ``catenary.cli.metadata``.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click
import msgspec

from catenary.api import messages as m
from catenary.client import (
    BadRequestError,
    CatenaryError,
    Client,
    ConnectionRefusedByNodeError,
    IndeterminateError,
    NotFoundError,
    PreconditionFailedError,
    RefusedError,
    UnavailableError,
)
from catenary.client.client import split_addresses

ADDRESS_DEFAULT = "127.0.0.1:5123"
DEV_CLUSTER_FILE = Path(".catenary-dev") / "cluster.json"
VOTERS_FOR_ONE_FAILURE = 3

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INDETERMINATE = 4

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    addresses: list[str]
    json: bool
    timeout_s: float
    cluster_name: str | None


def client_options(command: Callable[P, T]) -> Callable[P, T]:
    """Adds ``--address``, ``--json``, ``--timeout`` and ``--cluster-name``."""
    decorators = [
        click.option(
            "--address",
            "addresses",
            multiple=True,
            envvar="CATENARY_ADDRESS",
            help="client address of any node (host:port); repeatable or comma-separated "
            f"[env CATENARY_ADDRESS; default: the nodes in {DEV_CLUSTER_FILE} if present, "
            f"else {ADDRESS_DEFAULT}]",
        ),
        click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table"),
        click.option(
            "--timeout",
            "timeout_s",
            type=click.FloatRange(min=0.001),
            default=5.0,
            show_default=True,
            help="deadline in seconds for the whole operation, retries included",
        ),
        click.option(
            "--cluster-name",
            envvar="CATENARY_CLUSTER_NAME",
            default=None,
            help="refuse nodes of any other cluster (default: learn it from the first node)",
        ),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def make_options(
    addresses: Sequence[str], as_json: bool, timeout_s: float, cluster_name: str | None
) -> Options:
    try:
        parsed = split_addresses(list(addresses) or default_addresses())
    except ValueError as exc:
        fail(EXIT_USAGE, str(exc))
    return Options(parsed, as_json, timeout_s, cluster_name or None)


def default_addresses() -> list[str]:
    """The local dev cluster's client addresses if ``make run`` left its file here."""
    try:
        layout = msgspec.json.decode(DEV_CLUSTER_FILE.read_bytes())
        found = [str(n["client_address"]) for n in layout["nodes"]]
    except FileNotFoundError:
        return [ADDRESS_DEFAULT]
    except (OSError, msgspec.DecodeError, KeyError, TypeError) as exc:
        fail(EXIT_USAGE, f"cannot read {DEV_CLUSTER_FILE} for default addresses: {exc}")
    return found or [ADDRESS_DEFAULT]


def fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def exit_code_of(exc: BaseException) -> int:
    if isinstance(exc, IndeterminateError):
        return EXIT_INDETERMINATE
    if isinstance(exc, UnavailableError):
        return EXIT_UNAVAILABLE
    if isinstance(exc, BadRequestError | ConnectionRefusedByNodeError | ValueError):
        return EXIT_USAGE
    return EXIT_FAILED  # precondition failed, not found, refused, internal, compacted


def run(options: Options, action: Callable[[Client], Awaitable[T]], *, dial_all: bool = True) -> T:
    """Run ``action`` with a client; turn every error into its exit code and one line.

    Given several addresses, every one is dialed at once first (``dial_all``;
    ``status`` asks them all itself)."""

    async def main() -> T:
        async with Client(
            options.addresses, cluster_name=options.cluster_name, timeout_s=options.timeout_s
        ) as client:
            if dial_all and len(options.addresses) > 1:
                await client.connect()
            return await action(client)

    try:
        return asyncio.run(main())
    except IndeterminateError as exc:
        fail(EXIT_INDETERMINATE, f"outcome unknown (it may or may not have happened): {exc}")
    except PreconditionFailedError as exc:
        if options.json:
            emit_json(
                {
                    "error": "precondition_failed",
                    "key": exc.key,
                    "current_version": exc.current_version,
                }
            )
        fail(EXIT_FAILED, str(exc))
    except (NotFoundError, RefusedError) as exc:
        fail(EXIT_FAILED, str(exc))
    except (CatenaryError, ValueError) as exc:
        fail(exit_code_of(exc), str(exc))


def emit_json(data: object) -> None:
    click.echo(msgspec.json.encode(data).decode())


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def value_text(value: bytes) -> str:
    """Printable text for a value: itself if it is clean UTF-8, else hex."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + value.hex()
    return text if text.isprintable() else repr(text)


def value_json(value: bytes) -> dict[str, Any]:
    try:
        text: str | None = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"value": text, "value_base64": base64.b64encode(value).decode()}


def node_json(node: m.NodeInfo) -> dict[str, Any]:
    return {
        "node": node.node,
        "generation": node.generation,
        "state": node.state,
        "peer_address": node.peer_address,
        "client_address": node.client_address,
        "admin_address": node.admin_address,
    }


def survival_warning(members: Sequence[m.RaftMember]) -> str | None:
    voters = sum(1 for x in members if x.role == "voter")
    if voters >= VOTERS_FOR_ONE_FAILURE:
        return None
    return (
        f"{voters} voter(s): the metadata service cannot survive the loss of a node "
        f"(at least {VOTERS_FOR_ONE_FAILURE} voters are needed)"
    )


# --------------------------------------------------------------- status


@dataclass(frozen=True)
class _NodeReport:
    address: str
    node: int
    status: m.NodeStatus | None
    error: str


STATUS_NODE_TIMEOUT_S_DEFAULT = 1.0


async def _gather_status(
    client: Client, node_timeout_s: float = STATUS_NODE_TIMEOUT_S_DEFAULT
) -> tuple[list[_NodeReport], list[str]]:
    """Every node's status, asked at once; an unreachable node is a row with its reason.

    The given addresses have the whole deadline for a first answer; once one
    answered, the rest (and the registered nodes not given) get at most
    ``node_timeout_s`` more, so one dead node does not hold the report.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + client.timeout_s

    async def one(address: str, node: int) -> _NodeReport:
        try:
            status = await client.status(address, timeout_s=max(0.001, deadline - loop.time()))
        except CatenaryError as exc:
            return _NodeReport(address, node, None, str(exc))
        return _NodeReport(address, status.node, status, "")

    asked = {a: loop.create_task(one(a, 0)) for a in client.addresses}
    first: _NodeReport | None = None
    waiting = set(asked.values())
    while waiting and first is None:
        done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        first = next((t.result() for t in done if t.result().status is not None), None)
    if first is None or first.status is None:
        reasons = "; ".join(f"{a}: {t.result().error}" for a, t in asked.items())
        raise UnavailableError(f"no node answered: {reasons}")
    warnings: list[str] = []
    try:
        nodes = await client.nodes(timeout_s=max(0.001, min(deadline - loop.time(), 2.0)))
    except CatenaryError as exc:
        nodes = ()
        warnings.append(f"could not list nodes: {exc}")
    registered = {n.client_address: n.node for n in nodes}
    rest_deadline = min(deadline, loop.time() + node_timeout_s)
    for address, node in registered.items():
        if address not in asked:
            asked[address] = loop.create_task(one(address, node))
    _, late = await asyncio.wait(asked.values(), timeout=max(0.0, rest_deadline - loop.time()))
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    by_address = {
        a: t.result()
        if not t.cancelled()
        else _NodeReport(a, registered.get(a, 0), None, f"no answer within {node_timeout_s}s")
        for a, t in asked.items()
    }
    for address, report in by_address.items():
        if report.node == 0 and address in registered:
            by_address[address] = _NodeReport(address, registered[address], None, report.error)
    # Registered nodes by id, then addresses given that no node is registered at.
    reports = [by_address[a] for a in sorted(registered, key=lambda a: registered[a])]
    reports += [r for a, r in by_address.items() if a not in registered]
    first_status = first.status
    leader_view = next(
        (r.status for r in reports if r.status is not None and r.status.raft_state == "leader"),
        first_status,
    )
    if leader_view.leader == 0:
        warnings.append("no metadata leader is known")
    if not leader_view.provisioned:
        warnings.append("the cluster is not provisioned (run: catenary provision)")
    warning = survival_warning(leader_view.members)
    if warning is not None:
        warnings.append(warning)
    for report in reports:
        if report.status is None:
            label = str(report.node or "?")
            warnings.append(f"node {label} at {report.address} is unreachable: {report.error}")
        elif report.status.disk_full:
            warnings.append(
                f"node {report.status.node} at {report.address}: disk full "
                f"({report.status.disk_full}); writes refused until space returns"
            )
    return reports, warnings


@click.command()
@client_options
@click.option(
    "--node-timeout",
    "node_timeout_s",
    type=click.FloatRange(min=0.001),
    default=STATUS_NODE_TIMEOUT_S_DEFAULT,
    show_default=True,
    help="once one node has answered, how long to wait for each other node's row",
)
def status(
    addresses: tuple[str, ...],
    as_json: bool,
    timeout_s: float,
    cluster_name: str | None,
    node_timeout_s: float,
) -> None:
    """Show every node's Raft state and warn when the cluster cannot survive a failure."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)
    reports, warnings = run(
        options, lambda client: _gather_status(client, node_timeout_s), dial_all=False
    )
    node_text = {r.address: str(r.node) if r.node else "?" for r in reports}
    if options.json:
        emit_json(
            {
                "nodes": [
                    {
                        "address": r.address,
                        "node": r.node,
                        "reachable": r.status is not None,
                        "error": r.error,
                        "status": m.status_to_json(r.status) if r.status is not None else None,
                    }
                    for r in reports
                ],
                "warnings": warnings,
            }
        )
    else:
        rows: list[list[object]] = []
        for r in reports:
            s = r.status
            if s is None:
                row: list[object] = [node_text[r.address], "-", "unreachable"]
                row += ["-"] * 6
                rows.append([*row, r.address])
                continue
            voters = sum(1 for x in s.members if x.role == "voter")
            rows.append(
                [
                    s.node,
                    s.generation,
                    s.raft_state,
                    s.term,
                    s.leader or "-",
                    s.commit_index,
                    s.applied_index,
                    voters,
                    s.metadata_server,
                    r.address,
                ]
            )
        click.echo(
            table(
                [
                    "NODE",
                    "GEN",
                    "STATE",
                    "TERM",
                    "LEADER",
                    "COMMIT",
                    "APPLIED",
                    "VOTERS",
                    "METADATA",
                    "ADDRESS",
                ],
                rows,
            )
        )
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if any(r.status is None for r in reports):
        sys.exit(EXIT_UNAVAILABLE)


# ---------------------------------------------------------------- nodes


@click.group()
def nodes() -> None:
    """Nodes registered in the cluster."""


@nodes.command("list")
@client_options
def nodes_list(
    addresses: tuple[str, ...], as_json: bool, timeout_s: float, cluster_name: str | None
) -> None:
    """List every node with its generation, state and addresses."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)
    infos = run(options, lambda client: client.nodes())
    if options.json:
        emit_json([node_json(n) for n in infos])
        return
    rows = [
        [n.node, n.generation, n.state, n.peer_address, n.client_address, n.admin_address]
        for n in sorted(infos, key=lambda n: n.node)
    ]
    click.echo(table(["NODE", "GEN", "STATE", "PEER", "CLIENT", "ADMIN"], rows))


# ------------------------------------------------------------ provision


@click.command()
@client_options
def provision(
    addresses: tuple[str, ...], as_json: bool, timeout_s: float, cluster_name: str | None
) -> None:
    """Provision the cluster (idempotent)."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)
    detail = run(options, lambda client: client.provision(cluster_name or ""))
    if options.json:
        emit_json({"provisioned": True, "detail": detail})
    else:
        click.echo(detail or "provisioned")


# ------------------------------------------------------- metadata-server


@click.group("metadata-server")
def metadata_server() -> None:
    """Members of the metadata Raft group."""


@metadata_server.command("list-servers")
@client_options
def list_servers(
    addresses: tuple[str, ...], as_json: bool, timeout_s: float, cluster_name: str | None
) -> None:
    """List the metadata group's members as the leader sees them."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)
    servers = run(options, lambda client: client.servers())
    warning = survival_warning(servers.members)
    if options.json:
        emit_json(
            {
                "leader": servers.leader,
                "members": [
                    {"node": x.node, "role": x.role, "match_index": x.match_index}
                    for x in servers.members
                ],
                "warnings": [warning] if warning else [],
            }
        )
    else:
        rows = [
            [x.node, x.role, x.match_index, "yes" if x.node == servers.leader else ""]
            for x in sorted(servers.members, key=lambda x: x.node)
        ]
        click.echo(table(["NODE", "ROLE", "MATCH", "LEADER"], rows))
    if warning:
        click.echo(f"warning: {warning}", err=True)


@metadata_server.command("add-node")
@click.argument("node", type=click.IntRange(min=1))
@client_options
def add_node(
    node: int, addresses: tuple[str, ...], as_json: bool, timeout_s: float, cluster_name: str | None
) -> None:
    """Add NODE to the metadata group (a learner, promoted to voter once caught up)."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)
    detail = run(options, lambda client: client.add_server(node))
    if options.json:
        emit_json({"node": node, "added": True, "detail": detail})
    else:
        click.echo(detail or f"node {node} added as a learner")


@metadata_server.command("remove-node")
@click.argument("node", type=click.IntRange(min=1))
@client_options
def remove_node(
    node: int, addresses: tuple[str, ...], as_json: bool, timeout_s: float, cluster_name: str | None
) -> None:
    """Remove NODE from the metadata group (refused if it would lose quorum)."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)
    detail = run(options, lambda client: client.remove_server(node))
    if options.json:
        emit_json({"node": node, "removed": True, "detail": detail})
    else:
        click.echo(detail or f"node {node} removed")


__all__ = [
    "Options",
    "client_options",
    "emit_json",
    "fail",
    "make_options",
    "metadata_server",
    "nodes",
    "provision",
    "run",
    "status",
    "table",
    "value_json",
    "value_text",
]
