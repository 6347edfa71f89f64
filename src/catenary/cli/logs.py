"""``catenary logs list|describe|append|read|tail|trim|seal|reconfigure``: logs from the shell.

Options and exit codes are those of ``catenary.cli.admin`` (0 ok, 1 failed:
an unknown log, a refused change; 2 bad input: a record over the node's
limit, a bad LSN; 3 unavailable or timed out, a sealed log that took no new
segment in time; 4 indeterminate: an append that may or may not be in the
log).  A log is named by its id (``0`` .. ``count - 1``, ``[logs] count``).

``append LOG RECORD...`` appends the records as one batch.  With no RECORD
it appends the lines of standard input, one record a line (the line's end
``\\n``, or ``\\r\\n``, is not part of the record), in batches of at most
``--batch`` lines; one batch is in flight at a time, so the lines keep their
order in the log.  It prints the first and last LSN given.

``read`` and ``tail`` print one line per record, ``LSN<TAB>payload`` (the
payload as text when it is clean UTF-8, else hex, as ``catenary metadata``
prints values), and one line per gap (``FIRST..LAST<TAB>trim gap: ...``).
With ``--json`` every line is a JSON object: ``{"lsn", "value",
"value_base64"}`` for a record, ``{"gap": "trim"|"data_loss", "from_lsn",
"to_lsn"}`` for a gap (``to_lsn`` exclusive).  ``read`` stops at ``--to``
(inclusive), else at the tail found when it started, unless ``--follow``;
``tail`` follows the log from its current tail (or ``--from``) until
interrupted or ``--count`` records were printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import click

from catenary.api.messages import LogGap, LogInfo, LogRecord, SegmentInfo
from catenary.cli.admin import (
    EXIT_OK,
    Options,
    client_options,
    emit_json,
    make_options,
    run,
    table,
    value_json,
    value_text,
)
from catenary.client import Client

LOG_ID = click.IntRange(0, (1 << 32) - 1)
BATCH_LINES_DEFAULT = 1000
PROVIDERS = ("replicated", "local")
RECONFIGURE_TIMEOUT_S_MIN = 15.0


# ---------------------------------------------------------------- shapes


def segment_json(segment: SegmentInfo) -> dict[str, Any]:
    return {
        "index": segment.index,
        "base_lsn": segment.base_lsn,
        "end_lsn": segment.end_lsn,
        "provider": segment.provider,
        "replication": segment.replication,
        "sequencer": segment.sequencer,
        "nodeset": list(segment.nodeset),
    }


def log_json(info: LogInfo) -> dict[str, Any]:
    return {
        "log": info.log,
        "version": info.version,
        "trim_point": info.trim_point,
        "tail": info.tail,
        "sealed": info.sealed,
        "segments": [segment_json(s) for s in info.segments],
    }


def _nodeset(segment: SegmentInfo) -> str:
    return ",".join(str(n) for n in segment.nodeset) or "-"


def _tail_text(info: LogInfo) -> str:
    return str(info.tail) if info.tail else "?"


def _state(info: LogInfo) -> str:
    return "sealed" if info.sealed else "open"


def describe_text(info: LogInfo) -> str:
    head = (
        f"log {info.log}: tail {_tail_text(info)}, trim point {info.trim_point}, "
        f"{_state(info)}, chain version {info.version}"
    )
    rows = []
    last = len(info.segments) - 1
    for i, s in enumerate(info.segments):
        if i == last and s.end_lsn == 0:
            end = f"tail {_tail_text(info)}"
        else:
            end = str(s.end_lsn)
        replication, sequencer = s.replication or "-", s.sequencer or "-"
        rows.append([s.index, s.base_lsn, end, s.provider, replication, sequencer, _nodeset(s)])
    headers = ["SEGMENT", "BASE", "END", "PROVIDER", "REPLICATION", "SEQUENCER", "NODESET"]
    return head + "\n" + table(headers, rows)


def item_json(item: LogRecord | LogGap) -> dict[str, Any]:
    if isinstance(item, LogRecord):
        return {"lsn": item.lsn, **value_json(item.payload)}
    return {"gap": item.kind, "from_lsn": item.from_lsn, "to_lsn": item.to_lsn}


def item_text(item: LogRecord | LogGap) -> str:
    if isinstance(item, LogRecord):
        return f"{item.lsn}\t{value_text(item.payload)}"
    span = f"{item.from_lsn}..{item.to_lsn - 1}"
    if item.kind == "trim":
        return f"{span}\ttrim gap: these LSNs were trimmed away"
    if item.kind == "data_loss":
        return f"{span}\tdata loss: no log-server of the segment holds these LSNs"
    return f"{span}\tgap ({item.kind})"


# ----------------------------------------------------------------- group


@click.group()
def logs() -> None:
    """Logs: append records, read them back in LSN order, tail, trim, seal, reconfigure."""


@logs.command("list")
@client_options
def list_logs(
    addresses: tuple[str, ...], as_json: bool, timeout_s: float, cluster_name: str | None
) -> None:
    """One row per log: its tail, trim point and where its tail segment lives."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)
    infos = run(options, lambda client: client.logs.list())
    if options.json:
        emit_json({"logs": [log_json(i) for i in infos]})
        return
    rows = []
    for info in infos:
        seg = info.segments[-1] if info.segments else None
        rows.append(
            [
                info.log,
                _tail_text(info),
                info.trim_point,
                _state(info),
                len(info.segments),
                seg.provider if seg else "-",
                (seg.replication or "-") if seg else "-",
                (seg.sequencer or "-") if seg else "-",
                _nodeset(seg) if seg else "-",
            ]
        )
    headers = [
        "LOG",
        "TAIL",
        "TRIM",
        "STATE",
        "SEGMENTS",
        "PROVIDER",
        "REPLICATION",
        "SEQUENCER",
        "NODESET",
    ]
    click.echo(table(headers, rows))


@logs.command()
@click.argument("log", type=LOG_ID)
@client_options
def describe(
    log: int,
    addresses: tuple[str, ...],
    as_json: bool,
    timeout_s: float,
    cluster_name: str | None,
) -> None:
    """LOG's segments: provider, replication, sequencer, nodeset, base LSN and end."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)
    info = run(options, lambda client: client.logs.describe(log))
    if options.json:
        emit_json(log_json(info))
    else:
        click.echo(describe_text(info))


# ---------------------------------------------------------------- append


def _strip_line(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def _start_line_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | None]) -> None:
    """Feed stdin's lines to ``queue`` (``None`` at the end) from a daemon thread.

    A daemon thread, not the loop's executor: an error while the thread waits
    for a terminal's next line must not hold the command's exit."""
    stream = sys.stdin.buffer

    def pump() -> None:
        try:
            for line in stream:
                loop.call_soon_threadsafe(queue.put_nowait, _strip_line(line))
        except (OSError, ValueError, RuntimeError):
            pass  # stdin closed, or the loop closed after an error
        with contextlib.suppress(RuntimeError):  # the loop is gone: the command ended
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="catenary-stdin", daemon=True).start()


class _Appended:
    def __init__(self) -> None:
        self.first_lsn = 0
        self.last_lsn = 0
        self.records = 0
        self.requests = 0

    def add(self, first: int, last: int, count: int) -> None:
        if not self.records:
            self.first_lsn = first
        self.last_lsn = last
        self.records += count
        self.requests += 1


async def _append_stdin(client: Client, log: int, batch_max: int, done: _Appended) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    _start_line_reader(loop, queue)
    ended = False
    while not ended:
        first = await queue.get()
        if first is None:
            return
        batch = [first]
        while len(batch) < batch_max and not queue.empty():
            line = queue.get_nowait()
            if line is None:
                ended = True
                break
            batch.append(line)
        result = await client.logs.append_result(log, batch)
        done.add(result.first_lsn, result.last_lsn, len(batch))


@logs.command()
@click.argument("log", type=LOG_ID)
@click.argument("records", nargs=-1)
@click.option(
    "--batch",
    "batch_max",
    type=click.IntRange(min=1),
    default=BATCH_LINES_DEFAULT,
    show_default=True,
    help="at most this many stdin lines per append request",
)
@client_options
def append(
    log: int,
    records: tuple[str, ...],
    batch_max: int,
    addresses: tuple[str, ...],
    as_json: bool,
    timeout_s: float,
    cluster_name: str | None,
) -> None:
    """Append RECORDs to LOG as one batch; with none, each line of standard input.

    Prints the first and last LSN given.  A retried append (after a seal or a
    lost answer) may be in the log twice: appends are at least once."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)
    done = _Appended()

    async def action(client: Client) -> None:
        try:
            if records:
                result = await client.logs.append_result(log, [r.encode() for r in records])
                done.add(result.first_lsn, result.last_lsn, len(records))
            else:
                await _append_stdin(client, log, batch_max, done)
        except BaseException:
            if done.records:
                click.echo(
                    f"note: {done.records} record(s) were appended before the failure "
                    f"(LSNs {done.first_lsn}..{done.last_lsn})",
                    err=True,
                )
            raise

    run(options, action)
    if options.json:
        emit_json(
            {
                "log": log,
                "first_lsn": done.first_lsn or None,
                "last_lsn": done.last_lsn or None,
                "records": done.records,
            }
        )
    elif not done.records:
        click.echo("nothing appended (no input)")
    elif done.last_lsn - done.first_lsn + 1 == done.records:
        click.echo(
            f"appended {done.records} record(s) to log {log}: LSN {done.first_lsn}..{done.last_lsn}"
        )
    else:
        click.echo(
            f"appended {done.records} record(s) to log {log} in {done.requests} batches: "
            f"LSN {done.first_lsn}..{done.last_lsn}, interleaved with other writers' records"
        )


# ------------------------------------------------------------ read, tail


def _printer(as_json: bool) -> Callable[[LogRecord | LogGap], None]:
    if as_json:
        return lambda item: emit_json(item_json(item))
    return lambda item: click.echo(item_text(item))


LsnOf = Callable[[Client], Awaitable[int | None]]


def _print_items(options: Options, log: int, first: LsnOf, end: LsnOf, count: int) -> None:
    """Print LOG's items from ``first`` up to ``end`` (exclusive; None: follow)."""
    show = _printer(options.json)

    async def action(client: Client) -> None:
        from_lsn = await first(client)
        to_lsn = await end(client)
        assert from_lsn is not None
        if to_lsn is not None and to_lsn <= from_lsn:
            return
        seen = 0
        async for item in client.logs.read(log, from_lsn, to_lsn):
            show(item)
            if isinstance(item, LogRecord):
                seen += 1
                if count and seen >= count:
                    return

    try:
        run(options, action)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as ``cat`` does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_OK)


@logs.command()
@click.argument("log", type=LOG_ID)
@click.option(
    "--from",
    "from_lsn",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="the first LSN to print",
)
@click.option(
    "--to",
    "to_lsn",
    type=click.IntRange(min=1),
    default=None,
    help="the last LSN to print (inclusive; waits for it if it is not yet written)",
)
@click.option("--follow", "-f", is_flag=True, help="go on past the tail, printing new records")
@click.option(
    "--count",
    type=click.IntRange(min=0),
    default=0,
    help="stop after this many records (0: no limit)",
)
@client_options
def read(
    log: int,
    from_lsn: int,
    to_lsn: int | None,
    follow: bool,
    count: int,
    addresses: tuple[str, ...],
    as_json: bool,
    timeout_s: float,
    cluster_name: str | None,
) -> None:
    """Print LOG's records in LSN order, from --from to --to, or to the tail found at start."""
    if to_lsn is not None and follow:
        raise click.UsageError("give at most one of --to and --follow")
    if to_lsn is not None and to_lsn < from_lsn:
        raise click.UsageError(f"--to ({to_lsn}) is below --from ({from_lsn})")
    options = make_options(addresses, as_json, timeout_s, cluster_name)

    async def first(client: Client) -> int | None:
        return from_lsn

    async def end(client: Client) -> int | None:
        if to_lsn is not None:
            return to_lsn + 1
        if follow:
            return None
        return (await client.logs.find_tail(log)).tail

    _print_items(options, log, first, end, count)


@logs.command()
@click.argument("log", type=LOG_ID)
@click.option(
    "--from",
    "from_lsn",
    type=click.IntRange(min=1),
    default=None,
    help="start here instead of at the current tail",
)
@click.option(
    "--count", type=click.IntRange(min=0), default=0, help="stop after this many records (0: never)"
)
@client_options
def tail(
    log: int,
    from_lsn: int | None,
    count: int,
    addresses: tuple[str, ...],
    as_json: bool,
    timeout_s: float,
    cluster_name: str | None,
) -> None:
    """Print LOG's new records as they are appended, like ``tail -f`` (Ctrl-C stops)."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)

    async def first(client: Client) -> int | None:
        if from_lsn is not None:
            return from_lsn
        return (await client.logs.find_tail(log)).tail

    async def end(client: Client) -> int | None:
        return None

    _print_items(options, log, first, end, count)


# ---------------------------------------------------- trim, seal, move


@logs.command()
@click.argument("log", type=LOG_ID)
@click.argument("lsn", type=click.IntRange(min=0))
@client_options
def trim(
    log: int,
    lsn: int,
    addresses: tuple[str, ...],
    as_json: bool,
    timeout_s: float,
    cluster_name: str | None,
) -> None:
    """Discard LOG's records at or below LSN (clipped to the committed tail).

    Readers from below the new trim point get a trim gap, not an error."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)
    result = run(options, lambda client: client.logs.trim(log, lsn))
    if options.json:
        emit_json(
            {
                "log": log,
                "trim_point": result.trim_point,
                "segments_dropped": result.segments_dropped,
            }
        )
    else:
        click.echo(
            f"log {log} trimmed: trim point {result.trim_point}, "
            f"{result.segments_dropped} segment(s) dropped"
        )
    if result.trim_point < lsn and not options.json:
        click.echo(
            f"note: trim point {result.trim_point} is below {lsn}: "
            "a log is trimmed no further than its committed tail",
            err=True,
        )


@logs.command()
@click.argument("log", type=LOG_ID)
@client_options
def seal(
    log: int,
    addresses: tuple[str, ...],
    as_json: bool,
    timeout_s: float,
    cluster_name: str | None,
) -> None:
    """Seal LOG's tail segment: no append commits there any more; prints its tail.

    Appends wait for a new segment and then fail (SEALED, exit 3) until
    ``catenary logs reconfigure LOG``."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)
    sealed_tail = run(options, lambda client: client.logs.seal(log))
    if options.json:
        emit_json({"log": log, "sealed": True, "tail": sealed_tail})
    else:
        click.echo(f"log {log} sealed at tail {sealed_tail}")
        click.echo(f"note: appends resume after: catenary logs reconfigure {log}", err=True)


@logs.command()
@click.argument("log", type=LOG_ID)
@click.option(
    "--provider",
    type=click.Choice(PROVIDERS),
    default=None,
    help="the new segment's provider [default: the cluster's, logs.provider]",
)
@click.option(
    "--replication",
    default="",
    help="the new segment's replication, e.g. '{node: 2}' [default: the cluster's]",
)
@click.option(
    "--sequencer",
    type=click.IntRange(min=0),
    default=0,
    help="the node to sequence the new segment [default: the metadata leader]",
)
@client_options
def reconfigure(
    log: int,
    provider: str | None,
    replication: str,
    sequencer: int,
    addresses: tuple[str, ...],
    as_json: bool,
    timeout_s: float,
    cluster_name: str | None,
) -> None:
    """Seal LOG's tail segment and continue LOG in a new one; prints the new chain."""
    options = make_options(addresses, as_json, timeout_s, cluster_name)

    async def action(client: Client) -> LogInfo:
        # A reconfiguration seals a segment and writes the chain: at least 15 s.
        return await client.logs.reconfigure(
            log,
            provider=provider or "",
            replication=replication,
            sequencer=sequencer,
            timeout_s=max(timeout_s, RECONFIGURE_TIMEOUT_S_MIN),
        )

    info = run(options, action)
    if options.json:
        emit_json(log_json(info))
    else:
        click.echo(describe_text(info))


__all__ = ["item_json", "item_text", "log_json", "logs"]
