"""``catenary bench log-store``: a node's log store holding many records — write, open, read.

It fills a `LogStore` (the log-server's store of every loglet of a node) with
``records`` records of ``record_bytes`` bytes spread over ``loglets`` loglets,
``per_write`` records per accepted store (1 is the worst case: one stored write
per record), through the log-server core as the host does; then opens it in a
fresh process — the restart a node makes — and reports how long the open took,
how many stored writes it had to replay and the process's peak resident memory;
then reads every record back in that process.  Targets (product): a node holding
1,000,000 records of 100 B opens and serves in <= 2 s and stays <= 150 MB resident.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from catenary.core.loglet.types import SequencerId, Store, loglet_id
from catenary.persist.log_store import LogStore
from catenary.storage.fs import OsFileSystem

_OPEN_AND_READ = """
import json, sys, time
from catenary.core.loglet.types import loglet_id
from catenary.persist.log_store import LogStore
from catenary.storage.fs import OsFileSystem
directory, loglets, per_loglet = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
started = time.perf_counter()
store = LogStore.open(OsFileSystem(), directory, node_id=1)
opened = time.perf_counter() - started
def peak_rss_mb():
    # VmHWM: this process's peak resident set since exec (getrusage's maxrss would
    # carry the peak of the forked parent across exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0
rss_open = peak_rss_mb()
started = time.perf_counter()
count = 0
for log in range(loglets):
    offset = 1
    while offset <= per_loglet:
        records = store.read(loglet_id(log, 0), offset, per_loglet + 1, 1 << 20)
        if not records:
            break
        count += len(records)
        offset += len(records)
read = time.perf_counter() - started
rss = peak_rss_mb()
print(json.dumps({"open_s": opened, "replayed": store.replayed, "read_s": read,
                  "read_records": count, "rss_open_mb": rss_open, "rss_mb": rss}))
"""


SYNC_EVERY_STORES = 1000


@dataclass
class LogStoreFigures:
    records: int
    per_write: int
    write_s: float
    open_s: float
    replayed: int
    read_s: float
    read_records: int
    rss_open_mb: int  # peak resident memory once opened
    rss_mb: int  # peak resident memory after reading every record


def run(
    records: int,
    per_write: int,
    record_bytes: int,
    loglets: int,
    base_dir: str | None,
    *,
    crash: bool = False,
) -> LogStoreFigures:
    """``crash``: leave the store without closing it (no final checkpoint), as a node
    killed with SIGKILL does, so the open replays what the last checkpoint left."""
    directory = tempfile.mkdtemp(prefix="catenary-bench-logstore-", dir=base_dir)
    try:
        store = LogStore.open(OsFileSystem(), f"{directory}/ls", node_id=1)
        sequencer = SequencerId(1, 1)
        payload = b"x" * record_bytes
        per_loglet = records // loglets
        started = time.perf_counter()
        for log in range(loglets):
            loglet = loglet_id(log, 0)
            for first in range(1, per_loglet + 1, per_write):
                n = min(per_write, per_loglet + 1 - first)
                effects = store.server.handle(
                    1, Store(loglet, sequencer, first, (payload,) * n, first)
                )
                store.write(effects.persist)
            store.sync()
        written = time.perf_counter() - started
        if not crash:
            store.close()
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                _OPEN_AND_READ,
                f"{directory}/ls",
                str(loglets),
                str(per_loglet),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        out = json.loads(child.stdout)
        return LogStoreFigures(
            per_loglet * loglets,
            per_write,
            written,
            out["open_s"],
            out["replayed"],
            out["read_s"],
            out["read_records"],
            out["rss_open_mb"],
            out["rss_mb"],
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
