"""One-shot requests to a node's client port (join, announce, launcher probes).

A node talking to another node's client port (to join, or to announce its new
generation) needs a few requests, not a client library: open, handshake, send
the requests, read the replies, close.  Everything is bounded by one timeout.
The node pings a client it has heard nothing from while a request is in
progress (a join waiting for its membership change to commit): a PING is
answered with its PONG, as the client library does, and does not end the call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import msgspec

from catenary.api.messages import Reply, Request, reply_decoder
from catenary.wire import (
    FRAME_BYTES_MAX_DEFAULT,
    Frame,
    FrameDecoder,
    FrameKind,
    HandshakeRefused,
    HelloAck,
    WireError,
    decode_handshake,
    decode_hello_reply,
    decode_payload,
    encode_hello,
    encode_message,
    encode_pong,
    make_hello,
)
from catenary.wire.address import AddressError, parse_address
from catenary.wire.handshake import Role

_encoder = msgspec.msgpack.Encoder()


class RpcError(Exception):
    """The request could not be completed (connect, handshake, protocol, timeout)."""

    def __init__(
        self, message: str, *, sent: bool, refused: HandshakeRefused | None = None
    ) -> None:
        super().__init__(message)
        self.sent = sent  # False: the requests surely did not reach the node
        self.refused = refused  # the handshake refusal, when that was the failure


async def call_many(
    address: str,
    requests: Sequence[Request],
    *,
    cluster_name: str = "",
    timeout_s: float = 5.0,
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
) -> list[Reply]:
    """Send ``requests`` (distinct ids) on one connection; replies in request order."""
    sent = False
    writer: asyncio.StreamWriter | None = None
    try:
        host, port = parse_address(address)
    except AddressError as exc:
        raise RpcError(str(exc), sent=False) from None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(encode_hello(make_hello(cluster_name, 0, 0, Role.CLIENT)))
            decoder = FrameDecoder(frame_bytes_max)
            frames: list[tuple[int, bytes]] = []  # decoded, not yet handled
            handshaken = False
            replies: dict[int, Reply] = {}
            wanted = {r.id for r in requests}
            while len(replies) < len(wanted):
                if not frames:
                    data = await reader.read(65536)
                    if not data:
                        raise RpcError(f"{address}: connection closed by the node", sent=sent)
                    frames.extend((f.kind, f.payload) for f in decoder.feed(data))
                    continue
                kind, payload = frames.pop(0)
                frame = Frame(kind, payload)
                if not handshaken:
                    decode_hello_reply(frame, cluster_name=cluster_name or _acked_cluster(frame))
                    handshaken = True
                    writer.writelines(
                        encode_message(FrameKind.REQUEST, r, _encoder, frame_bytes_max)
                        for r in requests
                    )
                    sent = True
                    continue
                if kind == FrameKind.PING:
                    writer.write(encode_pong(payload))
                    continue
                if kind == FrameKind.PONG:
                    continue
                if kind != FrameKind.REPLY:
                    raise RpcError(f"{address}: unexpected frame kind {kind}", sent=sent)
                reply = decode_payload(frame, reply_decoder)
                if reply.id in wanted:
                    replies[reply.id] = reply
            return [replies[r.id] for r in requests]
    except HandshakeRefused as exc:
        raise RpcError(f"{address}: {exc}", sent=False, refused=exc) from None
    except WireError as exc:
        raise RpcError(f"{address}: protocol error: {exc}", sent=sent) from None
    except TimeoutError:
        raise RpcError(f"{address}: no answer within {timeout_s} s", sent=sent) from None
    except OSError as exc:
        raise RpcError(f"{address}: {exc.strerror or exc}", sent=sent) from None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _acked_cluster(frame: Frame) -> str:
    """The cluster name an ack carries (a caller that names no cluster accepts any)."""
    with contextlib.suppress(WireError):
        message = decode_handshake(frame.kind, frame.payload)
        if isinstance(message, HelloAck):
            return message.cluster_name
    return ""


async def call(
    address: str,
    request: Request,
    *,
    cluster_name: str = "",
    timeout_s: float = 5.0,
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
) -> Reply:
    (reply,) = await call_many(
        address,
        [request],
        cluster_name=cluster_name,
        timeout_s=timeout_s,
        frame_bytes_max=frame_bytes_max,
    )
    return reply
