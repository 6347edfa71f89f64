"""An in-process log service for the conformance suite, over one provider's driver.

``Cluster(provider)`` holds one log's chain in a fake metadata store
(compare-and-set on a version), and a deterministic network: every message,
and every metadata read or write a reconfiguration or trim asks for, is an
event in one queue that a seeded ``Random`` delivers in any order (and drops,
with ``loss``).  Reads go through ``ReadStream``, reconfigurations through
``Reconfigure``, trims through ``TrimLog`` — the same state machines for
every provider.

What differs per provider is behind the small ``LogletDriver`` interface
(first and next segment, append to a segment's writer, its global tail,
messages and outcomes of its writers):

- ``MemoryDriver``: each segment is a ``MemoryLoglet``; appends are
  acknowledged at once, seals and reads are in place.
- ``ServerDriver("local")``: one log-server core; each segment runs a
  ``Sequencer`` over the nodeset ``(1,)`` with ``{node: 1}``.
- ``ServerDriver("replicated")``: three log-server cores, ``{node: 2}``; each
  segment runs the ``Sequencer`` named in the chain.

The suite uses ``append``/``append_to`` (outcomes in ``acked`` and
``failed``), ``reconfigure``, ``trim``, ``reader``, ``step``/``settle`` and
checks the log's invariants with ``check``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random
from typing import Protocol

import msgspec

from catenary.core.bifrost.chain import (
    LOCAL,
    MEMORY,
    REPLICATED,
    Chain,
    LocalParams,
    ReplicatedParams,
    Segment,
    chain_key,
    decode_chain,
    encode_chain,
)
from catenary.core.bifrost.memory import MemoryLoglet
from catenary.core.bifrost.read_stream import DataLoss, Item, ReadConfig, ReadStream, Record
from catenary.core.bifrost.reconfigure import (
    CasChain,
    NewSegment,
    ReadChain,
    Reconfigure,
    SendLoglet,
    TrimLog,
    placement,
)
from catenary.core.loglet.log_server import LogServer, PutRecords, ReadPlan, StoreWrite
from catenary.core.loglet.nodeset import LogServerInfo
from catenary.core.loglet.repair import FinderConfig
from catenary.core.loglet.replication import NodeSetChecker, ReplicationProperty
from catenary.core.loglet.sequencer import (
    AppendError,
    Backpressure,
    LogletSealed,
    Sequencer,
    SequencerConfig,
)
from catenary.core.loglet.types import (
    Gap,
    GetRecords,
    LogletId,
    Records,
    SequencerId,
    Stored,
    to_lsn,
)

LOG = 5
PROVIDERS = (MEMORY, LOCAL, REPLICATED)


class Server:
    """A log-server whose writes are durable at once (its disk never loses them)."""

    def __init__(self, node_id: int) -> None:
        self.core = LogServer(node_id)
        self.durable: list[StoreWrite] = []

    def handle(self, src: int, message: msgspec.Struct) -> list[tuple[int, msgspec.Struct]]:
        effects = self.core.handle(src, message)
        self.durable += effects.persist
        out = list(effects.after_persist)
        out += [(plan.src, self._answer(plan)) for plan in effects.reads]
        return out

    def restart(self, *, wipe: LogletId | None = None) -> None:
        """Restart from the disk (the known global tail is forgotten); ``wipe`` loses
        every record of one loglet, as a replaced disk would."""
        if wipe is not None:
            self.durable = [
                w for w in self.durable if not (isinstance(w, PutRecords) and w.loglet == wipe)
            ]
        self.core = LogServer(self.core.node_id)
        self.core.recover(self.durable)

    def held(self, loglet: LogletId) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for write in self.durable:
            if isinstance(write, PutRecords) and write.loglet == loglet:
                for i, payload in enumerate(write.payloads):
                    assert out.setdefault(write.first_offset + i, payload) == payload
        return out

    def _answer(self, plan: ReadPlan) -> Records:
        held = self.held(plan.request.loglet)
        runs: list[tuple[bytes, ...] | Gap] = []
        for run in plan.runs:
            if isinstance(run, Gap):
                runs.append(run)
            else:
                runs.append(tuple(held[o] for o in range(run[0], run[1])))
        m = plan.request
        return Records(
            m.loglet,
            m.from_offset,
            tuple(runs),
            plan.end_offset,
            plan.known_global_tail,
            plan.sealed,
        )


Outcome = tuple[int, int] | tuple[int, AppendError]  # (token, first offset) or (token, error)


class LogletDriver(Protocol):
    """What the suite needs of a provider, and all it knows of one."""

    provider: str
    servers: dict[int, Server]

    def first_segment(self) -> Segment: ...

    def new_segment(self) -> NewSegment:
        """The next segment a reconfiguration proposes."""
        ...

    def memory(self, loglet: LogletId) -> MemoryLoglet | None: ...

    def append(self, segment: Segment, payloads: tuple[bytes, ...], token: int) -> int:
        """Hand a batch to the segment's writer; returns its first offset, or raises
        ``AppendError`` when refused at once.  Acknowledgements come from ``drain``."""
        ...

    def global_tail(self, segment: Segment) -> int:
        """The writer's global tail (first offset not committed)."""
        ...

    def deliver(self, dst: int, src: int, message: msgspec.Struct) -> bool:
        """A message to one of the driver's writers; False if ``dst`` is not one."""
        ...

    def drain(
        self,
    ) -> tuple[
        list[tuple[int, int, msgspec.Struct]], list[tuple[int, int]], list[tuple[int, AppendError]]
    ]:
        """(messages to send as (src, dst, message), acks (token, last offset), failures)."""
        ...

    def tick(self) -> None: ...

    def trim_points(self, loglet: LogletId) -> list[int]: ...


class MemoryDriver:
    """``memory``: each segment is a ``MemoryLoglet``; appends are acknowledged at once."""

    provider = MEMORY

    def __init__(self, ids: Callable[[], int]) -> None:
        self.servers: dict[int, Server] = {}
        self.loglets: dict[LogletId, MemoryLoglet] = {}
        self._acks: list[tuple[int, int]] = []

    def first_segment(self) -> Segment:
        return Segment(0, 1, MEMORY)

    def new_segment(self) -> NewSegment:
        return NewSegment(MEMORY)

    def memory(self, loglet: LogletId) -> MemoryLoglet | None:
        return self.loglets.setdefault(loglet, MemoryLoglet(loglet))

    def append(self, segment: Segment, payloads: tuple[bytes, ...], token: int) -> int:
        loglet = self.memory(segment.loglet(LOG))
        assert loglet is not None
        last = loglet.append(payloads)
        self._acks.append((token, last))
        return last - len(payloads) + 1

    def global_tail(self, segment: Segment) -> int:
        loglet = self.memory(segment.loglet(LOG))
        assert loglet is not None
        return loglet.tail

    def deliver(self, dst: int, src: int, message: msgspec.Struct) -> bool:
        return False

    def drain(
        self,
    ) -> tuple[
        list[tuple[int, int, msgspec.Struct]], list[tuple[int, int]], list[tuple[int, AppendError]]
    ]:
        acks, self._acks = self._acks, []
        return [], acks, []

    def tick(self) -> None:
        pass

    def trim_points(self, loglet: LogletId) -> list[int]:
        return [self.loglets[loglet].trim_point()]


class ServerDriver:
    """``local`` (one log-server core, ``{node: 1}``) and ``replicated`` (three cores,
    ``{node: 2}``): each segment's writer is a ``Sequencer``, an actor of its own."""

    def __init__(self, provider: str, ids: Callable[[], int], config: SequencerConfig) -> None:
        self.provider = provider
        count = 3 if provider == REPLICATED else 1
        self.servers = {i: Server(i) for i in range(1, count + 1)}
        self.sequencers: dict[LogletId, tuple[int, Sequencer]] = {}
        self._ids = ids
        self._config = config

    def first_segment(self) -> Segment:
        if self.provider == LOCAL:
            return Segment(0, 1, LOCAL, local=LocalParams(1))
        sequencer = SequencerId(self._ids(), 1)
        return Segment(0, 1, REPLICATED, ReplicatedParams(sequencer, (1, 2, 3), R2))

    def new_segment(self) -> NewSegment:
        if self.provider == LOCAL:
            return NewSegment(LOCAL, node=1)
        return NewSegment(REPLICATED, sequencer=SequencerId(self._ids(), 1), replication=R2)

    def memory(self, loglet: LogletId) -> MemoryLoglet | None:
        return None

    def sequencer(self, segment: Segment) -> Sequencer:
        loglet = segment.loglet(LOG)
        if loglet not in self.sequencers:
            params = placement(segment)
            assert params is not None
            seq = Sequencer(
                loglet, params.sequencer, params.nodeset, params.replication, config=self._config
            )
            self.sequencers[loglet] = (self._ids(), seq)
        return self.sequencers[loglet][1]

    def append(self, segment: Segment, payloads: tuple[bytes, ...], token: int) -> int:
        last = self.sequencer(segment).append(payloads, token)
        return last - len(payloads) + 1

    def global_tail(self, segment: Segment) -> int:
        entry = self.sequencers.get(segment.loglet(LOG))
        return entry[1].global_tail if entry else 1

    def deliver(self, dst: int, src: int, message: msgspec.Struct) -> bool:
        for actor, seq in self.sequencers.values():
            if actor == dst:
                if isinstance(message, Stored):
                    seq.on_stored(src, message)
                return True
        return False

    def drain(
        self,
    ) -> tuple[
        list[tuple[int, int, msgspec.Struct]], list[tuple[int, int]], list[tuple[int, AppendError]]
    ]:
        messages: list[tuple[int, int, msgspec.Struct]] = []
        acks: list[tuple[int, int]] = []
        failures: list[tuple[int, AppendError]] = []
        for actor, seq in self.sequencers.values():
            messages += [(actor, dst, m) for dst, m in seq.take_messages()]
            done, failed = seq.take_outcomes()
            acks += done
            failures += failed
        return messages, acks, failures

    def tick(self) -> None:
        for _, seq in self.sequencers.values():
            seq.tick()

    def trim_points(self, loglet: LogletId) -> list[int]:
        return [
            state.trim_point
            for server in self.servers.values()
            if (state := server.core.state(loglet)) is not None
        ]


R2 = ReplicationProperty(node=2)


@dataclass
class Reader:
    stream: ReadStream
    items: list[Item] = field(default_factory=list)
    auto_take: bool = True


Task = Reconfigure | TrimLog


class Cluster:
    """One log over one provider's driver, with the chain in a fake metadata store."""

    def __init__(
        self,
        provider: str,
        *,
        seed: int = 0,
        loss: float = 0.0,
        read_config: ReadConfig | None = None,
        inflight_max: int = 64,
    ) -> None:
        self.provider = provider
        self.rng = Random(seed)
        self.loss = loss
        self.read_config = read_config or ReadConfig(
            buffer_max=8, bytes_max=64, wait_ticks=6, resend_ticks=4
        )
        seq_config = SequencerConfig(
            records_inflight_max=inflight_max,
            store_timeout_ticks=3,
            tail_release_ticks=1,
            tail_resend_ticks=3,
            tail_resend_max_ticks=12,
        )
        self._next_id = 100
        self.driver: LogletDriver = (
            MemoryDriver(self._fresh_id)
            if provider == MEMORY
            else ServerDriver(provider, self._fresh_id, seq_config)
        )
        self.servers = self.driver.servers
        self.meta: dict[str, tuple[bytes, int]] = {
            chain_key(LOG): (encode_chain(Chain(LOG, (self.driver.first_segment(),))), 1)
        }
        self.net: list[tuple[int, int, msgspec.Struct]] = []
        self.meta_ops: list[tuple[Task, ReadChain | CasChain]] = []
        self.actors: dict[int, Callable[[int, msgspec.Struct], None]] = {}
        self.readers: dict[int, Reader] = {}
        self.tasks: dict[int, Task] = {}
        self._tokens = 0
        self._appends: dict[int, tuple[LogletId, int, tuple[bytes, ...]]] = {}
        self.acked: dict[int, bytes] = {}  # lsn -> payload
        self.acked_at: dict[int, tuple[LogletId, int]] = {}  # lsn -> (loglet, offset)
        self.failed: dict[int, AppendError] = {}
        self.assigned: dict[tuple[LogletId, int], bytes] = {}
        self.trim_history: list[int] = [0]
        self.tail_history: list[int] = [1]
        self.allow_data_loss = False
        self.known_segments: dict[LogletId, Segment] = {}
        self.reads_to: dict[int, int] = {}  # destination -> GetRecords delivered

    # ------------------------------------------------------------ the chain

    @property
    def chain(self) -> Chain:
        return decode_chain(self.meta[chain_key(LOG)][0])

    @property
    def version(self) -> int:
        return self.meta[chain_key(LOG)][1]

    def committed_tail(self) -> int:
        """First LSN not committed: the open segment's base plus its global tail."""
        tail = self.chain.tail
        return to_lsn(tail.base_lsn, self.driver.global_tail(tail))

    def _fresh_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def memory_lookup(self, loglet: LogletId) -> MemoryLoglet | None:
        return self.driver.memory(loglet)

    # --------------------------------------------------------------- appends

    def append(self, payloads: list[bytes]) -> int:
        """Append to the chain's tail segment; the outcome lands in acked/failed."""
        return self.append_to(self.chain.tail, payloads)

    def append_to(self, segment: Segment, payloads: list[bytes]) -> int:
        """Append to one segment's loglet (the tail, or an old one to see it refuse)."""
        self._tokens += 1
        token = self._tokens
        loglet = segment.loglet(LOG)
        try:
            first = self.driver.append(segment, tuple(payloads), token)
        except (Backpressure, LogletSealed) as exc:
            self.failed[token] = exc
            return token
        self._record(loglet, first, tuple(payloads))
        self._appends[token] = (loglet, first, tuple(payloads))
        self._collect()
        self._wake_readers()
        return token

    def _record(self, loglet: LogletId, first: int, payloads: tuple[bytes, ...]) -> None:
        for i, payload in enumerate(payloads):
            assert self.assigned.setdefault((loglet, first + i), payload) == payload

    def _ack(
        self, segment: Segment, loglet: LogletId, first: int, payloads: tuple[bytes, ...]
    ) -> None:
        for i, payload in enumerate(payloads):
            lsn = to_lsn(segment.base_lsn, first + i)
            assert self.acked.setdefault(lsn, payload) == payload, f"LSN {lsn} acked twice"
            self.acked_at[lsn] = (loglet, first + i)

    def segment_of(self, loglet: LogletId) -> Segment:
        """The segment of ``loglet``, even once a trim dropped it from the chain."""
        for segment in self.chain.segments:
            self.known_segments[segment.loglet(LOG)] = segment
        return self.known_segments[loglet]

    # ------------------------------------------------- reconfigure and trim

    def reconfigure(self) -> Reconfigure:
        """Start sealing the tail segment and extending the chain (runs as events)."""
        me = self._fresh_id()
        task = Reconfigure(
            self.chain,
            self.version,
            self.driver.new_segment(),
            repairer=SequencerId(me, 1),
            servers={i: LogServerInfo() for i in self.servers},
            memory=self.memory_lookup,
            finder_config=FinderConfig(resend_ticks=3),
        )
        self.tasks[me] = task
        self.actors[me] = task.on_message
        self._collect()
        return task

    def trim(self, lsn: int) -> TrimLog:
        task = TrimLog(
            self.chain, self.version, lsn, self.committed_tail(), memory=self.memory_lookup
        )
        self.tasks[self._fresh_id()] = task
        self._collect()
        return task

    # ------------------------------------------------------------------ reads

    def reader(
        self, from_lsn: int = 1, to_lsn: int | None = None, *, auto_take: bool = True
    ) -> Reader:
        me = self._fresh_id()
        stream = ReadStream(
            self.chain,
            from_lsn,
            to_lsn,
            config=self.read_config,
            memory=self.memory_lookup,
            salt=me,
        )
        reader = Reader(stream, auto_take=auto_take)
        self.readers[me] = reader
        self.actors[me] = stream.on_message
        self._collect()
        return reader

    def take(self, reader: Reader, n: int | None = None) -> list[Item]:
        items = reader.stream.take(n)
        self._check_new(items)
        reader.items += items
        self._collect()
        return items

    def _wake_readers(self) -> None:
        for reader in self.readers.values():
            reader.stream.wake()
        self._collect()

    # -------------------------------------------------------------- driving

    def _collect(self) -> None:
        """Drain every actor's outputs into the event queues."""
        messages, acks, failures = self.driver.drain()
        self.net += messages
        for token, _last in acks:
            loglet, first, payloads = self._appends.pop(token)
            self._ack(self.segment_of(loglet), loglet, first, payloads)
        for token, error in failures:
            self._appends.pop(token, None)
            self.failed[token] = error
        for actor, task in self.tasks.items():
            for effect in task.take_effects():
                if isinstance(effect, SendLoglet):
                    self.net.append((actor, effect.node, effect.message))
                else:
                    self.meta_ops.append((task, effect))
        for actor, reader in self.readers.items():
            stream = reader.stream
            self.net += [(actor, dst, m) for dst, m in stream.take_messages()]
            if stream.need_chain:
                stream.on_chain(self.chain)
                self.net += [(actor, dst, m) for dst, m in stream.take_messages()]
            if reader.auto_take and stream.buffered:
                self.take(reader)
        for segment in self.chain.segments:
            self.known_segments[segment.loglet(LOG)] = segment
        self.trim_history.append(self.chain.trim_point)
        self.tail_history.append(self.committed_tail())

    def _check_new(self, items: list[Item]) -> None:
        """Nothing read at or past the tail; a record read is the one its LSN holds."""
        chain = self.chain
        committed = self.committed_tail()
        for item in items:
            if not isinstance(item, Record):
                continue
            segment = chain.find(item.lsn)
            if segment is None or item.lsn <= chain.trim_point:
                # Read before a trim dropped it: still the record acknowledged there.
                assert item.lsn not in self.acked or self.acked[item.lsn] == item.payload
                continue
            end = chain.end_of(segment)
            limit = end if end is not None else committed
            assert item.lsn < limit, f"read LSN {item.lsn} at or past the tail {limit}"
            offset = item.lsn - segment.base_lsn + 1
            expected = self.assigned.get((segment.loglet(LOG), offset))
            assert expected == item.payload, (item, expected)

    def deliver_where(
        self, pick: Callable[[int, int, msgspec.Struct], bool], *, drop: bool = False
    ) -> int:
        """Deliver (or drop) the queued messages ``pick`` chooses, and what they cause, in
        order, until none is left; other events wait.  Returns how many."""
        count = 0
        while True:
            chosen = next((i for i, (s, d, m) in enumerate(self.net) if pick(s, d, m)), None)
            if chosen is None:
                return count
            src, dst, message = self.net.pop(chosen)
            count += 1
            if drop:
                continue
            if dst in self.servers:
                self.net += [
                    (dst, to, reply) for to, reply in self.servers[dst].handle(src, message)
                ]
            elif dst in self.actors:
                self.actors[dst](src, message)
            else:
                self.driver.deliver(dst, src, message)
            self._collect()

    def run_metadata(self, task: Task) -> None:
        """Execute the queued metadata calls of ``task`` now."""
        while any(t is task for t, _ in self.meta_ops):
            index = next(i for i, (t, _) in enumerate(self.meta_ops) if t is task)
            _, effect = self.meta_ops.pop(index)
            self._metadata(task, effect)
            self._collect()

    def actor_of(self, task: Task) -> int:
        return next(actor for actor, t in self.tasks.items() if t is task)

    def step(self) -> bool:
        """Deliver one random event; False when there was none."""
        events = len(self.net) + len(self.meta_ops)
        if events == 0:
            return False
        pick = self.rng.randrange(events)
        if pick < len(self.net):
            src, dst, message = self.net.pop(pick)
            if self.loss and self.rng.random() < self.loss:
                return True
            if isinstance(message, GetRecords):
                self.reads_to[dst] = self.reads_to.get(dst, 0) + 1
            if dst in self.servers:
                self.net += [
                    (dst, to, reply) for to, reply in self.servers[dst].handle(src, message)
                ]
            elif dst in self.actors:
                self.actors[dst](src, message)
            else:
                self.driver.deliver(dst, src, message)
        else:
            task, effect = self.meta_ops.pop(pick - len(self.net))
            self._metadata(task, effect)
        self._collect()
        return True

    def _metadata(self, task: Task, effect: ReadChain | CasChain) -> None:
        value, version = self.meta[effect.key]
        if isinstance(effect, ReadChain):
            task.on_chain_read(decode_chain(value), version)
        elif effect.expected_version == version:
            self.meta[effect.key] = (effect.value, version + 1)
            task.on_cas(True, version + 1)
        else:
            task.on_cas(False)

    def tick(self) -> None:
        self.driver.tick()
        for task in self.tasks.values():
            if isinstance(task, Reconfigure):
                task.tick()
        for reader in self.readers.values():
            reader.stream.tick()
        self._collect()

    def _signature(self) -> tuple[object, ...]:
        return (
            len(self.acked),
            len(self.failed),
            self.version,
            sum(len(r.items) + r.stream.buffered for r in self.readers.values()),
            sum(task.done for task in self.tasks.values()),
            sum(len(s.durable) for s in self.servers.values()),
        )

    def settle(self, rounds: int = 2_000) -> None:
        """Run until nothing changes any more: a round delivers every queued event (and
        what they cause), then ticks; tailing readers keep polling, so quiet means
        thirty rounds in a row without progress."""
        quiet = 0
        for _ in range(rounds):
            before = self._signature()
            for _ in range(5_000):
                if not self.step():
                    break
            self.tick()
            quiet = quiet + 1 if self._signature() == before else 0
            if quiet > 30:
                return
        raise AssertionError("the cluster did not settle")

    def run_until(self, done: Callable[[], bool], steps: int = 20_000) -> None:
        for _ in range(steps):
            if done():
                return
            if not self.step():
                self.tick()
        raise AssertionError("condition not reached")

    # --------------------------------------------------------------- checks

    def check(self) -> None:
        """The log's invariants after a run (docs/design/log.md, Checkers)."""
        chain = self.chain
        # The trim point and the tail never go back.
        assert self.trim_history == sorted(self.trim_history), self.trim_history
        assert self.tail_history == sorted(self.tail_history), self.tail_history
        # A sealed segment's records are on a write quorum before the chain ends it (T3).
        if not self.allow_data_loss:
            for segment in chain.segments:
                end = chain.end_of(segment)
                params = placement(segment)
                if end is None or params is None:
                    continue
                checker = NodeSetChecker(params.nodeset, params.replication)
                loglet = segment.loglet(LOG)
                held = {node: self.servers[node].held(loglet) for node in params.nodeset}
                # Servers trim only at or below the chain's trim point (after its write).
                first = max(1, chain.trim_point - segment.base_lsn + 2)
                for offset in range(first, end - segment.base_lsn + 1):
                    holders = {n for n, records in held.items() if offset in records}
                    assert checker.is_write_quorum(holders), (segment.index, offset, holders)
        # Nothing acknowledged beyond a sealed tail; no LSN with two payloads.
        for lsn, (loglet, _offset) in self.acked_at.items():
            segment = chain.find(lsn)
            assert (
                segment is not None and segment.loglet(LOG) == loglet
            ) or lsn <= chain.trim_point, (
                f"LSN {lsn} acked in loglet {loglet} but the chain puts it in {segment}"
            )
        sequences: list[dict[int, bytes]] = []
        for reader in self.readers.values():
            seen: dict[int, bytes] = {}
            expect = None
            for item in reader.items:
                first = item.lsn if isinstance(item, Record) else item.from_lsn
                assert expect is None or first == expect, (
                    f"hole or overlap at {first} (want {expect})"
                )
                if isinstance(item, Record):
                    seen[item.lsn] = item.payload
                    expect = item.lsn + 1
                else:
                    assert item.to_lsn > item.from_lsn
                    assert self.allow_data_loss or not isinstance(item, DataLoss), item
                    expect = item.to_lsn
            sequences.append(seen)
        for a in sequences:
            for b in sequences:
                for lsn in a.keys() & b.keys():
                    assert a[lsn] == b[lsn], f"readers disagree at LSN {lsn}"
            for lsn, payload in a.items():
                if lsn in self.acked:
                    assert self.acked[lsn] == payload


def payload(n: int) -> bytes:
    return b"r%d" % n


def flatten(items: list[Item]) -> list[object]:
    out: list[object] = []
    for item in items:
        out.append((item.lsn, item.payload) if isinstance(item, Record) else item)
    return out


def records(items: list[Item]) -> dict[int, bytes]:
    return {item.lsn: item.payload for item in items if isinstance(item, Record)}


__all__ = ["LOG", "PROVIDERS", "Cluster", "Reader", "Server", "flatten", "payload", "records"]
