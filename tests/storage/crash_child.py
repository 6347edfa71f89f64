"""Child process of the real crash test: append forever, print every acknowledged record.

Usage: ``python crash_child.py DIRECTORY MODE SEED`` with MODE ``threads`` (several threads
submitting to the group-commit writer) or ``async`` (asyncio tasks awaiting AsyncStore.append).

Prints ``ready FIRST NEXT`` once the store is open, then one line per acknowledged record,
``ack POSITION CRC32C LENGTH``, flushed - only after the record is durable. The parent kills
this process with SIGKILL at a random moment and checks every acknowledged record.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from random import Random

import crc32c

from catenary.runtime.disk import AsyncStore
from catenary.storage.fs import OsFileSystem
from catenary.storage.store import SegmentedStore, StoreConfig
from catenary.storage.writer import GroupCommitWriter

CONFIG = StoreConfig(segment_bytes_max=64 * 1024, index_checkpoint_records=300)
WORKERS = 4

_out_lock = threading.Lock()


def emit(text: str) -> None:
    with _out_lock:
        sys.stdout.write(text)
        sys.stdout.flush()


def make_payload(rng: Random, worker: int, seq: int) -> bytes:
    return f"{worker}:{seq}:".encode() + rng.randbytes(rng.randrange(0, 400))


def ack_lines(first: int, payloads: list[bytes]) -> str:
    return "".join(f"ack {first + i} {crc32c.crc32c(p)} {len(p)}\n" for i, p in enumerate(payloads))


def run_threads(directory: str, seed: int) -> None:
    store = SegmentedStore.open(OsFileSystem(), directory, CONFIG)
    emit(f"ready {store.first_position} {store.next_position}\n")
    writer = GroupCommitWriter(store, batch_records_max=64, queue_records_max=256)

    def worker(index: int) -> None:
        rng = Random(seed * 100 + index)
        seq = 0
        while True:
            batch = [make_payload(rng, index, seq + k) for k in range(rng.randrange(1, 4))]
            seq += len(batch)
            done = threading.Event()

            def callback(
                first: int | None,
                exc: BaseException | None,
                batch: list[bytes] = batch,
                done: threading.Event = done,
            ) -> None:
                if first is not None:
                    emit(ack_lines(first, batch))
                done.set()

            writer.submit(batch, callback)
            done.wait()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


async def run_async(directory: str, seed: int) -> None:
    store = await AsyncStore.open(OsFileSystem(), directory, CONFIG)
    emit(f"ready {store.first_position} {store.next_position}\n")

    async def worker(index: int) -> None:
        rng = Random(seed * 100 + index)
        seq = 0
        while True:
            payload = make_payload(rng, index, seq)
            seq += 1
            position = await store.append(payload)
            emit(ack_lines(position, [payload]))

    async with asyncio.TaskGroup() as group:
        for i in range(WORKERS * 4):
            group.create_task(worker(i))


def main() -> None:
    directory, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "threads":
        run_threads(directory, seed)
    else:
        asyncio.run(run_async(directory, seed))


if __name__ == "__main__":
    main()
