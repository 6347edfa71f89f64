"""``catenary bench``: the project's own benchmarks (one sub-command per subsystem)."""

from __future__ import annotations

import json

import click


@click.group()
def bench() -> None:
    """Run a benchmark and print its figures."""


@bench.command("storage")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per figure per line.")
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.1, max=600),
    default=5.0,
    show_default=True,
    help="Measured seconds per case (after a short warm-up).",
)
@click.option(
    "--dir",
    "base_dir",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Directory for the temporary store (default: the system temp dir).",
)
@click.option(
    "--loop",
    type=click.Choice(["uvloop", "asyncio"]),
    default=None,
    help="Event loop (default: uvloop when installed).",
)
@click.option(
    "--preallocate",
    type=click.Choice(["both", "on", "off"]),
    default="both",
    show_default=True,
    help="Segments preallocated (overwritten in place), growing with each write, or each "
    "case in both modes, one after the other.",
)
@click.option(
    "--segment-mib",
    type=click.IntRange(min=1, max=4096),
    default=64,
    show_default=True,
    help="Segment size in MiB (what preallocation writes in zeros per segment; the "
    "store's default is 64).",
)
@click.option(
    "--records-per-append",
    type=click.IntRange(min=1, max=65536),
    default=1,
    show_default=True,
    help="Records each appender hands over per await (append_many when > 1): what one "
    "await costs, against what the engine's write path can carry.",
)
def storage(
    as_json: bool,
    seconds: float,
    base_dir: str | None,
    loop: str | None,
    preallocate: str,
    segment_mib: int,
    records_per_append: int,
) -> None:
    """Durable appends through the storage engine: 1 and 64 appenders, 100 B and 4 KiB."""
    from catenary.bench import storage as bench_storage

    segment_bytes_max = segment_mib << 20
    if not as_json:
        click.echo(bench_storage.describe_setup(seconds, base_dir, loop, segment_bytes_max))
    modes = {"both": (False, True), "on": (True,), "off": (False,)}[preallocate]
    figures = bench_storage.run(
        seconds=seconds,
        base_dir=base_dir,
        loop=loop,
        progress=None if as_json else click.echo,
        preallocate=modes,
        segment_bytes_max=segment_bytes_max,
        records_per_append=records_per_append,
    )
    if as_json:
        for figure in figures:
            click.echo(json.dumps(figure.as_json()))


@bench.command("metadata")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per figure per line.")
@click.option(
    "--address",
    "addresses",
    multiple=True,
    help="Client address of a running cluster (repeatable or comma-separated); "
    "default: start 3 local nodes and stop them afterwards.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.1, max=600),
    default=5.0,
    show_default=True,
    help="Measured seconds per figure.",
)
@click.option(
    "--clients",
    "concurrency",
    type=click.IntRange(min=1, max=4096),
    multiple=True,
    help="Concurrent clients of a phase (repeatable); default: 1, 16 and 64.",
)
@click.option(
    "--op",
    "ops",
    type=click.Choice(["put", "get"]),
    multiple=True,
    help="Operations to measure (repeatable); default: put and get.",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="OPTION=VALUE",
    help="Server option for the nodes it starts (repeatable), "
    "e.g. --set metadata.persists_in_flight_max=4.",
)
@click.option(
    "--dir",
    "base_dir",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Directory for the data of the nodes it starts (default: the system temp dir): "
    "the disk whose fsyncs are measured.",
)
def metadata(
    as_json: bool,
    addresses: tuple[str, ...],
    seconds: float,
    concurrency: tuple[int, ...],
    ops: tuple[str, ...],
    settings: tuple[str, ...],
    base_dir: str | None,
) -> None:
    """Metadata puts and linearizable gets with 1, 16 and 64 concurrent clients."""
    import sys

    from catenary.bench.metadata import run_bench

    address = [a for item in addresses for a in item.split(",") if a.strip()]
    sys.exit(
        run_bench(
            address=address,
            seconds=seconds,
            as_json=as_json,
            concurrency=concurrency or (1, 16, 64),
            ops=ops or ("put", "get"),
            settings=settings,
            base_dir=base_dir,
        )
    )


@bench.command("log-store")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per figure per line.")
@click.option(
    "--records", type=click.IntRange(1, 100_000_000), default=1_000_000, show_default=True
)
@click.option(
    "--per-write",
    "per_writes",
    type=click.IntRange(1, 100_000),
    multiple=True,
    help="Records per accepted store (repeatable); default: 1 (worst case) and 100.",
)
@click.option("--record-bytes", type=click.IntRange(0, 1 << 20), default=100, show_default=True)
@click.option("--loglets", type=click.IntRange(1, 10_000), default=4, show_default=True)
@click.option(
    "--dir",
    "base_dir",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Directory for the temporary store (default: the system temp dir).",
)
@click.option(
    "--crash",
    is_flag=True,
    help="Leave the store unclosed (as after SIGKILL): the open replays past the last checkpoint.",
)
def log_store(
    as_json: bool,
    crash: bool,
    records: int,
    per_writes: tuple[int, ...],
    record_bytes: int,
    loglets: int,
    base_dir: str | None,
) -> None:
    """A log store holding many records: write, open in a fresh process, read back."""
    from catenary.bench.log_store import run

    for per_write in per_writes or (1, 100):
        f = run(records, per_write, record_bytes, loglets, base_dir, crash=crash)
        setup = {
            "crash": crash,
            "records": f.records,
            "per_write": per_write,
            "record_bytes": record_bytes,
            "loglets": loglets,
            "fsync": True,
        }
        figures = [
            ("log_store_write_s", f.write_s, "s"),
            ("log_store_open_s", f.open_s, "s"),
            ("log_store_open_replayed_writes", f.replayed, "writes"),
            ("log_store_open_rss_mb", f.rss_open_mb, "MB"),
            ("log_store_read_rss_mb", f.rss_mb, "MB"),
            ("log_store_read_records_per_s", f.read_records / max(f.read_s, 1e-9), "records/s"),
        ]
        if as_json:
            for name, value, unit in figures:
                click.echo(json.dumps({"figure": name, "value": value, "unit": unit, **setup}))
        else:
            click.echo(
                f"{f.records:,} records x {record_bytes} B over {loglets} loglets, "
                f"{per_write} per write: write {f.write_s:.2f} s; open {f.open_s:.3f} s "
                f"(replayed {f.replayed} writes), peak RSS {f.rss_open_mb} MB; read "
                f"{f.read_records:,} records at {f.read_records / max(f.read_s, 1e-9):,.0f}/s "
                f"(peak RSS then {f.rss_mb} MB)"
            )


@bench.command("log")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per figure per line.")
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.1, max=600),
    default=3.0,
    show_default=True,
    help="Measured seconds per figure (reads stop earlier when everything is read).",
)
@click.option(
    "--writers",
    type=click.IntRange(min=1, max=4096),
    default=16,
    show_default=True,
    help="Pipelined phase: concurrent writers, each awaiting one batch at a time.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1, max=65_536),
    default=256,
    show_default=True,
    help="Pipelined phase: records per append request.",
)
@click.option(
    "--callers",
    type=click.IntRange(min=1, max=100_000),
    default=1024,
    show_default=True,
    help="Appender phase: concurrent callers awaiting one record each through one Appender.",
)
@click.option(
    "--read-records-max",
    type=click.IntRange(min=1, max=1_000_000),
    default=8192,
    show_default=True,
    help="Records asked for per read request (a reply also stops at logs.read_reply_bytes_max).",
)
@click.option(
    "--no-local",
    is_flag=True,
    help="Skip the local provider's figures (by default printed beside the replicated ones).",
)
def log(
    as_json: bool,
    seconds: float,
    writers: int,
    batch: int,
    callers: int,
    read_records_max: int,
    no_local: bool,
) -> None:
    """Log appends (1 awaiting writer, pipelined writers) and catch-up reads, 3 local nodes."""
    import sys

    from catenary.bench.log import Options, run_bench

    opts = Options(
        seconds=seconds,
        writers=writers,
        batch=batch,
        callers=callers,
        read_records_max=read_records_max,
        with_local=not no_local,
    )
    sys.exit(run_bench(opts=opts, as_json=as_json))
