"""Framed TCP connections and the node-to-node transport.

Theory of operation
-------------------
``FramedConnection`` is an ``asyncio.Protocol`` speaking the wire format
(``docs/design/wire-format.md``) on one socket:

1. A dialer sends its ``Hello`` on connect and accepts nothing but the answer
   (``HELLO_ACK`` checked by ``decode_hello_reply``, or ``HELLO_REFUSED``).
   An acceptor accepts nothing but a ``HELLO`` first, asks its owner for the
   verdict and writes the ack or the refusal (then closes).  Either way the
   handshake must finish within ``handshake_timeout_ms``; its first frame is
   bounded by ``hello_frame_bytes_max``.
2. When the handshake completes, ``on_ready`` runs synchronously, before any
   frame that followed the handshake in the same read is delivered, so the
   owner can register the connection first.  ``handshake`` (a future)
   resolves then, or fails with the reason.
3. Any ``WireError`` closes the connection with the reason logged; nothing
   else is affected.  ``on_close`` runs exactly once, with the reason.
4. Writes are immediate ``transport.write`` calls of whole batches; the
   socket's write buffer is bounded by ``write_buffer_high_bytes``, above
   which ``writable`` is False until the kernel drains it (``on_writable``).

``PeerTransport`` keeps node-to-node links on top of it:

5. One connection per peer pair.  Both sides may dial; of two live
   connections the one dialed by the lower node id is preferred, and each
   side drops the other as soon as the preferred one is established there.
   The higher id dials only while it has no connection at all (so a pair
   still connects when only the higher id knows the other's address); the
   lower id dials while it has no connection of its own making.  An acceptor
   that already holds the preferred connection refuses a dial from the
   higher id with ``duplicate``.  A superseded connection is *retired*, not
   cut: it stops writing (half-close) and keeps delivering what arrives until
   the other side's EOF (or ``retire_timeout_ms``), so switching connections
   loses no frame already written (it may reorder frames across the two).
6. Generations only grow: a hello or ack from an older generation than one
   already seen from that node is refused (``stale_generation``); a newer one
   closes the connections of the older incarnation.
7. Reconnect with exponential backoff between ``reconnect_backoff_min_ms``
   and ``reconnect_backoff_max_ms``, jittered down by up to
   ``reconnect_jitter_ratio`` with an injected ``random.Random``.  The lower
   id's first dial to a newly set address is immediate (the higher id waits
   one minimum backoff, giving the preferred dial a head start); redials after
   a loss wait at least the (jittered) minimum, so a flapping peer cannot cause
   a busy loop.
8. ``send`` never blocks: it encodes the message into a frame and appends it
   to the peer's queue, bounded by ``send_queue_messages_max`` and
   ``send_queue_bytes_max``.  When full the *oldest* frames are dropped and
   counted: Raft tolerates loss, and newer messages supersede older ones.
   The queue survives reconnection, but not forever: a frame queued longer
   than ``send_queue_age_max_ms`` is dropped (and counted) when a flush
   reaches it, so a peer back from a long cut is sent what was said lately,
   not every heartbeat of the cut.  A flush, scheduled once per loop
   iteration, writes up to ``write_batch_bytes_max`` of queued frames in one
   ``transport.write`` while the connection is writable.
9. Every frame received from a peer must be ``PEER``, carry the tag of a
   service this transport serves (``catenary.wire.peer``) and decode as that
   service's message type; otherwise that connection is dropped with the
   reason (``UnknownPeerService`` names the tag and the services served).
   The service's ``on_message(peer_id, message)`` is called synchronously; an
   exception in it is logged and does not affect the connection.
10. Services share the link.  The transport is built for one service (Raft,
   tag 0, by default); ``add_service`` adds another (the loglet's traffic)
   with its own tag, decoder and handler, and returns the ``PeerChannel`` it
   sends through.  Every service's frames go through the same per-peer
   queue, bounds and connection.
11. Liveness (``catenary.wire.liveness``).  Every socket gets TCP keepalive
   and ``TCP_USER_TIMEOUT`` (``idle_timeout_ms``) as a kernel backstop.  On a
   connection that agreed protocol version 3 or later, each side records when
   it last heard anything; after ``ping_interval_ms`` of silence it sends a
   ``PING`` (answered by a ``PONG``), and after ``idle_timeout_ms`` of silence,
   or of a paused write buffer that does not shrink at all, it aborts the
   connection (a slow reader that drains, however slowly, is not stalled).  A peer
   link so lost is redialled with the backoff of rule 7, so a link that stalled
   during a network cut is replaced within about ``idle_timeout_ms`` plus one
   backoff after the cut heals, not when the kernel gives up.
12. The log tells links, not sockets.  A peer's *link* is down when its last
   connection closes and up again when one is established; each change is one
   INFO line (``peer link to N2 lost: <reason>``, ``peer link to N2 restored
   ... after 3.1 s down``), counted in ``PeerStats`` and reported to
   ``on_link(peer_id, up)``.  Lines are rate-limited per peer and direction to
   one per ``link_log_interval_ms``, the next line saying how many were left
   out; so are the "cannot reach" lines of redials.  Connection-level opens,
   switches and orderly closes are DEBUG; closes for an error stay WARNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random
from typing import Any, Generic, TypeVar, cast

import msgspec

from catenary.runtime.ratelimit import RepeatLimiter
from catenary.wire import (
    HELLO_FRAME_BYTES_MAX_DEFAULT,
    LIVENESS_PROTOCOL_VERSION_MIN,
    PEER_PROTOCOL_VERSION_MIN,
    PROTOCOL_VERSION_MIN,
    Frame,
    FrameDecoder,
    FrameKind,
    FrameTooLarge,
    HandshakeError,
    HandshakeRefused,
    Hello,
    HelloAck,
    HelloRefused,
    LivenessClock,
    MalformedPayload,
    PeerService,
    RefusalCode,
    Role,
    UnexpectedFrameKind,
    WireError,
    agreed_version,
    check_hello,
    check_liveness_bounds,
    decode_hello,
    decode_hello_reply,
    decode_peer_message,
    encode_hello,
    encode_hello_reply,
    encode_peer_message,
    encode_ping,
    encode_pong,
    peer_service_of,
    tune_socket,
)
from catenary.wire.address import parse_address as parse_address  # re-exported
from catenary.wire.frame import FRAME_BYTES_MAX_DEFAULT, check_frame_bytes_max

log = logging.getLogger(__name__)

M = TypeVar("M")
T = TypeVar("T")


PING_INTERVAL_MS_DEFAULT = 500
IDLE_TIMEOUT_MS_DEFAULT = 2000


class ConnectionConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds of one framed connection."""

    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
    hello_frame_bytes_max: int = HELLO_FRAME_BYTES_MAX_DEFAULT
    handshake_timeout_ms: int = 5000
    retire_timeout_ms: int = 2000  # a retired connection closes after this even without EOF
    write_buffer_high_bytes: int = 4 << 20
    ping_interval_ms: int = PING_INTERVAL_MS_DEFAULT  # ping after this long hearing nothing
    idle_timeout_ms: int = IDLE_TIMEOUT_MS_DEFAULT  # abort after this long hearing nothing

    def __post_init__(self) -> None:
        check_frame_bytes_max(self.frame_bytes_max)
        check_frame_bytes_max(self.hello_frame_bytes_max)
        _positive("handshake_timeout_ms", self.handshake_timeout_ms)
        _positive("retire_timeout_ms", self.retire_timeout_ms)
        _positive("write_buffer_high_bytes", self.write_buffer_high_bytes)
        check_liveness_bounds(self.ping_interval_ms, self.idle_timeout_ms, "ms")


class TransportConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Every bound of the peer transport (see the module docstring for each rule)."""

    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
    hello_frame_bytes_max: int = HELLO_FRAME_BYTES_MAX_DEFAULT
    handshake_timeout_ms: int = 5000
    retire_timeout_ms: int = 2000  # a superseded connection lingers at most this long
    # Rule 7: a dial sends one SYN (the kernel retransmits the first at 1 s), so a peer cut
    # off is tried at least every connect_timeout_ms + reconnect_backoff_max_ms.
    connect_timeout_ms: int = 300
    reconnect_backoff_min_ms: int = 50
    reconnect_backoff_max_ms: int = 250
    reconnect_jitter_ratio: float = 0.5  # each delay is shortened by up to this fraction
    send_queue_messages_max: int = 4096  # per peer; the oldest are dropped past it
    send_queue_bytes_max: int = 64 << 20  # per peer; the oldest are dropped past it
    # Rule 8: a frame queued this long is stale (four of Raft's default election
    # timeouts); it is dropped, not sent, once the link is back.
    send_queue_age_max_ms: int = 2000
    write_batch_bytes_max: int = 1 << 20  # per socket write (a larger single frame goes alone)
    write_buffer_high_bytes: int = 4 << 20  # socket buffer above which writing pauses
    # Liveness (rule 11): ping a peer heard from for this long; abort and redial past the idle
    # bound.  The default idle bound is four of Raft's default election timeouts (500 ms).
    ping_interval_ms: int = PING_INTERVAL_MS_DEFAULT
    idle_timeout_ms: int = IDLE_TIMEOUT_MS_DEFAULT
    # Rule 12: at most one link-lost (or restored, or unreachable) line per peer this often.
    link_log_interval_ms: int = 10_000

    def __post_init__(self) -> None:
        check_frame_bytes_max(self.frame_bytes_max)
        check_frame_bytes_max(self.hello_frame_bytes_max)
        if self.link_log_interval_ms < 0:
            raise ValueError(f"link_log_interval_ms must be >= 0, got {self.link_log_interval_ms}")
        for name in (
            "handshake_timeout_ms",
            "retire_timeout_ms",
            "connect_timeout_ms",
            "reconnect_backoff_min_ms",
            "reconnect_backoff_max_ms",
            "send_queue_messages_max",
            "send_queue_bytes_max",
            "send_queue_age_max_ms",
            "write_batch_bytes_max",
            "write_buffer_high_bytes",
        ):
            _positive(name, getattr(self, name))
        if self.reconnect_backoff_max_ms < self.reconnect_backoff_min_ms:
            raise ValueError("reconnect_backoff_max_ms must be >= reconnect_backoff_min_ms")
        if not 0.0 <= self.reconnect_jitter_ratio <= 1.0:
            raise ValueError("reconnect_jitter_ratio must be in [0, 1]")
        if self.send_queue_bytes_max < self.frame_bytes_max:
            raise ValueError("send_queue_bytes_max must hold at least one frame_bytes_max frame")
        check_liveness_bounds(self.ping_interval_ms, self.idle_timeout_ms, "ms")

    def connection(self) -> ConnectionConfig:
        return ConnectionConfig(
            frame_bytes_max=self.frame_bytes_max,
            hello_frame_bytes_max=self.hello_frame_bytes_max,
            handshake_timeout_ms=self.handshake_timeout_ms,
            retire_timeout_ms=self.retire_timeout_ms,
            write_buffer_high_bytes=self.write_buffer_high_bytes,
            ping_interval_ms=self.ping_interval_ms,
            idle_timeout_ms=self.idle_timeout_ms,
        )

    def backoff_ms(self, attempt: int, rng: Random) -> float:
        """Delay before redial number ``attempt`` (0 = first redial after a loss)."""
        base = min(
            float(self.reconnect_backoff_max_ms),
            self.reconnect_backoff_min_ms * 2.0 ** min(attempt, 62),
        )
        return base * (1.0 - self.reconnect_jitter_ratio * rng.random())


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


# ----------------------------------------------------------- one connection


class ConnectionClosed(ConnectionError):
    """The connection was closed (by its owner or the other side) before or at readiness."""


Answer = Callable[["FramedConnection", Hello], HelloAck | HelloRefused]


class FramedConnection(asyncio.Protocol):
    """One socket speaking frames, as dialer (``hello`` given) or acceptor (``answer`` given).

    Reusable by any face: the peer transport, the client, the client port.
    """

    def __init__(
        self,
        *,
        config: ConnectionConfig,
        on_frame: Callable[[FramedConnection, Frame], None],
        on_ready: Callable[[FramedConnection], None] | None = None,
        on_close: Callable[[FramedConnection, str], None] | None = None,
        on_writable: Callable[[FramedConnection], None] | None = None,
        hello: Hello | None = None,
        cluster_name: str = "",
        expect_node_id: int | None = None,
        answer: Answer | None = None,
        name: str = "",
    ) -> None:
        if (hello is None) == (answer is None):
            raise ValueError("give exactly one of hello (dialer) or answer (acceptor)")
        self.config = config
        self._on_frame = on_frame
        self._on_ready = on_ready
        self._on_close = on_close
        self._on_writable = on_writable
        self._hello = hello
        self._cluster_name = cluster_name
        self._expect_node_id = expect_node_id
        self._answer = answer
        self._decoder = FrameDecoder(
            config.frame_bytes_max,
            first_frame_bytes_max=min(config.hello_frame_bytes_max, config.frame_bytes_max),
        )
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        # The other side's identity: its Hello (we accepted) or its HelloAck (we dialed).
        self.peer_hello: Hello | None = None
        self.peer_ack: HelloAck | None = None
        self.name = name or ("dialer" if hello is not None else "acceptor")
        self.remote = "?"
        self.ready = False
        self.retiring = False
        self.closed = False
        self.close_reason = ""
        self.close_error: BaseException | None = None
        # Level of the line an orderly close (no error) logs: the peer transport
        # logs its links instead (rule 12).
        self.close_log_level = logging.INFO
        self.writable = True
        self.bytes_written = 0
        self.protocol_version = 0  # agreed in the handshake
        # Liveness (rule 11): started at readiness on connections of protocol >= 3.
        self.liveness: LivenessClock | None = None
        self._liveness_timer: asyncio.TimerHandle | None = None
        # While writing is paused: since when the socket's buffer has not shrunk, and its size.
        self._stall_since: float | None = None
        self._stall_bytes = 0
        self.pings_sent = 0

    @property
    def is_dialer(self) -> bool:
        return self._hello is not None

    @property
    def peer_node_id(self) -> int:
        if self.peer_hello is not None:
            return self.peer_hello.node_id
        return self.peer_ack.node_id if self.peer_ack is not None else 0

    @property
    def peer_generation(self) -> int:
        if self.peer_hello is not None:
            return self.peer_hello.generation
        return self.peer_ack.generation if self.peer_ack is not None else 0

    # ------------------------------------------------------ asyncio hooks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not derive from asyncio's.
        stream = self._transport = cast(asyncio.Transport, transport)
        peername = stream.get_extra_info("peername")
        if isinstance(peername, tuple) and len(peername) >= 2:
            self.remote = f"{peername[0]}:{peername[1]}"
        stream.set_write_buffer_limits(high=self.config.write_buffer_high_bytes)
        tune_socket(stream.get_extra_info("socket"), self.config.idle_timeout_ms)
        self._timer = self._loop.call_later(
            self.config.handshake_timeout_ms / 1000.0, self._handshake_timed_out
        )
        if self._hello is not None:
            stream.write(encode_hello(self._hello, self.config.hello_frame_bytes_max))

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.liveness is not None:
            self.liveness.heard(self._loop.time())
        try:
            frames = self._decoder.feed(data)
        except WireError as exc:
            self.close(f"bad frame: {type(exc).__name__}: {exc}", error=exc)
            return
        for frame in frames:
            if self._is_closed():  # a callback may have closed it
                return
            if self.ready:
                if frame.kind == FrameKind.PING:
                    self.write(encode_pong(frame.payload))
                elif frame.kind != FrameKind.PONG:
                    self._on_frame(self, frame)
            elif self._hello is not None:
                self._dialer_handshake(frame)
            else:
                self._acceptor_handshake(frame)

    def _is_closed(self) -> bool:
        return self.closed

    def eof_received(self) -> bool | None:
        if self.retiring:
            self.close("retired: both sides finished", level=logging.DEBUG)
        else:
            self.close("closed by the other side")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(f"connection lost: {exc}" if exc else "connection closed", error=exc)
        self._transport = None

    def pause_writing(self) -> None:
        self.writable = False
        self._stall_since = self._loop.time()
        self._stall_bytes = self._buffered_bytes()

    def resume_writing(self) -> None:
        self.writable = True
        self._stall_since = None
        if self._on_writable is not None and not self.closed:
            self._on_writable(self)

    # ---------------------------------------------------------- handshake

    def _dialer_handshake(self, frame: Frame) -> None:
        try:
            assert self._hello is not None
            peer = self._hello.role == Role.PEER
            self.peer_ack = decode_hello_reply(
                frame,
                cluster_name=self._cluster_name,
                expect_node_id=self._expect_node_id,
                version_min=PEER_PROTOCOL_VERSION_MIN if peer else PROTOCOL_VERSION_MIN,
            )
        except WireError as exc:
            self.close(f"handshake failed: {exc}", error=exc)
            return
        self.protocol_version = self.peer_ack.protocol_version
        self._become_ready()

    def _acceptor_handshake(self, frame: Frame) -> None:
        assert self._answer is not None
        try:
            hello = decode_hello(frame)
        except MalformedPayload as exc:
            self._refuse(HelloRefused(RefusalCode.MALFORMED, str(exc)), exc)
            return
        except WireError as exc:
            self.close(f"bad first frame: {exc}", error=exc)
            return
        self.peer_hello = hello
        verdict = self._answer(self, hello)
        if isinstance(verdict, HelloRefused):
            self._refuse(verdict, HandshakeRefused(verdict.code, verdict.reason))
            return
        self.protocol_version = verdict.protocol_version
        self.write(encode_hello_reply(verdict, self.config.hello_frame_bytes_max))
        self._become_ready()

    def _refuse(self, refusal: HelloRefused, exc: WireError) -> None:
        self.write(encode_hello_reply(refusal, self.config.hello_frame_bytes_max))
        level = logging.DEBUG if refusal.code == RefusalCode.DUPLICATE else logging.WARNING
        self.close(f"refused the hello ({refusal.code}): {refusal.reason}", error=exc, level=level)

    def _become_ready(self) -> None:
        self.ready = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.protocol_version >= LIVENESS_PROTOCOL_VERSION_MIN:
            now = self._loop.time()
            self.liveness = LivenessClock(
                self.config.ping_interval_ms / 1000.0, self.config.idle_timeout_ms / 1000.0, now
            )
            self._schedule_liveness(now + self.liveness.ping_interval_s)
        if self._on_ready is not None:
            self._on_ready(self)
        if not self.handshake.done():
            if self.closed:
                self.handshake.set_exception(HandshakeError(self.close_reason))
            else:
                self.handshake.set_result(None)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if not self.ready:
            self.close(
                f"no handshake within {self.config.handshake_timeout_ms} ms",
                error=HandshakeError("handshake timeout"),
            )

    # ----------------------------------------------------------- liveness

    def _schedule_liveness(self, at: float) -> None:
        self._liveness_timer = self._loop.call_at(at, self._check_liveness)

    def _check_liveness(self) -> None:
        """Rule 11: ping a silent side; abort one silent (or not draining) past the idle bound."""
        self._liveness_timer = None
        clock = self.liveness
        if self.closed or clock is None:
            return
        now = self._loop.time()
        poll = clock.poll(now)
        idle_ms = self.config.idle_timeout_ms
        if poll.dead:
            self.close(
                f"heard nothing for {poll.silent_s * 1000:.0f} ms (idle_timeout_ms={idle_ms})",
                error=TimeoutError("peer silent"),
                abort=True,
            )
            return
        stuck = self._stall_since
        if stuck is not None:
            buffered = self._buffered_bytes()
            if buffered < self._stall_bytes:  # draining, however slowly: not stalled
                stuck = self._stall_since = now
                self._stall_bytes = buffered
        if stuck is not None and now - stuck >= clock.idle_timeout_s:
            self.close(
                f"the other side read nothing for {(now - stuck) * 1000:.0f} ms "
                f"(idle_timeout_ms={idle_ms})",
                error=TimeoutError("peer not reading"),
                abort=True,
            )
            return
        if poll.ping and not self.retiring:
            self.write(encode_ping())
            self.pings_sent += 1
        next_s = poll.next_s
        if stuck is not None:
            next_s = min(next_s, stuck + clock.idle_timeout_s)
        self._schedule_liveness(max(next_s, now + 0.001))

    def _buffered_bytes(self) -> int:
        transport = self._transport
        return 0 if transport is None else transport.get_write_buffer_size()

    # ------------------------------------------------------------ sending

    def write(self, data: bytes) -> None:
        """Write bytes holding whole frames (a batch in one call is one socket write)."""
        if self._transport is None or self.closed or self.retiring:
            return
        try:
            self._transport.write(data)
        except RuntimeError as exc:
            self._lost_under_us(exc)
            return
        self.bytes_written += len(data)

    def write_many(self, frames: list[bytes]) -> None:
        """Write several encoded frames in one socket write (``writelines``: no join on uvloop)."""
        if self._transport is None or self.closed or self.retiring:
            return
        try:
            self._transport.writelines(frames)
        except RuntimeError as exc:
            self._lost_under_us(exc)
            return
        self.bytes_written += sum(len(f) for f in frames)

    def _lost_under_us(self, exc: RuntimeError) -> None:
        """The socket was closed without ``connection_lost`` (uvloop does that when a
        dial's ``create_connection`` is cancelled by its timeout just as it connected):
        close the connection so its link is redialled, instead of failing every write
        and every liveness check from now on."""
        self._transport = None
        self.close(f"socket closed under the connection: {exc}", error=exc)

    def retire(self, reason: str) -> None:
        """Finish without losing frames: stop writing (half-close), keep reading until EOF.

        For a connection superseded by a better one: frames the other side
        wrote before it learned of the switch are still delivered.  Closes at
        the other side's EOF or after ``retire_timeout_ms``, whichever first.
        """
        if self.closed or self.retiring:
            return
        if self._transport is None or not self._transport.can_write_eof():
            self.close(reason, level=logging.DEBUG)
            return
        self.retiring = True
        log.debug("retiring %s connection %s: %s", self.name, self.remote, reason)
        self._transport.write_eof()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(
            self.config.retire_timeout_ms / 1000.0,
            self.close,
            f"retired ({reason}); no EOF within {self.config.retire_timeout_ms} ms",
        )

    def close(
        self,
        reason: str,
        *,
        error: BaseException | None = None,
        level: int | None = None,
        abort: bool = False,
    ) -> None:
        """Close once, logging the reason (a warning when caused by an error).

        ``abort`` drops the socket at once, discarding unsent bytes: for a
        connection presumed stalled, whose buffer would never drain.
        """
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.close_error = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._liveness_timer is not None:
            self._liveness_timer.cancel()
            self._liveness_timer = None
        if level is None:
            level = logging.WARNING if error is not None else self.close_log_level
        log.log(level, "closing %s connection %s: %s", self.name, self.remote, reason)
        if not self.handshake.done():
            if isinstance(error, Exception):
                self.handshake.set_exception(error)
            else:
                self.handshake.set_exception(ConnectionClosed(reason))
            # Nobody may await a failed handshake (e.g. an acceptor): mark it seen.
            self.handshake.exception()
        if self._transport is not None:
            # close() flushes what was written (e.g. a refusal) before the FIN; a
            # peer that never reads must not pin the socket, so the flush is bounded.
            transport = self._transport
            if abort:
                transport.abort()
            else:
                transport.close()
            if not abort and transport.get_write_buffer_size() > 0:
                self._loop.call_later(self.config.retire_timeout_ms / 1000.0, transport.abort)
        if self._on_close is not None:
            self._on_close(self, reason)


# ------------------------------------------------------------- the peers


@dataclass
class PeerStats:
    """Counters of one peer link (monotonic except the queue gauges and connected)."""

    peer_id: int
    address: str
    connected: bool
    connection_dialer: int  # node id that dialed the active connection (0 = none)
    generation: int  # highest generation seen from the peer
    queued_messages: int
    queued_bytes: int
    sent_messages: int = 0
    sent_bytes: int = 0
    writes: int = 0  # socket writes (each carries a batch of frames)
    received_messages: int = 0
    dropped_queue_full: int = 0
    dropped_stale: int = 0  # queued longer than send_queue_age_max_ms (rule 8)
    connects: int = 0  # handshakes completed, either direction
    dial_failures: int = 0
    links_lost: int = 0  # the last connection closed (rule 12)
    links_restored: int = 0  # a connection again after a loss


@dataclass
class TransportStats:
    refused_hellos: int = 0  # hellos this node refused
    dropped_unknown_peer: int = 0  # send() to a peer with no address and no connection
    dropped_too_large: int = 0  # send() of a message above frame_bytes_max
    bad_connections: int = 0  # connections dropped for a wire error
    peers: list[PeerStats] = field(default_factory=list)


class _Peer:
    __slots__ = (
        "address",
        "connects",
        "conns",
        "dial_attempts",
        "dial_failures",
        "dial_immediately",
        "dial_task",
        "down_since",
        "dropped_queue_full",
        "dropped_stale",
        "ever_up",
        "flush_scheduled",
        "generation",
        "links_lost",
        "links_restored",
        "node_id",
        "queue",
        "queue_bytes",
        "queue_times",
        "received_messages",
        "sent_bytes",
        "sent_messages",
        "writes",
    )

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.address: tuple[str, int] | None = None
        self.conns: dict[int, FramedConnection] = {}  # dialer's node id -> established connection
        self.generation = 0
        self.queue: deque[bytes] = deque()
        self.queue_times: deque[float] = deque()  # when each frame was queued (monotonic)
        self.queue_bytes = 0
        self.dial_task: asyncio.Task[None] | None = None
        self.dial_attempts = 0
        self.dial_immediately = True
        self.flush_scheduled = False
        self.sent_messages = 0
        self.sent_bytes = 0
        self.writes = 0
        self.received_messages = 0
        self.dropped_queue_full = 0
        self.dropped_stale = 0
        self.connects = 0
        self.dial_failures = 0
        self.ever_up = False
        self.down_since = 0.0  # monotonic seconds the link went down
        self.links_lost = 0
        self.links_restored = 0


class PeerChannel(Generic[T]):
    """Sends one service's messages over a ``PeerTransport`` shared with others (rule 10)."""

    def __init__(self, transport: PeerTransport[Any], service: int) -> None:
        self._transport = transport
        self.service = service

    def send(self, peer_id: int, message: T) -> bool:
        """Queue ``message`` for ``peer_id``; never blocks.  False if it was dropped at once."""
        return self._transport.send_tagged(peer_id, self.service, message)


class PeerTransport(Generic[M]):
    """Links to every peer of one node; see the module docstring (rules 5-9)."""

    def __init__(
        self,
        node_id: int,
        generation: int,
        cluster_name: str,
        listen_host: str,
        listen_port: int,
        on_message: Callable[[int, M], None],
        config: TransportConfig | None = None,
        *,
        decoder: msgspec.msgpack.Decoder[M],
        encoder: msgspec.msgpack.Encoder | None = None,
        validate_peer: Callable[[Hello], HelloRefused | None] | None = None,
        rng: Random | None = None,
        service: int = PeerService.RAFT,
        on_link: Callable[[int, bool], None] | None = None,
    ) -> None:
        """``on_link(peer_id, up)`` hears of every link change (rule 12)."""
        if node_id <= 0 or generation <= 0:
            raise ValueError("a node needs node_id > 0 and generation > 0")
        self.node_id = node_id
        self.generation = generation
        self.cluster_name = cluster_name
        self.config = config or TransportConfig()
        self._conn_config = self.config.connection()
        self._listen = (listen_host, listen_port)
        self._service = service
        # Tag -> (decoder, on_message) of every service served (rule 10).
        self._services: dict[int, tuple[msgspec.msgpack.Decoder[Any], Callable[[int, Any], None]]]
        self._services = {service: (decoder, on_message)}
        self._encoder = encoder or msgspec.msgpack.Encoder()
        self._validate_peer = validate_peer
        self._rng = rng or Random(node_id * 1_000_003 + generation)
        self._hello = Hello(
            cluster_name=cluster_name, node_id=node_id, generation=generation, role=str(Role.PEER)
        )
        self._peers: dict[int, _Peer] = {}
        self._server: asyncio.Server | None = None
        # Every connection not yet closed, in creation order (pending, active, retiring).
        self._live: dict[FramedConnection, None] = {}
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats = TransportStats()
        self._on_link = on_link
        self._link_log = RepeatLimiter(self.config.link_log_interval_ms / 1000.0)
        self.port = 0

    # ---------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        host, port = self._listen
        self._server = await self._loop.create_server(self._accepted_protocol, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "N%d:%d listening for peers on %s:%d", self.node_id, self.generation, host, self.port
        )
        for peer in self._sorted_peers():
            self._maybe_dial(peer)

    @property
    def listen_address(self) -> str:
        return f"{self._listen[0]}:{self.port}"

    async def close(self) -> None:
        """Stop listening, stop dialing, close every connection."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = [p.dial_task for p in self._sorted_peers() if p.dial_task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for conn in list(self._live):
            conn.close("transport closing")
        if self._server is not None:
            await self._server.wait_closed()
        # Let the transports run their connection_lost callbacks.
        await asyncio.sleep(0)

    # ------------------------------------------------------------- peers

    def set_peer_address(self, peer_id: int, address: str | None) -> None:
        """Where to dial ``peer_id`` (``"host:port"``); None stops dialing it."""
        if peer_id == self.node_id or peer_id <= 0:
            raise ValueError(f"bad peer id {peer_id}")
        parsed = parse_address(address) if address is not None else None
        peer = self._peer(peer_id)
        if parsed == peer.address:
            return
        peer.address = parsed
        # The lower id dials at once; the higher id first gives the lower id's
        # (preferred) dial a head start, which avoids one connection's churn.
        peer.dial_immediately = self.node_id < peer_id
        peer.dial_attempts = 0
        if peer.dial_task is not None:
            peer.dial_task.cancel()
            peer.dial_task = None
        own = peer.conns.get(self.node_id)
        if own is not None:
            # Our connection went to the old address; the node moved.
            own.close(f"N{peer_id} address changed to {address}")
        self._maybe_dial(peer)

    def remove_peer(self, peer_id: int) -> None:
        """Forget ``peer_id``: stop dialing, close its connections, drop its queue."""
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        if peer.dial_task is not None:
            peer.dial_task.cancel()
        for dialer in sorted(peer.conns):
            peer.conns[dialer].close(f"N{peer_id} removed")
        peer.queue.clear()
        peer.queue_times.clear()
        peer.queue_bytes = 0

    def connected(self, peer_id: int) -> bool:
        peer = self._peers.get(peer_id)
        return peer is not None and self._active(peer) is not None

    def stats(self) -> TransportStats:
        peers = []
        for peer in self._sorted_peers():
            active = self._active(peer)
            peers.append(
                PeerStats(
                    peer_id=peer.node_id,
                    address=f"{peer.address[0]}:{peer.address[1]}" if peer.address else "",
                    connected=active is not None,
                    connection_dialer=self._dialer_of(peer, active),
                    generation=peer.generation,
                    queued_messages=len(peer.queue),
                    queued_bytes=peer.queue_bytes,
                    sent_messages=peer.sent_messages,
                    sent_bytes=peer.sent_bytes,
                    writes=peer.writes,
                    received_messages=peer.received_messages,
                    dropped_queue_full=peer.dropped_queue_full,
                    dropped_stale=peer.dropped_stale,
                    connects=peer.connects,
                    dial_failures=peer.dial_failures,
                    links_lost=peer.links_lost,
                    links_restored=peer.links_restored,
                )
            )
        s = self._stats
        return TransportStats(
            s.refused_hellos, s.dropped_unknown_peer, s.dropped_too_large, s.bad_connections, peers
        )

    @property
    def live_connections(self) -> int:
        """Connections not yet closed: pending handshakes, active and retiring ones."""
        return len(self._live)

    def connection_count(self, peer_id: int) -> int:
        """Established connections to ``peer_id`` (1 once the pair has settled)."""
        peer = self._peers.get(peer_id)
        return 0 if peer is None else len(peer.conns)

    # --------------------------------------------------------------- send

    def add_service(
        self,
        service: int,
        decoder: msgspec.msgpack.Decoder[T],
        on_message: Callable[[int, T], None],
    ) -> PeerChannel[T]:
        """Serve another service on the same links (rule 10); send through the channel."""
        if service in self._services:
            raise ValueError(f"peer service tag {service} is already served")
        if not 0 <= service <= 0xFF:
            raise ValueError(f"a peer service tag is one byte, got {service}")
        self._services[service] = (decoder, on_message)
        return PeerChannel(self, service)

    def send(self, peer_id: int, message: M) -> bool:
        """Queue ``message`` for ``peer_id``; never blocks.  False if it was dropped at once."""
        return self.send_tagged(peer_id, self._service, message)

    def send_tagged(self, peer_id: int, service: int, message: object) -> bool:
        """``send`` for the service with tag ``service`` (see ``PeerChannel``)."""
        peer = self._peers.get(peer_id)
        if peer is None or (peer.address is None and not peer.conns):
            self._stats.dropped_unknown_peer += 1
            return False
        try:
            frame = encode_peer_message(
                service, message, self._encoder, self.config.frame_bytes_max
            )
        except FrameTooLarge as exc:
            self._stats.dropped_too_large += 1
            log.error("dropping a message to N%d: %s", peer_id, exc)
            return False
        queue = peer.queue
        queue.append(frame)
        peer.queue_times.append(time.monotonic())
        peer.queue_bytes += len(frame)
        config = self.config
        while (
            len(queue) > config.send_queue_messages_max
            or peer.queue_bytes > config.send_queue_bytes_max
        ):
            peer.queue_bytes -= len(queue.popleft())
            peer.queue_times.popleft()
            peer.dropped_queue_full += 1
        self._schedule_flush(peer)
        return True

    def _schedule_flush(self, peer: _Peer) -> None:
        if peer.flush_scheduled or self._loop is None:
            return
        active = self._active(peer)
        if active is None or not active.writable:
            return
        peer.flush_scheduled = True
        self._loop.call_soon(self._flush, peer)

    def _flush(self, peer: _Peer) -> None:
        peer.flush_scheduled = False
        conn = self._active(peer)
        if conn is None or not conn.writable or conn.retiring or not peer.queue:
            return
        queue = peer.queue
        times = peer.queue_times
        stale_before = time.monotonic() - self.config.send_queue_age_max_ms / 1000.0
        while times and times[0] < stale_before:
            peer.queue_bytes -= len(queue.popleft())
            times.popleft()
            peer.dropped_stale += 1
        if not queue:
            return
        batch: list[bytes] = []
        size = 0
        batch_max = self.config.write_batch_bytes_max
        while queue and (not batch or size + len(queue[0]) <= batch_max):
            frame = queue.popleft()
            times.popleft()
            batch.append(frame)
            size += len(frame)
        peer.queue_bytes -= size
        conn.write_many(batch)
        peer.sent_messages += len(batch)
        peer.sent_bytes += size
        peer.writes += 1
        if queue:
            self._schedule_flush(peer)

    # ------------------------------------------------------ connections

    def _peer(self, peer_id: int) -> _Peer:
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = _Peer(peer_id)
        return peer

    def _sorted_peers(self) -> list[_Peer]:
        return [self._peers[k] for k in sorted(self._peers)]

    def _active(self, peer: _Peer) -> FramedConnection | None:
        preferred = min(self.node_id, peer.node_id)
        conn = peer.conns.get(preferred)
        if conn is None:
            conn = peer.conns.get(max(self.node_id, peer.node_id))
        return conn

    def _dialer_of(self, peer: _Peer, conn: FramedConnection | None) -> int:
        if conn is None:
            return 0
        return self.node_id if conn.is_dialer else peer.node_id

    def _wants_dial(self, peer: _Peer) -> bool:
        if self._closing or peer.address is None or self._peers.get(peer.node_id) is not peer:
            return False
        if self.node_id < peer.node_id:
            return self.node_id not in peer.conns  # our connection is the preferred one
        return not peer.conns

    def _maybe_dial(self, peer: _Peer) -> None:
        if self._loop is None or peer.dial_task is not None or not self._wants_dial(peer):
            return
        peer.dial_task = self._loop.create_task(
            self._dial_loop(peer), name=f"dial N{peer.node_id} from N{self.node_id}"
        )

    async def _dial_loop(self, peer: _Peer) -> None:
        try:
            while self._wants_dial(peer):
                if not peer.dial_immediately:
                    delay_ms = self.config.backoff_ms(peer.dial_attempts, self._rng)
                    await asyncio.sleep(delay_ms / 1000.0)
                    if not self._wants_dial(peer):
                        return
                peer.dial_immediately = False
                if await self._dial_once(peer):
                    peer.dial_attempts = 0
                    return
                peer.dial_attempts += 1
                peer.dial_failures += 1
        finally:
            if peer.dial_task is asyncio.current_task():
                peer.dial_task = None

    async def _dial_once(self, peer: _Peer) -> bool:
        assert self._loop is not None and peer.address is not None
        host, port = peer.address
        conn: FramedConnection | None = None

        def factory() -> FramedConnection:
            nonlocal conn
            conn = FramedConnection(
                config=self._conn_config,
                on_frame=self._frame_received,
                on_ready=self._dialed_ready,
                on_close=self._connection_closed,
                on_writable=self._writable,
                hello=self._hello,
                cluster_name=self.cluster_name,
                expect_node_id=peer.node_id,
                name=f"N{self.node_id}->N{peer.node_id}",
            )
            self._live[conn] = None
            return conn

        try:
            await asyncio.wait_for(
                self._loop.create_connection(factory, host, port),
                self.config.connect_timeout_ms / 1000.0,
            )
            assert conn is not None
            await conn.handshake
        except ConnectionClosed as exc:
            # Closed by our own rules (e.g. the preferred connection won): not a failure to log.
            log.debug("N%d dial to N%d closed: %s", self.node_id, peer.node_id, exc)
            return False
        except HandshakeRefused as exc:
            level = logging.DEBUG if exc.code == RefusalCode.DUPLICATE else logging.WARNING
            log.log(
                level,
                "N%d refused by N%d at %s:%d: %s",
                self.node_id,
                peer.node_id,
                host,
                port,
                exc,
            )
            return False
        except (OSError, TimeoutError, WireError, ConnectionError) as exc:
            if conn is not None and not conn.closed:
                # uvloop makes the protocol before it connects: a dial that never
                # connected must still leave ``_live``, or every failed dial of a
                # long cut is kept until the transport closes.
                conn.close(f"dial failed: {exc}", level=logging.DEBUG, abort=True)
            left_out = self._link_log.admit((peer.node_id, "unreachable"))
            log.log(
                logging.DEBUG if left_out is None else logging.INFO,
                "N%d cannot reach N%d at %s:%d: %s%s",
                self.node_id,
                peer.node_id,
                host,
                port,
                exc,
                _left_out(left_out, "failed dials"),
            )
            return False
        except asyncio.CancelledError:
            if conn is not None and not conn.ready:
                conn.close("dial cancelled")
            raise
        return not conn.closed

    def _accepted_protocol(self) -> FramedConnection:
        conn = FramedConnection(
            config=self._conn_config,
            on_frame=self._frame_received,
            on_ready=self._accepted_ready,
            on_close=self._connection_closed,
            on_writable=self._writable,
            answer=self._answer_hello,
            name=f"N{self.node_id}<-peer",
        )
        self._live[conn] = None
        return conn

    def _answer_hello(self, conn: FramedConnection, hello: Hello) -> HelloAck | HelloRefused:
        refusal = check_hello(
            hello,
            cluster_name=self.cluster_name,
            roles=frozenset({Role.PEER}),
            validate=self._check_peer,
        )
        if refusal is not None:
            self._stats.refused_hellos += 1
            return refusal
        conn.name = f"N{self.node_id}<-N{hello.node_id}:{hello.generation}"
        version = agreed_version(hello)
        return HelloAck(version, self.cluster_name, self.node_id, self.generation)

    def _check_peer(self, hello: Hello) -> HelloRefused | None:
        if self._closing:
            return HelloRefused(RefusalCode.SHUTTING_DOWN, f"N{self.node_id} is shutting down")
        if hello.node_id == self.node_id:
            return HelloRefused(
                RefusalCode.IDENTITY, f"N{hello.node_id} is this node's own id (dialed itself?)"
            )
        peer = self._peers.get(hello.node_id)
        if peer is not None and hello.generation < peer.generation:
            return HelloRefused(
                RefusalCode.STALE_GENERATION,
                f"N{hello.node_id}:{hello.generation} is older than "
                f"N{hello.node_id}:{peer.generation} already seen",
            )
        if (
            peer is not None
            and self.node_id < hello.node_id
            and self.node_id in peer.conns
            and peer.conns[self.node_id].peer_generation == hello.generation
        ):
            return HelloRefused(
                RefusalCode.DUPLICATE,
                f"N{self.node_id} already holds the connection it dialed to N{hello.node_id}",
            )
        if self._validate_peer is not None:
            return self._validate_peer(hello)
        return None

    def _accepted_ready(self, conn: FramedConnection) -> None:
        hello = conn.peer_hello
        assert hello is not None
        self._register(conn, hello.node_id, hello.generation, dialer=hello.node_id)

    def _dialed_ready(self, conn: FramedConnection) -> None:
        ack = conn.peer_ack
        assert ack is not None
        peer = self._peers.get(ack.node_id)
        if peer is None or self._closing:
            conn.close(f"N{ack.node_id} is no longer a peer")
            return
        if ack.generation < peer.generation:
            conn.close(
                f"reached N{ack.node_id}:{ack.generation}, older than generation "
                f"{peer.generation} already seen",
                error=HandshakeError("stale generation"),
            )
            return
        self._register(conn, ack.node_id, ack.generation, dialer=self.node_id)

    def _register(self, conn: FramedConnection, peer_id: int, generation: int, dialer: int) -> None:
        peer = self._peer(peer_id)
        conn.close_log_level = logging.DEBUG
        if generation > peer.generation:
            if peer.generation:
                log.info(
                    "N%d: N%d restarted (generation %d -> %d)",
                    self.node_id,
                    peer_id,
                    peer.generation,
                    generation,
                )
            peer.generation = generation
            for d in sorted(peer.conns):
                stale = peer.conns[d]
                if stale.peer_generation < generation:
                    stale.close(f"N{peer_id} restarted as generation {generation}")
        was_down = not peer.conns  # (before a replaced connection makes way for this one)
        old = peer.conns.get(dialer)
        if old is not None and old is not conn:
            del peer.conns[dialer]
            old.retire("replaced by a newer connection from the same dialer")
        preferred = min(self.node_id, peer_id)
        if dialer != preferred and preferred in peer.conns:
            conn.retire(f"keeping the connection dialed by N{preferred}")
            return
        peer.conns[dialer] = conn
        peer.connects += 1
        log.debug(
            "N%d connected to N%d:%d (dialed by N%d)", self.node_id, peer_id, generation, dialer
        )
        if was_down:
            self._link_up(peer, generation, dialer)
        if dialer == preferred:
            other = peer.conns.pop(max(self.node_id, peer_id), None)
            if other is not None:
                other.retire(f"keeping the connection dialed by N{preferred}")
        if peer.dial_task is not None and not self._wants_dial(peer):
            peer.dial_task.cancel()
            peer.dial_task = None
        self._schedule_flush(peer)

    def _connection_closed(self, conn: FramedConnection, reason: str) -> None:
        self._live.pop(conn, None)
        if isinstance(conn.close_error, WireError) and not isinstance(
            conn.close_error, HandshakeRefused
        ):
            self._stats.bad_connections += 1
        if conn.peer_hello is None and conn.peer_ack is None:
            return
        peer = self._peers.get(conn.peer_node_id)
        if peer is None:
            return
        had = bool(peer.conns)
        for dialer in sorted(peer.conns):
            if peer.conns[dialer] is conn:
                del peer.conns[dialer]
        if self._closing:
            return
        if had and not peer.conns:
            self._link_down(peer, reason)
        self._maybe_dial(peer)
        self._schedule_flush(peer)

    def _link_up(self, peer: _Peer, generation: int, dialer: int) -> None:
        """Rule 12: the peer has a connection again (or for the first time)."""
        restored = peer.ever_up
        peer.ever_up = True
        self._link_log.forget((peer.node_id, "unreachable"))
        if restored:
            peer.links_restored += 1
        if self._on_link is not None:
            self._on_link(peer.node_id, True)
        # The first connection is logged once; restores are rate-limited.
        left_out = self._link_log.admit((peer.node_id, "up")) if restored else 0
        if left_out is None:
            return
        if restored:
            down_s = time.monotonic() - peer.down_since
            what = f"restored (dialed by N{dialer}) after {down_s:.1f} s down"
        else:
            what = f"up (dialed by N{dialer})"
        log.info(
            "N%d: peer link to N%d:%d %s%s",
            self.node_id,
            peer.node_id,
            generation,
            what,
            _left_out(left_out, "changes"),
        )

    def _link_down(self, peer: _Peer, reason: str) -> None:
        """Rule 12: the peer's last connection closed."""
        peer.links_lost += 1
        peer.down_since = time.monotonic()
        if self._on_link is not None:
            self._on_link(peer.node_id, False)
        left_out = self._link_log.admit((peer.node_id, "down"))
        if left_out is None:
            return
        log.info(
            "N%d: peer link to N%d lost: %s%s",
            self.node_id,
            peer.node_id,
            reason,
            _left_out(left_out, "losses"),
        )

    def _writable(self, conn: FramedConnection) -> None:
        peer = self._peers.get(conn.peer_node_id)
        if peer is not None:
            self._schedule_flush(peer)

    def _frame_received(self, conn: FramedConnection, frame: Frame) -> None:
        peer_id = conn.peer_node_id
        if frame.kind != FrameKind.PEER:
            unexpected = UnexpectedFrameKind(frame.kind, "PEER")
            conn.close(str(unexpected), error=unexpected)
            return
        try:
            decoder, on_message = self._services[peer_service_of(frame, self._services)]
            message = decode_peer_message(frame, decoder)
        except WireError as exc:  # MalformedPayload, UnknownPeerService
            conn.close(str(exc), error=exc)
            return
        peer = self._peers.get(peer_id)
        if peer is not None:
            peer.received_messages += 1
        try:
            on_message(peer_id, message)
        except Exception:
            log.exception("on_message failed for a message from N%d", peer_id)


def _left_out(count: int | None, what: str) -> str:
    return f" ({count} more {what} since the last such line)" if count else ""
