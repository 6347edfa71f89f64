"""The client-facing port: handshake, request frames in, reply frames out.

Theory of operation
-------------------
1. Each connection starts with the wire handshake (role "client").  A client
   that names no cluster (``""``) is accepted and learns the name from the
   ack; one that names another cluster is refused with the reason.  A
   connection that has not said hello within ``handshake_timeout_ms`` is
   closed.
2. After the handshake every frame must be a REQUEST carrying one
   ``catenary.api.messages.Request``.  Anything else (bad frame, unknown kind,
   oversized length, undecodable payload) drops *that* connection with a
   logged reason; the node keeps serving every other connection.
3. Requests are served concurrently (replies may leave out of order, matched
   by id).  At most ``inflight_max`` requests per connection are in progress;
   past it a request is answered ``OVERLOADED`` at once (it surely did not
   happen, so the client may retry it).  Open connections are bounded by
   ``connections_max``; past it a new connection is refused at the handshake.
4. Replies are queued and written in one ``writelines`` per event-loop
   iteration (a batch's replies, rule 7, at once when the batch completes).
   While the socket's write buffer is above its high-water mark the
   connection stops reading, so a slow reader cannot make the node buffer
   without bound.
5. A watch runs as its own task, emitting ``WatchReply`` frames under the
   watch's id until ``CancelWatch`` (answered ``OkReply`` under the watch's id)
   or the connection closes.  Watches per connection are bounded.
6. The handler never crashes the connection: an unexpected exception in it is
   logged and answered ``INTERNAL``.
7. Batches, without a task.  Requests are served in families, each behind a
   typed protocol the composition root hands to the port (``MetadataBatches``
   for the metadata service today; a log family -- appends -- slots in beside
   it with its own protocol and keyword).  The linearizable gets of one read
   from the socket go to the family's ``begin_gets(gets)`` together, and its
   puts to ``begin_puts(puts)``: the family refuses the bad ones with their
   replies and begins the rest as one operation (one ReadIndex confirmation
   for the gets; one proposal for the puts), returned as a ``Begun``, whose
   answers leave in request order from one done callback, counted in the
   metrics with one update per outcome.  Without a family, or when it returns
   ``None``, the port serves them one by one with the handler's ``handle``.  Requests of the same read are concurrent (a client
   that needs one to follow another waits for the first's reply before it
   sends the second), so serving them in batches changes no guarantee.  Each
   request of a batch counts toward ``inflight_max``, and a batch is
   cancelled when its connection closes.
8. Liveness (``catenary.wire.liveness``).  Every accepted socket gets TCP
   keepalive and ``TCP_USER_TIMEOUT`` (``idle_timeout_ms``).  A ``PING`` from
   the client is answered ``PONG`` at once.  On a connection that agreed
   protocol 3 or later the port pings a client it has heard nothing from for
   ``ping_interval_ms`` and aborts the connection after ``idle_timeout_ms`` of
   silence, so a vanished client's watches and buffers are freed.
9. A connection slot is for requests.  A handshaken connection with nothing in
   progress (no request being served, no watch) that has sent no request for
   ``request_idle_ms`` (counted from the handshake, then from its last
   request) is closed, even if it answers every ping, so idle connections
   cannot hold every slot.  A full node (``connections_max``) refuses a new
   connection with the retryable code ``busy``: the client tries another
   address or again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, NamedTuple, Protocol, cast

import msgspec

from catenary.api.errors import ErrorCode, ErrorReply, ServiceError
from catenary.api.messages import (
    CancelWatch,
    Get,
    OkReply,
    Put,
    Reply,
    Request,
    Watch,
    request_decoder,
)
from catenary.runtime.metrics import ServerMetrics
from catenary.wire import (
    HELLO_FRAME_BYTES_MAX_DEFAULT,
    LIVENESS_PROTOCOL_VERSION_MIN,
    FrameDecoder,
    FrameKind,
    FrameTooLarge,
    Hello,
    HelloAck,
    HelloRefused,
    LivenessClock,
    RefusalCode,
    Role,
    WireError,
    check_hello,
    check_liveness_bounds,
    decode_hello,
    decode_payload,
    encode_hello_reply,
    encode_message,
    encode_ping,
    encode_pong,
    tune_socket,
)
from catenary.wire.handshake import agreed_version

log = logging.getLogger(__name__)

_reply_encoder = msgspec.msgpack.Encoder()

Emit = Callable[[Reply], None]


class Begun(NamedTuple):
    """A batch a family began (rule 7)."""

    refused: list[Reply]  # replies of the requests refused at once
    future: asyncio.Future[Any] | None  # the operation begun for the others (None: no others)
    requests: Sequence[Request]  # those others, in order
    finish: Callable[[Any], list[Reply]]  # the operation's outcome -> their replies, in order


class MetadataBatches(Protocol):
    """The metadata family's batched requests (rule 7); implemented by the node."""

    def begin_gets(self, requests: list[Get]) -> Begun | None:
        """Begin linearizable gets together, or None to serve them one by one."""
        ...

    def begin_puts(self, requests: list[Put]) -> Begun | None:
        """Begin puts together (one proposal), or None to serve them one by one."""
        ...


class RequestHandler(Protocol):
    """What the port serves; implemented by the node."""

    def identity(self) -> tuple[str, int, int]:
        """(cluster name, node id, generation) for the handshake ack."""
        ...

    async def handle(self, request: Request) -> Reply:
        """Answer one request (not Watch/CancelWatch); may raise ServiceError."""
        ...

    def watch(self, request: Watch, emit: Emit) -> Awaitable[None]:
        """Run a watch, calling ``emit`` for each reply, until cancelled."""
        ...


class ClientPortConfig(msgspec.Struct, frozen=True, kw_only=True):
    frame_bytes_max: int = 16 << 20
    handshake_timeout_ms: int = 5000
    connections_max: int = 1024
    inflight_max: int = 1024
    watches_max: int = 1000
    write_buffer_high_bytes: int = 4 << 20
    ping_interval_ms: int = 1000  # ping a client heard from for this long (protocol >= 3)
    idle_timeout_ms: int = 5000  # abort a client connection silent for this long
    request_idle_ms: int = 60_000  # close a connection with no request for this long (rule 9)

    def __post_init__(self) -> None:
        check_liveness_bounds(self.ping_interval_ms, self.idle_timeout_ms, "ms")
        if self.request_idle_ms < 1:
            raise ValueError(f"request_idle_ms must be >= 1, got {self.request_idle_ms}")


def _internal(request_id: int) -> ErrorReply:
    return ErrorReply(request_id, str(ErrorCode.INTERNAL), "internal error; see the node's log")


def _kind_of(request: Request) -> str:
    return type(request).__name__.lower()


class _Connection(asyncio.Protocol):
    def __init__(self, port: ClientPort) -> None:
        self._port = port
        self._config = port.config
        self._decoder = FrameDecoder(
            self._config.frame_bytes_max,
            first_frame_bytes_max=min(HELLO_FRAME_BYTES_MAX_DEFAULT, self._config.frame_bytes_max),
        )
        self._transport: asyncio.Transport | None = None
        self._handshaken = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        # The futures of the batches begun (rule 7) and the requests they hold.
        self._pending: set[asyncio.Future[Any]] = set()
        self._batched = 0
        metadata = port.metadata
        self._begin_gets = metadata.begin_gets if metadata is not None else None
        self._begin_puts = metadata.begin_puts if metadata is not None else None
        self._watches: dict[int, asyncio.Task[None]] = {}
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._liveness: LivenessClock | None = None  # rule 8, from a protocol-3 handshake
        self._liveness_timer: asyncio.TimerHandle | None = None
        self._last_request = 0.0  # loop time of the handshake, then of the last request
        self._request_idle_timer: asyncio.TimerHandle | None = None
        self.peer = "?"

    # ------------------------------------------------------ asyncio hooks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self._transport = cast(asyncio.Transport, transport)
        peer = self._transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._transport.set_write_buffer_limits(high=self._config.write_buffer_high_bytes)
        tune_socket(self._transport.get_extra_info("socket"), self._config.idle_timeout_ms)
        loop = asyncio.get_running_loop()
        self._handshake_timer = loop.call_later(
            self._config.handshake_timeout_ms / 1000, self._handshake_timed_out
        )
        self._port._connections.add(self)
        self._port.metrics.client_connections.inc()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        if self._liveness_timer is not None:
            self._liveness_timer.cancel()
            self._liveness_timer = None
        if self._request_idle_timer is not None:
            self._request_idle_timer.cancel()
            self._request_idle_timer = None
        if self in self._port._connections:
            self._port._connections.discard(self)
            self._port.metrics.client_connections.dec()
        for task in list(self._tasks) + list(self._watches.values()):
            task.cancel()
        self._cancel_pending()
        self._watches.clear()

    def pause_writing(self) -> None:
        # The client does not read its replies fast enough: stop taking requests.
        if self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self._liveness is not None:
            self._liveness.heard(asyncio.get_running_loop().time())
        gets: list[Get] = []
        puts: list[Put] = []
        batch_gets = self._begin_gets is not None
        batch_puts = self._begin_puts is not None
        try:
            frames = self._decoder.feed(data)
            for frame in frames:
                if self._transport is None or self._transport.is_closing():
                    return  # dropped or refused by an earlier frame of this chunk
                if not self._handshaken:
                    self._on_hello(decode_hello(frame))
                    continue
                if frame.kind == FrameKind.PING:
                    self._send_frame(encode_pong(frame.payload))
                    continue
                if frame.kind == FrameKind.PONG:
                    continue
                if frame.kind != FrameKind.REQUEST:
                    self.drop(f"unexpected frame kind {frame.kind} (expected REQUEST)", "kind")
                    return
                self._last_request = asyncio.get_running_loop().time()
                request = decode_payload(frame, request_decoder)
                kind = type(request)
                if kind is Put and batch_puts:
                    puts.append(cast(Put, request))
                elif kind is Get and batch_gets and not cast(Get, request).stale:
                    gets.append(cast(Get, request))
                else:
                    self._on_request(request)
        except WireError as exc:
            self.drop(f"{type(exc).__name__}: {exc}", type(exc).__name__)
            return
        if puts and self._begin_puts is not None:
            self._start_batch("put", puts, self._begin_puts)
        if gets and self._begin_gets is not None:
            self._start_batch("get", gets, self._begin_gets)

    def _start_batch(
        self, kind: str, requests: list[Any], begin: Callable[[list[Any]], Begun | None]
    ) -> None:
        """Rule 7."""
        room = self._config.inflight_max - len(self._tasks) - self._batched
        if room < len(requests):
            for request in requests[max(room, 0) :]:
                self._overloaded(request)
            requests = requests[: max(room, 0)]
            if not requests:
                return
        started_s = time.perf_counter()
        try:
            begun = begin(requests)
        except ServiceError as exc:
            self._port.metrics.observe(
                kind, str(exc.code), time.perf_counter() - started_s, len(requests)
            )
            for request in requests:
                self.send(exc.reply(request.id))
            return
        except Exception:
            log.exception("internal error beginning %d %ss", len(requests), kind)
            self._port.metrics.observe(kind, str(ErrorCode.INTERNAL), 0.0, len(requests))
            for request in requests:
                self.send(_internal(request.id))
            return
        if begun is None:
            for request in requests:
                self._on_request(request)
            return
        refused, future, batched, finish = begun
        for reply in refused:
            self._port.metrics.observe(
                kind, reply.code if isinstance(reply, ErrorReply) else "ok", 0.0
            )
            self.send(reply)
        if future is None:
            return
        self._pending.add(future)
        self._batched += len(batched)
        future.add_done_callback(partial(self._batch_finished, kind, batched, finish, started_s))

    def _batch_finished(
        self,
        kind: str,
        requests: Sequence[Request],
        finish: Callable[[Any], list[Reply]],
        started_s: float,
        future: asyncio.Future[Any],
    ) -> None:
        if future not in self._pending:
            return  # cancelled with its connection (_cancel_pending)
        self._pending.discard(future)
        self._batched -= len(requests)
        if future.cancelled():
            return  # the connection closed: nobody to answer
        replies: list[Reply]
        error = future.exception()
        try:
            if error is not None:
                raise error
            replies = finish(future.result())
        except ServiceError as exc:
            replies = [exc.reply(request.id) for request in requests]
        except Exception:
            log.exception("internal error serving %d %ss", len(requests), kind)
            replies = [_internal(request.id) for request in requests]
        seconds = time.perf_counter() - started_s
        failed = [reply.code for reply in replies if type(reply) is ErrorReply]
        observe = self._port.metrics.observe
        if len(failed) < len(replies):
            observe(kind, "ok", seconds, len(replies) - len(failed))
        for code in failed:
            observe(kind, code, seconds)
        send = self.send
        for reply in replies:
            send(reply)
        # The batch is the unit of coalescing: write it now rather than one
        # loop iteration later.
        if self._flush_scheduled:
            self._flush()

    # -------------------------------------------------------- handshake

    def _handshake_timed_out(self) -> None:
        if not self._handshaken:
            self.drop("no hello within the handshake timeout", "handshake_timeout")

    def _on_hello(self, hello: Hello) -> None:
        cluster_name, node_id, generation = self._port.handler.identity()
        refusal: HelloRefused | None
        if len(self._port._connections) > self._config.connections_max:
            refusal = HelloRefused(
                RefusalCode.BUSY,
                f"too many client connections (limit {self._config.connections_max})",
            )
        elif self._port.closing:
            refusal = HelloRefused(RefusalCode.SHUTTING_DOWN, "the node is shutting down")
        else:
            # A client that does not know the cluster's name may still connect; one
            # that names another cluster is refused.
            expected = cluster_name if hello.cluster_name else ""
            refusal = check_hello(hello, cluster_name=expected, roles=frozenset({Role.CLIENT}))
        assert self._transport is not None
        if refusal is not None:
            log.warning("refusing client %s: %s (%s)", self.peer, refusal.reason, refusal.code)
            self._transport.write(encode_hello_reply(refusal))
            self._close_transport()
            return
        self._transport.write(
            encode_hello_reply(HelloAck(agreed_version(hello), cluster_name, node_id, generation))
        )
        self._handshaken = True
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        loop = asyncio.get_running_loop()
        self._last_request = loop.time()
        self._request_idle_timer = loop.call_later(
            self._config.request_idle_ms / 1000, self._check_request_idle
        )
        if agreed_version(hello) >= LIVENESS_PROTOCOL_VERSION_MIN:
            loop = asyncio.get_running_loop()
            self._liveness = LivenessClock(
                self._config.ping_interval_ms / 1000,
                self._config.idle_timeout_ms / 1000,
                loop.time(),
            )
            self._liveness_timer = loop.call_at(
                loop.time() + self._liveness.ping_interval_s, self._check_liveness
            )

    def _check_request_idle(self) -> None:
        """Rule 9: close a connection that holds a slot without using it."""
        self._request_idle_timer = None
        if self._closed or self._transport is None:
            return
        loop = asyncio.get_running_loop()
        bound_s = self._config.request_idle_ms / 1000
        busy = bool(self._tasks or self._pending or self._watches)
        if not busy and loop.time() - self._last_request >= bound_s:
            log.info(
                "closing client connection %s: no request for %d ms (request_idle_ms)",
                self.peer,
                self._config.request_idle_ms,
            )
            self._port.metrics.connections_dropped.labels("request_idle").inc()
            self._close_transport()
            return
        next_s = bound_s if busy else self._last_request + bound_s - loop.time()
        self._request_idle_timer = loop.call_later(max(next_s, 0.001), self._check_request_idle)

    def _check_liveness(self) -> None:
        """Rule 8: ping a silent client; abort one silent past ``idle_timeout_ms``."""
        self._liveness_timer = None
        clock = self._liveness
        if self._closed or clock is None or self._transport is None:
            return
        loop = asyncio.get_running_loop()
        poll = clock.poll(loop.time())
        if poll.dead:
            log.warning(
                "dropping client connection %s: heard nothing for %.0f ms (idle_timeout_ms=%d)",
                self.peer,
                poll.silent_s * 1000,
                self._config.idle_timeout_ms,
            )
            self._port.metrics.connections_dropped.labels("idle").inc()
            transport = self._transport
            self._close_transport()
            transport.abort()  # presumed stalled: do not wait for its buffer to drain
            return
        if poll.ping:
            self._send_frame(encode_ping())
        self._liveness_timer = loop.call_at(
            max(poll.next_s, loop.time() + 0.001), self._check_liveness
        )

    # ---------------------------------------------------------- requests

    def _on_request(self, request: Request) -> None:
        if isinstance(request, CancelWatch):
            task = self._watches.pop(request.id, None)
            if task is None:
                self.send(
                    ErrorReply(
                        request.id, str(ErrorCode.NOT_FOUND), f"no watch with id {request.id}"
                    )
                )
            else:
                task.cancel()
                self.send(OkReply(request.id, "watch cancelled"))
            return
        if isinstance(request, Watch):
            if request.id in self._watches:
                self.send(
                    ErrorReply(
                        request.id, str(ErrorCode.BAD_REQUEST), "a watch with this id is open"
                    )
                )
                return
            if len(self._watches) >= self._config.watches_max:
                self.send(
                    ErrorReply(
                        request.id,
                        str(ErrorCode.OVERLOADED),
                        f"too many watches on this connection (limit {self._config.watches_max})",
                    )
                )
                return
            task = asyncio.get_running_loop().create_task(self._run_watch(request))
            self._watches[request.id] = task
            return
        if len(self._tasks) + self._batched >= self._config.inflight_max:
            self._overloaded(request)
            return
        task = asyncio.get_running_loop().create_task(self._serve(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _overloaded(self, request: Request) -> None:
        """Rule 3: past ``inflight_max`` a request surely did not happen."""
        self._port.metrics.observe(_kind_of(request), str(ErrorCode.OVERLOADED), 0.0)
        self.send(
            ErrorReply(
                request.id,
                str(ErrorCode.OVERLOADED),
                f"too many requests in flight on this connection (limit {self._config.inflight_max})",
            )
        )

    async def _serve(self, request: Request) -> None:
        started = time.perf_counter()
        try:
            reply: Reply = await self._port.handler.handle(request)
        except ServiceError as exc:
            reply = exc.reply(request.id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error serving %s", _kind_of(request))
            reply = _internal(request.id)
        outcome = reply.code if isinstance(reply, ErrorReply) else "ok"
        self._port.metrics.observe(_kind_of(request), outcome, time.perf_counter() - started)
        self.send(reply)

    async def _run_watch(self, request: Watch) -> None:
        try:
            await self._port.handler.watch(request, self.send)
        except ServiceError as exc:
            self.send(exc.reply(request.id))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error in a watch")
            self.send(
                ErrorReply(request.id, str(ErrorCode.INTERNAL), "internal error in the watch")
            )
        finally:
            if self._watches.get(request.id) is asyncio.current_task():
                del self._watches[request.id]

    # ------------------------------------------------------------ output

    def send(self, reply: Reply) -> None:
        if self._closed:
            return
        try:
            frame = encode_message(
                FrameKind.REPLY, reply, _reply_encoder, self._config.frame_bytes_max
            )
        except FrameTooLarge as exc:
            frame = encode_message(
                FrameKind.REPLY,
                ErrorReply(reply.id, str(ErrorCode.TOO_LARGE), f"reply too large: {exc}"),
                _reply_encoder,
            )
        self._send_frame(frame)

    def _send_frame(self, frame: bytes) -> None:
        if self._closed:
            return
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        if not self._flush_scheduled:
            return  # written early (a batch's replies) after this call was queued
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self._transport is not None and not self._closed:
            # One buffer, one write: cheaper than writelines on uvloop for many
            # small replies.
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def drop(self, reason: str, label: str) -> None:
        if self._closed:
            return
        log.warning("dropping client connection %s: %s", self.peer, reason)
        self._port.metrics.connections_dropped.labels(label).inc()
        self._close_transport()

    def _close_transport(self) -> None:
        self._closed = True
        if self._transport is not None:
            # close() still flushes what was written (e.g. a refusal).
            self._transport.close()
        for task in list(self._tasks) + list(self._watches.values()):
            task.cancel()
        self._cancel_pending()

    def _cancel_pending(self) -> None:
        pending, self._pending = self._pending, set()
        self._batched = 0
        for future in pending:
            future.cancel()

    @property
    def busy(self) -> bool:
        return bool(self._tasks or self._pending)


class ClientPort:
    """Listens on the client address; one ``_Connection`` per accepted socket."""

    def __init__(
        self,
        handler: RequestHandler,
        metrics: ServerMetrics,
        config: ClientPortConfig,
        *,
        metadata: MetadataBatches | None = None,
    ) -> None:
        self.handler = handler
        self.metadata = metadata
        self.metrics = metrics
        self.config = config
        self.closing = False
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True
        )

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def drain(self, timeout_s: float) -> None:
        """Refuse new connections; wait (bounded) for requests in progress to finish."""
        self.closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and any(c.busy for c in self._connections):
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Stop accepting, close every connection, wait for the listener to go."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn._close_transport()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
