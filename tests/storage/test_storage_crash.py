"""A real crash test: SIGKILL a process that appends through the group-commit writer.

Every record the child printed as acknowledged must be intact after every kill, positions
must stay contiguous (no gap, no reuse of an acknowledged position), and the store must reopen
cleanly each time (a torn tail, if any, is cut and reported, never an error).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from random import Random

import crc32c
import pytest

from catenary.storage.fs import OsFileSystem
from catenary.storage.store import SegmentedStore, StoreConfig

CHILD = Path(__file__).with_name("crash_child.py")
CONFIG = StoreConfig(segment_bytes_max=64 * 1024, index_checkpoint_records=300)


def _run_child(directory: Path, mode: str, seed: int, lifetime_s: float, log: Path) -> list[str]:
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(directory), mode, str(seed)],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    first = b""
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().decode()
        assert ready.startswith("ready "), f"child did not start: {ready!r}, see {log}"
        # Kill at a random moment after the first acknowledgement, so every round writes.
        first = proc.stdout.readline()
        time.sleep(lifetime_s)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the child is ours, by PID
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    text = (first + out).decode()
    # The last line may be cut by the kill; only complete lines were acknowledged in full.
    return text.split("\n")[:-1]


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["threads", "async"])
def test_sigkill_never_loses_an_acknowledged_record(tmp_path: Path, mode: str) -> None:
    directory = tmp_path / "store"
    rng = Random(2024 if mode == "threads" else 2025)
    acked: dict[int, tuple[int, int]] = {}
    kills = 8
    for round_ in range(kills):
        lines = _run_child(directory, mode, round_, rng.uniform(0.0, 0.5), tmp_path / "child.log")
        new = 0
        for line in lines:
            if not line.startswith("ack "):
                continue
            _, pos, crc, length = line.split()
            position = int(pos)
            assert position not in acked, f"position {position} acknowledged twice"
            acked[position] = (int(crc), int(length))
            new += 1
        assert new > 0, f"round {round_}: the child acknowledged nothing"
        store = SegmentedStore.open(OsFileSystem(), str(directory), CONFIG)
        try:
            assert store.first_position == 1
            assert store.next_position > max(acked)
            # Contiguity: every position below next is readable; each acknowledged one intact.
            for position, (crc, length) in sorted(acked.items()):
                data = store.read(position)
                assert (crc32c.crc32c(data), len(data)) == (crc, length), position
            all_records = store.read_range(store.first_position, store.next_position)
            assert len(all_records) == store.next_position - 1
        finally:
            store.close()
