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
    TooLargeError,
    not_utf8,
)
from catenary.wire import (
    HELLO_FRAME_BYTES_MAX_DEFAULT,
    FrameDecoder,
    FrameKind,
    FrameTooLarge,
    HelloAck,
    HelloRefused,
    Role,
    WireError,
    decode_handshake,
    encode_hello,
    encode_message,
    make_hello,
)

log = logging.getLogger(__name__)

FRAME_BYTES_MAX_DEFAULT = 16 * 1024 * 1024
PENDING_MAX_DEFAULT = 65536
# Requests made in one event-loop iteration share one socket write, at most this
# many: a larger burst is cut so the node starts on the first part while the rest
# is being made (client and node then work at the same time).
WRITE_BATCH_MAX_DEFAULT = 32


class NotSentError(Exception):
    """The request surely did not reach the node; any request may be retried."""


class ConnectionLostError(Exception):
    """The connection closed after the request was handed to it; the outcome is unknown."""


WatchListener = Callable[[Reply | None], None]
"""Receives each reply under a watch's id, then ``None`` once the connection closes."""


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` -> (host, port); raises ``BadRequestError`` (a ``ValueError``)."""
    host, sep, port_text = address.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise BadRequestError(f"bad address {address!r}: expected host:port")
    try:
        host.encode()
    except UnicodeEncodeError as exc:
        raise not_utf8("address", address, exc) from None
    port = int(port_text)
    if not 0 < port < 65536:
        raise BadRequestError(f"bad address {address!r}: port out of range")
    return host.strip("[]"), port


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
    ) -> None:
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
    ) -> NodeConnection:
        """Dial and handshake; raises ``NotSentError`` (or a refusal) on failure."""
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
        )
        try:
            async with asyncio.timeout(connect_timeout_s):
                await loop.create_connection(lambda: conn, host, port)
                await conn._handshake
        except TimeoutError as exc:
            conn.close("connect timed out")
            raise NotSentError(f"{address}: connect timed out after {connect_timeout_s}s") from exc
        except OSError as exc:
            conn.close(str(exc))
            raise NotSentError(f"{address}: {exc.strerror or exc}") from exc
        except (NotSentError, CatenaryError):
            conn.close("handshake failed")
            raise
        return conn

    # ------------------------------------------------------- asyncio hooks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport; they implement it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(encode_hello(make_hello(self._cluster_name, 0, 0, Role.CLIENT)))

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except WireError as exc:
            log.warning("closing connection to %s: bad frame from node: %s", self.address, exc)
            self.close(f"bad frame from node: {exc}")
            return
        for frame in frames:
            if self.closed:
                return
            if not self._handshake.done():
                self._on_handshake(frame.kind, frame.payload)
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
        self._fail_all(f"connection lost: {exc}" if exc else "connection closed by node")

    # ----------------------------------------------------------- handshake

    def _on_handshake(self, kind: int, payload: bytes) -> None:
        try:
            message = decode_handshake(kind, payload)
        except WireError as exc:
            self._handshake.set_exception(NotSentError(f"{self.address}: bad handshake: {exc}"))
            self.close(f"bad handshake: {exc}")
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
            self._handshake.set_result(None)
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
            self._handshake.set_exception(NotSentError(f"{self.address}: unexpected handshake"))
            self.close("unexpected handshake frame")

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
        if self.closed or self._transport is None or self._transport.is_closing():
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

    def close(self, reason: str = "closed by client") -> None:
        if not self.closed:
            self.close_reason = reason
        if self._transport is not None:
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
