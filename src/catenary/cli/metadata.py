"""``catenary metadata get|put|delete|list|watch``: the metadata store from the shell.

Options and exit codes are those of ``catenary.cli.admin`` (0 ok, 1 failed:
precondition failed or not found, 2 bad input, 3 unavailable or timed out,
4 indeterminate).  ``get`` of an absent key exits 1.  Values are given as an
argument (``-`` reads standard input as bytes) and printed as text when they
are clean UTF-8, else as hex; ``--json`` carries them as UTF-8 (or null) and
base64.
"""

from __future__ import annotations

import sys

import click

from catenary.api.types import Event, KeyValue
from catenary.cli.admin import (
    EXIT_FAILED,
    client_options,
    emit_json,
    fail,
    make_options,
    run,
    table,
    value_json,
    value_text,
)
from catenary.client import Client


def _kv_json(kv: KeyValue) -> dict[str, object]:
    return {"key": kv.key, "version": kv.version, "lease": kv.lease, **value_json(kv.value)}


def _kv_rows(kvs: tuple[KeyValue, ...] | list[KeyValue]) -> str:
    rows = [[kv.key, kv.version, kv.lease or "-", value_text(kv.value)] for kv in kvs]
    return table(["KEY", "VERSION", "LEASE", "VALUE"], rows)


@click.group()
def metadata() -> None:
    """The metadata store: versioned keys, conditional writes, leases, watches."""


@metadata.command()
@click.argument("key")
@click.option("--stale", is_flag=True, help="let any node answer from its applied state")
@client_options
def get(
    key: str,
    stale: bool,
    addresses: tuple[str, ...],
    as_json: bool,
    timeout_s: float,
    cluster_name: str | None,
) -> None:
    """Print KEY's value and version (linearizable unless --stale); exit 1 if absent."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)
    result = run(options, lambda client: client.metadata.get_result(key, stale=stale))
    if options.json:
        emit_json(
            {
                "key": key,
                "found": result.kv is not None,
                "kv": _kv_json(result.kv) if result.kv is not None else None,
                "revision": result.revision,
                "behind": result.behind,
            }
        )
    elif result.kv is not None:
        click.echo(_kv_rows([result.kv]))
    if result.kv is None:
        fail(EXIT_FAILED, f"not found: {key!r}")
    if stale and result.behind and not options.json:
        click.echo(f"note: the answering node is {result.behind} entries behind", err=True)


@metadata.command()
@click.argument("key")
@click.argument("value")
@click.option("--if-absent", is_flag=True, help="write only if the key does not exist")
@click.option(
    "--if-version",
    type=click.IntRange(min=0),
    default=None,
    help="write only if the key is at this version (0: absent)",
)
@click.option("--lease", type=click.IntRange(min=0), default=0, help="attach the key to a lease")
@client_options
def put(
    key: str,
    value: str,
    if_absent: bool,
    if_version: int | None,
    lease: int,
    addresses: tuple[str, ...],
    as_json: bool,
    timeout_s: float,
    cluster_name: str | None,
) -> None:
    """Write VALUE to KEY (VALUE "-" reads standard input); print the new version."""
    if if_absent and if_version is not None:
        raise click.UsageError("give at most one of --if-absent and --if-version")
    data = sys.stdin.buffer.read() if value == "-" else value.encode()
    options = make_options(addresses, as_json, timeout_s, cluster_name)

    async def action(client: Client) -> int:
        return await client.metadata.put(
            key, data, if_absent=if_absent, if_version=if_version, lease=lease
        )

    version = run(options, action)
    if options.json:
        emit_json({"key": key, "version": version})
    else:
        click.echo(f"{key} version {version}")


@metadata.command()
@click.argument("key")
@click.option(
    "--if-version", type=click.IntRange(min=0), default=None, help="delete only at this version"
)
@client_options
def delete(
    key: str,
    if_version: int | None,
    addresses: tuple[str, ...],
    as_json: bool,
    timeout_s: float,
    cluster_name: str | None,
) -> None:
    """Delete KEY; print the revision of the delete (exit 1 if KEY is absent)."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)
    revision = run(options, lambda client: client.metadata.delete(key, if_version=if_version))
    if options.json:
        emit_json({"key": key, "revision": revision})
    else:
        click.echo(f"{key} deleted at revision {revision}")


@metadata.command("list")
@click.argument("prefix", default="")
@click.option(
    "--limit", type=click.IntRange(min=0), default=0, help="at most this many keys (0: all)"
)
@click.option("--stale", is_flag=True, help="let any node answer from its applied state")
@client_options
def list_keys(
    prefix: str,
    limit: int,
    stale: bool,
    addresses: tuple[str, ...],
    as_json: bool,
    timeout_s: float,
    cluster_name: str | None,
) -> None:
    """List keys starting with PREFIX, in key order."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)
    result = run(options, lambda client: client.metadata.list(prefix, limit, stale=stale))
    if options.json:
        emit_json(
            {
                "prefix": prefix,
                "kvs": [_kv_json(kv) for kv in result.kvs],
                "revision": result.revision,
                "more": result.more,
            }
        )
        return
    click.echo(_kv_rows(result.kvs))
    if result.more:
        click.echo(f"(more keys after these {len(result.kvs)}; raise --limit)", err=True)


@metadata.command()
@click.argument("key")
@click.option("--prefix", is_flag=True, help="watch every key starting with KEY")
@click.option(
    "--from-version",
    type=click.IntRange(min=0),
    default=0,
    help="deliver changes after this version (0: from now)",
)
@click.option(
    "--count", type=click.IntRange(min=0), default=0, help="stop after this many events (0: never)"
)
@client_options
def watch(
    key: str,
    prefix: bool,
    from_version: int,
    count: int,
    addresses: tuple[str, ...],
    as_json: bool,
    timeout_s: float,
    cluster_name: str | None,
) -> None:
    """Print changes to KEY (or under it with --prefix) as they happen, one per line."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)

    def show(event: Event) -> None:
        if options.json:
            emit_json(
                {
                    "kind": event.kind,
                    "key": event.key,
                    "version": event.version,
                    **value_json(event.value),
                }
            )
        else:
            shown = value_text(event.value) if event.kind == "put" else ""
            click.echo(f"{event.version} {event.kind} {event.key} {shown}".rstrip())

    async def action(client: Client) -> None:
        seen = 0
        async with client.metadata.watch(key, prefix=prefix, from_version=from_version) as watcher:
            async for event in watcher:
                show(event)
                seen += 1
                if count and seen >= count:
                    return

    run(options, action)
