"""One client connection to one node, multiplexing many requests.

Theory of operation
-------------------
1. A connection is opened by dialing the node's client address and exchanging
   the wire handshake (``Hello`` with role "client", answered by ``HelloAck``
   or ``HelloRefused``).  Until the handshake completes nothing is sent.
2. Every request carries a connection-local id (a counter starting at 1); the
   reply with that id completes the request's future.  Replies may arrive in
   any order.  A watch registers a listener under its id that receives every
   ``WatchReply`` until it is cancelled or the connection closes.
3. Requests are queued in memory and written in one ``transport.write`` per
   event-loop iteration, so many concurrent callers share one system call.
   The number of requests awaiting a reply is bounded (``pending_max``); past
   it ``send`` refuses with ``NotSentError`` (the request surely did not leave).
4. ``NotSentError`` means the request surely never reached the node (closed
   before its frame was handed to the socket, connect or handshake failed);
   ``ConnectionLostError`` means it was handed to the socket and its fate is
   unknown.  The client's retry
   policy depends on exactly this distinction, so nothing else is raised for
   a request's failure.
5. A malformed frame from the node closes the connection with a logged reason;
   every pending request then fails with ``ConnectionLostError``.
6. Liveness (``catenary.wire.liveness``).  The socket gets TCP keepalive and
   ``TCP_USER_TIMEOUT`` (``idle_timeout_s``).  The connection records when it
   last heard the node (``last_heard``) and since when the node has owed it
   an answer (a request or a ping unanswered: ``owed_for``).  With a node of
   protocol 3 or later it pings after ``ping_interval_s`` of silence, answers
   the node's pings, and aborts after ``idle_timeout_s`` of silence: pending
   requests fail with ``ConnectionLostError`` and the client redials.
7. ``retire()`` takes a connection out of use without failing what is in
   flight on it: it closes once its last pending request and watch are gone
   (the client retires a connection it suspects has stalled, and dials anew).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import cast

import msgspec

from catenary.api.messages import Reply, Request, reply_decoder, request_encoder
from catenary.client.errors import (
    BadRequestError,
    CatenaryError,
    ConnectionRefusedByNodeError,
    NotCatenaryNodeError,
    TooLargeError,
    not_utf8,
)
from catenary.wire import (
    HELLO_FRAME_BYTES_MAX_DEFAULT,
    LIVENESS_PROTOCOL_VERSION_MIN,
    FrameDecoder,
    FrameKind,
    FrameTooLarge,
    HelloAck,
    HelloRefused,
    LivenessClock,
    RefusalCode,
    Role,
    WireError,
    check_liveness_bounds,
    decode_handshake,
    encode_hello,
    encode_message,
    encode_ping,
    encode_pong,
    make_hello,
    tune_socket,
)
from catenary.wire.address import AddressError
from catenary.wire.address import parse_address as parse_wire_address

RETRYABLE_REFUSALS = frozenset({str(RefusalCode.BUSY), str(RefusalCode.SHUTTING_DOWN)})

log = logging.getLogger(__name__)

FRAME_BYTES_MAX_DEFAULT = 16 * 1024 * 1024
PENDING_MAX_DEFAULT = 65536
# Requests made in one event-loop iteration share one socket write, at most this
# many: a larger burst is cut so the node starts on the first part while the rest
# is being made (client and node then work at the same time).
WRITE_BATCH_MAX_DEFAULT = 32
PING_INTERVAL_S_DEFAULT = 0.5
IDLE_TIMEOUT_S_DEFAULT = 2.0


class NotSentError(Exception):
    """The request surely did not reach the node; any request may be retried."""


class ConnectionLostError(Exception):
    """The connection closed after the request was handed to it; the outcome is unknown."""


WatchListener = Callable[[Reply | None], None]
"""Receives each reply under a watch's id, then ``None`` once the connection closes."""


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port) by the one parser
    (``wire.address``); raises ``BadRequestError`` (a ``ValueError``)."""
    try:
        address.encode()
    except UnicodeEncodeError as exc:
        raise not_utf8("address", address, exc) from None
    try:
        return parse_wire_address(address)
    except AddressError as exc:
        raise BadRequestError(str(exc)) from None


def _unencodable_text(request: Request, exc: UnicodeEncodeError) -> BadRequestError:
    """Name the text field of ``request`` that has no UTF-8 form."""
    kind = type(request).__name__.lower()
    for name in request.__struct_fields__:
        value = getattr(request, name)
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError as field_exc:
                error = not_utf8(name, value, field_exc)
                return BadRequestError(f"{kind}: {error}")
    return BadRequestError(f"{kind} not sent: text that is not valid UTF-8 ({exc})")


class NodeConnection(asyncio.Protocol):
    """A handshaken, multiplexed connection to one node's client port."""

    def __init__(
        self,
        address: str,
        *,
        cluster_name: str,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        pending_max: int = PENDING_MAX_DEFAULT,
        write_batch_max: int = WRITE_BATCH_MAX_DEFAULT,
        ping_interval_s: float = PING_INTERVAL_S_DEFAULT,
        idle_timeout_s: float = IDLE_TIMEOUT_S_DEFAULT,
    ) -> None:
        check_liveness_bounds(ping_interval_s, idle_timeout_s, "s")
        self.address = address
        self._cluster_name = cluster_name
        self._decoder = FrameDecoder(
            frame_bytes_max,
            first_frame_bytes_max=min(frame_bytes_max, HELLO_FRAME_BYTES_MAX_DEFAULT),
        )
        self._frame_bytes_max = frame_bytes_max
        self._pending_max = pending_max
        self._write_batch_max = write_batch_max
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._handshake: asyncio.Future[None] = self._loop.create_future()
        self._first_bytes = b""  # what the node sent before the handshake completed (bounded)
        # Mark a failed handshake as seen even when its opener already gave up.
        self._handshake.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._listeners: dict[int, WatchListener] = {}
        self._next_id = 1
        self._out: list[bytes] = []
        self._unwritten: set[int] = set()  # ids whose frames are still in _out
        self._flush_scheduled = False
        self.closed = False
        self.close_reason = ""
        self.peer_cluster_name = ""
        self.last_request_id = 0  # the id of the latest ``call``
        self.protocol_version = 0  # agreed in the handshake
        self._ping_interval_s = ping_interval_s
        self._idle_timeout_s = idle_timeout_s
        self.last_heard = self._loop.time()  # rule 6
        self._owed_since: float | None = None  # a request or ping unanswered since then
        self._liveness: LivenessClock | None = None
        self._liveness_timer: asyncio.TimerHandle | None = None
        self.retiring = False

    # ------------------------------------------------------------ opening

    @classmethod
    async def open(
        cls,
        address: str,
        *,
        cluster_name: str = "",
        connect_timeout_s: float = 1.0,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        pending_max: int = PENDING_MAX_DEFAULT,
        write_batch_max: int = WRITE_BATCH_MAX_DEFAULT,
        ping_interval_s: float = PING_INTERVAL_S_DEFAULT,
        idle_timeout_s: float = IDLE_TIMEOUT_S_DEFAULT,
    ) -> NodeConnection:
        """Dial and handshake within ``connect_timeout_s``; raises ``NotSentError`` (or a
        refusal) on failure."""
        try:
            host, port = parse_address(address)
        except ValueError as exc:
            raise NotSentError(str(exc)) from exc
        loop = asyncio.get_running_loop()
        conn = cls(
            address,
            cluster_name=cluster_name,
            frame_bytes_max=frame_bytes_max,
            pending_max=pending_max,
            write_batch_max=write_batch_max,
            ping_interval_s=ping_interval_s,
            idle_timeout_s=idle_timeout_s,
        )
        try:
            async with asyncio.timeout(connect_timeout_s):
                await loop.create_connection(lambda: conn, host, port)
                await conn._handshake
        except TimeoutError as exc:
            conn.close("connect timed out", abort=True)
            raise NotSentError(f"{address}: connect timed out after {connect_timeout_s}s") from exc
        except OSError as exc:
            conn.close(str(exc))
            raise NotSentError(f"{address}: {exc.strerror or exc}") from exc
        except (NotSentError, CatenaryError):
            conn.close("handshake failed")
            raise
        except asyncio.CancelledError:
            conn.close("dial cancelled", abort=True)  # the client closed while dialing
            raise
        return conn

    # ------------------------------------------------------- asyncio hooks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport; they implement it.
        self._transport = cast(asyncio.Transport, transport)
        tune_socket(
            self._transport.get_extra_info("socket"), max(1, round(self._idle_timeout_s * 1000))
        )
        self._transport.write(encode_hello(make_hello(self._cluster_name, 0, 0, Role.CLIENT)))

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        self.last_heard = now
        self._owed_since = now if self._pending else None
        if self._liveness is not None:
            self._liveness.heard(now)
        if not self._handshake.done() and len(self._first_bytes) < 64:
            self._first_bytes += data[: 64 - len(self._first_bytes)]
        try:
            frames = self._decoder.feed(data)
        except WireError as exc:
            if not self._handshake.done():
                self._not_catenary(f"bad frame: {exc}")
                return
            log.warning("closing connection to %s: bad frame from node: %s", self.address, exc)
            self.close(f"bad frame from node: {exc}")
            return
        for frame in frames:
            if self.closed:
                return
            if not self._handshake.done():
                self._on_handshake(frame.kind, frame.payload)
                continue
            if frame.kind == FrameKind.PING:
                if self._transport is not None and not self._transport.is_closing():
                    self._transport.write(encode_pong(frame.payload))
                continue
            if frame.kind == FrameKind.PONG:
                continue
            if frame.kind != FrameKind.REPLY:
                self.close(f"unexpected frame kind {frame.kind} from node")
                return
            try:
                reply = reply_decoder.decode(frame.payload)
            except msgspec.DecodeError as exc:
                log.warning("closing connection to %s: undecodable reply: %s", self.address, exc)
                self.close(f"undecodable reply: {exc}")
                return
            self._dispatch(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._liveness_timer is not None:
            self._liveness_timer.cancel()
            self._liveness_timer = None
        self._fail_all(f"connection lost: {exc}" if exc else "connection closed by node")

    # ----------------------------------------------------------- handshake

    def _on_handshake(self, kind: int, payload: bytes) -> None:
        try:
            message = decode_handshake(kind, payload)
        except WireError as exc:
            self._not_catenary(f"bad handshake: {exc}")
            return
        if isinstance(message, HelloAck):
            # A client that does not know the cluster name sends "" and learns it here.
            if self._cluster_name and message.cluster_name != self._cluster_name:
                self._handshake.set_exception(
                    ConnectionRefusedByNodeError(
                        f"{self.address} belongs to cluster {message.cluster_name!r}, "
                        f"not {self._cluster_name!r}"
                    )
                )
                self.close("another cluster")
                return
            self.peer_cluster_name = message.cluster_name
            self.protocol_version = message.protocol_version
            if message.protocol_version >= LIVENESS_PROTOCOL_VERSION_MIN:
                now = self._loop.time()
                self._liveness = LivenessClock(self._ping_interval_s, self._idle_timeout_s, now)
                self._liveness_timer = self._loop.call_at(
                    now + self._ping_interval_s, self._check_liveness
                )
            self._handshake.set_result(None)
        elif isinstance(message, HelloRefused) and message.code in RETRYABLE_REFUSALS:
            # Full or shutting down: nothing was sent, another node (or later) may serve.
            self._handshake.set_exception(
                NotSentError(f"{self.address} is unavailable: {message.reason}")
            )
            self.close(f"refused: {message.reason}")
        elif isinstance(message, HelloRefused):
            hint = ""
            if message.code == "cluster" and not self._cluster_name:
                hint = " (give the cluster name: cluster_name=..., --cluster-name)"
            self._handshake.set_exception(
                ConnectionRefusedByNodeError(
                    f"{self.address} refused the connection ({message.code}): {message.reason}{hint}"
                )
            )
            self.close(f"refused: {message.reason}")
        else:
            self._not_catenary("unexpected handshake frame")

    def _not_catenary(self, reason: str) -> None:
        """The node's first bytes are not a catenary handshake: say so once, no retry here."""
        log.debug("closing connection to %s: not a catenary node: %s", self.address, reason)
        self._handshake.set_exception(NotCatenaryNodeError(self.address, self._first_bytes))
        self.close(f"not a catenary node: {reason}")

    # ------------------------------------------------------------ liveness

    def _check_liveness(self) -> None:
        """Rule 6: ping a silent node; abort the connection once silent past the bound."""
        self._liveness_timer = None
        clock = self._liveness
        if self.closed or clock is None or self._transport is None:
            return
        now = self._loop.time()
        poll = clock.poll(now)
        if poll.dead:
            reason = (
                f"heard nothing from the node for {poll.silent_s:.3f}s "
                f"(idle_timeout_s={self._idle_timeout_s})"
            )
            log.warning("closing connection to %s: %s", self.address, reason)
            self.close(reason, abort=True)
            return
        if poll.ping:
            self._transport.write(encode_ping())
            self._owe(now)
        self._liveness_timer = self._loop.call_at(
            max(poll.next_s, now + 0.001), self._check_liveness
        )

    def _owe(self, now: float) -> None:
        if self._owed_since is None:
            self._owed_since = now

    def owed_for(self, now: float) -> float:
        """How long the node has owed this connection an answer and said nothing (0: owes none)."""
        return 0.0 if self._owed_since is None else max(0.0, now - self._owed_since)

    def retire(self, reason: str) -> None:
        """Rule 7: no new requests; close once nothing is pending or watched."""
        if self.closed:
            return
        self.retiring = True
        self.close_reason = reason
        self._close_if_retired()

    def _close_if_retired(self) -> None:
        if self.retiring and not self._pending and not self._listeners and not self.closed:
            self.close(self.close_reason or "retired", abort=True)

    # ------------------------------------------------------------- sending

    def _take_id(self) -> int:
        request_id = self._next_id
        self._next_id += 1
        return request_id

    def _encode(self, request: Request) -> bytes:
        try:
            return encode_message(
                FrameKind.REQUEST, request, request_encoder, self._frame_bytes_max
            )
        except FrameTooLarge as exc:
            raise TooLargeError(f"request not sent: {exc}") from None
        except UnicodeEncodeError as exc:
            raise _unencodable_text(request, exc) from None
        except (msgspec.EncodeError, TypeError, OverflowError) as exc:
            kind = type(request).__name__.lower()
            raise BadRequestError(f"{kind} not sent: cannot encode it: {exc}") from None

    def _enqueue(self, frame: bytes, request_id: int = 0) -> None:
        self._out.append(frame)
        if request_id:
            self._unwritten.add(request_id)
        if len(self._out) >= self._write_batch_max:
            # A full batch leaves now: the node starts on it while the rest of
            # this iteration's requests are still being made.
            self._flush()
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is None or self.closed or not self._out:
            return
        out, self._out = self._out, []
        self._unwritten.clear()
        self._transport.write(b"".join(out))

    def _check_open(self) -> None:
        if self.closed or self.retiring or self._transport is None or self._transport.is_closing():
            raise NotSentError(f"{self.address}: connection closed ({self.close_reason})")
        if len(self._pending) + len(self._listeners) >= self._pending_max:
            raise NotSentError(f"{self.address}: {self._pending_max} requests already pending")

    def call(self, build: Callable[[int], Request]) -> asyncio.Future[Reply]:
        """Send ``build(id)``; the future gets the reply or ``ConnectionLostError``."""
        self._check_open()
        request_id = self._take_id()
        frame = self._encode(build(request_id))
        future: asyncio.Future[Reply] = self._loop.create_future()
        self._pending[request_id] = future
        if self._owed_since is None:
            self._owed_since = self._loop.time()
        if len(self._pending) == 1 and not self._out and self._transport is not None:
            # The only request in flight: nothing to coalesce it with, write it now
            # instead of one loop iteration later.
            self._transport.write(frame)
        else:
            self._enqueue(frame, request_id)
        self.last_request_id = request_id
        return future

    def forget(self, request_id: int) -> None:
        """The caller stopped waiting for ``request_id``: a late reply is dropped."""
        self._pending.pop(request_id, None)
        if not self._pending:
            self._owed_since = None
        self._close_if_retired()

    def watch(self, build: Callable[[int], Request], listener: WatchListener) -> int:
        """Send a watch request; every reply under its id goes to ``listener``."""
        self._check_open()
        request_id = self._take_id()
        frame = self._encode(build(request_id))
        self._listeners[request_id] = listener
        self._enqueue(frame)
        return request_id

    def unwatch(self, request_id: int, cancel: Callable[[int], Request]) -> None:
        """Stop delivering a watch and tell the node (best effort)."""
        if self._listeners.pop(request_id, None) is None:
            return
        if self.retiring:
            self._close_if_retired()
            return
        if not self.closed and self._transport is not None and not self._transport.is_closing():
            self._enqueue(self._encode(cancel(request_id)))

    # ----------------------------------------------------------- receiving

    def _dispatch(self, reply: Reply) -> None:
        listener = self._listeners.get(reply.id)
        if listener is not None:
            listener(reply)
            return
        future = self._pending.pop(reply.id, None)
        if future is not None and not future.done():
            future.set_result(reply)
        # A reply nobody waits for (its caller gave up) is dropped.

    # ------------------------------------------------------------- closing

    def close(self, reason: str = "closed by client", *, abort: bool = False) -> None:
        """Close; ``abort`` drops the socket at once (a stalled one would never flush)."""
        if not self.closed:
            self.close_reason = reason
        if self._liveness_timer is not None:
            self._liveness_timer.cancel()
            self._liveness_timer = None
        if self._transport is not None:
            if abort:
                self._transport.abort()
            else:
                self._transport.close()
        self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        if self.closed and not self._pending and not self._listeners:
            return
        self.closed = True
        if not self.close_reason:
            self.close_reason = reason
        if not self._handshake.done():
            self._handshake.set_exception(NotSentError(f"{self.address}: {reason}"))
        pending, self._pending = self._pending, {}
        unwritten, self._unwritten = self._unwritten, set()
        self._out.clear()
        for request_id, future in pending.items():
            if future.done():
                continue
            if request_id in unwritten:
                # Closed before its frame reached the socket: surely not sent.
                future.set_exception(NotSentError(f"{self.address}: {reason} (before sending)"))
            else:
                future.set_exception(ConnectionLostError(f"{self.address}: {reason}"))
        listeners, self._listeners = self._listeners, {}
        for listener in listeners.values():
            with contextlib.suppress(Exception):
                listener(None)
