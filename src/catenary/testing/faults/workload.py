"""Workloads: clients that keep a cluster busy during faults and record what they saw.

A workload is a class with ``start`` (set up, connected), ``run`` (until the
stop event: the fault period), ``finish`` (after the final heal: read back
what the checkers need), ``counts`` and ``check`` (its verdicts).  The runner
knows nothing else about it, so a log workload (appends and reads of the log
service) plugs in as one more class.

``MetadataWorkload`` runs, concurrently:

- writers: unconditional puts (every value unique), compare-and-sets (a get,
  then a put ``if_version``), puts ``if_absent``, deletes (plain or
  ``if_version``) and linearizable gets over a few keys, through a client
  that knows every node;
- readers: linearizable gets through clients that each know only one node
  (so a follower is asked first and must redirect, or answer correctly);
- a stale reader: ``get(stale=True)`` through any node;
- lease holders: grant, attach a key, keep alive for a while and read the key
  meanwhile, then revoke or let it expire;
- one watcher per key, from the revision a linearizable read saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from random import Random
from typing import Any, Protocol

from catenary.api.types import Event
from catenary.client import Client
from catenary.client.errors import (
    CatenaryError,
    CompactedError,
    IndeterminateError,
    KeyNotFoundError,
    LeaseNotFoundError,
    PreconditionFailedError,
    UnavailableError,
)
from catenary.testing.faults.history import Clock, Record, Verdict


@dataclass
class Context:
    addresses: list[str]
    clock: Clock
    rng: Random
    op_timeout_s: float = 2.0
    log: Callable[[str], None] = print


class Workload(Protocol):
    name: str

    async def start(self, ctx: Context) -> None: ...

    async def run(self, stop: asyncio.Event) -> None: ...

    async def finish(self) -> None: ...

    async def close(self) -> None: ...

    def counts(self) -> dict[str, int]: ...

    def check(self) -> list[Verdict]: ...


@dataclass
class WatchSegment:
    """One subscription: events with a version above ``start``."""

    start: int
    events: list[Event] = field(default_factory=list)
    ended_by: str = ""  # why it ended: "" (the end), compacted, an error


@dataclass
class LeaseEpisode:
    worker: int
    key: str
    ttl_ms: int
    lease: int = 0
    records: list[Record] = field(default_factory=list)  # grant, put, keepalive, get, revoke


class MetadataWorkload:
    name = "metadata"

    def __init__(
        self,
        *,
        keys: int = 6,
        writers: int = 4,
        stale_readers: int = 1,
        lease_holders: int = 2,
        lease_ttl_ms: int = 2000,
        watch: bool = True,
    ) -> None:
        self.keys = [f"/faults/k{i}" for i in range(keys)]
        self.writers = writers
        self.stale_readers = stale_readers
        self.lease_holders = lease_holders
        self.lease_ttl_ms = lease_ttl_ms
        self.watch = watch
        self.records: list[Record] = []
        self.episodes: list[LeaseEpisode] = []
        self.segments: dict[str, list[WatchSegment]] = {k: [] for k in self.keys}
        self.errors: Counter[str] = Counter()
        self.final_markers: dict[str, bytes] = {}
        self._clients: list[Client] = []
        self._watch_tasks: list[asyncio.Task[None]] = []
        self._ctx: Context | None = None
        self._sequence = 0

    # ------------------------------------------------------------ setup

    @property
    def ctx(self) -> Context:
        assert self._ctx is not None
        return self._ctx

    def _client(self, addresses: list[str]) -> Client:
        client = Client(addresses, timeout_s=self.ctx.op_timeout_s, attempt_timeout_s=0.5)
        self._clients.append(client)
        return client

    async def start(self, ctx: Context) -> None:
        self._ctx = ctx
        self.main = self._client(ctx.addresses)
        if self.watch:
            for key in self.keys:
                self._watch_tasks.append(asyncio.ensure_future(self._watcher(key)))

    async def close(self) -> None:
        for task in self._watch_tasks:
            task.cancel()
        for task in self._watch_tasks:
            with contextlib.suppress(BaseException):
                await task
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()

    def _value(self, process: int) -> bytes:
        self._sequence += 1
        return f"p{process}.{self._sequence}".encode()

    # ------------------------------------------------------- recording

    async def _write(
        self, record: Record, op: Awaitable[int], *, episode: LeaseEpisode | None
    ) -> Record:
        (episode.records if episode else self.records).append(record)
        try:
            record.version = await op
            record.outcome = "ok"
        except PreconditionFailedError as exc:
            record.outcome = "ok"
            record.precondition_failed = True
            record.version = exc.current_version
        except KeyNotFoundError as exc:
            # A delete that found no key: a definite outcome that spent no revision
            # (the model answers it with the current revision).
            record.outcome = "ok"
            record.version = exc.revision
        except LeaseNotFoundError as exc:
            record.outcome = "ok"
            record.error = "lease-not-found"
            self.errors[type(exc).__name__] += 1
        except IndeterminateError as exc:
            record.outcome = "indeterminate"
            record.error = type(exc).__name__
        except UnavailableError as exc:
            record.outcome = "failed"
            record.error = type(exc).__name__
        except Exception as exc:
            # Anything else leaves the outcome unknown to us: the safe reading.
            record.outcome = "indeterminate"
            record.error = type(exc).__name__
            self.errors[type(exc).__name__] += 1
        record.ret = self.ctx.clock.now() if record.outcome != "indeterminate" else None
        return record

    async def _get(
        self, client: Client, process: int, key: str, *, stale: bool, into: list[Record]
    ) -> Record:
        record = Record(process, "stale-get" if stale else "get", key, self.ctx.clock.now())
        into.append(record)
        try:
            kv = await client.metadata.get(key, stale=stale)
        except Exception as exc:  # a read changes nothing, whatever went wrong
            record.outcome = "failed"
            record.error = type(exc).__name__
            if not isinstance(exc, CatenaryError):
                self.errors[type(exc).__name__] += 1
            return record
        record.ret = self.ctx.clock.now()
        record.outcome = "ok"
        if kv is not None:
            record.found, record.got, record.version = True, kv.value, kv.version
        return record

    # ---------------------------------------------------------- workers

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [self._writer(p, stop) for p in range(self.writers)]
        process = self.writers
        for address in self.ctx.addresses:
            tasks.append(self._reader(process, [address], stop))
            process += 1
        for _ in range(self.stale_readers):
            tasks.append(self._stale_reader(process, stop))
            process += 1
        for w in range(self.lease_holders):
            tasks.append(self._lease_holder(w, stop))
        await asyncio.gather(*tasks)

    async def _pace(self, rng: Random) -> None:
        await asyncio.sleep(rng.uniform(0.0, 0.02))

    async def _writer(self, process: int, stop: asyncio.Event) -> None:
        rng = Random(self.ctx.rng.random())
        client = self.main
        clock = self.ctx.clock
        while not stop.is_set():
            key = rng.choice(self.keys)
            roll = rng.random()
            if roll < 0.35:
                value = self._value(process)
                record = Record(process, "put", key, clock.now(), value)
                await self._write(record, client.metadata.put(key, value), episode=None)
            elif roll < 0.6:
                read = await self._get(client, process, key, stale=False, into=self.records)
                if read.outcome == "ok":
                    value = self._value(process)
                    if read.found:
                        version = read.version
                        record = Record(process, "put", key, clock.now(), value, "version", version)
                        await self._write(
                            record,
                            client.metadata.put(key, value, if_version=version),
                            episode=None,
                        )
                    else:
                        record = Record(process, "put", key, clock.now(), value, "absent")
                        await self._write(
                            record,
                            client.metadata.put(key, value, if_absent=True),
                            episode=None,
                        )
            elif roll < 0.7:
                value = self._value(process)
                record = Record(process, "put", key, clock.now(), value, "absent")
                await self._write(
                    record, client.metadata.put(key, value, if_absent=True), episode=None
                )
            elif roll < 0.8:
                record = Record(process, "delete", key, clock.now())
                await self._write(record, client.metadata.delete(key), episode=None)
            elif roll < 0.85:
                read = await self._get(client, process, key, stale=False, into=self.records)
                if read.outcome == "ok" and read.found:
                    version = read.version
                    record = Record(process, "delete", key, clock.now(), b"", "version", version)
                    await self._write(
                        record,
                        client.metadata.delete(key, if_version=version),
                        episode=None,
                    )
            else:
                await self._get(client, process, key, stale=False, into=self.records)
            await self._pace(rng)

    async def _reader(self, process: int, addresses: list[str], stop: asyncio.Event) -> None:
        rng = Random(self.ctx.rng.random())
        client = self._client(addresses)
        while not stop.is_set():
            await self._get(client, process, rng.choice(self.keys), stale=False, into=self.records)
            await self._pace(rng)

    async def _stale_reader(self, process: int, stop: asyncio.Event) -> None:
        rng = Random(self.ctx.rng.random())
        client = self._client(self.ctx.addresses)
        while not stop.is_set():
            await self._get(client, process, rng.choice(self.keys), stale=True, into=self.records)
            await self._pace(rng)

    async def _lease_holder(self, worker: int, stop: asyncio.Event) -> None:
        rng = Random(self.ctx.rng.random())
        client = self._client(self.ctx.addresses)
        clock = self.ctx.clock
        key = f"/faults/lease{worker}"
        process = 1000 + worker
        ttl = self.lease_ttl_ms
        while not stop.is_set():
            episode = LeaseEpisode(worker, key, ttl)
            self.episodes.append(episode)
            grant = Record(process, "grant", key, clock.now())
            await self._write(grant, client.metadata.grant(ttl), episode=episode)
            if grant.outcome != "ok" or grant.error:
                await asyncio.sleep(0.2)
                continue
            episode.lease = lease = grant.version
            value = self._value(process)
            put = Record(process, "put", key, clock.now(), value)
            await self._write(put, client.metadata.put(key, value, lease=lease), episode=episode)
            hold_until = clock.now() + rng.uniform(1.0, 4.0)
            next_keepalive = clock.now() + ttl / 5000
            while clock.now() < hold_until and not stop.is_set():
                if clock.now() >= next_keepalive:
                    ka = Record(process, "keepalive", key, clock.now())
                    await self._write(
                        ka,
                        _done(client.metadata.keep_alive(lease)),
                        episode=episode,
                    )
                    next_keepalive = ka.call + ttl / 5000
                    if ka.error == "lease-not-found":
                        break
                else:
                    await self._get(client, process, key, stale=False, into=episode.records)
                    await asyncio.sleep(0.1)
            if rng.random() < 0.5:
                revoke = Record(process, "revoke", key, clock.now())
                await self._write(revoke, _done(client.metadata.revoke(lease)), episode=episode)
            else:
                # Let it expire; the key must stay until the TTL has passed.
                episode.records.append(Record(process, "let-expire", key, clock.now()))

    async def _watcher(self, key: str) -> None:
        client = self._client(self.ctx.addresses)
        segments = self.segments[key]
        while True:
            try:
                start = (await client.metadata.get_result(key, timeout_s=5.0)).revision
            except CatenaryError:
                await asyncio.sleep(0.2)
                continue
            segment = WatchSegment(start)
            segments.append(segment)
            try:
                async with client.metadata.watch(key, from_version=start) as watcher:
                    async for event in watcher:
                        segment.events.append(event)
            except CompactedError:
                segment.ended_by = "compacted"
            except Exception as exc:  # resubscribe from a new read, as after compaction
                segment.ended_by = type(exc).__name__
                await asyncio.sleep(0.1)
            else:
                segment.ended_by = "stream ended"

    # ------------------------------------------------------------ finish

    async def finish(self) -> None:
        """After the final heal: read every key back, then wait for the watchers."""
        client = self.main
        for key in self.keys:
            for _ in range(20):
                record = await self._get(client, 9999, key, stale=False, into=self.records)
                if record.outcome == "ok":
                    break
                await asyncio.sleep(0.25)
        if not self.watch:
            return
        # A last write per key: once a watcher delivered it, every earlier change is due.
        for key in self.keys:
            value = f"final.{key}".encode()
            record = Record(9999, "put", key, self.ctx.clock.now(), value)
            await self._write(record, client.metadata.put(key, value), episode=None)
            if record.outcome == "ok":
                self.final_markers[key] = value
        deadline = self.ctx.clock.now() + 15.0
        while self.ctx.clock.now() < deadline:
            if all(
                any(e.value == value for s in self.segments[k] for e in s.events)
                for k, value in self.final_markers.items()
            ):
                break
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------ report

    def counts(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for record in self.records:
            out[f"{record.kind}:{record.outcome}"] += 1
        for episode in self.episodes:
            for record in episode.records:
                out[f"lease-{record.kind}:{record.outcome}"] += 1
        out["lease-episodes"] = len(self.episodes)
        out["watch-events"] = sum(len(s.events) for ss in self.segments.values() for s in ss)
        out["watch-resubscriptions"] = sum(max(0, len(ss) - 1) for ss in self.segments.values())
        for name, count in self.errors.items():
            out[f"error:{name}"] = count
        # How long the cluster went without acknowledging a write (elections, quorum loss).
        acked = sorted(
            r.ret
            for r in self.records
            if r.kind in ("put", "delete") and r.outcome == "ok" and r.ret is not None
        )
        gaps = [b - a for a, b in itertools.pairwise(acked)]
        out["longest-write-gap-ms"] = int(max(gaps, default=0.0) * 1000)
        return dict(sorted(out.items()))

    def check(self) -> list[Verdict]:
        from catenary.testing.faults import checkers

        return [
            checkers.linearizable(self.records),
            checkers.no_lost_writes(self.records, self.keys),
            checkers.stale_reads(self.records),
            checkers.watches(self.records, self.segments, self.final_markers),
            checkers.leases(self.episodes),
        ]


async def _done(awaitable: Awaitable[Any]) -> int:
    await awaitable
    return 0
