"""The log service of a node: the asyncio host of ``host.log_node.LogNode`` and the log API.

Theory of operation
-------------------
Every node is a log-server and may sequence segments (docs/logs.md).  This
service runs the node's ``LogNode`` (its log-server over one ``LogStore`` in
``<data dir>/logs``, its sequencers, forwarded appends) and executes what it
hands out: peer messages over the node's peer transport (service tag
``LOGLET``, the same links as Raft), log-server persistence jobs on the log
store's disk writer thread (one ``write`` + one ``sync`` per batch: group
commit), read plans answered from the store, and ticks every
``logs.tick_ms``.  Readers, seals and reconfigurations are actors of the node
(``ReadStream``, ``TailFinder``, ``Reconfigure``, ``TrimLog``) driven here.

Rules:

L1  Chains live in the metadata service under ``/catenary/logs/<id>`` and are
    learned by watching that prefix; a node acts on the newest version it has
    seen (``LogNode.on_chain``).  Chains are written only by compare-and-set,
    and only on the metadata leader: reconfigurations, trims and the
    controller run there; a follower answers those requests ``NOT_LEADER``
    (the client follows to the leader).
L2  The controller (on the leader, every ``logs.controller_interval_ms``):
    creates the logs ``0 .. logs.count-1`` that do not exist yet (provider
    ``logs.provider``; replication ``logs.replication`` or
    ``{node: min(2, voters)}``); moves a log whose tail segment's sequencer
    is an older generation of a node that restarted to that node's new
    generation; moves a log whose tail segment's sequencer is on a node this
    (leading) node has had no peer link to for ``logs.sequencer_failover_ms``
    to a sequencer of its own (0 turns this off: ``catenary logs reconfigure``
    then moves it); moves a log whose tail segment is replicated more weakly than
    the cluster's replication now allows (nodes joined), or whose tail
    segment's nodeset is smaller than the servers now allow (nodes joined: a
    2-node nodeset for ``{node: 2}`` stops every append when one of its
    servers is down).  One reconfiguration per log at a time.
L3  An append is checked (log known, record sizes, batch size) and handed to
    the ``LogNode`` with the deadline ``logs.append_timeout_ms``.  One that
    fails because the segment was sealed or is not sequenced where the chain
    said (``LogletSealed``, ``NotSequencer``: it was not acknowledged) is
    retried once the node has learned a newer chain, within the deadline;
    ``SEALED`` after it.  ``AppendTimeout`` is ``INDETERMINATE``.  A retried
    append whose first attempt reached a sealed segment may be in the log
    twice (at-least-once), as with any client retry of an unacknowledged write.
L4  Reads are served by read streams on this node that ask the segments'
    log-servers; a stream left where a read stopped is kept (at most
    ``logs.read_sessions_max``, idle for at most ``logs.read_session_idle_ms``)
    and continued by the next read from that LSN.
L5  A log-server job that fails for want of disk space is retried every
    ``storage.disk_full_retry_ms`` (nothing is answered before it is durable)
    until the node stops; any other storage failure stops the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from catenary.api import messages as api
from catenary.api.errors import ErrorCode, ServiceError
from catenary.core.bifrost.chain import (
    LOCAL,
    REPLICATED,
    Chain,
    ChainError,
    LocalParams,
    ReplicatedParams,
    Segment,
    decode_chain,
    encode_chain,
)
from catenary.core.bifrost.read_stream import DataLoss, ReadConfig, ReadStream, Record, TrimGap
from catenary.core.bifrost.reconfigure import (
    DONE,
    CasChain,
    NewSegment,
    ReadChain,
    Reconfigure,
    SendLoglet,
    TrimLog,
    placement,
)
from catenary.core.loglet.nodeset import LogServerInfo, NodesetUnavailable, select_nodeset
from catenary.core.loglet.repair import FinderConfig, TailFinder
from catenary.core.loglet.replication import ReplicationError, ReplicationProperty
from catenary.core.loglet.sequencer import (
    AppendError,
    Backpressure,
    LogletSealed,
    RecordTooLarge,
    SequencerConfig,
)
from catenary.core.loglet.types import (
    LOG_ID_MAX,
    GetLogletInfo,
    LogId,
    LogletInfo,
    SequencerId,
    Tail,
    to_lsn,
)
from catenary.core.metadata import types as md
from catenary.core.metadata.replica import GetQuery, ListQuery
from catenary.host.log_node import (
    Envelope,
    LogNode,
    envelope_decoder,
    node_of,
)
from catenary.host.log_server import Job, LogServerLoop, LogServerOutput
from catenary.host.sequencer import AppendTimeout, NotSequencer, SequencerLoop
from catenary.persist.log_store import LogStore
from catenary.runtime.disk import DiskWriter, is_disk_full
from catenary.server.context import NodeContext
from catenary.server.services import MembershipService, MetadataService
from catenary.storage.fs import OsFileSystem
from catenary.wire.peer import PeerService

log = logging.getLogger("catenary.logs")

LOGS_PREFIX = "/catenary/logs/"
READ_RECORDS_MAX = 100_000  # items in one LogRead reply (its bytes are bounded too)
READ_WAIT_MS_MAX = 60_000
SYSTEM_ROOT = "/catenary/"


def meta_key(core_key: str) -> str:
    """The metadata key of a chain key of the core (``logs/<id>``)."""
    return SYSTEM_ROOT + core_key


def log_key(log_id: LogId) -> str:
    return f"{LOGS_PREFIX}{log_id}"


@dataclass
class _Reader:
    log: LogId
    stream: ReadStream
    addr: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    last_used: float = 0.0

    def on_message(self, src: int, message: msgspec.Struct) -> None:
        self.stream.on_message(src, message)


@dataclass
class _InfoCollector:
    """Collects the ``LogletInfo`` answers of a segment's log-servers."""

    loglet: int
    done: asyncio.Future[None]
    expected: int
    infos: dict[int, LogletInfo] = field(default_factory=dict)

    def on_message(self, src: int, message: msgspec.Struct) -> None:
        if isinstance(message, LogletInfo) and message.loglet == self.loglet:
            self.infos[src] = message
            if len(self.infos) >= self.expected and not self.done.done():
                self.done.set_result(None)


@dataclass
class _Task:
    """A reconfiguration, trim or seal running on this node."""

    log: LogId
    core: Reconfigure | TrimLog | TailFinder
    done: asyncio.Future[Any]
    addr: int = 0
    deadline: float = 0.0

    def on_message(self, src: int, message: msgspec.Struct) -> None:
        if isinstance(self.core, Reconfigure | TailFinder):
            self.core.on_message(src, message)


class LogService:
    """The log service of one node (rules L1-L5)."""

    def __init__(
        self,
        ctx: NodeContext,
        metadata: MetadataService,
        membership: MembershipService,
        *,
        is_leader: Callable[[], bool],
        leader_address: Callable[[], tuple[int, str]],
    ) -> None:
        self._ctx = ctx
        self._metadata = metadata
        self._membership = membership
        self._is_leader = is_leader
        self._leader_address = leader_address
        self.config = ctx.config.logs
        self.node: LogNode | None = None
        self.store: LogStore | None = None
        self._channel: Any = None
        self._transport: Any = None
        self._unreachable_since: dict[int, float] = {}  # node -> when its link was seen down
        self._writer: DiskWriter | None = None
        self._job_task: asyncio.Task[None] | None = None
        self._pump_scheduled = False
        self._appends: dict[int, asyncio.Future[Any]] = {}
        self._tails: dict[int, asyncio.Future[Any]] = {}
        self._next_token = 0
        self._readers: OrderedDict[tuple[LogId, int, int], _Reader] = OrderedDict()
        self._active_readers: dict[int, _Reader] = {}
        self._tasks: dict[int, _Task] = {}
        self._reconfiguring: dict[LogId, asyncio.Future[Any]] = {}
        self._chain_changed = asyncio.Event()
        self._control_now = asyncio.Event()  # run the controller without waiting its interval
        self._started = False
        self.stats = LogStats()

    # ------------------------------------------------------------ wiring

    def attach_transport(self, transport: Any) -> None:
        """Serve the loglet service on the node's peer links (called when they are made)."""
        self._transport = transport
        self._channel = transport.add_service(
            int(PeerService.LOGLET), envelope_decoder, self._on_peer
        )

    def _on_peer(self, peer_id: int, env: Envelope) -> None:
        node = self.node
        if node is None or node_of(env.src) != peer_id:
            return  # not started yet, or a message that does not come from its sender
        self.stats.messages_in += 1
        node.deliver(env, self._now_us())
        self._kick()

    @staticmethod
    def _now_us() -> int:
        return time.monotonic_ns() // 1000

    # --------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open the log store and start serving once the node has its NodeId (a joining
        node gets it later, in the background)."""
        self._ctx.spawn(self._start_when_ready(), "logs-start")

    async def _start_when_ready(self) -> None:
        ctx = self._ctx
        while not ctx.node_id or not self._metadata.provisioned():
            await asyncio.sleep(0.05)
        try:
            await self._open()
        except Exception as exc:  # the node cannot serve logs: stop it
            ctx.fail(f"log store in {ctx.datadir.path if ctx.datadir else '?'}: {exc}")

    async def _open(self) -> None:
        ctx = self._ctx
        assert ctx.datadir is not None
        config = self.config
        path = ctx.datadir.subdir("logs")
        store_config = ctx.config.storage.options()
        loop = asyncio.get_running_loop()
        node_id, generation = ctx.node_id, ctx.generation
        self.store = await loop.run_in_executor(
            None,
            lambda: LogStore.open(
                OsFileSystem(),
                path,
                node_id,
                store_config,
                checkpoint_writes=config.checkpoint_writes,
            ),
        )
        recovery = self.store.recovery
        if recovery.torn_tail:
            log.warning("log store: a torn tail was cut at restart (%s)", recovery)
        self._writer = DiskWriter("catenary-log-store")
        server = LogServerLoop(
            self.store.server, inbox_max=config.inbox_max, batch_max=config.store_batch_max
        )
        sequencers = SequencerLoop(
            node_id, queue_max=config.sequencer_queue_max, config=self._sequencer_config()
        )
        self.node = LogNode(
            node_id, generation, server, sequencers, forwarded_max=config.forwarded_max
        )
        self._started = True
        self._kick()
        ctx.spawn(self._tick_loop(), "logs-tick")
        ctx.spawn(self._chain_loop(), "logs-chains")
        ctx.spawn(self._controller_loop(), "logs-controller")
        log.info("log service started: log-server over %s, %d logs", path, config.count)

    def _sequencer_config(self) -> SequencerConfig:
        c = self.config
        tick = c.tick_ms
        return SequencerConfig(
            records_inflight_max=c.records_inflight_max,
            record_bytes_max=c.record_bytes_max,
            store_timeout_ticks=max(1, c.store_timeout_ms // tick),
            tail_release_ticks=1,
            tail_resend_ticks=max(1, 500 // tick),
            tail_resend_max_ticks=max(1, 30_000 // tick),
        )

    async def stop(self) -> None:
        for future in list(self._appends.values()) + list(self._tails.values()):
            if not future.done():
                future.set_exception(ServiceError(ErrorCode.UNAVAILABLE, "the node is stopping"))
        for task in list(self._tasks.values()):
            if not task.done.done():
                task.done.set_exception(ServiceError(ErrorCode.UNAVAILABLE, "stopping"))
        if self._job_task is not None:
            with contextlib.suppress(BaseException):
                await self._job_task
        if self._writer is not None:
            self._writer.close()
        if self.store is not None:
            self.store.close()
        self.node = None

    # ------------------------------------------------------------- pump

    def _kick(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        node = self.node
        if node is None:
            return
        for _ in range(64):
            progressed = False
            out = node.take()
            me = node.node_id
            for dst, env in out.send:
                progressed = True
                if dst == me:
                    node.deliver(env, self._now_us())
                elif self._channel is not None:
                    self.stats.messages_out += 1
                    self._channel.send(dst, env)
            for appended in out.appended:
                future = self._appends.pop(appended.token, None)
                if future is not None and not future.done():
                    future.set_result(appended)
            for token, error in out.failed:
                future = self._appends.pop(token, None)
                if future is not None and not future.done():
                    future.set_result(error)
            for answer in out.tails:
                future = self._tails.pop(answer.token, None)
                if future is not None and not future.done():
                    future.set_result(answer)
            if self._job_task is None:
                served = node.poll_server(self._now_us())
                if served.send or served.reads or served.job is not None:
                    progressed = True
                self._emit_server(served)
                if served.job is not None:
                    self._job_task = asyncio.get_running_loop().create_task(
                        self._run_job(served.job)
                    )
            self._drain_actors()
            if not progressed and not node.server.pending:
                return
            if self._job_task is not None and not out.send:
                return
        self._kick()

    def _emit_server(self, out: LogServerOutput) -> None:
        node = self.node
        store = self.store
        assert node is not None and store is not None
        for dst, message in out.send:
            target, env = node.route(dst, message)
            self._send(target, env)
        for plan in out.reads:
            records = store.answer(plan)
            self.stats.records_served += sum(
                len(run) for run in records.runs if isinstance(run, tuple)
            )
            target, env = node.route(plan.src, records)
            self._send(target, env)

    def _send(self, target: int, env: Envelope) -> None:
        node = self.node
        assert node is not None
        if target == node.node_id:
            node.deliver(env, self._now_us())
        elif self._channel is not None:
            self.stats.messages_out += 1
            self._channel.send(target, env)

    async def _run_job(self, job: Job) -> None:
        store, writer = self.store, self._writer
        assert store is not None and writer is not None
        started = time.perf_counter()

        def persist(j: Job) -> None:
            store.write(j.writes)
            store.sync()

        while True:
            try:
                await writer.run(persist, job)
                break
            except OSError as exc:
                if not is_disk_full(exc):
                    self._ctx.fail(f"log store failed: {exc}")
                    return
                self.stats.disk_full = f"log store: {exc.strerror or exc}"
                if self._ctx.stopping:
                    return  # nothing of the job was answered: it is not durable, and the node stops
                log.warning(
                    "log store: disk full; retrying the write of %d stores", len(job.writes)
                )
                await asyncio.sleep(self._ctx.config.storage.disk_full_retry_ms / 1000)
            except Exception as exc:
                self._ctx.fail(f"log store failed: {exc!r}")
                return
        self.stats.disk_full = ""
        self.stats.persists += 1
        self.stats.persist_seconds += time.perf_counter() - started
        self._job_task = None
        node = self.node
        if node is None:
            return
        self._emit_server(node.server.job_done())
        self._kick()

    # ----------------------------------------------------------- actors

    def _drain_actors(self) -> None:
        node = self.node
        assert node is not None
        for reader in list(self._active_readers.values()):
            self._drain_reader(reader)
        for task in list(self._tasks.values()):
            self._drain_task(task)

    def _drain_reader(self, reader: _Reader) -> None:
        node = self.node
        assert node is not None
        stream = reader.stream
        for dst, message in stream.take_messages():
            node.send_from(reader.addr, dst, message)
        if stream.need_chain:
            known = node.chains.get(reader.log)
            if known is not None and known[0] is not stream.chain:
                stream.on_chain(known[0])
                for dst, message in stream.take_messages():
                    node.send_from(reader.addr, dst, message)
        if stream.buffered or stream.finished:
            reader.changed.set()

    def _drain_task(self, task: _Task) -> None:
        node = self.node
        assert node is not None
        core = task.core
        if isinstance(core, TailFinder):
            for dst, message in core.take_messages():
                if not isinstance(message, Tail):  # a plain seal records no tail (RC2)
                    node.send_from(task.addr, dst, message)
            if core.done:
                self._finish_task(task, core.tail)
            return
        for effect in core.take_effects():
            if isinstance(effect, SendLoglet):
                node.send_from(task.addr, effect.node, effect.message)
            elif isinstance(effect, ReadChain):
                self._ctx.spawn(self._read_chain_for(task, effect), "logs-read-chain")
            elif isinstance(effect, CasChain):
                self._ctx.spawn(self._cas_chain_for(task, effect), "logs-cas-chain")
        if core.done:
            self._finish_task(task, core)

    def _finish_task(self, task: _Task, result: Any) -> None:
        node = self.node
        assert node is not None
        node.remove_actor(task.addr)
        self._tasks.pop(task.addr, None)
        if not task.done.done():
            task.done.set_result(result)

    def _start_task(self, log_id: LogId, core: Reconfigure | TrimLog | TailFinder) -> _Task:
        node = self.node
        assert node is not None
        task = _Task(log_id, core, asyncio.get_running_loop().create_future())
        task.addr = node.add_actor(task)
        task.deadline = time.monotonic() + self.config.reconfigure_timeout_ms / 1000
        self._tasks[task.addr] = task
        self._drain_task(task)
        self._kick()
        return task

    async def _read_chain_for(self, task: _Task, effect: ReadChain) -> None:
        while not task.done.done():
            try:
                answer = await self._metadata.read(GetQuery(meta_key(effect.key)), stale=False)
            except ServiceError:
                await asyncio.sleep(0.05)
                continue
            kv = answer.kv
            if isinstance(task.core, Reconfigure | TrimLog):
                chain = decode_chain(kv.value) if kv is not None else None
                if chain is not None:
                    self._learn_chain(chain, kv.version)  # a lost race: the winner's chain
                task.core.on_chain_read(chain, kv.version if kv is not None else 0)
            self._drain_task(task)
            self._kick()
            return

    async def _cas_chain_for(self, task: _Task, effect: CasChain) -> None:
        put = md.Put(
            meta_key(effect.key), effect.value, md.Precondition("version", effect.expected_version)
        )
        ok, version = False, None
        try:
            result = await self._metadata.write(put)
            if isinstance(result, md.Written):
                ok, version = True, result.version
        except ServiceError:
            pass  # unknown or refused: the re-read settles it (RC3)
        if ok and version is not None:
            self._learn_chain(effect.chain, version)
        if isinstance(task.core, Reconfigure | TrimLog) and not task.done.done():
            task.core.on_cas(ok, version)
            self._drain_task(task)
            self._kick()

    # ----------------------------------------------------------- chains

    def _learn_chain(self, chain: Chain, version: int, *, initial: bool = False) -> None:
        node = self.node
        if node is None:
            return
        node.on_chain(chain, version, initial=initial)
        for reader in list(self._active_readers.values()) + list(self._readers.values()):
            if reader.log == chain.log_id:
                reader.stream.on_chain(chain)
                self._drain_reader(reader)
        self._chain_changed.set()
        self._chain_changed = asyncio.Event()
        self._kick()

    async def _chain_loop(self) -> None:
        """L1: learn every chain, then every change to one."""
        while not self._metadata.provisioned():
            await asyncio.sleep(0.05)
        source = self._metadata.watch_source()
        version = await self._list_chains(initial=True)
        self._control_now.set()  # a restarted node's logs move on at once (L2)
        while True:
            changed = source.changed_future()
            answer = source.changes_since(version, LOGS_PREFIX, True, 1000)
            if isinstance(answer, md.Compacted):
                version = await self._list_chains()
                continue
            for event in answer.events:
                if event.kind == "put":
                    self._learn_value(event.key, event.value, event.version)
            version = max(version, answer.revision)
            if not answer.events:
                await asyncio.shield(changed)

    async def _list_chains(self, *, initial: bool = False) -> int:
        answer = await self._metadata.read(ListQuery(LOGS_PREFIX, 0), stale=True)
        for kv in answer.kvs:
            self._learn_value(kv.key, kv.value, kv.version, initial=initial)
        revision: int = answer.revision
        return revision

    def _learn_value(self, key: str, value: bytes, version: int, *, initial: bool = False) -> None:
        try:
            chain = decode_chain(value)
        except ChainError as exc:
            log.error("unreadable chain at %s: %s", key, exc)
            return
        self._learn_chain(chain, version, initial=initial)

    def chain_of(self, log_id: LogId) -> tuple[Chain, int]:
        node = self._require_node()
        known = node.chains.get(log_id)
        if known is None:
            if not 0 <= log_id <= LOG_ID_MAX:
                raise ServiceError(ErrorCode.BAD_REQUEST, f"log id {log_id} is outside [0, 2^32)")
            raise ServiceError(ErrorCode.NOT_FOUND, f"unknown log {log_id}")
        return known

    def _require_node(self) -> LogNode:
        if self.node is None or not self._metadata.provisioned():
            raise (
                self._ctx.unavailable()
                if not self._ctx.stopping
                else ServiceError(ErrorCode.UNAVAILABLE, "the node is shutting down")
            )
        return self.node

    # ------------------------------------------------------------ ticks

    async def _tick_loop(self) -> None:
        interval = self.config.tick_ms / 1000
        while True:
            await asyncio.sleep(interval)
            node = self.node
            if node is None:
                continue
            node.tick(self._now_us())
            for reader in list(self._active_readers.values()):
                reader.stream.tick()
                self._drain_reader(reader)
            now = time.monotonic()
            for task in list(self._tasks.values()):
                if now > task.deadline:
                    self._finish_task(
                        task,
                        ServiceError(
                            ErrorCode.UNAVAILABLE,
                            f"log {task.log}: the operation did not complete within "
                            f"{self.config.reconfigure_timeout_ms} ms (log-servers unreachable?)",
                        ),
                    )
                    continue
                if not isinstance(task.core, TrimLog):
                    task.core.tick()
                self._drain_task(task)
            self._expire_readers()
            self._kick()

    # ------------------------------------------------------------- appends

    async def append(
        self, log_id: LogId, payloads: Sequence[bytes], timeout_ms: int = 0
    ) -> api.LogAppendReply:
        """L3 (``timeout_ms``: the caller's time left, when it is below the node's bound)."""
        config = self.config
        if not payloads:
            raise ServiceError(ErrorCode.BAD_REQUEST, "an append needs at least one record")
        if len(payloads) > config.batch_records_max:
            raise ServiceError(
                ErrorCode.TOO_LARGE,
                f"{len(payloads)} records in one append exceed logs.batch_records_max "
                f"{config.batch_records_max}",
            )
        for payload in payloads:
            if len(payload) > config.record_bytes_max:
                raise ServiceError(
                    ErrorCode.TOO_LARGE,
                    f"record of {len(payload)} bytes exceeds logs.record_bytes_max "
                    f"{config.record_bytes_max}",
                )
        batch = tuple(payloads)
        if timeout_ms < 0:
            raise ServiceError(ErrorCode.BAD_REQUEST, "timeout_ms must be >= 0")
        bound_ms = min(config.append_timeout_ms, timeout_ms or config.append_timeout_ms)
        deadline = time.monotonic() + bound_ms / 1000
        sealed_since: float | None = None
        while True:
            node = self._require_node()
            _chain, version = self.chain_of(log_id)
            self._next_token += 1
            token = self._next_token
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._appends[token] = future
            now_us = self._now_us()
            budget_us = int((deadline - time.monotonic()) * 1_000_000)
            node.append(token, log_id, batch, now_us + budget_us, now_us)
            self._kick()
            outcome = await future
            if isinstance(outcome, AppendError):
                error = outcome
                if isinstance(error, LogletSealed | NotSequencer) and time.monotonic() < deadline:
                    # L3: wait for a new segment a while (``logs.sealed_wait_ms``), not the
                    # whole deadline, so the client hears SEALED before its own deadline.
                    now = time.monotonic()
                    if sealed_since is None:
                        sealed_since = now
                    give_up = min(deadline, sealed_since + config.sealed_wait_ms / 1000)
                    until = give_up
                    if isinstance(error, NotSequencer):
                        # The chain may name a node that has not learned it yet (it
                        # starts the sequencer on learning it): ask again shortly too.
                        until = min(give_up, now + NOT_SEQUENCER_RETRY_S)
                    await self._newer_chain(log_id, version, until)
                    if time.monotonic() < give_up or self._known_version(log_id) > version:
                        continue
                    # No newer chain in time: the batch was not sent again, so the
                    # answer is SEALED (retryable), not the timeout of a retry.
                raise _append_error(log_id, error)
            self.stats.appends += 1
            self.stats.records += len(batch)
            self.stats.bytes += sum(map(len, batch))
            return api.LogAppendReply(0, outcome.first_lsn, outcome.last_lsn)

    async def _newer_chain(self, log_id: LogId, version: int, deadline: float) -> None:
        """Wait until this node knows a chain of ``log_id`` newer than ``version``."""
        while time.monotonic() < deadline:
            node = self.node
            known = node.chains.get(log_id) if node is not None else None
            if known is not None and known[1] > version:
                return
            event = self._chain_changed
            await _wait(event, min(0.1, deadline - time.monotonic()))

    # -------------------------------------------------------------- reads

    async def read(self, request: api.LogRead) -> api.LogReadReply:
        """L4."""
        config = self.config
        if request.from_lsn < 1:
            raise ServiceError(ErrorCode.BAD_REQUEST, "from_lsn must be >= 1")
        if request.to_lsn and request.to_lsn < request.from_lsn:
            raise ServiceError(ErrorCode.BAD_REQUEST, "to_lsn must be 0 or >= from_lsn")
        if not 1 <= request.records_max <= READ_RECORDS_MAX:
            raise ServiceError(
                ErrorCode.BAD_REQUEST, f"records_max must be between 1 and {READ_RECORDS_MAX}"
            )
        if not 0 <= request.wait_ms <= READ_WAIT_MS_MAX:
            raise ServiceError(
                ErrorCode.BAD_REQUEST, f"wait_ms must be between 0 and {READ_WAIT_MS_MAX}"
            )
        node = self._require_node()
        chain, _ = self.chain_of(request.log)
        to_lsn = request.to_lsn or None
        if to_lsn is not None and to_lsn == request.from_lsn:
            return api.LogReadReply(request.id, (), request.from_lsn, True)
        key = (request.log, request.from_lsn, request.to_lsn)
        reader = self._readers.pop(key, None)
        if reader is None:
            stream = ReadStream(
                chain,
                request.from_lsn,
                to_lsn,
                config=ReadConfig(
                    buffer_max=config.read_buffer_max,
                    bytes_max=config.read_bytes_max,
                    wait_ticks=max(1, config.read_wait_ms // config.tick_ms),
                    resend_ticks=max(1, config.read_resend_ms // config.tick_ms),
                ),
                salt=node.node_id + self._next_token,
            )
            reader = _Reader(request.log, stream)
            reader.addr = node.add_actor(reader)
        self._active_readers[reader.addr] = reader
        try:
            items, next_lsn = await self._collect(reader, request)
        finally:
            self._active_readers.pop(reader.addr, None)
        done = reader.stream.finished
        if done or self._ctx.stopping:
            node.remove_actor(reader.addr)
        else:
            reader.last_used = time.monotonic()
            self._readers[(request.log, next_lsn, request.to_lsn)] = reader
            self._expire_readers()
        return api.LogReadReply(request.id, tuple(items), next_lsn, done)

    async def _collect(
        self, reader: _Reader, request: api.LogRead
    ) -> tuple[list[api.LogRecord | api.LogGap], int]:
        stream = reader.stream
        items: list[api.LogRecord | api.LogGap] = []
        budget = self.config.read_reply_bytes_max
        size = 0
        next_lsn = request.from_lsn
        deadline = time.monotonic() + request.wait_ms / 1000
        self._drain_reader(reader)
        self._kick()
        records = 0
        while True:
            # Taken in one go: the stream asks its log-servers for as many records as the
            # room this frees (one at a time when taken one by one).
            taken = stream.take_within(request.records_max - len(items), budget - size, 16)
            for item in taken:
                if isinstance(item, Record):
                    items.append(api.LogRecord(item.lsn, item.payload))
                    size += len(item.payload) + 16
                    records += 1
                    next_lsn = item.lsn + 1
                elif isinstance(item, TrimGap):
                    items.append(api.LogGap(item.from_lsn, item.to_lsn, "trim"))
                    next_lsn = item.to_lsn
                elif isinstance(item, DataLoss):
                    items.append(api.LogGap(item.from_lsn, item.to_lsn, "data_loss"))
                    next_lsn = item.to_lsn
            if items or stream.finished:
                self.stats.records_read += records
                self._drain_reader(reader)
                self._kick()
                return items, next_lsn
            left = deadline - time.monotonic()
            if left <= 0 or self._ctx.stopping:
                return items, next_lsn
            reader.changed.clear()
            self._drain_reader(reader)
            self._kick()
            await _wait(reader.changed, left)

    def _expire_readers(self) -> None:
        node = self.node
        if node is None:
            return
        idle_s = self.config.read_session_idle_ms / 1000
        now = time.monotonic()
        while self._readers:
            key, reader = next(iter(self._readers.items()))
            if len(self._readers) <= self.config.read_sessions_max and (
                now - reader.last_used < idle_s
            ):
                break
            del self._readers[key]
            node.remove_actor(reader.addr)

    # ------------------------------------------------------- find tail

    async def find_tail(self, log_id: LogId) -> api.LogTailReply:
        chain, _ = self.chain_of(log_id)
        tail, sealed = await self._tail_of(chain)
        if tail == 0:
            raise ServiceError(
                ErrorCode.UNAVAILABLE,
                f"log {log_id}: the sequencer of segment {chain.tail.index} did not answer",
            )
        return api.LogTailReply(0, tail, sealed, chain.trim_point)

    async def _tail_of(self, chain: Chain) -> tuple[int, bool]:
        """(first LSN not committed, sealed) from the tail segment's sequencer; (0, _) unknown."""
        node = self._require_node()
        segment = chain.tail
        params = placement(segment)
        if params is None:
            return 0, False
        self._next_token += 1
        token = self._next_token
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._tails[token] = future
        node.query_tail(token, params.sequencer.node, segment.loglet(chain.log_id))
        self._kick()
        try:
            async with asyncio.timeout(self.config.tail_query_timeout_ms / 1000):
                answer = await future
        except TimeoutError:
            self._tails.pop(token, None)
            answer = None
        if answer is not None and answer.hosted:
            return to_lsn(segment.base_lsn, answer.global_tail), answer.sealed
        # No sequencer answered for the segment (sealed, or its node is down): the
        # highest global tail its log-servers know, a lower bound of the committed one.
        infos = await self._ask_servers(segment.loglet(chain.log_id), params.nodeset)
        if not infos:
            return 0, False
        tail = max(info.known_global_tail for info in infos)
        sealed = any(info.sealed for info in infos)
        return to_lsn(segment.base_lsn, max(tail, 1)), sealed

    async def _ask_servers(self, loglet: int, nodeset: Sequence[int]) -> list[LogletInfo]:
        """``LogletInfo`` from every log-server of ``nodeset`` that answers in time."""
        node = self._require_node()
        collector = _InfoCollector(loglet, asyncio.get_running_loop().create_future(), len(nodeset))
        addr = node.add_actor(collector)
        try:
            for server in nodeset:
                node.send_from(addr, server, GetLogletInfo(loglet))
            self._kick()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.tail_query_timeout_ms / 1000):
                    await collector.done
        finally:
            node.remove_actor(addr)
        return list(collector.infos.values())

    # ------------------------------------------------- seal, trim, move

    async def seal(self, log_id: LogId) -> api.LogTailReply:
        """Seal the tail segment; appends answer SEALED until ``reconfigure``."""
        node = self._require_node()
        chain, _ = self.chain_of(log_id)
        segment = chain.tail
        params = placement(segment)
        if params is None:
            raise ServiceError(ErrorCode.BAD_REQUEST, f"log {log_id}: no loglet to seal")
        finder = TailFinder(
            segment.loglet(log_id),
            params.nodeset,
            params.replication,
            SequencerId(node.node_id, 1_000_000 + self._next_actor_salt()),
            config=self._finder_config(),
        )
        task = self._start_task(log_id, finder)
        result = await task.done
        if isinstance(result, ServiceError):
            raise result
        self.stats.seals += 1
        return api.LogTailReply(0, to_lsn(segment.base_lsn, result), True, chain.trim_point)

    def _next_actor_salt(self) -> int:
        self._next_token += 1
        return self._next_token

    def _finder_config(self) -> FinderConfig:
        return FinderConfig(
            resend_ticks=max(1, self.config.read_resend_ms // self.config.tick_ms),
            read_bytes_max=self.config.read_bytes_max,
        )

    def _require_leader(self) -> None:
        if self._is_leader():
            return
        leader, address = self._leader_address()
        raise ServiceError(
            ErrorCode.NOT_LEADER,
            "log chains are changed on the metadata leader",
            leader=leader,
            leader_address=address,
        )

    async def trim(self, log_id: LogId, lsn: int) -> api.LogTrimReply:
        self._require_leader()
        if lsn < 0:
            raise ServiceError(ErrorCode.BAD_REQUEST, "a trim point is >= 0")
        chain, version = self.chain_of(log_id)
        tail, _sealed = await self._tail_of(chain)
        if tail == 0:
            raise ServiceError(
                ErrorCode.UNAVAILABLE, f"log {log_id}: its committed tail is unknown; trim later"
            )
        task = self._start_task(log_id, TrimLog(chain, version, lsn, tail))
        result = await task.done
        if isinstance(result, ServiceError):
            raise result
        assert isinstance(result, TrimLog)
        if result.phase != DONE:
            raise ServiceError(ErrorCode.NOT_FOUND, f"log {log_id}: its chain is gone")
        return api.LogTrimReply(0, result.trim_point, len(result.dropped))

    async def reconfigure(self, request: api.LogReconfigure) -> api.LogDescribeReply:
        self._require_leader()
        self.chain_of(request.log)
        provider = request.provider or self.config.provider
        if provider not in (REPLICATED, LOCAL):
            raise ServiceError(
                ErrorCode.BAD_REQUEST, f"provider {provider!r}: expected replicated or local"
            )
        try:
            replication = (
                ReplicationProperty.parse(request.replication)
                if request.replication
                else self.default_replication()
            )
        except ReplicationError as exc:
            raise ServiceError(ErrorCode.BAD_REQUEST, str(exc)) from None
        sequencer = self._sequencer_for(request.sequencer)
        await self._reconfigure(request.log, provider, replication, sequencer, "requested")
        return await self.describe(request.log)

    def _sequencer_for(self, node_id: int) -> SequencerId:
        """The sequencer a new segment gets: ``node_id``'s, or with 0 this node's when it
        has the ``sequencer`` role, else another member's."""
        ctx = self._ctx
        mine = "sequencer" in ctx.config.roles
        if node_id == ctx.node_id or (node_id == 0 and mine):
            return SequencerId(ctx.node_id, ctx.generation)
        for info in self._membership.node_infos():
            if info.state == "removed" or info.node == ctx.node_id:
                continue
            if node_id in (0, info.node):
                return SequencerId(info.node, info.generation)
        if node_id == 0:
            raise ServiceError(
                ErrorCode.REFUSED, "no node to sequence the log: this one has no sequencer role"
            )
        raise ServiceError(ErrorCode.NOT_FOUND, f"node {node_id} is not a member of the cluster")

    async def _reconfigure(
        self,
        log_id: LogId,
        provider: str,
        replication: ReplicationProperty,
        sequencer: SequencerId,
        reason: str,
    ) -> Segment:
        running = self._reconfiguring.get(log_id)
        if running is not None:
            raise ServiceError(
                ErrorCode.SEALED, f"log {log_id} is being reconfigured already; retry"
            )
        node = self._require_node()
        chain, version = self.chain_of(log_id)
        new = (
            NewSegment(
                REPLICATED,
                sequencer=sequencer,
                replication=replication,
                nodeset_size=self.config.nodeset_size,
            )
            if provider == REPLICATED
            else NewSegment(LOCAL, node=sequencer.node)
        )
        core = Reconfigure(
            chain,
            version,
            new,
            repairer=SequencerId(node.node_id, 1_000_000 + self._next_actor_salt()),
            servers=self.log_servers(),
            finder_config=self._finder_config(),
        )
        log.info(
            "log %d: reconfiguring segment %d (%s): new %s segment, sequencer %s, %s",
            log_id,
            chain.tail.index,
            reason,
            provider,
            sequencer,
            replication,
        )
        task = self._start_task(log_id, core)
        self._reconfiguring[log_id] = task.done
        try:
            result = await task.done
        finally:
            self._reconfiguring.pop(log_id, None)
        if isinstance(result, ServiceError):
            raise result
        assert isinstance(result, Reconfigure)
        if result.phase != DONE or result.segment is None:
            error = result.error
            code = ErrorCode.UNAVAILABLE
            if isinstance(error, NodesetUnavailable):
                code = ErrorCode.REFUSED
            raise ServiceError(code, f"log {log_id}: reconfiguration failed: {error}")
        if result.lost:
            log.error(
                "log %d: the reconfiguration met data loss at offsets %s", log_id, result.lost
            )
        self.stats.reconfigurations += 1  # its chain was learned with its real version
        return result.segment

    def _known_version(self, log_id: LogId) -> int:
        node = self.node
        known = node.chains.get(log_id) if node is not None else None
        return known[1] if known is not None else 0

    # ----------------------------------------------------------- controller

    def default_replication(self) -> ReplicationProperty:
        if self.config.replication:
            return ReplicationProperty.parse(self.config.replication)
        status = self._metadata.status()
        voters = sum(1 for member in status.members if member.role == "voter") or 1
        return ReplicationProperty(node=min(2, voters))

    def log_servers(self) -> dict[int, LogServerInfo]:
        servers = {
            info.node: LogServerInfo()
            for info in self._membership.node_infos()
            if info.state != "removed"
        }
        if not servers:
            servers[self._ctx.node_id] = LogServerInfo()
        return servers

    async def _controller_loop(self) -> None:
        """L2."""
        interval = self.config.controller_interval_ms / 1000
        last = 0.0
        leading = False
        while True:
            await _wait(self._control_now, min(interval, 0.1))
            now = time.monotonic()
            if self.node is None or not self._metadata.provisioned() or not self._is_leader():
                leading = False
                self._control_now.clear()  # a follower has nothing to control
                continue
            due = self._control_now.is_set() or not leading or now - last >= interval
            if not due:
                continue
            self._control_now.clear()
            leading, last = True, now
            try:
                await self._control()
            except ServiceError as exc:
                log.info("log controller: %s", exc.message)

    async def _control(self) -> None:
        node = self.node
        assert node is not None
        for log_id in range(self.config.count):
            if log_id not in node.chains:
                await self._create(log_id)
        generations = {
            info.node: info.generation
            for info in self._membership.node_infos()
            if info.state != "removed"
        }
        wanted = self.default_replication()
        for log_id in sorted(node.chains):
            if log_id in self._reconfiguring:
                continue
            chain, _ = node.chains[log_id]
            tail = chain.tail
            if tail.provider == REPLICATED and tail.replicated is not None:
                params = tail.replicated
                current = params.sequencer
                newest = generations.get(current.node, 0)
                if current.node == node.node_id:
                    newest = node.generation  # this node knows its own generation first
                elif self._sequencer_lost(current.node):
                    self._ctx.spawn(
                        self._move(
                            log_id,
                            REPLICATED,
                            params.replication,
                            self._sequencer_for(0),
                            f"the sequencer's node {current.node} is unreachable",
                        ),
                        f"logs-move-{log_id}",
                    )
                    continue
                if newest > current.generation:
                    self._ctx.spawn(
                        self._move(
                            log_id,
                            REPLICATED,
                            params.replication,
                            SequencerId(current.node, newest),
                            f"node {current.node} restarted (generation {newest})",
                        ),
                        f"logs-move-{log_id}",
                    )
                    continue
                replication = params.replication
                reason = ""
                if not self.config.replication and replication.node < wanted.node:
                    replication, reason = wanted, f"replication {params.replication} -> {wanted}"
                servers = self.log_servers()
                try:
                    nodeset = select_nodeset(
                        servers,
                        replication,
                        target_size=self.config.nodeset_size,
                        previous=params.nodeset,
                        salt=log_id,
                    )
                except NodesetUnavailable:
                    continue
                if not reason and len(nodeset) > len(params.nodeset):
                    reason = f"nodeset {list(params.nodeset)} -> {list(nodeset)}"
                if reason:
                    self._ctx.spawn(
                        self._move(log_id, REPLICATED, replication, current, reason),
                        f"logs-move-{log_id}",
                    )
            elif (
                tail.provider == LOCAL
                and isinstance(tail.local, LocalParams)
                and tail.local.node == node.node_id
                and log_id in node.stale_logs()
            ):
                self._ctx.spawn(
                    self._move(
                        log_id,
                        LOCAL,
                        ReplicationProperty(node=1),
                        self._sequencer_for(0),
                        "the local segment's node restarted",
                    ),
                    f"logs-move-{log_id}",
                )

    def _sequencer_lost(self, peer: int) -> bool:
        """L2: ``peer``'s link has been down for ``logs.sequencer_failover_ms`` (0: never)."""
        wait_ms = self.config.sequencer_failover_ms
        if not wait_ms or self._transport is None:
            return False
        now = time.monotonic()
        if self._transport.connected(peer):
            self._unreachable_since.pop(peer, None)
            return False
        since = self._unreachable_since.setdefault(peer, now)
        return now - since >= wait_ms / 1000

    async def _move(
        self,
        log_id: LogId,
        provider: str,
        replication: ReplicationProperty,
        sequencer: SequencerId,
        reason: str,
    ) -> None:
        with contextlib.suppress(ServiceError):
            await self._reconfigure(log_id, provider, replication, sequencer, reason)

    async def _create(self, log_id: LogId) -> None:
        """L2: the first segment of a new log (create-if-absent)."""
        provider = self.config.provider
        servers = self.log_servers()
        ctx = self._ctx
        if provider == LOCAL:
            segment = Segment(0, 1, LOCAL, local=LocalParams(ctx.node_id))
        else:
            replication = self.default_replication()
            try:
                nodeset = select_nodeset(
                    servers, replication, target_size=self.config.nodeset_size, salt=log_id
                )
            except NodesetUnavailable as exc:
                log.info("log %d: not created yet: %s", log_id, exc)
                return
            params = ReplicatedParams(self._sequencer_for(0), nodeset, replication)
            segment = Segment(0, 1, REPLICATED, replicated=params)
        chain = Chain(log_id, (segment,))
        put = md.Put(log_key(log_id), encode_chain(chain), md.Precondition("absent"))
        result = await self._metadata.write(put)
        if isinstance(result, md.Written):
            log.info("log %d created: %s segment, %s", log_id, provider, _describe_segment(segment))
            self._learn_chain(chain, result.version)

    # -------------------------------------------------------------- describe

    async def describe(self, log_id: int) -> api.LogDescribeReply:
        node = self._require_node()
        ids = sorted(node.chains) if log_id < 0 else [log_id]
        infos = []
        for one in ids:
            chain, version = self.chain_of(one)
            tail, sealed = await self._tail_of(chain)
            infos.append(_log_info(chain, version, tail, sealed))
        return api.LogDescribeReply(0, tuple(infos))

    def status(self) -> list[dict[str, object]]:
        """The logs as this node knows them, for ``/v1/status``."""
        node = self.node
        if node is None:
            return []
        out: list[dict[str, object]] = []
        for log_id in sorted(node.chains):
            chain, version = node.chains[log_id]
            tail = chain.tail
            params = placement(tail)
            out.append(
                {
                    "log": log_id,
                    "version": version,
                    "segments": len(chain.segments),
                    "trim_point": chain.trim_point,
                    "tail_segment": tail.index,
                    "provider": tail.provider,
                    "sequencer": str(params.sequencer) if params else "",
                    "sequenced_here": node.sequencers.hosts(tail.loglet(log_id)),
                }
            )
        return out

    def figures(self) -> dict[str, object]:
        """Counters of this node's log service, for ``/v1/status`` and ``/metrics``."""
        node = self.node
        stats = self.stats
        inflight = 0
        if node is not None:
            for loglet in node.sequencers.loglets():
                core = node.sequencers.core(loglet)
                if core is not None:
                    inflight += core.inflight_records
        return {
            "appends": stats.appends,
            "append_records": stats.records,
            "append_bytes": stats.bytes,
            "records_read": stats.records_read,
            "records_served": stats.records_served,
            "store_persists": stats.persists,
            "store_persist_seconds": stats.persist_seconds,
            "inflight_records": inflight,
            "forwarded_inflight": node.forwarded_inflight if node is not None else 0,
            "messages_in": stats.messages_in,
            "messages_out": stats.messages_out,
            "seals": stats.seals,
            "reconfigurations": stats.reconfigurations,
            "disk_full": stats.disk_full,
            "sequencers": len(node.sequencers.loglets()) if node is not None else 0,
        }


NOT_SEQUENCER_RETRY_S = 0.05


@dataclass
class LogStats:
    appends: int = 0
    records: int = 0
    bytes: int = 0
    records_read: int = 0
    records_served: int = 0
    persists: int = 0
    persist_seconds: float = 0.0
    seals: int = 0
    reconfigurations: int = 0
    messages_in: int = 0
    messages_out: int = 0
    disk_full: str = ""


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    """Wait for ``event`` at most ``timeout_s``.  (``asyncio.timeout``, not ``wait_for``:
    on Python 3.11 ``wait_for`` loses a cancellation that arrives as the awaited event
    completes, and a task in a loop around it then never stops.)"""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(timeout_s, 0.0)):
            await event.wait()


def _append_error(log_id: LogId, error: AppendError) -> ServiceError:
    if isinstance(error, RecordTooLarge):
        return ServiceError(ErrorCode.TOO_LARGE, str(error))
    if isinstance(error, Backpressure):
        return ServiceError(ErrorCode.OVERLOADED, f"log {log_id}: {error}")
    if isinstance(error, AppendTimeout):
        return ServiceError(
            ErrorCode.INDETERMINATE,
            f"log {log_id}: the append was not acknowledged in time; it may or may not be "
            f"in the log ({error})",
        )
    if isinstance(error, LogletSealed | NotSequencer):
        return ServiceError(
            ErrorCode.SEALED,
            f"log {log_id}: its tail segment is sealed or has no live sequencer, and no new "
            f"segment appeared in time (run catenary logs reconfigure {log_id}) ({error})",
        )
    return ServiceError(
        ErrorCode.UNAVAILABLE if error.retryable else ErrorCode.BAD_REQUEST,
        f"log {log_id}: {error}",
    )


def _describe_segment(segment: Segment) -> str:
    params = placement(segment)
    if params is None:
        return segment.provider
    return f"sequencer {params.sequencer}, nodeset {list(params.nodeset)}, {params.replication}"


def _log_info(chain: Chain, version: int, tail: int, sealed: bool) -> api.LogInfo:
    segments = []
    for segment in chain.segments:
        params = placement(segment)
        end = chain.end_of(segment) or 0
        segments.append(
            api.SegmentInfo(
                segment.index,
                segment.base_lsn,
                end,
                segment.provider,
                str(params.replication) if params else "",
                str(params.sequencer) if params else "",
                tuple(params.nodeset) if params else (),
            )
        )
    return api.LogInfo(chain.log_id, version, chain.trim_point, tail, sealed, tuple(segments))


__all__ = ["LOGS_PREFIX", "LogService", "LogStats"]
