"""Storage-engine benchmark: durable appends through ``AsyncStore`` on real files.

Each case opens a fresh store in a temporary directory (deleted afterwards), runs N asyncio
tasks that each ``await store.append(payload)`` in a loop for a fixed time, and reports
records/s, MB/s (payload bytes), p50/p99 append latency (from the call to the resolved
future, so it includes the event-loop hop), fsyncs/s and the fsync latency itself. fsync is
always on: every acknowledged record is durable (one fdatasync per group-commit batch).

With N appenders each awaiting its own append of k records (``--records-per-append``, 1 by
default; ``append_many`` when more), at most N*k records can share an fsync, so by Little's
law records/s <= N*k / (mean append latency) < N*k / (mean fsync time). The
``ceiling_records_per_s`` figure is that last bound, measured in the same run: how close
records/s comes to it shows what the engine costs beyond the disk.

It also reports the process's CPU per record (user and system, every thread) over the
measured window.  The appenders wait for their fsync and the writer for their next
appends, so a batch's CPU and its fsync mostly follow each other: records/s is about
records-per-fsync / (mean fsync + CPU of one batch), and the CPU per record says how much
of each cycle is the engine's own work.

Each case runs with preallocated segments (files created at full size in written zeros, then
overwritten in place, so an fdatasync changes no file size) and/or without (files grow with
every write, so every fdatasync also commits the file-system journal for the new size); both
by default, so the two fsync figures come from the same run on the same disk.
"""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from catenary.runtime.disk import AsyncStore
from catenary.storage.fs import OsFile, OsFileSystem
from catenary.storage.store import StoreConfig

DEFAULT_CASES: tuple[tuple[int, int], ...] = ((1, 100), (64, 100), (1, 4096), (64, 4096))
WARMUP_S = 0.3
DEFAULT_SEGMENT_BYTES = StoreConfig().segment_bytes_max


@dataclass(frozen=True, slots=True)
class Figure:
    figure: str
    value: float
    unit: str
    setup: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"figure": self.figure, "value": self.value, "unit": self.unit, **self.setup}


class _CountingFile(OsFile):
    __slots__ = ("_counter", "_times")

    def __init__(self, path: str, create: bool, counter: list[int], times: list[float]) -> None:
        super().__init__(path, create)
        self._counter = counter
        self._times = times

    def fsync(self) -> None:
        t0 = time.perf_counter()
        super().fsync()
        self._times.append(time.perf_counter() - t0)
        self._counter[0] += 1


class _CountingFileSystem(OsFileSystem):
    """The real file system, counting and timing file fsyncs (for fsyncs/s and the ceiling).

    With N appenders each awaiting its own append, at most N records share one fsync, so
    records/s can never exceed N / (mean fsync time): the ``ceiling_records_per_s`` figure.
    """

    def __init__(self) -> None:
        self.fsyncs = [0]
        self.fsync_times: list[float] = []

    def open(self, path: str, create: bool) -> _CountingFile:
        return _CountingFile(path, create, self.fsyncs, self.fsync_times)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def _case(
    directory: str,
    appenders: int,
    record_bytes: int,
    seconds: float,
    config: StoreConfig,
    records_per_append: int = 1,
) -> dict[str, Any]:
    fs = _CountingFileSystem()
    store = await AsyncStore.open(fs, directory, config)
    payload = os.urandom(record_bytes)
    payloads = [payload] * records_per_append
    latencies: list[float] = []
    measuring = False
    running = True
    clock = time.perf_counter

    # One record per await (``append``) or several (``append_many``): each latency
    # sample stands for every record of its call, so records/s counts records.
    append: Callable[[Any], Any] = store.append if records_per_append == 1 else store.append_many
    item: Any = payload if records_per_append == 1 else payloads

    async def appender() -> None:
        record = latencies.extend
        while running:
            t0 = clock()
            await append(item)
            if measuring:
                record((clock() - t0,) * records_per_append)

    tasks = [asyncio.create_task(appender()) for _ in range(appenders)]
    await asyncio.sleep(WARMUP_S)
    fsyncs0 = fs.fsyncs[0]
    times0 = len(fs.fsync_times)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    start = clock()
    measuring = True
    await asyncio.sleep(seconds)
    measuring = False
    elapsed = clock() - start
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    fsyncs = fs.fsyncs[0] - fsyncs0
    fsync_times = sorted(fs.fsync_times[times0:])
    fsync_mean = sum(fsync_times) / len(fsync_times) if fsync_times else float("nan")
    running = False
    await asyncio.gather(*tasks)
    await store.close()
    latencies.sort()
    records = len(latencies)
    # The process's CPU (every thread: the event loop, the writer, the kernel's work
    # for their system calls) per record: with the fsync, what bounds records/s.
    user_us = (usage1.ru_utime - usage0.ru_utime) / max(1, records) * 1e6
    system_us = (usage1.ru_stime - usage0.ru_stime) / max(1, records) * 1e6
    return {
        "cpu_us_per_record": user_us + system_us,
        "cpu_user_us_per_record": user_us,
        "cpu_system_us_per_record": system_us,
        "cpu_busy_pct": (user_us + system_us) * records / 1e6 / elapsed * 100.0,
        "records_per_s": records / elapsed,
        "mb_per_s": records * record_bytes / elapsed / 1e6,
        "p50_ms": _percentile(latencies, 0.50) * 1e3,
        "p99_ms": _percentile(latencies, 0.99) * 1e3,
        "fsyncs_per_s": fsyncs / elapsed,
        "records_per_fsync": records / fsyncs if fsyncs else float(records),
        "fsync_p50_ms": _percentile(fsync_times, 0.50) * 1e3,
        "fsync_p99_ms": _percentile(fsync_times, 0.99) * 1e3,
        "fsync_mean_ms": fsync_mean * 1e3,
        "ceiling_records_per_s": (
            appenders * records_per_append / fsync_mean if fsync_times else float("nan")
        ),
        "records": records,
        "elapsed_s": elapsed,
    }


def _loop_factory(loop_name: str) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run
    return asyncio.run


def available_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(
    *,
    seconds: float = 5.0,
    base_dir: str | None = None,
    cases: Sequence[tuple[int, int]] = DEFAULT_CASES,
    loop: str | None = None,
    progress: Callable[[str], None] | None = None,
    preallocate: Sequence[bool] = (False, True),
    segment_bytes_max: int = DEFAULT_SEGMENT_BYTES,
    records_per_append: int = 1,
) -> list[Figure]:
    """Run every (appenders, record_bytes) case in each preallocation mode; returns the
    figures (their setup says which mode)."""
    loop_name = loop or available_loop()
    runner = _loop_factory(loop_name)
    figures: list[Figure] = []
    root = tempfile.mkdtemp(prefix="catenary-bench-storage-", dir=base_dir)
    runs = [(mode, case) for case in cases for mode in preallocate]
    try:
        for n, (mode, (appenders, record_bytes)) in enumerate(runs):
            directory = os.path.join(root, f"case{n}")
            config = StoreConfig(segment_bytes_max=segment_bytes_max, preallocate=mode)
            result = runner(
                _case(directory, appenders, record_bytes, seconds, config, records_per_append)
            )
            shutil.rmtree(directory, ignore_errors=True)  # free the disk for the next case
            setup = {
                "appenders": appenders,
                "record_bytes": record_bytes,
                "records_per_append": records_per_append,
                "preallocate": mode,
                "segment_bytes_max": segment_bytes_max,
                "fsync": True,
                "seconds": round(result["elapsed_s"], 3),
                "records": result["records"],
                "loop": loop_name,
                "dir": root,
            }
            for name, value, unit in (
                ("append_records_per_s", result["records_per_s"], "records/s"),
                ("append_mb_per_s", result["mb_per_s"], "MB/s"),
                ("append_latency_p50_ms", result["p50_ms"], "ms"),
                ("append_latency_p99_ms", result["p99_ms"], "ms"),
                ("fsyncs_per_s", result["fsyncs_per_s"], "fsyncs/s"),
                ("records_per_fsync", result["records_per_fsync"], "records"),
                ("fsync_latency_p50_ms", result["fsync_p50_ms"], "ms"),
                ("fsync_latency_p99_ms", result["fsync_p99_ms"], "ms"),
                ("fsync_latency_mean_ms", result["fsync_mean_ms"], "ms"),
                ("ceiling_records_per_s", result["ceiling_records_per_s"], "records/s"),
                ("cpu_us_per_record", result["cpu_us_per_record"], "us/record"),
                ("cpu_user_us_per_record", result["cpu_user_us_per_record"], "us/record"),
                ("cpu_system_us_per_record", result["cpu_system_us_per_record"], "us/record"),
                ("cpu_busy_pct", result["cpu_busy_pct"], "%"),
            ):
                figures.append(Figure(name, round(value, 4), unit, setup))
            if progress is not None:
                progress(
                    f"{'preallocated' if mode else 'growing':>12} "
                    f"{appenders:>3} appender(s) x {record_bytes:>4} B"
                    + (f" x {records_per_append}" if records_per_append > 1 else "")
                    + ": "
                    f"{result['records_per_s']:>10,.0f} records/s  "
                    f"{result['mb_per_s']:>7.2f} MB/s  "
                    f"p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms  "
                    f"{result['fsyncs_per_s']:>7,.0f} fsyncs/s "
                    f"(p50 {result['fsync_p50_ms']:.3f} ms, "
                    f"p99 {result['fsync_p99_ms']:.3f} ms, "
                    f"mean {result['fsync_mean_ms']:.3f} ms; "
                    f"ceiling {result['ceiling_records_per_s']:,.0f} records/s)  "
                    f"CPU {result['cpu_us_per_record']:.2f} us/record "
                    f"(user {result['cpu_user_us_per_record']:.2f}, "
                    f"system {result['cpu_system_us_per_record']:.2f}; "
                    f"{result['cpu_busy_pct']:.0f}% of one processor)"
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures


def describe_setup(
    seconds: float,
    base_dir: str | None,
    loop: str | None,
    segment_bytes_max: int = DEFAULT_SEGMENT_BYTES,
) -> str:
    return (
        f"storage benchmark: AsyncStore.append awaited in a loop per task, fdatasync per "
        f"group-commit batch, {seconds:g} s per case after {WARMUP_S:g} s warm-up; "
        f"segments of {segment_bytes_max} bytes, preallocated in steps of "
        f"{StoreConfig().preallocate_step_bytes} bytes when preallocated; "
        f"dir {base_dir or tempfile.gettempdir()} (temporary, deleted); "
        f"loop {loop or available_loop()}; Python {platform.python_version()} "
        f"({sys.implementation.name}); {os.cpu_count()} CPU(s); {platform.platform()}"
    )
