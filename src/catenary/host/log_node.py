"""The log service of one node, sans-IO: its log-server, its sequencers, and appends from anywhere.

Theory of operation
-------------------
A ``LogNode`` hosts, for one node in one generation, the node's
``LogServerLoop`` (its one ``LogServer`` core over the node's ``LogStore``)
and its ``SequencerLoop`` (the ``Sequencer`` cores of the segments this node
sequences), routes the loglet traffic between them and the other nodes, and
takes client appends for any log: an append whose tail segment this node
sequences goes to its own sequencer; any other is forwarded, in one message,
to the node that does (one round trip), and the answer comes back the same way.
The runtime (``server.logs``) delivers peer messages (``deliver``), executes
the log-server's persistence jobs and read plans, sends what ``take`` hands
out, and calls ``tick``; nothing here reads a clock or does IO.

Addresses.  Every party to the loglet protocol on a node is an *actor* with an
address ``node << ACTOR_BITS | actor``: ``LOG_SERVER`` (0), ``SEQUENCER`` (1),
``APPENDER`` (2, the forwarded appends of this node), and actors the runtime
registers for readers, seals, finders and reconfigurations (from
``FIRST_DYNAMIC``).  A core that names a node (a sequencer's nodeset, a
reader's server) means that node's log-server.  A log-server answers the
address that asked, so the answer reaches the actor that asked.  Peer frames
carry ``Envelope(src, dst actor, message)``.

Rules:

N1  The chain decides who sequences.  A node starts the sequencer of a
    replicated segment only when the chain names it in its *current*
    generation (``SequencerId(node, generation)``); a local segment only when
    it holds it and the segment was added after this node started (its
    sequencer id carries no generation).  A segment this node sequenced in an
    earlier generation can take no appends: ``stale_logs`` names those logs,
    for the runtime to reconfigure.
N2  Appends are answered exactly once: acknowledged with the LSNs of the
    batch, or failed with an ``AppendError`` (retryable or not).  A forwarded
    append past its deadline fails with ``AppendTimeout`` (its outcome is
    unknown); a late answer for it is dropped.  At most ``forwarded_max``
    appends wait for a remote sequencer; beyond that ``Backpressure``.
N3  A forwarded append names the segment it was sent for; a sequencer that
    does not host that segment's loglet answers ``NotSequencer`` (the sender's
    chain is stale, or the segment's sequencer is gone), which is retryable.
N4  Deadlines cross nodes as budgets (microseconds left), never as clock
    readings: each node's clock is its own.
N5  No clock is read: ``now_us`` comes in with every call that needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from catenary.core.bifrost.chain import LOCAL, Chain, Segment
from catenary.core.bifrost.reconfigure import placement
from catenary.core.loglet.sequencer import AppendError, Backpressure, LogletSealed, RecordTooLarge
from catenary.core.loglet.types import (
    LogId,
    LogletId,
    LogletMessage,
    Lsn,
    Offset,
    SequencerId,
    Stored,
    to_lsn,
)
from catenary.host.log_server import LogServerLoop, LogServerOutput
from catenary.host.sequencer import AppendTimeout, NotSequencer, SequencerLoop

ACTOR_BITS = 20
ACTOR_MASK = (1 << ACTOR_BITS) - 1
LOG_SERVER = 0
SEQUENCER = 1
APPENDER = 2
FIRST_DYNAMIC = 16


def address(node: int, actor: int) -> int:
    return node << ACTOR_BITS | actor


def node_of(addr: int) -> int:
    return addr >> ACTOR_BITS


def actor_of(addr: int) -> int:
    return addr & ACTOR_MASK


# ------------------------------------------------------------ peer messages


class ForwardAppend(msgspec.Struct, tag="fa", array_like=True, frozen=True):
    """Sequence ``payloads`` in segment ``segment_index`` of ``log`` (N3, N4)."""

    token: int
    log: LogId
    segment_index: int
    payloads: tuple[bytes, ...]
    budget_us: int


class AppendDone(msgspec.Struct, tag="fd", array_like=True, frozen=True):
    token: int
    last_offset: Offset


class AppendFailed(msgspec.Struct, tag="ff", array_like=True, frozen=True):
    token: int
    kind: str  # the AppendError class name
    message: str
    retryable: bool


class TailQuery(msgspec.Struct, tag="tq", array_like=True, frozen=True):
    """Ask a sequencer for a loglet's global tail."""

    token: int
    loglet: LogletId


class TailAnswer(msgspec.Struct, tag="ta", array_like=True, frozen=True):
    token: int
    loglet: LogletId
    hosted: bool  # False: the node does not sequence the loglet
    global_tail: Offset
    sealed: bool


PeerLogMessage = LogletMessage | ForwardAppend | AppendDone | AppendFailed | TailQuery | TailAnswer


class Envelope(msgspec.Struct, array_like=True, frozen=True):
    src: int  # the sender's address
    dst: int  # the actor on the receiving node
    message: PeerLogMessage


envelope_decoder: msgspec.msgpack.Decoder[Envelope] = msgspec.msgpack.Decoder(Envelope)


class RemoteAppendError(AppendError):
    """An append error reported by another node's sequencer."""

    def __init__(self, kind: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable


_ERRORS: dict[str, type[AppendError]] = {
    "LogletSealed": LogletSealed,
    "Backpressure": Backpressure,
    "NotSequencer": NotSequencer,
    "AppendTimeout": AppendTimeout,
}


def remote_error(m: AppendFailed) -> AppendError:
    """The local error class for a remote failure, so callers match one set of classes."""
    cls = _ERRORS.get(m.kind)
    if cls is not None:
        return cls(m.message)
    return RemoteAppendError(m.kind, m.message, m.retryable)


class Actor(Protocol):
    def on_message(self, src: int, message: msgspec.Struct) -> None: ...


# ------------------------------------------------------------------ outputs


@dataclass
class Appended:
    token: int
    first_lsn: Lsn
    last_lsn: Lsn
    segment_index: int  # the segment the batch went into


@dataclass
class LogNodeOutput:
    send: list[tuple[int, Envelope]] = field(default_factory=list)  # (node, envelope)
    appended: list[Appended] = field(default_factory=list)
    failed: list[tuple[int, AppendError]] = field(default_factory=list)
    tails: list[TailAnswer] = field(default_factory=list)  # answers to ``query_tail``


@dataclass
class _Forwarded:
    base_lsn: Lsn
    count: int
    deadline_us: int
    segment_index: int


@dataclass
class _Sequenced:
    origin: int  # address of the APPENDER that asked (this node's: a local append)
    token: int  # the origin's token
    base_lsn: Lsn
    count: int
    segment_index: int


class LogNode:
    """The log service of one node in one generation (rules N1-N5)."""

    def __init__(
        self,
        node_id: int,
        generation: int,
        server: LogServerLoop,
        sequencers: SequencerLoop,
        *,
        forwarded_max: int = 4096,
        locations: Mapping[int, str] | None = None,
    ) -> None:
        self.node_id = node_id
        self.generation = generation
        self.server = server
        self.sequencers = sequencers
        self.forwarded_max = forwarded_max
        self.locations = dict(locations or {})
        self.chains: dict[LogId, tuple[Chain, int]] = {}
        self._boot_tail: dict[LogId, int] = {}  # N1: tail segment index when first seen
        self._actors: dict[int, Actor] = {}
        self._next_actor = FIRST_DYNAMIC
        self._forwarded: dict[int, _Forwarded] = {}  # my token -> what the answer needs
        self._sequenced: dict[int, _Sequenced] = {}  # sequencer token -> whose append
        self._next_seq_token = 0
        self._out = LogNodeOutput()
        self.forwarded_total = 0
        self.appends_sequenced = 0
        self.records_sequenced = 0
        self.bytes_sequenced = 0

    # ----------------------------------------------------------- addresses

    def address(self, actor: int) -> int:
        return address(self.node_id, actor)

    def add_actor(self, actor: Actor) -> int:
        """Register an actor (a reader, a finder, a reconfiguration); returns its address."""
        span = ACTOR_MASK - FIRST_DYNAMIC  # dynamic ids wrap around, skipping ones in use
        actor_id = self._next_actor
        while actor_id in self._actors:
            actor_id = FIRST_DYNAMIC + (actor_id + 1 - FIRST_DYNAMIC) % span
        self._next_actor = FIRST_DYNAMIC + (actor_id + 1 - FIRST_DYNAMIC) % span
        self._actors[actor_id] = actor
        return self.address(actor_id)

    def remove_actor(self, addr: int) -> None:
        self._actors.pop(actor_of(addr), None)

    def send_from(self, src_actor_addr: int, node: int, message: msgspec.Struct) -> None:
        """A core's message to ``node``'s log-server, from one of this node's actors."""
        self._out.send.append((node, Envelope(src_actor_addr, LOG_SERVER, message)))  # type: ignore[arg-type]

    # --------------------------------------------------------------- chains

    def on_chain(self, chain: Chain, version: int, *, initial: bool = False) -> None:
        """A log's chain as the metadata service holds it (newer versions only).

        ``initial``: read when the node started (N1: a local segment already in
        it was this node's in an earlier life)."""
        log = chain.log_id
        known = self.chains.get(log)
        if known is not None and known[1] >= version:
            return
        self.chains[log] = (chain, version)
        self._boot_tail.setdefault(log, chain.tail.index if initial else -1)
        self._maybe_start(log, chain)

    def _maybe_start(self, log: LogId, chain: Chain) -> None:
        """N1: start the tail segment's sequencer if it is this node's, now."""
        tail = chain.tail
        params = placement(tail)
        if params is None or params.sequencer.node != self.node_id:
            return
        if tail.provider == LOCAL:
            if tail.index <= self._boot_tail[log]:
                return
        elif params.sequencer != SequencerId(self.node_id, self.generation):
            return
        loglet = tail.loglet(log)
        if not self.sequencers.hosts(loglet):
            self.sequencers.start(
                loglet,
                params.sequencer,
                params.nodeset,
                params.replication,
                locations=self.locations,
            )

    def restart_sequencers(self, generation: int, sequencers: SequencerLoop) -> None:
        """The node's sequencers start over in a new ``generation`` while its log-server
        goes on (N1: the segments they sequenced take no more appends here).  Appends
        they held end with ``AppendTimeout``: they may or may not be committed (N2)."""
        if generation <= self.generation:
            raise ValueError("a new generation is higher than the old one")
        self.generation = generation
        self.sequencers = sequencers
        local = self.address(APPENDER)
        me = self.address(SEQUENCER)
        for seq_token in sorted(self._sequenced):
            entry = self._sequenced[seq_token]
            error = AppendTimeout("the sequencer restarted")
            if entry.origin == local:
                self._out.failed.append((entry.token, error))
            else:
                failed = AppendFailed(entry.token, type(error).__name__, str(error), True)
                self._out.send.append((node_of(entry.origin), Envelope(me, APPENDER, failed)))
        self._sequenced.clear()

    def stale_logs(self) -> list[LogId]:
        """N1: logs whose tail segment this node sequenced in an earlier life."""
        out = []
        for log in sorted(self.chains):
            chain, _ = self.chains[log]
            tail = chain.tail
            params = placement(tail)
            if params is None or params.sequencer.node != self.node_id:
                continue
            if tail.provider == LOCAL:
                if tail.index <= self._boot_tail[log] and not self.sequencers.hosts(
                    tail.loglet(log)
                ):
                    out.append(log)
            elif params.sequencer.generation < self.generation:
                out.append(log)
        return out

    def sequencer_of(self, log: LogId) -> int | None:
        known = self.chains.get(log)
        if known is None:
            return None
        params = placement(known[0].tail)
        return params.sequencer.node if params is not None else None

    # --------------------------------------------------------------- inputs

    def deliver(self, env: Envelope, now_us: int) -> None:
        """A peer message (or one this node sent itself) for one of this node's actors."""
        m = env.message
        dst = env.dst
        if dst == LOG_SERVER:
            self.server.offer(env.src, m)
        elif dst == SEQUENCER:
            if isinstance(m, Stored):
                self.sequencers.on_stored(node_of(env.src), m, now_us)
                self._drain_sequencers()
            elif isinstance(m, ForwardAppend):
                self._sequence_forwarded(env.src, m, now_us)
            elif isinstance(m, TailQuery):
                self._answer_tail(env.src, m)
        elif dst == APPENDER:
            if isinstance(m, AppendDone | AppendFailed):
                self._forward_answered(m)
            elif isinstance(m, TailAnswer):
                self._out.tails.append(m)
        else:
            actor = self._actors.get(dst)
            if actor is not None:
                actor.on_message(node_of(env.src), m)

    def append(
        self, token: int, log: LogId, payloads: tuple[bytes, ...], deadline_us: int, now_us: int
    ) -> None:
        """A client's batch for ``log``; the outcome comes out of ``take`` (N2).

        The caller checked that the log exists (``chains``)."""
        chain, _ = self.chains[log]
        tail = chain.tail
        params = placement(tail)
        if params is None:
            self._out.failed.append((token, NotSequencer(f"log {log} has no sequencer")))
            return
        if params.sequencer.node == self.node_id:
            self._sequence(self.address(APPENDER), token, tail, log, payloads, deadline_us, now_us)
            return
        if len(self._forwarded) >= self.forwarded_max:
            self._out.failed.append((token, Backpressure("too many appends forwarded")))
            return
        self._forwarded[token] = _Forwarded(tail.base_lsn, len(payloads), deadline_us, tail.index)
        self.forwarded_total += 1
        message = ForwardAppend(token, log, tail.index, payloads, deadline_us - now_us)
        self._out.send.append(
            (params.sequencer.node, Envelope(self.address(APPENDER), SEQUENCER, message))
        )

    def query_tail(self, token: int, node: int, loglet: LogletId) -> None:
        """Ask ``node``'s sequencer for the global tail; the answer comes out in ``tails``."""
        message = TailQuery(token, loglet)
        self._out.send.append((node, Envelope(self.address(APPENDER), SEQUENCER, message)))

    def tick(self, now_us: int) -> None:
        self.sequencers.tick(now_us)
        self._drain_sequencers()
        for token in [t for t, f in self._forwarded.items() if f.deadline_us <= now_us]:
            del self._forwarded[token]
            self._out.failed.append((token, AppendTimeout("forwarded append not answered")))

    # -------------------------------------------------------------- outputs

    def poll_server(self, now_us: int) -> LogServerOutput:
        """The log-server's next batch (see ``LogServerLoop.poll``)."""
        return self.server.poll(now_us)

    def take(self) -> LogNodeOutput:
        out, self._out = self._out, LogNodeOutput()
        return out

    def route(self, dst_addr: int, message: msgspec.Struct) -> tuple[int, Envelope]:
        """A log-server reply to ``dst_addr``, as (node, envelope)."""
        env = Envelope(self.address(LOG_SERVER), actor_of(dst_addr), message)  # type: ignore[arg-type]
        return node_of(dst_addr), env

    @property
    def forwarded_inflight(self) -> int:
        return len(self._forwarded)

    # ------------------------------------------------------------ internals

    def _sequence(
        self,
        origin: int,
        token: int,
        segment: Segment,
        log: LogId,
        payloads: tuple[bytes, ...],
        deadline_us: int,
        now_us: int,
    ) -> None:
        self._next_seq_token += 1
        seq_token = self._next_seq_token
        self._sequenced[seq_token] = _Sequenced(
            origin, token, segment.base_lsn, len(payloads), segment.index
        )
        self.appends_sequenced += 1
        self.sequencers.append(segment.loglet(log), payloads, seq_token, deadline_us, now_us)
        self._drain_sequencers()

    def _sequence_forwarded(self, src: int, m: ForwardAppend, now_us: int) -> None:
        known = self.chains.get(m.log)
        segment = known[0].segment(m.segment_index) if known is not None else None
        if segment is None or not self.sequencers.hosts(segment.loglet(m.log)):
            error = NotSequencer(f"node {self.node_id} does not sequence that segment")
            reply = AppendFailed(m.token, type(error).__name__, str(error), True)
            self._out.send.append(
                (node_of(src), Envelope(self.address(SEQUENCER), APPENDER, reply))
            )
            return
        self._sequence(src, m.token, segment, m.log, m.payloads, now_us + m.budget_us, now_us)

    def _answer_tail(self, src: int, m: TailQuery) -> None:
        core = self.sequencers.core(m.loglet)
        if core is None:
            answer = TailAnswer(m.token, m.loglet, False, 0, False)
        else:
            answer = TailAnswer(m.token, m.loglet, True, core.global_tail, core.stopped)
        if node_of(src) == self.node_id:
            self._out.tails.append(answer)
            return
        self._out.send.append((node_of(src), Envelope(self.address(SEQUENCER), APPENDER, answer)))

    def _drain_sequencers(self) -> None:
        out = self.sequencers.take()
        me = self.address(SEQUENCER)
        for dst, message in out.messages:
            self._out.send.append((dst, Envelope(me, LOG_SERVER, message)))  # type: ignore[arg-type]
        local = self.address(APPENDER)
        for seq_token, _loglet, last in out.acked:
            entry = self._sequenced.pop(seq_token, None)
            if entry is None:
                continue
            self.records_sequenced += entry.count
            if entry.origin == local:
                first = to_lsn(entry.base_lsn, last - entry.count + 1)
                self._out.appended.append(
                    Appended(entry.token, first, to_lsn(entry.base_lsn, last), entry.segment_index)
                )
            else:
                done = AppendDone(entry.token, last)
                self._out.send.append((node_of(entry.origin), Envelope(me, APPENDER, done)))
        for seq_token, error in out.failed:
            entry = self._sequenced.pop(seq_token, None)
            if entry is None:
                continue
            if entry.origin == local:
                self._out.failed.append((entry.token, error))
            else:
                failed = AppendFailed(
                    entry.token, type(error).__name__, str(error), error.retryable
                )
                self._out.send.append((node_of(entry.origin), Envelope(me, APPENDER, failed)))

    def _forward_answered(self, m: AppendDone | AppendFailed) -> None:
        entry = self._forwarded.pop(m.token, None)
        if entry is None:
            return  # N2: answered already (timed out)
        if isinstance(m, AppendDone):
            first = to_lsn(entry.base_lsn, m.last_offset - entry.count + 1)
            self._out.appended.append(
                Appended(m.token, first, to_lsn(entry.base_lsn, m.last_offset), entry.segment_index)
            )
        else:
            self._out.failed.append((m.token, remote_error(m)))


__all__ = [
    "ACTOR_BITS",
    "APPENDER",
    "LOG_SERVER",
    "SEQUENCER",
    "Actor",
    "AppendDone",
    "AppendFailed",
    "Appended",
    "Envelope",
    "ForwardAppend",
    "LogNode",
    "LogNodeOutput",
    "RecordTooLarge",
    "TailAnswer",
    "TailQuery",
    "address",
    "actor_of",
    "envelope_decoder",
    "node_of",
]
